//! One instance per data directory: `<data_dir>/luna-matcher.lock`, locked
//! with `flock` and holding the holder's pid, for the life of the process.
//! The kernel drops the lock when the process ends, however it ends.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

pub const LOCK_FILE: &str = "luna-matcher.lock";

/// The held lock; dropping it releases the directory.
pub struct DataLock {
    _file: File,
}

impl DataLock {
    /// Lock `data_dir` (created if missing), or say which process holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataLock, String> {
        std::fs::create_dir_all(data_dir).map_err(|e| format!("cannot create the data directory {}: {e}", data_dir.display()))?;
        let path = data_dir.join(LOCK_FILE);
        // On a read-only file system an existing lock file still locks; the
        // pid in it is then the last writer's.
        let (mut file, writable) = match OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path) {
            Ok(f) => (f, true),
            Err(e) => (File::open(&path).map_err(|_| format!("cannot open the lock file {}: {e}", path.display()))?, false),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { "unknown".into() } else { holder.to_owned() };
                return Err(format!(
                    "the data directory {} is in use by another luna-matcher (pid {holder}, lock {}): one instance per data directory",
                    data_dir.display(),
                    path.display()
                ));
            }
            Err(TryLockError::Error(e)) => return Err(format!("cannot lock {}: {e}", path.display())),
        }
        if !writable {
            return Ok(DataLock { _file: file });
        }
        let written = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| writeln!(file, "{}", std::process::id())).and_then(|_| file.sync_all());
        written.map_err(|e| format!("cannot write the lock file {}: {e}", path.display()))?;
        Ok(DataLock { _file: file })
    }
}

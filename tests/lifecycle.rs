//! The process as an operator runs it: one instance per data directory,
//! signals at any moment of start-up, the store's integrity check and
//! checkpoints, and connections kept alive across SIGTERM. Each test runs the
//! real binary.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::json;

const NO_PLUGINS: &[(&str, &str)] = &[("LUNA_MATCHER_PROXY_ACTIVE_PLUGINS", "[]")];

fn new_face(s: &Service, seed: u64) -> String {
    let r = s.call("POST", "/1/faces", Some(&json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(seed))}, "user_data": format!("u{seed}")})));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["face_id"].as_str().unwrap().to_owned()
}

fn wal_bytes(data: &Path) -> u64 {
    std::fs::metadata(data.join("luna-matcher.sqlite3-wal")).map_or(0, |m| m.len())
}

#[test]
fn one_instance_per_data_directory() {
    let data = tempfile::tempdir().unwrap();
    let mut first = Service::launch(&[], "", NO_PLUGINS, Some(data.path()));
    first.wait_for(|| TcpStream::connect(first.addr).is_ok(), "the first instance listens");
    let mut second = Service::launch(&[], "", NO_PLUGINS, Some(data.path()));
    let status = second.wait_exit(Duration::from_secs(20)).expect("the second instance stops by itself");
    assert_eq!(status.code(), Some(2), "{}", second.log());
    let log = second.log();
    assert!(log.contains(&data.path().display().to_string()) && log.contains(&format!("pid {}", first.pid())), "{log}");
    // The first one goes on serving, and once it has stopped the directory is free.
    first.ready();
    assert_eq!(first.terminate().code(), Some(0));
    let mut third = Service::launch(&[], "", NO_PLUGINS, Some(data.path()));
    third.wait_for(|| TcpStream::connect(third.addr).is_ok(), "an instance starts once the directory is free");
    assert_eq!(third.terminate().code(), Some(0));
}

/// A store of `faces` faces written straight into SQLite, in the service's schema.
fn large_store(data: &Path, faces: u64) {
    let mut s = Service::launch(&[], "", NO_PLUGINS, Some(data));
    s.ready();
    assert_eq!(s.terminate().code(), Some(0));
    let mut db = rusqlite::Connection::open(data.join("luna-matcher.sqlite3")).unwrap();
    let tx = db.transaction().unwrap();
    {
        let mut insert = tx
            .prepare("INSERT INTO faces (face_id, account_id, version, descriptor, external_id, user_data, create_time) VALUES (?1, ?2, 62, ?3, NULL, '', 0)")
            .unwrap();
        let account = uuid::Uuid::parse_str(ACCOUNT).unwrap();
        let d = descriptor(1);
        for _ in 0..faces {
            insert.execute(rusqlite::params![uuid::Uuid::new_v4(), account, d]).unwrap();
        }
    }
    tx.commit().unwrap();
}

#[test]
fn a_signal_while_a_large_store_loads_stops_the_process_cleanly() {
    let data = tempfile::tempdir().unwrap();
    large_store(data.path(), 300_000);
    for signal in ["INT", "TERM"] {
        let mut s = Service::launch(&[], "", NO_PLUGINS, Some(data.path()));
        s.wait_for(|| s.log().contains("opening the store"), "the store starts loading");
        s.signal(signal);
        let sent = std::time::Instant::now();
        let status = s.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| panic!("SIG{signal} during the load was not answered; log:\n{}", s.log()));
        assert_eq!(status.code(), Some(0), "{}", s.log());
        assert!(s.log().contains(&format!("SIG{signal} during start-up")), "{}", s.log());
        eprintln!("SIG{signal} while 300,000 faces load: exit 0 after {} ms", sent.elapsed().as_millis());
    }
}

const SLOW_IMPORT: &str = r#"
import time

from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin

time.sleep(60)


class Slow(BaseBackgroundPlugin):
    async def initialize(self):
        pass
"#;

#[test]
fn sigint_while_a_plugin_imports_stops_the_process_promptly() {
    let config = "[shutdown]\nflush_timeout = \"500ms\"\n[plugins]\nclose_timeout = \"500ms\"\n";
    let mut s = Service::launch(&[("slow.py", SLOW_IMPORT)], config, &[("LUNA_MATCHER_PROXY_ACTIVE_PLUGINS", r#"["slow"]"#)], None);
    s.wait_for(|| TcpStream::connect(s.addr).is_ok(), "the service listens");
    assert_eq!(s.call("GET", "/healthcheck", None).status, 503, "the plugin is still importing");
    s.signal("INT");
    // Well before the import's 60 seconds are over.
    let status = s.wait_exit(Duration::from_secs(15)).unwrap_or_else(|| panic!("SIGINT during a plugin's import was not answered; log:\n{}", s.log()));
    assert_eq!(status.code(), Some(0), "{}", s.log());
}

const SIGNALS: &str = r#"
import signal

from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin, pluginHTTPResponse


class Signals(BaseBackgroundPlugin):
    async def initialize(self):
        self.addRoute("/sigint-handler", self.handler, methods={"get"})

    async def handler(self, request):
        return pluginHTTPResponse(body={"handler": repr(signal.getsignal(signal.SIGINT))})
"#;

#[test]
fn python_leaves_sigint_to_the_service() {
    let mut s = Service::spawn_with_env(&[("signals.py", SIGNALS)], "", &[("LUNA_MATCHER_PROXY_ACTIVE_PLUGINS", r#"["signals"]"#)]);
    s.ready();
    // None: a handler Python did not install (the service's); Python's own would be default_int_handler.
    let r = s.call("GET", "/sigint-handler", None);
    assert_eq!(r.json(), json!({"handler": "None"}), "{}", s.log());
    s.signal("INT");
    let status = s.wait_exit(Duration::from_secs(15)).unwrap_or_else(|| panic!("SIGINT was not answered; log:\n{}", s.log()));
    assert_eq!(status.code(), Some(0), "{}", s.log());
}

#[test]
fn a_damaged_store_is_refused_with_exit_2() {
    let data = tempfile::tempdir().unwrap();
    let mut s = Service::launch(&[], "", NO_PLUGINS, Some(data.path()));
    s.ready();
    for i in 0..200 {
        new_face(&s, i);
    }
    assert_eq!(s.terminate().code(), Some(0));
    assert!(s.log().contains("quick_check ok"), "{}", s.log());

    // Garbage over a page in the middle of the file, as a bad disk would leave it.
    let file = data.path().join("luna-matcher.sqlite3");
    let mut bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() > 10 * 4096);
    for (i, b) in bytes[5 * 4096..6 * 4096].iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    std::fs::write(&file, bytes).unwrap();
    let mut s = Service::launch(&[], "", NO_PLUGINS, Some(data.path()));
    let status = s.wait_exit(Duration::from_secs(20)).unwrap_or_else(|| panic!("a damaged store was served; log:\n{}", s.log()));
    assert_eq!(status.code(), Some(2), "{}", s.log());
    assert!(s.log().contains("is damaged") && s.log().contains(&file.display().to_string()), "{}", s.log());
}

#[test]
fn a_clean_stop_leaves_everything_in_the_database_file() {
    let data = tempfile::tempdir().unwrap();
    let mut s = Service::launch(&[], "[storage]\ncheckpoint_interval = \"0ms\"\n", NO_PLUGINS, Some(data.path()));
    s.ready();
    let faces: Vec<String> = (0..100).map(|i| new_face(&s, i)).collect();
    assert!(wal_bytes(data.path()) > 0, "writes go to the WAL first");
    assert_eq!(s.terminate().code(), Some(0));
    assert_eq!(wal_bytes(data.path()), 0, "the WAL is truncated; log:\n{}", s.log());
    // The database file alone, without its WAL, holds every face.
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(data.path().join("luna-matcher.sqlite3"), copy.path().join("alone.sqlite3")).unwrap();
    let db = rusqlite::Connection::open(copy.path().join("alone.sqlite3")).unwrap();
    let stored: i64 = db.query_row("SELECT count(*) FROM faces", [], |r| r.get(0)).unwrap();
    assert_eq!(stored as usize, faces.len());
}

#[test]
fn periodic_checkpoints_keep_the_wal_short() {
    let data = tempfile::tempdir().unwrap();
    let s = Service::launch(&[], "[storage]\ncheckpoint_interval = \"300ms\"\n", NO_PLUGINS, Some(data.path()));
    s.ready();
    for i in 0..50 {
        new_face(&s, i);
    }
    s.wait_for(|| wal_bytes(data.path()) == 0, "a checkpoint truncates the WAL while the service runs");
    // And writes after it are still there after a restart (kill -9: no final checkpoint).
    let face = new_face(&s, 99);
    drop(s);
    let s = Service::launch(&[], "", NO_PLUGINS, Some(data.path()));
    s.ready();
    assert_eq!(s.call("GET", &format!("/1/faces/{face}"), None).status, 200);
}

/// The status line and lowercased head of a response, its body read by Content-Length.
fn read_response(stream: &mut BufReader<TcpStream>) -> (String, Vec<String>) {
    let mut status = String::new();
    stream.read_line(&mut status).unwrap();
    let mut head = Vec::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).unwrap();
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(n) = line.strip_prefix("content-length:") {
            length = n.trim().parse().unwrap();
        }
        head.push(line);
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    (status.trim_end().to_owned(), head)
}

#[test]
fn a_request_in_flight_on_a_kept_alive_connection_at_sigterm_is_answered_with_close() {
    let data = tempfile::tempdir().unwrap();
    let mut s = Service::launch(&[], "", NO_PLUGINS, Some(data.path()));
    s.ready();
    let stream = TcpStream::connect(s.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut stream = BufReader::new(stream);
    stream.get_mut().write_all(b"GET /1/version HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (status, head) = read_response(&mut stream);
    assert!(status.ends_with("200 OK") && !head.iter().any(|h| h == "connection: close"), "{status} {head:?}");

    // The next request on the same connection is half sent when SIGTERM comes.
    let body = format!(r#"{{"account_id": "{ACCOUNT}", "user_data": "in flight"}}"#);
    let head = format!("POST /1/lists HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    stream.get_mut().write_all(head.as_bytes()).unwrap();
    stream.get_mut().write_all(&body.as_bytes()[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    stream.get_mut().write_all(&body.as_bytes()[10..]).unwrap();
    let (status, head) = read_response(&mut stream);
    assert!(status.ends_with("201 Created"), "{status}; log:\n{}", s.log());
    assert!(head.iter().any(|h| h == "connection: close"), "{head:?}");
    let mut rest = Vec::new();
    assert_eq!(stream.read_to_end(&mut rest).unwrap(), 0, "then the service closes the connection");
    assert_eq!(s.wait_exit(Duration::from_secs(20)).expect("stopped").code(), Some(0), "{}", s.log());

    // What was answered is stored.
    let s = Service::launch(&[], "", NO_PLUGINS, Some(data.path()));
    s.ready();
    assert!(String::from_utf8(s.call("GET", "/metrics", None).body).unwrap().contains("luna_matcher_store_lists 1"));
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir.path()).status().unwrap();
        assert!(ok.success(), "mounting a tmpfs needs root");
        Tmpfs(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn remount(&self, mode: &str) {
        let ok = std::process::Command::new("mount").args(["-o", &format!("remount,{mode}")]).arg(self.path()).status().unwrap();
        assert!(ok.success());
    }

    /// Write a file until the file system is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.path().join("filler")).unwrap();
        while f.write_all(&[7u8; 4096]).is_ok() {}
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

fn store_error(s: &Service) -> Option<String> {
    let r = s.call("GET", "/healthcheck", None);
    match r.status {
        200 => None,
        502 => {
            let errors = r.json()["errors"].clone();
            assert_eq!(errors[0]["component"], "store", "{errors}");
            Some(errors[0]["error"].as_str().unwrap().to_owned())
        }
        other => panic!("healthcheck answered {other}"),
    }
}

#[test]
fn health_tells_when_the_store_cannot_write() {
    let disk = Tmpfs::mount("2m");
    let mut s = Service::launch(&[], "", NO_PLUGINS, Some(disk.path()));
    s.ready();
    let face = new_face(&s, 1);

    disk.fill();
    let error = store_error(&s).expect("a full disk is reported");
    assert!(error.contains("No space left"), "{error}");
    std::fs::remove_file(disk.path().join("filler")).unwrap();
    assert_eq!(store_error(&s), None, "healthy again once there is room");

    assert_eq!(s.terminate().code(), Some(0));

    // Started on a read-only data directory: a loud warning, reads served, health 502.
    // (A file system with files open for writing cannot be made read-only under the service.)
    disk.remount("ro");
    let s = Service::launch(&[], "", NO_PLUGINS, Some(disk.path()));
    s.wait_for(|| s.log().contains("IS NOT WRITABLE"), "a loud warning");
    let error = store_error(&s).expect("a read-only data directory is reported");
    assert!(error.contains("Read-only file system"), "{error}");
    assert_eq!(s.call("GET", &format!("/1/faces/{face}"), None).status, 200, "reads go on");
    let r = s.call("POST", "/1/faces", Some(&json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(2))}})));
    assert_eq!((r.status, r.code()), (500, 10002), "{}", s.log());
}

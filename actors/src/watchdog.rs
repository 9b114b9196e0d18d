//! Plugins share one event loop: code that blocks it (`time.sleep`, a busy
//! loop) stalls every plugin. A thread sends the loop heartbeats a few times
//! per limit; when beats stop for longer than the limit, it names the plugin
//! whose task step holds the loop, once per stall, so that one, and only that
//! one, is restarted. Plugins that were merely waiting are not blamed: the
//! host's deadlines do not count time other plugins held the loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::host::Host;

/// Milliseconds since `EPOCH` when the event loop last ran a heartbeat.
static LAST_BEAT: AtomicU64 = AtomicU64::new(0);
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn millis() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The event loop ran a heartbeat: it is not blocked.
pub(crate) fn beat() {
    LAST_BEAT.store(millis(), Ordering::Relaxed);
}

pub(crate) fn start(host: &'static Host, limit: Duration) {
    std::thread::Builder::new().name("python-watchdog".into()).spawn(move || watch(host, limit)).expect("watchdog thread");
}

fn watch(host: &'static Host, limit: Duration) {
    beat();
    let every = (limit / 4).clamp(Duration::from_millis(20), Duration::from_millis(250));
    let mut reported = false;
    // A plugin is named only when the same task step holds the loop at two
    // checks in a row: one look could catch a step that merely lost the CPU.
    let mut suspect: Option<(String, u64, u64)> = None;
    loop {
        std::thread::sleep(every);
        let stalled = Duration::from_millis(millis().saturating_sub(LAST_BEAT.load(Ordering::Relaxed)));
        let holder = Python::attach(|py| -> PyResult<Option<(String, u64, u64)>> {
            let event_loop = host.event_loop().bind(py);
            event_loop.call_method1("call_soon_threadsafe", (py.import("luna_matcher")?.getattr("_beat")?,))?;
            if stalled > limit && !reported {
                return host.blocking_owner(py);
            }
            Ok(None)
        });
        match holder {
            Ok(Some(owner)) if suspect.as_ref() == Some(&owner) => {
                reported = true;
                let (plugin, generation, _) = owner;
                log::warn!(target: "luna_matcher::plugins", "plugin {plugin} holds the event loop: no heartbeat for {:.1}s", stalled.as_secs_f64());
                crate::module::fault(&plugin, generation, format!("blocked the event loop for more than {:.1}s", limit.as_secs_f64()), None);
            }
            Ok(owner) => {
                suspect = owner;
                reported &= stalled > limit;
            }
            Err(e) => log::error!("event loop watchdog: {e}"),
        }
    }
}

//! Plugin code that holds the shared event loop: the plugin holding it, and
//! only that one, is named and restarted, while plugins that were merely
//! waiting keep running and service routes keep answering.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;

/// A route handler that holds the event loop with `time.sleep`, past the timeout.
const BLOCKING_ROUTE: &str = r#"
import time

from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin


class P(BaseBackgroundPlugin):
    async def initialize(self):
        self.addRoute("/block", self.block, methods={"get"})

    async def block(self, request):
        time.sleep(3)
        return "held the loop"
"#;

/// An event plugin that awaits something in every handler, and counts.
const COUNTING: &str = r#"
import asyncio

from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin, BaseEventPlugin

handled = {"events": 0}


class Count(BaseEventPlugin):
    eventName = "monitoring_event"

    async def handleEvent(self, points, logger):
        await asyncio.sleep(0.05)
        handled["events"] += 1


class Report(BaseBackgroundPlugin):
    async def initialize(self):
        self.addRoute("/counted", self.report, methods={"get"})

    async def report(self, request):
        return handled
"#;

#[test]
fn only_the_plugin_holding_the_loop_is_blamed_under_load() {
    let (url, received) = receiver();
    let config = format!(
        "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"blocker\", \"request_monitoring\", \"counting\"]\ntimeout = \"1s\"\nmax_restarts = 10\nbackoff_initial = \"50ms\"\n\
         [plugins.config.request_monitoring]\nurl = \"{url}\"\nflush_interval = 0.1\n"
    );
    let mut s = Service::spawn(
        &[("blocker.py", BLOCKING_ROUTE), ("request_monitoring.py", &shipped_plugin("request_monitoring.py")), ("counting.py", COUNTING)],
        &config,
    );
    s.ready();

    // Service routes under load from four clients while the blocker holds the loop.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let item = json!({"id": "a", "data": b64(&descriptor(1))});
    let raw = serde_json::to_vec(&json!({"references": [item], "candidates": [item]})).unwrap();
    let clients: Vec<_> = (0..4)
        .map(|n| {
            let (stop, served, failed, raw, addr) = (stop.clone(), served.clone(), failed.clone(), raw.clone(), s.addr);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = if n % 2 == 0 {
                        request(addr, "POST", "/1/matcher/raw", &[("Content-Type", "application/json")], &raw)
                    } else {
                        request(addr, "GET", "/1/version", &[], b"")
                    };
                    let counter = if r.status == 200 { &served } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for round in 1..=3u64 {
        // Its caller is not held past the timeout and its grace: the loop is held by the route itself.
        let r = s.call("GET", "/block", None);
        assert_eq!((r.status, r.code()), (504, 10012), "{}", String::from_utf8_lossy(&r.body));
        s.wait_for(|| s.plugin("blocker")["restarts"].as_u64().unwrap() >= round, "the watchdog names the plugin holding the loop");
        s.wait_for(|| s.plugin("blocker")["state"] == "running", "the blocker comes back");
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (served, failed) = (served.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("service requests under load: {served} answered 200, {failed} failed");
    assert_eq!(failed, 0, "no service request fails because a plugin held the loop");
    assert!(served > 0);

    for name in ["request_monitoring", "counting"] {
        let p = s.plugin(name);
        assert_eq!((p["state"].as_str(), p["restarts"].as_u64()), (Some("running"), Some(0)), "a plugin that merely waited is not blamed: {p}");
    }
    let blocker = s.plugin("blocker");
    assert_eq!(blocker["restarts"], 3, "{blocker}");
    assert!(blocker["last_error"].as_str().unwrap().contains("blocked the event loop"), "{blocker}");
    // Both still do their work.
    let counted = s.call("GET", "/counted", None).json()["events"].as_u64().unwrap();
    s.wait_for(|| s.call("GET", "/counted", None).json()["events"].as_u64().unwrap() > counted, "the counting plugin still handles events");
    let sent = received.lock().unwrap().len();
    s.wait_for(|| received.lock().unwrap().len() > sent, "request_monitoring still sends its points");
    assert!(s.terminate().success());
}

//! The plugin runtime through real plugin files and the real binary: how
//! plugin exceptions are told apart, the lifecycle (subscriptions across
//! restarts, close after the delivery in flight, what `/1/plugins` shows),
//! the address plugins call the service at, `/metrics` label escaping, and
//! what the log shows of plugin errors.

mod common;

use common::*;
use serde_json::json;

/// Matching plugins that each raise something easy to mistake for another
/// kind of failure; each takes the sub-requests whose reference id is its name.
const CONFUSING_MATCHER: &str = r#"
from luna_plugins.matcher_plugins.base_plugin import BaseMatcherPlugin
from luna_plugins.matcher_plugins.base_struct import MatchUnitType
from luna_plugins.matcher_plugins.exceptions import Rematch


class NotCached(Rematch):
    """A Rematch by another name: the sub-request is handed back."""


class RematchLater(Exception):
    """Named like Rematch, and not one: the plugin's own error."""


RAISES = {
    "not_cached": lambda: NotCached("list not cached yet"),
    "own_timeout": lambda: TimeoutError("redis read timed out"),
    "type_error": lambda: TypeError("match() returned nothing I can use"),
    "rematch_later": lambda: RematchLater("try again later"),
}


class Raiser(BaseMatcherPlugin):
    availableReferenceTypes = frozenset([MatchUnitType.descriptor])
    availableCandidateTypes = frozenset([MatchUnitType.face])

    def getAvailableTargets(self, origin):
        return frozenset(["face_id", "similarity"])

    def getMatchingCost(self, request):
        return 1.0 if request.reference.id == self.app.ctx.pluginName else float("inf")

    async def match(self, request):
        raise RAISES[self.app.ctx.pluginName]()
"#;

const EVENT_OWN_TIMEOUT: &str = r#"
from luna_plugins.base.plugins_meta.base_plugins import BaseEventPlugin


class P(BaseEventPlugin):
    eventName = "monitoring_event"

    async def handleEvent(self, points, logger):
        raise TimeoutError("the receiver timed out")
"#;

const ROUTE_OWN_TIMEOUT: &str = r#"
from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin


def upstream(request):
    raise TimeoutError("upstream timed out")


class P(BaseBackgroundPlugin):
    async def initialize(self):
        self.addRoute("/upstream", upstream, methods={"get"})
"#;

/// A list of 10 faces; the default matcher's answer for a probe against it.
fn list_and_default_answer(s: &Service) -> (String, serde_json::Value) {
    let list = s.call("POST", "/1/lists", Some(&json!({"account_id": ACCOUNT}))).json()["list_id"].as_str().unwrap().to_owned();
    for i in 0..10u64 {
        let body = json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&blend(&descriptor(0), &descriptor(500 + i), i as usize * 40))}, "lists": [list]});
        assert_eq!(s.call("POST", "/1/faces", Some(&body)).status, 201);
    }
    let answer = match_as(s, &list, "nobody");
    assert_eq!(answer.as_array().unwrap().len(), 3);
    (list, answer)
}

/// `/1/matcher/faces` for a probe whose reference id is `id`: its result.
fn match_as(s: &Service, list: &str, id: &str) -> serde_json::Value {
    let q = json!({"references": [{"type": "descriptor", "id": id, "data": b64(&descriptor(0))}],
                   "candidates": [{"filters": {"origin": "faces", "list_id": list}, "limit": 3}]});
    let r = s.call("POST", "/1/matcher/faces", Some(&q));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()[0]["matches"][0]["result"].clone()
}

#[test]
fn plugin_exceptions_are_told_apart_by_type_not_name() {
    let matchers = ["not_cached", "own_timeout", "type_error", "rematch_later"];
    let files: Vec<(String, &str)> = matchers.iter().map(|m| (format!("{m}.py"), CONFUSING_MATCHER)).collect();
    let mut plugins: Vec<(&str, &str)> = files.iter().map(|(f, s)| (f.as_str(), *s)).collect();
    plugins.extend([("event_timeout.py", EVENT_OWN_TIMEOUT), ("route_timeout.py", ROUTE_OWN_TIMEOUT)]);
    let names: Vec<String> = plugins.iter().map(|(f, _)| format!("\"{}\"", f.trim_end_matches(".py"))).collect();
    let config = format!("[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [{}]\ntimeout = \"1s\"\nbackoff_initial = \"50ms\"\n", names.join(", "));
    let mut s = Service::spawn(&plugins, &config);
    s.ready();
    let (list, by_default) = list_and_default_answer(&s);

    // Each sub-request is answered by the default matcher, whatever the plugin raised.
    for m in matchers {
        assert_eq!(match_as(&s, &list, m), by_default, "{m}");
    }
    // A subclass of Rematch is a Rematch: handed back, neither an error nor a restart.
    let p = s.plugin("not_cached");
    assert_eq!((p["state"].as_str(), p["restarts"].as_u64(), p["errors"].as_u64()), (Some("running"), Some(0), Some(0)), "{p}");
    // The plugin's own TimeoutError, a TypeError that reads like the host's, and a class
    // named like Rematch are unexpected exceptions of the plugin: it is restarted.
    for (m, message) in [("own_timeout", "redis read timed out"), ("type_error", "match() returned nothing I can use"), ("rematch_later", "try again later")] {
        s.wait_for(|| s.plugin(m)["restarts"].as_u64().unwrap() >= 1, &format!("{m} is restarted"));
        let p = s.plugin(m);
        assert!(p["last_error"].as_str().unwrap().contains(message), "{p}");
    }

    // An event handler's own TimeoutError is an error of the handler, not an overrun.
    s.wait_for(|| s.plugin("event_timeout")["errors"].as_u64().unwrap() >= 3, "handleEvent errors are counted");
    let p = s.plugin("event_timeout");
    assert_eq!((p["state"].as_str(), p["restarts"].as_u64()), (Some("running"), Some(0)), "{p}");
    assert!(p["last_error"].as_str().unwrap().contains("TimeoutError: the receiver timed out"), "{p}");

    // A route's own TimeoutError is a plugin error (500, 10010), not the host's timeout (504).
    let r = s.call("GET", "/upstream", None);
    assert_eq!((r.status, r.code()), (500, 10010), "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["detail"].as_str().unwrap().contains("upstream timed out"));
    assert_eq!(s.plugin("route_timeout")["restarts"], 0);
    assert!(s.terminate().success());
}

/// A matching plugin whose `getMatchingCost` sleeps or spins when told to.
const BLOCKING_COST: &str = r#"
import os
import time

from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin
from luna_plugins.matcher_plugins.base_plugin import BaseMatcherPlugin
from luna_plugins.matcher_plugins.base_struct import MatchUnitType

state = {"mode": "ok", "in_cost": False}


class Control(BaseBackgroundPlugin):
    async def initialize(self):
        self.addRoute("/cost/{mode}", self.set_mode, methods={"post"})
        self.addRoute("/cost-state", self.report, methods={"get"})

    async def set_mode(self, request):
        state["mode"] = request.match_info["mode"]
        return state

    async def report(self, request):
        return state


class BlockingCost(BaseMatcherPlugin):
    availableReferenceTypes = frozenset([MatchUnitType.descriptor])
    availableCandidateTypes = frozenset([MatchUnitType.face])

    def getAvailableTargets(self, origin):
        return frozenset(["face_id", "similarity"])

    def getMatchingCost(self, request):
        state["in_cost"] = True
        try:
            if state["mode"] == "sleep":
                time.sleep(3)
            elif state["mode"] == "spin":
                try:
                    while True:
                        pass
                except BaseException as error:
                    with open(os.environ["SPIN_LOG"], "a") as f:
                        f.write(type(error).__name__ + "\n")
                    raise
            return float("inf")
        finally:
            state["in_cost"] = False

    async def match(self, request):
        return []
"#;

#[test]
fn a_blocking_matching_cost_holds_nothing_and_is_restarted() {
    let spin_log = tempfile::NamedTempFile::new().unwrap();
    let config = "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"blocking_cost\"]\ntimeout = \"500ms\"\nbackoff_initial = \"50ms\"\n";
    let mut s = Service::spawn_with_env(&[("blocking_cost.py", BLOCKING_COST)], config, &[("SPIN_LOG", spin_log.path().to_str().unwrap())]);
    s.ready();
    let (list, by_default) = list_and_default_answer(&s);

    s.call("POST", "/cost/sleep", None);
    let addr = s.addr;
    let probe = {
        let list = list.clone();
        std::thread::spawn(move || {
            let q = json!({"references": [{"type": "descriptor", "id": "p", "data": b64(&descriptor(0))}],
                           "candidates": [{"filters": {"origin": "faces", "list_id": list}, "limit": 3}]});
            request(addr, "POST", "/1/matcher/faces", &[("Content-Type", "application/json")], &serde_json::to_vec(&q).unwrap())
        })
    };
    // The plugin's own route answers while its getMatchingCost is blocked: neither its
    // actor nor the event loop is held by it.
    s.wait_for(|| s.call("GET", "/cost-state", None).json()["in_cost"] == true, "a route answers during the blocked getMatchingCost");
    let r = probe.join().unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()[0]["matches"][0]["result"], by_default, "the default matcher answers");
    s.wait_for(|| s.plugin("blocking_cost")["restarts"] == 1, "the blocked plugin is restarted");
    assert!(s.plugin("blocking_cost")["last_error"].as_str().unwrap().contains("getMatchingCost timed out"), "{}", s.plugin("blocking_cost"));
    s.wait_for(|| s.plugin("blocking_cost")["state"] == "running", "it comes back");
    assert_eq!(match_as(&s, &list, "p"), by_default);
    assert_eq!(s.plugin("blocking_cost")["restarts"], 1, "the fresh instance costs normally");

    // A busy loop is interrupted in its thread, not left spinning.
    s.call("POST", "/cost/spin", None);
    assert_eq!(match_as(&s, &list, "p"), by_default);
    s.wait_for(|| s.plugin("blocking_cost")["restarts"] == 2, "the spinning plugin is restarted");
    s.wait_for(|| std::fs::read_to_string(spin_log.path()).unwrap() == "HostTimeout\n", "the spinning call is interrupted");
    assert!(s.terminate().success());
}

#[test]
fn plugins_reach_the_service_on_its_ipv6_address() {
    let whereami = r#"
import asyncio
import urllib.request

from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin


class P(BaseBackgroundPlugin):
    async def initialize(self):
        self.addRoute("/whereami", self.whereami, methods={"get"})

    async def whereami(self, request):
        url = self.app.ctx.serviceUrl

        def version():
            with urllib.request.urlopen(url + "/1/version", timeout=5) as r:
                return r.status

        return {"url": url, "status": await asyncio.get_running_loop().run_in_executor(None, version)}
"#;
    let s = Service::spawn_on("::1".parse().unwrap(), &[("whereami.py", whereami)], "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"whereami\"]\n", &[]);
    s.ready();
    let r = s.call("GET", "/whereami", None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({"url": format!("http://[::1]:{}", s.addr.port()), "status": 200}));
}

#[test]
fn a_generation_without_event_classes_takes_no_events() {
    // The first import has an event class whose handler hangs; the one after the restart has none.
    // The failed first generation is closed.
    let shifting = r#"
import asyncio
import os

from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin, BaseEventPlugin

FIRST = not os.path.exists(os.environ["SHIFT_MARK"])
open(os.environ["SHIFT_MARK"], "a").close()

if FIRST:
    class Hangs(BaseEventPlugin):
        eventName = "monitoring_event"

        async def handleEvent(self, points, logger):
            await asyncio.Event().wait()

        async def close(self):
            with open(os.environ["SHIFT_MARK"], "a") as f:
                f.write("first generation closed\n")
else:
    class Quiet(BaseBackgroundPlugin):
        async def initialize(self):
            await asyncio.sleep(1)
"#;
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("imported");
    let config = "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"shifting\"]\ntimeout = \"300ms\"\nbackoff_initial = \"50ms\"\n";
    let s = Service::spawn_with_env(&[("shifting.py", shifting)], config, &[("SHIFT_MARK", mark.to_str().unwrap())]);
    s.ready();
    s.wait_for(|| s.plugin("shifting")["restarts"] == 1, "the hung handler restarts the plugin");
    assert_eq!(s.plugin("shifting")["state"], "restarting");
    for _ in 0..5 {
        assert_eq!(s.call("GET", "/1/version", None).status, 200);
    }
    s.wait_for(|| s.plugin("shifting")["state"] == "running", "the second generation runs");
    assert_eq!(std::fs::read_to_string(&mark).unwrap(), "first generation closed\n", "the failed generation is closed");
    let p = s.plugin("shifting");
    assert_eq!(p["kind"], "background", "{p}");
    // What was queued for the old subscription is dropped, counted, and no more comes.
    let dropped = p["dropped_events"].as_u64().unwrap();
    assert!(dropped >= 5, "{p}");
    for _ in 0..10 {
        assert_eq!(s.call("GET", "/1/version", None).status, 200);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let p = s.plugin("shifting");
    assert_eq!((p["dropped_events"].as_u64(), p["restarts"].as_u64(), p["state"].as_str()), (Some(dropped), Some(1), Some("running")), "{p}");
}

#[test]
fn close_waits_for_the_event_in_flight() {
    let slow = r#"
import asyncio
import os

from luna_plugins.base.plugins_meta.base_plugins import BaseEventPlugin


def note(what):
    with open(os.environ["CLOSE_LOG"], "a") as f:
        f.write(what + "\n")


class P(BaseEventPlugin):
    eventName = "monitoring_event"

    async def handleEvent(self, points, logger):
        note("start")
        await asyncio.sleep(1)
        note("end")

    async def close(self):
        note("close")
"#;
    let log = tempfile::NamedTempFile::new().unwrap();
    let config = "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"slow_events\"]\n[shutdown]\nflush_timeout = \"100ms\"\n";
    let mut s = Service::spawn_with_env(&[("slow_events.py", slow)], config, &[("CLOSE_LOG", log.path().to_str().unwrap())]);
    s.ready();
    s.call("GET", "/1/version", None);
    s.wait_for(|| std::fs::read_to_string(log.path()).unwrap().contains("start"), "an event is being handled");
    assert!(s.terminate().success());
    let notes = std::fs::read_to_string(log.path()).unwrap();
    let lines: Vec<&str> = notes.lines().collect();
    assert_eq!(lines.last(), Some(&"close"), "{notes}");
    assert_eq!(lines.iter().filter(|l| **l == "start").count(), lines.iter().filter(|l| **l == "end").count(), "every delivery finished before close: {notes}");
}

/// Every sample line of a Prometheus text exposition is well formed: `name{k="v",...} value`,
/// with only `\\`, `\"` and `\n` escaped in label values.
fn assert_exposition(text: &str) {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let bad = || panic!("malformed sample line: {line:?}");
        let Some(open) = line.find('{') else {
            let mut parts = line.split(' ');
            if parts.next().is_none_or(str::is_empty) || parts.next().is_none_or(|v| v.parse::<f64>().is_err()) {
                bad();
            }
            continue;
        };
        let mut chars = line[open + 1..].chars();
        loop {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || chars.next() != Some('"') {
                bad();
            }
            loop {
                match chars.next() {
                    Some('\\') if matches!(chars.next(), Some('\\' | '"' | 'n')) => {}
                    Some('"') => break,
                    Some('\n' | '\\') | None => bad(),
                    Some(_) => {}
                }
            }
            match chars.next() {
                Some(',') => continue,
                Some('}') => break,
                _ => bad(),
            }
        }
        let rest: String = chars.collect();
        if rest.strip_prefix(' ').is_none_or(|v| v.parse::<f64>().is_err()) {
            bad();
        }
    }
}

#[test]
fn metrics_escape_plugin_route_templates() {
    let odd = r#"
from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin


class P(BaseBackgroundPlugin):
    async def initialize(self):
        self.addRoute('/quote/{a"b\\c}', lambda request: "quoted", methods={"get"})
        self.addRoute("/newline/{a\nb}", lambda request: "newline", methods={"get"})
"#;
    let s = Service::spawn(&[("odd_routes.py", odd)], "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"odd_routes\"]\n");
    s.ready();
    assert_eq!(s.call("GET", "/quote/1", None).body, b"quoted");
    assert_eq!(s.call("GET", "/newline/1", None).body, b"newline");
    let metrics = String::from_utf8(s.call("GET", "/metrics", None).body).unwrap();
    assert_exposition(&metrics);
    assert!(metrics.contains(r#"luna_matcher_requests_total{method="GET",route="/quote/{a\"b\\c}",status="200"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"luna_matcher_request_duration_seconds_count{route="/newline/{a\nb}"} 1"#), "{metrics}");
}

#[test]
fn plugins_show_their_kind_even_when_they_never_ran() {
    let base = "import asyncio\nfrom luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin, BaseEventPlugin\n";
    let handler = "    eventName = 'monitoring_event'\n    async def handleEvent(self, points, logger):\n        pass\n";
    let mixed = format!("{base}class First(BaseEventPlugin):\n{handler}class Middle(BaseBackgroundPlugin):\n    pass\nclass Last(BaseEventPlugin):\n{handler}");
    let bad_ctor = format!("{base}class P(BaseEventPlugin):\n{handler}    def __init__(self, app):\n        raise RuntimeError('no constructor')\n");
    let bad_start = format!("{base}class P(BaseBackgroundPlugin):\n    async def initialize(self):\n        raise RuntimeError('no start')\n");
    let config = "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"mixed\", \"bad_ctor\", \"bad_start\"]\nmax_restarts = 1\nbackoff_initial = \"50ms\"\n";
    let s = Service::spawn(&[("mixed.py", &mixed), ("bad_ctor.py", &bad_ctor), ("bad_start.py", &bad_start)], config);
    s.ready();
    let p = s.plugin("mixed");
    assert_eq!((p["kind"].as_str(), p["state"].as_str()), (Some("event+background"), Some("running")), "each kind once: {p}");
    assert_eq!(p["class"], "plugins.mixed.First, plugins.mixed.Middle, plugins.mixed.Last");
    let p = s.plugin("bad_ctor");
    assert_eq!((p["state"].as_str(), p["kind"].as_str(), p["class"].as_str()), (Some("failed"), Some("event"), Some("plugins.bad_ctor.P")), "{p}");
    s.wait_for(|| s.plugin("bad_start")["state"] == "failed", "initialize fails for good");
    let p = s.plugin("bad_start");
    assert_eq!((p["kind"].as_str(), p["class"].as_str()), (Some("background"), Some("plugins.bad_start.P")), "{p}");
}

#[test]
fn task_errors_someone_watches_are_not_deaths() {
    let watched = r#"
import asyncio

from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin


class P(BaseBackgroundPlugin):
    async def initialize(self):
        self.seen = []
        self.failing = asyncio.create_task(self.fail())
        self.watcher = asyncio.create_task(self.watch())
        self.gatherer = asyncio.create_task(self.gather())
        self.addRoute("/seen", self.report, methods={"get"})

    async def fail(self):
        await asyncio.sleep(0.05)
        raise RuntimeError("expected")

    async def watch(self):
        try:
            await self.failing
        except RuntimeError as error:
            self.seen.append(f"awaited: {error}")

    async def gather(self):
        outcome = await asyncio.gather(asyncio.create_task(self.fail()), return_exceptions=True)
        self.seen.append(f"gathered: {outcome[0]}")

    async def report(self, request):
        return sorted(self.seen)
"#;
    let config = "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"watched\"]\n";
    let s = Service::spawn(&[("watched.py", watched)], config);
    s.ready();
    s.wait_for(|| s.call("GET", "/seen", None).json().as_array().unwrap().len() == 2, "both errors are seen by the plugin");
    assert_eq!(s.call("GET", "/seen", None).json(), json!(["awaited: expected", "gathered: expected"]));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let p = s.plugin("watched");
    assert_eq!((p["state"].as_str(), p["restarts"].as_u64(), p["errors"].as_u64()), (Some("running"), Some(0), Some(0)), "{p}");
}

#[test]
fn repeated_plugin_errors_are_rate_limited_with_one_traceback() {
    let noisy = "from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin\n\n\ndef boom(request):\n    raise ValueError('same thing every time')\n\n\nclass P(BaseBackgroundPlugin):\n    async def initialize(self):\n        self.addRoute('/noisy', boom, methods={'get'})\n";
    let mut s = Service::spawn(&[("noisy.py", noisy)], "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"noisy\"]\n");
    s.ready();
    for _ in 0..30 {
        assert_eq!(s.call("GET", "/noisy", None).code(), 10010);
    }
    let error = "plugin noisy: route GET /noisy: ValueError: same thing every time";
    s.wait_for(|| s.log().contains(&format!("{error} (repeated 27 more times in the last 5s)")), "a summary of the repeats");
    let log = s.log();
    assert_eq!(log.lines().filter(|l| l.ends_with(error)).count(), 3, "the first three are logged: {log}");
    assert_eq!(log.matches("Traceback (most recent call last)").count(), 1, "one traceback: {log}");
    assert!(log.contains("noisy.py\", line 5, in boom"), "the traceback points into the plugin: {log}");
    assert_eq!(s.plugin("noisy")["errors"], 30, "every one is counted");
    assert!(s.terminate().success());
}

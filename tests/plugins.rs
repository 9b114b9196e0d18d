//! Real plugin files loaded by the real binary: the shipped examples, every
//! lifecycle and failure path, discovery rules, and shutdown.

mod common;

use common::*;
use serde_json::json;

const FAST_SUPERVISION: &str = "max_restarts = 2\nbackoff_initial = \"50ms\"\nbackoff_max = \"100ms\"\ntimeout = \"300ms\"\n";

#[test]
fn teapot_routes_job_and_shutdown() {
    let mut s = Service::spawn(
        &[("teapot.py", &shipped_plugin("teapot.py"))],
        "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"teapot\"]\n[plugins.config.teapot]\ninterval = 0.05\n",
    );
    s.ready();
    let r = s.call("GET", "/teapot", None);
    assert_eq!((r.status, r.body.as_slice(), r.header("Content-Type")), (418, &b"I am teapot"[..], Some("text/plain")));
    let r = s.call("GET", "/teapot/version", None);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"T800"[..]));
    assert_eq!(s.call("POST", "/teapot/version", Some(&json!({}))).code(), 11031, "methods={{'get'}} only");
    s.wait_for(|| s.call("GET", "/teapot/ticks", None).json()["ticks"].as_u64().unwrap() >= 3, "the periodic job runs");
    let p = s.plugin("teapot");
    assert_eq!((p["state"].as_str(), p["kind"].as_str(), p["class"].as_str()), (Some("running"), Some("background"), Some("plugins.teapot.TeapotPlugin")));
    assert_eq!(p["routes"], json!(["/teapot", "/teapot/ticks", "/teapot/version"]));
    assert!(p["calls"].as_u64().unwrap() >= 3);
    s.call("GET", "/no/such/route", None);
    let metrics = String::from_utf8(s.call("GET", "/metrics", None).body).unwrap();
    assert!(metrics.contains(r#"luna_matcher_requests_total{method="GET",route="/teapot",status="418"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"luna_matcher_requests_total{method="GET",route="unmatched",status="404"} 1"#), "{metrics}");
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
    let log = s.log();
    assert!(log.contains("plugin teapot closed") && log.contains("stopped"), "{log}");
}

#[test]
fn request_monitoring_reaches_the_receiver() {
    let (url, bodies) = receiver();
    let config = format!(
        "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"request_monitoring\"]\n[plugins.config.request_monitoring]\nurl = \"{url}\"\nflush_interval = 0.1\n"
    );
    let mut s = Service::spawn(&[("request_monitoring.py", &shipped_plugin("request_monitoring.py"))], &config);
    s.ready();
    let id = "1700000000,0123abcd-0000-4000-8000-00000000abcd";
    request(s.addr, "GET", "/1/version", &[("Luna-Request-Id", id)], b"");
    s.call("GET", "/nowhere", None);
    let lines = || bodies.lock().unwrap().join("\n");
    s.wait_for(|| lines().contains("error,error_code=11030"), "the error point arrives");
    let all = lines();
    let request_line = all.lines().find(|l| l.contains("route=GET:/1/version")).unwrap_or_else(|| panic!("{all}"));
    let tags = format!("request,instance={},route=GET:/1/version,service=luna-matcher-proxy,status_code=200 ", s.addr);
    assert!(request_line.starts_with(&tags), "{request_line}");
    assert!(request_line.contains(&format!("request_id=\"{id}\"")) && request_line.contains("execution_time="), "{request_line}");
    let ns: u128 = request_line.rsplit(' ').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    assert!(now - ns < 60_000_000_000, "the timestamp is the request's start, in ns");
    let p = s.plugin("request_monitoring");
    assert_eq!(p["kind"], "event+background", "an event and a background plugin from one module");

    // What is buffered at SIGTERM is flushed through close().
    let before = bodies.lock().unwrap().len();
    request(s.addr, "GET", "/1/version", &[("Luna-Request-Id", "1700000001,0123abcd-0000-4000-8000-00000000abcd")], b"");
    assert!(s.terminate().success());
    assert!(bodies.lock().unwrap()[before..].join("\n").contains("1700000001,0123abcd"), "the last request's point was delivered at shutdown");
}

/// The shape of LUNA's documented request-monitoring example: its own abstract
/// base in the module, `__init__` without `super()`, a session opened in
/// `initialize`, one POST per point.
const LUNA_STYLE_EXAMPLE: &str = r#"
"""
Module request monitoring plugin example
"""
import asyncio
from abc import abstractmethod

from aiohttp import ClientSession
from luna_plugins.base.plugins_meta.base_plugins import BaseEventPlugin


class BaseRequestMonitoringPlugin(BaseEventPlugin):
    """
    Base class for requests monitoring.
    """

    # event name for triggering callback
    eventName = "monitoring_event"

    @abstractmethod
    async def flushPointToMonitoring(self, point: "MonitoringPoint", logger) -> None:
        """
        All plugins must realize this method.
        """

    async def handleEvent(self, points: list["MonitoringPoint"], logger):
        await asyncio.gather(*[self.flushPointToMonitoring(point, logger) for point in points])


class RequestMonitoringPlugin(BaseRequestMonitoringPlugin):
    """
    Example plugin sends a request data for monitoring to third-party source.
    Only one instance of this class exist during the program execution.
    """

    def __init__(self, app: "LunaApplication"):
        self.url = "RECEIVER_URL"
        self.session: ClientSession | None = None

    async def close(self):
        if self.session:
            await self.session.close()

    async def initialize(self):
        self.session = ClientSession()

    async def flushPointToMonitoring(self, point: "MonitoringPoint", logger) -> None:
        logger.debug(f"Send point {point} to monitoring")
        async with self.session.post(self.url, json=vars(point)) as resp:
            logger.debug(resp.status)
"#;

#[test]
fn luna_documented_example_runs_unchanged() {
    let (url, bodies) = receiver();
    let plugin = LUNA_STYLE_EXAMPLE.replace("RECEIVER_URL", &url);
    let mut s = Service::spawn(&[("luna_example.py", &plugin)], "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"luna_example\"]\n");
    s.ready();
    s.call("GET", "/1/lists/not-a-uuid", None);
    let arrived = |series: &str| bodies.lock().unwrap().iter().any(|b| b.contains(&format!("\"series\": \"{series}\"")));
    s.wait_for(|| arrived("error") && arrived("request"), "both points arrive");
    let points: Vec<serde_json::Value> = bodies.lock().unwrap().iter().map(|b| serde_json::from_str(b).unwrap()).collect();
    let error = points.iter().find(|p| p["series"] == "error").unwrap();
    let tags = json!({"service": "luna-matcher-proxy", "instance": s.addr.to_string(), "route": "GET:/1/lists/{list_id}", "status_code": "400", "error_code": "11004"});
    assert_eq!(error["tags"], tags);
    assert!(error["fields"]["request_id"].is_string() && error["eventTime"].is_f64());
    assert!(points.iter().any(|p| p["series"] == "request"));
    assert_eq!(s.plugin("luna_example")["class"], "plugins.luna_example.RequestMonitoringPlugin", "the abstract base in the module is not activated");
    assert!(s.terminate().success());
}

#[test]
fn every_failure_path_leaves_the_service_serving() {
    let base = "from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin, BaseEventPlugin, pluginHTTPResponse\nimport asyncio\n";
    let bad_init = format!("{base}class P(BaseBackgroundPlugin):\n    def __init__(self, app):\n        raise RuntimeError('no init here')\n");
    let bad_initialize = format!(
        "{base}with open(__import__('os').environ['IMPORT_LOG'], 'a') as f:\n    f.write('imported\\n')\nclass P(BaseBackgroundPlugin):\n    async def initialize(self):\n        raise RuntimeError('cannot initialize')\n"
    );
    let bad_event = format!("{base}class P(BaseEventPlugin):\n    eventName = 'monitoring_event'\n    async def handleEvent(self, points, logger):\n        raise ValueError('bad event')\n");
    let bad_route = format!(
        "{base}def boom(request):\n    raise KeyError('route broke')\nclass P(BaseBackgroundPlugin):\n    async def initialize(self):\n        self.addRoute('/boom', boom, methods={{'get'}})\n"
    );
    let bad_close = format!("{base}class P(BaseBackgroundPlugin):\n    async def close(self):\n        raise RuntimeError('cannot close')\n");
    let hung_event = format!("{base}class P(BaseEventPlugin):\n    eventName = 'monitoring_event'\n    async def handleEvent(self, points, logger):\n        await asyncio.Event().wait()\n");
    let dying_task = format!(
        "{base}class P(BaseBackgroundPlugin):\n    async def initialize(self):\n        self.task = asyncio.create_task(self.job())\n    async def job(self):\n        await asyncio.sleep(0.05)\n        raise RuntimeError('job died')\n"
    );
    let panicky = format!("{base}import luna_matcher\nclass P(BaseBackgroundPlugin):\n    def __init__(self, app):\n        raise luna_matcher.PanicException('native code panicked')\n");
    let collide = format!(
        "{base}class P(BaseBackgroundPlugin):\n    async def initialize(self):\n        self.addRoute('/1/lists/{{x}}', lambda r: 'mine', methods={{'get'}})\n"
    );
    let plugins = [
        ("bad_init.py", bad_init.as_str()),
        ("bad_initialize.py", &bad_initialize),
        ("bad_event.py", &bad_event),
        ("bad_route.py", &bad_route),
        ("bad_close.py", &bad_close),
        ("hung_event.py", &hung_event),
        ("dying_task.py", &dying_task),
        ("panicky.py", &panicky),
        ("collide.py", &collide),
    ];
    let names: Vec<String> = plugins.iter().map(|(f, _)| format!("\"{}\"", f.trim_end_matches(".py"))).collect();
    let import_log = tempfile::NamedTempFile::new().unwrap();
    let config = format!("[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [{}]\n{FAST_SUPERVISION}", names.join(", "));
    let mut s = Service::spawn_with_env(&plugins, &config, &[("IMPORT_LOG", import_log.path().to_str().unwrap())]);
    s.ready(); // a crash loop does not hold readiness back

    let p = s.plugin("bad_init");
    assert_eq!((p["state"].as_str(), p["restarts"].as_u64()), (Some("failed"), Some(0)), "{p}");
    assert!(p["last_error"].as_str().unwrap().contains("no init here"), "{p}");

    for (name, error) in [
        ("bad_initialize", "cannot initialize"),
        ("dying_task", "job died"),
        ("panicky", "panic in the bridge"),
        ("collide", "collides with the service route"),
    ] {
        s.wait_for(|| s.plugin(name)["state"] == "failed", &format!("{name} fails after max_restarts"));
        let p = s.plugin(name);
        assert_eq!(p["restarts"], 3, "{p}");
        assert!(p["last_error"].as_str().unwrap().contains(error), "{p}");
    }
    let imports = std::fs::read_to_string(import_log.path()).unwrap();
    assert_eq!(imports.lines().count(), 3, "each restart imports the module afresh");

    // Every request publishes an event: the bad handler errors, the hung one is restarted.
    for _ in 0..3 {
        assert_eq!(s.call("GET", "/1/version", None).status, 200);
    }
    s.wait_for(|| s.plugin("bad_event")["errors"].as_u64().unwrap() >= 3, "handleEvent errors are counted");
    assert_eq!((s.plugin("bad_event")["state"].as_str(), s.plugin("bad_event")["restarts"].as_u64()), (Some("running"), Some(0)));
    s.wait_for(|| s.plugin("hung_event")["restarts"].as_u64().unwrap() >= 1, "a handler past its timeout is restarted");
    assert!(s.plugin("hung_event")["last_error"].as_str().unwrap().contains("timed out"));

    for _ in 0..2 {
        let r = s.call("GET", "/boom", None);
        assert_eq!((r.status, r.code()), (500, 10010));
        assert!(r.json()["detail"].as_str().unwrap().contains("route broke"));
    }
    assert_eq!(s.plugin("bad_route")["state"], "running");
    let item = json!({"id": "a", "data": b64(&descriptor(1))});
    assert_eq!(s.call("POST", "/1/matcher/raw", Some(&json!({"references": [item], "candidates": [item]}))).status, 200);
    assert_eq!(s.call("GET", "/healthcheck", None).status, 200);
    let metrics = String::from_utf8(s.call("GET", "/metrics", None).body).unwrap();
    assert!(metrics.contains("luna_matcher_plugin_restarts_total{plugin=\"panicky\"} 3"), "{metrics}");
    assert!(metrics.contains("luna_matcher_plugin_state{plugin=\"bad_init\",state=\"failed\"} 1"), "{metrics}");

    let status = s.terminate();
    assert!(status.success(), "{status:?}");
    assert!(s.log().contains("close failed: RuntimeError: cannot close"), "{}", s.log());
}

#[test]
fn a_plugin_that_blocks_its_thread_does_not_block_requests() {
    let sleepy = "import time\nfrom luna_plugins.base.plugins_meta.base_plugins import BaseEventPlugin\nclass P(BaseEventPlugin):\n    eventName = 'monitoring_event'\n    async def handleEvent(self, points, logger):\n        time.sleep(0.5)\n";
    let mut s = Service::spawn(&[("sleepy.py", sleepy)], &format!("[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"sleepy\"]\n{FAST_SUPERVISION}"));
    s.ready();
    let item = json!({"id": "a", "data": b64(&descriptor(1))});
    for _ in 0..20 {
        assert_eq!(s.call("POST", "/1/matcher/raw", Some(&json!({"references": [item], "candidates": [item]}))).status, 200);
        assert_eq!(s.call("GET", "/1/version", None).status, 200);
    }
    s.wait_for(|| s.plugin("sleepy")["restarts"].as_u64().unwrap() >= 1, "the blocking handler overruns and is restarted");
    assert!(s.terminate().success());
}

#[test]
fn a_slow_event_plugin_drops_its_oldest_events() {
    let slow = "import asyncio\nfrom luna_plugins.base.plugins_meta.base_plugins import BaseEventPlugin\nclass P(BaseEventPlugin):\n    eventName = 'monitoring_event'\n    async def handleEvent(self, points, logger):\n        await asyncio.sleep(0.2)\n";
    let config = "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"slow\"]\nqueue_size = 2\n[shutdown]\nflush_timeout = \"100ms\"\n";
    let mut s = Service::spawn(&[("slow.py", slow)], config);
    s.ready();
    for _ in 0..30 {
        assert_eq!(s.call("GET", "/1/version", None).status, 200);
    }
    let p = s.plugin("slow");
    assert!(p["dropped_events"].as_u64().unwrap() >= 20, "{p}");
    assert_eq!(p["state"], "running");
    assert!(s.terminate().success());
}

#[test]
fn discovery_activates_each_concrete_class_once() {
    let impl_py = [
        "import sys",
        "from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundHandler, BaseBackgroundPlugin, BaseEventPlugin",
        "class Abstract(BaseEventPlugin):",
        "    pass",
        "class Echo(BaseBackgroundHandler):",
        "    def post(self, request):",
        "        body = {'method': request.method, 'path': request.path, 'json': request.json(), 'header': request.headers.get('x-test')}",
        "        return self.response(body=body, statusCode=201)",
        "class Plugin(BaseBackgroundPlugin):",
        "    async def initialize(self):",
        "        self.addRoute('/pkg/{item}', self.item, methods={'get'})",
        "        self.addRoute('/pkg-echo', Echo)",
        "        self.addRoute('/pkg-python', lambda request: {'version': sys.version, 'prefix': sys.prefix}, methods={'get'})",
        "    async def item(self, request):",
        "        return {'item': request.match_info['item'], 'q': request.query.get('q'), 'config': self.app.ctx.config}",
    ]
    .join("\n");
    let init_py = "from .impl import Plugin, Abstract\nAgain = Plugin\n";
    // Its constructor asks for the event loop outside a coroutine, as some LUNA plugins do.
    let other_py = "import asyncio\nfrom plugins.pkg.impl import Plugin\nfrom luna_plugins.base.plugins_meta.base_plugins import *\nclass Own(BaseBackgroundPlugin):\n    def __init__(self, app):\n        super().__init__(app)\n        self.loop = asyncio.get_event_loop()\n";
    let config = "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"pkg\", \"other\", \"missing\"]\n[plugins.config.pkg]\ncolour = \"blue\"\n";
    let s = Service::spawn(&[("pkg/__init__.py", init_py), ("pkg/impl.py", &impl_py), ("other.py", other_py)], config);
    s.ready();
    let pkg = s.plugin("pkg");
    assert_eq!(pkg["classes"], json!([{"class": "plugins.pkg.impl.Plugin", "kind": "background"}]), "{pkg}");
    let other = s.plugin("other");
    assert_eq!(other["state"], "running", "{other}");
    assert_eq!(other["classes"], json!([{"class": "plugins.other.Own", "kind": "background"}]), "a class reached twice is activated once: {other}");
    let r = s.call("GET", "/pkg/42?q=x", None);
    assert_eq!(r.json(), json!({"item": "42", "q": "x", "config": {"colour": "blue"}}));
    let r = request(s.addr, "POST", "/pkg-echo", &[("Content-Type", "application/json"), ("X-Test", "yes")], br#"{"a": [1, 2]}"#);
    assert_eq!((r.status, r.json()), (201, json!({"method": "POST", "path": "/pkg-echo", "json": {"a": [1, 2]}, "header": "yes"})));
    assert_eq!(s.call("GET", "/pkg-echo", None).code(), 11031, "a handler class without get()");

    // The embedded interpreter is the python3 the binary was built against (rpath to its libpython).
    let embedded = s.call("GET", "/pkg-python", None).json();
    let out = std::process::Command::new("python3").args(["-c", "import sys; print(sys.version); print(sys.prefix)"]).output().unwrap();
    let expected = String::from_utf8(out.stdout).unwrap();
    assert_eq!(format!("{}\n{}\n", embedded["version"].as_str().unwrap(), embedded["prefix"].as_str().unwrap()), expected);
    let missing = s.plugin("missing");
    assert_eq!(missing["state"], "failed");
    assert!(missing["last_error"].as_str().unwrap().contains("No module named 'plugins.missing'"), "{missing}");
}

#[test]
fn healthcheck_waits_for_plugins_to_start() {
    let slow_start = "import asyncio\nfrom luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin\nclass P(BaseBackgroundPlugin):\n    async def initialize(self):\n        await asyncio.sleep(3)\n";
    let s = Service::spawn(&[("slow_start.py", slow_start)], "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"slow_start\"]\nrequired = [\"slow_start\"]\n");
    let first = s.call("GET", "/healthcheck", None);
    assert_eq!(first.status, 503, "{}", String::from_utf8_lossy(&first.body));
    assert_eq!(first.json()["errors"][0]["component"], "plugin:slow_start");
    assert_eq!(s.call("GET", "/1/version", None).status, 200, "the API serves while plugins start");
    s.ready();
    assert_eq!(s.plugin("slow_start")["state"], "running");
}

#[test]
fn a_required_plugin_that_fails_makes_the_service_unhealthy() {
    let broken = "from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin\nclass P(BaseBackgroundPlugin):\n    def __init__(self, app):\n        raise RuntimeError('broken')\n";
    let s = Service::spawn(&[("broken.py", broken)], "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"broken\"]\nrequired = [\"broken\"]\n");
    s.wait_for(|| s.call("GET", "/healthcheck", None).status == 502, "the healthcheck reports the required plugin");
    let body = s.call("GET", "/healthcheck", None).json();
    assert_eq!(body["errors"][0]["component"], "plugin:broken");
}

#[test]
fn names_that_are_not_identifiers_are_refused() {
    for bad in [r#"["../x"]"#, r#"["a.b"]"#] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_luna-matcher"))
            .args(["--config", "conf/luna-matcher.toml", "--port", &free_port().to_string()])
            .env("LUNA_MATCHER_PROXY_ACTIVE_PLUGINS", bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("LUNA_MATCHER_PROXY_ACTIVE_PLUGINS") && err.contains("not a Python identifier"), "{err}");
    }
}

#[test]
fn sigterm_finishes_in_flight_requests() {
    let slow_route = "import asyncio\nfrom luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin\nclass P(BaseBackgroundPlugin):\n    async def initialize(self):\n        self.addRoute('/slow', self.slow, methods={'get'})\n    async def slow(self, request):\n        await asyncio.sleep(1)\n        return 'finished'\n";
    let mut s = Service::spawn(&[("slow_route.py", slow_route)], "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"slow_route\"]\n");
    s.ready();
    let addr = s.addr;
    let in_flight = std::thread::spawn(move || request(addr, "GET", "/slow", &[], b""));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let status = s.terminate();
    let r = in_flight.join().unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"finished"[..]), "the request in flight at SIGTERM is answered");
    assert!(status.success(), "{status:?}");
    assert!(std::net::TcpStream::connect(addr).is_err(), "nothing listens after the stop");
}

#[test]
fn json_logs_carry_plugin_output_under_its_name() {
    let chatty = "from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin\nclass P(BaseBackgroundPlugin):\n    async def initialize(self):\n        self.app.ctx.logger.warning('hello from %s', 'chatty')\n";
    let mut s = Service::spawn(&[("chatty.py", chatty)], "[server]\nlog_format = \"json\"\n[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"chatty\"]\n");
    s.ready();
    assert!(s.terminate().success());
    let lines: Vec<serde_json::Value> = s.log().lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(lines.iter().all(|l| l["time"].is_string() && l["level"].is_string() && l["message"].is_string()));
    let said = lines.iter().find(|l| l["message"] == "hello from chatty").expect("the plugin's log line");
    assert_eq!((said["target"].as_str(), said["level"].as_str()), (Some("plugins.chatty"), Some("WARN")));
}

#[test]
fn native_helpers_match_like_the_service() {
    let list_cache = r#"
import asyncio
import base64
import luna_matcher
from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin


class ListCache(BaseBackgroundPlugin):
    async def initialize(self):
        self.set = luna_matcher.DescriptorSet(62)
        self.addRoute("/cache/{list_id}", self.load, methods={"post"})
        self.addRoute("/cache-match", self.match, methods={"post"})
        self.addRoute("/cache-search", self.search, methods={"post"})
        self.addRoute("/cache-face/{face_id}", self.face, methods={"get", "delete"})
        self.addRoute("/cache-sets/{list_id}", self.sets, methods={"post"})
        self.addRoute("/cache-revision/{list_id}", self.revision, methods={"get"})

    async def load(self, request):
        faces = await luna_matcher.store.list_faces(request.match_info["list_id"])
        for f in faces:
            self.set.add(f["face_id"], f["descriptor"])
        return {"loaded": len(faces), "size": len(self.set)}

    async def match(self, request):
        body = request.json()
        hits = self.set.match(base64.b64decode(body["data"]), body.get("limit", 3), body.get("threshold", 0.0))
        return {"hits": [[i, s] for i, s in hits]}

    async def search(self, request):
        # 40 searches at once: the first scan takes one, the next the rest together.
        data, limits = base64.b64decode(request.json()["data"]), range(1, 41)
        found = await asyncio.gather(*(self.set.search(data, limit) for limit in limits))
        same = all(f == self.set.match(data, limit) for f, limit in zip(found, limits))
        return {"same": same, "hits": [[i, s] for i, s in found[4]]}

    async def sets(self, request):
        sets = await luna_matcher.store.list_sets(request.match_info["list_id"])
        if sets is None:
            return {"sizes": None}
        hits = sets[62].match(base64.b64decode(request.json()["data"]), 5)
        return {"sizes": {str(v): len(s) for v, s in sets.items()}, "hits": [[i, s] for i, s in hits]}

    async def revision(self, request):
        return {"revision": luna_matcher.store.list_revision(request.match_info["list_id"])}

    async def face(self, request):
        face_id = request.match_info["face_id"]
        if request.method == "DELETE":
            return {"removed": self.set.remove(face_id), "size": len(self.set), "present": face_id in self.set}
        f = await luna_matcher.store.get_face(face_id)
        return None if f is None else {"user_data": f["user_data"], "descriptor": base64.b64encode(f["descriptor"]).decode(), "version": f["descriptor_version"]}
"#;
    let s = Service::spawn(&[("list_cache.py", list_cache)], "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"list_cache\"]\n");
    s.ready();
    let list = s.call("POST", "/1/lists", Some(&json!({"account_id": ACCOUNT}))).json()["list_id"].as_str().unwrap().to_owned();
    let faces: Vec<String> = (0..20u64)
        .map(|i| {
            let body = json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&blend(&descriptor(0), &descriptor(100 + i), (i as usize % 7) * 60))}, "lists": [list], "user_data": format!("u{i}")});
            s.call("POST", "/1/faces", Some(&body)).json()["face_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(s.call("POST", &format!("/cache/{list}"), None).json(), json!({"loaded": 20, "size": 20}));

    let probe = b64(&descriptor(0));
    let from_plugin = s.call("POST", "/cache-match", Some(&json!({"data": probe, "limit": 5}))).json()["hits"].clone();
    let q = json!({"references": [{"type": "descriptor", "data": probe}], "candidates": [{"filters": {"origin": "faces", "list_id": list}, "limit": 5}]});
    let from_service: Vec<serde_json::Value> = s.call("POST", "/1/matcher/faces", Some(&q)).json()[0]["matches"][0]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| json!([r["face"]["face_id"], r["similarity"]]))
        .collect();
    assert_eq!(from_plugin, json!(from_service), "the same kernels, the same answer");
    let searched = s.call("POST", "/cache-search", Some(&json!({"data": probe}))).json();
    assert_eq!(searched["same"], true, "a search answers what match answers, alone or scanned with others");
    assert_eq!(searched["hits"], json!(from_service));
    // The list as sets built natively, one per version: a face of version 1000
    // joins it, which moves the list's revision; a face outside it does not.
    let revision = || s.call("GET", &format!("/cache-revision/{list}"), None).json()["revision"].clone();
    let before = revision();
    assert!(before.is_u64(), "{before}");
    let outside = json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(7))}});
    assert_eq!(s.call("POST", "/1/faces", Some(&outside)).status, 201);
    assert_eq!(revision(), before, "a face in no list");
    let f32: Vec<u8> = (0..512u16).flat_map(|i| f32::from(i % 17).to_le_bytes()).collect();
    let body = json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&f32), "version": 1000}, "lists": [list]});
    assert_eq!(s.call("POST", "/1/faces", Some(&body)).status, 201);
    assert!(revision().is_u64() && revision() != before, "a face joined: {before} -> {}", revision());
    let unknown = s.call("GET", &format!("/cache-revision/{}", uuid::Uuid::new_v4()), None).json();
    assert_eq!(unknown, json!({"revision": null}));
    let sets = s.call("POST", &format!("/cache-sets/{list}"), Some(&json!({"data": probe}))).json();
    assert_eq!((&sets["sizes"], &sets["hits"]), (&json!({"62": 20, "1000": 1}), &json!(from_service)));
    let unknown = s.call("POST", &format!("/cache-sets/{}", uuid::Uuid::new_v4()), Some(&json!({"data": probe}))).json();
    assert_eq!(unknown, json!({"sizes": null}));

    let f = s.call("GET", &format!("/cache-face/{}", faces[3]), None).json();
    assert_eq!((f["user_data"].as_str(), f["version"].as_u64()), (Some("u3"), Some(62)));
    assert_eq!(f["descriptor"], b64(&blend(&descriptor(0), &descriptor(103), 3 * 60)));
    assert_eq!(s.call("DELETE", &format!("/cache-face/{}", faces[3]), None).json(), json!({"removed": true, "size": 19, "present": false}));
    let r = s.call("POST", "/cache-match", Some(&json!({"data": b64(&descriptor(0)[..100])})));
    assert_eq!(r.code(), 10010);
    assert!(r.json()["detail"].as_str().unwrap().contains("11013"), "{}", r.json());
}

#[test]
fn a_task_that_blocks_the_event_loop_is_named_and_restarted() {
    let blocker = "import asyncio, time\nfrom luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin\nclass P(BaseBackgroundPlugin):\n    async def initialize(self):\n        self.task = asyncio.create_task(self.job())\n    async def job(self):\n        while True:\n            await asyncio.sleep(0.2)\n            time.sleep(1.5)\n";
    let mut s = Service::spawn(
        &[("blocker.py", blocker), ("teapot.py", &shipped_plugin("teapot.py"))],
        &format!("[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"blocker\", \"teapot\"]\n{FAST_SUPERVISION}"),
    );
    s.ready();
    s.wait_for(|| s.plugin("blocker")["restarts"].as_u64().unwrap() >= 1, "the watchdog names the plugin holding the loop");
    assert!(s.plugin("blocker")["last_error"].as_str().unwrap().contains("blocked the event loop"), "{}", s.plugin("blocker"));
    assert_eq!(s.plugin("teapot")["restarts"], 0, "the plugin that merely waited is not blamed");
    assert_eq!(s.call("GET", "/1/version", None).status, 200);
    assert!(s.terminate().success());
}

/// A matching plugin whose behaviour the test sets through a route.
const MATCHING_PLUGIN: &str = r#"
import asyncio
import luna_matcher
from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin, pluginHTTPResponse
from luna_plugins.matcher_plugins.base_plugin import BaseMatcherPlugin
from luna_plugins.matcher_plugins.base_struct import Face, FaceMatchResult, MatchUnitType
from luna_plugins.matcher_plugins.exceptions import Rematch

state = {"mode": "ok", "foreign": None, "seen": []}


class Control(BaseBackgroundPlugin):
    async def initialize(self):
        self.addRoute("/mode/{mode}", self.mode, methods={"post"})

    async def mode(self, request):
        state["mode"] = request.match_info["mode"]
        state["foreign"] = request.query.get("face")
        return {"mode": state["mode"], "seen": state["seen"]}


class ListCache(BaseMatcherPlugin):
    availableReferenceTypes = frozenset([MatchUnitType.descriptor, MatchUnitType.face])
    availableCandidateTypes = frozenset([MatchUnitType.face])

    def __init__(self, app):
        super().__init__(app)
        self.sets = {}

    def getAvailableTargets(self, origin):
        return frozenset(["face_id", "similarity"])

    def getMatchingCost(self, request):
        # Only plain list filters; "external_ids" marks a request left to the default matcher.
        return 10.0 if set(request.filters) == {"origin", "list_id"} else float("inf")

    async def match(self, request):
        state["seen"].append([request.reference.type.value, request.limit, request.targets])
        mode = state["mode"]
        if mode == "rematch":
            raise Rematch()
        if mode == "raise":
            raise RuntimeError("matcher broke")
        if mode == "slow":
            await asyncio.sleep(10)
        if mode == "malformed":
            return "not a list"
        if mode == "foreign":
            return [FaceMatchResult(Face(state["foreign"]), 0.99)]
        list_id = request.filters["list_id"]
        if list_id not in self.sets:
            faces = await luna_matcher.store.list_faces(list_id) or []
            s = self.sets[list_id] = luna_matcher.DescriptorSet(request.reference.descriptor_version)
            for f in faces:
                s.add(f["face_id"], f["descriptor"])
        hits = self.sets[list_id].match(request.reference.descriptor, request.limit, request.threshold)
        return [FaceMatchResult(Face(face_id), similarity) for face_id, similarity in hits]
"#;

#[test]
fn matching_plugins_answer_or_hand_back_their_sub_requests() {
    let (url, bodies) = receiver();
    let config = format!(
        "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"list_cache\", \"request_monitoring\"]\n{FAST_SUPERVISION}\n[plugins.config.request_monitoring]\nurl = \"{url}\"\nflush_interval = 0.1\n"
    );
    let s = Service::spawn(&[("list_cache.py", MATCHING_PLUGIN), ("request_monitoring.py", &shipped_plugin("request_monitoring.py"))], &config);
    s.ready();
    assert_eq!(s.plugin("list_cache")["kind"], "background+matching");
    let list = s.call("POST", "/1/lists", Some(&json!({"account_id": ACCOUNT}))).json()["list_id"].as_str().unwrap().to_owned();
    for i in 0..30u64 {
        let body = json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&blend(&descriptor(0), &descriptor(300 + i), (i as usize % 9) * 50))}, "lists": [list], "user_data": format!("u{i}")});
        assert_eq!(s.call("POST", "/1/faces", Some(&body)).status, 201);
    }
    let other = s.call("POST", "/1/faces", Some(&json!({"account_id": OTHER_ACCOUNT, "descriptor": {"data": b64(&descriptor(0))}}))).json()["face_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let targets = json!(["face_id", "similarity", "user_data"]);
    let ask = |extra: bool| {
        let mut filters = json!({"origin": "faces", "list_id": list});
        if extra {
            filters["external_ids"] = json!([]);
        }
        let q =
            json!({"references": [{"type": "descriptor", "data": b64(&descriptor(0))}], "candidates": [{"filters": filters, "limit": 4, "targets": targets}]});
        let r = s.call("POST", &format!("/1/matcher/faces?account_id={ACCOUNT}"), Some(&q));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()[0]["matches"][0]["result"].clone()
    };
    let by_default = ask(true);
    assert_eq!(by_default.as_array().unwrap().len(), 4);
    assert_eq!(ask(false), by_default, "the plugin's answer, targets filled from the store, is the default matcher's");
    let seen = s.call("POST", "/mode/ok", None).json()["seen"].clone();
    assert_eq!(seen, json!([["descriptor", 4, ["face_id", "similarity", "user_data"]]]), "one sub-request went to the plugin");

    let lines = || bodies.lock().unwrap().join("\n");
    s.wait_for(|| lines().contains("matcher=list_cache") && lines().contains("matcher=default"), "matching points name the matcher");
    assert!(
        lines()
            .lines()
            .any(|l| l.starts_with(&format!("matching,candidate_origin=faces,instance={},matcher=list_cache,", s.addr)) && l.contains("candidates_scanned=4i")),
        "{}",
        lines()
    );

    // Every way of failing hands the sub-request back: same answer, and counted.
    for mode in ["rematch", "malformed", "slow"] {
        s.call("POST", &format!("/mode/{mode}"), None);
        assert_eq!(ask(false), by_default, "{mode}");
        assert_eq!(s.plugin("list_cache")["restarts"], 0, "{mode} does not restart the plugin");
    }
    // A face the request may not see is a malformed answer, never a leak.
    s.call("POST", &format!("/mode/foreign?face={other}"), None);
    assert_eq!(ask(false), by_default);
    // Counted by the plugin's actor, after the answer has gone out.
    s.wait_for(|| s.plugin("list_cache")["errors"].as_u64().unwrap() >= 3, "malformed, slow and foreign are counted");
    // An unexpected exception also restarts the plugin.
    s.call("POST", "/mode/raise", None);
    assert_eq!(ask(false), by_default);
    s.wait_for(|| s.plugin("list_cache")["restarts"].as_u64().unwrap() == 1, "the plugin is restarted after an exception");
    assert!(s.plugin("list_cache")["last_error"].as_str().unwrap().contains("matcher broke"));
}

/// The plugin the README shows, copied out of it, runs as the README says.
#[test]
fn the_readme_plugin_works_when_copied() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme.split("<!-- request_counts.py -->\n```python\n").nth(1).expect("the README's example plugin");
    let source = &block[..block.find("\n```").expect("the end of the block")];
    let s = Service::spawn(&[("request_counts.py", source)], "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"request_counts\"]\n");
    s.ready();
    for _ in 0..2 {
        assert_eq!(s.call("GET", "/1/version", None).status, 200);
    }
    s.wait_for(|| s.call("GET", "/request-counts", None).json()["GET:/1/version 200"] == 2, "both requests are counted");
    let p = s.plugin("request_counts");
    assert_eq!((p["kind"].as_str(), p["state"].as_str()), (Some("event+background"), Some("running")), "{p}");
}

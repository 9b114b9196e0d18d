//! Role proxy with real processes: one proxy in front of matchers on one
//! PostgreSQL database. Its answers are the matchers' own; a matcher killed
//! under load fails no request and comes back into rotation; a list split in
//! shards merges exactly; a list no matcher caches, no matcher at all and a
//! matcher answering garbage are errors of the sub-requests concerned only;
//! a write through the proxy is seen by the next match through it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const TARGETS: [&str; 7] = ["face_id", "similarity", "user_data", "external_id", "create_time", "account_id", "lists"];

fn url(i: &Instance) -> String {
    format!("http://{}", i.addr)
}

/// A proxy in front of `matchers` (URLs), polling them often, ready.
fn start_proxy(db: &TestDb, matchers: &[String], extra: &[(&str, &str)]) -> Instance {
    let list = serde_json::to_string(matchers).unwrap();
    let mut env = vec![
        ("LUNA_MATCHER__PROXY__MATCHERS", list.as_str()),
        ("LUNA_MATCHER__PROXY__POLL_INTERVAL", "100ms"),
        ("LUNA_MATCHER__PROXY__PROBE_INTERVAL", "100ms"),
        ("LUNA_MATCHER__PROXY__FAILURE_THRESHOLD", "2"),
    ];
    env.extend_from_slice(extra);
    let proxy = Instance::spawn_as("proxy", db, &env);
    proxy.ready();
    proxy
}

/// Whether the proxy has `matcher` in rotation, ready.
fn up(proxy: &Instance, matcher: SocketAddr) -> bool {
    proxy.metric(&format!("luna_matcher_proxy_matcher_up{{matcher=\"{matcher}\"}}")) == 1.0
}

fn wait_up(proxy: &Instance, matcher: SocketAddr) {
    proxy.wait_for(|| up(proxy, matcher), &format!("matcher {matcher} is in rotation"));
}

/// A face with its own user_data and external_id; its id and the write's position.
fn face(via: &Instance, seed: u64, lists: &[&str], user_data: &str, external_id: &str) -> (String, String) {
    let body = json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(seed))}, "lists": lists,
                      "user_data": user_data, "external_id": external_id});
    let r = via.call("POST", "/1/faces", Some(&body));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    (r.json()["face_id"].as_str().unwrap().to_owned(), r.header("Luna-Store-Position").unwrap().to_owned())
}

fn references(ids: &[String]) -> Value {
    json!([{"type": "descriptor", "id": "a", "data": b64(&descriptor(3))},
           {"type": "face", "id": ids[7]},
           {"type": "descriptor", "id": "c", "data": b64(&blend(&descriptor(5), &descriptor(999), 300))}])
}

/// A match of `references` on each filter set, every target, and its answer (200).
fn matched(via: &Instance, path: &str, position: &str, references: &Value, sets: &[Value], limit: usize) -> Value {
    let candidates: Vec<Value> = sets.iter().map(|f| json!({"filters": f, "targets": TARGETS, "limit": limit})).collect();
    let r = via.call_with("POST", path, &[("Luna-Store-Position", position)], Some(&json!({"references": references, "candidates": candidates})));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

#[test]
fn answers_through_the_proxy_equal_a_matchers_own_for_every_filter_and_target() {
    let db = TestDb::create();
    let m = Instance::start(&db, &[]);
    let proxy = start_proxy(&db, &[url(&m)], &[]);
    wait_up(&proxy, m.addr);
    let (l1, l2) = (proxy.create_list(), proxy.create_list());
    let mut ids = Vec::new();
    let mut position = String::new();
    for i in 0..45u64 {
        let lists: Vec<&str> = match i % 3 {
            0 => vec![&l1],
            1 => vec![&l1, &l2],
            _ => vec![],
        };
        let (id, p) = face(&proxy, i % 30, &lists, &format!("u{}", i % 4), &format!("e{i}"));
        ids.push(id);
        position = p;
    }
    let created = proxy.call("GET", &format!("/1/faces/{}", ids[20]), None).json()["create_time"].as_str().unwrap().to_owned();
    let mut sorted = ids.clone();
    sorted.sort();
    let sets = [
        json!({"origin": "faces", "list_id": l1}),
        json!({"origin": "faces", "list_id": l2}),
        json!({"origin": "faces"}),
        json!({"origin": "faces", "list_id": l1, "account_id": ACCOUNT}),
        json!({"origin": "faces", "face_ids": [ids[0], ids[3], ids[4], ids[30]]}),
        json!({"origin": "faces", "external_ids": ["e1", "e5", "e31"]}),
        json!({"origin": "faces", "list_id": l1, "user_data": "u1"}),
        json!({"origin": "faces", "create_time__gte": created}),
        json!({"origin": "faces", "list_id": l2, "create_time__lt": created}),
        json!({"origin": "faces", "face_id__gte": sorted[10], "face_id__lt": sorted[35]}),
    ];
    let refs = references(&ids);
    for limit in [3, 100] {
        let through = matched(&proxy, "/1/matcher/faces", &position, &refs, &sets, limit);
        let direct = matched(&m, "/1/matcher/faces", &position, &refs, &sets, limit);
        assert_eq!(through, direct, "limit {limit}");
        let hits: usize =
            through.as_array().unwrap().iter().flat_map(|r| r["matches"].as_array().unwrap()).map(|s| s["result"].as_array().unwrap().len()).sum();
        assert!(hits > 30, "the comparison has something to compare: {hits} hits");
    }
    // A threshold, and an account scope on the query.
    let thresholded = json!({"references": refs, "candidates": [{"filters": {"origin": "faces"}, "threshold": 0.5, "targets": TARGETS}]});
    let path = format!("/1/matcher/faces?account_id={ACCOUNT}");
    let (through, direct) = (
        proxy.call_with("POST", &path, &[("Luna-Store-Position", &position)], Some(&thresholded)),
        m.call_with("POST", &path, &[("Luna-Store-Position", &position)], Some(&thresholded)),
    );
    assert_eq!((through.status, through.json()), (direct.status, direct.json()));
}

#[test]
fn a_matcher_killed_under_load_fails_no_request_and_comes_back() {
    let db = TestDb::create();
    let (mut a, b) = (Instance::start(&db, &[]), Instance::start(&db, &[]));
    let proxy = Arc::new(start_proxy(&db, &[url(&a), url(&b)], &[]));
    wait_up(&proxy, a.addr);
    wait_up(&proxy, b.addr);
    let list = proxy.create_list();
    let mut position = String::new();
    for i in 0..20 {
        position = proxy.create_face(i, &[&list]).1;
    }
    let body = Arc::new(json!({"references": [{"type": "descriptor", "data": b64(&descriptor(4))}],
                               "candidates": [{"filters": {"origin": "faces", "list_id": list}, "limit": 3}]}));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (proxy, body, sent, failed, position) = (proxy.clone(), body.clone(), sent.clone(), failed.clone(), position.clone());
            std::thread::spawn(move || {
                while sent.fetch_add(1, Ordering::Relaxed) < 400 {
                    let r = proxy.call_with("POST", "/1/matcher/faces", &[("Luna-Store-Position", &position)], Some(&body));
                    let ok =
                        r.status == 200 && r.json()[0]["matches"][0]["error"].is_null() && r.json()[0]["matches"][0]["result"].as_array().unwrap().len() == 3;
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("failed: {} {}", r.status, String::from_utf8_lossy(&r.body));
                    }
                }
            })
        })
        .collect();
    while sent.load(Ordering::Relaxed) < 100 {
        std::thread::sleep(Duration::from_millis(5));
    }
    a.kill9();
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed while B cached the same list; proxy log:\n{}", proxy.log());
    proxy.wait_for(|| !up(&proxy, a.addr), "the killed matcher is out of rotation");
    let failed_calls = proxy.metric(&format!("luna_matcher_proxy_matcher_errors_total{{matcher=\"{}\"}}", a.addr));
    assert!(failed_calls >= 1.0, "the kill landed under load: calls to it failed and were retried on B");

    a.spawn();
    a.ready();
    wait_up(&proxy, a.addr);
    let name = format!("luna_matcher_proxy_matcher_requests_total{{matcher=\"{}\"}}", a.addr);
    let before = proxy.metric(&name);
    for _ in 0..20 {
        assert_eq!(proxy.call("POST", "/1/matcher/faces", Some(&body)).status, 200);
    }
    assert!(proxy.metric(&name) > before, "the restarted matcher takes calls again");
}

#[test]
fn a_list_split_over_two_matchers_merges_to_the_exact_answer() {
    let db = TestDb::create();
    let whole = Instance::start(&db, &[]);
    let shard = |index: u32| Instance::start(&db, &[("LUNA_MATCHER__CACHE__SHARD", &format!("{{ index = {index}, count = 2 }}"))]);
    let (s0, s1) = (shard(0), shard(1));
    let proxy = start_proxy(&db, &[url(&s0), url(&s1)], &[]);
    wait_up(&proxy, s0.addr);
    wait_up(&proxy, s1.addr);
    let list = whole.create_list();
    let mut ids = Vec::new();
    let mut position = String::new();
    // Seeds repeat: equal similarities, ordered by face id across the shards.
    for i in 0..80u64 {
        let (id, p) = face(&whole, i % 25, &[&list], &format!("u{i}"), &format!("e{i}"));
        ids.push(id);
        position = p;
    }
    s0.wait_for(|| s0.cache()["faces"].as_u64().unwrap() + s1.cache()["faces"].as_u64().unwrap() == 80, "the shards hold every face between them");
    let (n0, n1) = (s0.cache()["faces"].as_u64().unwrap(), s1.cache()["faces"].as_u64().unwrap());
    assert!(n0 > 10 && n1 > 10, "each shard holds part of the list: {n0} + {n1}");
    assert_eq!(s0.cache()["scope"]["shard"], json!({"index": 0, "count": 2}));
    let refs = references(&ids);
    let sets = [json!({"origin": "faces", "list_id": list}), json!({"origin": "faces"}), json!({"origin": "faces", "list_id": list, "user_data": "u3"})];
    for limit in [1, 5, 100] {
        let through = matched(&proxy, "/1/matcher/faces", &position, &refs, &sets, limit);
        let direct = matched(&whole, "/1/matcher/faces", &position, &refs, &sets, limit);
        assert_eq!(through, direct, "limit {limit}");
    }
    for s in [&s0, &s1] {
        assert!(proxy.metric(&format!("luna_matcher_proxy_matcher_requests_total{{matcher=\"{}\"}}", s.addr)) >= 3.0);
    }
}

#[test]
fn a_list_no_matcher_caches_is_31011_for_its_candidate_set_only() {
    let db = TestDb::create();
    let writer = Instance::start(&db, &[]);
    let (cached, other) = (writer.create_list(), writer.create_list());
    let m = Instance::start(&db, &[("LUNA_MATCHER__CACHE__INCLUDE", &format!(r#"["{cached}"]"#))]);
    let proxy = start_proxy(&db, &[url(&m)], &[]);
    wait_up(&proxy, m.addr);
    let position = writer.create_face(1, &[&cached, &other]).1;
    let body = json!({"references": [{"type": "descriptor", "data": b64(&descriptor(1))}],
                      "candidates": [{"filters": {"origin": "faces", "list_id": cached}},
                                     {"filters": {"origin": "faces", "list_id": other}},
                                     {"filters": {"origin": "faces"}}]});
    let r = proxy.call_with("POST", "/1/matcher/faces", &[("Luna-Store-Position", &position)], Some(&body));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let sets = &r.json()[0]["matches"];
    assert_eq!(sets[0]["result"].as_array().unwrap().len(), 1, "{sets}");
    assert!(sets[0]["error"].is_null());
    for (i, what) in [(1, other.as_str()), (2, "every list")] {
        assert_eq!(sets[i]["error"]["error_code"], 31011, "{sets}");
        assert!(sets[i]["error"]["detail"].as_str().unwrap().contains(what), "{sets}");
        assert_eq!(sets[i]["result"], json!([]));
    }
}

#[test]
fn a_proxy_without_a_reachable_matcher_answers_502_and_31011_then_recovers() {
    let db = TestDb::create();
    let mut m = Instance::start(&db, &[]);
    let list = m.create_list();
    m.create_face(1, &[&list]);
    m.kill9();
    let proxy = start_proxy(&db, &[url(&m)], &[]);
    let health = proxy.call("GET", "/healthcheck?include_luna_services=1", None);
    assert_eq!(health.status, 502, "{}", String::from_utf8_lossy(&health.body));
    assert_eq!(health.json()["errors"][0]["component"], format!("matcher:{}", m.addr));
    assert_eq!(proxy.call("GET", "/healthcheck", None).status, 200, "the proxy itself and the store are fine");
    let body = json!({"references": [{"type": "descriptor", "data": b64(&descriptor(1))}], "candidates": [{"filters": {"origin": "faces", "list_id": list}}]});
    let r = proxy.call("POST", "/1/matcher/faces", Some(&body));
    assert_eq!((r.status, r.code()), (503, 31011), "{}", String::from_utf8_lossy(&r.body));

    m.spawn();
    m.ready();
    wait_up(&proxy, m.addr);
    assert_eq!(proxy.call("GET", "/healthcheck?include_luna_services=1", None).status, 200);
    let r = proxy.call("POST", "/1/matcher/faces", Some(&body));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()[0]["matches"][0]["result"].as_array().unwrap().len(), 1);
}

/// A fake matcher: a valid cache report and health, and `garbage` for every
/// sub-request call. Counts the calls; stops with the flag.
fn garbage_matcher(garbage: &'static [u8], stop: Arc<AtomicBool>, calls: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            // The head, then as much body as it announces.
            let head_end = loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                }
                if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(end + 4);
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&raw[..head_end]).to_lowercase();
            let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap_or(0));
            while raw.len() < head_end + length {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                }
            }
            let report = br#"{"backend":"postgres","all":true,"scope":{"exclude":[]},"ready":true,"position":"1:0","lag_seconds":0.0,"faces":1,"lists":1}"#;
            let (kind, body): (&str, &[u8]) = if head.starts_with("get /1/matcher/cache") {
                ("application/json", report)
            } else if head.starts_with("get /healthcheck") {
                ("application/json", br#"{"execution_time":0.0}"#)
            } else {
                calls.fetch_add(1, Ordering::Relaxed);
                ("application/msgpack", garbage)
            };
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(body);
        }
    });
    addr
}

#[test]
fn a_matcher_answering_garbage_is_an_error_of_its_sub_requests_and_the_proxy_survives() {
    let db = TestDb::create();
    let m = Instance::start(&db, &[]);
    let list = m.create_list();
    let position = m.create_face(1, &[&list]).1;
    let (stop, calls) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let fake = garbage_matcher(b"\xc1\xff not msgpack at all", stop.clone(), calls.clone());
    let body = json!({"references": [{"type": "descriptor", "data": b64(&descriptor(1))}], "candidates": [{"filters": {"origin": "faces", "list_id": list}}]});

    // Alone, the fake's garbage fails its sub-requests, never the proxy.
    let alone = start_proxy(&db, &[format!("http://{fake}")], &[]);
    wait_up(&alone, fake);
    let r = alone.call("POST", "/1/matcher/faces", Some(&body));
    assert_eq!((r.status, r.code()), (503, 31011), "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("does not decode"), "{}", String::from_utf8_lossy(&r.body));
    assert!(calls.load(Ordering::Relaxed) >= 1);
    assert_eq!(alone.call("GET", "/1/version", None).status, 200, "the proxy is alive");

    // Beside a real matcher, the sub-requests the fake spoils are answered by the other.
    let proxy = start_proxy(&db, &[format!("http://{fake}"), url(&m)], &[]);
    wait_up(&proxy, fake);
    wait_up(&proxy, m.addr);
    let before = calls.load(Ordering::Relaxed);
    for _ in 0..20 {
        let r = proxy.call_with("POST", "/1/matcher/faces", &[("Luna-Store-Position", &position)], Some(&body));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()[0]["matches"][0]["result"].as_array().unwrap().len(), 1);
    }
    assert!(calls.load(Ordering::Relaxed) > before, "the fake was tried");
    assert!(proxy.metric(&format!("luna_matcher_proxy_matcher_errors_total{{matcher=\"{fake}\"}}")) >= 1.0);
    assert!(proxy.metric(&format!("luna_matcher_proxy_matcher_retries_total{{matcher=\"{}\"}}", m.addr)) >= 1.0);
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_write_through_the_proxy_is_seen_by_the_next_match_through_it() {
    let db = TestDb::create();
    // The matcher reads the change log only every second (and when notified):
    // the position the proxy sends makes it wait for the write (up to 2 s).
    let m = Instance::start(&db, &[("LUNA_MATCHER__STORAGE__POLL_INTERVAL", "1s")]);
    let proxy = start_proxy(&db, &[url(&m)], &[]);
    wait_up(&proxy, m.addr);
    let list = proxy.create_list();
    let start = Instant::now();
    for seed in 0..30 {
        let (id, _) = proxy.create_face(100 + seed, &[&list]);
        let body = json!({"references": [{"type": "descriptor", "data": b64(&descriptor(100 + seed))}],
                          "candidates": [{"filters": {"origin": "faces", "list_id": list}, "limit": 1}]});
        let r = proxy.call("POST", "/1/matcher/faces", Some(&body));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()[0]["matches"][0]["result"][0]["face"]["face_id"], json!(id), "write {seed} seen");
    }
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn monitoring_points_name_the_instance_and_the_matcher_of_each_sub_request() {
    let db = TestDb::create();
    let m = Instance::start(&db, &[]);
    let (receiver_url, bodies) = receiver();
    let proxy = start_proxy(
        &db,
        &[url(&m)],
        &[
            ("LUNA_MATCHER_PROXY_ACTIVE_PLUGINS", r#"["request_monitoring"]"#),
            ("LUNA_MATCHER__PLUGINS__CONFIG__REQUEST_MONITORING__URL", &receiver_url),
            ("LUNA_MATCHER__PLUGINS__CONFIG__REQUEST_MONITORING__FLUSH_INTERVAL", "0.1"),
            ("LUNA_MATCHER__MONITORING__INSTANCE", "proxy-1"),
        ],
    );
    wait_up(&proxy, m.addr);
    let list = proxy.create_list();
    proxy.create_face(1, &[&list]);
    let body = json!({"references": [{"type": "descriptor", "data": b64(&descriptor(1))}],
                      "candidates": [{"filters": {"origin": "faces", "list_id": list}}, {"filters": {"origin": "faces", "list_id": list}}]});
    assert_eq!(proxy.call("POST", "/1/matcher/faces", Some(&body)).status, 200);
    let lines = || bodies.lock().unwrap().join("\n");
    let matching = format!("matching,candidate_origin=faces,instance=proxy-1,matcher={},service=luna-matcher-proxy ", m.addr);
    proxy.wait_for(|| lines().matches(&matching).count() == 2, "one matching point per sub-request, naming the matcher");
    assert!(lines().contains("request,instance=proxy-1,route=POST:/1/matcher/faces,service=luna-matcher-proxy,status_code=200 "), "{}", lines());
}

/// A matching plugin: cheap on a list, from its own copy of the list; hands
/// back a candidate set filtered by user_data.
const CHEAP_PLUGIN: &str = r#"
import luna_matcher
from luna_plugins.matcher_plugins.base_plugin import BaseMatcherPlugin
from luna_plugins.matcher_plugins.base_struct import Face, FaceMatchResult, MatchUnitType
from luna_plugins.matcher_plugins.exceptions import Rematch


class Cheap(BaseMatcherPlugin):
    availableReferenceTypes = frozenset([MatchUnitType.descriptor, MatchUnitType.face])
    availableCandidateTypes = frozenset([MatchUnitType.face])

    def getAvailableTargets(self, origin):
        return frozenset(["face_id", "similarity"])

    def getMatchingCost(self, request):
        return 10.0 if "list_id" in request.filters else float("inf")

    async def match(self, request):
        if "user_data" in request.filters:
            raise Rematch()
        copy = luna_matcher.DescriptorSet(request.reference.descriptor_version)
        for f in await luna_matcher.store.list_faces(request.filters["list_id"]) or []:
            copy.add(f["face_id"], f["descriptor"])
        hits = copy.match(request.reference.descriptor, request.limit, request.threshold)
        return [FaceMatchResult(Face(face_id), similarity) for face_id, similarity in hits]
"#;

#[test]
fn matching_plugins_in_the_proxy_answer_by_cost_and_hand_back_to_the_matchers_in_one_call() {
    let db = TestDb::create();
    let m = Instance::start(&db, &[]);
    let plugins = tempfile::tempdir().unwrap();
    std::fs::write(plugins.path().join("cheap.py"), CHEAP_PLUGIN).unwrap();
    let dir = plugins.path().display().to_string();
    let proxy = start_proxy(&db, &[url(&m)], &[("LUNA_MATCHER_PROXY_ACTIVE_PLUGINS", r#"["cheap"]"#), ("LUNA_MATCHER__PLUGINS__DIRECTORY", &dir)]);
    wait_up(&proxy, m.addr);
    let list = proxy.create_list();
    let mut position = String::new();
    for i in 0..20u64 {
        position = face(&proxy, i, &[&list], &format!("u{}", i % 2), &format!("e{i}")).1;
    }
    let sets = [json!({"origin": "faces", "list_id": list}), json!({"origin": "faces", "list_id": list, "user_data": "u1"}), json!({"origin": "faces"})];
    let refs = json!([{"type": "descriptor", "data": b64(&descriptor(4))}]);
    let calls = format!("luna_matcher_proxy_matcher_requests_total{{matcher=\"{}\"}}", m.addr);
    let before = proxy.metric(&calls);
    let through = matched(&proxy, "/1/matcher/faces", &position, &refs, &sets, 5);
    assert_eq!(proxy.metric(&calls) - before, 1.0, "the two sub-requests left to the matchers went in one call");
    let mut direct = matched(&m, "/1/matcher/faces", &position, &refs, &sets, 5);
    // A plugin's total_found counts what it answered.
    assert_eq!(through[0]["matches"][0]["total_found"], 5);
    direct[0]["matches"][0]["total_found"] = json!(5);
    assert_eq!(through, direct, "the plugin's answer, targets filled from the store, and the matchers' are the matcher's own");
    let cheap = proxy.call("GET", "/1/plugins", None).json();
    let cheap = cheap.as_array().unwrap().iter().find(|p| p["name"] == "cheap").unwrap().clone();
    assert!(cheap["calls"].as_u64().unwrap() >= 1 && cheap["errors"] == 0, "{cheap}");
}

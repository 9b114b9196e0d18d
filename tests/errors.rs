//! Every error code a client can cause, over HTTP, and that a rejected request
//! changes nothing stored.

mod common;

use common::*;
use serde_json::{json, Value};

fn match_body(reference_data: Value, version: Option<u32>) -> Value {
    let mut r = json!({"type": "descriptor", "data": reference_data});
    if let Some(v) = version {
        r["descriptor_version"] = json!(v);
    }
    json!({"references": [r], "candidates": [{"filters": {"origin": "faces"}}]})
}

#[test]
fn descriptor_errors() {
    let s = TestServer::start();
    let nan: Vec<u8> = (0..512).flat_map(|i| if i == 7 { f32::NAN } else { 1.0f32 }.to_le_bytes()).collect();
    let inf: Vec<u8> = (0..512).flat_map(|i| if i == 7 { f32::INFINITY } else { 1.0f32 }.to_le_bytes()).collect();
    let mut damaged = b"dp\x02\x00".to_vec();
    damaged.extend_from_slice(&[1; 300]);
    let cases = [
        (match_body(json!("not base64!"), None), 11010),
        (match_body(json!(b64(&damaged)), None), 11011),
        (match_body(json!(b64(&sdk(12345, &[0; 512]))), None), 11012),
        (match_body(json!(b64(&descriptor(1))), Some(4)), 11012),
        (match_body(json!(b64(&descriptor(1)[..511])), None), 11013),
        (match_body(json!(b64(&sdk(52, &descriptor(1)))), None), 11013),
        (match_body(json!(b64(&nan)), Some(1000)), 11014),
        (match_body(json!(b64(&inf)), Some(1000)), 11014),
        (match_body(json!(b64(&sdk(59, &descriptor(1)))), Some(62)), 11015),
    ];
    for (body, code) in cases {
        let r = s.json("POST", "/1/matcher/faces", Some(&body));
        assert_eq!((r.status, r.code()), (400, code), "{}", r.json());
        let e = r.json();
        assert!(e["desc"].is_string() && e["detail"].as_str().unwrap().starts_with("references[0]") && e["link"].is_string(), "{e}");
    }
    let raw = json!({"references": [{"id": "a", "data": b64(&sdk(59, &descriptor(1)))}], "candidates": [{"id": "b", "data": b64(&sdk(62, &descriptor(2)))}]});
    assert_eq!(s.json("POST", "/1/matcher/raw", Some(&raw)).code(), 11015, "different versions never match");
}

#[test]
fn request_errors() {
    let s = TestServer::start_with(|c| c.limits.body_bytes = 4096);
    let json_ct = [("Content-Type", "application/json")];
    let r = s.call("POST", "/1/lists", &json_ct, b"{\"account_id\": ");
    assert_eq!((r.status, r.code()), (400, 11001));
    let r = s.call("POST", "/1/lists", &[("Content-Type", "application/msgpack")], &[0xc1]);
    assert_eq!((r.status, r.code()), (400, 11001));
    let r = s.json("POST", "/1/lists", Some(&json!({"account_id": ACCOUNT, "colour": "red"})));
    assert_eq!((r.status, r.code()), (400, 11002));
    assert!(r.json()["detail"].as_str().unwrap().contains("colour"));
    let r = s.json("POST", "/1/lists", Some(&json!({"account_id": "nope"})));
    assert_eq!((r.status, r.code()), (400, 11002));
    assert!(r.json()["detail"].as_str().unwrap().starts_with("account_id"), "{}", r.json());
    let q = json!({"references": [], "candidates": [{"filters": {"origin": "faces", "create_time__gte": "yesterday"}}]});
    assert_eq!(s.json("POST", "/1/matcher/faces", Some(&q)).code(), 11002);
    let q = json!({"references": [], "candidates": [{"filters": {"origin": "events"}}]});
    assert_eq!(s.json("POST", "/1/matcher/faces", Some(&q)).code(), 11002);
    let q = json!({"references": [], "candidates": [{"filters": {"origin": "faces"}, "targets": ["colour"]}]});
    assert_eq!(s.json("POST", "/1/matcher/faces", Some(&q)).code(), 11002);
    let r = s.call("POST", "/1/lists", &[("Content-Type", "text/plain")], b"{}");
    assert_eq!((r.status, r.code()), (415, 11003));
    let r = s.json("GET", "/1/lists/abc", None);
    assert_eq!((r.status, r.code()), (400, 11004));
    let r = s.json("GET", &format!("/1/faces/{ACCOUNT}?account_id=x"), None);
    assert_eq!((r.status, r.code()), (400, 11004));
    let r = s.call("GET", "/1/version", &[("Luna-Request-Id", "12,abc")], b"");
    assert_eq!((r.status, r.code()), (400, 11005));
    let big = vec![b' '; 5000];
    let r = s.call("POST", "/1/lists", &json_ct, &big);
    assert_eq!((r.status, r.code()), (413, 11023));
    let r = s.json("GET", "/2/nothing", None);
    assert_eq!((r.status, r.code()), (404, 11030));
    let r = s.json("PUT", "/1/faces", None);
    assert_eq!((r.status, r.code()), (405, 11031));
}

#[test]
fn limit_errors() {
    let s = TestServer::start_with(|c| {
        c.limits.references = 2;
        c.limits.candidate_sets = 2;
        c.limits.max_limit = 5;
        c.limits.raw_candidates = 3;
    });
    let reference = json!({"type": "descriptor", "data": b64(&descriptor(1))});
    let set = json!({"filters": {"origin": "faces"}});
    let r = s.json("POST", "/1/matcher/faces", Some(&json!({"references": [reference, reference, reference], "candidates": [set]})));
    assert_eq!((r.status, r.code()), (400, 31007));
    let r = s.json("POST", "/1/matcher/faces", Some(&json!({"references": [reference], "candidates": [set, set, set]})));
    assert_eq!((r.status, r.code()), (400, 11020));
    let r = s.json("POST", "/1/matcher/faces", Some(&json!({"references": [reference], "candidates": [{"filters": {"origin": "faces"}, "limit": 6}]})));
    assert_eq!((r.status, r.code()), (400, 11021));
    let item = json!({"id": "x", "data": b64(&descriptor(1))});
    let r = s.json("POST", "/1/matcher/raw", Some(&json!({"references": [item], "candidates": [item, item, item, item]})));
    assert_eq!((r.status, r.code()), (400, 11022));
    let r = s.json("POST", "/1/matcher/raw", Some(&json!({"references": [item, item, item], "candidates": [item]})));
    assert_eq!((r.status, r.code()), (400, 31007));
    let r = s.json("POST", "/1/matcher/raw", Some(&json!({"references": [item], "candidates": [item], "limit": 6})));
    assert_eq!((r.status, r.code()), (400, 11021));
    // At the limits everything is answered.
    let r = s.json("POST", "/1/matcher/raw", Some(&json!({"references": [item, item], "candidates": [item, item, item], "limit": 5})));
    assert_eq!(r.status, 200);
}

#[test]
fn rejected_writes_change_nothing() {
    let s = TestServer::start();
    let list = s.create_list(ACCOUNT);
    let face = s.create_face(ACCOUNT, &descriptor(1), &[&list], "kept");
    let before = (s.json("GET", &format!("/1/lists/{list}"), None).json(), s.json("GET", &format!("/1/faces/{face}"), None).json());
    let missing = "00000000-0000-4000-8000-000000000000";
    let bad: Vec<(&str, String, Value)> = vec![
        ("PATCH", format!("/1/lists/{list}/faces"), json!({"action": "detach", "face_ids": [face, missing]})),
        ("PATCH", format!("/1/lists/{list}/faces"), json!({"action": "explode", "face_ids": [face]})),
        ("POST", "/1/faces".into(), json!({"account_id": ACCOUNT, "descriptor": {"data": "%%"}, "lists": [list]})),
        ("POST", "/1/faces".into(), json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(2))}, "lists": [list, missing]})),
        (
            "POST",
            "/1/faces/bulk".into(),
            json!([{"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(2))}, "lists": [list]}, {"account_id": ACCOUNT}]),
        ),
    ];
    for (method, path, body) in bad {
        let r = s.json(method, &path, Some(&body));
        assert!(r.status >= 400 && r.status < 500, "{method} {path}: {}", r.status);
        r.code();
    }
    let after = (s.json("GET", &format!("/1/lists/{list}"), None).json(), s.json("GET", &format!("/1/faces/{face}"), None).json());
    assert_eq!(before, after);
    let metrics = String::from_utf8(s.json("GET", "/metrics", None).body).unwrap();
    assert!(metrics.contains("luna_matcher_store_faces{descriptor_version=\"62\"} 1"), "{metrics}");
}

/// Random damage to valid bodies of every route with a body: whatever comes
/// back is an answer or a 4xx with an error code, never a 5xx.
#[test]
fn damaged_bodies_never_get_a_5xx() {
    use rand::{Rng, SeedableRng};
    let s = TestServer::start();
    let list = s.create_list(ACCOUNT);
    let face = s.create_face(ACCOUNT, &descriptor(1), &[&list], "x");
    let d = b64(&descriptor(2));
    let bodies: Vec<(&str, String, Value)> = vec![
        ("POST", "/1/lists".into(), json!({"account_id": ACCOUNT, "user_data": "u"})),
        ("POST", "/1/faces".into(), json!({"account_id": ACCOUNT, "descriptor": {"data": d, "version": 62}, "lists": [list], "external_id": "e"})),
        ("POST", "/1/faces/bulk".into(), json!([{"account_id": ACCOUNT, "descriptor": {"data": d}}])),
        ("PATCH", format!("/1/lists/{list}/faces"), json!({"action": "attach", "face_ids": [face]})),
        (
            "POST",
            "/1/matcher/faces".into(),
            json!({"references": [{"type": "descriptor", "id": "r", "data": d}, {"type": "face", "id": face}],
            "candidates": [{"filters": {"origin": "faces", "list_id": list, "create_time__gte": "2020-01-01T00:00:00Z", "face_ids": [face]},
                            "targets": ["face_id", "similarity", "lists"], "limit": 3, "threshold": 0.1}]}),
        ),
        (
            "POST",
            "/1/matcher/raw".into(),
            json!({"references": [{"id": "r", "data": d}], "candidates": [{"id": "c", "data": d}], "descriptor_version": 62, "limit": 2}),
        ),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for (method, path, body) in &bodies {
        let clean = serde_json::to_vec(body).unwrap();
        for _ in 0..150 {
            let mut damaged = clean.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..damaged.len());
                match rng.random_range(0..4) {
                    0 => damaged[at] = rng.random(),
                    1 => damaged.truncate(at.max(1)),
                    2 => {
                        damaged.remove(at);
                    }
                    _ => {
                        let bytes = b"{}[]\":,0-e9ntf";
                        damaged.insert(at, bytes[rng.random_range(0..bytes.len())])
                    }
                }
                if damaged.is_empty() {
                    damaged.push(b'{');
                }
            }
            let r = s.call(method, path, &[("Content-Type", "application/json")], &damaged);
            assert!(r.status < 500, "{method} {path} {:?} -> {} {}", String::from_utf8_lossy(&damaged), r.status, String::from_utf8_lossy(&r.body));
            if r.status >= 400 {
                r.code();
            }
        }
        for _ in 0..50 {
            let noise: Vec<u8> = (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
            let r = s.call(method, path, &[("Content-Type", "application/msgpack")], &noise);
            assert!((400..500).contains(&r.status), "{method} {path} msgpack {noise:?} -> {}", r.status);
            r.code();
        }
    }
}

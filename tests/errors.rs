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
        ("POST", "/1/faces/bulk".into(), json!([{"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(2))}, "lists": [list]}, {"account_id": ACCOUNT}])),
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

//! Hostile input over HTTP: field lengths, the response cap, request heads past
//! our limits, methods, content types and slow bodies.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn face(user_data: &str, external_id: Option<&str>) -> Value {
    let mut f = json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(1))}, "user_data": user_data});
    if let Some(e) = external_id {
        f["external_id"] = json!(e);
    }
    f
}

#[test]
fn user_data_and_external_id_have_luna_lengths() {
    let s = TestServer::start();
    let list = s.create_list(ACCOUNT);
    // Characters, not bytes: 128 two-byte characters are fine.
    assert_eq!(s.json("POST", "/1/faces", Some(&face(&"é".repeat(128), Some(&"x".repeat(36))))).status, 201);
    let cases = [
        (face(&"u".repeat(129), None), "user_data: 129 characters, at most 128"),
        (face("", Some(&"e".repeat(37))), "external_id: 37 characters, at most 36"),
        (face(&"u".repeat(10 << 20), None), "user_data: 10485760 characters, at most 128"),
    ];
    for (body, detail) in &cases {
        let r = s.json("POST", "/1/faces", Some(body));
        assert_eq!((r.status, r.code(), r.json()["detail"].as_str()), (400, 11002, Some(*detail)));
    }
    let mut bulk: Vec<Value> = (0..5).map(|_| face("ok", None)).collect();
    bulk[3] = face(&"u".repeat(129), None);
    let r = s.json("POST", "/1/faces/bulk", Some(&json!(bulk)));
    assert_eq!((r.status, r.json()["detail"].as_str()), (400, Some("faces[3]: user_data: 129 characters, at most 128")));
    let r = s.json("POST", "/1/lists", Some(&json!({"account_id": ACCOUNT, "user_data": "l".repeat(129)})));
    assert_eq!((r.status, r.code()), (400, 11002));
    // Nothing of the refused writes is stored.
    let metrics = String::from_utf8(s.json("GET", "/metrics", None).body).unwrap();
    assert!(metrics.contains("luna_matcher_store_faces{descriptor_version=\"62\"} 1") && metrics.contains("luna_matcher_store_lists 1"), "{metrics}");
    assert_eq!(s.json("GET", &format!("/1/lists/{list}"), None).json()["face_count"], 0);
}

#[test]
fn a_response_past_the_cap_is_refused_and_every_answer_fits_it() {
    const CAP: usize = 40_000;
    let s = TestServer::start_with(|c| c.limits.response_bytes = CAP);
    let list = s.create_list(ACCOUNT);
    let other = s.create_list(ACCOUNT);
    for i in 0..40 {
        // Control characters take six bytes each in JSON: the estimate must count them so.
        let user_data: String = (0..128).map(|j| if (i + j) % 3 == 0 { '\u{1}' } else { 'u' }).collect();
        let body = json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(i))}, "user_data": user_data,
                          "external_id": format!("{i:0>36}"), "lists": [list, other]});
        assert_eq!(s.json("POST", "/1/faces", Some(&body)).status, 201);
    }
    let targets = json!(["face_id", "similarity", "user_data", "external_id", "create_time", "account_id", "lists"]);
    let (mut answered, mut refused) = (0, 0);
    for references in 1..=8 {
        for accept in ["application/json", "application/msgpack"] {
            let refs: Vec<Value> = (0..references).map(|i| json!({"type": "descriptor", "id": format!("r{i}"), "data": b64(&descriptor(100 + i))})).collect();
            let q = json!({"references": refs, "candidates": [{"filters": {"origin": "faces", "list_id": list}, "targets": targets, "limit": 40},
                                                               {"filters": {"origin": "faces", "list_id": other}, "targets": ["face_id"], "limit": 5}]});
            let r = s.call("POST", "/1/matcher/faces", &[("Content-Type", "application/json"), ("Accept", accept)], &serde_json::to_vec(&q).unwrap());
            match r.status {
                200 => {
                    answered += 1;
                    assert!(r.body.len() <= CAP, "{references} references: {} bytes of {accept} under a cap of {CAP}", r.body.len());
                }
                _ => {
                    refused += 1;
                    assert_eq!((r.status, r.code()), (400, 11024));
                    let detail = r.json()["detail"].as_str().unwrap().to_owned();
                    assert!(detail.contains("limits.response_bytes") && detail.contains("references"), "{detail}");
                }
            }
        }
    }
    assert!(answered >= 2 && refused >= 2, "answered {answered}, refused {refused}");

    // Raw matching: long candidate ids count for each reference.
    let item = |id: String| json!({"id": id, "data": b64(&descriptor(1))});
    let raw = |references: usize| {
        json!({"references": (0..references).map(|i| item(format!("r{i}"))).collect::<Vec<_>>(),
               "candidates": [item("c".repeat(9_000)), item("short".into())], "limit": 2})
    };
    let r = s.json("POST", "/1/matcher/raw", Some(&raw(2)));
    assert!(r.status == 200 && r.body.len() <= CAP, "{}", r.status);
    let r = s.json("POST", "/1/matcher/raw", Some(&raw(5)));
    assert_eq!((r.status, r.code()), (400, 11024));
}

#[test]
fn methods_allow_and_head() {
    let s = TestServer::start();
    let r = s.json("PUT", "/1/version", None);
    assert_eq!((r.status, r.code(), r.header("Allow")), (405, 11031, Some("GET, HEAD")));
    let r = s.json("POST", &format!("/1/lists/{ACCOUNT}"), None);
    assert_eq!((r.status, r.header("Allow")), (405, Some("GET, DELETE, HEAD")));
    let r = s.json("GET", "/1/matcher/raw", None);
    assert_eq!((r.status, r.header("Allow")), (405, Some("POST")));

    let get = s.json("GET", "/1/version", None);
    let head = s.json("HEAD", "/1/version", None);
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(head.header("Content-Type"), get.header("Content-Type"));
    assert_eq!(s.json("HEAD", "/healthcheck", None).status, 200);
    assert_eq!(s.json("HEAD", &format!("/1/faces/{ACCOUNT}"), None).status, 404);

    // The method is checked before the Luna-Request-Id header.
    let bad_id = [("Luna-Request-Id", "not-an-id")];
    let r = s.call("PUT", "/1/version", &bad_id, b"");
    assert_eq!((r.status, r.code()), (405, 11031));
    let r = s.call("GET", "/1/version", &bad_id, b"");
    assert_eq!((r.status, r.code()), (400, 11005));
    let r = s.call(
        "POST",
        "/1/lists",
        &[("Luna-Request-Id", "not-an-id"), ("Content-Type", "application/json")],
        br#"{"account_id": "6d3f2a5e-1111-4222-8333-444455556666"}"#,
    );
    assert_eq!((r.status, r.code()), (400, 11005), "a write with a bad id is not made");
    assert_eq!(s.call("GET", "/nowhere", &bad_id, b"").code(), 11005);
}

#[test]
fn oversized_heads_get_an_error_body() {
    use luna_matcher::http::middleware::{MAX_HEADERS, MAX_HEADER_BYTES, MAX_URI_BYTES};
    let s = TestServer::start();
    let r = s.json("GET", &format!("/1/faces/{}", "a".repeat(MAX_URI_BYTES)), None);
    assert_eq!((r.status, r.code()), (414, 11026));
    let r = s.json("GET", &format!("/1/version?x={}", "a".repeat(MAX_URI_BYTES)), None);
    assert_eq!((r.status, r.code()), (414, 11026));
    let names: Vec<String> = (0..MAX_HEADERS).map(|i| format!("X-Extra-{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let r = s.call("GET", "/1/version", &many, b"");
    assert_eq!((r.status, r.code()), (431, 11025));
    let big = "v".repeat(MAX_HEADER_BYTES);
    let r = s.call("GET", "/1/version", &[("X-Big", &big)], b"");
    assert_eq!((r.status, r.code()), (431, 11025));
    assert!(r.json()["detail"].as_str().unwrap().contains("header"), "{}", r.json());
    // Just under the limits is served.
    let r = s.call("GET", "/1/version", &[("X-Big", &"v".repeat(MAX_HEADER_BYTES / 2))], b"");
    assert_eq!(r.status, 200);
}

#[test]
fn content_types_are_utf8_json_or_msgpack_and_required() {
    let s = TestServer::start();
    let body = serde_json::to_vec(&json!({"account_id": ACCOUNT})).unwrap();
    for ct in ["application/json", "application/json; charset=utf-8", "application/json;charset=\"UTF-8\""] {
        assert_eq!(s.call("POST", "/1/lists", &[("Content-Type", ct)], &body).status, 201, "{ct}");
    }
    for ct in ["application/json; charset=latin-1", "application/json; charset=utf-16", "application/msgpack; charset=iso-8859-1", "text/plain"] {
        let r = s.call("POST", "/1/lists", &[("Content-Type", ct)], &body);
        assert_eq!((r.status, r.code()), (415, 11003), "{ct}");
    }
    let r = s.call("POST", "/1/lists", &[], &body);
    assert_eq!((r.status, r.code()), (415, 11003));
    assert!(r.json()["detail"].as_str().unwrap().contains("no Content-Type"));
    let metrics = String::from_utf8(s.json("GET", "/metrics", None).body).unwrap();
    assert!(metrics.contains("luna_matcher_store_lists 3"), "only the three accepted lists are stored: {metrics}");
}

#[test]
fn a_body_that_does_not_arrive_in_time_is_408() {
    let s = TestServer::start_with(|c| c.server.body_timeout = Duration::from_millis(800));
    let mut stream = TcpStream::connect(s.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(b"POST /1/lists HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{").unwrap();
    let mut raw = Vec::new();
    // The answer comes while the client still owes 99 bytes; then the connection closes.
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"error_code\":11027") && text.contains("server.body_timeout"), "{text}");
    // The service is fine.
    assert_eq!(s.json("GET", "/1/version", None).status, 200);
}

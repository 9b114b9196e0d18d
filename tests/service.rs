//! Service routes and conventions: health, version, OpenAPI, metrics,
//! Luna-Request-Id and msgpack.

mod common;

use common::*;
use serde_json::json;

#[test]
fn health_version_spec() {
    let s = TestServer::start();
    let r = s.json("GET", "/healthcheck", None);
    assert_eq!(r.status, 200);
    assert!(r.json()["execution_time"].as_f64().unwrap() >= 0.0);
    let v = s.json("GET", "/1/version", None).json();
    assert_eq!(v["Version"]["api"], 1);
    assert!(v["Version"]["major"].is_u64() && v["Version"]["minor"].is_u64() && v["Version"]["patch"].is_u64());

    let spec = s.json("GET", "/1/docs/spec", None).json();
    assert_eq!(spec["openapi"], "3.1.0");
    let codes: Vec<u64> = spec["x-error-codes"].as_array().unwrap().iter().map(|e| e["error_code"].as_u64().unwrap()).collect();
    for code in luna_core::ErrorCode::ALL {
        assert!(codes.contains(&(code.code() as u64)), "{code:?} is documented");
    }
    // Every documented path is routed.
    for (path, operations) in spec["paths"].as_object().unwrap() {
        let concrete = path.replace("{list_id}", ACCOUNT).replace("{face_id}", ACCOUNT);
        for (method, _) in operations.as_object().unwrap() {
            let r = s.json(&method.to_uppercase(), &concrete, None);
            assert!(r.status != 404 || r.code() != 11030, "{method} {path} is routed");
        }
    }
}

#[test]
fn request_id_is_echoed_or_made() {
    let s = TestServer::start();
    let id = "1700000000,0123abcd-0000-4000-8000-00000000abcd";
    let r = s.call("GET", "/1/version", &[("Luna-Request-Id", id)], b"");
    assert_eq!(r.header("Luna-Request-Id"), Some(id));
    let r = s.call("GET", "/nowhere", &[], b"");
    let made = r.header("Luna-Request-Id").unwrap();
    assert_eq!(made.len(), 47);
    assert!(made[..10].bytes().all(|c| c.is_ascii_digit()) && &made[10..11] == ",");
}

#[test]
fn metrics_count_requests() {
    let s = TestServer::start();
    s.create_list(ACCOUNT);
    s.json("GET", "/1/lists/00000000-0000-4000-8000-000000000000", None);
    let text = String::from_utf8(s.json("GET", "/metrics", None).body).unwrap();
    assert!(text.contains(r#"luna_matcher_requests_total{method="POST",route="/1/lists",status="201"} 1"#), "{text}");
    assert!(text.contains(r#"luna_matcher_requests_total{method="GET",route="/1/lists/{list_id}",status="404"} 1"#), "{text}");
    assert!(text.contains(r#"luna_matcher_request_duration_seconds_count{route="/1/lists"} 1"#), "{text}");
    assert!(text.contains("luna_matcher_store_lists 1"), "{text}");
}

#[test]
fn msgpack_in_and_out() {
    #[derive(serde::Serialize)]
    struct Descriptor<'a> {
        #[serde(with = "serde_bytes")]
        data: &'a [u8],
    }
    #[derive(serde::Serialize)]
    struct NewFace<'a> {
        account_id: &'a str,
        descriptor: Descriptor<'a>,
        user_data: &'a str,
    }
    let s = TestServer::start();
    let d = descriptor(4);
    let body = rmp_serde::to_vec_named(&NewFace { account_id: ACCOUNT, descriptor: Descriptor { data: &d }, user_data: "mp" }).unwrap();
    let r = s.call("POST", "/1/faces", &[("Content-Type", "application/msgpack"), ("Accept", "application/msgpack")], &body);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("Content-Type"), Some("application/msgpack"));
    let created: serde_json::Value = rmp_serde::from_slice(&r.body).unwrap();
    let face = created["face_id"].as_str().unwrap();

    #[derive(serde::Serialize)]
    struct Item<'a> {
        id: &'a str,
        #[serde(with = "serde_bytes")]
        data: &'a [u8],
    }
    #[derive(serde::Serialize)]
    struct Raw<'a> {
        references: Vec<Item<'a>>,
        candidates: Vec<Item<'a>>,
    }
    let raw = rmp_serde::to_vec_named(&Raw { references: vec![Item { id: "r", data: &d }], candidates: vec![Item { id: "c", data: &d }] }).unwrap();
    let r = s.call("POST", "/1/matcher/raw", &[("Content-Type", "application/msgpack")], &raw);
    assert_eq!(r.json(), json!([{"reference_id": "r", "matches": [{"candidate_id": "c", "similarity": 1.0}]}]));
    assert_eq!(s.json("GET", &format!("/1/faces/{face}"), None).json()["user_data"], "mp");
}

#[test]
fn readme_documents_every_error_code() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for code in luna_core::ErrorCode::ALL {
        let row = format!("| {} | {} | {} |", code.code(), luna_matcher::http::errors::status(*code).as_u16(), code.desc());
        assert!(readme.contains(&row), "README.md lacks the row {row}");
    }
}

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
fn the_api_reference_documents_every_route_and_error_code() {
    let reference = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).unwrap();
    for code in luna_core::ErrorCode::ALL {
        let row = format!("| {} | {} | {} |", code.code(), luna_matcher::http::errors::status(*code).as_u16(), code.desc());
        assert!(reference.contains(&row), "docs/api.md lacks the row {row}");
    }
    let spec = serde_json::to_value(luna_matcher::http::openapi::document()).unwrap();
    for (path, operations) in spec["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            let route = format!("`{} {path}`", method.to_uppercase());
            assert!(reference.contains(&route), "docs/api.md lacks {route}");
        }
    }
}

/// The repository explains itself: nothing in it points at files outside it.
#[test]
fn nothing_refers_outside_the_repository() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = std::process::Command::new("git").args(["ls-files"]).current_dir(root).output().expect("git ls-files");
    for file in String::from_utf8(files.stdout).unwrap().lines() {
        let Ok(text) = std::fs::read_to_string(root.join(file)) else { continue };
        assert!(!text.contains(concat!("..", "/shared/")), "{file} refers to a file outside the repository");
    }
}

/// docs/architecture.md's file tables match the tree: every source file of the
/// crates and of `luna_plugins` has its line, and every file the page names
/// exists. A table's files are relative to the directory line above it
/// (`` `src/http/`: ... ``); any other path it names is relative to the root.
#[test]
fn architecture_names_every_source_file() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let mut named = std::collections::BTreeSet::new();
    let mut dir: Option<&str> = None;
    for line in page.lines() {
        if let Some((d, _)) = line.strip_prefix('`').and_then(|l| l.split_once("`:")).filter(|(d, _)| d.ends_with('/')) {
            dir = Some(d);
            continue;
        }
        if line.starts_with('#') {
            dir = None;
        }
        let in_table = dir.filter(|_| line.starts_with("| `"));
        for (i, span) in line.split('`').skip(1).step_by(2).enumerate() {
            match in_table {
                Some(d) if i == 0 => {
                    named.insert(format!("{d}{span}"));
                }
                _ if span.contains('/') && [".rs", ".py", ".md", ".toml"].iter().any(|e| span.ends_with(e)) => {
                    named.insert(span.to_owned());
                }
                _ => {}
            }
        }
    }
    for file in &named {
        assert!(root.join(file).is_file(), "docs/architecture.md names {file}, which does not exist");
    }
    fn walk(root: &std::path::Path, dir: &str, ext: &str, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let path = format!("{dir}/{name}");
            if root.join(&path).is_dir() {
                walk(root, &path, ext, out);
            } else if name.ends_with(ext) {
                out.push(path);
            }
        }
    }
    let mut tree = Vec::new();
    for (dir, ext) in [("src", ".rs"), ("actors/src", ".rs"), ("core/src", ".rs"), ("actors/python/luna_plugins", ".py")] {
        walk(root, dir, ext, &mut tree);
    }
    assert!(tree.len() > 60, "the walk found the tree: {tree:?}");
    for file in tree {
        assert!(named.contains(&file), "docs/architecture.md has no line for {file}");
    }
}

#[test]
fn json_access_lines_carry_the_request_as_fields() {
    let mut s = Service::spawn(&[], "[server]\nlog_format = \"json\"\n");
    s.ready();
    let id = "1700000000,0123abcd-0000-4000-8000-00000000abcd";
    request(s.addr, "GET", "/1/lists/00000000-0000-4000-8000-000000000000", &[("Luna-Request-Id", id)], b"");
    assert!(s.terminate().success());
    let lines: Vec<serde_json::Value> = s.log().lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let access = lines.iter().find(|l| l["request_id"] == id).unwrap_or_else(|| panic!("no access line for {id}:\n{}", s.log()));
    assert_eq!(access["target"], "luna_matcher::access");
    assert_eq!((access["method"].as_str(), access["path"].as_str()), (Some("GET"), Some("/1/lists/00000000-0000-4000-8000-000000000000")));
    assert_eq!((access["status"].as_u64(), access["error_code"].as_u64()), (Some(404), Some(22001)));
    assert!(access["execution_time"].as_f64().is_some_and(|t| t > 0.0), "{access}");
    let ok = lines.iter().find(|l| l["path"] == "/healthcheck" && l["status"] == 200).expect("the readiness probe's line");
    assert!(ok.get("error_code").is_none(), "no error_code without an error: {ok}");
}

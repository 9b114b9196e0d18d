//! Memory per request is bounded: the largest matching answer the default
//! limits admit, measured as the real binary's peak resident memory.

mod common;

use common::*;
use serde_json::{json, Value};

#[test]
fn the_worst_case_request_under_the_limits_stays_under_its_memory_bound() {
    let s = Service::spawn_with_env(&[], "", &[("LUNA_MATCHER_PROXY_ACTIVE_PLUGINS", "[]")]);
    s.ready();
    let lists: Vec<String> =
        (0..2).map(|_| s.call("POST", "/1/lists", Some(&json!({"account_id": ACCOUNT}))).json()["list_id"].as_str().unwrap().to_owned()).collect();
    // Fields at their limits; 110 of the 128 characters of user_data are
    // control characters, six bytes each in JSON: the answer below is just
    // under limits.response_bytes.
    let user_data: String = (0..128).map(|i| if i < 110 { '\u{1}' } else { 'u' }).collect();
    let faces: Vec<Value> = (0..100)
        .map(|i| {
            json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(i))}, "user_data": user_data,
                   "external_id": format!("{i:0>36}"), "lists": lists})
        })
        .collect();
    assert_eq!(s.call("POST", "/1/faces/bulk", Some(&json!(faces))).status, 201);
    let before = s.peak_rss_kib();

    // 30 references x 10 candidate sets x 100 hits, every target.
    let targets = json!(["face_id", "similarity", "user_data", "external_id", "create_time", "account_id", "lists"]);
    let references: Vec<Value> = (0..30).map(|i| json!({"type": "descriptor", "id": format!("{i:0>36}"), "data": b64(&descriptor(1000 + i))})).collect();
    let sets: Vec<Value> = (0..10).map(|i| json!({"filters": {"origin": "faces", "list_id": lists[i % 2]}, "targets": targets, "limit": 100})).collect();
    let r = s.call("POST", "/1/matcher/faces", Some(&json!({"references": references, "candidates": sets})));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body[..r.body.len().min(500)]));
    let answer = r.json();
    assert_eq!(answer.as_array().unwrap().iter().map(|m| m["matches"].as_array().unwrap().len()).sum::<usize>(), 300);
    assert_eq!(answer[29]["matches"][9]["result"].as_array().unwrap().len(), 100);
    let response_mib = r.body.len() as f64 / (1 << 20) as f64;
    drop(answer);

    let after = s.peak_rss_kib();
    let grown_mib = after.saturating_sub(before) as f64 / 1024.0;
    eprintln!(
        "worst-case answer: {response_mib:.1} MiB of JSON; peak RSS {:.0} MiB before, {:.0} MiB after (+{grown_mib:.0} MiB)",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    assert!(response_mib > 25.0, "the request is near the response cap: {response_mib:.1} MiB");
    assert!(grown_mib < 256.0, "the worst-case request grew the peak RSS by {grown_mib:.0} MiB");
}

//! `/1/matcher/faces` and `/1/matcher/raw` over HTTP: ordering, limit,
//! threshold, filters, targets and account isolation; each test on SQLite and
//! on PostgreSQL.

mod common;

use common::*;
use serde_json::{json, Value};

/// (face_id, descriptor) of faces made to have graded and tied similarities to `descriptor(0)`.
fn populate(s: &TestServer, list: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    let reference = descriptor(0);
    (0..n)
        .map(|i| {
            // Every fourth face repeats an earlier level of similarity: ties.
            let keep = ((i / 4 * 4 + (i % 4).min(1)) * 512 / n).min(512);
            let d = blend(&reference, &descriptor(1000 + i as u64), keep);
            (s.create_face(ACCOUNT, &d, &[list], &format!("u{i}")), d)
        })
        .collect()
}

/// What docs/api.md says the answer is: sorted by similarity desc, face_id asc; threshold; limit.
fn expected(faces: &[(String, Vec<u8>)], reference: &[u8], limit: usize, threshold: f64) -> (Vec<(String, f64)>, usize) {
    let mut all: Vec<(String, f64)> = faces.iter().map(|(id, d)| (id.clone(), u8_similarity(reference, d))).filter(|(_, s)| *s >= threshold).collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let total = all.len();
    all.truncate(limit);
    (all, total)
}

fn results(set: &Value) -> Vec<(String, f64)> {
    set["result"].as_array().unwrap().iter().map(|r| (r["face"]["face_id"].as_str().unwrap().to_owned(), r["similarity"].as_f64().unwrap())).collect()
}

on_each_backend! {
    fn ordering_limit_and_threshold(store: Store) {
        let s = TestServer::start_on(store);
        let list = s.create_list(ACCOUNT);
        let mut faces = populate(&s, &list, 40);
        // Exact copies of the reference: similarity 1 three times, ordered by face_id.
        for _ in 0..3 {
            faces.push((s.create_face(ACCOUNT, &descriptor(0), &[&list], "copy"), descriptor(0)));
        }
        for (limit, threshold) in [(3, 0.0), (10, 0.0), (100, 0.0), (100, 0.3), (5, 0.999), (0, 0.0)] {
            let q = json!({"references": [{"type": "descriptor", "id": "r1", "data": b64(&descriptor(0))}],
                           "candidates": [{"filters": {"origin": "faces", "list_id": list}, "limit": limit, "threshold": threshold}]});
            let r = s.json("POST", "/1/matcher/faces", Some(&q));
            assert_eq!(r.status, 200);
            let body = r.json();
            assert_eq!(body[0]["reference"], json!({"type": "descriptor", "id": "r1"}));
            let set = &body[0]["matches"][0];
            let (want, total) = expected(&faces, &descriptor(0), limit, threshold);
            assert_eq!(results(set), want, "limit {limit} threshold {threshold}");
            assert_eq!(set["total_found"].as_u64().unwrap() as usize, total);
            assert_eq!(set["filters"], json!({"origin": "faces", "list_id": list}));
        }
    }

    fn references_by_face_and_per_reference_errors(store: Store) {
        let s = TestServer::start_on(store);
        let list = s.create_list(ACCOUNT);
        let faces = populate(&s, &list, 12);
        let missing = "00000000-0000-4000-8000-000000000000";
        let q = json!({"references": [{"type": "face", "id": faces[5].0}, {"type": "face", "id": missing},
                                      {"type": "descriptor", "data": b64(&sdk(62, &faces[5].1))}],
                       "candidates": [{"filters": {"origin": "faces", "list_id": list}, "limit": 4}]});
        let body = s.json("POST", "/1/matcher/faces", Some(&q)).json();
        let (want, _) = expected(&faces, &faces[5].1, 4, 0.0);
        assert_eq!(results(&body[0]["matches"][0]), want);
        assert_eq!(want[0], (faces[5].0.clone(), 1.0));
        assert_eq!(body[1]["reference"], json!({"type": "face", "id": missing}));
        assert_eq!(body[1]["error"]["error_code"], 22002);
        assert!(body[1].get("matches").is_none());
        assert_eq!(results(&body[2]["matches"][0]), want, "SDK container and face reference agree");
    }

    fn every_filter(store: Store) {
        let s = TestServer::start_on(store);
        let (l1, l2) = (s.create_list(ACCOUNT), s.create_list(ACCOUNT));
        let mut ids = Vec::new();
        for i in 0..6u64 {
            let lists: Vec<&str> = if i % 2 == 0 { vec![&l1] } else { vec![&l1, &l2] };
            let body = json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(i))}, "lists": lists,
                              "external_id": format!("e{i}"), "user_data": if i < 3 { "low" } else { "high" }});
            ids.push(s.json("POST", "/1/faces", Some(&body)).json()["face_id"].as_str().unwrap().to_owned());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let times: Vec<String> = ids.iter().map(|id| s.json("GET", &format!("/1/faces/{id}"), None).json()["create_time"].as_str().unwrap().to_owned()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        let found = |filters: Value| -> Vec<String> {
            let q = json!({"references": [{"type": "descriptor", "data": b64(&descriptor(0))}],
                           "candidates": [{"filters": filters, "limit": 100, "targets": ["face_id"]}]});
            let r = s.json("POST", "/1/matcher/faces", Some(&q));
            assert_eq!(r.status, 200, "{}", r.json());
            let mut got: Vec<String> =
                r.json()[0]["matches"][0]["result"].as_array().unwrap().iter().map(|m| m["face"]["face_id"].as_str().unwrap().to_owned()).collect();
            got.sort();
            got
        };
        let pick = |idx: &[usize]| -> Vec<String> {
            let mut v: Vec<String> = idx.iter().map(|&i| ids[i].clone()).collect();
            v.sort();
            v
        };
        assert_eq!(found(json!({"origin": "faces"})), pick(&[0, 1, 2, 3, 4, 5]));
        assert_eq!(found(json!({"origin": "faces", "list_id": l2})), pick(&[1, 3, 5]));
        assert_eq!(found(json!({"origin": "faces", "account_id": ACCOUNT, "list_id": l1})), pick(&[0, 1, 2, 3, 4, 5]));
        assert_eq!(found(json!({"origin": "faces", "face_ids": [ids[2], ids[4], "00000000-0000-4000-8000-000000000000"]})), pick(&[2, 4]));
        assert_eq!(found(json!({"origin": "faces", "external_ids": ["e1", "e5", "nope"]})), pick(&[1, 5]));
        assert_eq!(found(json!({"origin": "faces", "user_data": "high"})), pick(&[3, 4, 5]));
        assert_eq!(found(json!({"origin": "faces", "create_time__gte": times[2], "create_time__lt": times[4]})), pick(&[2, 3]));
        assert_eq!(found(json!({"origin": "faces", "face_id__gte": sorted[1], "face_id__lt": sorted[4]})), sorted[1..4].to_vec());
        assert_eq!(found(json!({"origin": "faces", "face_ids": [], "external_ids": []})), pick(&[0, 1, 2, 3, 4, 5]), "empty lists do not restrict");
        assert_eq!(found(json!({"origin": "faces", "list_id": "00000000-0000-4000-8000-000000000000"})), Vec::<String>::new());

        // A face named twice in face_ids is one candidate: returned and counted once.
        let q = json!({"references": [{"type": "descriptor", "data": b64(&descriptor(0))}],
                       "candidates": [{"filters": {"origin": "faces", "face_ids": [ids[2], ids[4], ids[2], ids[4], ids[2]]}, "limit": 10}]});
        let set = &s.json("POST", "/1/matcher/faces", Some(&q)).json()[0]["matches"][0];
        assert_eq!((set["total_found"].as_u64(), set["result"].as_array().unwrap().len()), (Some(2), 2), "{set}");
    }

    fn targets(store: Store) {
        let s = TestServer::start_on(store);
        let list = s.create_list(ACCOUNT);
        let body = json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(3))}, "lists": [list], "external_id": "x", "user_data": "u"});
        let face = s.json("POST", "/1/faces", Some(&body)).json()["face_id"].as_str().unwrap().to_owned();
        let ask = |targets: Option<Value>| {
            let mut set = json!({"filters": {"origin": "faces", "list_id": list}});
            if let Some(t) = targets {
                set["targets"] = t;
            }
            let q = json!({"references": [{"type": "face", "id": face}], "candidates": [set]});
            s.json("POST", "/1/matcher/faces", Some(&q)).json()[0]["matches"][0]["result"][0].clone()
        };
        assert_eq!(ask(None), json!({"face": {"face_id": face}, "similarity": 1.0}));
        assert_eq!(ask(Some(json!(["user_data"]))), json!({"face": {"user_data": "u"}}));
        let all = ask(Some(json!(["face_id", "similarity", "user_data", "external_id", "create_time", "account_id", "lists"])));
        let f = &all["face"];
        assert_eq!((f["external_id"].as_str(), f["account_id"].as_str(), f["lists"].clone()), (Some("x"), Some(ACCOUNT), json!([list])));
        assert!(f["create_time"].is_string());
    }

    fn accounts_are_isolated(store: Store) {
        let s = TestServer::start_on(store);
        let mine = s.create_list(ACCOUNT);
        let theirs = s.create_list(OTHER_ACCOUNT);
        let my_face = s.create_face(ACCOUNT, &descriptor(1), &[&mine], "mine");
        let their_face = s.create_face(OTHER_ACCOUNT, &descriptor(1), &[&theirs], "theirs");
        let scoped = |path: &str| format!("{path}?account_id={ACCOUNT}");

        // Another account's objects do not exist for this one.
        assert_eq!(s.json("GET", &scoped(&format!("/1/lists/{theirs}")), None).code(), 22001);
        assert_eq!(s.json("GET", &scoped(&format!("/1/faces/{their_face}")), None).code(), 22002);
        assert_eq!(s.json("DELETE", &scoped(&format!("/1/faces/{their_face}")), None).code(), 22002);
        assert_eq!(s.json("DELETE", &scoped(&format!("/1/lists/{theirs}")), None).code(), 22001);
        let attach = json!({"action": "attach", "face_ids": [their_face]});
        assert_eq!(s.json("PATCH", &scoped(&format!("/1/lists/{mine}/faces")), Some(&attach)).code(), 22002);
        // Unscoped, a face still cannot join another account's list.
        assert_eq!(s.json("PATCH", &format!("/1/lists/{mine}/faces"), Some(&attach)).code(), 22002);
        let face_in_their_list = json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(2))}, "lists": [theirs]});
        assert_eq!(s.json("POST", "/1/faces", Some(&face_in_their_list)).code(), 22001);
        assert_eq!(s.json("POST", &scoped("/1/lists"), Some(&json!({"account_id": OTHER_ACCOUNT}))).code(), 31000);

        // Matching under an account sees only its faces, whatever the filters say.
        for filters in [json!({"origin": "faces"}), json!({"origin": "faces", "list_id": theirs}), json!({"origin": "faces", "face_ids": [their_face, my_face]})] {
            let q = json!({"references": [{"type": "descriptor", "data": b64(&descriptor(1))}, {"type": "face", "id": their_face}],
                           "candidates": [{"filters": filters, "targets": ["face_id", "account_id"]}]});
            let body = s.json("POST", &scoped("/1/matcher/faces"), Some(&q)).json();
            for m in body[0]["matches"][0]["result"].as_array().unwrap() {
                assert_eq!(m["face"]["account_id"], ACCOUNT);
            }
            assert_eq!(body[1]["error"]["error_code"], 22002, "another account's face as a reference is not found");
        }
        let q = json!({"references": [{"type": "descriptor", "data": b64(&descriptor(1))}],
                       "candidates": [{"filters": {"origin": "faces", "account_id": OTHER_ACCOUNT}}]});
        assert_eq!(s.json("POST", &scoped("/1/matcher/faces"), Some(&q)).code(), 31000);
        // Unscoped, the filter's account_id scopes the candidates.
        let body = s.json("POST", "/1/matcher/faces", Some(&q)).json();
        assert_eq!(results(&body[0]["matches"][0]), vec![(their_face.clone(), 1.0)]);
    }

    fn raw_matching(store: Store) {
        let s = TestServer::start_on(store);
        // One reference against 30 candidates, then 30 references against
        // 150: small requests are scanned where they are parsed, large ones
        // on the matching threads; both answer alike.
        for (references, candidates) in [(1, 30), (30, 150)] {
            let refs: Vec<Vec<u8>> = (0..references).map(|r| blend(&descriptor(0), &descriptor(900 + r as u64), r * 10)).collect();
            let cands: Vec<(String, Vec<u8>)> =
                (0..candidates).map(|i| (format!("c{:03}", candidates - 1 - i), blend(&refs[0], &descriptor(50 + i as u64), (i / 2) * 30 % 512))).collect();
            let q = json!({"references": refs.iter().enumerate().map(|(r, d)| json!({"id": format!("r{r}"), "data": b64(d)})).collect::<Vec<_>>(),
                           "candidates": cands.iter().map(|(id, d)| json!({"id": id, "data": b64(d)})).collect::<Vec<_>>(),
                           "descriptor_version": 62, "limit": 7, "threshold": 0.05});
            let body = s.json("POST", "/1/matcher/raw", Some(&q)).json();
            assert_eq!(body.as_array().unwrap().len(), references);
            for (r, reference) in refs.iter().enumerate() {
                let mut want: Vec<(String, f64)> = cands.iter().map(|(id, d)| (id.clone(), u8_similarity(reference, d))).filter(|(_, s)| *s >= 0.05).collect();
                want.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                want.truncate(7);
                let got: Vec<(String, f64)> =
                    body[r]["matches"].as_array().unwrap().iter().map(|m| (m["candidate_id"].as_str().unwrap().to_owned(), m["similarity"].as_f64().unwrap())).collect();
                assert_eq!(body[r]["reference_id"], format!("r{r}"));
                assert_eq!(got, want, "{references} x {candidates}, reference {r}");
            }
        }
    }

    fn float_descriptors_and_zero_vectors(store: Store) {
        let s = TestServer::start_on(store);
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let a: Vec<f32> = (0..512).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let b: Vec<f32> = a.iter().enumerate().map(|(i, x)| if i % 3 == 0 { -x } else { *x }).collect();
        let zero = vec![0f32; 512];
        let q = json!({"references": [{"id": "a", "data": b64(&f32s(&a))}],
                       "candidates": [{"id": "a", "data": b64(&f32s(&a))}, {"id": "b", "data": b64(&f32s(&b))}, {"id": "z", "data": b64(&f32s(&zero))}],
                       "descriptor_version": 1000, "limit": 3});
        let body = s.json("POST", "/1/matcher/raw", Some(&q)).json();
        let m = body[0]["matches"].as_array().unwrap();
        let dot: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
        let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
        assert_eq!(m[0]["candidate_id"], "a");
        assert!((m[0]["similarity"].as_f64().unwrap() - 1.0).abs() < 1e-6);
        assert_eq!(m[1]["candidate_id"], "b");
        assert!((m[1]["similarity"].as_f64().unwrap() - dot / na).abs() < 1e-6);
        assert_eq!((m[2]["candidate_id"].as_str(), m[2]["similarity"].as_f64()), (Some("z"), Some(0.0)), "a zero vector has similarity 0");
    }

    fn platt_calibration_from_config(store: Store) {
        let s = TestServer::start_with_on(store, |c| {
            c.descriptors
                .versions
                .insert("77".into(), luna_core::descriptor::VersionSpec { length: 512, dtype: luna_core::descriptor::Dtype::U8, a: Some(4.0), b: Some(-2.0) });
        });
        let (r, c) = (descriptor(0), blend(&descriptor(0), &descriptor(9), 300));
        let q = json!({"references": [{"id": "r", "data": b64(&r)}], "candidates": [{"id": "c", "data": b64(&c)}], "descriptor_version": 77});
        let got = s.json("POST", "/1/matcher/raw", Some(&q)).json()[0]["matches"][0]["similarity"].as_f64().unwrap();
        let cos = {
            let f = |v: &[u8]| v.iter().map(|&x| x as f64 - 128.0).collect::<Vec<_>>();
            let (a, b) = (f(&r), f(&c));
            let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            dot / (a.iter().map(|x| x * x).sum::<f64>() * b.iter().map(|x| x * x).sum::<f64>()).sqrt()
        };
        assert!((got - 1.0 / (1.0 + (-(4.0 * cos - 2.0)).exp())).abs() < 1e-12, "{got} {cos}");
    }
}

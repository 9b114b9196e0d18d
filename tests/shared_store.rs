//! Several real binaries on one PostgreSQL database: writes through one are
//! matched by the others, whatever writes them (an instance, psql) and
//! whatever happens meanwhile (kill -9, lost connections, commits out of
//! order, a trimmed change log); start-up refusals; cache scopes and store
//! positions; a matching plugin's copy of a list.

mod common;

use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Poll `check` until it holds (up to 10 s); the time it took.
fn within(what: &str, check: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// A face written as psql would, outside the service.
fn insert_face(client: &mut postgres::Client, seed: u64, list: &str, user_data: &str) -> String {
    let row = client
        .query_one(
            "WITH f AS (INSERT INTO faces (account_id, descriptor_version, descriptor, user_data) VALUES ($1::text::uuid, 62, $2, $3) RETURNING face_id)
             INSERT INTO list_faces (list_id, face_id) SELECT $4::text::uuid, face_id FROM f RETURNING face_id::text",
            &[&ACCOUNT, &descriptor(seed), &user_data, &list],
        )
        .unwrap();
    row.get(0)
}

fn faces_in_db(db: &TestDb) -> Vec<String> {
    let mut ids: Vec<String> = db.client().query("SELECT face_id::text FROM faces", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    ids.sort();
    ids
}

#[test]
fn writes_through_one_instance_are_matched_by_another() {
    let db = TestDb::create();
    let (a, b) = (Instance::start(&db, &[]), Instance::start(&db, &[]));
    let list = a.create_list();
    let (face, _) = a.create_face(1, &[&list]);
    within("B matches a face written through A", || b.matched(1, Some(&list)) == vec![face.clone()]);

    // With the write's position, B's answer includes it at once.
    let (second, position) = a.create_face(2, &[&list]);
    let r = b.call_with("POST", "/1/matcher/faces", &[("Luna-Store-Position", &position)], Some(&match_query(2, Some(&list))));
    assert_eq!(r.json()[0]["matches"][0]["result"][0]["face"]["face_id"], second.as_str(), "read-your-writes across instances");
    let r = b.call("POST", &format!("/1/matcher/raw?store_position={position}"), Some(&json!({"references": [], "candidates": []})));
    assert_eq!(r.status, 200, "the query parameter names a position too");

    // Detach, attach back through B, delete the face, delete the list: each reaches the other instance.
    let patch = |i: &Instance, action: &str| i.call("PATCH", &format!("/1/lists/{list}/faces"), Some(&json!({"action": action, "face_ids": [face]}))).status;
    assert_eq!(patch(&a, "detach"), 204);
    within("B sees the detach", || !b.matched(1, Some(&list)).contains(&face) && b.matched(1, None).contains(&face));
    assert_eq!(patch(&b, "attach"), 204);
    within("A sees the attach", || a.matched(1, Some(&list)).contains(&face));
    assert_eq!(a.call("DELETE", &format!("/1/faces/{second}"), None).status, 204);
    within("B sees the delete", || !b.matched(2, None).contains(&second));
    assert_eq!(a.call("DELETE", &format!("/1/lists/{list}"), None).status, 204);
    within("B sees the list delete", || {
        let r = b.call("POST", "/1/matcher/faces", Some(&match_query(1, None))).json();
        b.matched(1, Some(&list)).is_empty() && r[0]["matches"][0]["result"][0]["face"]["lists"] == json!([])
    });
    assert_eq!(b.cache()["lists"], 0);

    // Rows written with a client outside the service are followed too.
    let list = a.create_list();
    let mut psql = db.client();
    let outside = insert_face(&mut psql, 3, &list, "psql");
    for i in [&a, &b] {
        within("a psql insert is matched", || i.matched(3, Some(&list)) == vec![outside.clone()]);
    }
    psql.execute("UPDATE faces SET user_data = 'edited' WHERE face_id = $1::text::uuid", &[&outside]).unwrap();
    within("a psql update is matched", || b.match_body(3, Some(&list)).json()[0]["matches"][0]["result"][0]["face"]["user_data"] == "edited");
    psql.execute("DELETE FROM faces WHERE face_id = $1::text::uuid", &[&outside]).unwrap();
    within("a psql delete is followed", || !b.matched(3, None).contains(&outside) && !a.matched(3, None).contains(&outside));
    let r = b.call("GET", &format!("/1/faces/{outside}"), None);
    assert_eq!((r.status, r.code()), (404, 22002));
}

#[test]
fn an_instance_killed_with_9_catches_up() {
    let db = TestDb::create();
    let (a, mut b) = (Instance::start(&db, &[]), Instance::start(&db, &[]));
    let (l1, l2) = (a.create_list(), a.create_list());
    let mut faces = Vec::new();
    for i in 0..60u64 {
        if i == 20 {
            b.kill9();
        }
        let lists: &[&str] = if i % 2 == 0 { &[&l1] } else { &[&l1, &l2] };
        let (face, _) = a.create_face(100 + i, lists);
        faces.push(face);
        if i % 7 == 6 {
            assert_eq!(a.call("DELETE", &format!("/1/faces/{}", faces[i as usize - 3]), None).status, 204);
        }
        if i % 11 == 10 {
            let r = a.call("PATCH", &format!("/1/lists/{l2}/faces"), Some(&json!({"action": "detach", "face_ids": [faces[i as usize - 1]]})));
            assert_eq!(r.status, 204);
        }
    }
    let bulk: Vec<Value> = (0..50u64).map(|i| json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(500 + i))}, "lists": [l2]})).collect();
    let r = a.call("POST", "/1/faces/bulk", Some(&json!(bulk)));
    assert_eq!(r.status, 201);
    let last = r.header("Luna-Store-Position").unwrap().to_owned();
    b.spawn();
    b.ready();
    // B has applied everything up to A's last write: its answers are A's.
    let wait = [("Luna-Store-Position", last.as_str())];
    for seed in [100, 117, 133, 159, 510] {
        for list in [None, Some(l1.as_str()), Some(l2.as_str())] {
            let q = match_query(seed, list);
            let (from_a, from_b) = (a.call("POST", "/1/matcher/faces", Some(&q)).json(), b.call_with("POST", "/1/matcher/faces", &wait, Some(&q)).json());
            assert_eq!(from_a, from_b, "seed {seed} list {list:?}");
        }
    }
    let (ca, cb) = (a.cache(), b.cache());
    assert_eq!((ca["faces"].clone(), ca["lists"].clone()), (cb["faces"].clone(), cb["lists"].clone()));
    assert_eq!(cb["faces"].as_u64().unwrap() as usize, faces_in_db(&db).len());
}

#[test]
fn lost_connections_lose_no_write() {
    let db = TestDb::create();
    let (a, b) = (Arc::new(Instance::start(&db, &[])), Instance::start(&db, &[]));
    let list = a.create_list();
    let stop = Arc::new(AtomicBool::new(false));
    // (face_id or error code, status) of every write.
    let outcomes = Arc::new(Mutex::new(Vec::<(String, u16)>::new()));
    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let (a, stop, outcomes, list) = (a.clone(), stop.clone(), outcomes.clone(), list.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(10_000 * (w + 1) + i))}, "lists": [list]});
                    let r = a.call("POST", "/1/faces", Some(&body));
                    let what = if r.status == 201 { r.json()["face_id"].as_str().unwrap().to_owned() } else { r.code().to_string() };
                    outcomes.lock().unwrap().push((what, r.status));
                    i += 1;
                }
            })
        })
        .collect();
    // Terminate every connection of the database, the instances' pools and followers
    // alike, until some writes have failed on it.
    let mut admin = admin();
    let start = Instant::now();
    while outcomes.lock().unwrap().iter().filter(|(_, s)| *s != 201).count() < 3 && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(150));
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", &[&db.name]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    writers.into_iter().for_each(|w| w.join().unwrap());

    let outcomes = outcomes.lock().unwrap().clone();
    let failed: Vec<_> = outcomes.iter().filter(|(_, s)| *s != 201).collect();
    assert!(!failed.is_empty(), "no write met a terminated connection");
    for (code, status) in &failed {
        assert_eq!((*status, code.as_str()), (503, "10003"), "a write on a lost connection is answered 503 with 10003");
    }
    let stored = faces_in_db(&db);
    let acknowledged: Vec<&String> = outcomes.iter().filter(|(_, s)| *s == 201).map(|(f, _)| f).collect();
    assert!(acknowledged.len() > 10, "{} writes acknowledged", acknowledged.len());
    for face in &acknowledged {
        assert!(stored.binary_search(face).is_ok(), "acknowledged face {face} is stored");
    }
    // Both instances reconnected and missed nothing: their memory is the database.
    for i in [&*a, &b] {
        i.wait_for(|| i.cache()["faces"].as_u64() == Some(stored.len() as u64), &format!("the instance holds the {} stored faces", stored.len()));
    }
    for i in [&*a, &b] {
        let r = i.call("POST", "/1/faces", Some(&json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(7))}})));
        assert_eq!(r.status, 201, "writes work again");
    }
    assert!(b.log().contains("store: following"), "B's follower saw its connection go:\n{}", b.log());
}

#[test]
fn commits_out_of_order_are_not_missed() {
    let db = TestDb::create();
    let a = Instance::start(&db, &[]);
    let list = a.create_list();
    let (mut first, mut second) = (db.client(), db.client());
    let mut t1 = first.transaction().unwrap();
    let x = insert_face_in(&mut t1, 1, &list);
    let mut t2 = second.transaction().unwrap();
    let y = insert_face_in(&mut t2, 2, &list);
    t2.commit().unwrap();
    // Several polls pass with the later sequence committed and the earlier one open.
    std::thread::sleep(Duration::from_millis(600));
    // Held back by t1, A reports the age of what waits (t2's change) at its next poll.
    within("A reports the lag", || (0.3..10.0).contains(&a.metric("luna_matcher_store_lag_seconds")));
    t1.commit().unwrap();
    let seqs: Vec<i64> = db
        .client()
        .query("SELECT seq FROM change_log WHERE kind = 'f' AND id IN ($1::text::uuid, $2::text::uuid) ORDER BY id = $2::text::uuid", &[&x, &y])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(seqs[0] < seqs[1], "the face committed last has the lower sequence: {seqs:?}");
    within("both faces are matched", || a.matched(1, Some(&list)).contains(&x) && a.matched(2, Some(&list)).contains(&y));
    assert_eq!(a.metric("luna_matcher_store_lag_seconds"), 0.0, "nothing waits");
    let b = Instance::start(&db, &[]);
    assert_eq!(b.cache()["faces"], 2);
}

#[test]
fn a_load_of_many_faces_holds_each_with_its_lists() {
    let db = TestDb::create();
    let a = Instance::start(&db, &[]);
    let list = a.create_list();
    let mut psql = db.client();
    // More faces than a load hands its index builder at a time (1,024).
    psql.execute(
        "WITH f AS (INSERT INTO faces (account_id, descriptor_version, descriptor)
             SELECT $1::text::uuid, 62, decode(repeat(lpad(to_hex(i % 251), 2, '0'), 512), 'hex') FROM generate_series(1, 2500) i
             RETURNING face_id)
         INSERT INTO list_faces (list_id, face_id) SELECT $2::text::uuid, face_id FROM f",
        &[&ACCOUNT, &list],
    )
    .unwrap();
    let last = insert_face(&mut psql, 7, &list, "last");
    let b = Instance::start(&db, &[]);
    assert_eq!(b.metric("luna_matcher_store_loaded_faces"), 2501.0);
    assert_eq!(b.call("GET", &format!("/1/lists/{list}"), None).json()["face_count"], 2501);
    assert!(b.matched(7, Some(&list)).contains(&last));
}

#[test]
fn a_transaction_open_in_another_database_holds_no_instance_back() {
    let db = TestDb::create();
    let (a, b) = (Instance::start(&db, &[]), Instance::start(&db, &[]));
    let mut elsewhere = admin();
    let mut open = elsewhere.transaction().unwrap();
    open.query_one("SELECT pg_current_xact_id()", &[]).unwrap();
    let list = a.create_list();
    let (face, _) = a.create_face(1, &[&list]);
    within("B matches the face while the other transaction is open", || b.matched(1, Some(&list)) == vec![face.clone()]);
    open.commit().unwrap();
}

#[test]
fn a_stored_face_the_version_table_cannot_read_is_left_out_and_counted() {
    let db = TestDb::create();
    let a = Instance::start(&db, &[]);
    let list = a.create_list();
    let mut psql = db.client();
    let bad: String = psql
        .query_one(
            "WITH f AS (INSERT INTO faces (account_id, descriptor_version, descriptor) VALUES ($1::text::uuid, 62, '\\x0102') RETURNING face_id)
             INSERT INTO list_faces (list_id, face_id) SELECT $2::text::uuid, face_id FROM f RETURNING face_id::text",
            &[&ACCOUNT, &list],
        )
        .unwrap()
        .get(0);
    let good = insert_face(&mut psql, 1, &list, "good");
    within("the readable face is matched", || a.matched(1, Some(&list)) == vec![good.clone()]);
    assert_eq!(a.metric("luna_matcher_store_unreadable_faces"), 1.0);
    assert!(a.log().contains(&format!("stored face {bad}")), "{}", a.log());
    // Re-read after an update, it is still one face left out.
    psql.execute("UPDATE faces SET user_data = 'edited' WHERE face_id = $1::text::uuid", &[&bad]).unwrap();
    let later = insert_face(&mut psql, 2, &list, "later");
    within("the face written after the update is matched", || a.matched(2, Some(&list)).contains(&later));
    assert_eq!(a.metric("luna_matcher_store_unreadable_faces"), 1.0);
    // A load leaves it out the same way.
    let b = Instance::start(&db, &[]);
    assert_eq!(b.metric("luna_matcher_store_unreadable_faces"), 1.0);
    assert!(b.matched(1, Some(&list)).contains(&good));
    let r = b.call("GET", &format!("/1/faces/{bad}"), None);
    assert_eq!((r.status, r.code()), (500, 10002));
}

fn insert_face_in(tx: &mut postgres::Transaction, seed: u64, list: &str) -> String {
    tx.query_one(
        "WITH f AS (INSERT INTO faces (account_id, descriptor_version, descriptor) VALUES ($1::text::uuid, 62, $2) RETURNING face_id)
         INSERT INTO list_faces (list_id, face_id) SELECT $3::text::uuid, face_id FROM f RETURNING face_id::text",
        &[&ACCOUNT, &descriptor(seed), &list],
    )
    .unwrap()
    .get(0)
}

/// Run the binary to its exit with the store settings given; its status and output.
fn run_to_exit(env: &[(String, String)]) -> (ExitStatus, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_luna-matcher"))
        .args(["--role", "matcher", "--port", &free_port().to_string()])
        .env("LUNA_PYTHON_MATCHER_ACTIVE_PLUGINS", "[]")
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    (out.status, format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_database_that_cannot_be_used_stops_start_up() {
    let db = TestDb::create();
    let with_dsn = |dsn: String| vec![("LUNA_MATCHER__STORAGE__BACKEND".to_owned(), "postgres".to_owned()), ("LUNA_MATCHER__STORAGE__DSN".to_owned(), dsn)];
    let refused_port = format!("postgresql://postgres@127.0.0.1:{}/{}", free_port(), db.name);
    for (dsn, what) in [
        ("postgresql://postgres@[127.0.0.1/x".to_owned(), "not a connection string"),
        (refused_port, "nothing listens"),
        (format!("{}/luna_test_missing_database", postgres_server()), "no such database"),
    ] {
        let (status, out) = run_to_exit(&with_dsn(dsn));
        assert_eq!(status.code(), Some(2), "{what}: {out}");
        assert!(out.contains("storage.dsn"), "{what}: {out}");
    }
    let (status, out) = run_to_exit(&[("LUNA_MATCHER__STORAGE__BACKEND".into(), "postgres".into())]);
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("storage.dsn"), "{out}");

    // A database that refuses connections.
    admin().batch_execute(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", db.name)).unwrap();
    let (status, out) = run_to_exit(&db.env());
    admin().batch_execute(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", db.name)).unwrap();
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("storage.dsn") && out.contains("not currently accepting connections"), "{out}");

    // A schema newer than the binary knows.
    Instance::start(&db, &[]).kill9();
    db.client().batch_execute("INSERT INTO luna_matcher_migrations (version) VALUES (999)").unwrap();
    let (status, out) = run_to_exit(&db.env());
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("storage.dsn") && out.contains("version 999, newer than this binary knows"), "{out}");
}

#[test]
fn instances_starting_at_once_migrate_once() {
    let db = TestDb::create();
    let instances: Vec<Instance> = (0..3).map(|_| Instance::spawn_only(&db, &[])).collect();
    for i in &instances {
        i.ready();
    }
    let versions: Vec<i32> = db.client().query("SELECT version FROM luna_matcher_migrations", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, vec![1]);
    let migrated = instances.iter().filter(|i| i.log().contains("schema migrated to version 1")).count();
    assert_eq!(migrated, 1, "one instance migrated, the others waited and found it done");
    let list = instances[0].create_list();
    let (face, _) = instances[1].create_face(9, &[&list]);
    within("the third matches it", || instances[2].matched(9, Some(&list)) == vec![face.clone()]);
}

#[test]
fn a_lost_database_fails_writes_and_keeps_matching() {
    let db = TestDb::create();
    let a = Instance::start(&db, &[]);
    let list = a.create_list();
    let (face, _) = a.create_face(4, &[&list]);
    let lock_out = |allow: bool| {
        let mut admin = admin();
        admin.batch_execute(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS {allow}", db.name)).unwrap();
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", &[&db.name]).unwrap();
    };
    lock_out(false);
    let r = a.call("POST", "/1/faces", Some(&json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(5))}, "lists": [list]})));
    assert_eq!((r.status, r.code()), (503, 10003), "{}", r.json());
    let health = a.call("GET", "/healthcheck", None);
    assert_eq!(health.status, 502);
    assert_eq!(health.json()["errors"][0]["component"], "store");
    assert_eq!(a.matched(4, Some(&list)), vec![face.clone()], "matching answers from memory");
    assert_eq!(a.matched(5, Some(&list)), vec![face.clone()], "the failed write is not in memory");

    lock_out(true);
    within("the store is back", || a.call("GET", "/healthcheck", None).status == 200);
    let (second, _) = a.create_face(5, &[&list]);
    let outside = insert_face(&mut db.client(), 6, &list, "psql");
    within("the follower reconnected", || a.matched(6, Some(&list)).len() == 3);
    assert!(a.matched(6, Some(&list)).contains(&outside) && a.matched(6, Some(&list)).contains(&second));
}

#[test]
fn a_slow_load_answers_503_and_a_failed_load_retries() {
    let db = TestDb::create();
    let seed = Instance::start(&db, &[]);
    let list = seed.create_list();
    let (face, _) = seed.create_face(8, &[&list]);
    // Hold the faces table: the next instance's load waits on it, and its
    // statement timeout makes each attempt fail until the table is free.
    let mut holder = db.client();
    let mut lock = holder.transaction().unwrap();
    lock.batch_execute("LOCK TABLE faces IN ACCESS EXCLUSIVE MODE").unwrap();
    let b = Instance::spawn_only(&db, &[("LUNA_MATCHER__STORAGE__DSN", &format!("{}?options=-c%20statement_timeout%3D300", db.dsn()))]);
    b.wait_for(|| b.log().contains("statement timeout"), "a failed load is logged");
    let health = b.call("GET", "/healthcheck", None);
    assert_eq!(health.status, 503, "the port is open, the load is not done");
    assert_eq!(health.json()["errors"][0]["component"], "store");
    let r = b.match_body(8, Some(&list));
    assert_eq!((r.status, r.code()), (503, 31011));
    assert!(b.log().contains("retrying in"), "a failed load says why and retries:\n{}", b.log());
    assert!(health.json()["errors"][0]["error"].as_str().unwrap().contains("load failed"), "{}", health.json());
    lock.rollback().unwrap();
    b.ready();
    assert_eq!(b.matched(8, Some(&list)), vec![face]);
}

#[test]
fn cache_scopes_and_store_positions() {
    let db = TestDb::create();
    let a = Instance::start(&db, &[]);
    let (l1, l2) = (a.create_list(), a.create_list());
    let (f1, _) = a.create_face(1, &[&l1]);
    let (f2, _) = a.create_face(2, &[&l2]);
    let include = format!(r#"["{l1}"]"#);
    let b = Instance::start(&db, &[("LUNA_MATCHER__CACHE__INCLUDE", &include), ("LUNA_MATCHER__CACHE__POSITION_WAIT", "300ms")]);
    let c = Instance::start(&db, &[("LUNA_MATCHER__CACHE__EXCLUDE", &include)]);

    let report = b.cache();
    assert_eq!((report["backend"].as_str(), report["all"].as_bool(), report["ready"].as_bool()), (Some("postgres"), Some(false), Some(true)));
    assert_eq!((report["scope"]["include"].clone(), report["faces"].as_u64(), report["lists"].as_u64()), (json!([l1]), Some(1), Some(1)));
    assert!(report["position"].as_str().unwrap().contains(':'));
    assert_eq!(a.cache()["all"], true);

    assert_eq!(b.matched(1, Some(&l1)), vec![f1.clone()]);
    for (i, list, cached) in [(&b, &l2, &l1), (&c, &l1, &l2)] {
        let r = i.match_body(1, Some(list));
        assert_eq!((r.status, r.code()), (503, 31011));
        assert!(r.json()["detail"].as_str().unwrap().contains(list.as_str()), "{}", r.json());
        let r = i.match_body(1, None);
        assert_eq!((r.status, r.code()), (503, 31011), "no list filter needs an instance that caches every list");
        assert_eq!(i.matched(1, Some(cached)).len(), 1);
    }
    // A face of a list B does not cache is still a reference there, read from the store.
    let q = json!({"references": [{"type": "face", "id": f2}], "candidates": [{"filters": {"origin": "faces", "list_id": l1}}]});
    assert_eq!(b.call("POST", "/1/matcher/faces", Some(&q)).json()[0]["matches"][0]["result"][0]["face"]["face_id"], f1.as_str());
    // Writes through a partial instance go to the shared store.
    let (f3, position) = b.create_face(3, &[&l2]);
    let r = a.call_with("POST", "/1/matcher/faces", &[("Luna-Store-Position", &position)], Some(&match_query(3, Some(&l2))));
    assert_eq!(r.json()[0]["matches"][0]["result"][0]["face"]["face_id"], f3.as_str());
    within("C caches the new face of l2", || c.matched(3, Some(&l2)).contains(&f3));
    assert!(b.cache()["faces"] == 1, "B does not keep a face of a list it does not cache");
    // Attaching it to l1 through A brings it into B.
    assert_eq!(a.call("PATCH", &format!("/1/lists/{l1}/faces"), Some(&json!({"action": "attach", "face_ids": [f3]}))).status, 204);
    within("B caches the face once it is in l1", || b.matched(3, Some(&l1)).contains(&f3));

    // A position not reached in time is 31011; a malformed one is 11004.
    let far = [("Luna-Store-Position", "9000000000:1")];
    let started = Instant::now();
    let r = b.call_with("POST", "/1/matcher/faces", &far, Some(&match_query(1, Some(&l1))));
    assert_eq!((r.status, r.code()), (503, 31011));
    assert!(started.elapsed() >= Duration::from_millis(300), "waited for the position");
    for bad in ["abc", "1:", "-1:2"] {
        let r = b.call_with("POST", "/1/matcher/faces", &[("Luna-Store-Position", bad)], Some(&match_query(1, Some(&l1))));
        assert_eq!((r.status, r.code()), (400, 11004), "{bad}");
    }
    assert_eq!(b.call("POST", "/1/matcher/raw?store_position=x", Some(&json!({"references": [], "candidates": []}))).code(), 11004);
}

#[test]
fn an_instance_behind_the_trimmed_log_reloads() {
    let db = TestDb::create();
    let a = Instance::start(&db, &[("LUNA_MATCHER__STORAGE__CHANGES_RETENTION", "1s")]);
    let b = Instance::start(&db, &[]);
    let list = a.create_list();
    within("B has the list", || b.cache()["lists"] == 1);
    assert_eq!(b.metric("luna_matcher_store_loads"), 1.0);
    let pid = b.pid().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    let faces: Vec<String> = (0..5).map(|i| a.create_face(20 + i, &[&list]).0).collect();
    // Past the retention A trims what B never read.
    let trimmed = within("A trims the change log", || {
        db.client().query_one("SELECT seq FROM change_log_trimmed", &[]).unwrap().get::<_, i64>(0) > 0
            && db.client().query_one("SELECT count(*) FROM change_log", &[]).unwrap().get::<_, i64>(0) == 0
    });
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    within("B reloads and holds every face", || b.cache()["faces"] == 5);
    assert_eq!(b.metric("luna_matcher_store_loads"), 2.0, "trimmed after {trimmed:?}");
    assert!(b.log().contains("fell behind the trimmed change log"), "{}", b.log());
    let mut all = faces.clone();
    all.sort();
    let mut found = b.matched(20, Some(&list));
    found.sort();
    assert_eq!(found, all);
    assert!(b.metric("luna_matcher_store_lag_seconds") < 1.0);
}

#[test]
fn a_plugins_copy_of_a_list_follows_writes_through_another_instance() {
    let db = TestDb::create();
    let a = Instance::start(&db, &[]);
    let list = a.create_list();
    a.create_face(1, &[&list]);
    let mut env = db.env();
    env.push(("LUNA_MATCHER__STORAGE__POLL_INTERVAL".into(), "100ms".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let config =
        format!("[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"list_cache\"]\n[plugins.config.list_cache]\nlists = [\"{list}\"]\ncheck_interval = 0.1\n");
    let b = Service::spawn_with_env(&[("list_cache.py", &shipped_plugin("list_cache.py"))], &config, &env);
    b.ready();
    let held = || b.call("GET", "/list-cache", None).json()["lists"][&list].clone();
    b.wait_for(|| held()["state"] == "held" && held()["faces"] == 1, "B's plugin holds the list");

    // Written through A: B's answer at the write's position has the face, the
    // plugin's copy being stale from the moment B applied the write.
    let (second, position) = a.create_face(2, &[&list]);
    let r = b.call("POST", &format!("/1/matcher/faces?store_position={position}"), Some(&match_query(2, Some(&list))));
    assert_eq!(r.json()[0]["matches"][0]["result"][0]["face"]["face_id"], second.as_str(), "{}", r.json());
    b.wait_for(|| held()["state"] == "held" && held()["faces"] == 2, "B's plugin loads the list again");
    assert_eq!(b.plugin("list_cache")["errors"], 0);
}

//! The candidate store over HTTP, each test on SQLite and on PostgreSQL:
//! lists, faces, bulk import, persistence.

mod common;

use common::*;
use serde_json::json;

on_each_backend! {
    fn lists_and_faces_round_trip(store: Store) {
        let s = TestServer::start_on(store);
        let list = s.create_list(ACCOUNT);
        let r = s.json("GET", &format!("/1/lists/{list}"), None);
        assert_eq!(r.status, 200);
        assert_eq!((r.json()["account_id"].as_str(), r.json()["face_count"].as_u64()), (Some(ACCOUNT), Some(0)));

        let body = json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&sdk(59, &descriptor(1)))},
                          "external_id": "ext-1", "user_data": "alice", "lists": [list, list]});
        let r = s.json("POST", "/1/faces", Some(&body));
        assert_eq!(r.status, 201);
        let face = r.json()["face_id"].as_str().unwrap().to_owned();
        assert_eq!(r.json()["url"], format!("/1/faces/{face}"));

        let f = s.json("GET", &format!("/1/faces/{face}"), None).json();
        assert_eq!((f["external_id"].as_str(), f["user_data"].as_str(), f["descriptor_version"].as_u64()), (Some("ext-1"), Some("alice"), Some(59)));
        assert_eq!(f["lists"], json!([list]));
        assert!(f["create_time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(s.json("GET", &format!("/1/lists/{list}"), None).json()["face_count"], 1);

        // detach, attach
        let patch = |action: &str| s.json("PATCH", &format!("/1/lists/{list}/faces"), Some(&json!({"action": action, "face_ids": [face]})));
        assert_eq!(patch("detach").status, 204);
        assert_eq!(s.json("GET", &format!("/1/lists/{list}"), None).json()["face_count"], 0);
        assert_eq!(patch("attach").status, 204);
        assert_eq!(patch("attach").status, 204, "attaching twice is harmless");
        assert_eq!(s.json("GET", &format!("/1/lists/{list}"), None).json()["face_count"], 1);

        // Deleting the list keeps its faces.
        assert_eq!(s.json("DELETE", &format!("/1/lists/{list}"), None).status, 204);
        assert_eq!(s.json("GET", &format!("/1/lists/{list}"), None).code(), 22001);
        let f = s.json("GET", &format!("/1/faces/{face}"), None);
        assert_eq!((f.status, f.json()["lists"].clone()), (200, json!([])));

        assert_eq!(s.json("DELETE", &format!("/1/faces/{face}"), None).status, 204);
        let r = s.json("GET", &format!("/1/faces/{face}"), None);
        assert_eq!((r.status, r.code()), (404, 22002));
        assert_eq!(s.json("DELETE", &format!("/1/faces/{face}"), None).code(), 22002);
    }

    fn bulk_import_is_all_or_nothing(store: Store) {
        let s = TestServer::start_on(store);
        let list = s.create_list(ACCOUNT);
        let face = |seed: u64, data: String| json!({"account_id": ACCOUNT, "descriptor": {"data": data}, "lists": [list], "user_data": format!("u{seed}")});
        let good: Vec<_> = (0..5).map(|i| face(i, b64(&descriptor(i)))).collect();
        let mut bad = good.clone();
        bad.insert(3, face(99, b64(&descriptor(99)[..100])));
        let r = s.json("POST", "/1/faces/bulk", Some(&json!(bad)));
        assert_eq!((r.status, r.code()), (400, 11013));
        assert!(r.json()["detail"].as_str().unwrap().starts_with("faces[3]"), "{}", r.json());
        assert_eq!(s.json("GET", &format!("/1/lists/{list}"), None).json()["face_count"], 0, "nothing of a failed bulk is stored");

        let r = s.json("POST", "/1/faces/bulk", Some(&json!(good)));
        assert_eq!(r.status, 201);
        let ids = r.json()["face_ids"].as_array().unwrap().clone();
        assert_eq!(ids.len(), 5);
        for (i, id) in ids.iter().enumerate() {
            let f = s.json("GET", &format!("/1/faces/{}", id.as_str().unwrap()), None).json();
            assert_eq!(f["user_data"], format!("u{i}"), "face_ids are in input order");
        }
        assert_eq!(s.json("GET", &format!("/1/lists/{list}"), None).json()["face_count"], 5);
    }

    fn text_a_store_cannot_keep_is_refused(store: Store) {
        let s = TestServer::start_on(store);
        let list = s.create_list(ACCOUNT);
        let bad = [
            ("/1/lists", json!({"account_id": ACCOUNT, "user_data": "a\u{0}b"}), "user_data"),
            ("/1/faces", json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(1))}, "user_data": "\u{0}"}), "user_data"),
            ("/1/faces", json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(1))}, "external_id": "x\u{0}", "lists": [list]}), "external_id"),
        ];
        for (path, body, field) in bad {
            let r = s.json("POST", path, Some(&body));
            assert_eq!((r.status, r.code()), (400, 11002), "{path} {body}");
            assert!(r.json()["detail"].as_str().unwrap().contains(field), "{}", r.json());
        }
        assert_eq!(s.json("GET", &format!("/1/lists/{list}"), None).json()["face_count"], 0);
    }

    fn a_restart_restores_everything(store: Store) {
        let mut s = TestServer::start_on(store);
        let list = s.create_list(ACCOUNT);
        let faces: Vec<String> = (0..20).map(|i| s.create_face(ACCOUNT, &descriptor(i), &[&list], &format!("u{i}"))).collect();
        s.json("DELETE", &format!("/1/faces/{}", faces[0]), None);
        let query = json!({"references": [{"type": "descriptor", "data": b64(&descriptor(7))}],
                           "candidates": [{"filters": {"origin": "faces", "list_id": list}, "limit": 5,
                                           "targets": ["face_id", "similarity", "user_data", "lists", "create_time"]}]});
        let before = s.json("POST", "/1/matcher/faces", Some(&query)).json();
        let face_before = s.json("GET", &format!("/1/faces/{}", faces[7]), None).json();

        s.restart();
        assert_eq!(s.json("GET", &format!("/1/lists/{list}"), None).json()["face_count"], 19);
        assert_eq!(s.json("GET", &format!("/1/faces/{}", faces[0]), None).code(), 22002);
        assert_eq!(s.json("GET", &format!("/1/faces/{}", faces[7]), None).json(), face_before);
        assert_eq!(s.json("POST", "/1/matcher/faces", Some(&query)).json(), before);
    }

    fn an_acknowledged_write_survives_kill_9(store: Store) {
        let dir = tempfile::tempdir().unwrap();
        let db = (store == Store::Postgres).then(TestDb::create);
        let port = free_port();
        let spawn = || {
            std::process::Command::new(env!("CARGO_BIN_EXE_luna-matcher"))
                .args(["--config", "conf/luna-matcher.toml", "--port", &port.to_string(), "--data-dir"])
                .arg(dir.path())
                .env("RUST_LOG", "warn")
                .env("LUNA_MATCHER_PROXY_ACTIVE_PLUGINS", "[]")
                .envs(db.iter().flat_map(TestDb::env))
                .spawn()
                .unwrap()
        };
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let wait_ready = || {
            for _ in 0..400 {
                if std::net::TcpStream::connect(addr).is_ok() && request(addr, "GET", "/healthcheck", &[], b"").status == 200 {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            panic!("the service did not start");
        };
        let mut child = spawn();
        wait_ready();
        let body = json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(5))}});
        let r = request(addr, "POST", "/1/faces", &[("Content-Type", "application/json")], &serde_json::to_vec(&body).unwrap());
        assert_eq!(r.status, 201);
        child.kill().unwrap(); // SIGKILL, right after the response
        child.wait().unwrap();
        let face = r.json()["face_id"].as_str().unwrap().to_owned();

        let mut child = spawn();
        wait_ready();
        let r = request(addr, "GET", &format!("/1/faces/{face}"), &[], b"");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }

    fn a_storage_failure_is_a_500_with_its_code_and_changes_nothing(store: Store) {
        let s = TestServer::start_on(store);
        let list = s.create_list(ACCOUNT);
        let kept = s.create_face(ACCOUNT, &descriptor(1), &[&list], "kept");
        // Break the store under the running service: writes to faces now fail.
        match &s.db {
            None => rusqlite::Connection::open(s.dir.join("luna-matcher.sqlite3")).unwrap().execute_batch("DROP TABLE list_faces; DROP TABLE faces;").unwrap(),
            Some(db) => db.client().batch_execute("ALTER TABLE faces ADD CONSTRAINT broken CHECK (false) NOT VALID").unwrap(),
        }
        let body = json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(2))}, "lists": [list]});
        let r = s.json("POST", "/1/faces", Some(&body));
        assert_eq!((r.status, r.code()), (500, 10002));
        assert_eq!(s.json("GET", &format!("/1/lists/{list}"), None).json()["face_count"], 1, "the index did not take the failed write");
        assert_eq!(s.json("GET", &format!("/1/faces/{kept}"), None).status, 200);
        let q = json!({"references": [{"type": "descriptor", "data": b64(&descriptor(2))}], "candidates": [{"filters": {"origin": "faces", "list_id": list}}]});
        assert_eq!(s.json("POST", "/1/matcher/faces", Some(&q)).json()[0]["matches"][0]["total_found"], 1);
    }
}

/// Writers create faces without pause; the process is killed (SIGKILL) at
/// a moment that moves from cycle to cycle, and restarted on the same data.
/// Every face whose 201 arrived before the kill must be there afterwards.
/// `write` makes one request and answers the faces it acknowledged, or Err
/// when the request got no answer (killed mid-request: not acknowledged).
fn kill_9_cycles(what: &str, write: fn(std::net::SocketAddr, u64) -> Result<Vec<String>, ()>) {
    const CYCLES: u64 = 6;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let spawn = || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_luna-matcher"))
            .args(["--config", "conf/luna-matcher.toml", "--port", &port.to_string(), "--data-dir"])
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .env("LUNA_MATCHER_PROXY_ACTIVE_PLUGINS", "[]")
            .spawn()
            .unwrap();
        for _ in 0..400 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return child;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the service did not start");
    };
    let mut acknowledged: Vec<String> = Vec::new();
    for cycle in 0..CYCLES {
        let mut child = spawn();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    let mut seed = cycle * 1_000_000 + w * 100_000;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        seed += 1;
                        match write(addr, seed) {
                            Ok(faces) => acked.extend(faces),
                            Err(()) => break,
                        }
                    }
                    acked
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(300 + 150 * cycle));
        child.kill().unwrap(); // SIGKILL while writes are in flight
        child.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            acknowledged.extend(w.join().unwrap());
        }
    }
    let mut child = spawn();
    let lost: Vec<&String> = acknowledged.iter().filter(|face| request(addr, "GET", &format!("/1/faces/{face}"), &[], b"").status != 200).collect();
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!("kill -9 ({what}): {CYCLES} cycles, {} acknowledged faces, {} lost", acknowledged.len(), lost.len());
    assert!(acknowledged.len() as u64 > CYCLES * 10, "writes were acknowledged in every cycle: {}", acknowledged.len());
    assert!(lost.is_empty(), "{} of {} acknowledged faces lost: {lost:?}", lost.len(), acknowledged.len());
}

/// A POST to `path` of `body`: the answer when one came, or Err when the
/// service was killed first; any answer but 201 fails the test.
fn created(addr: std::net::SocketAddr, path: &str, body: &serde_json::Value) -> Result<serde_json::Value, ()> {
    match try_request(addr, "POST", path, &[("Content-Type", "application/json")], &serde_json::to_vec(body).unwrap()) {
        Ok(r) if r.status == 201 => Ok(r.json()),
        Ok(r) => panic!("{} {}", r.status, String::from_utf8_lossy(&r.body)),
        Err(_) => Err(()),
    }
}

#[test]
fn no_acknowledged_write_is_lost_across_kill_9_cycles() {
    kill_9_cycles("single faces", |addr, seed| {
        let face = created(addr, "/1/faces", &json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(seed))}}))?;
        Ok(vec![face["face_id"].as_str().unwrap().to_owned()])
    });
}

#[test]
fn no_acknowledged_bulk_write_is_lost_across_kill_9_cycles() {
    kill_9_cycles("bulks of 200", |addr, seed| {
        let faces: Vec<_> = (0..200).map(|i| json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(seed * 1000 + i))}})).collect();
        let answer = created(addr, "/1/faces/bulk", &json!(faces))?;
        Ok(answer["face_ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned()).collect())
    });
}

/// The first format of the embedded store (luna-matcher before store format
/// 1): faces keyed by their id, memberships by face id.
const STORE_FORMAT_0: &str = "
CREATE TABLE lists (list_id BLOB PRIMARY KEY, account_id BLOB NOT NULL, user_data TEXT NOT NULL, create_time INTEGER NOT NULL);
CREATE TABLE faces (face_id BLOB PRIMARY KEY, account_id BLOB NOT NULL, version INTEGER NOT NULL, descriptor BLOB NOT NULL,
                    external_id TEXT, user_data TEXT NOT NULL, create_time INTEGER NOT NULL);
CREATE TABLE list_faces (list_id BLOB NOT NULL REFERENCES lists(list_id) ON DELETE CASCADE,
                         face_id BLOB NOT NULL REFERENCES faces(face_id) ON DELETE CASCADE,
                         PRIMARY KEY (list_id, face_id)) WITHOUT ROWID;
CREATE INDEX list_faces_by_face ON list_faces(face_id);
";

/// A data directory of store format 0 opened by this binary: migrated at
/// start-up, every list, face and membership kept, and the migrated store
/// takes writes that a restart keeps.
#[test]
fn a_store_of_the_first_format_is_migrated_with_everything_in_it() {
    use uuid::Uuid;
    let data = tempfile::tempdir().unwrap();
    let account = Uuid::parse_str(ACCOUNT).unwrap();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let faces: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    // face 0 in a, face 1 in a and b, face 2 in b, face 3 in none.
    let memberships = [(a, 0), (a, 1), (b, 1), (b, 2)];
    {
        let db = rusqlite::Connection::open(data.path().join("luna-matcher.sqlite3")).unwrap();
        db.pragma_update(None, "journal_mode", "WAL").unwrap();
        db.execute_batch(STORE_FORMAT_0).unwrap();
        for (list, name) in [(a, "a"), (b, "b")] {
            db.execute("INSERT INTO lists VALUES (?1, ?2, ?3, 1700000000000000)", rusqlite::params![list, account, name]).unwrap();
        }
        for (i, face) in faces.iter().enumerate() {
            let sql = "INSERT INTO faces VALUES (?1, ?2, 62, ?3, ?4, ?5, ?6)";
            db.execute(sql, rusqlite::params![face, account, descriptor(i as u64), format!("ext-{i}"), format!("u{i}"), 1_700_000_000_000_000i64 + i as i64])
                .unwrap();
        }
        for (list, i) in memberships {
            db.execute("INSERT INTO list_faces VALUES (?1, ?2)", rusqlite::params![list, faces[i]]).unwrap();
        }
    }
    let no_plugins = [("LUNA_MATCHER_PROXY_ACTIVE_PLUGINS", "[]")];
    let mut s = Service::launch(&[], "", &no_plugins, Some(data.path()));
    s.ready();
    assert!(s.log().contains("migrated from format 0 to 1"), "{}", s.log());
    let lists_of = |s: &Service, face: &Uuid| {
        let f = s.call("GET", &format!("/1/faces/{face}"), None);
        assert_eq!(f.status, 200, "{face}: {}", String::from_utf8_lossy(&f.body));
        let mut lists: Vec<String> = f.json()["lists"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_owned()).collect();
        lists.sort();
        lists
    };
    let sorted = |ids: &[Uuid]| {
        let mut ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        ids.sort();
        ids
    };
    let count = |s: &Service, list: &Uuid| s.call("GET", &format!("/1/lists/{list}"), None).json()["face_count"].as_u64().unwrap();
    for (i, face) in faces.iter().enumerate() {
        let f = s.call("GET", &format!("/1/faces/{face}"), None).json();
        assert_eq!((f["external_id"].as_str(), f["user_data"].as_str()), (Some(format!("ext-{i}").as_str()), Some(format!("u{i}").as_str())));
        assert_eq!(f["create_time"], format!("2023-11-14T22:13:20.00000{i}Z"));
    }
    assert_eq!(
        [lists_of(&s, &faces[0]), lists_of(&s, &faces[1]), lists_of(&s, &faces[2]), lists_of(&s, &faces[3])],
        [sorted(&[a]), sorted(&[a, b]), sorted(&[b]), vec![]]
    );
    assert_eq!((count(&s, &a), count(&s, &b)), (2, 2));
    let query = |list: &Uuid, seed: u64| {
        json!({"references": [{"type": "descriptor", "data": b64(&descriptor(seed))}],
               "candidates": [{"filters": {"origin": "faces", "list_id": list}, "limit": 1, "targets": ["face_id", "similarity"]}]})
    };
    let best = |s: &Service, list: &Uuid, seed: u64| s.call("POST", "/1/matcher/faces", Some(&query(list, seed))).json()[0]["matches"][0]["result"][0].clone();
    assert_eq!(best(&s, &b, 2), json!({"face": {"face_id": faces[2]}, "similarity": 1.0}), "descriptors came through");

    // Writes on migrated faces: delete, detach, attach; and a new face.
    assert_eq!(s.call("DELETE", &format!("/1/faces/{}", faces[1]), None).status, 204);
    let patch = |list: &Uuid, action: &str, face: &Uuid| {
        s.call("PATCH", &format!("/1/lists/{list}/faces"), Some(&json!({"action": action, "face_ids": [face]}))).status
    };
    assert_eq!((patch(&a, "detach", &faces[0]), patch(&b, "attach", &faces[3])), (204, 204));
    let new = s.call("POST", "/1/faces/bulk", Some(&json!([{"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(9))}, "lists": [a]}])));
    assert_eq!(new.status, 201, "{}", String::from_utf8_lossy(&new.body));
    let new: Uuid = new.json()["face_ids"][0].as_str().unwrap().parse().unwrap();
    assert_eq!(s.terminate().code(), Some(0));

    let db = rusqlite::Connection::open(data.path().join("luna-matcher.sqlite3")).unwrap();
    assert_eq!(db.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0)).unwrap(), 1);
    let rows: i64 = db.query_row("SELECT count(*) FROM list_faces", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 3, "the deleted face took its two memberships along");
    drop(db);
    let s = Service::launch(&[], "", &no_plugins, Some(data.path()));
    s.ready();
    assert!(!s.log().contains("migrated"), "a migrated store is not migrated again: {}", s.log());
    assert_eq!(s.call("GET", &format!("/1/faces/{}", faces[1]), None).code(), 22002);
    assert_eq!(
        [lists_of(&s, &faces[0]), lists_of(&s, &faces[2]), lists_of(&s, &faces[3]), lists_of(&s, &new)],
        [vec![], sorted(&[b]), sorted(&[b]), sorted(&[a])]
    );
    assert_eq!((count(&s, &a), count(&s, &b)), (1, 2));
    assert_eq!(best(&s, &b, 3), json!({"face": {"face_id": faces[3]}, "similarity": 1.0}));
    assert_eq!(best(&s, &a, 9), json!({"face": {"face_id": new}, "similarity": 1.0}));
}

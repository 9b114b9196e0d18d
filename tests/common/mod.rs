//! The test harness: the real app on a real socket in this process, with its
//! store in a SQLite file in a temporary directory or in a PostgreSQL
//! database of its own on the machine's server, and a plain HTTP/1.1 client.
#![allow(dead_code)] // each test binary uses its own part of the harness

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use base64::Engine;
use luna_matcher::config::{Backend, Config};
use serde_json::{json, Value};

pub const ACCOUNT: &str = "6d3f2a5e-1111-4222-8333-444455556666";
pub const OTHER_ACCOUNT: &str = "0f0f0f0f-2222-4333-8444-555566667777";

/// The machine's PostgreSQL (trust authentication on loopback), without a
/// database name; `LUNA_TEST_POSTGRES` overrides it.
pub fn postgres_server() -> String {
    std::env::var("LUNA_TEST_POSTGRES").unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432".into())
}

/// A database of its own, `luna_test_<random>`, dropped with the value.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub fn create() -> TestDb {
        let name = format!("luna_test_{}", uuid::Uuid::new_v4().simple());
        admin().batch_execute(&format!("CREATE DATABASE {name}")).unwrap_or_else(|e| panic!("cannot create {name} on {}: {e}", postgres_server()));
        TestDb { name }
    }

    pub fn dsn(&self) -> String {
        format!("{}/{}", postgres_server(), self.name)
    }

    /// A client of this database, as psql would be: outside the service.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.dsn(), postgres::NoTls).unwrap()
    }

    /// The environment that points the binary at this database.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("LUNA_MATCHER__STORAGE__BACKEND".into(), "postgres".into()), ("LUNA_MATCHER__STORAGE__DSN".into(), self.dsn())]
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Err(e) = admin().batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)) {
            eprintln!("cannot drop {}: {e}", self.name);
        }
    }
}

/// A client of the server's `postgres` database, for what a test does to whole databases.
pub fn admin() -> postgres::Client {
    postgres::Client::connect(&format!("{}/postgres", postgres_server()), postgres::NoTls).unwrap()
}

/// Each test body once per store backend: `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! on_each_backend {
    ($(fn $name:ident($backend:ident: Store) $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($backend: Store) $body

            #[test]
            fn sqlite() {
                run(Store::Sqlite)
            }

            #[test]
            fn postgres() {
                run(Store::Postgres)
            }
        }
    )*};
}

/// Which store a test server keeps its candidates in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Sqlite,
    Postgres,
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    /// The PostgreSQL database, for the postgres backend.
    pub db: Option<Arc<TestDb>>,
    config: Config,
    _tmp: Option<tempfile::TempDir>,
    handle: Option<ServerHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The error code of an error body.
    pub fn code(&self) -> u64 {
        self.json()["error_code"].as_u64().unwrap_or_else(|| panic!("no error_code in {}", String::from_utf8_lossy(&self.body)))
    }
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(|_| {})
    }

    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_with_on(Store::Sqlite, tweak)
    }

    pub fn start_on(store: Store) -> TestServer {
        Self::start_with_on(store, |_| {})
    }

    /// A server on a fresh store: a SQLite file in a temporary directory, or a
    /// database of its own.
    pub fn start_with_on(store: Store, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let db = (store == Store::Postgres).then(|| Arc::new(TestDb::create()));
        let mut s = Self::start_in_db(tmp.path(), db, tweak);
        s._tmp = Some(tmp);
        s
    }

    /// A SQLite server on an existing data directory, as after a restart.
    pub fn start_in(dir: &Path, tweak: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_in_db(dir, None, tweak)
    }

    fn start_in_db(dir: &Path, db: Option<Arc<TestDb>>, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::default();
        config.storage.data_dir = dir.to_path_buf();
        config.server.workers = 2;
        config.matching.threads = 2;
        if let Some(db) = &db {
            config.storage.backend = Backend::Postgres;
            config.storage.dsn = db.dsn();
            config.storage.pool_size = 4;
        }
        tweak(&mut config);
        let mut s = TestServer { addr: "127.0.0.1:0".parse().unwrap(), dir: dir.to_path_buf(), db, config, _tmp: None, handle: None, thread: None };
        s.launch();
        s
    }

    fn launch(&mut self) {
        let config = self.config.clone();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        self.addr = listener.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let core = luna_matcher::server::core(&config).expect("store");
                let state = luna_matcher::server::state(&config, core, None);
                let server = luna_matcher::server::serve(&config, state, listener).expect("serve");
                tx.send(server.handle()).unwrap();
                server.await.unwrap();
            })
        });
        self.handle = Some(rx.recv().expect("server started"));
        self.thread = Some(thread);
        // A shared store loads in the background: wait until it can match.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.json("GET", "/healthcheck", None).status != 200 {
            assert!(std::time::Instant::now() < until, "the server did not become ready");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Stop and start again on the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Stop gracefully and wait until the server has let go of its store.
    pub fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            actix_rt::System::new().block_on(h.stop(true));
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    pub fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        request(self.addr, method, path, headers, body)
    }

    /// A JSON request; `None` sends no body.
    pub fn json(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        match body {
            Some(b) => self.call(method, path, &[("Content-Type", "application/json")], &serde_json::to_vec(b).unwrap()),
            None => self.call(method, path, &[], b""),
        }
    }

    pub fn create_list(&self, account: &str) -> String {
        let r = self.json("POST", "/1/lists", Some(&serde_json::json!({"account_id": account})));
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        r.json()["list_id"].as_str().unwrap().to_owned()
    }

    pub fn create_face(&self, account: &str, descriptor: &[u8], lists: &[&str], user_data: &str) -> String {
        let body = serde_json::json!({"account_id": account, "descriptor": {"data": b64(descriptor)}, "lists": lists, "user_data": user_data});
        let r = self.json("POST", "/1/faces", Some(&body));
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        r.json()["face_id"].as_str().unwrap().to_owned()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One HTTP/1.1 request on its own connection.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    try_request(addr, method, path, headers, body).unwrap()
}

/// Whether `/healthcheck` at `addr` answers 200 (a refused or dropped
/// connection is not healthy yet).
pub fn healthy(addr: SocketAddr) -> bool {
    try_request(addr, "GET", "/healthcheck", &[], b"").is_ok_and(|r| r.status == 200)
}

/// `request`, with a connection that fails (refused, reset, closed before the answer) as an error.
pub fn try_request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    // The server may answer (413) before reading a large body; a write error then is expected.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| std::io::Error::other("no complete response head"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    Ok(Response { status, headers, body: raw[split + 4..].to_vec() })
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A deterministic 512 x u8 descriptor.
pub fn descriptor(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..512)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// An SDK container around a payload.
pub fn sdk(version: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = b"dp\0\0".to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The similarity docs/api.md defines for two u8 descriptors without calibration.
pub fn u8_similarity(a: &[u8], b: &[u8]) -> f64 {
    let c = |v: &[u8]| v.iter().map(|&q| q as i64 - 128).collect::<Vec<_>>();
    let (a, b) = (c(a), c(b));
    let dot: i64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let na: i64 = a.iter().map(|x| x * x).sum();
    let nb: i64 = b.iter().map(|x| x * x).sum();
    if na == 0 || nb == 0 {
        return 0.0;
    }
    (dot as f64 / ((na as f64) * (nb as f64)).sqrt()).clamp(0.0, 1.0)
}

/// A port nothing listens on, never the same twice in one test binary: a
/// service of a test that just ended may still hold a port handed out
/// before, and another test's service would then fail to bind it.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<std::collections::BTreeSet<u16>> = Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if GIVEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return port;
        }
    }
}

/// `reference` with its first `keep` elements kept and the rest from `noise`:
/// the larger `keep`, the more similar.
pub fn blend(reference: &[u8], noise: &[u8], keep: usize) -> Vec<u8> {
    reference[..keep].iter().chain(&noise[keep..]).copied().collect()
}

/// The release binary's sibling: the service as a user runs it, in its own
/// process, with a config file written for the test.
pub struct Service {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Service {
    /// Write `plugins` (file name, source) into a fresh plugins directory and
    /// start the binary with `config` (TOML) appended to a base config.
    pub fn spawn(plugins: &[(&str, &str)], config: &str) -> Service {
        Self::spawn_with_env(plugins, config, &[])
    }

    pub fn spawn_with_env(plugins: &[(&str, &str)], config: &str, env: &[(&str, &str)]) -> Service {
        Self::spawn_on("127.0.0.1".parse().unwrap(), plugins, config, env)
    }

    /// The service listening on `host` (`--host`).
    pub fn spawn_on(host: std::net::IpAddr, plugins: &[(&str, &str)], config: &str, env: &[(&str, &str)]) -> Service {
        let s = Self::launch_on(host, plugins, config, env, None);
        s.wait_for(|| std::net::TcpStream::connect(s.addr).is_ok(), "the service listens");
        s
    }

    /// Start the binary without waiting for it to listen; `data_dir` defaults
    /// to `data` in the service's own directory.
    pub fn launch(plugins: &[(&str, &str)], config: &str, env: &[(&str, &str)], data_dir: Option<&Path>) -> Service {
        Self::launch_on("127.0.0.1".parse().unwrap(), plugins, config, env, data_dir)
    }

    fn launch_on(host: std::net::IpAddr, plugins: &[(&str, &str)], config: &str, env: &[(&str, &str)], data_dir: Option<&Path>) -> Service {
        let dir = tempfile::tempdir().unwrap();
        for (name, source) in plugins {
            let path = dir.path().join("plugins").join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, source).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        let port = free_port();
        let directory = format!("[plugins]\ndirectory = \"{}\"", dir.path().join("plugins").display());
        let toml = if config.contains("[plugins]") { config.replacen("[plugins]", &directory, 1) } else { format!("{config}\n{directory}\n") };
        std::fs::write(dir.path().join("config.toml"), toml).unwrap();
        let log = std::fs::File::create(dir.path().join("service.log")).unwrap();
        let data_dir = data_dir.map_or_else(|| dir.path().join("data"), Path::to_path_buf);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_luna-matcher"));
        cmd.arg("--config").arg(dir.path().join("config.toml")).args(["--host", &host.to_string(), "--port", &port.to_string(), "--data-dir"]).arg(data_dir);
        cmd.env("RUST_LOG", "info").stdout(log.try_clone().unwrap()).stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Service { addr: std::net::SocketAddr::new(host, port), dir, child: Some(child) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Send a signal by name (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, name: &str) {
        assert!(std::process::Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().unwrap().success());
    }

    /// The exit status, once the process has ended within `limit`.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let until = std::time::Instant::now() + limit;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() > until {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The process's peak resident memory (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).expect("VmHWM")
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        match body {
            Some(b) => request(self.addr, method, path, &[("Content-Type", "application/json")], &serde_json::to_vec(b).unwrap()),
            None => request(self.addr, method, path, &[], b""),
        }
    }

    /// Wait until the service is [`healthy`] (the timeout's panic shows its log).
    pub fn ready(&self) {
        self.wait_for(|| healthy(self.addr), "the service is ready");
    }

    /// The `/1/plugins` entry of one plugin.
    pub fn plugin(&self, name: &str) -> Value {
        let all = self.call("GET", "/1/plugins", None).json();
        all.as_array().unwrap().iter().find(|p| p["name"] == name).cloned().unwrap_or_else(|| panic!("no plugin {name} in {all}"))
    }

    /// Poll `check` for up to 20 seconds.
    pub fn wait_for(&self, check: impl Fn() -> bool, what: &str) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < until {
            if check() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("timed out waiting until {what}; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }

    /// SIGTERM, and the exit status once the service has stopped.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        match self.wait_exit(std::time::Duration::from_secs(30)) {
            Some(status) => status,
            None => panic!("the service did not stop on SIGTERM; log:\n{}", self.log()),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A plugin shipped in the repository's plugins/ directory.
pub fn shipped_plugin(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins").join(name)).unwrap()
}

/// The Python with the example plugins' packages: the virtual environment
/// `scripts/test` exports as VIRTUAL_ENV, else `python3`.
pub fn plugins_python() -> String {
    std::env::var("VIRTUAL_ENV").map_or_else(|_| "python3".into(), |venv| format!("{venv}/bin/python"))
}

/// A minimal HTTP server (InfluxDB's write API as far as the monitoring
/// plugins need it): answers 204 and keeps every request body it receives.
pub fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/api/v2/write?bucket=test&precision=ns", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let kept = kept.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut length = 0;
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    kept.lock().unwrap().push(String::from_utf8(body).unwrap());
                    (&stream).write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n").unwrap();
                }
            });
        }
    });
    (url, bodies)
}

/// One luna-matcher process of a role (matcher unless told) on a test database.
pub struct Instance {
    pub addr: SocketAddr,
    role: &'static str,
    env: Vec<(String, String)>,
    log: tempfile::NamedTempFile,
    child: Option<Child>,
}

impl Instance {
    /// Start on `db` with extra environment, and wait until it is ready.
    pub fn start(db: &TestDb, env: &[(&str, &str)]) -> Instance {
        let i = Self::spawn_only(db, env);
        i.ready();
        i
    }

    /// Start without waiting for the load.
    pub fn spawn_only(db: &TestDb, env: &[(&str, &str)]) -> Instance {
        Self::spawn_as("matcher", db, env)
    }

    /// Start as `role` without waiting until it is ready.
    pub fn spawn_as(role: &'static str, db: &TestDb, env: &[(&str, &str)]) -> Instance {
        let mut all = db.env();
        all.push(("LUNA_MATCHER__STORAGE__POLL_INTERVAL".into(), "100ms".into()));
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut i = Instance { addr, role, env: all, log: tempfile::NamedTempFile::new().unwrap(), child: None };
        i.spawn();
        i.wait_for(|| std::net::TcpStream::connect(i.addr).is_ok(), "the port is open");
        i
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_luna-matcher"));
        cmd.args(["--role", self.role, "--port", &self.addr.port().to_string(), "--data-dir"])
            .arg(std::env::temp_dir())
            .env("RUST_LOG", "info")
            .env("LUNA_PYTHON_MATCHER_ACTIVE_PLUGINS", "[]")
            .env("LUNA_MATCHER_PROXY_ACTIVE_PLUGINS", "[]")
            .envs(self.env.iter().cloned());
        cmd
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().append(true).open(self.log.path()).unwrap();
        self.child = Some(self.command().stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap());
    }

    /// The process id while it runs.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        self.call_with(method, path, &[], body)
    }

    pub fn call_with(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Response {
        let mut h = headers.to_vec();
        h.push(("Content-Type", "application/json"));
        request(self.addr, method, path, &h, &body.map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default())
    }

    pub fn ready(&self) {
        self.wait_for(|| healthy(self.addr), "the instance is ready");
    }

    pub fn wait_for(&self, check: impl Fn() -> bool, what: &str) {
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting until {what}; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    pub fn create_list(&self) -> String {
        let r = self.call("POST", "/1/lists", Some(&json!({"account_id": ACCOUNT})));
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        r.json()["list_id"].as_str().unwrap().to_owned()
    }

    /// A face of `descriptor(seed)`; its id and the store position of the write.
    pub fn create_face(&self, seed: u64, lists: &[&str]) -> (String, String) {
        let r = self.call("POST", "/1/faces", Some(&json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(seed))}, "lists": lists})));
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        (r.json()["face_id"].as_str().unwrap().to_owned(), r.header("Luna-Store-Position").expect("a write answers its position").to_owned())
    }

    /// Ids of the faces a match of `descriptor(seed)` finds (best 100), on `list` or on every face.
    pub fn matched(&self, seed: u64, list: Option<&str>) -> Vec<String> {
        let body = self.match_body(seed, list);
        assert_eq!(body.status, 200, "{}", String::from_utf8_lossy(&body.body));
        let mut ids: Vec<String> =
            body.json()[0]["matches"][0]["result"].as_array().unwrap().iter().map(|m| m["face"]["face_id"].as_str().unwrap().to_owned()).collect();
        ids.sort();
        ids
    }

    pub fn match_body(&self, seed: u64, list: Option<&str>) -> Response {
        self.call("POST", "/1/matcher/faces", Some(&match_query(seed, list)))
    }

    pub fn cache(&self) -> Value {
        self.call("GET", "/1/matcher/cache", None).json()
    }

    pub fn metric(&self, name: &str) -> f64 {
        let text = String::from_utf8(self.call("GET", "/metrics", None).body).unwrap();
        let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn match_query(seed: u64, list: Option<&str>) -> Value {
    let mut filters = json!({"origin": "faces"});
    if let Some(l) = list {
        filters["list_id"] = json!(l);
    }
    json!({"references": [{"type": "descriptor", "data": b64(&descriptor(seed))}],
           "candidates": [{"filters": filters, "limit": 100, "targets": ["face_id", "user_data", "lists"]}]})
}

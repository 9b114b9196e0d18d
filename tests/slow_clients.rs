//! Clients that trickle their requests a byte at a time cannot hold the
//! service: bodies have a deadline, heads have a deadline, and open
//! connections are capped below the descriptor limit. The real binary, real
//! sockets on loopback.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const NO_PLUGINS: &[(&str, &str)] = &[("LUNA_MATCHER_PROXY_ACTIVE_PLUGINS", "[]")];

/// `count` connections that send `start` and then one more byte every 500 ms
/// until stopped.
struct Tricklers {
    streams: Vec<TcpStream>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tricklers {
    fn open(addr: SocketAddr, count: usize, start: &str) -> Tricklers {
        let streams: Vec<TcpStream> = (0..count)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(start.as_bytes()).unwrap();
                s
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers: Vec<TcpStream> = streams.iter().map(|s| s.try_clone().unwrap()).collect();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                for w in &mut writers {
                    // Refused once the service has answered and closed: expected.
                    let _ = w.write_all(b" ");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Tricklers { streams, stop, thread: Some(thread) }
    }

    /// How many have been answered (or closed) so far, without waiting.
    fn answered(&self) -> usize {
        self.streams
            .iter()
            .filter(|s| {
                s.set_nonblocking(true).unwrap();
                let mut b = [0u8; 1];
                let got = s.peek(&mut b).is_ok();
                s.set_nonblocking(false).unwrap();
                got
            })
            .count()
    }
}

impl Drop for Tricklers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const SLOW_BODY: &str = "POST /1/faces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{";

#[test]
fn trickling_bodies_do_not_keep_others_waiting_and_get_408() {
    let s = Service::launch(&[], "[server]\nbody_timeout = \"8s\"\n", NO_PLUGINS, None);
    s.ready();
    let list = s.call("POST", "/1/lists", Some(&json!({"account_id": ACCOUNT}))).json()["list_id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let tricklers = Tricklers::open(s.addr, 400, SLOW_BODY);

    // Normal requests are served while all of them are still connected and unanswered.
    for i in 0..20 {
        let body = json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&descriptor(i))}, "lists": [list]});
        assert_eq!(s.call("POST", "/1/faces", Some(&body)).status, 201);
        let q = json!({"references": [{"type": "descriptor", "data": b64(&descriptor(i))}], "candidates": [{"filters": {"origin": "faces", "list_id": list}}]});
        assert_eq!(s.call("POST", "/1/matcher/faces", Some(&q)).json()[0]["matches"][0]["result"][0]["similarity"], 1.0);
        assert_eq!(s.call("GET", "/healthcheck", None).status, 200);
    }
    assert_eq!(tricklers.answered(), 0, "the slow clients were still waiting while the others were served");

    // Past the deadline each of them is answered 408 with its code, and closed.
    for mut stream in tricklers.streams.iter().map(|s| s.try_clone().unwrap()) {
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 408") && text.contains("\"error_code\":11027"), "{text}");
    }
    assert!(started.elapsed() >= Duration::from_secs(8));
    assert_eq!(s.call("GET", "/1/version", None).status, 200);
}

#[test]
fn trickling_heads_are_closed_at_the_head_deadline() {
    let s = Service::launch(&[], "[server]\nhead_timeout = \"1s\"\n", NO_PLUGINS, None);
    s.ready();
    let tricklers = Tricklers::open(s.addr, 200, "GET /1/version HTTP/1.1\r\nX-Slow: ");
    assert_eq!(s.call("GET", "/1/version", None).status, 200);
    for mut stream in tricklers.streams.iter().map(|s| s.try_clone().unwrap()) {
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut raw = Vec::new();
        // actix-http answers a head past its deadline with a bare 408 and closes.
        let _ = stream.read_to_end(&mut raw);
        assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&raw));
    }
}

fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

#[test]
fn open_connections_are_capped() {
    const CAP: usize = 40;
    let s = Service::launch(&[], &format!("[server]\nworkers = 2\nbody_timeout = \"4s\"\nmax_connections = {CAP}\n"), NO_PLUGINS, None);
    s.ready();
    let baseline = open_sockets(s.pid());
    let tricklers = Tricklers::open(s.addr, 150, SLOW_BODY);
    std::thread::sleep(Duration::from_millis(1500));
    let held = open_sockets(s.pid()) - baseline;
    assert!(held <= CAP, "{held} client sockets open with max_connections = {CAP}");
    assert!(held >= CAP / 2, "the cap was reached: {held}");
    // Those over the cap wait in the listen backlog, not on descriptors; as the
    // body deadline frees connections, the rest are taken, and answered.
    let mut answered = 0;
    for mut stream in tricklers.streams.iter().map(|s| s.try_clone().unwrap()) {
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        if raw.starts_with(b"HTTP/1.1 408") {
            answered += 1;
        }
    }
    assert_eq!(answered, 150);
    assert_eq!(s.call("GET", "/1/version", None).status, 200);
}

//! The data-source plugins (`redis_faces`, `rabbitmq_faces`) run by the real
//! binary against the machine's Redis (127.0.0.1:6379) and RabbitMQ
//! (127.0.0.1:5672, guest/guest): faces from good messages, dead letters for
//! poison ones, retries while the service fails, reconnection.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use common::*;
use serde_json::{json, Value};

/// A RESP reply.
#[derive(Debug, Clone, PartialEq)]
enum Resp {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    fn int(&self) -> i64 {
        match self {
            Resp::Int(n) => *n,
            other => panic!("not an integer: {other:?}"),
        }
    }

    fn items(&self) -> &[Resp] {
        match self {
            Resp::Array(Some(items)) => items,
            other => panic!("not an array: {other:?}"),
        }
    }

    fn text(&self) -> String {
        match self {
            Resp::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Resp::Status(s) => s.clone(),
            other => panic!("not a string: {other:?}"),
        }
    }
}

/// One connection to the machine's Redis.
struct Redis(BufReader<TcpStream>);

impl Redis {
    fn connect() -> Redis {
        Redis(BufReader::new(TcpStream::connect("127.0.0.1:6379").expect("Redis on 127.0.0.1:6379")))
    }

    fn raw(&mut self, args: &[&[u8]]) -> Resp {
        let mut cmd = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            cmd.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            cmd.extend_from_slice(a);
            cmd.extend_from_slice(b"\r\n");
        }
        self.0.get_mut().write_all(&cmd).unwrap();
        self.reply()
    }

    fn cmd(&mut self, args: &[&str]) -> Resp {
        self.raw(&args.iter().map(|a| a.as_bytes()).collect::<Vec<_>>())
    }

    fn reply(&mut self) -> Resp {
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        let (kind, rest) = line.trim_end().split_at(1);
        match kind {
            "+" => Resp::Status(rest.to_owned()),
            "-" => Resp::Error(rest.to_owned()),
            ":" => Resp::Int(rest.parse().unwrap()),
            "$" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    return Resp::Bulk(None);
                }
                let mut data = vec![0; n as usize + 2];
                self.0.read_exact(&mut data).unwrap();
                data.truncate(n as usize);
                Resp::Bulk(Some(data))
            }
            "*" => {
                let n: i64 = rest.parse().unwrap();
                Resp::Array((n >= 0).then(|| (0..n).map(|_| self.reply()).collect()))
            }
            _ => panic!("not RESP: {line:?}"),
        }
    }

    /// XADD with an automatic id; returns the id (or QUEUED in a transaction).
    fn add(&mut self, stream: &str, fields: &[(&str, &[u8])]) -> String {
        let mut args: Vec<&[u8]> = vec![b"XADD", stream.as_bytes(), b"*"];
        for (k, v) in fields {
            args.extend([k.as_bytes(), *v]);
        }
        self.raw(&args).text()
    }

    /// Every entry of a stream: (id, field -> value).
    fn entries(&mut self, stream: &str) -> Vec<(String, HashMap<String, String>)> {
        let all = self.cmd(&["XRANGE", stream, "-", "+"]);
        all.items()
            .iter()
            .map(|e| {
                let fields = e.items()[1].items().chunks(2).map(|kv| (kv[0].text(), kv[1].text())).collect();
                (e.items()[0].text(), fields)
            })
            .collect()
    }

    /// Messages of the group read but not acknowledged.
    fn pending(&mut self, stream: &str, group: &str) -> i64 {
        self.cmd(&["XPENDING", stream, group]).items()[0].int()
    }
}

/// A stream name of its own, deleted with its dead-letter stream at the end.
struct Stream(String);

impl Stream {
    fn new() -> Stream {
        Stream(format!("luna-test:{}", uuid::Uuid::new_v4()))
    }

    fn dead(&self) -> String {
        format!("{}:dead", self.0)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        Redis::connect().cmd(&["DEL", &self.0, &self.dead()]);
    }
}

fn redis_config(stream: &str, extra: &str) -> String {
    format!(
        "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"redis_faces\"]\n[plugins.config.redis_faces]\nurl = \"redis://127.0.0.1:6379/0\"\nstream = \"{stream}\"\naccount_id = \"{ACCOUNT}\"\n{extra}"
    )
}

fn spawn_redis_faces(config: &str) -> Service {
    Service::spawn(&[("redis_faces.py", &shipped_plugin("redis_faces.py")), ("face_intake.py", &shipped_plugin("face_intake.py"))], config)
}

fn create_list(s: &Service) -> String {
    s.call("POST", "/1/lists", Some(&json!({"account_id": ACCOUNT}))).json()["list_id"].as_str().unwrap().to_owned()
}

/// The user_data of every face in a list.
fn user_data_in(s: &Service, list: &str) -> BTreeSet<String> {
    let probe = b64(&descriptor(1));
    let q = json!({"references": [{"type": "descriptor", "data": probe}],
                   "candidates": [{"filters": {"origin": "faces", "list_id": list}, "targets": ["user_data"], "limit": 100}]});
    let found = s.call("POST", "/1/matcher/faces", Some(&q)).json();
    found[0]["matches"][0]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{found}"))
        .iter()
        .map(|r| r["face"]["user_data"].as_str().unwrap().to_owned())
        .collect()
}

/// A stream entry's fields.
type Fields = Vec<(&'static str, Vec<u8>)>;

fn assert_running_without_restarts(s: &Service, name: &str) {
    let p = s.plugin(name);
    assert_eq!((p["state"].as_str(), p["restarts"].as_u64()), (Some("running"), Some(0)), "{p}");
}

#[test]
fn redis_stream_creates_faces() {
    let stream = Stream::new();
    let s = spawn_redis_faces(&redis_config(&stream.0, ""));
    s.ready();
    s.wait_for(|| s.call("GET", "/redis-faces/stats", None).json()["connected"] == true, "the plugin reads the stream");
    let list = create_list(&s);
    let d = b64(&descriptor(11));
    let mut r = Redis::connect();
    r.add(&stream.0, &[("descriptor", d.as_bytes()), ("user_data", b"from redis"), ("external_id", b"cam-7"), ("list_id", list.as_bytes())]);
    r.add(&stream.0, &[("descriptor", b"not base64!")]);
    s.wait_for(|| s.call("GET", "/redis-faces/stats", None).json()["rejected"] == 1, "both messages are handled");
    assert_eq!(s.call("GET", "/redis-faces/stats", None).json()["created"], 1);
    let q = json!({"references": [{"type": "descriptor", "data": d}],
                   "candidates": [{"filters": {"origin": "faces", "list_id": list}, "targets": ["face_id", "similarity", "user_data", "external_id"]}]});
    let found = s.call("POST", "/1/matcher/faces", Some(&q)).json();
    let hit = &found[0]["matches"][0]["result"][0];
    assert_eq!(
        (hit["face"]["user_data"].as_str(), hit["face"]["external_id"].as_str(), hit["similarity"].as_f64()),
        (Some("from redis"), Some("cam-7"), Some(1.0))
    );
    assert_eq!(r.pending(&stream.0, "luna-matcher"), 0, "every message is acknowledged");

    // The server drops the plugin's connection; what is added meanwhile is not lost.
    let clients = r.cmd(&["CLIENT", "LIST"]).text();
    let name = format!("name=luna-matcher-redis_faces-{}", stream.0);
    let line = clients.lines().find(|l| l.split(' ').any(|f| f == name)).unwrap_or_else(|| panic!("{clients}"));
    let id = line.split(' ').find_map(|f| f.strip_prefix("id=")).unwrap();
    assert_eq!(r.cmd(&["CLIENT", "KILL", "ID", id]).int(), 1);
    r.add(&stream.0, &[("descriptor", b64(&descriptor(12)).as_bytes()), ("user_data", b"after the drop"), ("list_id", list.as_bytes())]);
    s.wait_for(|| s.call("GET", "/redis-faces/stats", None).json()["created"] == 2, "the message added after the drop is ingested");
    assert!(user_data_in(&s, &list).contains("after the drop"));

    // The stream is deleted under the consumer: the plugin creates its group again and goes on.
    r.cmd(&["DEL", &stream.0]);
    r.add(&stream.0, &[("descriptor", b64(&descriptor(13)).as_bytes()), ("user_data", b"new stream"), ("list_id", list.as_bytes())]);
    s.wait_for(|| s.call("GET", "/redis-faces/stats", None).json()["created"] == 3, "a message in the new stream is ingested");
    assert!(user_data_in(&s, &list).contains("new stream"));
    assert_eq!(r.pending(&stream.0, "luna-matcher"), 0);
    assert_running_without_restarts(&s, "redis_faces");
}

#[test]
fn redis_poison_messages_go_to_the_dead_letter_stream() {
    let stream = Stream::new();
    let s = spawn_redis_faces(&redis_config(&stream.0, ""));
    s.ready();
    s.wait_for(|| s.call("GET", "/redis-faces/stats", None).json()["connected"] == true, "the plugin reads the stream");
    let list = create_list(&s);
    let good = |n: u64| -> Fields { vec![("descriptor", b64(&descriptor(100 + n)).into()), ("list_id", list.clone().into())] };
    let unknown_list = uuid::Uuid::new_v4().to_string();
    let short = b64(&descriptor(7)[..100]);
    let d = b64(&descriptor(8));
    // (user_data, fields, what the dead letter's error says)
    let bad: [(&str, Fields, &str); 6] = [
        ("bad-version", vec![("descriptor", d.clone().into()), ("descriptor_version", b"abc".to_vec())], "descriptor_version is not an integer: 'abc'"),
        ("bad-base64", vec![("descriptor", b"not base64!".to_vec())], "11010"),
        ("unknown-list", vec![("descriptor", d.clone().into()), ("list_id", unknown_list.into())], "22001"),
        ("wrong-length", vec![("descriptor", short.into())], "11013"),
        ("misspelt-field", vec![("descriptor", d.clone().into()), ("lsit_id", list.clone().into())], "unknown fields ['lsit_id']"),
        ("not-utf8", vec![("descriptor", d.clone().into()), ("external_id", b"\xff\xfe".to_vec())], "not UTF-8"),
    ];
    // Good and bad interleaved; a good message has no reason.
    let mut messages: Vec<(String, Fields, Option<&str>)> = Vec::new();
    for (n, (name, fields, reason)) in bad.into_iter().enumerate() {
        messages.push((format!("good-{n}"), good(n as u64), None));
        messages.push((name.to_owned(), fields, Some(reason)));
    }
    messages.push(("good-6".to_owned(), good(6), None));

    // All in one transaction, so the plugin finds them together in its batch.
    let mut r = Redis::connect();
    assert_eq!(r.cmd(&["MULTI"]), Resp::Status("OK".into()));
    for (user_data, fields, _) in &messages {
        let mut all: Vec<(&str, &[u8])> = fields.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        all.push(("user_data", user_data.as_bytes()));
        assert_eq!(r.add(&stream.0, &all), "QUEUED");
    }
    let ids: Vec<String> = r.cmd(&["EXEC"]).items().iter().map(Resp::text).collect();

    s.wait_for(
        || {
            let stats = s.call("GET", "/redis-faces/stats", None).json();
            stats["created"] == 7 && stats["rejected"] == 6
        },
        "every message is handled",
    );
    let expected: BTreeSet<String> = (0..7).map(|n| format!("good-{n}")).collect();
    assert_eq!(user_data_in(&s, &list), expected, "every good message is a face in the list");

    let dead = r.entries(&stream.dead());
    assert_eq!(dead.len(), 6, "{dead:?}");
    for ((user_data, fields, reason), id) in messages.iter().zip(&ids) {
        let Some(reason) = reason else { continue };
        let (_, letter) = dead.iter().find(|(_, f)| f.get("message_id") == Some(id)).unwrap_or_else(|| panic!("no dead letter for {user_data}: {dead:?}"));
        assert!(letter["error"].contains(reason), "{user_data}: {}", letter["error"]);
        assert_eq!(letter["user_data"], *user_data);
        for (k, v) in fields {
            assert_eq!(letter[*k], String::from_utf8_lossy(v), "{user_data}: the original field {k} is kept");
        }
    }
    assert_eq!(r.pending(&stream.0, "luna-matcher"), 0, "every message is acknowledged");
    assert_running_without_restarts(&s, "redis_faces");
    let log = s.log();
    assert_eq!(log.matches(&format!("message {} moved to", ids[1])).count(), 1, "logged once, with its id:\n{log}");
}

/// A service in front of the real one (`target`, set once it listens) that
/// fails the first requests: the first connection is dropped unanswered, the
/// second gets a 503, the rest are forwarded. Returns its URL and the number
/// of requests it received.
fn flaky_service() -> (String, Arc<OnceLock<SocketAddr>>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (target, seen) = (Arc::new(OnceLock::new()), Arc::new(AtomicUsize::new(0)));
    let (front_of, counter) = (target.clone(), seen.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut line, mut length, mut content_type) = (String::new(), 0, String::from("application/json"));
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                continue;
            }
            let path = line.split(' ').nth(1).unwrap().to_owned();
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap();
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap(),
                    "content-type" => content_type = v.trim().to_owned(),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let (status, answer) = match counter.fetch_add(1, Ordering::SeqCst) {
                0 => continue, // dropped: the connection closes unanswered
                1 => (503, br#"{"error_code":10011,"desc":"Service unavailable"}"#.to_vec()),
                _ => {
                    let r = request(*front_of.get().unwrap(), "POST", &path, &[("Content-Type", &content_type)], &body);
                    (r.status, r.body)
                }
            };
            let head = format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", answer.len());
            let _ = (&stream).write_all(&[head.as_bytes(), &answer].concat());
        }
    });
    (url, target, seen)
}

#[test]
fn redis_messages_stay_pending_while_the_service_fails() {
    let stream = Stream::new();
    // The plugin's service is a flaky front of this same service.
    let (url, target, seen) = flaky_service();
    let s = spawn_redis_faces(&redis_config(&stream.0, &format!("service_url = \"{url}\"\n")));
    target.set(s.addr).unwrap();
    s.ready();
    let list = create_list(&s);
    let mut r = Redis::connect();
    for n in 0..2 {
        r.add(&stream.0, &[("descriptor", b64(&descriptor(200 + n)).as_bytes()), ("list_id", list.as_bytes()), ("user_data", format!("m{n}").as_bytes())]);
    }
    s.wait_for(|| s.call("GET", "/redis-faces/stats", None).json()["created"] == 2, "both faces are created once the service answers");
    let stats = s.call("GET", "/redis-faces/stats", None).json();
    assert_eq!((stats["retried"].as_u64(), stats["rejected"].as_u64()), (Some(2), Some(0)), "{stats}");
    assert_eq!(seen.load(Ordering::SeqCst), 4, "two failed tries of the first message, then one request per message");
    assert_eq!(user_data_in(&s, &list), BTreeSet::from(["m0".to_owned(), "m1".to_owned()]), "each face created once");
    assert_eq!(r.cmd(&["XLEN", &stream.dead()]).int(), 0, "a failing service is not the message's fault");
    assert_eq!(r.pending(&stream.0, "luna-matcher"), 0);
    assert_running_without_restarts(&s, "redis_faces");
}

#[test]
fn redis_messages_left_by_a_dead_consumer_are_claimed() {
    let stream = Stream::new();
    let mut r = Redis::connect();
    assert_eq!(r.cmd(&["XGROUP", "CREATE", &stream.0, "luna-matcher", "$", "MKSTREAM"]), Resp::Status("OK".into()));
    let id = r.add(&stream.0, &[("descriptor", b64(&descriptor(300)).as_bytes()), ("user_data", b"orphan")]);
    // Another consumer reads it and dies before acknowledging it.
    let read = r.cmd(&["XREADGROUP", "GROUP", "luna-matcher", "ghost", "COUNT", "10", "STREAMS", &stream.0, ">"]);
    assert_eq!(read.items()[0].items()[1].items()[0].items()[0].text(), id);
    assert_eq!(r.pending(&stream.0, "luna-matcher"), 1);

    let s = spawn_redis_faces(&redis_config(&stream.0, "claim_idle = 0.2\n"));
    s.ready();
    s.wait_for(|| s.call("GET", "/redis-faces/stats", None).json()["created"] == 1, "the orphaned message is claimed and ingested");
    let q = json!({"references": [{"type": "descriptor", "data": b64(&descriptor(300))}],
                   "candidates": [{"filters": {"origin": "faces", "account_id": ACCOUNT}, "targets": ["user_data", "similarity"]}]});
    let hit = &s.call("POST", "/1/matcher/faces", Some(&q)).json()[0]["matches"][0]["result"][0];
    assert_eq!((hit["face"]["user_data"].as_str(), hit["similarity"].as_f64()), (Some("orphan"), Some(1.0)));
    assert_eq!(r.pending(&stream.0, "luna-matcher"), 0);
}

/// A short aio-pika client for the tests: `publish QUEUE` (a JSON list of
/// bodies on stdin), `drain QUEUE` (every message with its headers, as JSON),
/// `delete NAME...` (queues and exchanges).
const AMQP: &str = r#"
import asyncio, json, sys
import aio_pika

async def main(command, names):
    connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/", client_properties={"connection_name": "luna-matcher test client"})
    async with connection:
        channel = await connection.channel()
        if command == "publish":
            for body in json.load(sys.stdin):
                await channel.default_exchange.publish(aio_pika.Message(body.encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=names[0])
        elif command == "drain":
            queue = await channel.get_queue(names[0])
            out = []
            while (message := await queue.get(fail=False)) is not None:
                out.append({"body": message.body.decode(errors="replace"), "headers": {k: v if isinstance(v, (str, int)) else str(v) for k, v in message.headers.items()}})
                await message.ack()
            print(json.dumps(out))
        elif command == "delete":
            for name in names:
                await channel.queue_delete(name)
                await channel.exchange_delete(name)

asyncio.run(main(sys.argv[1], sys.argv[2:]))
"#;

fn amqp(args: &[&str], stdin: &str) -> String {
    let mut child = std::process::Command::new(plugins_python())
        .args(["-c", AMQP])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "amqp {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A queue name of its own; the queue, its dead-letter queue and exchange are deleted at the end.
struct Queue(String);

impl Queue {
    fn new() -> Queue {
        Queue(format!("luna-test.{}", uuid::Uuid::new_v4()))
    }

    fn dead(&self) -> String {
        format!("{}.dead", self.0)
    }

    fn publish(&self, bodies: &[String]) {
        amqp(&["publish", &self.0], &serde_json::to_string(bodies).unwrap());
    }

    fn dead_letters(&self) -> Vec<Value> {
        serde_json::from_str(&amqp(&["drain", &self.dead()], "")).unwrap()
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // A failed test is already unwinding: a second panic here would abort
        // the binary and hide every other test's result.
        if !std::thread::panicking() {
            amqp(&["delete", &self.0, &self.dead()], "");
        }
    }
}

fn spawn_rabbitmq_faces(queue: &str, extra: &str) -> Service {
    let config = format!(
        "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"rabbitmq_faces\"]\n[plugins.config.rabbitmq_faces]\nurl = \"amqp://guest:guest@127.0.0.1:5672/\"\nqueue = \"{queue}\"\naccount_id = \"{ACCOUNT}\"\n{extra}"
    );
    Service::spawn(&[("rabbitmq_faces.py", &shipped_plugin("rabbitmq_faces.py")), ("face_intake.py", &shipped_plugin("face_intake.py"))], &config)
}

fn rabbitmq_stats(s: &Service) -> Value {
    s.call("GET", "/rabbitmq-faces/stats", None).json()
}

/// The broker's process id of the plugin's connection to `queue`.
fn plugin_connection(queue: &str) -> Option<String> {
    // One line a connection: `<rabbit@host.N.N.N>\t[{"connection_name","..."},...]`.
    let out = std::process::Command::new("rabbitmqctl").args(["list_connections", "pid", "client_properties", "-s"]).output().expect("rabbitmqctl");
    let name = format!("{{\"connection_name\",\"luna-matcher rabbitmq_faces {queue}\"}}");
    String::from_utf8_lossy(&out.stdout).lines().find(|l| l.contains(&name)).map(|l| l.split('\t').next().unwrap().to_owned())
}

#[test]
fn rabbitmq_queue_creates_faces_dead_letters_and_reconnects() {
    let queue = Queue::new();
    let s = spawn_rabbitmq_faces(&queue.0, "");
    s.ready();
    s.wait_for(|| rabbitmq_stats(&s)["connected"] == true, "the plugin consumes the queue");
    let list = create_list(&s);
    let d = b64(&descriptor(8));
    let good = |n: u64| json!({"descriptor": b64(&descriptor(400 + n)), "list_id": list, "user_data": format!("good-{n}")}).to_string();
    let bad = [
        ("{\"descriptor\": ", "the body is not JSON"),
        ("[1, 2]", "not an object"),
        (&*"[".repeat(100_000), "RecursionError"),
        (&*json!({"descriptor": d, "descriptor_version": "abc", "user_data": "bad-version"}).to_string(), "11002"),
        (&*json!({"descriptor": "not base64!", "user_data": "bad-base64"}).to_string(), "11010"),
        (&*json!({"descriptor": d, "list_id": uuid::Uuid::new_v4(), "user_data": "unknown-list"}).to_string(), "22001"),
        (&*json!({"descriptor": b64(&descriptor(7)[..100]), "user_data": "wrong-length"}).to_string(), "11013"),
        (&*json!({"descriptor": d, "lsit_id": list}).to_string(), "unknown fields ['lsit_id']"),
    ]
    .map(|(body, reason)| (body.to_owned(), reason));
    let mut bodies = Vec::new();
    for (n, (body, _)) in bad.iter().enumerate() {
        bodies.push(good(n as u64));
        bodies.push(body.clone());
    }
    bodies.push(good(8));
    queue.publish(&bodies);
    s.wait_for(
        || {
            let stats = rabbitmq_stats(&s);
            stats["created"] == 9 && stats["rejected"] == 8
        },
        "every message is handled",
    );
    assert_eq!(user_data_in(&s, &list), (0..9).map(|n| format!("good-{n}")).collect::<BTreeSet<_>>());
    let dead = queue.dead_letters();
    assert_eq!(dead.len(), 8, "{dead:?}");
    for ((body, reason), letter) in bad.iter().zip(&dead) {
        assert_eq!(letter["body"], *body, "the dead letter is the original message, in order");
        let error = letter["headers"]["luna-error"].as_str().unwrap();
        assert!(error.contains(reason), "{body}: {error}");
        assert_eq!(letter["headers"]["luna-queue"], queue.0);
    }
    assert_eq!(dead[5]["headers"]["luna-status"], 404, "the service's answer to the unknown list");

    // The broker drops the plugin's connection; what is published meanwhile is not lost.
    let pid = plugin_connection(&queue.0).expect("the plugin's connection is listed");
    let closed = std::process::Command::new("rabbitmqctl").args(["close_connection", &pid, "test"]).output().unwrap();
    assert!(closed.status.success(), "{}", String::from_utf8_lossy(&closed.stderr));
    queue.publish(&[good(9), good(10)]);
    s.wait_for(|| rabbitmq_stats(&s)["created"] == 11, "messages published after the drop are ingested");
    assert_eq!(rabbitmq_stats(&s)["connections"], 2, "the plugin connected again");
    assert_eq!(user_data_in(&s, &list), (0..11).map(|n| format!("good-{n}")).collect::<BTreeSet<_>>());

    // The queue is deleted under the consumer: the plugin declares it again and goes on.
    amqp(&["delete", &queue.0], "");
    s.wait_for(|| rabbitmq_stats(&s)["connections"] == 3, "the plugin declares the queue again");
    queue.publish(&[good(11)]);
    s.wait_for(|| rabbitmq_stats(&s)["created"] == 12, "a message in the new queue is ingested");
    assert_running_without_restarts(&s, "rabbitmq_faces");
}

#[test]
fn rabbitmq_messages_are_requeued_while_the_service_fails() {
    let queue = Queue::new();
    let (url, target, seen) = flaky_service();
    let s = spawn_rabbitmq_faces(&queue.0, &format!("service_url = \"{url}\"\n"));
    target.set(s.addr).unwrap();
    s.ready();
    s.wait_for(|| rabbitmq_stats(&s)["connected"] == true, "the plugin consumes the queue");
    let list = create_list(&s);
    queue.publish(&[json!({"descriptor": b64(&descriptor(500)), "list_id": list, "user_data": "m0"}).to_string()]);
    s.wait_for(|| rabbitmq_stats(&s)["created"] == 1, "the face is created once the service answers");
    let stats = rabbitmq_stats(&s);
    assert_eq!((stats["retried"].as_u64(), stats["rejected"].as_u64()), (Some(2), Some(0)), "{stats}");
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    assert_eq!(user_data_in(&s, &list), BTreeSet::from(["m0".to_owned()]));
    assert!(queue.dead_letters().is_empty(), "a failing service is not the message's fault");
    assert_running_without_restarts(&s, "rabbitmq_faces");
}

#[test]
fn without_their_brokers_the_sources_wait_and_the_service_is_healthy() {
    let (redis_port, amqp_port) = (free_port(), free_port());
    let config = format!(
        "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"redis_faces\", \"rabbitmq_faces\"]\n\
         [plugins.config.redis_faces]\nurl = \"redis://127.0.0.1:{redis_port}/0\"\n\
         [plugins.config.rabbitmq_faces]\nurl = \"amqp://guest:guest@127.0.0.1:{amqp_port}/\"\n"
    );
    let s = Service::spawn(
        &[
            ("redis_faces.py", &shipped_plugin("redis_faces.py")),
            ("rabbitmq_faces.py", &shipped_plugin("rabbitmq_faces.py")),
            ("face_intake.py", &shipped_plugin("face_intake.py")),
        ],
        &config,
    );
    s.ready();
    let retries = |port: u16| s.log().lines().filter(|l| l.contains(&format!("127.0.0.1:{port}/")) && l.contains("connecting again in")).count();
    s.wait_for(|| retries(redis_port) >= 2 && retries(amqp_port) >= 2, "both plugins try again");
    assert!(!s.log().contains("guest:guest"), "no credentials in the log");
    assert_eq!(s.call("GET", "/healthcheck", None).status, 200);
    for (name, stats) in [("redis_faces", "/redis-faces/stats"), ("rabbitmq_faces", "/rabbitmq-faces/stats")] {
        assert_running_without_restarts(&s, name);
        assert_eq!(s.call("GET", stats, None).json()["connected"], false);
    }
}

//! `luna-matcher import` and `luna-matcher bench` as a user runs them: the
//! binary's subcommands against the binary's service, with real files.
//! Interruptions and wrong answers come from a test double: an HTTP proxy in
//! front of the service that holds a bulk answer or alters a match.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use common::{b64, descriptor, sdk, Service, ACCOUNT};
use serde_json::{json, Value};

fn tool(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_luna-matcher"));
    cmd.args(args).stdin(Stdio::null());
    cmd
}

fn run(args: &[&str]) -> (i32, String, String) {
    let Output { status, stdout, stderr } = tool(args).output().unwrap();
    (status.code().unwrap_or(-1), String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned())
}

fn url(s: &Service) -> String {
    format!("http://{}", s.addr)
}

/// A .npy file (format 1.0) of a 2-d C-ordered array.
fn write_npy(path: &Path, descr: &str, rows: usize, cols: usize, data: &[u8]) {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

/// `rows` deterministic u8 descriptors from `seed` on, as one .npy file.
fn u8_npy(path: &Path, seed: u64, rows: usize) -> Vec<Vec<u8>> {
    let descriptors: Vec<Vec<u8>> = (0..rows as u64).map(|i| descriptor(seed + i)).collect();
    write_npy(path, "|u1", rows, 512, &descriptors.concat());
    descriptors
}

fn summary(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap()
}

fn face_count(s: &Service, list: &str) -> u64 {
    s.call("GET", &format!("/1/lists/{list}"), None).json()["face_count"].as_u64().unwrap()
}

/// How many faces of `list` are `d` itself (similarity 1): a row stored twice shows as 2.
fn copies(s: &Service, list: &str, d: &[u8], version: Option<u32>) -> (u64, Value) {
    let mut reference = json!({"type": "descriptor", "data": b64(d)});
    if let Some(v) = version {
        reference["descriptor_version"] = v.into();
    }
    let body = json!({"references": [reference], "candidates": [{"filters": {"origin": "faces", "list_id": list},
        "targets": ["face_id", "similarity", "external_id", "user_data"], "threshold": 0.99999, "limit": 5}]});
    let r = s.call("POST", "/1/matcher/faces", Some(&body));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let set = r.json()[0]["matches"][0].clone();
    (set["total_found"].as_u64().unwrap(), set["result"].clone())
}

#[test]
fn import_reads_every_kind_of_input_and_names_bad_rows() {
    let s = Service::spawn(&[], "");
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let u8_rows = u8_npy(&p("gallery.npy"), 1, 2000);
    let mut meta = String::from("user_data,external_id\n");
    for i in 0..2000 {
        meta.push_str(&format!("\"name, {i}\",person-{i}\n"));
    }
    std::fs::write(p("gallery.csv"), meta).unwrap();
    // float32, row 18 holding a NaN.
    let mut floats: Vec<f32> = (0..300 * 512).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect();
    floats[17 * 512 + 5] = f32::NAN;
    write_npy(&p("open.npy"), "<f4", 300, 512, &floats.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<_>>());
    // LUNA-shaped faces: line 3 bad base64, line 6 too short, line 9 names a list the
    // service does not have (only the service can tell), line 12 is not JSON.
    let mut lines = Vec::new();
    for i in 0..40u64 {
        let data = match i {
            2 => "@@@".to_owned(),
            5 => b64(&descriptor(100_900 + i)[..100]),
            _ => b64(&descriptor(100_900 + i)),
        };
        let mut face = json!({"descriptor": {"data": data}, "user_data": format!("line {}", lines.len() + 1)});
        if i == 8 {
            face["lists"] = json!(["11111111-1111-4111-8111-111111111111"]);
        }
        lines.push(face.to_string());
        if i == 10 {
            lines.push("{not json".into());
        }
    }
    std::fs::write(p("faces.jsonl"), lines.join("\n")).unwrap();
    let sdk_rows: Vec<Vec<u8>> = (0..5).map(|i| sdk(59, &descriptor(100_700 + i))).collect();
    std::fs::write(p("many.dp"), sdk_rows.concat()).unwrap();
    std::fs::write(p("one.dp"), sdk(65, &descriptor(100_800))).unwrap();

    let out = p("out");
    let files = ["gallery.npy", "open.npy", "faces.jsonl", "many.dp", "one.dp"].map(|f| p(f).display().to_string());
    let service = url(&s);
    let mut args = vec!["import", "--url", &service, "--list", "NEW", "--account-id", ACCOUNT, "--out", out.to_str().unwrap(), "--quiet"];
    args.extend(files.iter().map(String::as_str));
    let meta = p("gallery.csv").display().to_string();
    args.extend(["--meta", &meta]);
    let (code, stdout, stderr) = run(&args);
    assert_eq!(code, 3, "rows were rejected and skipped: {stdout}{stderr}");
    let sum = summary(&out);
    let rejected: Vec<(String, u64, u64)> = sum["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (Path::new(r["file"].as_str().unwrap()).file_name().unwrap().to_str().unwrap().to_owned(), r["row"].as_u64().unwrap(), r["code"].as_u64().unwrap())
        })
        .collect();
    let want = [("open.npy", 18, 11014), ("faces.jsonl", 3, 11010), ("faces.jsonl", 6, 11013), ("faces.jsonl", 9, 22001), ("faces.jsonl", 12, 11001)];
    assert_eq!(rejected, want.map(|(f, r, c)| (f.to_owned(), r, c)), "{sum}");
    assert!(stderr.contains("faces.jsonl row 9: 22001"), "{stderr}");
    let list = sum["list_id"].as_str().unwrap().to_owned();
    let total = 2000 + 300 + 41 + 5 + 1;
    assert_eq!((sum["rows"].as_u64(), sum["faces"].as_u64(), sum["complete"].as_bool()), (Some(total), Some(total - 5), Some(true)));
    assert_eq!(face_count(&s, &list), total - 5);

    // Each row once, with its CSV fields; SDK rows under their own versions.
    let (n, result) = copies(&s, &list, &u8_rows[3], None);
    assert_eq!((n, &result[0]["face"]["external_id"], &result[0]["face"]["user_data"]), (1, &json!("person-3"), &json!("name, 3")));
    assert_eq!(copies(&s, &list, &sdk_rows[4], None).0, 1);
    assert_eq!(copies(&s, &list, &sdk(65, &descriptor(100_800)), None).0, 1);
    let (n, result) = copies(&s, &list, &descriptor(100_901), None);
    assert_eq!((n, &result[0]["face"]["user_data"]), (1, &json!("line 2")));
    let row_17: Vec<u8> = floats[16 * 512..17 * 512].iter().flat_map(|f| f.to_le_bytes()).collect();
    assert_eq!(copies(&s, &list, &row_17, Some(1000)).0, 1);

    // Stopping at the first bad row instead.
    let stop_out = p("stop");
    let (code, _, stderr) =
        run(&["import", "--url", &url(&s), "--list", &list, "--out", stop_out.to_str().unwrap(), "--on-bad-row", "stop", "--quiet", &files[2]]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("faces.jsonl row 3"), "{stderr}");
    assert_eq!(summary(&stop_out)["complete"], json!(false));
}

#[test]
fn an_interrupted_import_resumes_without_duplicates() {
    let s = Service::spawn(&[], "");
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("gallery.npy");
    let rows = u8_npy(&npy, 5000, 3000);
    let out = dir.path().join("out");
    let args = ["import", "--url", &url(&s), "--list", "NEW", "--account-id", ACCOUNT, "--out", out.to_str().unwrap(), "--quiet", npy.to_str().unwrap()];
    let (code, _, stderr) = run(&[&args[..], &["--max-requests", "2"]].concat());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("run the same command again to resume"), "{stderr}");
    let first = summary(&out);
    let list = first["list_id"].as_str().unwrap().to_owned();
    let stored = first["faces"].as_u64().unwrap();
    assert!(stored > 0 && stored < 3000, "{first}");
    assert_eq!(face_count(&s, &list), stored);

    let (code, stdout, stderr) = run(&args);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let second = summary(&out);
    assert_eq!((second["faces_before"].as_u64(), second["faces"].as_u64()), (Some(stored), Some(3000 - stored)), "{second}");
    assert_eq!(face_count(&s, &list), 3000);
    for i in (0..3000).step_by(97) {
        assert_eq!(copies(&s, &list, &rows[i], None).0, 1, "row {i}");
    }
    // Done is done: a third run sends nothing.
    let (code, _, _) = run(&args);
    assert_eq!((code, summary(&out)["requests"].as_u64(), face_count(&s, &list)), (0, Some(0), 3000));
}

/// What the proxy does with a request.
#[derive(Clone)]
enum Tamper {
    /// Pass everything.
    None,
    /// Forward the n-th bulk request (from 0), then never answer it.
    HoldBulk(usize),
    /// Alter each answer of /1/matcher/faces.
    Match(fn(&mut Value)),
}

struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    tamper: Tamper,
    bulks: AtomicUsize,
    /// The held bulk request was stored upstream.
    held: Arc<AtomicBool>,
}

/// An HTTP proxy in front of the service, in this process.
struct Proxy {
    url: String,
    held: Arc<AtomicBool>,
    handle: actix_web::dev::ServerHandle,
}

impl Proxy {
    fn start(upstream: &str, tamper: Tamper) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let held = Arc::new(AtomicBool::new(false));
        let state = web::Data::new(ProxyState {
            upstream: upstream.to_owned(),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            tamper,
            bulks: AtomicUsize::new(0),
            held: held.clone(),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let server = actix_web::HttpServer::new(move || actix_web::App::new().app_data(state.clone()).default_service(web::to(forward)))
                    .workers(1)
                    .disable_signals()
                    .listen(listener)
                    .unwrap()
                    .run();
                tx.send(server.handle()).unwrap();
                let _ = server.await;
            })
        });
        Proxy { url, held, handle: rx.recv().unwrap() }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Not graceful: a held request never finishes.
        actix_rt::System::new().block_on(self.handle.stop(false));
    }
}

async fn forward(req: HttpRequest, body: web::Bytes, state: web::Data<ProxyState>) -> HttpResponse {
    let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap();
    let mut upstream = state.client.request(method, format!("{}{path}", state.upstream)).body(body.to_vec());
    if let Some(ct) = req.headers().get("content-type") {
        upstream = upstream.header("content-type", ct.to_str().unwrap());
    }
    let answer = upstream.send().await.unwrap();
    let status = answer.status().as_u16();
    let ct = answer.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let mut bytes = answer.bytes().await.unwrap().to_vec();
    match &state.tamper {
        Tamper::HoldBulk(n) if path == "/1/faces/bulk" && body.len() > 1 && state.bulks.fetch_add(1, Ordering::SeqCst) == *n => {
            state.held.store(true, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        Tamper::Match(alter) if path.starts_with("/1/matcher/faces") && status == 200 => {
            let mut v: Value = serde_json::from_slice(&bytes).unwrap();
            alter(&mut v);
            bytes = serde_json::to_vec(&v).unwrap();
        }
        _ => {}
    }
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).content_type(ct).body(bytes)
}

#[test]
fn an_import_killed_while_its_answer_is_lost_resumes_without_duplicates() {
    let s = Service::spawn(&[], "");
    let proxy = Proxy::start(&url(&s), Tamper::HoldBulk(2));
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("gallery.npy");
    let rows = u8_npy(&npy, 9000, 2000);
    let out = dir.path().join("out");
    let args = |url: &str| {
        [
            "import",
            "--url",
            url,
            "--list",
            "NEW",
            "--account-id",
            ACCOUNT,
            "--out",
            out.to_str().unwrap(),
            "--concurrency",
            "1",
            "--quiet",
            npy.to_str().unwrap(),
        ]
        .map(str::to_owned)
    };
    let mut importer = tool(&args(&proxy.url).each_ref().map(String::as_str)).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while !proxy.held.load(Ordering::SeqCst) {
        assert!(Instant::now() < until, "the third bulk request never came");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The service stored the third batch; the importer never heard so. Kill it there.
    importer.kill().unwrap();
    importer.wait().unwrap();
    let journal = std::fs::read_to_string(out.join("journal.jsonl")).unwrap();
    assert_eq!((journal.matches("\"sent\"").count(), journal.matches("\"ack\"").count()), (3, 2), "{journal}");
    let list = serde_json::from_str::<Value>(journal.lines().next().unwrap()).unwrap()["list_id"].as_str().unwrap().to_owned();
    let stored = face_count(&s, &list);

    let (code, stdout, stderr) = run(&args(&url(&s)).each_ref().map(String::as_str));
    assert_eq!(code, 0, "{stdout}{stderr}");
    let sum = summary(&out);
    assert_eq!(sum["in_doubt_stored"].as_u64().unwrap() + sum["faces_before"].as_u64().unwrap(), stored, "{sum}");
    assert!(sum["in_doubt_stored"].as_u64().unwrap() > 0, "{sum}");
    assert_eq!(sum["in_doubt_missing"], json!(0));
    assert_eq!(face_count(&s, &list), 2000);
    for i in (0..2000).step_by(61) {
        assert_eq!(copies(&s, &list, &rows[i], None).0, 1, "row {i}");
    }
}

#[test]
fn an_import_that_loses_an_answer_asks_and_goes_on() {
    let s = Service::spawn(&[], "");
    let proxy = Proxy::start(&url(&s), Tamper::HoldBulk(1));
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("gallery.npy");
    let rows = u8_npy(&npy, 20000, 1500);
    let out = dir.path().join("out");
    let (code, stdout, stderr) = run(&[
        "import",
        "--url",
        &proxy.url,
        "--list",
        "NEW",
        "--account-id",
        ACCOUNT,
        "--out",
        out.to_str().unwrap(),
        "--timeout",
        "2",
        "--quiet",
        npy.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("asking which rows were stored"), "{stderr}");
    let sum = summary(&out);
    assert_eq!((sum["retries"].as_u64(), sum["in_doubt_missing"].as_u64()), (Some(1), Some(0)), "{sum}");
    assert_eq!(sum["faces"].as_u64().unwrap() + sum["in_doubt_stored"].as_u64().unwrap(), 1500);
    let list = sum["list_id"].as_str().unwrap();
    assert_eq!(face_count(&s, list), 1500);
    for i in (0..1500).step_by(53) {
        assert_eq!(copies(&s, list, &rows[i], None).0, 1, "row {i}");
    }
}

fn bench_args(url: &str, out: &Path, seconds: &str) -> Vec<String> {
    ["bench", "--url", url, "--out", out.to_str().unwrap(), "--duration", seconds, "--warmup", "0.05", "--check-every", "3"].map(str::to_owned).to_vec()
}

fn results(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap()
}

#[test]
fn bench_measures_checks_and_compares() {
    let s = Service::spawn(&[], "");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut args = bench_args(&url(&s), &out, "0.3");
    args.extend(["--synthetic", "u8:1500,f32:500", "--concurrency", "1,3"].map(str::to_owned));
    let (code, stdout, stderr) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{stdout}{stderr}");
    let first = results(&out);
    let points = first["points"].as_array().unwrap();
    // (2 lists x 3 shapes + raw u8 and f32) x 2 concurrencies.
    assert_eq!(points.len(), 16, "{first}");
    for p in points {
        assert!(p["requests"].as_u64().unwrap() > 0 && p["checked"].as_u64().unwrap() > 0, "{p}");
        assert_eq!((p["wrong"].as_u64(), p["errors"].as_u64()), (Some(0), Some(0)), "{p}");
        assert!(p["latency_ms"]["p50"].as_f64().unwrap() <= p["latency_ms"]["p99"].as_f64().unwrap(), "{p}");
    }
    let refs = points.iter().find(|p| p["shape"] == "refs" && p["data"] == "u8:1500").unwrap();
    assert_eq!(refs["candidates_per_request"], json!(15000));
    assert_eq!(first["setup"][0]["imported"], json!(1500));
    assert_eq!(std::fs::read_to_string(out.join("results.csv")).unwrap().lines().count(), 17);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && out.join("throughput-vs-size.svg").exists() && out.join("latency-vs-clients-sets.svg").exists());
    assert!(stdout.contains("| one | u8:1500 | 1 |"), "{stdout}");

    // Again into the same directory: the lists are reused, the runs compared.
    let baseline = dir.path().join("first.json");
    std::fs::copy(out.join("results.json"), &baseline).unwrap();
    args.extend(["--compare".into(), baseline.display().to_string()]);
    let (code, stdout, stderr) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(results(&out)["setup"][0]["imported"], json!(0));
    assert_eq!(stdout.lines().filter(|l| l.ends_with("x |")).count(), 16, "a comparison row per point: {stdout}");
    assert!(std::fs::read_to_string(out.join("report.html")).unwrap().contains("B beside A"));

    // Open loop: the rate asked for is what is sent.
    let open = dir.path().join("open");
    let mut args = bench_args(&url(&s), &open, "1");
    args.extend(["--synthetic", "u8:500", "--shapes", "one", "--rate", "50,200"].map(str::to_owned));
    let (code, stdout, stderr) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{stdout}{stderr}");
    let points = results(&open)["points"].as_array().unwrap().clone();
    assert_eq!(points.iter().map(|p| (p["mode"].clone(), p["level"].as_f64().unwrap())).collect::<Vec<_>>(), [(json!("open"), 50.0), (json!("open"), 200.0)]);
    for p in &points {
        let (rate, sent) = (p["level"].as_f64().unwrap(), p["requests"].as_f64().unwrap());
        assert!((sent - rate).abs() <= rate * 0.1 + 2.0, "{p}");
    }
}

#[test]
fn two_services_are_measured_point_by_point_in_turn() {
    let (a, b) = (Service::spawn(&[], ""), Service::spawn(&[], ""));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut args = bench_args(&url(&a), &out, "0.2");
    args.extend(["--url".into(), url(&b)]);
    args.extend(["--synthetic", "u8:300", "--shapes", "one,raw", "--concurrency", "1,2"].map(str::to_owned));
    let (code, stdout, stderr) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout.lines().filter(|l| l.ends_with("x |")).count(), 4, "a comparison row per point: {stdout}");
    let started = |run: &str| -> Vec<String> {
        let points = results(&out.join(run))["points"].as_array().unwrap().clone();
        points.iter().map(|p| p["started"].as_str().unwrap().to_owned()).collect()
    };
    let (first, second) = (started("1"), started("2"));
    assert_eq!((first.len(), second.len()), (4, 4));
    // A's point, then B's, then A's next: each of B's points between two of A's.
    let order: Vec<&String> = first.iter().zip(&second).flat_map(|(x, y)| [x, y]).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "measured in turn: {order:?}");
}

fn bench_through(tamper: Tamper) -> (i32, String, Value) {
    let s = Service::spawn(&[], "");
    let proxy = Proxy::start(&url(&s), tamper);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut args = bench_args(&proxy.url, &out, "0.3");
    args.extend(["--synthetic", "u8:800", "--shapes", "one", "--concurrency", "1,2"].map(str::to_owned));
    let (code, stdout, stderr) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    (code, format!("{stdout}{stderr}"), results(&out))
}

#[test]
fn bench_fails_on_a_wrong_similarity() {
    let (code, output, results) = bench_through(Tamper::Match(|v| {
        let s = &mut v[0]["matches"][0]["result"][0]["similarity"];
        *s = (s.as_f64().unwrap() - 0.001).into();
    }));
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("wrong answer") && output.contains("exactly"), "{output}");
    assert_eq!(results["passed"], json!(false));
    // The run stops at the first point with a wrong answer.
    assert_eq!(results["points"].as_array().unwrap().len(), 1);
    assert!(results["points"][0]["wrong"].as_u64().unwrap() > 0);
}

#[test]
fn bench_fails_on_a_wrong_face() {
    // The best match swapped for the third: similarities stay plausible, the face is wrong.
    let (code, output, results) = bench_through(Tamper::Match(|v| {
        let result = &mut v[0]["matches"][0]["result"];
        let third = result[2]["face"]["face_id"].clone();
        result[0]["face"]["face_id"] = third;
    }));
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("wrong answer"), "{output}");
    assert_eq!(results["passed"], json!(false));
}

#[test]
fn bench_passes_through_an_honest_proxy() {
    // The double itself changes nothing: what fails above is the alteration.
    let (code, output, results) = bench_through(Tamper::None);
    assert_eq!(code, 0, "{output}");
    assert_eq!(results["passed"], json!(true));
}

#[test]
fn bench_checks_answers_about_a_list_an_import_loaded() {
    let s = Service::spawn(&[], "");
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("gallery.npy");
    // float32 rows, row 10 holding a NaN: the import rejects it, and the bench must not count it.
    let mut x = 7u64;
    let mut floats: Vec<f32> = (0..600 * 512)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    floats[9 * 512 + 3] = f32::NAN;
    write_npy(&npy, "<f4", 600, 512, &floats.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<_>>());
    let imported = dir.path().join("import");
    let (code, stdout, stderr) =
        run(&["import", "--url", &url(&s), "--list", "NEW", "--account-id", ACCOUNT, "--out", imported.to_str().unwrap(), "--quiet", npy.to_str().unwrap()]);
    assert_eq!(code, 3, "one row rejected and skipped: {stdout}{stderr}");
    let list = summary(&imported)["list_id"].as_str().unwrap().to_owned();
    let bench = |url: &str, out: &str| {
        let out = dir.path().join(out);
        let mut args = bench_args(url, &out, "0.3");
        args.extend(["--imported", imported.to_str().unwrap(), "--shapes", "one,refs", "--concurrency", "1,2"].map(str::to_owned));
        let (code, stdout, stderr) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        (code, format!("{stdout}{stderr}"), out)
    };

    let (code, output, out) = bench(&url(&s), "honest");
    assert_eq!(code, 0, "{output}");
    let points = results(&out)["points"].as_array().unwrap().clone();
    assert_eq!(points.len(), 4, "{points:?}");
    for p in &points {
        assert_eq!((p["data"].as_str(), p["dtype"].as_str(), p["list_size"].as_u64()), (Some(list.as_str()), Some("f32"), Some(599)), "{p}");
        assert!(p["checked"].as_u64().unwrap() > 0, "{p}");
        assert_eq!((p["wrong"].as_u64(), p["errors"].as_u64()), (Some(0), Some(0)), "{p}");
    }

    // The same list through a double that puts the third face first: caught.
    let proxy = Proxy::start(
        &url(&s),
        Tamper::Match(|v| {
            let result = &mut v[0]["matches"][0]["result"];
            result[0]["face"]["face_id"] = result[2]["face"]["face_id"].clone();
        }),
    );
    let (code, output, _) = bench(&proxy.url, "tampered");
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("wrong answer"), "{output}");

    // A face joined the list since: its answers can no longer be known here.
    let face = json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&floats[..512].iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<_>>()), "version": 1000}, "lists": [list]});
    assert_eq!(s.call("POST", "/1/faces", Some(&face)).status, 201);
    let (code, output, _) = bench(&url(&s), "changed");
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("600 faces") && output.contains("changed since"), "{output}");
}

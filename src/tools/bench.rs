//! `luna-matcher bench`: measure a running matcher.
//!
//! It sets up synthetic lists through the importer (or takes existing ones),
//! then sweeps request shapes against concurrency (closed loop: each of N
//! clients sends its next request when the last is answered) or against
//! request rates (open loop: requests leave on a fixed schedule, and latency
//! runs from each one's intended send time, so a stalled service cannot hide
//! its queue: no coordinated omission). Latencies go into HDR histograms. A
//! sample of answers is checked against the exact answer computed here, and
//! one wrong answer fails the run.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use luna_core::descriptor::{Dtype, VersionSpec};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::client::Api;
use super::import::{self, Format, ListChoice, OnBadRow, Plan};
use super::imported::{self, Imported};
use super::input::Source;
use super::journal::State;
use super::load::{self, Until};
use super::report;
use super::synthetic::{self, Gallery, ListSpec, Rng, Synthetic};
use super::workload::{faces_workload, raw_workload, Data, Known, Workload};

/// The account of the bench's synthetic lists.
const BENCH_ACCOUNT: Uuid = Uuid::from_u128(0xbe4c_0000_0000_4000_8000_0000_0000_0001);

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The service; give --url twice to measure two services side by side
    #[arg(long, required = true)]
    pub url: Vec<String>,
    /// Synthetic lists to create and check answers against: DTYPE:SIZE, e.g. u8:100k,f32:1M
    #[arg(long, value_delimiter = ',', default_value = "u8:10k,u8:100k,f32:10k")]
    pub synthetic: Vec<ListSpec>,
    /// Existing lists instead, as LIST_ID or LIST_ID:VERSION (their answers cannot be checked)
    #[arg(long)]
    pub list: Vec<String>,
    /// Lists loaded by `luna-matcher import` instead, as its --out directories: answers are
    /// checked against the files it read (named as it was given them: run where it ran)
    #[arg(long, value_name = "DIR")]
    pub imported: Vec<PathBuf>,
    /// Request shapes: one (reference vs one list), refs (--refs references), sets (--sets candidate sets), raw (/1/matcher/raw)
    #[arg(long, value_delimiter = ',', default_value = "one,refs,sets,raw")]
    pub shapes: Vec<Shape>,
    /// Closed loop: clients, each sending its next request when answered
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub concurrency: Vec<usize>,
    /// Open loop instead: requests per second, sent on schedule
    #[arg(long, value_delimiter = ',')]
    pub rate: Vec<f64>,
    /// Seconds measured per point
    #[arg(long, default_value_t = 1.5)]
    pub duration: f64,
    /// Requests measured per point, instead of --duration
    #[arg(long)]
    pub requests: Option<u64>,
    /// Seconds per point before measuring
    #[arg(long, default_value_t = 0.25)]
    pub warmup: f64,
    /// limit of each candidate set (top-k)
    #[arg(long, default_value_t = 3)]
    pub limit: usize,
    /// References per request of shape refs
    #[arg(long, default_value_t = 10)]
    pub refs: usize,
    /// Candidate sets (the same list) per request of shape sets
    #[arg(long, default_value_t = 4)]
    pub sets: usize,
    /// Candidates per request of shape raw
    #[arg(long, default_value_t = 100)]
    pub raw_candidates: usize,
    /// Check every n-th answer against the exact one (and the first answer to each request body)
    #[arg(long, default_value_t = 10)]
    pub check_every: u64,
    /// Directory of results.json, results.csv, report.html, the plots, and the synthetic lists' import journals
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// A results.json of an earlier run to put beside this one, with ratios
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Seed of the synthetic data
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Seconds to wait for an answer
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    One,
    Refs,
    Sets,
    Raw,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::One => "one",
            Shape::Refs => "refs",
            Shape::Sets => "sets",
            Shape::Raw => "raw",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Closed,
    Open,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// One measured point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    pub shape: Shape,
    /// What was matched against: `u8:100000`, a list id, or raw candidates (`u8 x100`).
    pub data: String,
    pub dtype: String,
    pub list_size: u64,
    pub candidates_per_request: u64,
    pub mode: Mode,
    /// Clients (closed loop) or requests per second asked for (open loop).
    pub level: f64,
    /// When its warm-up began (UTC, RFC 3339); empty in results of earlier versions.
    #[serde(default)]
    pub started: String,
    pub seconds: f64,
    /// Answered with 2xx in the measured window.
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub candidates_per_s: f64,
    /// Milliseconds, of 2xx answers.
    pub latency_ms: Latency,
    pub checked: u64,
    pub wrong: u64,
    /// The first errors and wrong answers, described.
    pub problems: Vec<String>,
}

impl Point {
    pub fn key(&self) -> (Shape, &str, Mode, u64) {
        (self.shape, &self.data, self.mode, (self.level * 1000.0) as u64)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setup {
    pub data: String,
    pub list_id: Uuid,
    pub faces: u64,
    /// Faces imported by this run (0 when an earlier run's list was reused).
    pub imported: u64,
    pub seconds: f64,
    pub faces_per_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu: Option<String>,
    pub os: String,
}

/// A whole run: what results.json holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub tool: String,
    pub command: String,
    pub url: String,
    pub started: String,
    pub machine: Machine,
    /// `GET /1/version` of the service.
    pub service: Option<serde_json::Value>,
    pub setup: Vec<Setup>,
    pub points: Vec<Point>,
    pub passed: bool,
    pub failures: Vec<String>,
}

/// The command: exit 0 when every point ran without an error or a wrong answer.
pub fn main(args: BenchArgs) -> u8 {
    if let Err(e) = validate(&args) {
        eprintln!("luna-matcher bench: {e}");
        return 2;
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let runtime = super::runtime();
    // One client, one connection pool, whatever the services.
    let apis = args.url.iter().try_fold(Vec::<Api>::new(), |mut apis, url| {
        apis.push(match apis.first() {
            Some(first) => first.at(url)?,
            None => Api::new(url, Duration::from_secs(args.timeout))?,
        });
        Ok::<_, String>(apis)
    });
    let apis = match apis {
        Ok(apis) => apis,
        Err(e) => {
            eprintln!("luna-matcher bench: {e}");
            return 2;
        }
    };
    let dirs: Vec<PathBuf> = (0..apis.len()).map(|i| if apis.len() > 1 { args.out.join((i + 1).to_string()) } else { args.out.clone() }).collect();
    let runs = match runtime.block_on(sweep(&apis, &args, &dirs, &command)) {
        Ok(runs) => runs,
        Err(e) => {
            eprintln!("luna-matcher bench: {e}");
            return 1;
        }
    };
    for (dir, run) in dirs.iter().zip(&runs) {
        if let Err(e) = report::write_run(dir, run) {
            eprintln!("luna-matcher bench: {e}");
            return 1;
        }
    }
    let baseline = match args.compare.as_deref().map(report::read_run).transpose() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("luna-matcher bench: {e}");
            return 1;
        }
    };
    let shown: Vec<&Run> = baseline.iter().chain(&runs).collect();
    println!("\n{}", report::markdown(shown[shown.len() - 1]));
    if shown.len() == 2 {
        println!("\n{}", report::comparison_markdown(shown[0], shown[1]));
    }
    match report::write_report(&args.out, &shown) {
        Ok(path) => println!("report: {}", path.display()),
        Err(e) => {
            eprintln!("luna-matcher bench: {e}");
            return 1;
        }
    }
    let failures: Vec<&String> = runs.iter().flat_map(|r| &r.failures).collect();
    for f in &failures {
        eprintln!("FAILED: {f}");
    }
    u8::from(!failures.is_empty())
}

fn validate(args: &BenchArgs) -> Result<(), String> {
    if args.url.len() > 2 {
        return Err("--url at most twice".into());
    }
    if args.url.len() == 2 && args.compare.is_some() {
        return Err("--compare or a second --url, not both".into());
    }
    if args.concurrency.contains(&0) || args.rate.iter().any(|r| !r.is_finite() || *r <= 0.0) {
        return Err("--concurrency and --rate must be positive".into());
    }
    if args.duration <= 0.0 || args.requests == Some(0) || args.limit == 0 || args.refs == 0 || args.sets == 0 || args.raw_candidates == 0 {
        return Err("--duration, --requests, --limit, --refs, --sets and --raw-candidates must be positive".into());
    }
    Ok(())
}

/// Set up every service, then measure their points in turn (A's first
/// point, B's first, A's second...): a drift of the shared machine during
/// the sweep then weighs on both runs alike, not on one of them.
async fn sweep(apis: &[Api], args: &BenchArgs, dirs: &[PathBuf], command: &str) -> Result<Vec<Run>, String> {
    let mut runs = Vec::new();
    let mut plans = Vec::new();
    for (api, dir) in apis.iter().zip(dirs) {
        let (run, plan) = setup(api, args, dir, command).await.map_err(|e| if e.starts_with(api.url()) { e } else { format!("{}: {e}", api.url()) })?;
        runs.push(run);
        plans.push(plan);
    }
    let bars = MultiProgress::with_draw_target(draw_target());
    let overall = bars.add(ProgressBar::new(plans.iter().map(|p| p.len() as u64).sum()));
    overall.set_style(ProgressStyle::with_template("{pos}/{len} points {wide_bar} {elapsed_precise}").expect("template"));
    let mode = if args.rate.is_empty() { Mode::Closed } else { Mode::Open };
    let longest = plans.iter().map(Vec::len).max().unwrap_or(0);
    'points: for i in 0..longest {
        for ((api, run), plan) in apis.iter().zip(&mut runs).zip(&plans) {
            let Some((workload, level)) = plan.get(i) else { continue };
            let bar = bars.insert_before(&overall, ProgressBar::new(0));
            bar.set_style(ProgressStyle::with_template("{prefix} {wide_bar} {msg}").expect("template"));
            bar.set_prefix(format!("{} {} {}", workload.shape.name(), workload.data, level_name(mode, *level)));
            let point = measure(api, workload, mode, *level, args, &bar).await;
            bar.finish_and_clear();
            overall.inc(1);
            let from = if apis.len() > 1 { format!("{}: ", api.url()) } else { String::new() };
            bars.suspend(|| println!("{from}{}", describe(&point)));
            if point.wrong > 0 || point.errors > 0 {
                run.failures.push(format!("{} {} {}: {}", point.shape.name(), point.data, level_name(mode, *level), point.problems.join("; ")));
            }
            let wrong = point.wrong > 0;
            run.points.push(point);
            if wrong {
                break 'points;
            }
        }
    }
    overall.finish_and_clear();
    for run in &mut runs {
        run.passed = run.failures.is_empty();
    }
    Ok(runs)
}

/// A service's run, before its points, and the points to measure: its lists
/// set up (or found), its workloads made.
async fn setup(api: &Api, args: &BenchArgs, dir: &Path, command: &str) -> Result<(Run, Vec<(Arc<Workload>, f64)>), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let service = api.get("/1/version").await.ok().filter(|a| a.status == 200).and_then(|a| serde_json::from_slice(&a.body).ok());
    // Raw matching needs no list.
    let (datas, setup) = if args.shapes.iter().all(|s| *s == Shape::Raw) { Default::default() } else { prepare(api, args, dir).await? };
    let run = Run {
        tool: format!("luna-matcher bench {}", env!("CARGO_PKG_VERSION")),
        command: command.to_owned(),
        url: api.url().to_owned(),
        started,
        machine: machine(),
        service,
        setup,
        points: Vec::new(),
        passed: true,
        failures: Vec::new(),
    };

    let mut plan: Vec<(Arc<Workload>, f64)> = Vec::new();
    let levels: Vec<f64> = if args.rate.is_empty() { args.concurrency.iter().map(|&c| c as f64).collect() } else { args.rate.clone() };
    let mut rng = Rng::new(args.seed.wrapping_add(1));
    for data in &datas {
        for &shape in args.shapes.iter().filter(|s| **s != Shape::Raw) {
            let w = Arc::new(faces_workload(data, shape, args, &mut rng));
            plan.extend(levels.iter().map(|&l| (w.clone(), l)));
        }
    }
    if args.shapes.contains(&Shape::Raw) {
        for dtype in raw_dtypes(args)? {
            let w = Arc::new(raw_workload(dtype, args, &mut rng));
            plan.extend(levels.iter().map(|&l| (w.clone(), l)));
        }
    }
    Ok((run, plan))
}

fn draw_target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

pub fn level_name(mode: Mode, level: f64) -> String {
    match mode {
        Mode::Closed => format!("c={level}"),
        Mode::Open => format!("{level}/s"),
    }
}

fn describe(p: &Point) -> String {
    let l = &p.latency_ms;
    format!(
        "{} {} {}: {:.0} requests/s, {} candidates/s, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms; {} errors, {} checked, {} wrong",
        p.shape.name(),
        p.data,
        level_name(p.mode, p.level),
        p.rps,
        report::si(p.candidates_per_s),
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        p.errors,
        p.checked,
        p.wrong
    )
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, m)| m.trim().to_owned()));
    Machine { cpus: std::thread::available_parallelism().map_or(1, |n| n.get()), cpu, os: std::env::consts::OS.to_owned() }
}

/// The lists to match against: existing ones, ones an import loaded, or
/// synthetic ones imported now (or by an earlier run into the same
/// service: the journal says).
async fn prepare(api: &Api, args: &BenchArgs, dir: &Path) -> Result<(Vec<Data>, Vec<Setup>), String> {
    let failed = |e: super::client::Failure| format!("{}: {e}", api.url());
    let mut datas = Vec::new();
    let mut setup = Vec::new();
    for list in &args.list {
        let (list_id, version, spec) = parse_list(list)?;
        datas.push(Data::Existing { list_id, version, spec, size: face_count(api, list_id).await? });
    }
    for dir in &args.imported {
        let read = dir.clone();
        let imported = tokio::task::spawn_blocking(move || imported::read(&read)).await.map_err(|e| e.to_string())??;
        let (size, faces) = (imported.gallery.spec.size, face_count(api, imported.list_id).await?);
        if faces != size {
            return Err(format!("list {} has {faces} faces, the import in {} stored {size}: it was changed since", imported.list_id, dir.display()));
        }
        let Imported { list_id, version, gallery, faces } = imported;
        datas.push(Data::Known { label: list_id.to_string(), list_id, version, gallery: Arc::new(gallery), faces: Arc::new(faces) });
    }
    if !args.list.is_empty() || !args.imported.is_empty() {
        return Ok((datas, setup));
    }
    for &spec in &args.synthetic {
        let seed = args.seed;
        let gallery = Arc::new(tokio::task::spawn_blocking(move || Gallery::generate(spec, seed)).await.map_err(|e| e.to_string())?);
        let out = dir.join("setup").join(spec.label().replace(':', "-"));
        let source = Synthetic::new(gallery.clone(), seed);
        // A journal of other data (another seed) or of a list the service no
        // longer has (another service, a wiped store) is stale.
        if let Some(state) = State::load(&out.join("journal.jsonl"))? {
            let h = &state.header;
            if h.inputs != source.inputs() || h.url != api.url() || api.list(h.list_id).await.map_err(failed)?.is_none() {
                std::fs::remove_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            }
        }
        let plan = Plan {
            list: ListChoice::New(BENCH_ACCOUNT),
            out: out.clone(),
            on_bad_row: OnBadRow::Stop,
            concurrency: 4,
            max_body: 8 << 20,
            target_latency: Duration::from_millis(500),
            format: Format::Auto,
            max_requests: None,
            progress: std::io::stderr().is_terminal(),
        };
        let outcome = import::run(api, Box::new(source), &plan).await?;
        let s = &outcome.summary;
        if let Some(why) = &s.stopped {
            return Err(format!("importing {}: {why}", spec.label()));
        }
        let ids: Vec<Uuid> = outcome.face_ids.iter().map(|id| id.expect("a complete import has every face")).collect();
        let faces = face_count(api, s.list_id).await?;
        if faces != spec.size {
            return Err(format!("list {} has {faces} faces, not {}: it was changed; remove {}", s.list_id, spec.size, out.display()));
        }
        println!("{}: list {} ({} faces imported in {:.1} s, {:.0} faces/s)", spec.label(), s.list_id, s.faces, s.seconds, s.faces_per_s);
        setup.push(Setup { data: spec.label(), list_id: s.list_id, faces: spec.size, imported: s.faces, seconds: s.seconds, faces_per_s: s.faces_per_s });
        let version = synthetic::version_of(spec.dtype);
        datas.push(Data::Known { label: spec.label(), list_id: s.list_id, version, gallery, faces: Arc::new(Known::new(ids)) });
    }
    Ok((datas, setup))
}

/// The face count of a list to match against; an error when the service does not have it.
async fn face_count(api: &Api, list_id: Uuid) -> Result<u64, String> {
    let listed = api.list(list_id).await.map_err(|e| format!("{}: {e}", api.url()))?;
    listed.map(|(info, _)| info.face_count).ok_or_else(|| format!("list {list_id} is not on {}", api.url()))
}

/// `LIST_ID` or `LIST_ID:VERSION`, and the version's spec (default: the default version's).
fn parse_list(list: &str) -> Result<(Uuid, Option<u32>, VersionSpec), String> {
    let (id, version) = match list.split_once(':') {
        Some((id, v)) => (id, Some(v.parse::<u32>().map_err(|_| format!("--list {list}: LIST_ID:VERSION"))?)),
        None => (list, None),
    };
    let list_id: Uuid = id.parse().map_err(|_| format!("--list {list}: not a list id"))?;
    let versions = super::input::versions();
    let spec = *versions.get(version.unwrap_or(versions.default_version())).map_err(|e| format!("--list {list}: {}", e.detail))?;
    Ok((list_id, version, spec))
}

/// The dtypes of the lists: raw matching is measured for each.
fn raw_dtypes(args: &BenchArgs) -> Result<Vec<Dtype>, String> {
    let dtypes: Vec<Dtype> = if args.list.is_empty() {
        args.synthetic.iter().map(|s| s.dtype).collect()
    } else {
        args.list.iter().map(|l| parse_list(l).map(|(_, _, spec)| spec.dtype)).collect::<Result<_, _>>()?
    };
    Ok(super::unique(dtypes))
}

async fn measure(api: &Api, w: &Arc<Workload>, mode: Mode, level: f64, args: &BenchArgs, bar: &ProgressBar) -> Point {
    let warmup = Duration::from_secs_f64(args.warmup.max(0.0));
    let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let start = Instant::now();
    let measure_from = start + warmup;
    let until = match args.requests {
        Some(n) => Until::Count(n),
        None => Until::Time(measure_from + Duration::from_secs_f64(args.duration)),
    };
    bar.set_length(match until {
        Until::Count(n) => n,
        Until::Time(_) => ((args.warmup + args.duration) * 10.0) as u64,
    });
    let done = Arc::new(AtomicU64::new(0));
    let ticker = {
        let (bar, done) = (bar.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let n = done.load(Ordering::Relaxed);
                bar.set_position(match until {
                    Until::Count(_) => n,
                    Until::Time(_) => (start.elapsed().as_secs_f64() * 10.0) as u64,
                });
                bar.set_message(format!("{:.0} requests/s", n as f64 / start.elapsed().as_secs_f64()));
            }
        })
    };
    let (tally, seconds) = match mode {
        Mode::Closed => load::closed(api, w, level as usize, measure_from, until, args.check_every, &done).await,
        Mode::Open => load::open(api, w, level, measure_from, until, args.check_every, &done).await,
    };
    ticker.abort();
    let h = &tally.histogram;
    let ms = |us: u64| us as f64 / 1000.0;
    let requests = h.len();
    let rps = requests as f64 / seconds;
    Point {
        shape: w.shape,
        data: w.data.clone(),
        dtype: synthetic::dtype_name(w.dtype).to_owned(),
        list_size: w.list_size,
        candidates_per_request: w.candidates_per_request,
        mode,
        level,
        started,
        seconds,
        requests,
        errors: tally.errors,
        rps,
        candidates_per_s: rps * w.candidates_per_request as f64,
        latency_ms: Latency {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        },
        checked: tally.checked,
        wrong: tally.wrong,
        problems: tally.problems,
    }
}

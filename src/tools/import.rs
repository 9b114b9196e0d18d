//! `luna-matcher import`: load descriptors into a list over HTTP.
//!
//! One thread reads and checks rows (luna-core's descriptor parsing) and cuts
//! them into batches; `concurrency` tasks send them as `POST /1/faces/bulk`
//! (msgpack when the service takes it). Batches grow or shrink towards a
//! target latency, within a body size. Every request is journalled (see
//! `journal`), so a rerun resumes. A request whose answer is lost (no
//! answer, 5xx) is in doubt: the rows carry external ids (generated when a
//! row has none), and a match filtered by them, the list and the import's
//! start time tells which rows the service stored. A 4xx names its row
//! (`faces[i]`) or is narrowed down by halving the batch: bulk writes are
//! all-or-nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Serialize, Serializer};
use uuid::Uuid;

use super::client::{Api, Failure};
use super::input::{self, Files, Item, Row, Source};
use super::journal::{self, Header, Journal, State};
use in_doubt::resolve;

/// Rows asked about per query when resolving a request in doubt; also the
/// query's `limit`, within the API's default `max_limit`.
const RESOLVE_CHUNK: usize = 100;

mod in_doubt;
const FIRST_ROWS: usize = 256;
const MIN_ROWS: usize = 16;
const MAX_ROWS: usize = 100_000;
/// Attempts at a request that gets no answer before the import stops.
const MAX_ATTEMPTS: u32 = 6;

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The service, e.g. http://127.0.0.1:5100
    #[arg(long)]
    pub url: String,
    /// NEW to create a list (with --account-id), or the id of an existing list
    #[arg(long, value_name = "NEW|LIST_ID")]
    pub list: String,
    /// Account of a new list; rows without an account_id get the list's
    #[arg(long)]
    pub account_id: Option<Uuid>,
    /// .npy arrays (uint8 or float32, N x 512), JSON lines of faces (bodies of POST /1/faces), SDK descriptor files
    #[arg(required = true, value_name = "FILES")]
    pub files: Vec<PathBuf>,
    /// external_id and user_data per row of a .npy file: CSV with a header, or JSON lines;
    /// the n-th --meta goes with the n-th .npy file
    #[arg(long)]
    pub meta: Vec<PathBuf>,
    /// descriptor.version of .npy rows [default: the service's default for uint8, 1000 for float32]
    #[arg(long)]
    pub descriptor_version: Option<u32>,
    /// Directory of the journal and summary.json; run again with the same one to resume
    #[arg(long, default_value = "luna-import")]
    pub out: PathBuf,
    /// What a bad row does: it is reported and skipped, or it stops the import
    #[arg(long, value_enum, default_value_t = OnBadRow::Skip)]
    pub on_bad_row: OnBadRow,
    /// Bulk requests in flight
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Largest bulk request body, in MiB
    #[arg(long, default_value_t = 8)]
    pub max_body_mib: usize,
    /// Batches are sized for about this long a request, in milliseconds
    #[arg(long, default_value_t = 500)]
    pub target_ms: u64,
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// Stop after this many bulk requests, as an interruption would (run again to resume)
    #[arg(long)]
    pub max_requests: Option<u64>,
    /// Seconds to wait for an answer
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// No progress bar
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnBadRow {
    Skip,
    Stop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// msgpack if the service takes it, else JSON
    Auto,
    Msgpack,
    Json,
}

pub enum ListChoice {
    /// Create one for this account.
    New(Uuid),
    Existing(Uuid),
}

/// How to import, whatever the rows.
pub struct Plan {
    pub list: ListChoice,
    /// Journal and summary directory.
    pub out: PathBuf,
    pub on_bad_row: OnBadRow,
    pub concurrency: usize,
    pub max_body: usize,
    pub target_latency: Duration,
    pub format: Format,
    pub max_requests: Option<u64>,
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    /// The row's index over all inputs, for ordering.
    #[serde(skip)]
    pub index: u64,
    pub file: String,
    pub row: u64,
    /// The error code the service gave, or would give.
    pub code: Option<u32>,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub url: String,
    pub list_id: Uuid,
    pub format: &'static str,
    pub rows: u64,
    /// Faces this run sent and the service acknowledged.
    pub faces: u64,
    /// Faces stored by earlier runs of the same import.
    pub faces_before: u64,
    pub seconds: f64,
    pub faces_per_s: f64,
    pub rejected_rows: usize,
    pub rejected: Vec<Rejected>,
    pub requests: u64,
    /// Requests that got no answer and were asked about, then resent.
    pub retries: u64,
    /// Rows in doubt found stored, and found missing (then sent).
    pub in_doubt_stored: u64,
    pub in_doubt_missing: u64,
    pub last_batch_rows: usize,
    /// Every row is stored or rejected.
    pub complete: bool,
    /// Why the import stopped early, if it did.
    pub stopped: Option<String>,
}

pub struct Outcome {
    pub summary: Summary,
    /// The face of each row (by index), where stored.
    pub face_ids: Vec<Option<Uuid>>,
}

/// The command: exit 0 when every row is stored, 3 when some were rejected
/// and skipped, 1 when the import stopped or failed.
pub fn main(args: ImportArgs) -> u8 {
    let list = match (args.list.as_str(), args.account_id) {
        ("NEW" | "new", Some(account)) => ListChoice::New(account),
        ("NEW" | "new", None) => return usage("--list NEW needs --account-id"),
        (id, _) => match id.parse() {
            Ok(id) => ListChoice::Existing(id),
            Err(_) => return usage(&format!("--list {id}: NEW or a list id")),
        },
    };
    let plan = Plan {
        list,
        out: args.out,
        on_bad_row: args.on_bad_row,
        concurrency: args.concurrency.max(1),
        max_body: args.max_body_mib.max(1) << 20,
        target_latency: Duration::from_millis(args.target_ms.max(1)),
        format: args.format,
        max_requests: args.max_requests,
        progress: !args.quiet,
    };
    let outcome = super::runtime().block_on(async {
        let api = Api::new(&args.url, Duration::from_secs(args.timeout))?;
        let files = Files::open(&args.files, &args.meta, args.descriptor_version)?;
        run(&api, Box::new(files), &plan).await
    });
    match outcome {
        Err(e) => {
            eprintln!("luna-matcher import: {e}");
            1
        }
        Ok(Outcome { summary: s, .. }) => {
            print_summary(&s, &plan.out);
            match (&s.stopped, s.rejected_rows) {
                (Some(_), _) => 1,
                (None, 0) => 0,
                (None, _) => 3,
            }
        }
    }
}

fn usage(e: &str) -> u8 {
    eprintln!("luna-matcher import: {e}");
    2
}

fn print_summary(s: &Summary, out: &Path) {
    const SHOWN: usize = 20;
    for r in s.rejected.iter().take(SHOWN) {
        eprintln!("rejected: {} row {}: {}{}", r.file, r.row, r.code.map(|c| format!("{c} ")).unwrap_or_default(), r.error);
    }
    if s.rejected.len() > SHOWN {
        eprintln!("rejected: {} more rows, listed in {}", s.rejected.len() - SHOWN, out.join("summary.json").display());
    }
    println!(
        "list {}: {} faces in {:.2} s ({:.0} faces/s, {}), {} stored before, {} rows rejected, {} of {} rows done",
        s.list_id,
        s.faces,
        s.seconds,
        s.faces_per_s,
        s.format,
        s.faces_before,
        s.rejected_rows,
        s.faces + s.faces_before + s.in_doubt_stored + s.rejected_rows as u64,
        s.rows
    );
    if s.in_doubt_stored + s.in_doubt_missing > 0 {
        println!("rows in doubt after lost answers: {} found stored, {} sent again", s.in_doubt_stored, s.in_doubt_missing);
    }
    if let Some(why) = &s.stopped {
        eprintln!("stopped: {why}; run the same command again to resume");
    }
}

/// Import `source` as `plan` says; the journal in `plan.out` makes it resumable.
pub async fn run(api: &Api, source: Box<dyn Source>, plan: &Plan) -> Result<Outcome, String> {
    let started = Instant::now();
    std::fs::create_dir_all(&plan.out).map_err(|e| format!("{}: {e}", plan.out.display()))?;
    let path = plan.out.join("journal.jsonl");
    let (journal, state) = open_journal(api, &path, source.inputs(), &plan.list).await?;
    let msgpack = match plan.format {
        Format::Json => false,
        Format::Msgpack => true,
        // An empty bulk stores nothing: a safe question.
        Format::Auto => match api.bulk(Bytes::from_static(&[0x90]), true).await {
            Ok(_) => true,
            Err(Failure::Refused { .. }) => false,
            Err(Failure::Unknown(e)) => return Err(format!("{}: {e}", api.url())),
        },
    };
    let rows = state.face_ids.len() as u64;
    let before = state.acknowledged();
    let progress = if plan.progress { ProgressBar::with_draw_target(Some(rows), ProgressDrawTarget::stderr()) } else { ProgressBar::hidden() };
    let rate = |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{:.0} rows/s", s.per_sec());
    };
    progress
        .set_style(ProgressStyle::with_template("{elapsed_precise} {wide_bar} {pos}/{len} rows, {rate}, ETA {eta}").expect("template").with_key("rate", rate));
    progress.set_position(before);
    progress.reset_eta();
    let done: Vec<bool> = state.face_ids.iter().map(Option::is_some).collect();
    let shared = Arc::new(Shared {
        api: api.clone(),
        journal,
        header: state.header,
        msgpack,
        on_bad_row: plan.on_bad_row,
        sizer: Sizer::new(plan.target_latency),
        stop: AtomicBool::new(false),
        requests: AtomicU64::new(0),
        max_requests: plan.max_requests,
        progress,
        tally: Mutex::new(Tally { known: state.face_ids.iter().flatten().copied().collect(), face_ids: state.face_ids, ..Tally::default() }),
    });

    let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(plan.concurrency);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let workers: Vec<_> = (0..plan.concurrency)
        .map(|_| {
            let (s, rx) = (shared.clone(), rx.clone());
            tokio::spawn(async move {
                loop {
                    let Some(batch) = rx.lock().await.recv().await else { break };
                    process(&s, batch).await;
                }
            })
        })
        .collect();
    let producer = {
        let shared = shared.clone();
        let (in_doubt, max_body) = (state.in_doubt, plan.max_body);
        std::thread::Builder::new()
            .name("import-reader".into())
            .spawn(move || produce(source, &shared, &done, &in_doubt, max_body, tx))
            .map_err(|e| e.to_string())?
    };
    for w in workers {
        w.await.map_err(|e| e.to_string())?;
    }
    let read = producer.join().map_err(|_| "the reader panicked".to_string())?;
    let shared = Arc::into_inner(shared).expect("workers and reader are done");
    shared.progress.finish_and_clear();
    let closed = shared.journal.close();
    let mut tally = shared.tally.into_inner().expect("tally");
    let stopped = read.err().or(tally.stopped.take()).or(closed.err());
    let seconds = started.elapsed().as_secs_f64();
    tally.rejected.sort_by_key(|r| r.index);
    let summary = Summary {
        url: api.url().to_owned(),
        list_id: shared.header.list_id,
        format: if msgpack { "msgpack" } else { "json" },
        rows,
        faces: tally.faces,
        faces_before: before,
        seconds,
        faces_per_s: tally.faces as f64 / seconds,
        rejected_rows: tally.rejected.len(),
        rejected: tally.rejected,
        requests: shared.requests.load(Ordering::Relaxed),
        retries: tally.retries,
        in_doubt_stored: tally.in_doubt_stored,
        in_doubt_missing: tally.in_doubt_missing,
        last_batch_rows: shared.sizer.rows(),
        complete: false,
        stopped,
    };
    let done = before + summary.faces + summary.in_doubt_stored + summary.rejected_rows as u64;
    let summary = Summary { complete: summary.stopped.is_none() && done == rows, ..summary };
    let summary = match (&summary.stopped, summary.complete) {
        (None, false) => Summary { stopped: Some("not every row was sent".into()), ..summary },
        _ => summary,
    };
    let json = serde_json::to_vec_pretty(&summary).expect("JSON");
    std::fs::write(plan.out.join("summary.json"), json).map_err(|e| format!("{}: {e}", plan.out.display()))?;
    Ok(Outcome { summary, face_ids: tally.face_ids })
}

/// Resume the journal at `path`, or start one (creating the list if asked).
async fn open_journal(api: &Api, path: &Path, inputs: &[input::InputInfo], list: &ListChoice) -> Result<(Journal, State), String> {
    let failed = |e: Failure| format!("{}: {e}", api.url());
    if let Some(state) = State::load(path)? {
        let h = &state.header;
        if h.inputs != inputs {
            return Err(format!("{} belongs to another import (inputs {:?}); give another --out", path.display(), h.inputs));
        }
        if let ListChoice::Existing(id) = list {
            if *id != h.list_id {
                return Err(format!("{} imports into list {}, not {id}; give another --out", path.display(), h.list_id));
            }
        }
        if api.list(h.list_id).await.map_err(failed)?.is_none() {
            return Err(format!("list {} of {} is not on {}", h.list_id, path.display(), api.url()));
        }
        return Ok((Journal::append(path)?, state));
    }
    let (list_id, account_id, since) = match list {
        ListChoice::New(account) => {
            let (id, since) = api.create_list(*account, "luna-matcher import").await.map_err(failed)?;
            (id, *account, since)
        }
        ListChoice::Existing(id) => match api.list(*id).await.map_err(failed)? {
            Some((info, since)) => (*id, info.account_id, since),
            None => return Err(format!("list {id} is not on {}", api.url())),
        },
    };
    let import_id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let header = Header { journal: journal::FORMAT, import_id, url: api.url().to_owned(), list_id, account_id, since, inputs: inputs.to_vec() };
    Ok((Journal::create(path, &header)?, State::new(header)))
}

struct Shared {
    api: Api,
    journal: Journal,
    header: Header,
    msgpack: bool,
    on_bad_row: OnBadRow,
    sizer: Sizer,
    stop: AtomicBool,
    requests: AtomicU64,
    max_requests: Option<u64>,
    progress: ProgressBar,
    tally: Mutex<Tally>,
}

#[derive(Default)]
struct Tally {
    face_ids: Vec<Option<Uuid>>,
    /// Every face id acknowledged to this import.
    known: std::collections::HashSet<Uuid>,
    faces: u64,
    rejected: Vec<Rejected>,
    retries: u64,
    in_doubt_stored: u64,
    in_doubt_missing: u64,
    stopped: Option<String>,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn halt(&self, why: String) {
        self.tally.lock().expect("tally").stopped.get_or_insert(why);
        self.stop.store(true, Ordering::Relaxed);
    }

    fn reject(&self, rejected: Rejected) {
        if self.on_bad_row == OnBadRow::Stop {
            self.halt(format!("{} row {}: {}", rejected.file, rejected.row, rejected.error));
        }
        self.tally.lock().expect("tally").rejected.push(rejected);
        self.progress.inc(1);
    }

    /// Record stored rows: answered to a request of this run, or found stored when in doubt.
    fn stored(&self, rows: &[u64], face_ids: &[Uuid], found: bool) {
        self.journal.ack(rows, face_ids);
        let mut t = self.tally.lock().expect("tally");
        for (&i, &id) in rows.iter().zip(face_ids) {
            t.face_ids[i as usize] = Some(id);
            t.known.insert(id);
        }
        if found {
            t.in_doubt_stored += rows.len() as u64;
        } else {
            t.faces += rows.len() as u64;
        }
        self.progress.inc(rows.len() as u64);
    }

    /// Count a bulk request; false once `max_requests` have been sent.
    fn take_request(&self) -> bool {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        if self.max_requests.is_some_and(|max| n >= max) {
            self.requests.fetch_sub(1, Ordering::Relaxed);
            self.halt(format!("stopped after {} bulk requests (--max-requests)", n));
            return false;
        }
        true
    }
}

/// Rows per batch, steered towards the target latency and kept under what
/// the service refused as too large.
struct Sizer {
    rows: AtomicUsize,
    cap: AtomicUsize,
    target: Duration,
}

impl Sizer {
    fn new(target: Duration) -> Sizer {
        Sizer { rows: AtomicUsize::new(FIRST_ROWS), cap: AtomicUsize::new(MAX_ROWS), target }
    }

    fn rows(&self) -> usize {
        self.rows.load(Ordering::Relaxed)
    }

    fn observe(&self, sent: usize, took: Duration) {
        let current = self.rows();
        // A short last batch says little about the right size.
        if sent * 2 < current {
            return;
        }
        let factor = (self.target.as_secs_f64() / took.as_secs_f64().max(1e-3)).clamp(0.5, 2.0);
        let next = ((current as f64 * factor) as usize).clamp(MIN_ROWS, self.cap.load(Ordering::Relaxed).max(MIN_ROWS));
        self.rows.store(next, Ordering::Relaxed);
    }

    fn too_large(&self, sent: usize) {
        let cap = (sent / 2).max(1);
        self.cap.fetch_min(cap, Ordering::Relaxed);
        self.rows.fetch_min(cap, Ordering::Relaxed);
    }
}

/// A row ready to send.
#[derive(Clone)]
struct Ready {
    row: Row,
    file: Arc<str>,
    /// Its descriptor version when known locally: rows in doubt are looked up per version.
    version: Option<u32>,
    bytes: usize,
}

impl Ready {
    fn rejected(&self, code: Option<u32>, error: String) -> Rejected {
        Rejected { index: self.row.index, file: self.file.to_string(), row: self.row.row, code, error }
    }
}

struct Batch {
    rows: Vec<Ready>,
    /// Sent before without an outcome: ask the service first.
    in_doubt: bool,
}

fn produce(
    mut source: Box<dyn Source>,
    s: &Shared,
    done: &[bool],
    in_doubt: &std::collections::HashSet<u64>,
    max_body: usize,
    tx: tokio::sync::mpsc::Sender<Batch>,
) -> Result<(), String> {
    let versions = input::versions();
    let files: Vec<Arc<str>> = source.inputs().iter().map(|i| Arc::from(i.name.as_str())).collect();
    let (mut batch, mut bytes, mut doubtful) = (Vec::new(), 0usize, Vec::new());
    let send = |rows: Vec<Ready>, in_doubt: bool| tx.blocking_send(Batch { rows, in_doubt }).is_ok();
    source.read(&|i| done[i as usize], &mut |item| {
        if s.stopped() {
            return false;
        }
        let row = match item {
            Item::Row(row) => row,
            Item::Bad { index, file, row, code, error } => {
                s.reject(Rejected { index, file: files[file].to_string(), row, code, error });
                return true;
            }
        };
        let file = files[row.file].clone();
        let ready = match prepare(row, file, &s.header, &versions, s.msgpack) {
            Ok(r) => r,
            Err(rejected) => {
                s.reject(rejected);
                return true;
            }
        };
        if in_doubt.contains(&ready.row.index) {
            doubtful.push(ready);
            return doubtful.len() < RESOLVE_CHUNK * 10 || send(std::mem::take(&mut doubtful), true);
        }
        if !batch.is_empty() && (batch.len() >= s.sizer.rows() || bytes + ready.bytes > max_body) {
            bytes = 0;
            if !send(std::mem::take(&mut batch), false) {
                return false;
            }
        }
        bytes += ready.bytes;
        batch.push(ready);
        true
    })?;
    for (rows, in_doubt) in [(doubtful, true), (batch, false)] {
        if !rows.is_empty() && !s.stopped() {
            send(rows, in_doubt);
        }
    }
    Ok(())
}

/// Check a row and complete it: account, list, external id.
fn prepare(mut row: Row, file: Arc<str>, header: &Header, versions: &luna_core::descriptor::Versions, msgpack: bool) -> Result<Ready, Rejected> {
    let reject = |row: &Row, code: Option<u32>, error: String| Rejected { index: row.index, file: file.to_string(), row: row.row, code, error };
    let version = input::check(versions, &row.face).map_err(|(code, e)| reject(&row, Some(code), e))?;
    let face = &mut row.face;
    match face.account_id {
        Some(a) if a != header.account_id => {
            let e = format!("account_id {a} is not the account of list {} ({})", header.list_id, header.account_id);
            return Err(reject(&row, Some(luna_core::ErrorCode::AccountMismatch.code()), e));
        }
        _ => face.account_id = Some(header.account_id),
    }
    if !face.lists.contains(&header.list_id) {
        face.lists.push(header.list_id);
    }
    face.external_id.get_or_insert_with(|| format!("{}-{}", header.import_id, row.index));
    let data = if msgpack { face.data.len() } else { face.data.len().div_ceil(3) * 4 };
    let bytes = data + face.user_data.len() + face.external_id.as_ref().map_or(0, String::len) + 40 * face.lists.len() + 120;
    Ok(Ready { row, file, version, bytes })
}

/// Bytes: base64 text in JSON, binary in msgpack.
struct Blob<'a>(&'a [u8], bool);

impl Serialize for Blob<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.1 {
            s.serialize_bytes(self.0)
        } else {
            s.serialize_str(&super::b64(self.0))
        }
    }
}

#[derive(Serialize)]
struct WireDescriptor<'a> {
    data: Blob<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
}

#[derive(Serialize)]
struct WireFace<'a> {
    account_id: Option<Uuid>,
    descriptor: WireDescriptor<'a>,
    external_id: Option<&'a str>,
    user_data: &'a str,
    lists: &'a [Uuid],
}

fn encode(rows: &[Ready], msgpack: bool) -> Bytes {
    let faces: Vec<WireFace> = rows
        .iter()
        .map(|r| {
            let f = &r.row.face;
            WireFace {
                account_id: f.account_id,
                descriptor: WireDescriptor { data: Blob(&f.data, msgpack), version: f.version },
                external_id: f.external_id.as_deref(),
                user_data: &f.user_data,
                lists: &f.lists,
            }
        })
        .collect();
    let mut out = Vec::with_capacity(rows.iter().map(|r| r.bytes).sum());
    if msgpack {
        // Human-readable: uuids as strings, as the API reads them.
        faces.serialize(&mut rmp_serde::Serializer::new(&mut out).with_struct_map().with_human_readable()).expect("msgpack");
    } else {
        serde_json::to_writer(&mut out, &faces).expect("JSON");
    }
    out.into()
}

struct Work {
    rows: Vec<Ready>,
    in_doubt: bool,
    attempts: u32,
}

/// Send one batch until every row is stored or rejected, or the import stops.
async fn process(s: &Shared, batch: Batch) {
    let mut work = vec![Work { rows: batch.rows, in_doubt: batch.in_doubt, attempts: 0 }];
    while let Some(mut w) = work.pop() {
        if s.stopped() {
            return;
        }
        if w.in_doubt {
            match resolve(s, w.rows).await {
                Ok(missing) => w.rows = missing,
                Err(e) => return s.halt(e),
            }
            if w.rows.is_empty() {
                continue;
            }
        }
        if !s.take_request() {
            return;
        }
        let indexes: Vec<u64> = w.rows.iter().map(|r| r.row.index).collect();
        if let Err(e) = s.journal.sent(&indexes).await {
            return s.halt(e);
        }
        let started = Instant::now();
        match s.api.bulk(encode(&w.rows, s.msgpack), s.msgpack).await {
            Ok(ids) if ids.len() == indexes.len() => {
                s.sizer.observe(indexes.len(), started.elapsed());
                s.stored(&indexes, &ids, false);
            }
            Ok(ids) => return s.halt(format!("the service answered {} face ids for {} faces", ids.len(), indexes.len())),
            Err(Failure::Refused { status, code, detail }) => {
                s.journal.refused(&indexes);
                if status == 413 {
                    s.sizer.too_large(w.rows.len());
                } else if status == 404 && matches!(s.api.list(s.header.list_id).await, Ok(None)) {
                    return s.halt(format!("list {} is gone from {}", s.header.list_id, s.api.url()));
                }
                let named = (status != 413).then(|| failed_row(&detail, w.rows.len())).flatten();
                match (named, w.rows.len()) {
                    (Some((i, error)), _) => {
                        let bad = w.rows.remove(i);
                        s.reject(bad.rejected(code, error.to_owned()));
                        if !w.rows.is_empty() {
                            work.push(Work { in_doubt: false, ..w });
                        }
                    }
                    (None, 1) => s.reject(w.rows[0].rejected(code, detail)),
                    (None, n) => {
                        let second = w.rows.split_off(n / 2);
                        work.push(Work { rows: second, in_doubt: false, attempts: w.attempts });
                        work.push(Work { in_doubt: false, ..w });
                    }
                }
            }
            Err(Failure::Unknown(e)) => {
                w.attempts += 1;
                s.tally.lock().expect("tally").retries += 1;
                if w.attempts >= MAX_ATTEMPTS {
                    return s.halt(format!("no answer to a bulk request after {} attempts: {e}", w.attempts));
                }
                s.progress.suspend(|| eprintln!("bulk request of {} rows: {e}; asking which rows were stored, then resending", indexes.len()));
                tokio::time::sleep(Duration::from_millis(250 << w.attempts.min(5))).await;
                work.push(Work { in_doubt: true, ..w });
            }
        }
    }
}

/// The row an error detail names (`faces[i]: why`), and its own message.
fn failed_row(detail: &str, rows: usize) -> Option<(usize, &str)> {
    let rest = detail.strip_prefix("faces[")?;
    let (index, error) = rest.split_once("]: ")?;
    index.parse().ok().filter(|i| *i < rows).map(|i| (i, error))
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_error_detail_names_its_row() {
        assert_eq!(super::failed_row("faces[3]: version 62 takes 512 bytes", 5), Some((3, "version 62 takes 512 bytes")));
        assert_eq!(super::failed_row("faces[7]: x", 5), None);
        assert_eq!(super::failed_row("list not found", 5), None);
    }
}

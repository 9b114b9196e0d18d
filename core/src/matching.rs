//! Matching: compiled filters, the bounded top-k heap, and the engine that runs
//! queries off the HTTP threads.
//!
//! The engine owns one thread that takes queries from a channel. Whatever has
//! queued up while the previous batch ran is scanned together: each cache-sized
//! chunk of candidates is read from memory once for every query in the batch,
//! and the chunks are spread over all cores with rayon. Under load this turns a
//! memory-bound scan per request into a compute-bound scan per batch.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::RwLock;
use rayon::prelude::*;
use uuid::Uuid;

use crate::descriptor::{Dtype, VersionSpec};
use crate::errors::{Error, ErrorCode, Result};
use crate::index::{cosine, FaceAt, FaceEntry, FaceRecord, Index, Query, Vectors, VersionIndex};
use crate::kernels::{fetch_line, kernels, Kernels};
use crate::tiles::{Panels, TILE};

/// Candidates scanned per chunk: small enough to stay in L2 across a batch.
const CHUNK_BYTES: usize = 256 * 1024;
/// How many groups of four rows ahead one u8 query's scan fetches (4 KiB of
/// 512-byte rows): far enough to cover the memory's latency, within a chunk.
const FETCH_AHEAD: usize = 2;
/// The same for one f32 query (8 KiB of 2,048-byte rows).
const FETCH_AHEAD_F32: usize = 1;
/// Most sub-queries scanned in one pass.
const MAX_BATCH: usize = 256;
/// Fewest u8 queries scanned with the tile kernel, where the CPU has one:
/// below, padding a group of 32 costs more than the tiles save.
const TILE_QUERIES: usize = 8;

/// A candidate that made it into a top-k.
#[derive(Debug, Clone, Copy)]
pub struct Hit<K> {
    /// The similarity to the query, as its version reports it.
    pub similarity: f64,
    /// What the caller ranks ties by and reads the result with (a face id, a raw index).
    pub key: K,
    /// The candidate's row in the scanned vectors.
    pub slot: usize,
}

// Ordered worst first, so that the max-heap's top is the one to evict:
// lower similarity is worse, and among equals the greater key is worse.
impl<K: Ord> Ord for Hit<K> {
    fn cmp(&self, other: &Self) -> Ordering {
        other.similarity.total_cmp(&self.similarity).then_with(|| self.key.cmp(&other.key))
    }
}
impl<K: Ord> PartialOrd for Hit<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<K: Ord> PartialEq for Hit<K> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<K: Ord> Eq for Hit<K> {}

/// The best `limit` hits at or above `threshold`, and how many passed in all.
#[derive(Debug, Clone)]
pub struct TopK<K> {
    limit: usize,
    threshold: f64,
    heap: BinaryHeap<Hit<K>>,
    /// Candidates at or above the threshold, kept or not.
    pub total: u64,
    /// Candidates scored, above the threshold or not.
    pub scanned: u64,
}

impl<K: Ord + Copy> TopK<K> {
    /// Empty, keeping at most `limit` hits at or above `threshold`.
    pub fn new(limit: usize, threshold: f64) -> Self {
        TopK { limit, threshold, heap: BinaryHeap::with_capacity(limit + 1), total: 0, scanned: 0 }
    }

    /// Count a scored candidate, and keep it if it is among the best so far.
    #[inline]
    pub fn push(&mut self, hit: Hit<K>) {
        self.scanned += 1;
        if hit.similarity < self.threshold {
            return;
        }
        self.total += 1;
        self.keep(hit);
    }

    /// Score a candidate whose key is read only when it may enter the top;
    /// true when the top changed.
    #[inline]
    pub fn offer(&mut self, similarity: f64, slot: usize, key: impl FnOnce() -> K) -> bool {
        self.scanned += 1;
        if similarity < self.threshold {
            return false;
        }
        self.total += 1;
        if self.heap.len() < self.limit {
            self.heap.push(Hit { similarity, key: key(), slot });
            return true;
        }
        match self.heap.peek() {
            Some(worst) if similarity.total_cmp(&worst.similarity) != Ordering::Less => {
                let hit = Hit { similarity, key: key(), slot };
                let better = hit < *worst;
                if better {
                    self.heap.pop();
                    self.heap.push(hit);
                }
                better
            }
            _ => false,
        }
    }

    /// Count candidates decided without their exact similarity: `scanned`
    /// of them, `passed` at or above the threshold (and all below the top).
    #[inline]
    pub fn count(&mut self, scanned: u64, passed: u64) {
        self.scanned += scanned;
        self.total += passed;
    }

    /// The similarity a candidate must beat to enter the top, once it is full.
    pub fn bar(&self) -> Option<f64> {
        (self.heap.len() >= self.limit).then(|| self.heap.peek().map_or(f64::INFINITY, |worst| worst.similarity))
    }

    fn keep(&mut self, hit: Hit<K>) {
        if self.heap.len() < self.limit {
            self.heap.push(hit);
        } else if self.heap.peek().is_some_and(|worst| hit < *worst) {
            self.heap.pop();
            self.heap.push(hit);
        }
    }

    /// Take in the hits and counts of a top-k of another chunk of the same query.
    pub fn merge(&mut self, other: TopK<K>) {
        self.total += other.total;
        self.scanned += other.scanned;
        for hit in other.heap {
            self.keep(hit);
        }
    }

    /// Best first.
    pub fn into_sorted(self) -> Vec<Hit<K>> {
        self.heap.into_sorted_vec()
    }
}

/// Score rows `range` of `vectors` against `query` into `top`, skipping rows `pass` refuses.
#[inline]
pub fn scan<K: Ord + Copy>(
    k: &Kernels,
    vectors: &Vectors,
    query: &Query,
    range: Range<usize>,
    pass: impl Fn(usize) -> bool,
    key: impl Fn(usize) -> K,
    top: &mut TopK<K>,
) {
    for row in range {
        if pass(row) {
            top.push(Hit { similarity: vectors.similarity(k, query, row), key: key(row), slot: row });
        }
    }
}

/// The filters of a candidate set, compiled for a per-face check.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Faces of this account.
    pub account_id: Option<Uuid>,
    /// Faces attached to this list.
    pub list_id: Option<Uuid>,
    /// When set, only these faces are candidates: they are looked up, not
    /// scanned for. Sorted and without repeats.
    pub face_ids: Option<Vec<Uuid>>,
    /// Faces with one of these external ids.
    pub external_ids: Option<HashSet<String>>,
    /// Faces whose `user_data` is exactly this.
    pub user_data: Option<String>,
    /// Created at or after (microseconds since the epoch).
    pub create_time_gte: Option<i64>,
    /// Created before (microseconds since the epoch).
    pub create_time_lt: Option<i64>,
    /// Face ids from this one on.
    pub face_id_gte: Option<Uuid>,
    /// Face ids below this one.
    pub face_id_lt: Option<Uuid>,
}

impl Filter {
    /// Whether a face is a candidate.
    pub fn pass(&self, at: &FaceAt) -> bool {
        let f = at.entry();
        self.account_id.is_none_or(|a| at.account_id() == a)
            && self.list_id.is_none_or(|l| at.in_list(&l))
            && self.face_ids.as_ref().is_none_or(|ids| ids.binary_search(&f.face_id).is_ok())
            && self.pass_entry(f)
    }

    /// Whether a face passes the filters [`Filter::needs_record`] names.
    #[inline]
    pub fn pass_entry(&self, f: &FaceEntry) -> bool {
        self.create_time_gte.is_none_or(|t| f.create_time >= t)
            && self.create_time_lt.is_none_or(|t| f.create_time < t)
            && self.face_id_gte.is_none_or(|id| f.face_id >= id)
            && self.face_id_lt.is_none_or(|id| f.face_id < id)
            && self.user_data.as_ref().is_none_or(|u| f.user_data() == u)
            && self.external_ids.as_ref().is_none_or(|ids| f.external_id().is_some_and(|e| ids.contains(e)))
    }

    /// Whether a filter other than the account, the list and `face_ids` is set: those read the face's record.
    pub fn needs_record(&self) -> bool {
        self.external_ids.is_some()
            || self.user_data.is_some()
            || self.create_time_gte.is_some()
            || self.create_time_lt.is_some()
            || self.face_id_gte.is_some()
            || self.face_id_lt.is_some()
    }
}

/// One (reference, candidate set) pair.
pub struct SubQuery {
    /// The descriptor version scanned.
    pub version: u32,
    /// The reference, prepared for the kernels.
    pub query: Arc<Query>,
    /// Which faces are candidates.
    pub filter: Filter,
    /// Most hits to keep.
    pub limit: usize,
    /// Least similarity a hit needs.
    pub threshold: f64,
}

/// A sub-query's answer: the hits, best first, with their faces, and the count before the limit.
#[derive(Debug)]
pub struct SubResult {
    /// Similarity and face, best first.
    pub hits: Vec<(f64, FaceRecord)>,
    /// Candidates that passed the filters and the threshold.
    pub total_found: u64,
    /// Candidates scored.
    pub candidates_scanned: u64,
}

type Reply = tokio::sync::oneshot::Sender<Result<Vec<SubResult>>>;

enum Job {
    Faces(Vec<SubQuery>, Reply),
    Task(Box<dyn FnOnce() + Send>),
}

/// Runs matching on its own threads and answers through futures, so callers on
/// async runtimes never block.
#[derive(Clone)]
pub struct Engine {
    tx: Sender<Job>,
}

impl Engine {
    /// Start the batcher thread and a pool of `threads` scanning threads over `index`.
    pub fn start(index: Arc<RwLock<Index>>, threads: usize) -> Engine {
        let (tx, rx) = crossbeam_channel::unbounded();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("matcher-{i}")).build().expect("matching thread pool");
        std::thread::Builder::new().name("matcher-batcher".into()).spawn(move || batch_loop(rx, index, pool)).expect("matching batcher thread");
        Engine { tx }
    }

    /// Scan for every sub-query, batched with whatever else is queued; one result per sub-query, in order.
    pub async fn match_faces(&self, subs: Vec<SubQuery>) -> Result<Vec<SubResult>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx.send(Job::Faces(subs, reply)).map_err(|_| engine_gone())?;
        answer.await.map_err(|_| engine_gone())?
    }

    /// Run `work` on the matching threads and await its result.
    pub async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(move || {
            let _ = reply.send(guarded(work));
        })?;
        answer.await.map_err(|_| engine_gone())?
    }

    /// Queue `work` for the matching threads, between batches, and return at
    /// once. A panic in it is logged; the engine goes on.
    pub fn submit(&self, work: impl FnOnce() + Send + 'static) -> Result<()> {
        let task = move || {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).is_err() {
                log::error!("a task on the matching threads panicked");
            }
        };
        self.tx.send(Job::Task(Box::new(task))).map_err(|_| engine_gone())
    }
}

fn engine_gone() -> Error {
    Error::new(ErrorCode::Internal, "the matching engine stopped")
}

fn panicked() -> Error {
    Error::new(ErrorCode::Internal, "matching failed unexpectedly")
}

/// `work`'s result, or an internal error if it panicked: a bug in a scan
/// fails its request, never the thread that ran it.
pub(crate) fn guarded<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|_| Err(panicked()))
}

fn batch_loop(rx: Receiver<Job>, index: Arc<RwLock<Index>>, pool: rayon::ThreadPool) {
    while let Ok(first) = rx.recv() {
        let mut batch: Vec<(Vec<SubQuery>, Reply)> = Vec::new();
        let mut queued = 0;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Task(task) => pool.install(task),
                Job::Faces(subs, reply) => {
                    queued += subs.len();
                    batch.push((subs, reply));
                }
            }
            if queued < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        let subs: Vec<&SubQuery> = batch.iter().flat_map(|(s, _)| s.iter()).collect();
        let results = {
            let index = index.read();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.install(|| run_batch(&index, &subs))))
        };
        drop(subs);
        match results {
            Ok(results) => {
                let mut results = results.into_iter();
                for (subs, reply) in batch {
                    let _ = reply.send(Ok(results.by_ref().take(subs.len()).collect()));
                }
            }
            Err(_) => {
                log::error!("a matching batch panicked; its requests get error {}", ErrorCode::Internal.code());
                for (_, reply) in batch {
                    let _ = reply.send(Err(panicked()));
                }
            }
        }
    }
}

/// Answer every sub-query of a batch, in order.
///
/// Sub-queries with `face_ids` look their faces up. The others are grouped by
/// version and list: a group scans its list's members (or every face of the
/// version when it names no list) once, chunk by chunk over all cores, each
/// chunk scored against every query of the group with the block kernels.
pub fn run_batch(index: &Index, subs: &[&SubQuery]) -> Vec<SubResult> {
    run_batch_with(kernels(), index, subs)
}

/// [`run_batch`] with kernels `k`, for benches that compare kernels.
pub fn run_batch_with(k: &Kernels, index: &Index, subs: &[&SubQuery]) -> Vec<SubResult> {
    let mut tops: Vec<TopK<Uuid>> = subs.iter().map(|s| TopK::new(s.limit, s.threshold)).collect();
    let mut groups: BTreeMap<(u32, Option<Uuid>), Vec<usize>> = BTreeMap::new();
    for (i, s) in subs.iter().enumerate() {
        let Some(vi) = index.versions.get(&s.version) else { continue };
        match s.filter.face_ids.as_deref() {
            Some(ids) => {
                for id in ids {
                    if let Some(at) = index.face(id).filter(|at| at.version == s.version && s.filter.pass(at)) {
                        scan(k, &vi.vectors, &s.query, at.slot..at.slot + 1, |_| true, |_| *id, &mut tops[i]);
                    }
                }
            }
            None => groups.entry((s.version, s.filter.list_id)).or_default().push(i),
        }
    }
    for ((version, list), group) in groups {
        let vi = &index.versions[&version];
        let candidates = match list {
            Some(list) => Candidates::Slots(vi.members(&list)),
            None => Candidates::All(vi.len()),
        };
        let group_subs: Vec<&SubQuery> = group.iter().map(|&i| subs[i]).collect();
        for (top, &i) in scan_group(k, index, vi, candidates, &group_subs).into_iter().zip(&group) {
            tops[i] = top;
        }
    }
    tops.into_iter()
        .zip(subs)
        .map(|(top, s)| {
            let (total_found, candidates_scanned) = (top.total, top.scanned);
            let hits = top.into_sorted().into_iter().map(|h| (h.similarity, index.at(s.version, h.slot).record())).collect();
            SubResult { hits, total_found, candidates_scanned }
        })
        .collect()
}

/// The slots a scan reads: all `n` rows, or these.
#[derive(Clone, Copy)]
pub(crate) enum Candidates<'a> {
    All(usize),
    Slots(&'a [u32]),
}

impl Candidates<'_> {
    fn len(&self) -> usize {
        match self {
            Candidates::All(n) => *n,
            Candidates::Slots(slots) => slots.len(),
        }
    }

    fn slots(&self, range: Range<usize>) -> Cow<'_, [u32]> {
        match self {
            Candidates::All(_) => Cow::Owned(range.map(|r| r as u32).collect()),
            Candidates::Slots(slots) => Cow::Borrowed(&slots[range]),
        }
    }
}

/// Scan `candidates` of `vi` for every sub-query of a group (one version, one source).
fn scan_group(k: &Kernels, index: &Index, vi: &VersionIndex, candidates: Candidates, subs: &[&SubQuery]) -> Vec<TopK<Uuid>> {
    let checks: Vec<RowCheck> = subs.iter().map(|s| RowCheck::new(index, &s.filter)).collect();
    let queries: Vec<(&Query, usize, f64)> = subs.iter().map(|s| (&*s.query, s.limit, s.threshold)).collect();
    let takes_all: Vec<bool> = checks.iter().map(RowCheck::takes_all).collect();
    scan_many(k, &vi.vectors, candidates, &queries, &takes_all, |q, slot| checks[q].pass(vi, slot), |slot| vi.entry(slot).face_id)
}

/// Scan `candidates` of `vectors` for every `(query, limit, threshold)`, in
/// cache-sized chunks spread over the current rayon pool; `pass(q, slot)`
/// says whether a slot is a candidate of query `q` (never asked when
/// `takes_all[q]`), `key(slot)` orders ties.
pub(crate) fn scan_many<K: Ord + Copy + Send>(
    k: &Kernels,
    vectors: &Vectors,
    candidates: Candidates,
    queries: &[(&Query, usize, f64)],
    takes_all: &[bool],
    pass: impl Fn(usize, usize) -> bool + Sync,
    key: impl Fn(usize) -> K + Sync,
) -> Vec<TopK<K>> {
    let spec = vectors.spec;
    let chunk = (CHUNK_BYTES / vectors.rows.row_bytes()).max(4);
    let prepared = match spec.dtype {
        Dtype::U8 => {
            let parts: Vec<(&[i8], i32)> = queries.iter().map(|q| q.0.u8_parts().expect("a u8 query for a u8 version")).collect();
            let panels = (k.tile_u8.is_some() && parts.len() >= TILE_QUERIES)
                .then(|| Panels::new(&parts.iter().map(|p| p.0).collect::<Vec<_>>(), vectors.rows.row_bytes() / 64));
            Queries::U8(parts, panels)
        }
        Dtype::F32 => Queries::F32(queries.iter().map(|q| q.0.f32_values().expect("an f32 query for an f32 version")).collect()),
    };
    let fresh = || queries.iter().zip(takes_all).map(|(&(q, limit, threshold), &all)| Scorer::new(spec, q, limit, threshold, all)).collect::<Vec<_>>();
    (0..candidates.len().div_ceil(chunk))
        .into_par_iter()
        .fold(fresh, |mut scorers, c| {
            let slots = candidates.slots(c * chunk..((c + 1) * chunk).min(candidates.len()));
            score_chunk(k, vectors, &slots, &prepared, &pass, &key, &mut scorers);
            scorers
        })
        .reduce(fresh, |mut a, b| {
            a.iter_mut().zip(b).for_each(|(x, y)| x.top.merge(y.top));
            a
        })
        .into_iter()
        .map(|s| s.top)
        .collect()
}

/// The queries of a group, as the block kernels take them.
enum Queries<'a> {
    /// Shifted query and the sum of its values; laid out for the tile
    /// kernel when it runs them.
    U8(Vec<(&'a [i8], i32)>, Option<Panels>),
    F32(Vec<&'a [f32]>),
}

/// Score rows `slots` against every query: 32 rows by 32 queries with the
/// tile kernel, else four rows by four queries.
fn score_chunk<K: Ord + Copy>(
    k: &Kernels,
    vectors: &Vectors,
    slots: &[u32],
    queries: &Queries,
    pass: &impl Fn(usize, usize) -> bool,
    key: &impl Fn(usize) -> K,
    scorers: &mut [Scorer<K>],
) {
    let rows = &vectors.rows;
    // Query q's dot products with the rows `block` offered to its top.
    let offer = |scorer: &mut Scorer<K>, q: usize, block: &[u32], norms: &[f64], dots: &[f64]| {
        if scorer.every_row_passes {
            // Every row is a candidate and reaches the threshold: one test
            // over the whole block, free of branches, says which rows cannot
            // enter the top; only the others are looked at one by one.
            let below = scorer.worst.below_mask(&dots[..block.len()], &norms[..block.len()]);
            // The rows left, lowest first: one step each, not one a row of the block.
            let mut open = !below & (u64::MAX >> (64 - block.len()));
            let mut offered = 0;
            while open != 0 {
                let i = open.trailing_zeros() as usize;
                open &= open - 1;
                offered += 1;
                scorer.offer_exact(dots[i], block[i] as usize, norms[i], || key(block[i] as usize));
            }
            let decided = block.len() as u64 - offered;
            scorer.top.count(decided, decided);
            return;
        }
        // Counted here and added once: a counter in memory per candidate would chain them.
        let (mut decided, mut passed) = (0, 0);
        for (ri, &slot) in block.iter().enumerate() {
            let slot = slot as usize;
            if pass(q, slot) {
                match scorer.decide(dots[ri], norms[ri]) {
                    Some(p) => {
                        decided += 1;
                        passed += p as u64;
                    }
                    None => scorer.offer_exact(dots[ri], slot, norms[ri], || key(slot)),
                }
            }
        }
        scorer.top.count(decided, passed);
    };
    if let (Queries::U8(qs, Some(panels)), Some(tile)) = (queries, k.tile_u8) {
        let stride = rows.row_bytes();
        let mut staging = Vec::new();
        let mut out = [[0; TILE]; TILE];
        for block in slots.chunks(TILE) {
            let first = block[0] as usize;
            // Consecutive slots are read in place; others (a list's members,
            // a short tail) are copied next to each other first.
            let span = if block.len() == TILE && block[TILE - 1] as usize == first + TILE - 1 {
                rows.u8_rows(first, TILE)
            } else {
                staging.clear();
                staging.resize(TILE * stride, 0);
                for (i, &slot) in block.iter().enumerate() {
                    staging[i * stride..(i + 1) * stride].copy_from_slice(rows.u8_row(slot as usize));
                }
                &staging[..]
            };
            let mut norms = [0.0; TILE];
            for (n, &slot) in norms.iter_mut().zip(block) {
                *n = vectors.norms2[slot as usize];
            }
            for group in 0..panels.groups() {
                tile(span, stride, panels, group, &mut out);
                for (q, &(_, sum)) in qs.iter().enumerate().skip(group * TILE).take(TILE) {
                    let column = q - group * TILE;
                    let mut dots = [0.0; TILE];
                    for (d, row) in dots.iter_mut().zip(&out) {
                        *d = f64::from(row[column] - 128 * sum);
                    }
                    offer(&mut scorers[q], q, block, &norms, &dots);
                }
            }
        }
        return;
    }
    // Four rows at a time, unless one test rules them all out first (most
    // blocks of a full top, at a multiply and a compare a row). The test
    // reads two dense columns, each query's bound and the rows it skipped,
    // not its scorer: a batch's scorers overflow the L1 cache the rows and
    // the queries pass through. Counted once a chunk.
    let mut bounds: Vec<f64> = scorers.iter().map(|s| s.skip_below).collect();
    let mut skipped = vec![0u64; scorers.len()];
    for (g, block) in slots.chunks(4).enumerate() {
        // A short tail repeats its last row; the repeats are not offered.
        let at = |i: usize| block[i.min(block.len() - 1)] as usize;
        // Row i of the group `groups` on, to fetch meanwhile (near the chunk's end, row i again).
        let ahead = |groups: usize, i: usize| slots.get((g + groups) * 4 + i).map_or(at(i), |&s| s as usize);
        let norms = four(|i| vectors.norms2[at(i)]);
        let row_norms = four(|i| norms[i].sqrt());
        // Query q's dots with the block: its scorer left alone while the rows are skipped.
        let mut offer4 = |scorers: &mut [Scorer<K>], q: usize, dots: [f64; 4]| {
            if all_below(bounds[q], &dots, &row_norms) {
                skipped[q] += block.len() as u64;
            } else {
                offer(&mut scorers[q], q, block, &norms, &dots);
                bounds[q] = scorers[q].skip_below;
            }
        };
        match queries {
            Queries::U8(qs, _) => {
                let r = four(|i| rows.u8_row(at(i)));
                let next = four(|i| rows.u8_row(ahead(FETCH_AHEAD, i)));
                if let [(q, sum)] = qs[..] {
                    let dots = (k.rows_u8)(&r, q, &next);
                    offer4(scorers, 0, four(|i| f64::from(dots[i] - 128 * sum)));
                    continue;
                }
                let fetch = Fetch::new(next, qs.len().div_ceil(4));
                for (j, q0) in (0..qs.len()).step_by(4).enumerate() {
                    fetch.share(j);
                    let dots = (k.block_u8)(&r, &four(|i| qs[(q0 + i).min(qs.len() - 1)].0));
                    for (qi, d) in dots.iter().enumerate().take(qs.len() - q0) {
                        let sum = qs[q0 + qi].1;
                        offer4(scorers, q0 + qi, four(|i| f64::from(d[i] - 128 * sum)));
                    }
                }
            }
            Queries::F32(qs) => {
                let r = four(|i| rows.f32_row(at(i)));
                if let [q] = qs[..] {
                    let next = four(|i| rows.f32_row(ahead(FETCH_AHEAD_F32, i)));
                    let dots = (k.rows_f32)(&r, q, &next);
                    offer4(scorers, 0, four(|i| f64::from(dots[i])));
                    continue;
                }
                let fetch = Fetch::new(four(|i| rows.u8_row(ahead(FETCH_AHEAD_F32, i))), qs.len().div_ceil(4));
                for (j, q0) in (0..qs.len()).step_by(4).enumerate() {
                    fetch.share(j);
                    let dots = (k.block_f32)(&r, &four(|i| qs[(q0 + i).min(qs.len() - 1)]));
                    for (qi, d) in dots.iter().enumerate().take(qs.len() - q0) {
                        offer4(scorers, q0 + qi, four(|i| f64::from(d[i])));
                    }
                }
            }
        }
    }
    // Skipped rows were candidates that reached the threshold, below the top.
    for (scorer, &n) in scorers.iter_mut().zip(&skipped) {
        scorer.top.count(n, n);
    }
}

/// The cache lines of the rows scored next, fetched a share at a time:
/// each of a block's query groups fetches its share, so that they arrive
/// while this block is scored. The hardware prefetcher alone left 4 x 4
/// batches waiting on memory (32 queries, u8 or f32: 0.8x to 0.85x the
/// time with these fetches, on Zen 5; 256 queries level).
struct Fetch<'a> {
    rows: [&'a [u8]; 4],
    /// Cache lines a row.
    lines: usize,
    per_share: usize,
}

impl<'a> Fetch<'a> {
    #[inline(always)]
    fn new(rows: [&'a [u8]; 4], shares: usize) -> Self {
        let lines = rows[0].len() / 64;
        Fetch { rows, lines, per_share: (4 * lines).div_ceil(shares) }
    }

    /// Fetch share `j`. A division a line spaces the fetches out: 16 back
    /// to back (32 f32 queries) stalled the kernel's own loads, 1.2x the time.
    #[inline(always)]
    fn share(&self, j: usize) {
        let first = j * self.per_share;
        for line in first..(first + self.per_share).min(4 * self.lines) {
            fetch_line(self.rows[line / self.lines].as_ptr().wrapping_add(line % self.lines * 64));
        }
    }
}

/// `[f(0), f(1), f(2), f(3)]`, inlined in whichever crate compiles the
/// scan: `array::map` and `array::from_fn` were left out of line, a call per
/// element, in luna-actors' build of `FlatIndex<String>`'s scan (1.25x the
/// engine's time on the same rows).
#[inline(always)]
fn four<T>(mut f: impl FnMut(usize) -> T) -> [T; 4] {
    [f(0), f(1), f(2), f(3)]
}

/// A group member's filters as a per-slot check: the account from the
/// interned column, the record only for the filters that need it. The list
/// needs no check: a group scans its list's members.
struct RowCheck<'a> {
    account: Option<u32>,
    record: Option<&'a Filter>,
}

impl<'a> RowCheck<'a> {
    fn new(index: &Index, filter: &'a Filter) -> Self {
        // An account no face has matches nothing.
        let account = filter.account_id.map(|a| index.account_key(&a).unwrap_or(u32::MAX));
        RowCheck { account, record: filter.needs_record().then_some(filter) }
    }

    /// Whether every slot passes.
    fn takes_all(&self) -> bool {
        self.account.is_none() && self.record.is_none()
    }

    #[inline]
    fn pass(&self, vi: &VersionIndex, slot: usize) -> bool {
        self.account.is_none_or(|a| vi.accounts()[slot] == a) && self.record.is_none_or(|f| f.pass_entry(vi.entry(slot)))
    }
}

/// One query's top during a scan, with the cosines that decide most
/// candidates before their exact similarity is computed.
struct Scorer<K> {
    top: TopK<K>,
    spec: VersionSpec,
    norm2: f64,
    /// Surely below the threshold under `threshold.0`, surely at or above it from `threshold.1`.
    threshold: (Bar, Bar),
    /// Surely below the worst of a full top.
    worst: Bar,
    /// Every row is a candidate and reaches the threshold: only the top decides.
    every_row_passes: bool,
    /// `worst` as a bound on a dot product over a row's norm, when
    /// `every_row_passes` (else -inf): see [`Bar::dot_bound`].
    skip_below: f64,
}

impl<K: Ord + Copy> Scorer<K> {
    /// `takes_all`: every row is a candidate (no filter to check).
    fn new(spec: VersionSpec, query: &Query, limit: usize, threshold: f64, takes_all: bool) -> Self {
        let norm2 = query.norm2();
        let (lo, hi) = spec.cosine_bounds(threshold);
        let mut scorer = Scorer {
            top: TopK::new(limit, threshold),
            spec,
            norm2,
            threshold: (Bar::new(lo, norm2), Bar::new(hi, norm2)),
            worst: Bar::NONE,
            every_row_passes: takes_all && hi == f64::NEG_INFINITY,
            skip_below: f64::NEG_INFINITY,
        };
        scorer.raise_bar();
        scorer
    }

    fn raise_bar(&mut self) {
        if let Some(bar) = self.top.bar() {
            self.worst = Bar::new(self.spec.cosine_bounds(bar).0, self.norm2);
            if self.every_row_passes {
                self.skip_below = self.worst.dot_bound(self.norm2);
            }
        }
    }

    /// Whether a candidate reaches the threshold, when its dot product
    /// decides that and keeps it out of the top; None when only its exact
    /// similarity can tell.
    #[inline]
    fn decide(&self, dot: f64, row_norm2: f64) -> Option<bool> {
        if self.threshold.1.c == f64::NEG_INFINITY {
            // Every candidate reaches the threshold (the usual 0): one test
            // decides most. A non-finite dot is never below a positive bar
            // but -inf, whose similarity is that of a zero cosine: below it too.
            return self.worst.below(dot, row_norm2).then_some(true);
        }
        // A non-finite dot (f32 overflow) is not a cosine: the exact path says what it scores.
        if !dot.is_finite() {
            return None;
        }
        if self.threshold.0.below(dot, row_norm2) {
            return Some(false);
        }
        (self.worst.below(dot, row_norm2) && !self.threshold.1.below(dot, row_norm2)).then_some(true)
    }

    /// Offer a candidate with its exact similarity.
    fn offer_exact(&mut self, dot: f64, slot: usize, row_norm2: f64, key: impl FnOnce() -> K) {
        let similarity = self.spec.calibrate(cosine(dot, self.norm2, row_norm2));
        if self.top.offer(similarity, slot, key) {
            self.raise_bar();
        }
    }
}

/// Whether each of four dot products is under `b` times its row's norm
/// ([`Scorer::skip_below`]): then the four rows stay out of the top.
#[inline(always)]
fn all_below(b: f64, dots: &[f64; 4], row_norms: &[f64; 4]) -> bool {
    // `&`, not `&&`: four compares in two vector instructions, no branch between them.
    (dots[0] < b * row_norms[0]) & (dots[1] < b * row_norms[1]) & (dots[2] < b * row_norms[2]) & (dots[3] < b * row_norms[3])
}

/// A cosine bound, squared and scaled by the query's squared norm, so that a
/// candidate is tested with products only: `cos < c` is
/// `dot < c * sqrt(norm2 * row_norm2)`.
#[derive(Clone, Copy)]
struct Bar {
    c: f64,
    c2_norm2: f64,
}

impl Bar {
    const NONE: Bar = Bar { c: f64::NEG_INFINITY, c2_norm2: f64::INFINITY };

    fn new(c: f64, norm2: f64) -> Bar {
        Bar { c, c2_norm2: c * c * norm2 }
    }

    /// A bound `b` such that `dot < b * row_norm` (the row's norm, not its
    /// square) says [`Bar::below`], rounding included; -inf, which says
    /// nothing, unless `c` is positive and finite. A NaN never passes it.
    fn dot_bound(&self, norm2: f64) -> f64 {
        // The margin covers the roundings of this product and the test's.
        if self.c > 0.0 && self.c.is_finite() {
            self.c * norm2.sqrt() * (1.0 - 1e-9)
        } else {
            f64::NEG_INFINITY
        }
    }

    /// [`Bar::below`] for each row of a block (at most 64), as a bit mask.
    #[inline]
    fn below_mask(&self, dots: &[f64], row_norms2: &[f64]) -> u64 {
        dots.iter().zip(row_norms2).enumerate().fold(0, |mask, (i, (&dot, &n))| mask | u64::from(self.below(dot, n)) << i)
    }

    /// Whether a finite dot product's cosine with a row of `row_norm2` is below `c`
    /// (a zero vector's cosine counts as 0, as [`cosine`] makes it). Without
    /// branches (`|`, `&`), so that a block's tests run as vector compares.
    #[inline]
    fn below(&self, dot: f64, row_norm2: f64) -> bool {
        if self.c > 0.0 {
            (dot <= 0.0) | (dot * dot < self.c2_norm2 * row_norm2)
        } else {
            (dot < 0.0) & (dot * dot > self.c2_norm2 * row_norm2)
        }
    }
}

//! Matching: compiled filters, the bounded top-k heap, and the engine that runs
//! queries off the HTTP threads.
//!
//! The engine owns one thread that takes queries from a channel. Whatever has
//! queued up while the previous batch ran is scanned together: each cache-sized
//! chunk of candidates is read from memory once for every query in the batch,
//! and the chunks are spread over all cores with rayon. Under load this turns a
//! memory-bound scan per request into a compute-bound scan per batch.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::RwLock;
use rayon::prelude::*;
use uuid::Uuid;

use crate::errors::{Error, ErrorCode, Result};
use crate::index::{FaceRecord, Index, Query, Vectors};
use crate::kernels::{kernels, Kernels};

/// Candidates scanned per chunk: small enough to stay in L2 across a batch.
const CHUNK_BYTES: usize = 256 * 1024;
/// Most sub-queries scanned in one pass.
const MAX_BATCH: usize = 256;

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
    #[inline]
    pub fn pass(&self, f: &FaceRecord) -> bool {
        self.account_id.is_none_or(|a| f.account_id == a)
            && self.list_id.is_none_or(|l| f.lists.contains(&l))
            && self.create_time_gte.is_none_or(|t| f.create_time >= t)
            && self.create_time_lt.is_none_or(|t| f.create_time < t)
            && self.face_id_gte.is_none_or(|id| f.face_id >= id)
            && self.face_id_lt.is_none_or(|id| f.face_id < id)
            && self.user_data.as_ref().is_none_or(|u| f.user_data == *u)
            && self.external_ids.as_ref().is_none_or(|ids| f.external_id.as_ref().is_some_and(|e| ids.contains(e)))
            && self.face_ids.as_ref().is_none_or(|ids| ids.binary_search(&f.face_id).is_ok())
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
        let task = move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|_| Err(panicked()));
            let _ = reply.send(out);
        };
        self.tx.send(Job::Task(Box::new(task))).map_err(|_| engine_gone())?;
        answer.await.map_err(|_| engine_gone())?
    }
}

fn engine_gone() -> Error {
    Error::new(ErrorCode::Internal, "the matching engine stopped")
}

fn panicked() -> Error {
    Error::new(ErrorCode::Internal, "matching failed unexpectedly")
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
pub fn run_batch(index: &Index, subs: &[&SubQuery]) -> Vec<SubResult> {
    let k = kernels();
    let mut tops: Vec<TopK<Uuid>> = subs.iter().map(|s| TopK::new(s.limit, s.threshold)).collect();
    let mut versions: Vec<u32> = subs.iter().map(|s| s.version).collect();
    versions.sort_unstable();
    versions.dedup();
    for version in versions {
        let Some(vi) = index.versions.get(&version) else { continue };
        let (listed, scanned): (Vec<usize>, Vec<usize>) =
            (0..subs.len()).filter(|&i| subs[i].version == version).partition(|&i| subs[i].filter.face_ids.is_some());
        for &i in &listed {
            let s = subs[i];
            for id in s.filter.face_ids.as_deref().unwrap_or_default() {
                if let Some(at) = index.face(id).filter(|at| at.version == version && s.filter.pass(at.record())) {
                    scan(k, &vi.vectors, &s.query, at.slot..at.slot + 1, |_| true, |_| *id, &mut tops[i]);
                }
            }
        }
        if scanned.is_empty() || vi.faces.is_empty() {
            continue;
        }
        let chunk = (CHUNK_BYTES / vi.vectors.rows.row_bytes()).max(1);
        let fresh = || scanned.iter().map(|&i| TopK::new(subs[i].limit, subs[i].threshold)).collect::<Vec<_>>();
        let merged = (0..vi.faces.len().div_ceil(chunk))
            .into_par_iter()
            .fold(fresh, |mut local, c| {
                let rows = c * chunk..((c + 1) * chunk).min(vi.faces.len());
                for (top, &i) in local.iter_mut().zip(&scanned) {
                    let s = subs[i];
                    scan(k, &vi.vectors, &s.query, rows.clone(), |r| s.filter.pass(&vi.faces[r]), |r| vi.faces[r].face_id, top);
                }
                local
            })
            .reduce(fresh, |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| x.merge(y));
                a
            });
        for (top, &i) in merged.into_iter().zip(&scanned) {
            tops[i] = top;
        }
    }
    tops.into_iter()
        .zip(subs)
        .map(|(top, s)| {
            let (total_found, candidates_scanned) = (top.total, top.scanned);
            let vi = index.versions.get(&s.version);
            let hits = top.into_sorted().into_iter().map(|h| (h.similarity, vi.expect("hits come from a version").faces[h.slot].clone())).collect();
            SubResult { hits, total_found, candidates_scanned }
        })
        .collect()
}

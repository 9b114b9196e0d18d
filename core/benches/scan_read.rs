//! One query against 1M faces through the engine, u8 then f32, each timed in
//! turn with a plain read of the same rows on the same threads (each thread
//! summing its half front to back, as numpy's two-thread read does): the
//! memory bandwidth of this host moves within minutes, so the ratio is taken
//! per pair of runs, not between two benchmarks minutes apart.
//!
//! `cargo bench -p luna-core --bench scan_read [-- FACES [PAIRS]]`
//! (1,000,000 faces, 40 pairs). With `LUNA_BENCH_DATA=dir` the rows and the
//! query come from `scripts/bench-kernels`' files; the f32 rows are the same
//! faces as `(q - 128) / 128`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{build_index, spec, to_f32, u8_data};
use luna_core::descriptor::Dtype;
use luna_core::index::Query;
use luna_core::matching::{run_batch, Filter, SubQuery};
use rayon::prelude::*;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.replace('_', "").parse().ok()).collect();
    let faces = args.first().copied().unwrap_or(1_000_000);
    let pairs = args.get(1).copied().unwrap_or(40);
    let pool = rayon::ThreadPoolBuilder::new().build().expect("pool");
    let (rows, query) = u8_data(faces);
    let f32 = (to_f32(&rows), to_f32(&query));
    measure(&pool, Dtype::U8, rows, &query, pairs);
    measure(&pool, Dtype::F32, f32.0, &f32.1, pairs);
}

/// `pairs` pairs of (read, scan) over `rows` of `dtype`, printed as medians.
/// The rows are freed once the index holds them, as in the service (kept,
/// the u8 ratio read a median 1.55x on the AMD machine, against 1.32x freed).
fn measure(pool: &rayon::ThreadPool, dtype: Dtype, rows: Vec<u8>, query: &[u8], pairs: usize) {
    let spec = spec(dtype);
    let faces = rows.len() / spec.payload_len();
    let index = build_index(dtype, &rows);
    drop(rows);
    let stored = index.versions[&1].vectors.rows.u8_rows(0, faces);
    let sub = SubQuery { version: 1, query: Arc::new(Query::new(&spec, query)), filter: Filter::default(), limit: 10, threshold: 0.0 };
    let threads = pool.current_num_threads();
    let read = || pool.install(|| read_all(stored, threads));
    let scan = || pool.install(|| run_batch(&index, &[&sub]));
    // Warm both paths (page tables, pool threads) before timing.
    for _ in 0..3 {
        black_box(read());
        black_box(scan());
    }
    let (mut reads, mut scans, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..pairs {
        // Which goes first alternates, so neither always follows the other.
        let (r, s) = if i % 2 == 0 {
            let r = timed(read);
            (r, timed(scan))
        } else {
            let s = timed(scan);
            (timed(read), s)
        };
        reads.push(r.as_secs_f64());
        scans.push(s.as_secs_f64());
        ratios.push(s.as_secs_f64() / r.as_secs_f64());
    }
    let bytes = stored.len() as f64;
    let (read, scan, ratio) = (median(&mut reads), median(&mut scans), median(&mut ratios));
    let low = ratios[ratios.len() / 10];
    let high = ratios[ratios.len() * 9 / 10];
    println!("{faces} {dtype:?} faces ({:.0} MB), {threads} threads, {pairs} pairs, medians:", bytes / 1e6);
    println!("  read   {:7.2} ms  {:5.1} GB/s", read * 1e3, bytes / read / 1e9);
    println!("  scan   {:7.2} ms  {:5.1} GB/s", scan * 1e3, bytes / scan / 1e9);
    println!("  scan / read, per pair: median {ratio:.2}x (10th to 90th percentile {low:.2}x to {high:.2}x)");
}

/// Sum `bytes` as u64 words, each of `threads` threads its own contiguous share.
fn read_all(bytes: &[u8], threads: usize) -> u64 {
    let share = bytes.len().div_ceil(threads).next_multiple_of(64);
    bytes.par_chunks(share).with_max_len(1).map(sum_words).reduce(|| 0, u64::wrapping_add)
}

/// Eight independent lanes, so the loop is bound by loads, not by one chain of adds.
fn sum_words(bytes: &[u8]) -> u64 {
    let mut lanes = [0u64; 8];
    for block in bytes.chunks_exact(64) {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            *lane = lane.wrapping_add(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
    }
    lanes.into_iter().fold(0, u64::wrapping_add)
}

fn timed<T>(f: impl Fn() -> T) -> Duration {
    let start = Instant::now();
    black_box(f());
    start.elapsed()
}

/// Sorts `values`: the median, and the percentiles read off them after.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

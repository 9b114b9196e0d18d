//! Kernel benchmarks: one query, top-10, against N = 10k, 100k and 1M
//! candidates of 512 x u8 and 512 x f32.
//!
//! - `scan_*/1core`: the scan loop on one core (kernel, norms, heap).
//! - `scan_*/engine`: the same query through the matching engine, split over all cores.
//! - `scan_u8/descriptor_set`: the same query through `FlatIndex`, what
//!   `luna_matcher.DescriptorSet` scans, built outside luna-core (as in the
//!   plugin helper), so its inlining across crates is measured too.
//! - `dot/*`: one dot product, and the 4 x 4 block a batch scores per step
//!   (u8 and f32), in the L1 cache, for every kernel this CPU runs (scalar included).
//! - `list_1000/{in_1M_store,alone}`: one query against a 1,000-face list,
//!   the list spread over a 1M-face store, then the same faces as the whole store.
//! - `batch_u8/{32,256}x{100000,1000000}` (and `batch_f32`): that many queries
//!   scanned together by the engine, as it coalesces concurrent requests;
//!   throughput in (query, candidate) pairs. On a CPU with AMX the u8
//!   batches run the tile kernel, and `batch_u8/{32,256}-blocks` the same
//!   batches on the AVX-512 block kernels.
//!
//! With `LUNA_BENCH_DATA=dir` the candidates and the query are read from the
//! files `scripts/bench-kernels` writes for the FAISS peer, so both measure the
//! same data; otherwise they are generated.

mod common;

use std::sync::Arc;

use common::{build_index, build_listed, random_bytes, spec, to_f32, u8_data, LIST};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use luna_core::descriptor::Dtype;
use luna_core::flat::FlatIndex;
use luna_core::index::Query;
use luna_core::kernels::{kernels, Kernels};
use luna_core::matching::{run_batch, run_batch_with, scan, Filter, SubQuery, TopK};
use uuid::Uuid;

const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];
const LIMIT: usize = 10;

/// This process's resident memory (Linux), 0 elsewhere.
fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches(" kB").parse::<usize>().ok()).map_or(0, |kib| kib * 1024)
}

fn list_sub(query: &[u8]) -> SubQuery {
    let filter = Filter { list_id: Some(LIST), account_id: Some(Uuid::nil()), ..Default::default() };
    SubQuery { version: 1, query: Arc::new(Query::new(&spec(Dtype::U8), query)), filter, limit: LIMIT, threshold: 0.0 }
}

/// A 1,000-face list in a 1M-face store against the same 1,000 faces alone: the cost follows the list.
fn bench_list(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new().build().expect("pool");
    let (rows, query) = u8_data(1_000_000);
    let members: Vec<u8> = rows.chunks_exact(512).skip(7).step_by(1000).flatten().copied().collect();
    let before = resident_bytes();
    let big = build_listed(Dtype::U8, &rows, |i| i % 1000 == 7);
    drop(rows);
    // The rows were allocated before `before`, and returned when dropped: what is left is the index.
    eprintln!("memory: {:.0} bytes per face (1M u8 512-d faces in memory)", (resident_bytes() + 512_000_000).saturating_sub(before) as f64 / 1e6);
    let alone = build_listed(Dtype::U8, &members, |_| true);
    let sub = list_sub(&query);
    let mut group = c.benchmark_group("list_1000");
    group.throughput(Throughput::Elements(1000));
    for (name, index) in [("in_1M_store", &big), ("alone", &alone)] {
        assert_eq!(pool.install(|| run_batch(index, &[&sub]))[0].candidates_scanned, 1000);
        group.bench_function(name, |b| b.iter(|| pool.install(|| run_batch(index, &[&sub]))));
    }
    group.finish();
}

/// Batches of queries scanned together, as the engine coalesces concurrent requests.
fn bench_batches(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new().build().expect("pool");
    for dtype in [Dtype::U8, Dtype::F32] {
        let mut group = c.benchmark_group(format!("batch_{}", if dtype == Dtype::U8 { "u8" } else { "f32" }));
        group.sample_size(10);
        for n in [100_000, 1_000_000] {
            let (rows, _) = u8_data(n);
            let queries: Vec<Vec<u8>> = random_bytes(256 * 512, 0x9E37_79B9_7F4A_7C15).chunks_exact(512).map(<[u8]>::to_vec).collect();
            let (rows, queries) = match dtype {
                Dtype::U8 => (rows, queries),
                Dtype::F32 => (to_f32(&rows), queries.iter().map(|q| to_f32(q)).collect()),
            };
            let index = build_index(dtype, &rows);
            drop(rows);
            for batch in [32, 256] {
                let subs: Vec<SubQuery> = queries[..batch]
                    .iter()
                    .map(|q| SubQuery { version: 1, query: Arc::new(Query::new(&spec(dtype), q)), filter: Filter::default(), limit: LIMIT, threshold: 0.0 })
                    .collect();
                let refs: Vec<&SubQuery> = subs.iter().collect();
                group.throughput(Throughput::Elements((batch * n) as u64));
                group.bench_function(BenchmarkId::new(batch.to_string(), n), |b| b.iter(|| pool.install(|| run_batch(&index, &refs))));
                if dtype == Dtype::U8 && kernels().tile_u8.is_some() {
                    // The same batch on the AVX-512 block kernels, for the tile kernel's gain.
                    let blocks = Kernels { tile_u8: None, ..*kernels() };
                    let id = BenchmarkId::new(format!("{batch}-blocks"), n);
                    group.bench_function(id, |b| b.iter(|| pool.install(|| run_batch_with(&blocks, &index, &refs))));
                }
            }
        }
        group.finish();
    }
}

fn bench_scans(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new().build().expect("pool");
    for dtype in [Dtype::U8, Dtype::F32] {
        let mut group = c.benchmark_group(format!("scan_{}", if dtype == Dtype::U8 { "u8" } else { "f32" }));
        group.sample_size(10);
        for n in SIZES {
            let (rows, query) = u8_data(n);
            let (rows, query) = match dtype {
                Dtype::U8 => (rows, query),
                Dtype::F32 => (to_f32(&rows), to_f32(&query)),
            };
            let index = build_index(dtype, &rows);
            let set = (dtype == Dtype::U8).then(|| {
                let mut set = FlatIndex::new(spec(dtype));
                rows.chunks_exact(512).enumerate().for_each(|(i, row)| set.insert(i.to_string(), row));
                set
            });
            drop(rows);
            let vectors = &index.versions[&1].vectors;
            let q = Query::new(&spec(dtype), &query);
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new("1core", n), &n, |b, &n| {
                b.iter(|| {
                    let mut top = TopK::new(LIMIT, 0.0);
                    scan(kernels(), vectors, &q, 0..n, |_| true, |r| r, &mut top);
                    top.into_sorted()
                })
            });
            let sub = SubQuery { version: 1, query: Arc::new(Query::new(&spec(dtype), &query)), filter: Filter::default(), limit: LIMIT, threshold: 0.0 };
            group.bench_with_input(BenchmarkId::new("engine", n), &n, |b, _| b.iter(|| pool.install(|| run_batch(&index, &[&sub]))));
            if let Some(set) = &set {
                group.bench_with_input(BenchmarkId::new("descriptor_set", n), &n, |b, _| b.iter(|| pool.install(|| set.search(&q, LIMIT, 0.0))));
            }
        }
        group.finish();
    }
}

/// The kernels alone, on data in the L1 cache: one pair, and the 4 x 4 block a batch scores per step.
fn bench_dots(c: &mut Criterion) {
    let (rows, query) = u8_data(4);
    let shifted: Vec<i8> = query.iter().map(|&q| (q as i16 - 128) as i8).collect();
    let (fa, fb): (Vec<f32>, Vec<f32>) = rows[..512].iter().zip(&query).map(|(&a, &b)| (a as f32 / 128.0, b as f32 / 128.0)).unzip();
    let four: [&[u8]; 4] = std::array::from_fn(|i| &rows[i * 512..(i + 1) * 512]);
    let queries: Vec<Vec<i8>> = (0..4).map(|i| shifted.iter().map(|&q| q.wrapping_add(i)).collect()).collect();
    let queries: [&[i8]; 4] = std::array::from_fn(|i| &queries[i][..]);
    let floats: Vec<Vec<f32>> = (0..4).map(|i| fa.iter().map(|&x| x + i as f32).collect()).collect();
    let floats: [&[f32]; 4] = std::array::from_fn(|i| &floats[i][..]);
    let mut group = c.benchmark_group("dot");
    for k in Kernels::available() {
        group.bench_function(BenchmarkId::new("u8_512", k.name), |b| b.iter(|| (k.dot_u8_i8)(std::hint::black_box(four[0]), &shifted)));
        group.bench_function(BenchmarkId::new("f32_512", k.name), |b| b.iter(|| (k.dot_f32)(std::hint::black_box(&fa), &fb)));
        group.bench_function(BenchmarkId::new("u8_512_4x4", k.name), |b| b.iter(|| (k.block_u8)(std::hint::black_box(&four), &queries)));
        group.bench_function(BenchmarkId::new("f32_512_4x4", k.name), |b| b.iter(|| (k.block_f32)(std::hint::black_box(&floats), &floats)));
    }
    group.finish();
}

criterion_group!(benches, bench_dots, bench_scans, bench_list, bench_batches);
criterion_main!(benches);

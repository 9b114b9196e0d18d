use std::sync::Arc;
use std::time::Instant;

use luna_core::descriptor::{Descriptor, Dtype, VersionSpec};
use luna_core::index::{FaceRecord, Index, Query};
use luna_core::kernels::kernels;
use luna_core::kernels::Kernels;
use luna_core::matching::{run_batch, run_batch_with, scan, Filter, SubQuery, TopK};
use uuid::Uuid;

fn fresh(advise: bool) -> Vec<u64> {
    let n = 64 << 20;
    let mut v: Vec<u64> = Vec::with_capacity(n);
    if advise {
        unsafe { libc::madvise(v.as_mut_ptr() as *mut libc::c_void, n * 8, libc::MADV_HUGEPAGE) };
    }
    v.extend((0..n as u64).map(|i| i * 7));
    v
}

fn read_words(pool: &rayon::ThreadPool, words: &[u64]) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..8 {
        let t = Instant::now();
        let half = words.len() / 2;
        let s: u64 = pool.install(|| {
            let (a, b) =
                rayon::join(|| words[..half].iter().fold(0u64, |x, &y| x.wrapping_add(y)), || words[half..].iter().fold(0u64, |x, &y| x.wrapping_add(y)));
            a.wrapping_add(b)
        });
        std::hint::black_box(s);
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args[1] == "thp" {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let v = fresh(false);
        for _ in 0..3 {
            println!("rayon: {:.1} ms", read_words(&pool, &v) * 1e3);
            let mut best = f64::MAX;
            for _ in 0..8 {
                let t = Instant::now();
                let half = v.len() / 2;
                let s = std::thread::scope(|sc| {
                    let a = sc.spawn(|| v[..half].iter().fold(0u64, |x, &y| x.wrapping_add(y)));
                    let b = v[half..].iter().fold(0u64, |x, &y| x.wrapping_add(y));
                    a.join().unwrap().wrapping_add(b)
                });
                std::hint::black_box(s);
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!("scoped: {:.1} ms", best * 1e3);
            let mut best = f64::MAX;
            for _ in 0..8 {
                let t = Instant::now();
                std::hint::black_box(v.iter().fold(0u64, |x, &y| x.wrapping_add(y)));
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!("one thread: {:.1} ms", best * 1e3);
        }
        return;
    }
    let mode = args[1].clone();
    let n: usize = args[2].parse().unwrap();
    let reps: usize = args[3].parse().unwrap();
    let spec = VersionSpec { length: 512, dtype: Dtype::U8, a: None, b: None };
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 32) as u8
    };
    let mut index = Index::default();
    for i in 0..n {
        let p: Vec<u8> = (0..512).map(|_| next()).collect();
        let face = FaceRecord {
            face_id: Uuid::from_u128(i as u128),
            account_id: Uuid::nil(),
            external_id: None,
            user_data: String::new(),
            create_time: 0,
            lists: Default::default(),
        };
        index.insert_face(spec, &Descriptor { version: 1, payload: p }, face);
    }
    let query: Vec<u8> = (0..512).map(|_| next()).collect();
    let q = Query::new(&spec, &query);
    let sub = SubQuery { version: 1, query: Arc::new(Query::new(&spec, &query)), filter: Filter::default(), limit: 10, threshold: 0.0 };
    let threads = if mode == "engine1" || mode == "scan" { 1 } else { 2 };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let vectors = &index.versions[&1].vectors;
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        match mode.as_str() {
            "scan" => {
                let mut top = TopK::new(10, 0.0);
                scan(kernels(), vectors, &q, 0..n, |_| true, |r| r, &mut top);
                std::hint::black_box(top.into_sorted());
            }
            "read" => {
                let bytes = vectors.rows.u8_rows(0, n);
                let words: &[u64] = unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const u64, bytes.len() / 8) };
                let half = words.len() / 2;
                let s: u64 = pool.install(|| {
                    let (a, b) = rayon::join(
                        || words[..half].iter().fold(0u64, |x, &y| x.wrapping_add(y)),
                        || words[half..].iter().fold(0u64, |x, &y| x.wrapping_add(y)),
                    );
                    a.wrapping_add(b)
                });
                std::hint::black_box(s);
            }
            "tiles" | "blocks" => {
                let k = if mode == "tiles" { *kernels() } else { Kernels { tile_u8: None, ..*kernels() } };
                let subs: Vec<SubQuery> = (0..32)
                    .map(|i| SubQuery {
                        version: 1,
                        query: Arc::new(Query::new(&spec, &query.iter().map(|&b| b.wrapping_add(i)).collect::<Vec<_>>())),
                        filter: Filter::default(),
                        limit: 10,
                        threshold: 0.0,
                    })
                    .collect();
                let refs: Vec<&SubQuery> = subs.iter().collect();
                std::hint::black_box(pool.install(|| run_batch_with(&k, &index, &refs)));
            }
            _ => {
                std::hint::black_box(pool.install(|| run_batch(&index, &[&sub])));
            }
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("{mode} n={n} best {:.2} ms, {:.1} M rows/s", best * 1e3, n as f64 / best / 1e6);
}

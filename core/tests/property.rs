//! Matching against a naive scalar reference on random data, u8 and f32,
//! across chunk boundaries, filters, limits and thresholds; batches of
//! queries scanned together (the block kernels and, on CPUs with AMX, the
//! tile kernel; tails of fewer than 4 or 32 rows or queries, odd descriptor
//! sizes, tied candidates) against the reference and against each query
//! scanned alone.

use std::sync::Arc;

use luna_core::descriptor::{Dtype, VersionSpec};
use luna_core::index::{FaceRecord, Index, Query};
use luna_core::matching::{run_batch, Filter, SubQuery};
use proptest::prelude::*;
use uuid::Uuid;

const U8: VersionSpec = VersionSpec { length: 512, dtype: Dtype::U8, a: None, b: None };
const F32: VersionSpec = VersionSpec { length: 512, dtype: Dtype::F32, a: None, b: None };

fn naive_cos(spec: &VersionSpec, a: &[u8], b: &[u8]) -> f64 {
    let values = |p: &[u8]| -> Vec<f64> {
        match spec.dtype {
            Dtype::U8 => p.iter().map(|&q| q as f64 - 128.0).collect(),
            Dtype::F32 => p.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        }
    };
    let (a, b) = (values(a), values(b));
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let n: f64 = a.iter().map(|x| x * x).sum::<f64>() * b.iter().map(|x| x * x).sum::<f64>();
    if n == 0.0 {
        0.0
    } else {
        (dot / n.sqrt()).clamp(0.0, 1.0)
    }
}

fn payload(spec: &VersionSpec, seed: u64, near: Option<&[u8]>) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    match spec.dtype {
        Dtype::U8 => (0..spec.length).map(|i| near.filter(|_| next() % 3 != 0).map_or((next() >> 24) as u8, |n| n[i])).collect(),
        Dtype::F32 => (0..spec.length)
            .flat_map(|i| {
                let fresh = ((next() >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
                let v = near.filter(|_| next() % 3 != 0).map_or(fresh, |n| f32::from_le_bytes(n[i * 4..i * 4 + 4].try_into().unwrap()));
                v.to_le_bytes()
            })
            .collect(),
    }
}

/// A threshold below `most`, half the time 0 (the usual one, where every
/// candidate passes and only the top decides).
fn threshold(most: f64) -> impl Strategy<Value = f64> {
    prop_oneof![Just(0.0), 0.0..most]
}

fn check(spec: VersionSpec, n: usize, seed: u64, limit: usize, threshold: f64, with_list: bool) {
    let version = 7;
    let list = Uuid::from_u128(42);
    let query_payload = payload(&spec, seed, None);
    let mut index = Index::default();
    let mut truth = Vec::new();
    for i in 0..n {
        let p = payload(&spec, seed * 1_000_003 + i as u64, if i % 2 == 0 { Some(&query_payload) } else { None });
        let face_id = Uuid::from_u128((seed as u128) << 64 | (i as u128 * 7919 % 100_003));
        let in_list = i % 3 != 0;
        let lists = if in_list { smallvec::smallvec![list] } else { smallvec::SmallVec::new() };
        let record = FaceRecord { face_id, account_id: Uuid::nil(), external_id: None, user_data: Box::default(), create_time: 0, lists };
        if !with_list || in_list {
            truth.push((naive_cos(&spec, &query_payload, &p), face_id));
        }
        index.insert_face(spec, version, &p, record);
    }
    let sub = SubQuery {
        version,
        query: Arc::new(Query::new(&spec, &query_payload)),
        filter: Filter { list_id: with_list.then_some(list), ..Default::default() },
        limit,
        threshold,
    };
    let got = run_batch(&index, &[&sub]).remove(0);

    truth.retain(|(s, _)| *s >= threshold);
    truth.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let tolerance = if spec.dtype == Dtype::U8 { 0.0 } else { 1e-5 };
    let borderline = |s: f64| (s - threshold).abs() <= tolerance;
    let expected_total = truth.len() as u64;
    assert!(got.total_found.abs_diff(expected_total) <= truth.iter().filter(|(s, _)| borderline(*s)).count() as u64);
    truth.truncate(limit);
    assert_eq!(got.hits.len(), truth.len().min(limit));
    for (rank, ((sim, face), (want_sim, want_id))) in got.hits.iter().zip(&truth).enumerate() {
        assert!((sim - want_sim).abs() <= tolerance, "rank {rank}: {sim} vs {want_sim}");
        if tolerance == 0.0 {
            assert_eq!(face.face_id, *want_id, "rank {rank}");
        }
    }
    for w in got.hits.windows(2) {
        assert!(w[0].0 > w[1].0 || (w[0].0 == w[1].0 && w[0].1.face_id < w[1].1.face_id), "ordered");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn u8_matches_reference(n in 1usize..1500, seed in 1u64..1_000_000, limit in 0usize..40, threshold in threshold(0.6), with_list: bool) {
        check(U8, n, seed, limit, threshold, with_list);
    }

    #[test]
    fn f32_matches_reference(n in 1usize..600, seed in 1u64..1_000_000, limit in 0usize..40, threshold in threshold(0.6), with_list: bool) {
        check(F32, n, seed, limit, threshold, with_list);
    }
}

/// `queries` queries scanned in one batch over `n` faces of `spec`, every
/// fifth face a copy of an earlier one (ties, broken by face id).
fn check_batch(spec: VersionSpec, n: usize, seed: u64, queries: usize, limit: usize, threshold: f64, with_list: bool) {
    let version = 9;
    let list = Uuid::from_u128(7);
    let mut index = Index::default();
    let mut stored: Vec<(Vec<u8>, Uuid, bool)> = Vec::new();
    let probes: Vec<Vec<u8>> = (0..queries).map(|q| payload(&spec, seed ^ (q as u64 + 1) << 40, None)).collect();
    for i in 0..n {
        let p = if i % 5 == 4 { stored[i / 2].0.clone() } else { payload(&spec, seed * 31 + i as u64, Some(&probes[i % queries])) };
        let face_id = Uuid::from_u128((i as u128 * 104_729) % 1_000_003);
        let in_list = i % 4 != 1;
        let lists = if in_list { smallvec::smallvec![list] } else { smallvec::SmallVec::new() };
        let record = FaceRecord { face_id, account_id: Uuid::nil(), external_id: None, user_data: Box::default(), create_time: 0, lists };
        index.insert_face(spec, version, &p, record);
        stored.push((p, face_id, in_list));
    }
    let subs: Vec<SubQuery> = probes
        .iter()
        .map(|p| SubQuery {
            version,
            query: Arc::new(Query::new(&spec, p)),
            filter: Filter { list_id: with_list.then_some(list), ..Default::default() },
            limit,
            threshold,
        })
        .collect();
    let batch = run_batch(&index, &subs.iter().collect::<Vec<_>>());
    let tolerance = if spec.dtype == Dtype::U8 { 0.0 } else { 1e-5 };
    for ((sub, probe), got) in subs.iter().zip(&probes).zip(&batch) {
        let alone = run_batch(&index, &[sub]).remove(0);
        let key = |r: &luna_core::matching::SubResult| r.hits.iter().map(|(s, f)| (s.to_bits(), f.face_id)).collect::<Vec<_>>();
        assert_eq!(key(got), key(&alone), "a query scores the same alone and in a batch");
        assert_eq!((got.total_found, got.candidates_scanned), (alone.total_found, alone.candidates_scanned));

        let mut truth: Vec<(f64, Uuid)> =
            stored.iter().filter(|(_, _, in_list)| !with_list || *in_list).map(|(p, id, _)| (naive_cos(&spec, probe, p), *id)).collect();
        assert_eq!(got.candidates_scanned, truth.len() as u64);
        truth.retain(|(s, _)| *s >= threshold);
        truth.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let borderline = truth.iter().filter(|(s, _)| (s - threshold).abs() <= tolerance).count() as u64;
        assert!(got.total_found.abs_diff(truth.len() as u64) <= borderline);
        truth.truncate(limit);
        assert_eq!(got.hits.len(), truth.len());
        for (rank, ((sim, face), (want_sim, want_id))) in got.hits.iter().zip(&truth).enumerate() {
            assert!((sim - want_sim).abs() <= tolerance, "rank {rank}: {sim} vs {want_sim}");
            if tolerance == 0.0 {
                assert_eq!((*sim, face.face_id), (*want_sim, *want_id), "rank {rank}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn u8_batches_match_reference(n in 1usize..1200, seed in 1u64..1_000_000, queries in 1usize..45, length in prop::sample::select(vec![64usize, 100, 512, 513]), limit in 0usize..30, threshold in threshold(0.5), with_list: bool) {
        check_batch(VersionSpec { length, ..U8 }, n, seed, queries, limit, threshold, with_list);
    }

    #[test]
    fn f32_batches_match_reference(n in 1usize..500, seed in 1u64..1_000_000, queries in 1usize..10, length in prop::sample::select(vec![16usize, 37, 512]), limit in 0usize..30, threshold in threshold(0.5), with_list: bool) {
        check_batch(VersionSpec { length, ..F32 }, n, seed, queries, limit, threshold, with_list);
    }
}

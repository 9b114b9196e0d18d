//! Data the benches share: seeded random descriptors (or `scripts/bench-kernels`'
//! files, under `LUNA_BENCH_DATA`) and indexes built from them.

// Each bench compiles its own copy and uses part of it.
#![allow(dead_code)]

use luna_core::descriptor::{Dtype, VersionSpec};
use luna_core::index::{FaceRecord, Index};
use uuid::Uuid;

pub fn spec(dtype: Dtype) -> VersionSpec {
    VersionSpec { length: 512, dtype, a: None, b: None }
}

/// u8 descriptors, `n` rows of 512, plus the query: from the shared file or generated.
pub fn u8_data(n: usize) -> (Vec<u8>, Vec<u8>) {
    if let Ok(dir) = std::env::var("LUNA_BENCH_DATA") {
        let all = std::fs::read(format!("{dir}/candidates_u8.bin")).expect("candidates_u8.bin");
        let query = std::fs::read(format!("{dir}/query_u8.bin")).expect("query_u8.bin");
        return (all[..n * 512].to_vec(), query);
    }
    let mut bytes = random_bytes((n + 1) * 512, 0x2545_F491_4F6C_DD1D);
    let query = bytes.split_off(n * 512);
    (bytes, query)
}

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// The f32 version of u8 data, `(q - 128) / 128`, as little-endian bytes: what FAISS gets.
pub fn to_f32(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().flat_map(|&q| ((q as f32 - 128.0) / 128.0).to_le_bytes()).collect()
}

pub fn build_index(dtype: Dtype, rows: &[u8]) -> Index {
    build_listed(dtype, rows, |_| false)
}

pub const LIST: Uuid = Uuid::from_u128(0x1157);

/// An index of `rows`, row i in `LIST` when `listed(i)`.
pub fn build_listed(dtype: Dtype, rows: &[u8], listed: impl Fn(usize) -> bool) -> Index {
    let spec = spec(dtype);
    let mut index = Index::default();
    for (i, p) in rows.chunks_exact(spec.payload_len()).enumerate() {
        let face = FaceRecord {
            face_id: Uuid::from_u128(i as u128),
            account_id: Uuid::nil(),
            external_id: None,
            user_data: Box::default(),
            create_time: 0,
            lists: std::iter::once(LIST).filter(|_| listed(i)).collect(),
        };
        index.insert_face(spec, 1, p, face);
    }
    index
}

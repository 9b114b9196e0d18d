//! Dot-product kernels, chosen once at run time for the CPU.
//!
//! Rows and queries are padded with zeros to a multiple of 64 bytes, so every
//! kernel works on whole 64-byte blocks and needs no tail loop.
//!
//! u8 descriptors decode as `(q - 128) / 128`. The scale cancels in a cosine, so
//! the kernels work on `q - 128`. Candidates stay as stored (u8) and the query
//! is shifted once to i8: `dot(c - 128, s) = dot_u8_i8(c, s) - 128 * sum(s)`,
//! which is exactly what AVX-512 VNNI's `vpdpbusd` (u8 x i8) computes.
//!
//! The block kernels score 4 rows against 4 queries (or 1) at once: each row
//! block loaded from memory serves every query in registers, which makes a
//! coalesced scan bound by compute, not by memory. AVX2 has 16 registers, not
//! AVX-512's 32: its blocks go 2 rows x 4 queries (u8) or 2 x 2 (f32) at a
//! time. A block kernel adds up each pair in the same order as its one-pair
//! kernel, so a similarity does not depend on whether its query was scanned
//! alone or in a batch. Where the CPU
//! has AMX, batches of u8 queries use the tile kernel of [`crate::tiles`]
//! (integer sums: the same scores again).

use std::sync::OnceLock;

use crate::tiles::{Panels, TILE};

/// One u8 row against one shifted query.
pub type DotU8 = fn(&[u8], &[i8]) -> i32;
/// One f32 row against one query.
pub type DotF32 = fn(&[f32], &[f32]) -> f32;
/// Four u8 rows against four queries: `out[query][row]`.
pub type BlockU8 = fn(&[&[u8]; 4], &[&[i8]; 4]) -> [[i32; 4]; 4];
/// Four u8 rows against one query, while the four rows of the third
/// argument (scored soon after) are fetched: a hint, see [`Kernels::rows_u8`].
pub type RowsU8 = fn(&[&[u8]; 4], &[i8], &[&[u8]; 4]) -> [i32; 4];
/// Four f32 rows against four queries: `out[query][row]`.
pub type BlockF32 = fn(&[&[f32]; 4], &[&[f32]; 4]) -> [[f32; 4]; 4];
/// Four f32 rows against one query, while the four rows of the third
/// argument are fetched, as [`RowsU8`].
pub type RowsF32 = fn(&[&[f32]; 4], &[f32], &[&[f32]; 4]) -> [f32; 4];
/// 32 u8 rows at a stride against a group of 32 laid-out queries: `out[row][query]`.
pub type TileU8 = fn(&[u8], usize, &Panels, usize, &mut [[i32; TILE]; TILE]);

/// One implementation of every kernel.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// What the implementation is built on, for logs and benches.
    pub name: &'static str,
    /// One u8 pair.
    pub dot_u8_i8: DotU8,
    /// One f32 pair.
    pub dot_f32: DotF32,
    /// 4 x 4 u8 pairs.
    pub block_u8: BlockU8,
    /// 4 x 1 u8 pairs. One query's scan is bound by memory: the AVX2 kernel
    /// fetches the next rows a line per 64 bytes scored, which keeps more of
    /// them in flight than the hardware prefetcher alone (measured on Zen 3);
    /// the VNNI one does so only where that measured faster
    /// ([`vnni_rows_fetch_ahead`]).
    pub rows_u8: RowsU8,
    /// 4 x 4 f32 pairs.
    pub block_f32: BlockF32,
    /// 4 x 1 f32 pairs. The AVX2 kernel fetches ahead as `rows_u8` (measured
    /// on Zen 3); the AVX-512 one leaves the rows to the hardware prefetcher.
    pub rows_f32: RowsF32,
    /// 32 x 32 u8 pairs, where the CPU has AMX ([`crate::tiles`]).
    pub tile_u8: Option<TileU8>,
}

/// Ask for the cache line at `at` to be brought into every level; a hint,
/// which never faults, whatever the address; nothing on CPUs without one here.
#[inline(always)]
pub fn fetch_line(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and never faults; SSE is part of x86-64.
    unsafe {
        std::arch::x86_64::_mm_prefetch(at as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Block kernels made of a one-pair kernel, for CPUs without a blocked one.
macro_rules! pairwise {
    ($dot:path, $row:ty, $q:ty, $out:ty $(, $next:ty)?) => {
        (
            |rows: &[&[$row]; 4], queries: &[&[$q]; 4]| -> [[$out; 4]; 4] { queries.map(|q| rows.map(|r| $dot(r, q))) },
            |rows: &[&[$row]; 4], q: &[$q] $(, _next: $next)?| -> [$out; 4] { rows.map(|r| $dot(r, q)) },
        )
    };
}

impl Kernels {
    /// The portable fallback, also the reference the SIMD kernels are tested against.
    pub fn scalar() -> Kernels {
        let (block_u8, rows_u8) = pairwise!(scalar::dot_u8_i8, u8, i8, i32, &[&[u8]; 4]);
        let (block_f32, rows_f32) = pairwise!(scalar::dot_f32, f32, f32, f32, &[&[f32]; 4]);
        Kernels { name: "scalar", dot_u8_i8: scalar::dot_u8_i8, dot_f32: scalar::dot_f32, block_u8, rows_u8, block_f32, rows_f32, tile_u8: None }
    }

    #[cfg(target_arch = "x86_64")]
    fn avx2() -> Kernels {
        Kernels {
            name: "avx2",
            dot_u8_i8: x86::dot_u8_i8_avx2,
            dot_f32: x86::dot_f32_avx2,
            block_u8: x86::block_u8_avx2,
            rows_u8: x86::rows_u8_avx2,
            block_f32: x86::block_f32_avx2,
            rows_f32: x86::rows_f32_avx2,
            tile_u8: None,
        }
    }

    /// AVX-512 kernels; with VNNI, `fetch_rows` says whether one u8
    /// query's scan fetches the next rows itself ([`vnni_rows_fetch_ahead`]).
    #[cfg(target_arch = "x86_64")]
    fn avx512(vnni: bool, fetch_rows: bool) -> Kernels {
        let f32s = |k: Kernels| Kernels { dot_f32: x86::dot_f32_avx512, block_f32: x86::block_f32_avx512, rows_f32: x86::rows_f32_avx512, ..k };
        if !vnni {
            return f32s(Kernels { name: "avx512", ..Kernels::avx2() });
        }
        let (name, rows_u8): (_, RowsU8) =
            if fetch_rows { ("avx512-vnni+fetch", x86::rows_u8_vnni::<true>) } else { ("avx512-vnni", x86::rows_u8_vnni::<false>) };
        let vnni = Kernels { name, dot_u8_i8: x86::dot_u8_i8_vnni, block_u8: x86::block_u8_vnni, rows_u8, ..Kernels::avx2() };
        if crate::tiles::available() {
            let name = if fetch_rows { "avx512-vnni+fetch+amx" } else { "avx512-vnni+amx" };
            return f32s(Kernels { name, tile_u8: Some(crate::tiles::tile_u8), ..vnni });
        }
        f32s(vnni)
    }

    /// The fastest kernels this CPU supports.
    pub fn detect() -> Kernels {
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw");
            if avx512 {
                return Kernels::avx512(is_x86_feature_detected!("avx512vnni"), vnni_rows_fetch_ahead());
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Kernels::avx2();
            }
        }
        Kernels::scalar()
    }

    /// All implementations this CPU can run, for tests and benches.
    pub fn available() -> Vec<Kernels> {
        let mut all = vec![Kernels::scalar()];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                all.push(Kernels::avx2());
            }
            let best = Kernels::detect();
            if !all.iter().any(|k| k.name == best.name) {
                all.push(best);
            }
            // One u8 query's VNNI scan both ways, whichever this CPU runs.
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni") {
                all.push(Kernels::avx512(true, !vnni_rows_fetch_ahead()));
            }
        }
        all
    }
}

/// Whether one u8 query's VNNI scan fetches the next rows itself: faster
/// than the hardware prefetcher alone on Zen 5 (AMD family 26), slower on
/// Zen 4 (family 25), not measured on other CPUs (docs/benchmarks.md).
#[cfg(target_arch = "x86_64")]
fn vnni_rows_fetch_ahead() -> bool {
    use std::arch::x86_64::__cpuid;
    let vendor = __cpuid(0);
    let amd = [vendor.ebx, vendor.edx, vendor.ecx] == [*b"Auth", *b"enti", *b"cAMD"].map(u32::from_le_bytes);
    // CPUID leaf 1: the base family in bits 8-11, plus the extended family in bits 20-27 when the base is 15.
    let signature = __cpuid(1).eax;
    let base = (signature >> 8) & 0xf;
    let family = if base == 0xf { base + ((signature >> 20) & 0xff) } else { base };
    amd && family >= 26
}

/// The kernels the service uses, detected on first use.
pub fn kernels() -> &'static Kernels {
    static CHOSEN: OnceLock<Kernels> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        let k = Kernels::detect();
        log::info!("matching kernels: {}", k.name);
        k
    })
}

mod scalar {
    pub fn dot_u8_i8(c: &[u8], q: &[i8]) -> i32 {
        c.iter().zip(q).map(|(&a, &b)| a as i32 * b as i32).sum()
    }

    pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    // The safe wrappers check what the unsafe bodies rely on: equal lengths in
    // whole 64-byte blocks. `Kernels::detect` only hands them out when the CPU
    // has the features they are compiled for.

    pub fn dot_u8_i8_vnni(c: &[u8], q: &[i8]) -> i32 {
        assert!(c.len() == q.len() && c.len().is_multiple_of(64));
        unsafe { vnni::<1, 1>(&[c.as_ptr()], &[q.as_ptr()], c.len() / 64, None)[0][0] }
    }

    pub fn block_u8_vnni(rows: &[&[u8]; 4], queries: &[&[i8]; 4]) -> [[i32; 4]; 4] {
        let len = rows[0].len();
        assert!(len.is_multiple_of(64) && rows.iter().all(|r| r.len() == len) && queries.iter().all(|q| q.len() == len));
        unsafe { vnni::<4, 4>(&rows.map(|r| r.as_ptr()), &queries.map(|q| q.as_ptr()), len / 64, None) }
    }

    /// With `FETCH`, the rows `next` are fetched as these are scored.
    pub fn rows_u8_vnni<const FETCH: bool>(rows: &[&[u8]; 4], q: &[i8], next: &[&[u8]; 4]) -> [i32; 4] {
        let len = q.len();
        assert!(len.is_multiple_of(64) && rows.iter().chain(next).all(|r| r.len() == len));
        let next = next.map(|r| r.as_ptr());
        unsafe { vnni::<4, 1>(&rows.map(|r| r.as_ptr()), &[q.as_ptr()], len / 64, FETCH.then_some(&next))[0] }
    }

    /// R rows x Q queries of `blocks` 64-byte blocks each: one accumulator per
    /// pair, each row block loaded once for all queries. With one query, the
    /// rows `next` (as long) are fetched a line per block scored, as `avx2_u8`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn vnni<const R: usize, const Q: usize>(
        rows: &[*const u8; R],
        queries: &[*const i8; Q],
        blocks: usize,
        next: Option<&[*const u8; R]>,
    ) -> [[i32; R]; Q] {
        let mut acc = [[_mm512_setzero_si512(); R]; Q];
        if Q == 1 {
            // One query: row by row, each read front to back: interleaving the
            // rows' blocks defeats the hardware prefetcher.
            for ri in 0..R {
                for b in 0..blocks {
                    if let Some(next) = next {
                        _mm_prefetch(next[ri].add(b * 64) as *const i8, _MM_HINT_NTA);
                    }
                    let r = _mm512_loadu_si512(rows[ri].add(b * 64) as *const __m512i);
                    acc[0][ri] = _mm512_dpbusd_epi32(acc[0][ri], r, _mm512_loadu_si512(queries[0].add(b * 64) as *const __m512i));
                }
            }
        } else {
            // A block: each query block loaded once for all rows, and R x Q
            // sums in flight, enough to cover the multiply's latency.
            for b in 0..blocks {
                let mut q = [_mm512_setzero_si512(); Q];
                for qi in 0..Q {
                    q[qi] = _mm512_loadu_si512(queries[qi].add(b * 64) as *const __m512i);
                }
                for ri in 0..R {
                    let r = _mm512_loadu_si512(rows[ri].add(b * 64) as *const __m512i);
                    for qi in 0..Q {
                        acc[qi][ri] = _mm512_dpbusd_epi32(acc[qi][ri], r, q[qi]);
                    }
                }
            }
        }
        let mut out = [[0; R]; Q];
        if R == 4 {
            // Four rows' sums in one vector per query, then across queries:
            // about a third of the instructions of one reduction per accumulator.
            let lanes: [__m512i; Q] = std::array::from_fn(|qi| lane_sums4(&acc[qi][..].try_into().expect("four rows")));
            if Q == 4 {
                let sums: [i32; 16] = std::mem::transmute(across_lanes4(&lanes[..].try_into().expect("four queries")));
                for qi in 0..Q {
                    for ri in 0..R {
                        out[qi][ri] = sums[qi * 4 + ri];
                    }
                }
                return out;
            }
            for qi in 0..Q {
                let half = _mm256_add_epi32(_mm512_castsi512_si256(lanes[qi]), _mm512_extracti64x4_epi64(lanes[qi], 1));
                let sums: [i32; 4] = std::mem::transmute(_mm_add_epi32(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1)));
                out[qi][..].copy_from_slice(&sums);
            }
            return out;
        }
        for qi in 0..Q {
            for ri in 0..R {
                out[qi][ri] = _mm512_reduce_add_epi32(acc[qi][ri]);
            }
        }
        out
    }

    /// For accumulators a, b, c, d: in each 128-bit lane, that lane's sums
    /// `[a, b, c, d]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn lane_sums4(acc: &[__m512i; 4]) -> __m512i {
        let [a, b, c, d] = *acc;
        // [a0+a2, b0+b2, a1+a3, b1+b3] and the same of c, d.
        let ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
        let cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
        _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd))
    }

    /// Four vectors of [`lane_sums4`]: the sums of vector i in 128-bit lane i.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn across_lanes4(v: &[__m512i; 4]) -> __m512i {
        pair_lanes(pair_lanes(v[0], v[1]), pair_lanes(v[2], v[3]))
    }

    /// Lanes 0 and 2 of `x` and `y` plus their lanes 1 and 3: lanes 0, 1 of
    /// the result are two lanes of `x` summed, lanes 2, 3 two of `y`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn pair_lanes(x: __m512i, y: __m512i) -> __m512i {
        _mm512_add_epi32(_mm512_shuffle_i32x4(x, y, 0b10_00_10_00), _mm512_shuffle_i32x4(x, y, 0b11_01_11_01))
    }

    pub fn dot_u8_i8_avx2(c: &[u8], q: &[i8]) -> i32 {
        assert!(c.len() == q.len() && c.len().is_multiple_of(64));
        unsafe { avx2_u8::<1, 1>(&[c.as_ptr()], &[q.as_ptr()], c.len() / 16, None)[0][0] }
    }

    pub fn block_u8_avx2(rows: &[&[u8]; 4], queries: &[&[i8]; 4]) -> [[i32; 4]; 4] {
        let len = rows[0].len();
        assert!(len.is_multiple_of(64) && rows.iter().all(|r| r.len() == len) && queries.iter().all(|q| q.len() == len));
        // Two rows at a time: 2 x 4 accumulators, four widened queries and a
        // widened row fit the 16 registers; 4 x 4 would spill.
        let q = queries.map(|q| q.as_ptr());
        let [top, bottom] = [[0, 1], [2, 3]].map(|h| unsafe { avx2_u8::<2, 4>(&h.map(|i| rows[i].as_ptr()), &q, len / 16, None) });
        [0, 1, 2, 3].map(|qi| [top[qi][0], top[qi][1], bottom[qi][0], bottom[qi][1]])
    }

    pub fn rows_u8_avx2(rows: &[&[u8]; 4], q: &[i8], next: &[&[u8]; 4]) -> [i32; 4] {
        let len = q.len();
        assert!(len.is_multiple_of(64) && rows.iter().chain(next).all(|r| r.len() == len));
        unsafe { avx2_u8::<4, 1>(&rows.map(|r| r.as_ptr()), &[q.as_ptr()], len / 16, Some(&next.map(|r| r.as_ptr())))[0] }
    }

    /// R rows x Q queries of `steps` 16-byte steps each, one accumulator per
    /// pair. Both sides are widened to i16 first: `_mm256_maddubs_epi16`
    /// would saturate on 255 * -128 * 2. With one query, the rows `next`
    /// (as long) are fetched a line per 64 bytes scored.
    #[target_feature(enable = "avx2")]
    unsafe fn avx2_u8<const R: usize, const Q: usize>(
        rows: &[*const u8; R],
        queries: &[*const i8; Q],
        steps: usize,
        next: Option<&[*const u8; R]>,
    ) -> [[i32; R]; Q] {
        let mut acc = [[_mm256_setzero_si256(); R]; Q];
        if Q == 1 {
            // One query: row by row, each read front to back, as `vnni`.
            // Non-temporal: a scan reads each row once, and should not push
            // out of the caches what the service runs between scans.
            for ri in 0..R {
                for line in 0..steps / 4 {
                    if let Some(next) = next {
                        _mm_prefetch(next[ri].add(line * 64) as *const i8, _MM_HINT_NTA);
                    }
                    for s in line * 4..line * 4 + 4 {
                        acc[0][ri] = _mm256_add_epi32(acc[0][ri], _mm256_madd_epi16(widen_row(rows[ri], s), widen_query(queries[0], s)));
                    }
                }
            }
        } else {
            // Several: each query step is widened once for all R rows.
            for s in 0..steps {
                let mut q = [_mm256_setzero_si256(); Q];
                for qi in 0..Q {
                    q[qi] = widen_query(queries[qi], s);
                }
                for ri in 0..R {
                    let r = widen_row(rows[ri], s);
                    for qi in 0..Q {
                        acc[qi][ri] = _mm256_add_epi32(acc[qi][ri], _mm256_madd_epi16(r, q[qi]));
                    }
                }
            }
        }
        let mut out = [[0; R]; Q];
        for qi in 0..Q {
            for ri in 0..R {
                let v = acc[qi][ri];
                let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
                out[qi][ri] = _mm_cvtsi128_si32(s);
            }
        }
        out
    }

    /// 16 bytes at step `s` of a row, widened to i16.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn widen_row(p: *const u8, s: usize) -> __m256i {
        _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(s * 16) as *const __m128i))
    }

    /// 16 values at step `s` of a shifted query, widened to i16.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn widen_query(p: *const i8, s: usize) -> __m256i {
        _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(s * 16) as *const __m128i))
    }

    pub fn dot_f32_avx512(a: &[f32], b: &[f32]) -> f32 {
        assert!(a.len() == b.len() && a.len().is_multiple_of(16));
        unsafe { avx512_f32::<1, 1>(&[a.as_ptr()], &[b.as_ptr()], a.len() / 16)[0][0] }
    }

    pub fn block_f32_avx512(rows: &[&[f32]; 4], queries: &[&[f32]; 4]) -> [[f32; 4]; 4] {
        let len = rows[0].len();
        assert!(len.is_multiple_of(16) && rows.iter().all(|r| r.len() == len) && queries.iter().all(|q| q.len() == len));
        unsafe { avx512_f32::<4, 4>(&rows.map(|r| r.as_ptr()), &queries.map(|q| q.as_ptr()), len / 16) }
    }

    pub fn rows_f32_avx512(rows: &[&[f32]; 4], q: &[f32], _next: &[&[f32]; 4]) -> [f32; 4] {
        let len = q.len();
        assert!(len.is_multiple_of(16) && rows.iter().all(|r| r.len() == len));
        unsafe { avx512_f32::<4, 1>(&rows.map(|r| r.as_ptr()), &[q.as_ptr()], len / 16)[0] }
    }

    /// R rows x Q queries of `blocks` 16-float blocks each, one accumulator
    /// per pair, so every pair is summed in the same order whatever R and Q.
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512_f32<const R: usize, const Q: usize>(rows: &[*const f32; R], queries: &[*const f32; Q], blocks: usize) -> [[f32; R]; Q] {
        const { assert!(R <= 4, "the sums are reduced four rows at a time") };
        let mut acc = [[_mm512_setzero_ps(); R]; Q];
        if Q == 1 {
            // One query: row by row, as `vnni`.
            for ri in 0..R {
                for b in 0..blocks {
                    acc[0][ri] = _mm512_fmadd_ps(_mm512_loadu_ps(rows[ri].add(b * 16)), _mm512_loadu_ps(queries[0].add(b * 16)), acc[0][ri]);
                }
            }
        } else {
            // A block: each query block loaded once for all rows, and R x Q
            // sums in flight, enough to cover the FMA latency.
            for b in 0..blocks {
                let mut q = [_mm512_setzero_ps(); Q];
                for qi in 0..Q {
                    q[qi] = _mm512_loadu_ps(queries[qi].add(b * 16));
                }
                for ri in 0..R {
                    let r = _mm512_loadu_ps(rows[ri].add(b * 16));
                    for qi in 0..Q {
                        acc[qi][ri] = _mm512_fmadd_ps(r, q[qi], acc[qi][ri]);
                    }
                }
            }
        }
        // The rows' sums of a query in one vector (missing rows as zeros,
        // which leave a sum unchanged), then across 128-bit lanes: about a
        // third of the instructions of one reduction per accumulator, and the
        // same order of additions for a pair whatever R and Q.
        let lanes: [__m512; Q] = std::array::from_fn(|qi| lane_sums4_ps(&std::array::from_fn(|ri| if ri < R { acc[qi][ri] } else { _mm512_setzero_ps() })));
        let mut out = [[0.0; R]; Q];
        if Q == 4 {
            let sums: [f32; 16] = std::mem::transmute(pair_lanes_ps(pair_lanes_ps(lanes[0], lanes[1]), pair_lanes_ps(lanes[2], lanes[3])));
            for qi in 0..Q {
                out[qi].copy_from_slice(&sums[qi * 4..qi * 4 + R]);
            }
            return out;
        }
        for qi in 0..Q {
            let pairs = pair_lanes_ps(lanes[qi], lanes[qi]);
            let sums: [f32; 4] = std::mem::transmute(_mm_add_ps(_mm512_castps512_ps128(pairs), _mm512_extractf32x4_ps(pairs, 1)));
            out[qi].copy_from_slice(&sums[..R]);
        }
        out
    }

    /// [`lane_sums4`] of f32 accumulators: in each 128-bit lane, `[a, b, c, d]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn lane_sums4_ps(acc: &[__m512; 4]) -> __m512 {
        let [a, b, c, d] = *acc;
        let ab = _mm512_castps_pd(_mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b)));
        let cd = _mm512_castps_pd(_mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d)));
        _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(ab, cd)), _mm512_castpd_ps(_mm512_unpackhi_pd(ab, cd)))
    }

    /// [`pair_lanes`] of f32 sums.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn pair_lanes_ps(x: __m512, y: __m512) -> __m512 {
        _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0b10_00_10_00), _mm512_shuffle_f32x4(x, y, 0b11_01_11_01))
    }

    pub fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
        assert!(a.len() == b.len() && a.len().is_multiple_of(16));
        unsafe { avx2_f32::<1, 1>(&[a.as_ptr()], &[b.as_ptr()], a.len() / 16, None)[0][0] }
    }

    pub fn block_f32_avx2(rows: &[&[f32]; 4], queries: &[&[f32]; 4]) -> [[f32; 4]; 4] {
        let len = rows[0].len();
        assert!(len.is_multiple_of(16) && rows.iter().all(|r| r.len() == len) && queries.iter().all(|q| q.len() == len));
        // 2 x 2 at a time: two accumulators a pair, 8 of them, fit beside the loads.
        let mut out = [[0.0; 4]; 4];
        for (r0, q0) in [(0, 0), (0, 2), (2, 0), (2, 2)] {
            let part =
                unsafe { avx2_f32::<2, 2>(&[rows[r0].as_ptr(), rows[r0 + 1].as_ptr()], &[queries[q0].as_ptr(), queries[q0 + 1].as_ptr()], len / 16, None) };
            for (qi, row) in part.iter().enumerate() {
                out[q0 + qi][r0..r0 + 2].copy_from_slice(row);
            }
        }
        out
    }

    pub fn rows_f32_avx2(rows: &[&[f32]; 4], q: &[f32], next: &[&[f32]; 4]) -> [f32; 4] {
        let len = q.len();
        assert!(len.is_multiple_of(16) && rows.iter().chain(next).all(|r| r.len() == len));
        unsafe { avx2_f32::<4, 1>(&rows.map(|r| r.as_ptr()), &[q.as_ptr()], len / 16, Some(&next.map(|r| r.as_ptr())))[0] }
    }

    /// R rows x Q queries of `steps` 16-float steps each. Two accumulators a
    /// pair (the even and the odd 8 floats of a step) hide the latency of
    /// FMA; every pair is summed in the same order whatever R and Q. With one
    /// query, the rows `next` (as long) are fetched a line per step, as in `avx2_u8`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_f32<const R: usize, const Q: usize>(
        rows: &[*const f32; R],
        queries: &[*const f32; Q],
        steps: usize,
        next: Option<&[*const f32; R]>,
    ) -> [[f32; R]; Q] {
        let mut even = [[_mm256_setzero_ps(); R]; Q];
        let mut odd = [[_mm256_setzero_ps(); R]; Q];
        // A macro, not a closure: the body keeps this function's target features.
        macro_rules! step {
            ($s:expr, $ri:expr) => {{
                let (s, ri) = ($s, $ri);
                let (r0, r1) = (_mm256_loadu_ps(rows[ri].add(s * 16)), _mm256_loadu_ps(rows[ri].add(s * 16 + 8)));
                for qi in 0..Q {
                    even[qi][ri] = _mm256_fmadd_ps(r0, _mm256_loadu_ps(queries[qi].add(s * 16)), even[qi][ri]);
                    odd[qi][ri] = _mm256_fmadd_ps(r1, _mm256_loadu_ps(queries[qi].add(s * 16 + 8)), odd[qi][ri]);
                }
            }};
        }
        match next {
            // One query: row by row, each read front to back, as `avx2_u8`.
            Some(next) => {
                for (ri, fetch) in next.iter().enumerate() {
                    for s in 0..steps {
                        _mm_prefetch(fetch.add(s * 16) as *const i8, _MM_HINT_NTA);
                        step!(s, ri);
                    }
                }
            }
            None => {
                for s in 0..steps {
                    for ri in 0..R {
                        step!(s, ri);
                    }
                }
            }
        }
        let mut out = [[0.0; R]; Q];
        for qi in 0..Q {
            for ri in 0..R {
                let v = _mm256_add_ps(even[qi][ri], odd[qi][ri]);
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0b01));
                out[qi][ri] = _mm_cvtss_f32(s);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_agrees_with_scalar() {
        let c: Vec<u8> = (0..512u32).map(|i| (i * 37 % 256) as u8).collect();
        let q: Vec<i8> = (0..512i32).map(|i| ((i * 91) % 256 - 128) as i8).collect();
        let fa: Vec<f32> = (0..512).map(|i| ((i * 13) % 29) as f32 / 7.0 - 2.0).collect();
        let fb: Vec<f32> = (0..512).map(|i| ((i * 7) % 31) as f32 / 5.0 - 3.0).collect();
        let want_u8 = scalar::dot_u8_i8(&c, &q);
        let want_f32 = scalar::dot_f32(&fa, &fb);
        for k in Kernels::available() {
            assert_eq!((k.dot_u8_i8)(&c, &q), want_u8, "{}", k.name);
            assert_eq!((k.dot_u8_i8)(&[255; 64], &[-128; 64]), 255 * -128 * 64, "{}", k.name);
            let got = (k.dot_f32)(&fa, &fb);
            assert!((got - want_f32).abs() <= 1e-3 * want_f32.abs().max(1.0), "{}: {got} vs {want_f32}", k.name);
        }
    }

    /// Every block kernel gives what its one-pair kernel gives, pair by pair
    /// (bit for bit, f32 included), at several lengths and with repeated rows.
    #[test]
    fn block_kernels_agree_with_their_pair_kernels() {
        for blocks in [1usize, 2, 3, 8, 9] {
            let len = blocks * 64;
            let rows: Vec<Vec<u8>> = (0..4u32).map(|r| (0..len as u32).map(|i| ((i * 37 + r * 101) % 256) as u8).collect()).collect();
            let queries: Vec<Vec<i8>> = (0..4i32).map(|q| (0..len as i32).map(|i| ((i * 91 + q * 53) % 256 - 128) as i8).collect()).collect();
            let frows: Vec<Vec<f32>> = rows.iter().map(|r| r.iter().map(|&v| v as f32 / 97.0 - 1.3).collect()).collect();
            let fqueries: Vec<Vec<f32>> = queries.iter().map(|q| q.iter().map(|&v| v as f32 / 61.0).collect()).collect();
            let q: [&[i8]; 4] = [&queries[0], &queries[1], &queries[2], &queries[3]];
            let fq: [&[f32]; 4] = [&fqueries[0], &fqueries[1], &fqueries[2], &fqueries[3]];
            // Four rows, then row 3 repeating row 0, as a tail is padded.
            for (k, last) in Kernels::available().into_iter().flat_map(|k| [(k, 3), (k, 0)]) {
                let r: [&[u8]; 4] = [&rows[0], &rows[1], &rows[2], &rows[last]];
                let fr: [&[f32]; 4] = [&frows[0], &frows[1], &frows[2], &frows[last]];
                let (block, one) = ((k.block_u8)(&r, &q), (k.rows_u8)(&r, q[2], &r));
                let (fblock, fone) = ((k.block_f32)(&fr, &fq), (k.rows_f32)(&fr, fq[1], &fr));
                for ri in 0..4 {
                    for qi in 0..4 {
                        assert_eq!(block[qi][ri], scalar::dot_u8_i8(r[ri], q[qi]), "{} {len}", k.name);
                        assert_eq!(fblock[qi][ri].to_bits(), (k.dot_f32)(fr[ri], fq[qi]).to_bits(), "{} {len}", k.name);
                        let want = scalar::dot_f32(fr[ri], fq[qi]);
                        assert!((fblock[qi][ri] - want).abs() <= 1e-3 * want.abs().max(1.0), "{} {len}", k.name);
                    }
                    assert_eq!(one[ri], block[2][ri], "{} {len}", k.name);
                    assert_eq!(fone[ri].to_bits(), fblock[1][ri].to_bits(), "{} {len}", k.name);
                }
            }
        }
    }
}

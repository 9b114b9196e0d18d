//! Dot-product kernels, chosen once at run time for the CPU.
//!
//! Rows and queries are padded with zeros to a multiple of 64 bytes, so every
//! kernel works on whole 64-byte blocks and needs no tail loop.
//!
//! u8 descriptors decode as `(q - 128) / 128`. The scale cancels in a cosine, so
//! the kernels work on `q - 128`. Candidates stay as stored (u8) and the query
//! is shifted once to i8: `dot(c - 128, s) = dot_u8_i8(c, s) - 128 * sum(s)`,
//! which is exactly what AVX-512 VNNI's `vpdpbusd` (u8 x i8) computes.

use std::sync::OnceLock;

/// A u8 x i8 dot product of equal-length, 64-byte-padded slices.
pub type DotU8 = fn(&[u8], &[i8]) -> i32;
/// An f32 dot product of equal-length slices padded to 16 elements.
pub type DotF32 = fn(&[f32], &[f32]) -> f32;

/// One implementation of both kernels.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// Which implementation, for the log and the benches.
    pub name: &'static str,
    /// Candidate rows (u8) against a shifted query (i8).
    pub dot_u8_i8: DotU8,
    /// f32 rows against an f32 query.
    pub dot_f32: DotF32,
}

impl Kernels {
    /// The portable fallback, also the reference the SIMD kernels are tested against.
    pub fn scalar() -> Kernels {
        Kernels { name: "scalar", dot_u8_i8: scalar::dot_u8_i8, dot_f32: scalar::dot_f32 }
    }

    /// The fastest kernels this CPU supports.
    pub fn detect() -> Kernels {
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw");
            if avx512 && is_x86_feature_detected!("avx512vnni") {
                return Kernels { name: "avx512-vnni", dot_u8_i8: x86::dot_u8_i8_vnni, dot_f32: x86::dot_f32_avx512 };
            }
            if avx512 {
                return Kernels { name: "avx512", dot_u8_i8: x86::dot_u8_i8_avx2, dot_f32: x86::dot_f32_avx512 };
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Kernels { name: "avx2", dot_u8_i8: x86::dot_u8_i8_avx2, dot_f32: x86::dot_f32_avx2 };
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
                all.push(Kernels { name: "avx2", dot_u8_i8: x86::dot_u8_i8_avx2, dot_f32: x86::dot_f32_avx2 });
            }
            let best = Kernels::detect();
            if !all.iter().any(|k| k.name == best.name) {
                all.push(best);
            }
        }
        all
    }
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
        unsafe { vnni(c, q) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn vnni(c: &[u8], q: &[i8]) -> i32 {
        let blocks = c.len() / 64;
        let (cp, qp) = (c.as_ptr() as *const __m512i, q.as_ptr() as *const __m512i);
        let mut acc0 = _mm512_setzero_si512();
        let mut acc1 = _mm512_setzero_si512();
        let mut i = 0;
        while i + 2 <= blocks {
            acc0 = _mm512_dpbusd_epi32(acc0, _mm512_loadu_si512(cp.add(i)), _mm512_loadu_si512(qp.add(i)));
            acc1 = _mm512_dpbusd_epi32(acc1, _mm512_loadu_si512(cp.add(i + 1)), _mm512_loadu_si512(qp.add(i + 1)));
            i += 2;
        }
        if i < blocks {
            acc0 = _mm512_dpbusd_epi32(acc0, _mm512_loadu_si512(cp.add(i)), _mm512_loadu_si512(qp.add(i)));
        }
        _mm512_reduce_add_epi32(_mm512_add_epi32(acc0, acc1))
    }

    pub fn dot_u8_i8_avx2(c: &[u8], q: &[i8]) -> i32 {
        assert!(c.len() == q.len() && c.len().is_multiple_of(64));
        unsafe { avx2_u8(c, q) }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn avx2_u8(c: &[u8], q: &[i8]) -> i32 {
        // Widen to i16 first: _mm256_maddubs_epi16 would saturate on 255 * -128 * 2.
        let mut acc = _mm256_setzero_si256();
        let mut i = 0;
        while i < c.len() {
            let a = _mm256_cvtepu8_epi16(_mm_loadu_si128(c.as_ptr().add(i) as *const __m128i));
            let b = _mm256_cvtepi8_epi16(_mm_loadu_si128(q.as_ptr().add(i) as *const __m128i));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
            i += 16;
        }
        let s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }

    pub fn dot_f32_avx512(a: &[f32], b: &[f32]) -> f32 {
        assert!(a.len() == b.len() && a.len().is_multiple_of(16));
        unsafe { avx512_f32(a, b) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn avx512_f32(a: &[f32], b: &[f32]) -> f32 {
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= a.len() {
            for (k, slot) in acc.iter_mut().enumerate() {
                *slot = _mm512_fmadd_ps(_mm512_loadu_ps(ap.add(i + 16 * k)), _mm512_loadu_ps(bp.add(i + 16 * k)), *slot);
            }
            i += 64;
        }
        while i < a.len() {
            acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(ap.add(i)), _mm512_loadu_ps(bp.add(i)), acc[0]);
            i += 16;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }

    pub fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
        assert!(a.len() == b.len() && a.len().is_multiple_of(16));
        unsafe { avx2_f32(a, b) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_f32(a: &[f32], b: &[f32]) -> f32 {
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i < a.len() {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(i)), _mm256_loadu_ps(bp.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(i + 8)), _mm256_loadu_ps(bp.add(i + 8)), acc1);
            i += 16;
        }
        let v = _mm256_add_ps(acc0, acc1);
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0b01));
        _mm_cvtss_f32(s)
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
}

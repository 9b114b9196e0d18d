//! The AMX tile kernel: 32 u8 rows against 32 shifted queries in one call.
//!
//! A coalesced scan is bound by compute, and one `tdpbusd` does a 16 x 16
//! block of 64-byte dot products (u8 x i8, as `vpdpbusd` does per lane). The
//! kernel holds four 16 x 16 accumulators, loads 32 rows straight from the
//! index at the row stride and the queries from [`Panels`], laid out once per
//! batch in the order the instruction reads them. Integer sums are exact, so
//! a pair scores the same here as in the one-pair kernel.
//!
//! Linux hands out the tile registers only to a process that asks
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); [`available`] asks once.

/// Rows and queries per call.
pub const TILE: usize = 32;

/// Shifted queries laid out for the tile kernel, in groups of [`TILE`]
/// (the last group padded with zero queries, whose scores are not read).
pub struct Panels {
    /// Per group, per 64-byte block of the descriptor, two 16-query panels
    /// of 16 lines x 64 bytes: line `k` holds bytes `4k..4k+4` of each query.
    bytes: Vec<Line>,
    blocks: usize,
    queries: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([i8; 64]);

impl Panels {
    /// Lay out `queries`, each `blocks` 64-byte blocks long.
    pub fn new(queries: &[&[i8]], blocks: usize) -> Panels {
        let groups = queries.len().div_ceil(TILE);
        let mut bytes = vec![Line([0; 64]); groups * blocks * 2 * 16];
        for (q, query) in queries.iter().enumerate() {
            assert_eq!(query.len(), blocks * 64, "a query of the panels' length");
            let (group, panel, column) = (q / TILE, q % TILE / 16, q % 16);
            for b in 0..blocks {
                for k in 0..16 {
                    let line = &mut bytes[((group * blocks + b) * 2 + panel) * 16 + k].0;
                    line[column * 4..column * 4 + 4].copy_from_slice(&query[b * 64 + k * 4..b * 64 + k * 4 + 4]);
                }
            }
        }
        Panels { bytes, blocks, queries: queries.len() }
    }

    /// Groups of [`TILE`] queries.
    pub fn groups(&self) -> usize {
        self.queries.div_ceil(TILE)
    }
}

/// Whether the tile kernel runs here: the CPU has AMX-INT8 and the kernel
/// granted this process the tile registers.
pub fn available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        // CPUID leaf 7: EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        if edx & (3 << 24) != 3 << 24 {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    false
}

/// Rows `rows[i * stride..][..64 * blocks]`, i < 32, against query group
/// `group` of `panels`: `out[row][query]`. Only for callers that saw
/// [`available`] say true.
pub fn tile_u8(rows: &[u8], stride: usize, panels: &Panels, group: usize, out: &mut [[i32; TILE]; TILE]) {
    let blocks = panels.blocks;
    assert!(group < panels.groups() && blocks > 0 && stride >= blocks * 64 && rows.len() >= (TILE - 1) * stride + blocks * 64);
    let b = panels.bytes[group * blocks * 32..(group + 1) * blocks * 32].as_ptr() as *const i8;
    #[cfg(target_arch = "x86_64")]
    unsafe {
        x86::tile(rows.as_ptr(), stride, b, blocks, out.as_mut_ptr() as *mut i32)
    };
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no tile kernel off x86_64 ({b:?})");
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;

    /// Palette 1, eight tiles of 16 lines x 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    static CONFIG: Config = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
            t += 1;
        }
        Config(c)
    };

    /// tmm0..3: the accumulators (rows 0-15 and 16-31 x queries 0-15 and
    /// 16-31); tmm4, tmm5: the two row halves of a block; tmm6, tmm7: the
    /// two query panels of that block. The tiles are configured and
    /// released within the call: nothing else in the process uses them.
    pub unsafe fn tile(a: *const u8, stride: usize, b: *const i8, blocks: usize, out: *mut i32) {
        unsafe {
            asm!(
                "ldtilecfg [{cfg}]",
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "2:",
                "tileloadd tmm4, [{a} + {s}*1]",
                "tileloadd tmm5, [{a1} + {s}*1]",
                "tileloadd tmm6, [{b} + {line}*1]",
                "tileloadd tmm7, [{b} + {line}*1 + 1024]",
                "tdpbusd tmm0, tmm4, tmm6",
                "tdpbusd tmm1, tmm4, tmm7",
                "tdpbusd tmm2, tmm5, tmm6",
                "tdpbusd tmm3, tmm5, tmm7",
                "add {a}, 64",
                "add {a1}, 64",
                "add {b}, 2048",
                "dec {n}",
                "jnz 2b",
                "tilestored [{o} + {os}*1], tmm0",
                "tilestored [{o} + {os}*1 + 64], tmm1",
                "tilestored [{o1} + {os}*1], tmm2",
                "tilestored [{o1} + {os}*1 + 64], tmm3",
                "tilerelease",
                cfg = in(reg) &CONFIG,
                a = inout(reg) a => _,
                a1 = inout(reg) a.add(16 * stride) => _,
                s = in(reg) stride,
                b = inout(reg) b => _,
                line = in(reg) 64usize,
                n = inout(reg) blocks => _,
                o = in(reg) out,
                o1 = in(reg) out.add(16 * 32),
                os = in(reg) 128usize,
                options(nostack),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pair of 40 rows x 40 queries (two groups, the second padded)
    /// scores what the plain sum gives, at the largest and smallest values.
    #[test]
    fn tiles_agree_with_plain_sums() {
        if !available() {
            eprintln!("no AMX here: the tile kernel is not run");
            return;
        }
        let (blocks, stride) = (8, 8 * 64);
        let mut rows: Vec<u8> = (0..40 * stride).map(|i| (i * 37 % 251) as u8).collect();
        rows[..64].fill(255);
        let queries: Vec<Vec<i8>> = (0..40).map(|q| (0..blocks * 64).map(|i| ((i * 91 + q * 53) % 256) as u8 as i8).collect()).collect();
        let mut q0 = queries.clone();
        q0[0][..64].fill(-128);
        let refs: Vec<&[i8]> = q0.iter().map(|q| &q[..]).collect();
        let panels = Panels::new(&refs, blocks);
        assert_eq!(panels.groups(), 2);
        // Rows 8..40 need a whole tile of rows past them: pad the buffer.
        rows.resize(rows.len() + TILE * stride, 0);
        for (start, group) in [(0, 0), (8, 1)] {
            let mut out = [[0; TILE]; TILE];
            tile_u8(&rows[start * stride..], stride, &panels, group, &mut out);
            for r in 0..TILE {
                for q in 0..TILE.min(40 - group * TILE) {
                    let row = &rows[(start + r) * stride..][..blocks * 64];
                    let query = refs[group * TILE + q];
                    let want: i32 = row.iter().zip(query).map(|(&a, &b)| a as i32 * b as i32).sum();
                    assert_eq!(out[r][q], want, "row {} query {}", start + r, group * TILE + q);
                }
            }
        }
    }
}

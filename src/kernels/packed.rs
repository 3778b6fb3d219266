//! f32 products on one thread with vitkit's own packed kernels: a 6×16 register tile for x86-64
//! CPUs with AVX2 and FMA, and an 8×32 one for CPUs with AVX-512 (in builds with the `avx512`
//! feature). Why the AVX2 one: it beats both the gemm crate's AVX2 path and OpenBLAS 0.3.21 at
//! every ViT product shape, needs no system library, and writes the output directly (no zeroing
//! pass when not accumulating). Measured with `examples/products.rs` on two Zen 3 cores (peak 202
//! GFLOP/s), best of 10: 185–193 GFLOP/s on ViT-Ti/4 and ViT-B/16 batch-8 shapes against gemm's
//! 175–187 and OpenBLAS's 174–182; 156 against 151 and 156 for one 197-token image. Whole
//! training and inference steps, alternated: 1–7% faster than with OpenBLAS in all 14 benchmark
//! cases, 1–14% faster than with gemm in 13 (one 224px image through ViT-B/16: 8% slower;
//! docs/performance.md, session 19). The AVX-512 tile is not the default (`blas.rs`): on two Zen 5
//! cores it ran level with gemm's AVX-512 kernel on ViT's shapes, within that machine's noise,
//! ahead at one 224px image through ViT-B/16 and behind on CMT training and on narrow weight
//! gradients (session 20).
//!
//! Layout: the product is cut into blocks of `nc` output columns × `kc` steps of the sum; each
//! block of `b` is packed once into `nr`-column panels (`nr` values per step, contiguous), and
//! for each `mc` rows of `a`, those rows are packed into `mr`-row panels (`mr` values per step).
//! The register tile keeps an `mr × nr` block of the output in registers for the whole `kc`
//! steps: per step `nr / 8` (AVX2) or `nr / 16` (AVX-512) loads of `b`, `mr` broadcasts of `a`,
//! one FMA per register. An `nr`-column panel of `b` (16 KiB for AVX2, 48 KiB for AVX-512: a
//! Zen 5's whole L1) stays in L1 while every `mr`-row panel of the `a` block (in L2) passes
//! under it. The AVX2 tile reads a row-major `a` (adjacent values along the sum: activations, an
//! output gradient, attention's queries) where it lies, six rows at a time, with no packing: the
//! six rows' `kc` values are six short streams, as cache-friendly as a packed panel, and packing
//! them cost 7% of a NesT training step (session 23: `32768 × 64 × 256` products 183 → 240 GFLOP/s
//! on two Zen 5 cores, AVX2 peak ~235). A transposed `a` (a weight gradient's) is still packed:
//! read in place, its steps lie a whole row apart, and strides of multiples of 4 KiB thrashed L1.

use super::views::{View, ViewMut};

/// One register tile and the blocks of the operands packed around it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Blocking {
    /// Rows of the register tile.
    mr: usize,
    /// Columns of the register tile.
    nr: usize,
    /// Steps of the sum per packed block: an `nr`-column panel of `b` is `kc · nr · 4` bytes (L1).
    kc: usize,
    /// Rows of `a` per packed block (`mc · kc · 4` bytes: 192 KiB for AVX2, 288 for AVX-512; L2).
    mc: usize,
    /// Columns of `b` per packed block (`nc · kc · 4` bytes: 3 or 4.5 MiB, in L3).
    nc: usize,
}

/// Which register tile runs the products.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kernel {
    /// 6 rows × 16 columns in 12 AVX registers.
    Avx2,
    /// 8 rows × 32 columns in 16 AVX-512 registers.
    Avx512,
}

impl Kernel {
    fn blocking(self) -> Blocking {
        match self {
            Kernel::Avx2 => Blocking {
                mr: 6,
                nr: 16,
                kc: 256,
                mc: 192,
                nc: 3072,
            },
            // 384 steps: in whole steps (Zen 5) ahead of 256 in 12 of 15 alternated runs.
            Kernel::Avx512 => Blocking {
                mr: 8,
                nr: 32,
                kc: 384,
                mc: 192,
                nc: 3072,
            },
        }
    }

    /// Whether this CPU (and, for AVX-512, this build) runs it.
    pub fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            match self {
                Kernel::Avx2 => avx2,
                Kernel::Avx512 => {
                    cfg!(feature = "avx512") && avx2 && std::is_x86_feature_detected!("avx512f")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// The register tile's side along `dst`'s columns (`by_cols`) or rows, as [`product`] lays
    /// the tile on `dst`: parts of a product cut to multiples of it leave a partial tile only at
    /// the end (cut to multiples of 96 instead, a 256-wide output on two threads became parts of
    /// 192 and 64, one thread idle for half the time: NesT's and CMT's widths).
    pub fn tile_side(self, dst: &ViewMut, by_cols: bool) -> usize {
        let Blocking { mr, nr, .. } = self.blocking();
        if by_cols != column_major(dst) { nr } else { mr }
    }

    /// "AVX2" or "AVX-512".
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx2 => "AVX2",
            Kernel::Avx512 => "AVX-512",
        }
    }
}

/// The widest kernel this CPU and build run, if any.
pub fn kernel() -> Option<Kernel> {
    [Kernel::Avx512, Kernel::Avx2].into_iter().find(|k| k.runs_here())
}

/// Whether `dst`'s columns, not its rows, hold adjacent values: [`product`] then computes the
/// transposed product.
fn column_major(dst: &ViewMut) -> bool {
    let (_, rs, cs) = dst.raw();
    cs != 1 && rs == 1
}

/// `dst = s · a · b` (or `+=` when `accumulate`) on this thread, with `kernel`.
///
/// # Safety
/// As `matmul::product`: `dst` overlaps neither input, nobody else touches it meanwhile, and
/// the storage behind the views outlives the call; when `accumulate` is false `dst` may be
/// uninitialised (it is only written). `kernel` must run here ([`Kernel::runs_here`]).
pub unsafe fn product(kernel: Kernel, dst: ViewMut, a: View, b: View, s: f32, accumulate: bool) {
    assert!(
        kernel.runs_here(),
        "the packed {} kernel does not run here",
        kernel.name()
    );
    // The tile writes rows of adjacent values: a column-major output is the row-major Cᵀ = Bᵀ·Aᵀ.
    let (dst, a, b) = if column_major(&dst) {
        (dst.t(), b.t(), a.t())
    } else {
        (dst, a, b)
    };
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's guarantees, and the CPU features, carry over.
    unsafe {
        x86::product(kernel, dst, a, b, s, accumulate)
    };
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "the packed kernel runs on x86-64 only ({kernel:?}, {:?}, {:?}, {:?}, {s}, {accumulate})",
        dst, a, b
    );
}

#[cfg(target_arch = "x86_64")]
mod tiles;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::cell::RefCell;

    use super::tiles::{Tile, tile_avx2, tile_avx2_rows, tile_avx512};
    use super::{Blocking, Kernel};
    use crate::kernels::views::{View, ViewMut};
    use crate::kernels::{Fused, enabled};

    thread_local! {
        /// Each thread's packed blocks of `a` and `b`, kept between products.
        static PACKED: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    }

    /// Floats written past the last panel of `a` (its packing stores eight lanes for six).
    const SPARE: usize = 8;

    /// `len` floats of `buf` starting at a 64-byte boundary (grown as needed).
    fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
        if buf.len() < len + 16 {
            buf.resize(len + 16, 0.0);
        }
        let offset = buf.as_ptr().align_offset(64);
        &mut buf[offset..offset + len]
    }

    /// See `super::product`.
    pub(super) unsafe fn product(kernel: Kernel, dst: ViewMut, a: View, b: View, s: f32, accumulate: bool) {
        let Blocking {
            mr,
            nr,
            kc: kc_max,
            mc: mc_max,
            nc: nc_max,
        } = kernel.blocking();
        let (m, n, k) = (dst.rows, dst.cols, a.cols);
        let ((c, crs, ccs), (ap, ars, acs), (bp, brs, bcs)) = (dst.raw(), a.raw(), b.raw());
        // A row-major `a` is read where it lies by the AVX2 tile (its packing was 7% of a NesT
        // training step on the AVX2 build).
        let direct = kernel == Kernel::Avx2 && acs == 1 && enabled(Fused::DirectRows);
        PACKED.with_borrow_mut(|(a_buf, b_buf)| {
            for jc in (0..n).step_by(nc_max) {
                let nc = nc_max.min(n - jc);
                for pc in (0..k).step_by(kc_max) {
                    let kc = kc_max.min(k - pc);
                    // Later blocks of the sum add onto what the first wrote.
                    let add = accumulate || pc > 0;
                    let b_block = aligned(b_buf, nc.div_ceil(nr) * nr * kc);
                    // SAFETY: (pc, jc) lies inside `b`; the caller's guarantees and CPU features.
                    unsafe {
                        pack_b(
                            b_block,
                            bp.offset(pc as isize * brs + jc as isize * bcs),
                            (brs, bcs),
                            (kc, nc),
                            nr,
                        )
                    };
                    for ic in (0..m).step_by(mc_max) {
                        let mc = mc_max.min(m - ic);
                        // Read in place, a row-major `a`'s full panels are not packed: only a
                        // last panel of fewer than `mr` rows is (padded with zeros).
                        let packed_from = if direct { mc / mr * mr } else { 0 };
                        let a_block = aligned(a_buf, (mc - packed_from).div_ceil(mr) * mr * kc + SPARE);
                        if packed_from < mc {
                            // SAFETY: (ic + packed_from, pc) lies inside `a`.
                            unsafe {
                                pack_a(
                                    a_block,
                                    ap.offset((ic + packed_from) as isize * ars + pc as isize * acs),
                                    (ars, acs),
                                    (mc - packed_from, kc),
                                    mr,
                                )
                            };
                        }
                        for jr in (0..nc).step_by(nr) {
                            let b_panel = b_block[jr * kc..].as_ptr();
                            for ir in (0..mc).step_by(mr) {
                                let out = Tile {
                                    // SAFETY: (ic + ir, jc + jr) lies inside `dst`.
                                    ptr: unsafe {
                                        c.offset((ic + ir) as isize * crs + (jc + jr) as isize * ccs)
                                    },
                                    rs: crs,
                                    cs: ccs,
                                    rows: mr.min(mc - ir),
                                    cols: nr.min(nc - jr),
                                };
                                if ir < packed_from {
                                    // SAFETY: rows ic + ir.. (all `mr` inside `a`) hold `kc`
                                    // adjacent values from pc; the panel of `b` holds `kc` steps.
                                    unsafe {
                                        let rows = ap.offset((ic + ir) as isize * ars + pc as isize);
                                        tile_avx2_rows(kc, rows, ars, b_panel, out, s, add)
                                    };
                                    continue;
                                }
                                let a_panel = a_block[(ir - packed_from) * kc..].as_ptr();
                                // SAFETY: the panels hold `kc` steps each; `out` is inside `dst`;
                                // the kernel runs here (checked by the caller).
                                unsafe {
                                    match kernel {
                                        Kernel::Avx2 => tile_avx2(kc, a_panel, b_panel, out, s, add),
                                        Kernel::Avx512 => tile_avx512(kc, a_panel, b_panel, out, s, add),
                                    }
                                }
                            }
                        }
                    }
                }
            }
        });
    }

    /// Transposes eight rows of eight floats.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ]
    }

    /// Packs `mc × kc` of `a` (strides `rs`, `cs`) into `mr`-row panels (`mr` ≤ 8), `kc` steps
    /// of `mr` values each, rows past `mc` zero. `dst` has `SPARE` floats past the last panel.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pack_a(
        dst: &mut [f32],
        a: *const f32,
        (rs, cs): (isize, isize),
        (mc, kc): (usize, usize),
        mr: usize,
    ) {
        for r in 0..mc.div_ceil(mr) {
            let panel = dst[r * kc * mr..].as_mut_ptr();
            let rows = mr.min(mc - r * mr);
            // SAFETY (whole body): reads stay inside the `mc × kc` block of `a`; writes inside
            // the panel, or its successor's start (overwritten when that is packed), or the spare.
            let at = |i: usize, p: usize| unsafe { *a.offset((r * mr + i) as isize * rs + p as isize * cs) };
            if rows < mr {
                dst[r * kc * mr..(r + 1) * kc * mr].fill(0.0);
                let panel = dst[r * kc * mr..].as_mut_ptr();
                for p in 0..kc {
                    for i in 0..rows {
                        unsafe { *panel.add(p * mr + i) = at(i, p) };
                    }
                }
            } else if rs == 1 {
                // `mr` adjacent values per step (a transposed operand, e.g. a weight gradient's
                // inputs): a masked load, never past the block, and a store of eight lanes whose
                // last `8 - mr` the next step overwrites.
                let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(mr as i32), lanes);
                for p in 0..kc {
                    let v =
                        unsafe { _mm256_maskload_ps(a.offset((r * mr) as isize + p as isize * cs), mask) };
                    unsafe { _mm256_storeu_ps(panel.add(p * mr), v) };
                }
            } else if cs == 1 {
                // Rows of adjacent values (activations): eight steps of the `mr` rows at a time
                // through an 8×8 transpose, the last `8 - mr` lanes of each store overwritten.
                let row = |i: usize| unsafe { a.offset((r * mr + i) as isize * rs) };
                let mut p = 0;
                while p + 8 <= kc {
                    let mut v = [_mm256_setzero_ps(); 8];
                    for (i, v) in v.iter_mut().take(mr).enumerate() {
                        *v = unsafe { _mm256_loadu_ps(row(i).add(p)) };
                    }
                    for (q, t) in transpose8(v).into_iter().enumerate() {
                        unsafe { _mm256_storeu_ps(panel.add((p + q) * mr), t) };
                    }
                    p += 8;
                }
                for p in p..kc {
                    for i in 0..mr {
                        unsafe { *panel.add(p * mr + i) = at(i, p) };
                    }
                }
            } else {
                for p in 0..kc {
                    for i in 0..mr {
                        unsafe { *panel.add(p * mr + i) = at(i, p) };
                    }
                }
            }
        }
    }

    /// Copies `kc` rows of `N` floats, `rs` apart from `src`, into consecutive rows at `out`
    /// (32-byte aligned).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn copy_rows<const N: usize>(out: *mut f32, src: *const f32, rs: isize, kc: usize) {
        for p in 0..kc {
            // SAFETY: the caller's extents.
            unsafe {
                let row = src.offset(p as isize * rs);
                for e in (0..N).step_by(8) {
                    _mm256_store_ps(out.add(p * N + e), _mm256_loadu_ps(row.add(e)));
                }
            }
        }
    }

    /// Packs `kc × nc` of `b` (strides `rs`, `cs`) into `nr`-column panels (`nr` a multiple of
    /// 8), `kc` steps of `nr` values each, columns past `nc` zero. `dst` starts 32-byte aligned.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pack_b(
        dst: &mut [f32],
        b: *const f32,
        (rs, cs): (isize, isize),
        (kc, nc): (usize, usize),
        nr: usize,
    ) {
        for (j, panel) in dst.chunks_exact_mut(kc * nr).enumerate() {
            let cols = nr.min(nc - j * nr);
            // SAFETY (whole body): reads stay inside the `kc × nc` block of `b`.
            let column = |jj: usize| unsafe { b.offset((j * nr + jj) as isize * cs) };
            if cols < nr {
                panel.fill(0.0);
            }
            let out = panel.as_mut_ptr();
            if cs == 1 && cols == nr {
                // Rows of adjacent values (a gradient, or a weight stored `[in, out]`): copies,
                // a register at a time, with the panel width known when compiled. (With `nr`
                // read at run time, the compiler turned this loop into one library call per
                // 64-byte row: 3.4% of a NesT training step on the AVX2 build.)
                let src = column(0);
                // SAFETY: `kc` rows of `nr` values from `src`, `rs` apart; the panel holds them.
                unsafe {
                    match nr {
                        16 => copy_rows::<16>(out, src, rs, kc),
                        32 => copy_rows::<32>(out, src, rs, kc),
                        _ => unreachable!("packed panels are 16 or 32 columns wide"),
                    }
                }
            } else if cs == 1 {
                for (p, out) in panel.chunks_exact_mut(nr).enumerate() {
                    let src = unsafe { std::slice::from_raw_parts(column(0).offset(p as isize * rs), cols) };
                    out[..cols].copy_from_slice(src);
                }
            } else if rs == 1 && cols == nr {
                // Columns of adjacent values (a weight stored `[out, in]`, PyTorch's layout):
                // eight steps of each eight columns at a time through an 8×8 transpose.
                let mut p = 0;
                while p + 8 <= kc {
                    for e in (0..nr).step_by(8) {
                        let mut v = [_mm256_setzero_ps(); 8];
                        for (jj, v) in v.iter_mut().enumerate() {
                            *v = unsafe { _mm256_loadu_ps(column(e + jj).add(p)) };
                        }
                        for (q, t) in transpose8(v).into_iter().enumerate() {
                            unsafe { _mm256_storeu_ps(out.add((p + q) * nr + e), t) };
                        }
                    }
                    p += 8;
                }
                for p in p..kc {
                    for jj in 0..nr {
                        unsafe { *out.add(p * nr + jj) = *column(jj).offset(p as isize * rs) };
                    }
                }
            } else {
                for jj in 0..cols {
                    for p in 0..kc {
                        panel[p * nr + jj] = unsafe { *column(jj).offset(p as isize * rs) };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::layouts::check_every_layout;

    /// Every layout, with and without accumulation, against sums in f64, on shapes that cross
    /// every block edge (`kc`, `mc`, `nc`) and leave partial tiles.
    fn check(kernel: Kernel) {
        let nc = kernel.blocking().nc;
        let shapes = [
            (80, 72, 64),
            (1, 512, 600),
            (600, 1, 512),
            (33, 257, 31),
            (197, 45, 300),
            (7, nc + 21, 9),
        ];
        check_every_layout(&shapes, |dst, a, b, s, accumulate| {
            // SAFETY: the checker's buffers are distinct and outlive the call; the test runs
            // only where the kernel does.
            unsafe { product(kernel, dst, a, b, s, accumulate) };
            true
        });
    }

    #[test]
    #[cfg_attr(
        no_avx2_fma,
        ignore = "this CPU lacks AVX2 or FMA: the packed kernels never run on it"
    )]
    fn the_avx2_kernel_matches_a_float64_sum_in_every_layout() {
        check(Kernel::Avx2);
    }

    #[test]
    #[cfg_attr(
        any(no_avx512f, not(feature = "avx512")),
        ignore = "this CPU (or build) lacks AVX-512: the AVX-512 packed kernel never runs on it"
    )]
    fn the_avx512_kernel_matches_a_float64_sum_in_every_layout() {
        check(Kernel::Avx512);
    }
}

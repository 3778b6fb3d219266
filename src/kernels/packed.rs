//! f32 products on one thread with vitkit's own packed kernel, for x86-64 CPUs with AVX2 and
//! FMA but without AVX-512. Why: there it beat both the gemm crate's AVX2 path and OpenBLAS
//! 0.3.21 at every ViT product shape, needs no system library, and writes its output directly
//! (no zeroing pass when not accumulating). Measured with `examples/products.rs` on two Zen 3
//! cores (peak 202 GFLOP/s), best of 10: 185–193 GFLOP/s on ViT-Ti/4 and ViT-B/16 batch-8
//! shapes against gemm's 175–187 and OpenBLAS's 174–182; 156 against 151 and 156 for one
//! 197-token image. Whole training and inference steps, alternated: 1–7% faster than with
//! OpenBLAS in all 14 benchmark cases, 1–14% faster than with gemm in 13 (one 224px image
//! through ViT-B/16: 8% slower; docs/performance.md, session 19).
//!
//! Layout: the product is cut into blocks of `NC` output columns × `KC` steps of the sum; each
//! block of `b` is packed once into 16-column panels (16 values per step, contiguous), and for
//! each `MC` rows of `a`, those rows are packed into 6-row panels (6 values per step). The
//! register tile keeps a 6×16 block of the output in 12 AVX registers for the whole `KC`
//! steps: per step two loads of `b`, six broadcasts of `a`, twelve FMAs. A 16-column panel of
//! `b` (16 KiB) stays in L1 while every 6-row panel of the `a` block (in L2) passes under it.

use super::views::{View, ViewMut};

/// Rows of the register tile.
const MR: usize = 6;
/// Columns of the register tile (two AVX registers).
const NR: usize = 16;
/// Steps of the sum per packed block: a 16-column panel of `b` is `KC · 64` bytes (L1).
const KC: usize = 256;
/// Rows of `a` per packed block (`MC · KC · 4` bytes = 192 KiB, in L2).
const MC: usize = 192;
/// Columns of `b` per packed block (3 MiB, in L3).
const NC: usize = 3072;

/// Whether this CPU runs the kernel (AVX2 and FMA; x86-64 only).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dst = s · a · b` (or `+=` when `accumulate`) on this thread.
///
/// # Safety
/// As `matmul::product`: `dst` overlaps neither input, nobody else touches it meanwhile, and
/// the storage behind the views outlives the call; when `accumulate` is false `dst` may be
/// uninitialised (it is only written). The CPU must have AVX2 and FMA ([`available`]).
pub unsafe fn product(dst: ViewMut, a: View, b: View, s: f32, accumulate: bool) {
    // The tile writes rows of 16 adjacent values: a column-major output is the row-major Cᵀ = Bᵀ·Aᵀ.
    let (_, rs, cs) = dst.raw();
    let (dst, a, b) = if cs != 1 && rs == 1 {
        (dst.t(), b.t(), a.t())
    } else {
        (dst, a, b)
    };
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's guarantees, and the CPU features, carry over.
    unsafe {
        x86::product(dst, a, b, s, accumulate)
    };
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "the packed kernel runs on x86-64 only ({:?}, {:?}, {:?}, {s}, {accumulate})",
        dst, a, b
    );
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::cell::RefCell;

    use super::{KC, MC, MR, NC, NR};
    use crate::kernels::views::{View, ViewMut};

    thread_local! {
        /// Each thread's packed blocks of `a` and `b`, kept between products.
        static PACKED: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    }

    /// `len` floats of `buf` starting at a 32-byte boundary (grown as needed).
    fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
        if buf.len() < len + 8 {
            buf.resize(len + 8, 0.0);
        }
        let offset = buf.as_ptr().align_offset(32);
        &mut buf[offset..offset + len]
    }

    /// See `super::product`.
    pub(super) unsafe fn product(dst: ViewMut, a: View, b: View, s: f32, accumulate: bool) {
        let (m, n, k) = (dst.rows, dst.cols, a.cols);
        let ((c, crs, ccs), (ap, ars, acs), (bp, brs, bcs)) = (dst.raw(), a.raw(), b.raw());
        PACKED.with_borrow_mut(|(a_buf, b_buf)| {
            for jc in (0..n).step_by(NC) {
                let nc = NC.min(n - jc);
                for pc in (0..k).step_by(KC) {
                    let kc = KC.min(k - pc);
                    // Later blocks of the sum add onto what the first wrote.
                    let add = accumulate || pc > 0;
                    let b_block = aligned(b_buf, nc.div_ceil(NR) * NR * kc);
                    // SAFETY: (pc, jc) lies inside `b`; the caller's guarantees and CPU features.
                    unsafe {
                        pack_b(
                            b_block,
                            bp.offset(pc as isize * brs + jc as isize * bcs),
                            brs,
                            bcs,
                            kc,
                            nc,
                        )
                    };
                    for ic in (0..m).step_by(MC) {
                        let mc = MC.min(m - ic);
                        // Eight spare floats: `pack_a` stores eight lanes for six.
                        let a_block = aligned(a_buf, mc.div_ceil(MR) * MR * kc + 8);
                        // SAFETY: (ic, pc) lies inside `a`.
                        unsafe {
                            pack_a(
                                a_block,
                                ap.offset(ic as isize * ars + pc as isize * acs),
                                ars,
                                acs,
                                mc,
                                kc,
                            )
                        };
                        for jr in (0..nc).step_by(NR) {
                            let b_panel = b_block[jr * kc..].as_ptr();
                            for ir in (0..mc).step_by(MR) {
                                let out = Tile {
                                    // SAFETY: (ic + ir, jc + jr) lies inside `dst`.
                                    ptr: unsafe {
                                        c.offset((ic + ir) as isize * crs + (jc + jr) as isize * ccs)
                                    },
                                    rs: crs,
                                    cs: ccs,
                                    rows: MR.min(mc - ir),
                                    cols: NR.min(nc - jr),
                                };
                                // SAFETY: the panels hold `kc` steps each; `out` is inside `dst`.
                                unsafe { tile(kc, a_block[ir * kc..].as_ptr(), b_panel, out, s, add) };
                            }
                        }
                    }
                }
            }
        });
    }

    /// The part of the output one register tile writes (up to `MR × NR`).
    struct Tile {
        ptr: *mut f32,
        rs: isize,
        cs: isize,
        rows: usize,
        cols: usize,
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

    /// Packs `mc × kc` of `a` (strides `rs`, `cs`) into 6-row panels, `kc` steps of 6 values
    /// each, rows past `mc` zero. `dst` has 8 floats to spare past the last panel.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pack_a(dst: &mut [f32], a: *const f32, rs: isize, cs: isize, mc: usize, kc: usize) {
        for r in 0..mc.div_ceil(MR) {
            let panel = dst[r * kc * MR..].as_mut_ptr();
            let rows = MR.min(mc - r * MR);
            // SAFETY (whole body): reads stay inside the `mc × kc` block of `a`; writes inside
            // the panel, or its successor's start (overwritten when that is packed), or the spare.
            let at = |i: usize, p: usize| unsafe { *a.offset((r * MR + i) as isize * rs + p as isize * cs) };
            if rows < MR {
                dst[r * kc * MR..(r + 1) * kc * MR].fill(0.0);
                let panel = dst[r * kc * MR..].as_mut_ptr();
                for p in 0..kc {
                    for i in 0..rows {
                        unsafe { *panel.add(p * MR + i) = at(i, p) };
                    }
                }
            } else if rs == 1 {
                // Six adjacent values per step (a transposed operand, e.g. a weight gradient's
                // inputs): a masked load, never past the block, and a store of eight lanes whose
                // last two the next step overwrites.
                let six = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0);
                for p in 0..kc {
                    let v = unsafe { _mm256_maskload_ps(a.offset((r * MR) as isize + p as isize * cs), six) };
                    unsafe { _mm256_storeu_ps(panel.add(p * MR), v) };
                }
            } else if cs == 1 {
                // Rows of adjacent values (activations): eight steps of the six rows at a time
                // through an 8×8 transpose, two lanes of each store overwritten as above.
                let row = |i: usize| unsafe { a.offset((r * MR + i) as isize * rs) };
                let mut p = 0;
                while p + 8 <= kc {
                    let mut v = [_mm256_setzero_ps(); 8];
                    for (i, v) in v.iter_mut().take(MR).enumerate() {
                        *v = unsafe { _mm256_loadu_ps(row(i).add(p)) };
                    }
                    for (q, t) in transpose8(v).into_iter().enumerate() {
                        unsafe { _mm256_storeu_ps(panel.add((p + q) * MR), t) };
                    }
                    p += 8;
                }
                for p in p..kc {
                    for i in 0..MR {
                        unsafe { *panel.add(p * MR + i) = at(i, p) };
                    }
                }
            } else {
                for p in 0..kc {
                    for i in 0..MR {
                        unsafe { *panel.add(p * MR + i) = at(i, p) };
                    }
                }
            }
        }
    }

    /// Packs `kc × nc` of `b` (strides `rs`, `cs`) into 16-column panels, `kc` steps of 16
    /// values each, columns past `nc` zero.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pack_b(dst: &mut [f32], b: *const f32, rs: isize, cs: isize, kc: usize, nc: usize) {
        for (j, panel) in dst.chunks_exact_mut(kc * NR).enumerate() {
            let cols = NR.min(nc - j * NR);
            // SAFETY (whole body): reads stay inside the `kc × nc` block of `b`.
            let column = |jj: usize| unsafe { b.offset((j * NR + jj) as isize * cs) };
            if cols < NR {
                panel.fill(0.0);
            }
            if cs == 1 && cols == NR {
                // Rows of adjacent values (a gradient, or a weight stored `[in, out]`): copies,
                // two registers per step (a library copy per 64 bytes costs more than it moves).
                let out = panel.as_mut_ptr();
                for p in 0..kc {
                    let src = unsafe { column(0).offset(p as isize * rs) };
                    unsafe {
                        _mm256_store_ps(out.add(p * NR), _mm256_loadu_ps(src));
                        _mm256_store_ps(out.add(p * NR + 8), _mm256_loadu_ps(src.add(8)));
                    }
                }
            } else if cs == 1 {
                for (p, out) in panel.chunks_exact_mut(NR).enumerate() {
                    let src = unsafe { std::slice::from_raw_parts(column(0).offset(p as isize * rs), cols) };
                    out[..cols].copy_from_slice(src);
                }
            } else if rs == 1 && cols == NR {
                // Columns of adjacent values (a weight stored `[out, in]`, PyTorch's layout):
                // eight steps of each half panel at a time through an 8×8 transpose.
                let out = panel.as_mut_ptr();
                let mut p = 0;
                while p + 8 <= kc {
                    for half in 0..2 {
                        let mut v = [_mm256_setzero_ps(); 8];
                        for (jj, v) in v.iter_mut().enumerate() {
                            *v = unsafe { _mm256_loadu_ps(column(half * 8 + jj).add(p)) };
                        }
                        for (q, t) in transpose8(v).into_iter().enumerate() {
                            unsafe { _mm256_storeu_ps(out.add((p + q) * NR + half * 8), t) };
                        }
                    }
                    p += 8;
                }
                for p in p..kc {
                    for jj in 0..NR {
                        unsafe { *out.add(p * NR + jj) = *column(jj).offset(p as isize * rs) };
                    }
                }
            } else {
                for jj in 0..cols {
                    for p in 0..kc {
                        panel[p * NR + jj] = unsafe { *column(jj).offset(p as isize * rs) };
                    }
                }
            }
        }
    }

    /// One step of the sum: the tile += (6 values of `a`) ⊗ (16 values of `b`).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn step(acc: &mut [__m256; 2 * MR], a: *const f32, b: *const f32) {
        // SAFETY: the caller's packed panels hold this step.
        unsafe {
            let b0 = _mm256_load_ps(b);
            let b1 = _mm256_load_ps(b.add(8));
            for i in 0..MR {
                let ai = _mm256_broadcast_ss(&*a.add(i));
                acc[2 * i] = _mm256_fmadd_ps(ai, b0, acc[2 * i]);
                acc[2 * i + 1] = _mm256_fmadd_ps(ai, b1, acc[2 * i + 1]);
            }
        }
    }

    /// `out (+)= s · (6-row panel of a) · (16-column panel of b)` over `kc` steps.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile(kc: usize, a: *const f32, b: *const f32, out: Tile, s: f32, add: bool) {
        let at = |i: usize, j: usize| unsafe { out.ptr.offset(i as isize * out.rs + j as isize * out.cs) };
        for i in 0..out.rows {
            // Prefetches never fault; these addresses are inside the output anyway.
            _mm_prefetch::<_MM_HINT_T0>(at(i, 0) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(at(i, out.cols - 1) as *const i8);
        }
        let mut acc = [_mm256_setzero_ps(); 2 * MR];
        let (mut a, mut b) = (a, b);
        // SAFETY: `kc` steps of each panel; the prefetches run at most a few steps ahead
        // inside the packed buffers (prefetching never faults in any case).
        unsafe {
            for _ in 0..kc / 4 {
                _mm_prefetch::<_MM_HINT_T0>(a.add(16 * MR) as *const i8);
                step(&mut acc, a, b);
                step(&mut acc, a.add(MR), b.add(NR));
                _mm_prefetch::<_MM_HINT_T0>(a.add(16 * MR + 16) as *const i8);
                step(&mut acc, a.add(2 * MR), b.add(2 * NR));
                step(&mut acc, a.add(3 * MR), b.add(3 * NR));
                a = a.add(4 * MR);
                b = b.add(4 * NR);
            }
            for _ in 0..kc % 4 {
                step(&mut acc, a, b);
                a = a.add(MR);
                b = b.add(NR);
            }
        }
        let scale = _mm256_set1_ps(s);
        if out.rows == MR && out.cols == NR && out.cs == 1 {
            for i in 0..MR {
                let row = at(i, 0);
                let mut lo = _mm256_mul_ps(acc[2 * i], scale);
                let mut hi = _mm256_mul_ps(acc[2 * i + 1], scale);
                // SAFETY: a full tile with adjacent columns: 16 floats from `row`.
                unsafe {
                    if add {
                        lo = _mm256_add_ps(lo, _mm256_loadu_ps(row));
                        hi = _mm256_add_ps(hi, _mm256_loadu_ps(row.add(8)));
                    }
                    _mm256_storeu_ps(row, lo);
                    _mm256_storeu_ps(row.add(8), hi);
                }
            }
        } else {
            // An edge, or a strided output: through a scratch tile, element by element.
            let mut t = [0f32; MR * NR];
            for (i, pair) in acc.chunks_exact(2).enumerate() {
                // SAFETY: 16 floats of `t` from row `i`.
                unsafe {
                    _mm256_storeu_ps(t[i * NR..].as_mut_ptr(), pair[0]);
                    _mm256_storeu_ps(t[i * NR + 8..].as_mut_ptr(), pair[1]);
                }
            }
            for i in 0..out.rows {
                for j in 0..out.cols {
                    let v = s * t[i * NR + j];
                    // SAFETY: (i, j) inside the tile's part of the output.
                    unsafe { *at(i, j) = if add { *at(i, j) + v } else { v } };
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
    /// every block edge (`KC`, `MC`, `NC`) and leave partial tiles.
    #[test]
    #[cfg_attr(
        no_avx2_fma,
        ignore = "this CPU lacks AVX2 or FMA: the packed kernel never runs on it"
    )]
    fn products_match_a_float64_sum_in_every_layout() {
        let shapes = [
            (80, 72, 64),
            (1, 512, 600),
            (600, 1, 512),
            (33, 257, 31),
            (197, 45, 300),
            (7, NC + 21, 9),
        ];
        check_every_layout(&shapes, |dst, a, b, s, accumulate| {
            // SAFETY: the checker's buffers are distinct and outlive the call.
            unsafe { product(dst, a, b, s, accumulate) };
            true
        });
    }
}

//! The packed kernels' register tiles: `mr × nr` of the output kept in registers over `kc` steps
//! of the sum, then scaled and written (or added) to the output.

use std::arch::x86_64::*;

/// The part of the output one register tile writes (up to `mr × nr`).
pub(super) struct Tile {
    pub ptr: *mut f32,
    pub rs: isize,
    pub cs: isize,
    pub rows: usize,
    pub cols: usize,
}

/// Prefetches the rows of the output a tile is about to write.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn prefetch_output(out: &Tile) {
    for i in 0..out.rows {
        // Prefetches never fault; these addresses are inside the output anyway.
        let row = out.ptr.wrapping_offset(i as isize * out.rs);
        _mm_prefetch::<_MM_HINT_T0>(row as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(row.wrapping_offset((out.cols - 1) as isize * out.cs) as *const i8);
    }
}

/// Writes a tile held as `rows` of `cols` floats in `t` (an edge, or a strided output),
/// element by element: `out (+)= s · t`.
fn write_scratch(t: &[f32], cols: usize, out: &Tile, s: f32, add: bool) {
    for i in 0..out.rows {
        for j in 0..out.cols {
            let v = s * t[i * cols + j];
            // SAFETY: (i, j) inside the tile's part of the output.
            unsafe {
                let at = out.ptr.offset(i as isize * out.rs + j as isize * out.cs);
                *at = if add { *at + v } else { v }
            };
        }
    }
}

/// Rows of the AVX2 tile.
const MR2: usize = 6;
/// Columns of the AVX2 tile (two AVX registers).
const NR2: usize = 16;

/// One step of the sum: the AVX2 tile += (6 values of `a`) ⊗ (16 values of `b`), value `i`
/// of `a` at `a_at(i)` (adjacent in a packed panel, or one per row read in place).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn step_avx2(acc: &mut [__m256; 2 * MR2], a_at: impl Fn(usize) -> *const f32, b: *const f32) {
    // SAFETY: the caller's `a_at` and packed panel of `b` hold this step.
    unsafe {
        let b0 = _mm256_load_ps(b);
        let b1 = _mm256_load_ps(b.add(8));
        for i in 0..MR2 {
            let ai = _mm256_broadcast_ss(&*a_at(i));
            acc[2 * i] = _mm256_fmadd_ps(ai, b0, acc[2 * i]);
            acc[2 * i + 1] = _mm256_fmadd_ps(ai, b1, acc[2 * i + 1]);
        }
    }
}

/// Writes the AVX2 tile's registers: `out (+)= s · acc`. A macro so that it is part of each
/// tile's function (as a function of its own, not inlined, it was 3% of a NesT step).
macro_rules! write_avx2 {
    ($acc:expr, $out:expr, $s:expr, $add:expr) => {{
        let (acc, out, s, add): (&[__m256; 2 * MR2], &Tile, f32, bool) = ($acc, $out, $s, $add);
        let scale = _mm256_set1_ps(s);
        if out.rows == MR2 && out.cols == NR2 && out.cs == 1 {
            for i in 0..MR2 {
                let row = out.ptr.wrapping_offset(i as isize * out.rs);
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
            let mut t = [0f32; MR2 * NR2];
            for (i, pair) in acc.chunks_exact(2).enumerate() {
                // SAFETY: 16 floats of `t` from row `i`.
                unsafe {
                    _mm256_storeu_ps(t[i * NR2..].as_mut_ptr(), pair[0]);
                    _mm256_storeu_ps(t[i * NR2 + 8..].as_mut_ptr(), pair[1]);
                }
            }
            write_scratch(&t, NR2, out, s, add);
        }
    }};
}

/// `out (+)= s · (6-row panel of a) · (16-column panel of b)` over `kc` steps.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile_avx2(kc: usize, a: *const f32, b: *const f32, out: Tile, s: f32, add: bool) {
    prefetch_output(&out);
    let mut acc = [_mm256_setzero_ps(); 2 * MR2];
    let (mut a, mut b) = (a, b);
    // SAFETY: `kc` steps of each panel; the prefetches run at most a few steps ahead
    // inside the packed buffers (prefetching never faults in any case).
    unsafe {
        for _ in 0..kc / 4 {
            _mm_prefetch::<_MM_HINT_T0>(a.add(16 * MR2) as *const i8);
            step_avx2(&mut acc, |i| a.add(i), b);
            step_avx2(&mut acc, |i| a.add(MR2).add(i), b.add(NR2));
            _mm_prefetch::<_MM_HINT_T0>(a.add(16 * MR2 + 16) as *const i8);
            step_avx2(&mut acc, |i| a.add(2 * MR2).add(i), b.add(2 * NR2));
            step_avx2(&mut acc, |i| a.add(3 * MR2).add(i), b.add(3 * NR2));
            a = a.add(4 * MR2);
            b = b.add(4 * NR2);
        }
        for _ in 0..kc % 4 {
            step_avx2(&mut acc, |i| a.add(i), b);
            a = a.add(MR2);
            b = b.add(NR2);
        }
    }
    write_avx2!(&acc, &out, s, add);
}

/// [`tile_avx2`] with `a` read in place: six rows `lda` apart, each `kc` adjacent values (a
/// row-major operand, which then needs no packing).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile_avx2_rows(
    kc: usize,
    a: *const f32,
    lda: isize,
    b: *const f32,
    out: Tile,
    s: f32,
    add: bool,
) {
    prefetch_output(&out);
    let mut acc = [_mm256_setzero_ps(); 2 * MR2];
    let rows: [*const f32; MR2] = std::array::from_fn(|i| a.wrapping_offset(i as isize * lda));
    let mut b = b;
    let mut p = 0;
    // SAFETY: `kc` values of each row and `kc` steps of the panel.
    unsafe {
        while p + 4 <= kc {
            step_avx2(&mut acc, |i| rows[i].add(p), b);
            step_avx2(&mut acc, |i| rows[i].add(p + 1), b.add(NR2));
            step_avx2(&mut acc, |i| rows[i].add(p + 2), b.add(2 * NR2));
            step_avx2(&mut acc, |i| rows[i].add(p + 3), b.add(3 * NR2));
            b = b.add(4 * NR2);
            p += 4;
        }
        while p < kc {
            step_avx2(&mut acc, |i| rows[i].add(p), b);
            b = b.add(NR2);
            p += 1;
        }
    }
    write_avx2!(&acc, &out, s, add);
}

/// Rows of the AVX-512 tile.
const MR5: usize = 8;
/// Columns of the AVX-512 tile (two AVX-512 registers).
const NR5: usize = 32;

/// One step of the sum: the AVX-512 tile += (8 values of `a`) ⊗ (32 values of `b`).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn step_avx512(acc: &mut [__m512; 2 * MR5], a: *const f32, b: *const f32) {
    // SAFETY: the caller's packed panels hold this step.
    unsafe {
        let b0 = _mm512_load_ps(b);
        let b1 = _mm512_load_ps(b.add(16));
        for i in 0..MR5 {
            let ai = _mm512_set1_ps(*a.add(i));
            acc[2 * i] = _mm512_fmadd_ps(ai, b0, acc[2 * i]);
            acc[2 * i + 1] = _mm512_fmadd_ps(ai, b1, acc[2 * i + 1]);
        }
    }
}

/// The lanes of a 16-float register that hold columns `from..cols` of a tile row.
fn lanes(cols: usize, from: usize) -> __mmask16 {
    let n = cols.saturating_sub(from).min(16);
    ((1u32 << n) - 1) as __mmask16
}

/// `out (+)= s · (8-row panel of a) · (32-column panel of b)` over `kc` steps.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn tile_avx512(kc: usize, a: *const f32, b: *const f32, out: Tile, s: f32, add: bool) {
    prefetch_output(&out);
    let mut acc = [_mm512_setzero_ps(); 2 * MR5];
    let (mut a, mut b) = (a, b);
    // SAFETY: as in `tile_avx2`.
    unsafe {
        for _ in 0..kc / 4 {
            _mm_prefetch::<_MM_HINT_T0>(a.add(16 * MR5) as *const i8);
            step_avx512(&mut acc, a, b);
            step_avx512(&mut acc, a.add(MR5), b.add(NR5));
            _mm_prefetch::<_MM_HINT_T0>(a.add(16 * MR5 + 16) as *const i8);
            step_avx512(&mut acc, a.add(2 * MR5), b.add(2 * NR5));
            step_avx512(&mut acc, a.add(3 * MR5), b.add(3 * NR5));
            a = a.add(4 * MR5);
            b = b.add(4 * NR5);
        }
        for _ in 0..kc % 4 {
            step_avx512(&mut acc, a, b);
            a = a.add(MR5);
            b = b.add(NR5);
        }
    }
    let scale = _mm512_set1_ps(s);
    if out.rows == MR5 && out.cs == 1 {
        // Full rows, adjacent columns: masked loads and stores cover a right-hand edge (the
        // masked-off lanes are never touched, so never fault).
        let (lo_lanes, hi_lanes) = (lanes(out.cols, 0), lanes(out.cols, 16));
        for i in 0..MR5 {
            let row = out.ptr.wrapping_offset(i as isize * out.rs);
            let mut lo = _mm512_mul_ps(acc[2 * i], scale);
            let mut hi = _mm512_mul_ps(acc[2 * i + 1], scale);
            // SAFETY: the lanes written and read are the tile's columns of row `i`.
            unsafe {
                if add {
                    lo = _mm512_add_ps(lo, _mm512_maskz_loadu_ps(lo_lanes, row));
                    hi = _mm512_add_ps(hi, _mm512_maskz_loadu_ps(hi_lanes, row.wrapping_add(16)));
                }
                _mm512_mask_storeu_ps(row, lo_lanes, lo);
                _mm512_mask_storeu_ps(row.wrapping_add(16), hi_lanes, hi);
            }
        }
    } else {
        let mut t = [0f32; MR5 * NR5];
        for (i, pair) in acc.chunks_exact(2).enumerate() {
            // SAFETY: 32 floats of `t` from row `i`.
            unsafe {
                _mm512_storeu_ps(t[i * NR5..].as_mut_ptr(), pair[0]);
                _mm512_storeu_ps(t[i * NR5 + 16..].as_mut_ptr(), pair[1]);
            }
        }
        write_scratch(&t, NR5, &out, s, add);
    }
}

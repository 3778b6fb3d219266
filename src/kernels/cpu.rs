//! Slice kernels behind the fused operations: plain loops over contiguous `f32` rows, written
//! branch-free so the compiler vectorises them, and compiled twice (AVX2+FMA, and the baseline)
//! with the choice made once at run time.
//!
//! The exponential and the error function are our own polynomial forms rather than libm's
//! scalar calls, which do not vectorise: at ViT sizes the exact GELU's `erff` alone took about a
//! sixth of a training step.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Elements per rayon task for elementwise kernels: large enough that the task overhead is
/// negligible, small enough that a ViT-Ti activation splits across both cores.
const ELEMS_PER_TASK: usize = 16 * 1024;

const LOG2_E: f32 = std::f32::consts::LOG2_E;
// ln 2 split in a high part exact in f32 and the remainder (Cody and Waite's reduction).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// `e^x` for `x` in about [-87, 88], relative error below 2e-7: `x = k ln2 + r`, `|r| <= ln2/2`,
/// `e^r` by its Taylor series to degree 7, `2^k` written into the exponent bits.
#[inline(always)]
fn exp_approx<const FMA: bool>(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by adding and subtracting 1.5 * 2^23 (no rounding instruction needed).
    const SHIFT: f32 = 12_582_912.0;
    let shifted = x * LOG2_E + SHIFT;
    let k = shifted - SHIFT;
    let r = madd::<FMA>(-k, LN2_LO, madd::<FMA>(-k, LN2_HI, x));
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = madd::<FMA>(p, r, c);
    }
    // `k` is also the low bits of `shifted` (its binade has a unit step): taking it from there
    // keeps the loop in integer vector instructions, where `k as i32` (a saturating cast)
    // compiled to eight scalar conversions per vector.
    let k_bits = shifted.to_bits().wrapping_sub(SHIFT.to_bits());
    let scale = f32::from_bits(k_bits.wrapping_add(127) << 23);
    p * scale
}

/// `a * b + c`, fused into one instruction where the caller was compiled with FMA (a fused
/// multiply-add outside such code would be a slow library call).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `erf(z)` and `e^{-z^2}` together (GELU's forward and backward need both), absolute error of
/// `erf` below 1.5e-7: Abramowitz and Stegun's formula 7.1.26.
#[inline(always)]
fn erf_and_gauss<const FMA: bool>(z: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_8;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    let a = z.abs();
    let t = 1.0 / madd::<FMA>(P, a, 1.0);
    let mut poly = A5;
    for c in [A4, A3, A2, A1] {
        poly = madd::<FMA>(poly, t, c);
    }
    let gauss = exp_approx::<FMA>(-z * z);
    (madd::<FMA>(-poly * t, gauss, 1.0).copysign(z), gauss)
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi)
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// Exact GELU, `x * Phi(x)`, on one element.
#[inline(always)]
pub(super) fn gelu_one<const FMA: bool>(x: f32) -> f32 {
    let (erf, _) = erf_and_gauss::<FMA>(x * FRAC_1_SQRT_2);
    0.5 * x * (1.0 + erf)
}

/// `d gelu / dx * grad` on one element: `Phi(x) + x phi(x)`.
#[inline(always)]
fn gelu_grad_one<const FMA: bool>(x: f32, grad: f32) -> f32 {
    let (erf, gauss) = erf_and_gauss::<FMA>(x * FRAC_1_SQRT_2);
    grad * (0.5 * (1.0 + erf) + x * FRAC_1_SQRT_2PI * gauss)
}

/// Compiles `$body` (a closure-like block over slices) once with AVX2+FMA enabled and once for
/// the baseline, and calls the fast one when the CPU has those features.
macro_rules! dispatch_simd {
    ($vis:vis $name:ident ( $($arg:ident : $ty:ty),* ) $body:block) => {
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) {
                    // Items are not hygienic in `macro_rules!`: `$body` sees this constant.
                    #[allow(dead_code)]
                    const FMA: bool = true;
                    $body
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the features `fast` was compiled for were just detected.
                    unsafe { fast($($arg),*) };
                    return;
                }
            }
            fn portable($($arg: $ty),*) {
                #[allow(dead_code)]
                const FMA: bool = false;
                $body
            }
            portable($($arg),*)
        }
    };
}

/// As [`dispatch_simd`], with an AVX-512 version tried first: for kernels whose results do not
/// depend on the vector width (no reductions across lanes), so that every CPU computes the same
/// numbers. (The ViT kernels keep `dispatch_simd`: their sums would round differently.)
macro_rules! dispatch_wide {
    ($vis:vis $name:ident ( $($arg:ident : $ty:ty),* ) $body:block) => {
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn widest($($arg: $ty),*) {
                    #[allow(dead_code)]
                    const FMA: bool = true;
                    $body
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) {
                    #[allow(dead_code)]
                    const FMA: bool = true;
                    $body
                }
                if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the features `widest` was compiled for were just detected.
                    unsafe { widest($($arg),*) };
                    return;
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: as above, for `fast`.
                    unsafe { fast($($arg),*) };
                    return;
                }
            }
            fn portable($($arg: $ty),*) {
                #[allow(dead_code)]
                const FMA: bool = false;
                $body
            }
            portable($($arg),*)
        }
    };
}

pub(super) use dispatch_wide;

/// A vector of `n` elements that `fill` writes completely, chunk by chunk, without zeroing it
/// first (the memset and its page faults showed up in profiles).
fn filled(n: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    fill(&mut out.spare_capacity_mut()[..n]);
    // SAFETY: every caller's `fill` writes all `n` elements (each zips its output chunks with
    // input chunks of the same total length `n`, asserted by the caller).
    unsafe { out.set_len(n) };
    out
}

dispatch_simd!(gelu_chunk(x: &[f32], out: &mut [MaybeUninit<f32>]) {
    for (o, &v) in out.iter_mut().zip(x) {
        o.write(gelu_one::<FMA>(v));
    }
});

dispatch_simd!(gelu_grad_chunk(x: &[f32], grad: &[f32], out: &mut [MaybeUninit<f32>]) {
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(grad) {
        o.write(gelu_grad_one::<FMA>(v, g));
    }
});

/// Exact GELU of every element.
pub fn gelu(x: &[f32]) -> Vec<f32> {
    filled(x.len(), |out| {
        out.par_chunks_mut(ELEMS_PER_TASK)
            .zip(x.par_chunks(ELEMS_PER_TASK))
            .for_each(|(o, x)| gelu_chunk(x, o))
    })
}

/// The gradient of GELU at `x` times `grad`.
pub fn gelu_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), grad.len());
    filled(x.len(), |out| {
        out.par_chunks_mut(ELEMS_PER_TASK)
            .zip(x.par_chunks(ELEMS_PER_TASK).zip(grad.par_chunks(ELEMS_PER_TASK)))
            .for_each(|(o, (x, g))| gelu_grad_chunk(x, g, o))
    })
}

/// Sum of a slice in eight interleaved lanes, so that it vectorises (a single running sum
/// must keep its order and cannot).
#[inline(always)]
fn lane_sum(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        lanes.iter_mut().zip(c).for_each(|(l, &v)| *l += v);
    }
    let tail: f32 = chunks.remainder().iter().sum();
    lanes.iter().sum::<f32>() + tail
}

/// Sum of squared deviations from `mean`, in eight interleaved lanes (see [`lane_sum`]).
#[inline(always)]
fn lane_sum_sq_dev(x: &[f32], mean: f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        lanes
            .iter_mut()
            .zip(c)
            .for_each(|(l, &v)| *l += (v - mean) * (v - mean));
    }
    let tail: f32 = chunks.remainder().iter().map(|&v| (v - mean) * (v - mean)).sum();
    lanes.iter().sum::<f32>() + tail
}

/// Dot product in eight interleaved lanes (see [`lane_sum`]).
#[inline(always)]
fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    lanes.iter().sum::<f32>() + tail
}

dispatch_simd!(pub(super) softmax_rows_in_place(x: &mut [f32], n: usize) {
    for row in x.chunks_exact_mut(n) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        for v in row.iter_mut() {
            *v = exp_approx::<FMA>(*v - max);
        }
        let inv = 1.0 / lane_sum(row);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
});

dispatch_simd!(pub(super) softmax_grad_rows_in_place(p: &[f32], dp: &mut [f32], n: usize, scale: f32) {
    // d(scores) = p * (dp - <dp, p>), times the scale the scores were multiplied by.
    for (p, dp) in p.chunks_exact(n).zip(dp.chunks_exact_mut(n)) {
        let dot = lane_dot(p, dp);
        for (d, &p) in dp.iter_mut().zip(p) {
            *d = p * (*d - dot) * scale;
        }
    }
});

dispatch_simd!(pub(super) bias_gelu_rows(h: &mut [f32], bias: &[f32], out: &mut [MaybeUninit<f32>]) {
    let n = bias.len();
    for (h, o) in h.chunks_exact_mut(n).zip(out.chunks_exact_mut(n)) {
        for ((h, o), &b) in h.iter_mut().zip(o.iter_mut()).zip(bias) {
            *h += b;
            o.write(gelu_one::<FMA>(*h));
        }
    }
});

dispatch_simd!(pub(super) bias_gelu_rows_in_place(h: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    for h in h.chunks_exact_mut(n) {
        for (h, &b) in h.iter_mut().zip(bias) {
            *h = gelu_one::<FMA>(*h + b);
        }
    }
});

dispatch_simd!(gelu_grad_rows_with_sums(h: &[f32], grad: &[f32], out: &mut [MaybeUninit<f32>], sums: &mut [f32]) {
    let n = sums.len();
    for ((h, g), o) in h.chunks_exact(n).zip(grad.chunks_exact(n)).zip(out.chunks_exact_mut(n)) {
        for (((&h, &g), o), s) in h.iter().zip(g).zip(o.iter_mut()).zip(sums.iter_mut()) {
            let d = gelu_grad_one::<FMA>(h, g);
            o.write(d);
            *s += d;
        }
    }
});

/// `h += bias` row by row (rows of `bias.len()`), in place, and returns `gelu(h)`: the bias and
/// activation epilogue of a linear layer whose pre-activation the backward keeps.
pub fn bias_gelu(h: &mut [f32], bias: &[f32]) -> Vec<f32> {
    let n = bias.len().max(1);
    assert_eq!(h.len() % n, 0);
    let chunk = rows_per_task(n) * n;
    filled(h.len(), |out| {
        h.par_chunks_mut(chunk)
            .zip(out.par_chunks_mut(chunk))
            .for_each(|(h, o)| bias_gelu_rows(h, bias, o))
    })
}

/// `h = gelu(h + bias)` in place (inference: nothing is kept for a backward).
pub fn bias_gelu_in_place(h: &mut [f32], bias: &[f32]) {
    let n = bias.len().max(1);
    assert_eq!(h.len() % n, 0);
    h.par_chunks_mut(rows_per_task(n) * n)
        .for_each(|h| bias_gelu_rows_in_place(h, bias));
}

/// The gradient through GELU at pre-activations `h` (rows of `width`), and its column sums
/// (the bias gradient), summed per fixed block of rows and then in block order (reproducible).
pub fn gelu_backward_with_column_sums(h: &[f32], grad: &[f32], width: usize) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(h.len(), grad.len());
    let n = width.max(1);
    assert_eq!(h.len() % n, 0);
    let chunk = rows_per_task(n) * n;
    let mut partials = Vec::new();
    let dh = filled(h.len(), |out| {
        partials = out
            .par_chunks_mut(chunk)
            .zip(h.par_chunks(chunk).zip(grad.par_chunks(chunk)))
            .map(|(o, (h, g))| {
                let mut sums = vec![0.0f32; width];
                gelu_grad_rows_with_sums(h, g, o, &mut sums);
                sums
            })
            .collect::<Vec<_>>()
    });
    (dh, add_in_order(partials, width))
}

/// Adds per-chunk partial sums (each of length `n`) in chunk order, so that a parallel
/// reduction gives the same result however rayon scheduled the chunks: training runs stay
/// reproducible.
pub(super) fn add_in_order(partials: impl IntoIterator<Item = Vec<f32>>, n: usize) -> Vec<f32> {
    let mut sums = vec![0.0f32; n];
    for partial in partials {
        sums.iter_mut().zip(partial).for_each(|(s, p)| *s += p);
    }
    sums
}

/// Column sums of a row-major `[rows, cols]` matrix (the bias gradient): fixed blocks of rows
/// summed in parallel, then the block sums added in block order.
pub fn column_sums(dy: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(dy.len(), rows * cols);
    if cols == 0 {
        return Vec::new();
    }
    let rows_per_block = 256;
    let partials: Vec<Vec<f32>> = dy
        .par_chunks(rows_per_block * cols)
        .map(|block| {
            let mut sums = vec![0.0f32; cols];
            for row in block.chunks_exact(cols) {
                sums.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
            }
            sums
        })
        .collect();
    add_in_order(partials, cols)
}

/// `resid + bias` row by row: the starting value a residual linear layer accumulates onto.
pub fn add_row_vector(resid: &[f32], bias: &[f32]) -> Vec<f32> {
    let n = bias.len().max(1);
    assert_eq!(resid.len() % n, 0);
    let chunk = rows_per_task(n) * n;
    filled(resid.len(), |out| {
        out.par_chunks_mut(chunk)
            .zip(resid.par_chunks(chunk))
            .for_each(|(o, r)| {
                for (o, r) in o.chunks_exact_mut(n).zip(r.chunks_exact(n)) {
                    for ((o, &r), &b) in o.iter_mut().zip(r).zip(bias) {
                        o.write(r + b);
                    }
                }
            })
    })
}

/// `out[r][c] = base + t[c][r]` for `out: [rows, cols]` and `t: [cols, rows]`, both row-major,
/// where `base` is `out`'s own value when `accumulate` (then `out` must be initialised), else 0,
/// plus `bias[c]` when given. In 8 x 8 tiles, so that both sides move eight floats at a time.
pub fn write_transposed(
    out: &mut [MaybeUninit<f32>],
    t: &[f32],
    rows: usize,
    cols: usize,
    bias: Option<&[f32]>,
    accumulate: bool,
) {
    assert_eq!(out.len(), rows * cols);
    assert_eq!(t.len(), rows * cols);
    if let Some(bias) = bias {
        assert_eq!(bias.len(), cols, "bias length differs from the output width");
    }
    const TILE: usize = 8;
    let base = |o: &MaybeUninit<f32>, c: usize| {
        // SAFETY: the caller guarantees `out` is initialised when accumulating.
        let own = if accumulate {
            unsafe { o.assume_init() }
        } else {
            0.0
        };
        own + bias.map_or(0.0, |b| b[c])
    };
    let block_rows = (rows_per_task(cols) / TILE).max(1) * TILE;
    out.par_chunks_mut(block_rows * cols.max(1))
        .enumerate()
        .for_each(|(block, out)| {
            let r0 = block * block_rows;
            let n = out.len() / cols.max(1);
            let mut c0 = 0;
            while c0 < cols {
                let tc = TILE.min(cols - c0);
                let mut r = 0;
                while r + TILE <= n && tc == TILE {
                    let mut tile = [[0.0f32; TILE]; TILE];
                    for (i, row) in tile.iter_mut().enumerate() {
                        let at = (c0 + i) * rows + r0 + r;
                        row.copy_from_slice(&t[at..at + TILE]);
                    }
                    for j in 0..TILE {
                        let o = &mut out[(r + j) * cols + c0..][..TILE];
                        for (i, o) in o.iter_mut().enumerate() {
                            o.write(base(o, c0 + i) + tile[i][j]);
                        }
                    }
                    r += TILE;
                }
                for r in r..n {
                    for c in c0..c0 + tc {
                        let o = &mut out[r * cols + c];
                        o.write(base(o, c) + t[c * rows + r0 + r]);
                    }
                }
                c0 += tc;
            }
        });
}

/// Rows per rayon task for the row kernels.
fn rows_per_task(row_len: usize) -> usize {
    (ELEMS_PER_TASK / row_len.max(1)).max(1)
}

dispatch_simd!(softmax_backward_rows(y: &[f32], grad: &[f32], out: &mut [MaybeUninit<f32>], n: usize) {
    for ((o, y), g) in out.chunks_exact_mut(n).zip(y.chunks_exact(n)).zip(grad.chunks_exact(n)) {
        let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
        for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
            o.write(y * (g - dot));
        }
    }
});

/// Gradient of a softmax over rows of length `n`, from its output `y`: `y * (g - <g, y>)`.
pub fn softmax_backward(y: &[f32], grad: &[f32], n: usize) -> Vec<f32> {
    assert_eq!(y.len(), grad.len());
    if n == 0 {
        return Vec::new();
    }
    assert_eq!(y.len() % n, 0);
    let chunk = rows_per_task(n) * n;
    filled(y.len(), |out| {
        out.par_chunks_mut(chunk)
            .zip(y.par_chunks(chunk).zip(grad.par_chunks(chunk)))
            .for_each(|(o, (y, g))| softmax_backward_rows(y, g, o, n))
    })
}

dispatch_simd!(layer_norm_backward_rows(
    x: &[f32],
    gamma: &[f32],
    grad: &[f32],
    dx: &mut [MaybeUninit<f32>],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    eps: f32
) {
    let n = gamma.len();
    let inv_n = 1.0 / n as f32;
    for ((x, g), dx) in x.chunks_exact(n).zip(grad.chunks_exact(n)).zip(dx.chunks_exact_mut(n)) {
        let mean = lane_sum(x) * inv_n;
        let var = lane_sum_sq_dev(x, mean) * inv_n;
        let rstd = 1.0 / (var + eps).sqrt();
        // dx = rstd * (gy - mean(gy) - xhat * mean(gy * xhat)), with gy = grad * gamma. The row
        // sums run in eight lanes so that the loop vectorises.
        let mut sum_gy = [0.0f32; 8];
        let mut sum_gy_xhat = [0.0f32; 8];
        let full = n / 8 * 8;
        for c in (0..full).step_by(8) {
            for i in 0..8 {
                let xhat = (x[c + i] - mean) * rstd;
                let gy = g[c + i] * gamma[c + i];
                sum_gy[i] += gy;
                sum_gy_xhat[i] += gy * xhat;
                dgamma[c + i] += g[c + i] * xhat;
                dbeta[c + i] += g[c + i];
            }
        }
        let (mut tail_gy, mut tail_gy_xhat) = (0.0f32, 0.0f32);
        for i in full..n {
            let xhat = (x[i] - mean) * rstd;
            let gy = g[i] * gamma[i];
            tail_gy += gy;
            tail_gy_xhat += gy * xhat;
            dgamma[i] += g[i] * xhat;
            dbeta[i] += g[i];
        }
        let mean_gy = (sum_gy.iter().sum::<f32>() + tail_gy) * inv_n;
        let mean_gy_xhat = (sum_gy_xhat.iter().sum::<f32>() + tail_gy_xhat) * inv_n;
        for (((d, &xv), &gv), &w) in dx.iter_mut().zip(x).zip(g).zip(gamma) {
            let xhat = (xv - mean) * rstd;
            d.write(rstd * (gv * w - mean_gy - xhat * mean_gy_xhat));
        }
    }
});

/// Gradients of LayerNorm over rows of length `gamma.len()`: `(dx, dgamma, dbeta)`. The mean and
/// variance are recomputed from `x` (one more read of `x` instead of keeping them).
pub fn layer_norm_backward(
    x: &[f32],
    gamma: &[f32],
    grad: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = gamma.len();
    assert_eq!(x.len(), grad.len());
    if n == 0 {
        return (Vec::new(), Vec::new(), Vec::new());
    }
    assert_eq!(x.len() % n, 0);
    let chunk = rows_per_task(n) * n;
    let mut partials = Vec::new();
    let dx = filled(x.len(), |dx| {
        partials = dx
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(grad.par_chunks(chunk)))
            .map(|(dx, (x, g))| {
                let mut dgamma = vec![0.0; n];
                let mut dbeta = vec![0.0; n];
                layer_norm_backward_rows(x, gamma, g, dx, &mut dgamma, &mut dbeta, eps);
                (dgamma, dbeta)
            })
            .collect::<Vec<_>>()
    });
    let (dgamma, dbeta): (Vec<_>, Vec<_>) = partials.into_iter().unzip();
    (dx, add_in_order(dgamma, n), add_in_order(dbeta, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erf_f64(x: f64) -> f64 {
        // Reference by the Maclaurin series below 3 and the asymptotic series of erfc above
        // (both accurate to about 1e-9 there).
        if x.abs() < 3.0 {
            let mut sum = 0.0;
            let mut term = x;
            let mut n = 0.0;
            while term.abs() > 1e-17 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -x * x / n;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let z = x.abs();
            let z2 = z * z;
            let series = 1.0 - 1.0 / (2.0 * z2) + 3.0 / (4.0 * z2 * z2) - 15.0 / (8.0 * z2 * z2 * z2)
                + 105.0 / (16.0 * z2 * z2 * z2 * z2);
            let erfc = (-z2).exp() / (z * std::f64::consts::PI.sqrt()) * series;
            x.signum() * (1.0 - erfc)
        }
    }

    #[test]
    fn exp_matches_std() {
        let mut worst: f32 = 0.0;
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let exact = (x as f64).exp();
            let rel = ((exp_approx::<false>(x) as f64 - exact) / exact).abs() as f32;
            worst = worst.max(rel);
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
    }

    #[test]
    fn gelu_matches_exact_formula() {
        let mut worst: f64 = 0.0;
        let mut worst_grad: f64 = 0.0;
        for i in -1000..=1000 {
            let x = i as f64 * 0.01;
            let phi = 0.5 * (1.0 + erf_f64(x / 2f64.sqrt()));
            let exact = x * phi;
            let exact_grad = phi + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            worst = worst.max((gelu_one::<false>(x as f32) as f64 - exact).abs() / (1.0 + x.abs()));
            worst_grad = worst_grad.max((gelu_grad_one::<false>(x as f32, 1.0) as f64 - exact_grad).abs());
        }
        assert!(worst < 3e-7, "gelu worst error {worst}");
        assert!(worst_grad < 5e-7, "gelu grad worst error {worst_grad}");
        assert_eq!(gelu_one::<false>(0.0), 0.0);
        assert!(gelu_one::<false>(f32::NAN).is_nan());
    }

    #[test]
    fn vector_and_scalar_paths_agree() {
        let x: Vec<f32> = (0..40_000).map(|i| (i as f32 * 0.37).sin() * 6.0).collect();
        let fast = gelu(&x);
        for (v, f) in x.iter().zip(&fast) {
            assert!((gelu_one::<false>(*v) - f).abs() <= 1e-6 * (1.0 + v.abs()));
        }
    }
}

//! Depthwise 2-d convolution on channels-last maps (`[B, H, W, C]`), forward and backward.
//!
//! Why: CMT has a depthwise convolution in every block (the local perception unit, the K/V
//! reduction, the IRFFN), and flex runs a grouped convolution's weight gradient one group at a
//! time — one small convolution per channel. Channels-last, every tap is a multiply-add over a
//! contiguous run of channels that the compiler vectorises, and CMT's tokens already are
//! channels-last, so no transposes are needed around the convolution either.
//!
//! The weight arrives in PyTorch's layout `[C, 1, k, k]` and is repacked per call to
//! `[k * k, C]` (tap-major), a few kilobytes.

use rayon::prelude::*;

use super::cpu::{dispatch_wide, gelu_one};

/// The geometry of one depthwise convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// The input added to the output (a residual around the convolution; needs an output of
    /// the input's shape).
    pub residual: bool,
}

/// What happens to each output after the convolution (and residual), in inference: GELU,
/// then `* scale + shift` per channel (an evaluation-mode BatchNorm).
#[derive(Debug, Clone, Copy)]
pub struct Epilogue<'a> {
    pub gelu: bool,
    pub affine: Option<(&'a [f32], &'a [f32])>,
}

impl Epilogue<'_> {
    pub const NONE: Epilogue<'static> = Epilogue {
        gelu: false,
        affine: None,
    };
}

/// The input coordinate that offset `k` of the window of output coordinate `o` reads, for a
/// window moving by `stride` over an input of `size` with `padding` before it; `None` in the
/// padding.
pub(super) fn window_input(o: usize, k: usize, stride: usize, padding: usize, size: usize) -> Option<usize> {
    (o * stride + k).checked_sub(padding).filter(|&i| i < size)
}

impl Geometry {
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }
    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }
    /// The input coordinate tap `k` of output coordinate `o` reads, if inside the input.
    pub(super) fn input_at(&self, o: usize, k: usize, size: usize) -> Option<usize> {
        window_input(o, k, self.stride, self.padding, size)
    }
    /// The output coordinate whose tap `k` reads input coordinate `i`, if any.
    pub(super) fn output_at(&self, i: usize, k: usize, size: usize) -> Option<usize> {
        let shifted = (i + self.padding).checked_sub(k)?;
        (shifted.is_multiple_of(self.stride) && shifted / self.stride < size).then_some(shifted / self.stride)
    }
}

/// Rows (rayon tasks) of `row_len` values at least, so that ~16K values make a task: small maps
/// run as few tasks rather than many that cost more to schedule than to run.
pub(super) fn min_rows(row_len: usize) -> usize {
    (16_384 / row_len.max(1)).max(1)
}

/// `[C, 1, k, k]` (PyTorch) → `[k * k, C]`.
pub fn taps_from_weight(w: &[f32], channels: usize, kernel: usize) -> Vec<f32> {
    let kk = kernel * kernel;
    let mut taps = vec![0.0; kk * channels];
    for c in 0..channels {
        for t in 0..kk {
            taps[t * channels + c] = w[c * kk + t];
        }
    }
    taps
}

/// `[k * k, C]` → `[C, 1, k, k]` (PyTorch).
fn weight_from_taps(taps: &[f32], channels: usize, kernel: usize) -> Vec<f32> {
    let kk = kernel * kernel;
    let mut w = vec![0.0; kk * channels];
    for c in 0..channels {
        for t in 0..kk {
            w[c * kk + t] = taps[t * channels + c];
        }
    }
    w
}

/// `acc += a * b`, elementwise over equal-length slices (fused multiply-adds where `FMA`).
#[inline(always)]
fn mul_add<const FMA: bool>(acc: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, &x), &y) in acc.iter_mut().zip(a).zip(b) {
        *o = if FMA { x.mul_add(y, *o) } else { *o + x * y };
    }
}

impl Geometry {
    /// The output columns `lo..hi` whose tap `kx` reads inside the input, and the input column
    /// of the first: `ix = ox * stride + kx - padding`.
    fn columns(&self, kx: usize, out_width: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.padding);
        let lo = p.saturating_sub(kx).div_ceil(s);
        let hi = (self.width + p).saturating_sub(kx).div_ceil(s).min(out_width);
        (lo, hi.max(lo))
    }
}

// One output row of the forward pass: `out_row` is row `(b, oy)`. Taps outermost, so that the
// work per step is one tap over one pixel's channels with no bounds tests in between; every
// value is summed in the same order as a per-pixel loop would: residual, bias, then the taps
// row by row.
dispatch_wide!(forward_row(x: &[f32], taps: &[f32], bias: Option<&[f32]>, out_row: &mut [f32], g: Geometry, epilogue: Epilogue, row: usize) {
    let (c, k) = (g.channels, g.kernel);
    let wo = out_row.len() / c;
    let (b, oy) = (row / g.out_height(), row % g.out_height());
    for (ox, acc) in out_row.chunks_exact_mut(c).enumerate() {
        if g.residual {
            let at = ((b * g.height + oy) * g.width + ox) * c;
            acc.copy_from_slice(&x[at..at + c]);
            if let Some(bias) = bias {
                for (a, &v) in acc.iter_mut().zip(bias) {
                    *a += v;
                }
            }
        } else {
            match bias {
                Some(bias) => acc.copy_from_slice(bias),
                None => acc.fill(0.0),
            }
        }
    }
    for ky in 0..k {
        let Some(iy) = g.input_at(oy, ky, g.height) else { continue };
        let x_row = &x[((b * g.height + iy) * g.width) * c..((b * g.height + iy + 1) * g.width) * c];
        for kx in 0..k {
            let t = ky * k + kx;
            let w = &taps[t * c..(t + 1) * c];
            let (lo, hi) = g.columns(kx, wo);
            for ox in lo..hi {
                let ix = ox * g.stride + kx - g.padding;
                mul_add::<FMA>(&mut out_row[ox * c..(ox + 1) * c], &x_row[ix * c..(ix + 1) * c], w);
            }
        }
    }
    if epilogue.gelu || epilogue.affine.is_some() {
        for acc in out_row.chunks_exact_mut(c) {
            if epilogue.gelu {
                for a in acc.iter_mut() {
                    *a = gelu_one::<FMA>(*a);
                }
            }
            if let Some((scale, shift)) = epilogue.affine {
                for ((a, &s), &t) in acc.iter_mut().zip(scale).zip(shift) {
                    *a = *a * s + t;
                }
            }
        }
    }
});

// Adds output row `(b, oy)`'s contribution to the tap sums `acc: [k*k + 1, C]` (the weight
// gradient's taps, then the bias gradient); each sum runs over the row's pixels in order.
dispatch_wide!(weight_grad_row(x: &[f32], g_row: &[f32], acc: &mut [f32], g: Geometry, b: usize, oy: usize) {
    let (c, k) = (g.channels, g.kernel);
    let kk = k * k;
    let wo = g_row.len() / c;
    for go in g_row.chunks_exact(c) {
        for (a, &v) in acc[kk * c..].iter_mut().zip(go) {
            *a += v;
        }
    }
    for ky in 0..k {
        let Some(iy) = g.input_at(oy, ky, g.height) else { continue };
        let x_row = &x[((b * g.height + iy) * g.width) * c..((b * g.height + iy + 1) * g.width) * c];
        for kx in 0..k {
            let t = ky * k + kx;
            let sums = &mut acc[t * c..(t + 1) * c];
            let (lo, hi) = g.columns(kx, wo);
            for ox in lo..hi {
                let ix = ox * g.stride + kx - g.padding;
                mul_add::<FMA>(sums, &x_row[ix * c..(ix + 1) * c], &g_row[ox * c..(ox + 1) * c]);
            }
        }
    }
});

// One input row `(b, iy)` of the input gradient: each output pixel that read it, tap by tap
// in order (for one tap, distinct output pixels read distinct input pixels).
dispatch_wide!(input_grad_row(grad: &[f32], taps: &[f32], dx_row: &mut [f32], g: Geometry, b: usize, iy: usize) {
    let (c, k) = (g.channels, g.kernel);
    let (ho, wo) = (g.out_height(), g.out_width());
    if g.residual {
        // The residual passes its gradient through (output and input share positions).
        let at = (b * ho + iy) * wo * c;
        dx_row.copy_from_slice(&grad[at..at + wo * c]);
    }
    for ky in 0..k {
        let Some(oy) = g.output_at(iy, ky, ho) else { continue };
        let g_row = &grad[((b * ho + oy) * wo) * c..((b * ho + oy + 1) * wo) * c];
        for kx in 0..k {
            let t = ky * k + kx;
            let w = &taps[t * c..(t + 1) * c];
            let (lo, hi) = g.columns(kx, wo);
            for ox in lo..hi {
                let ix = ox * g.stride + kx - g.padding;
                mul_add::<FMA>(&mut dx_row[ix * c..(ix + 1) * c], &g_row[ox * c..(ox + 1) * c], w);
            }
        }
    }
});

/// The convolution: `x: [B, H, W, C]`, `weight: [C, 1, k, k]`, `bias: [C]` → `[B, Ho, Wo, C]`
/// (plus `x` with a residual), then the epilogue.
pub fn forward(x: &[f32], weight: &[f32], bias: Option<&[f32]>, g: Geometry, epilogue: Epilogue) -> Vec<f32> {
    assert!(
        !g.residual || (g.out_height(), g.out_width()) == (g.height, g.width),
        "a residual needs an output of the input's size"
    );
    let c = g.channels;
    let taps = taps_from_weight(weight, c, g.kernel);
    let (ho, wo) = (g.out_height(), g.out_width());
    let mut out = vec![0.0; g.batch * ho * wo * c];
    if c == 0 {
        return out;
    }
    out.par_chunks_mut(wo * c)
        .enumerate()
        .with_min_len(min_rows(wo * c))
        .for_each(|(row, out_row)| {
            forward_row(x, &taps, bias, out_row, g, epilogue, row);
        });
    out
}

/// The gradients of input, weight and bias, each when asked for.
pub type Gradients = (Option<Vec<f32>>, Option<Vec<f32>>, Option<Vec<f32>>);

/// Gradients of [`forward`] from the output gradient `grad: [B, Ho, Wo, C]`: `(dx, dweight,
/// dbias)`, each computed only when asked for.
pub fn backward(x: &[f32], weight: &[f32], grad: &[f32], g: Geometry, want: [bool; 3]) -> Gradients {
    let c = g.channels;
    let (ho, wo) = (g.out_height(), g.out_width());
    let dx = want[0].then(|| input_grad(weight, grad, g));
    let (dw, db) = if (want[1] || want[2]) && c > 0 {
        let kk = g.kernel * g.kernel;
        // Fixed groups of output rows, each summed into its own [k*k + 1, C] buffer (taps, then
        // bias), then the buffers added in order: the same sums in the same order on every run,
        // however rayon schedules the groups (a resumed run must repeat the original bit for bit).
        let rows = g.batch * ho;
        let per_group = rows.div_ceil(64).max(min_rows(wo * c));
        let partials: Vec<Vec<f32>> = grad
            .par_chunks(per_group * wo * c)
            .enumerate()
            .map(|(group, g_rows)| {
                let mut acc = vec![0.0f32; (kk + 1) * c];
                for (i, g_row) in g_rows.chunks_exact(wo * c).enumerate() {
                    let row = group * per_group + i;
                    weight_grad_row(x, g_row, &mut acc, g, row / ho, row % ho);
                }
                acc
            })
            .collect();
        let mut sums = vec![0.0f32; (kk + 1) * c];
        for part in &partials {
            for (s, p) in sums.iter_mut().zip(part) {
                *s += p;
            }
        }
        (
            want[1].then(|| weight_from_taps(&sums[..kk * c], c, g.kernel)),
            want[2].then(|| sums[kk * c..].to_vec()),
        )
    } else {
        (
            want[1].then(|| vec![0.0; weight.len()]),
            want[2].then(|| vec![0.0; c]),
        )
    };
    (dx, dw, db)
}

/// `dx[b, iy, ix] = Σ grad[b, oy, ox] * w[ky, kx]` over the taps that read `(iy, ix)`: a gather
/// per input row, so rows are independent tasks.
fn input_grad(weight: &[f32], grad: &[f32], g: Geometry) -> Vec<f32> {
    let c = g.channels;
    let taps = taps_from_weight(weight, c, g.kernel);
    let mut dx = vec![0.0; g.batch * g.height * g.width * c];
    if c == 0 {
        return dx;
    }
    dx.par_chunks_mut(g.width * c)
        .enumerate()
        .with_min_len(min_rows(g.width * c))
        .for_each(|(row, dx_row)| {
            input_grad_row(grad, &taps, dx_row, g, row / g.height, row % g.height);
        });
    dx
}

//! Training-mode BatchNorm over the rows of a channels-last `[R, C]` matrix (CMT's tokens),
//! forward and backward, each in two passes over memory.
//!
//! Why: Burn's `batch_norm_train` for a channel axis last transposes the input to `[C, R]`
//! (a copy), reduces, and builds the normalisation and its backward from a dozen elementwise
//! operations, each a pass with its own allocation; CMT has four BatchNorms in every block.
//! Sums run over fixed groups of rows and are added in order, so results do not depend on
//! thread scheduling.

use rayon::prelude::*;

use super::cpu::dispatch_wide;

/// Rows per group (a rayon task) of a `[rows, c]` matrix: up to 64 groups to keep every core
/// busy, but at least ~16K values each, so that a small matrix (CMT's late stages) is not cut
/// into tasks that cost more to schedule than to run. Fixed by the shape alone, so sums do not
/// depend on the number of threads.
fn rows_per_group(rows: usize, c: usize) -> usize {
    rows.div_ceil(64).max(16_384 / c.max(1)).max(1)
}

// Per channel over the rows of `x`: `sums[..c] += x`, `sums[c..] += x²`, in f64 (one pass;
// with f64 sums of f32 values, `E[x²] - E[x]²` loses nothing that matters at BatchNorm's
// scales).
dispatch_wide!(channel_moments(x: &[f32], c: usize, sums: &mut [f64]) {
    let (s1, s2) = sums.split_at_mut(c);
    for row in x.chunks_exact(c) {
        for ((a, b), &v) in s1.iter_mut().zip(s2.iter_mut()).zip(row) {
            let v = v as f64;
            *a += v;
            *b += v * v;
        }
    }
});

/// Per-channel sums of `f(group of rows, sums)` over fixed row groups, added in order.
fn grouped_sums(x: &[f32], c: usize, width: usize, f: impl Fn(&[f32], usize, &mut [f64]) + Sync) -> Vec<f64> {
    let rows = x.len() / c.max(1);
    let per = rows_per_group(rows, c);
    let parts: Vec<Vec<f64>> = x
        .par_chunks(per * c)
        .enumerate()
        .map(|(i, chunk)| {
            let mut s = vec![0.0f64; width];
            f(chunk, i * per, &mut s);
            s
        })
        .collect();
    let mut total = vec![0.0f64; width];
    for p in &parts {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

/// Batch mean and biased variance per channel of `x: [R, C]`.
pub fn stats(x: &[f32], c: usize) -> (Vec<f32>, Vec<f32>) {
    let rows = (x.len() / c.max(1)).max(1) as f64;
    let sums = grouped_sums(x, c, 2 * c, |chunk, _, s| channel_moments(chunk, c, s));
    let mean: Vec<f64> = sums[..c].iter().map(|s| s / rows).collect();
    let var = sums[c..]
        .iter()
        .zip(&mean)
        .map(|(s, m)| (s / rows - m * m).max(0.0) as f32)
        .collect();
    (mean.into_iter().map(|m| m as f32).collect(), var)
}

dispatch_wide!(pub(super) scale_shift_rows_in_place(x: &mut [f32], a: &[f32], b: &[f32]) {
    let c = a.len();
    for row in x.chunks_exact_mut(c) {
        for ((v, &a), &b) in row.iter_mut().zip(a).zip(b) {
            *v = *v * a + b;
        }
    }
});

dispatch_wide!(scale_shift_rows(x: &[f32], a: &[f32], b: &[f32], out: &mut [f32]) {
    let c = a.len();
    for (o_row, x_row) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        for (((o, &v), &a), &b) in o_row.iter_mut().zip(x_row).zip(a).zip(b) {
            *o = v * a + b;
        }
    }
});

/// `(x - mean) / sqrt(var + eps) * gamma + beta` per channel; also `1 / sqrt(var + eps)`.
pub fn normalize(
    x: &[f32],
    mean: &[f32],
    var: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    let c = mean.len();
    let rstd: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let a: Vec<f32> = rstd.iter().zip(gamma).map(|(r, g)| r * g).collect();
    let b: Vec<f32> = beta
        .iter()
        .zip(mean)
        .zip(&a)
        .map(|((b, m), a)| b - m * a)
        .collect();
    let mut out = vec![0.0; x.len()];
    let per = rows_per_group(x.len() / c.max(1), c) * c;
    out.par_chunks_mut(per)
        .zip(x.par_chunks(per))
        .for_each(|(o, xs)| scale_shift_rows(xs, &a, &b, o));
    (out, rstd)
}

// Per channel: `[Σ g, Σ g * xhat]` into `sums: [2, C]`.
dispatch_wide!(grad_sums(x: &[f32], g: &[f32], mean: &[f32], rstd: &[f32], sums: &mut [f64]) {
    let c = mean.len();
    let (sg, sgx) = sums.split_at_mut(c);
    for (x_row, g_row) in x.chunks_exact(c).zip(g.chunks_exact(c)) {
        for i in 0..c {
            let xhat = (x_row[i] - mean[i]) * rstd[i];
            sg[i] += g_row[i] as f64;
            sgx[i] += (g_row[i] * xhat) as f64;
        }
    }
});

dispatch_wide!(input_grad_rows(x: &[f32], g: &[f32], coef: &[f32], out: &mut [f32]) {
    // coef: [mean, rstd, gamma * rstd, mean of g, mean of g * xhat] per channel.
    let c = coef.len() / 5;
    let (mean, rest) = coef.split_at(c);
    let (rstd, rest) = rest.split_at(c);
    let (scale, rest) = rest.split_at(c);
    let (mg, mgx) = rest.split_at(c);
    for ((o_row, x_row), g_row) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(g.chunks_exact(c)) {
        for i in 0..c {
            let xhat = (x_row[i] - mean[i]) * rstd[i];
            o_row[i] = scale[i] * (g_row[i] - mg[i] - xhat * mgx[i]);
        }
    }
});

/// Gradients of training-mode BatchNorm: `(dx, dgamma, dbeta)` from the input, its batch
/// mean and `rstd`, `gamma` and the output gradient.
pub fn backward(
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    grad: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = mean.len();
    let rows = x.len() / c.max(1);
    let sums = grouped_sums(x, c, 2 * c, |chunk, first, s| {
        let g = &grad[first * c..first * c + chunk.len()];
        grad_sums(chunk, g, mean, rstd, s)
    });
    let dbeta: Vec<f32> = sums[..c].iter().map(|&v| v as f32).collect();
    let dgamma: Vec<f32> = sums[c..].iter().map(|&v| v as f32).collect();
    let n = rows.max(1) as f32;
    let mut coef = Vec::with_capacity(5 * c);
    coef.extend_from_slice(mean);
    coef.extend_from_slice(rstd);
    coef.extend(gamma.iter().zip(rstd).map(|(g, r)| g * r));
    coef.extend(dbeta.iter().map(|v| v / n));
    coef.extend(dgamma.iter().map(|v| v / n));
    let mut dx = vec![0.0; x.len()];
    let per = rows_per_group(rows, c) * c;
    dx.par_chunks_mut(per)
        .zip(x.par_chunks(per).zip(grad.par_chunks(per)))
        .for_each(|(o, (xs, gs))| input_grad_rows(xs, gs, &coef, o));
    (dx, dgamma, dbeta)
}

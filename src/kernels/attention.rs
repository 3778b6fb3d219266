//! Multi-head self-attention straight from the fused qkv projection, forward and backward.
//!
//! Why: the composed version splits `qkv` into per-head q, k, v (three strided copies), scales
//! q (a pass), multiplies through Burn's batched matmul (each output allocated zeroed and then
//! copied), and merges the heads back (another copy); the backward repeats all of it. Here
//! every head is one rayon task whose matrix products read q, k and v in place inside `qkv`
//! (`[B, N, 3, heads, head_dim]`, timm's layout) and write their results in place in the output
//! (`[B, N, heads * head_dim]`) or in the qkv gradient.

use std::mem::MaybeUninit;

use gemm::Parallelism;
use rayon::prelude::*;

use super::cpu::{softmax_grad_rows_in_place, softmax_rows_in_place};
use super::matmul::product;
use super::views::{View, ViewMut, assume_written, fresh_matrix};

/// Runs `task(i, buffer)` for every `i < tasks` on rayon's pool, each with a buffer of `per`
/// values that the task writes in full: with `keep`, the buffers are consecutive parts of one
/// vector handed back (the attention probabilities the backward needs); without, each thread
/// reuses one scratch buffer.
pub(super) fn per_task(
    tasks: usize,
    per: usize,
    keep: bool,
    task: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Option<Vec<f32>> {
    if keep {
        let mut kept = Vec::with_capacity(tasks * per);
        kept.spare_capacity_mut()[..tasks * per]
            .par_chunks_mut(per.max(1))
            .enumerate()
            .for_each(|(i, chunk)| task(i, chunk));
        // SAFETY: every task wrote its whole chunk.
        unsafe { kept.set_len(tasks * per) };
        Some(kept)
    } else {
        (0..tasks).into_par_iter().for_each_init(
            || Vec::<f32>::with_capacity(per),
            |buf, i| task(i, &mut buf.spare_capacity_mut()[..per]),
        );
        None
    }
}

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub batch: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl Shape {
    fn dim(&self) -> usize {
        self.heads * self.head_dim
    }

    fn scale(&self) -> f32 {
        (self.head_dim as f32).powf(-0.5)
    }

    /// The rows of `part` (0 q, 1 k, 2 v) of head `h` in batch item `b`, inside `qkv` viewed as
    /// `[B * N, 3 * D]`.
    fn part(&self, qkv: View, b: usize, part: usize, h: usize) -> View {
        qkv.window(
            b * self.tokens,
            part * self.dim() + h * self.head_dim,
            self.tokens,
            self.head_dim,
        )
    }

    fn part_mut(&self, qkv: ViewMut, b: usize, part: usize, h: usize) -> ViewMut {
        qkv.window(
            b * self.tokens,
            part * self.dim() + h * self.head_dim,
            self.tokens,
            self.head_dim,
        )
    }
}

/// `softmax(q kᵀ / sqrt(head_dim)) v` for every head, merged back to `[B, N, D]`; with
/// `keep_probs`, also the attention probabilities `[B, heads, N, N]` (what the backward needs).
pub fn forward(qkv: &[f32], s: Shape, keep_probs: bool) -> (Vec<f32>, Option<Vec<f32>>) {
    let (n, d) = (s.tokens, s.dim());
    assert_eq!(
        qkv.len(),
        s.batch * n * 3 * d,
        "qkv does not match the attention shape"
    );
    let qkv = View::row_major(qkv, s.batch * n, 3 * d);
    let (mut out, out_view) = fresh_matrix(s.batch * n, d);

    // One head of one image: scores into `probs` (n x n), softmax in place, probs · v into out.
    let head = |task: usize, probs: &mut [MaybeUninit<f32>]| {
        let (b, h) = (task / s.heads, task % s.heads);
        let scores = ViewMut::strided(probs, 0, n, n, n as isize, 1);
        let (q, k, v) = (s.part(qkv, b, 0, h), s.part(qkv, b, 1, h), s.part(qkv, b, 2, h));
        // SAFETY: `probs` is this task's own buffer; each task writes a disjoint column block
        // of `out`; the inputs are borrowed for the whole call.
        unsafe { product(scores, q, k.t(), s.scale(), false, Parallelism::None) };
        // SAFETY: the product just wrote every element.
        let probs = unsafe { assume_written(probs) };
        softmax_rows_in_place(probs, n);
        let dst = out_view.window(b * n, h * s.head_dim, n, s.head_dim);
        unsafe {
            product(
                dst,
                View::row_major(probs, n, n),
                v,
                1.0,
                false,
                Parallelism::None,
            )
        };
    };

    let probs = per_task(s.batch * s.heads, n * n, keep_probs, head);
    // SAFETY: the heads together wrote every element of `out`.
    unsafe { out.set_len(s.batch * n * d) };
    (out, probs)
}

/// Gradient with respect to `qkv` (`[B, N, 3 * D]`) from the output gradient `dout`
/// (`[B, N, D]`) and the probabilities kept by [`forward`].
pub fn backward(qkv: &[f32], probs: &[f32], dout: &[f32], s: Shape) -> Vec<f32> {
    let (n, d) = (s.tokens, s.dim());
    assert_eq!(
        qkv.len(),
        s.batch * n * 3 * d,
        "qkv does not match the attention shape"
    );
    assert_eq!(
        probs.len(),
        s.batch * s.heads * n * n,
        "probabilities do not match the shape"
    );
    assert_eq!(
        dout.len(),
        s.batch * n * d,
        "output gradient does not match the shape"
    );
    let qkv = View::row_major(qkv, s.batch * n, 3 * d);
    let dout = View::row_major(dout, s.batch * n, d);
    let (mut dqkv, dqkv_view) = fresh_matrix(s.batch * n, 3 * d);
    let scale = s.scale();

    per_task(s.batch * s.heads, n * n, false, |task, buf| {
        let (b, h) = (task / s.heads, task % s.heads);
        let p = &probs[task * n * n..(task + 1) * n * n];
        let (q, k, v) = (s.part(qkv, b, 0, h), s.part(qkv, b, 1, h), s.part(qkv, b, 2, h));
        let d_o = dout.window(b * n, h * s.head_dim, n, s.head_dim);
        let grads = [0, 1, 2].map(|part| s.part_mut(dqkv_view, b, part, h));
        // SAFETY: `buf` is this task's own; each task writes disjoint column blocks of `dqkv`
        // (its head's q, k and v columns); the inputs are borrowed for the call. The score
        // scale goes into the scores' gradient, so q's and k's products take it unscaled.
        unsafe { head_backward(p, [q, k, v], d_o, grads, buf, [scale, 1.0]) };
    });
    // SAFETY: the heads together wrote every element of `dqkv`.
    unsafe { dqkv.set_len(s.batch * n * 3 * d) };
    dqkv
}

/// One head's backward from its kept probabilities `p` (`n x m`, row-major) and its output's
/// gradient `d_o` (`n x head_dim`), for both attention kernels: dv = pᵀ·dO; the scores'
/// gradient, softmax's backward of dO·vᵀ times `scales[0]`, in `ds` (left there: CMT sums it
/// over the batch for its bias); dq = `scales[1]`·ds·k and dk = `scales[1]`·dsᵀ·q. The fused
/// kernel folds the attention scale into the scores' gradient, CMT's into the two products
/// (its bias's gradient is the unscaled one).
///
/// # Safety
/// `grads` (dq, dk, dv) are this head's own windows, touched by nobody else meanwhile; `ds`
/// holds `n·m` values; the storage behind every view outlives the call.
pub(super) unsafe fn head_backward(
    p: &[f32],
    [q, k, v]: [View; 3],
    d_o: View,
    [dq, dk, dv]: [ViewMut; 3],
    ds: &mut [MaybeUninit<f32>],
    scales: [f32; 2],
) {
    let (n, m) = (q.rows, k.rows);
    let probs = View::row_major(p, n, m);
    // SAFETY: the caller's guarantees; `ds` is written in full before it is read.
    unsafe {
        product(dv, probs.t(), d_o, 1.0, false, Parallelism::None);
        product(
            ViewMut::strided(ds, 0, n, m, m as isize, 1),
            d_o,
            v.t(),
            1.0,
            false,
            Parallelism::None,
        );
    }
    // SAFETY: the product just wrote every element.
    let ds = unsafe { assume_written(ds) };
    softmax_grad_rows_in_place(p, ds, m, scales[0]);
    let ds = View::row_major(ds, n, m);
    // SAFETY: as above.
    unsafe {
        product(dq, ds, k, scales[1], false, Parallelism::None);
        product(dk, ds.t(), q, scales[1], false, Parallelism::None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attention of one head computed naively in f64.
    fn reference(qkv: &[f32], s: Shape) -> (Vec<f64>, Vec<f64>) {
        let (n, d, dh) = (s.tokens, s.dim(), s.head_dim);
        let at = |b: usize, t: usize, part: usize, h: usize, i: usize| {
            qkv[(b * n + t) * 3 * d + part * d + h * dh + i] as f64
        };
        let mut out = vec![0.0; s.batch * n * d];
        let mut probs = vec![0.0; s.batch * s.heads * n * n];
        for b in 0..s.batch {
            for h in 0..s.heads {
                for i in 0..n {
                    let scores: Vec<f64> = (0..n)
                        .map(|j| {
                            (0..dh)
                                .map(|c| at(b, i, 0, h, c) * at(b, j, 1, h, c))
                                .sum::<f64>()
                                / (dh as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for j in 0..n {
                        probs[((b * s.heads + h) * n + i) * n + j] = e[j] / z;
                    }
                    for c in 0..dh {
                        out[(b * n + i) * d + h * dh + c] =
                            (0..n).map(|j| e[j] / z * at(b, j, 2, h, c)).sum();
                    }
                }
            }
        }
        (out, probs)
    }

    #[test]
    fn forward_matches_naive_attention_and_backward_matches_finite_differences() {
        let s = Shape {
            batch: 2,
            tokens: 5,
            heads: 3,
            head_dim: 4,
        };
        let len = s.batch * s.tokens * 3 * s.dim();
        let qkv: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.377).sin()).collect();
        let (out, probs) = forward(&qkv, s, true);
        let (ref_out, ref_probs) = reference(&qkv, s);
        for (a, b) in out.iter().zip(&ref_out) {
            assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
        }
        let probs = probs.expect("probabilities kept");
        for (a, b) in probs.iter().zip(&ref_probs) {
            assert!((*a as f64 - b).abs() < 1e-6);
        }
        assert_eq!(
            forward(&qkv, s, false).0,
            out,
            "keeping the probabilities changes nothing"
        );

        // Loss = <out, w> for fixed weights w; its qkv gradient by central differences in f64.
        let w: Vec<f32> = (0..out.len()).map(|i| ((i as f32) * 0.91).cos()).collect();
        let grad = backward(&qkv, &probs, &w, s);
        let loss = |qkv: &[f32]| -> f64 {
            let (o, _) = reference(qkv, s);
            o.iter().zip(&w).map(|(a, b)| a * *b as f64).sum()
        };
        for i in (0..len).step_by(7) {
            let mut plus = qkv.clone();
            let mut minus = qkv.clone();
            plus[i] += 1e-3;
            minus[i] -= 1e-3;
            let numeric = (loss(&plus) - loss(&minus)) / 2e-3;
            assert!(
                (grad[i] as f64 - numeric).abs() < 1e-3,
                "element {i}: {} vs {numeric}",
                grad[i]
            );
        }
    }
}

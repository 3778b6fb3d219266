//! Multi-head attention from separate q, k and v projections with a per-head additive bias
//! shared by the batch — CMT's attention (keys and values from the spatially reduced tokens,
//! its relative position bias) — forward and backward.
//!
//! Why: through Burn's operations this is a scaling pass over q, per-head strided copies of q,
//! k and v into the layout the batched matmul wants (flex gathers them element by element), two
//! batched products each writing a zeroed output then copied, and a copy to merge the heads:
//! about a tenth of a CMT inference step. Here every head of every image is one rayon task whose
//! products read q, k and v where their projections left them (`[B, tokens, heads * head_dim]`)
//! and write straight into the merged output (or the gradients).

use std::mem::MaybeUninit;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use gemm::Parallelism;

use super::attention::{head_backward, per_task};
use super::bias_softmax::sum_over_images;
use super::cpu::softmax_rows_in_place;
use super::matmul::product;
use super::views::{View, ViewMut, assume_written, fresh_matrix};
use super::{contiguous, f32_tensor, register_grads, shape_of, slice};

#[backend_extension(Flex, Autodiff)]
pub trait BiasAttentionOps: Backend {
    /// `softmax(q kᵀ / sqrt(head_dim) + bias) v` per head, heads merged: `q: [B, N, D]`,
    /// `k, v: [B, M, D]`, `bias: [heads, N, M]` → `[B, N, D]`.
    fn bias_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self>;
}

/// Whether [`bias_attention`] runs its fused kernel for these queries (f32 on the CPU, not
/// switched off in `VITKIT_FUSED`).
pub fn bias_attention_applies(q: &Tensor<3>) -> bool {
    super::applies(q, super::Fused::BiasAttention)
}

/// Multi-head attention with a bias shared by the batch; see [`BiasAttentionOps`]. Only where
/// [`bias_attention_applies`].
pub fn bias_attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, bias: Tensor<3>, heads: usize) -> Tensor<3> {
    assert!(bias_attention_applies(&q), "no fused attention for this tensor");
    Tensor::from_dispatch(<Dispatch as BiasAttentionOps>::bias_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        bias.into_dispatch(),
        heads,
    ))
}

/// Sizes of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub batch: usize,
    pub queries: usize,
    pub keys: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl Shape {
    /// The shape of `q: [B, N, D]`, `k, v: [B, M, D]`, `bias: [heads, N, M]`; panics on
    /// anything else (the callers build these tensors, so a mismatch is a bug).
    fn of(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor, bias: &FlexTensor, heads: usize) -> Self {
        let (qs, ks, vs, bs) = (shape_of(q), shape_of(k), shape_of(v), shape_of(bias));
        assert!(
            qs.num_dims() == 3 && ks.num_dims() == 3 && ks == vs,
            "q must be [B, N, D], k and v [B, M, D]"
        );
        let (batch, queries, dim, keys) = (qs[0], qs[1], qs[2], ks[1]);
        assert!(
            ks[0] == batch && ks[2] == dim && heads > 0 && dim.is_multiple_of(heads),
            "k and v must match q's batch and width, split into {heads} heads"
        );
        assert!(
            bs.num_dims() == 3 && [bs[0], bs[1], bs[2]] == [heads, queries, keys],
            "the bias must be [heads, N, M]"
        );
        Self {
            batch,
            queries,
            keys,
            heads,
            head_dim: dim / heads,
        }
    }

    fn dim(&self) -> usize {
        self.heads * self.head_dim
    }

    fn scale(&self) -> f32 {
        (self.head_dim as f32).powf(-0.5)
    }

    fn tasks(&self) -> usize {
        self.batch * self.heads
    }

    /// Elements of one head's score matrix.
    fn scores(&self) -> usize {
        self.queries * self.keys
    }

    /// Head `h` of image `b` in `x` viewed as `[B * rows, D]` with `rows` tokens per image.
    fn head(&self, x: View, rows: usize, b: usize, h: usize) -> View {
        x.window(b * rows, h * self.head_dim, rows, self.head_dim)
    }

    fn head_mut(&self, x: ViewMut, rows: usize, b: usize, h: usize) -> ViewMut {
        x.window(b * rows, h * self.head_dim, rows, self.head_dim)
    }
}

/// The attention output `[B, N, D]`, and with `keep_probs` the probabilities
/// `[B, heads, N, M]` (what the backward needs).
pub fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: &[f32],
    s: Shape,
    keep_probs: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (n, m, d) = (s.queries, s.keys, s.dim());
    assert_eq!(q.len(), s.batch * n * d, "q does not match the shape");
    assert_eq!(k.len(), s.batch * m * d, "k does not match the shape");
    assert_eq!(v.len(), s.batch * m * d, "v does not match the shape");
    assert_eq!(bias.len(), s.heads * n * m, "bias does not match the shape");
    let (q, k, v) = (
        View::row_major(q, s.batch * n, d),
        View::row_major(k, s.batch * m, d),
        View::row_major(v, s.batch * m, d),
    );
    let (mut out, out_view) = fresh_matrix(s.batch * n, d);

    // One head of one image: biased scores into `probs`, softmax in place, probs · v into out.
    let head = |task: usize, probs: &mut [MaybeUninit<f32>]| {
        let (b, h) = (task / s.heads, task % s.heads);
        let scores = ViewMut::strided(probs, 0, n, m, m as isize, 1);
        // SAFETY: `probs` is this task's own buffer; each task writes its own column block of
        // `out`; the inputs are borrowed for the whole call.
        unsafe {
            product(
                scores,
                s.head(q, n, b, h),
                s.head(k, m, b, h).t(),
                s.scale(),
                false,
                Parallelism::None,
            )
        };
        // SAFETY: the product just wrote every element.
        let probs = unsafe { assume_written(probs) };
        for (p, b) in probs.iter_mut().zip(&bias[h * n * m..(h + 1) * n * m]) {
            *p += b;
        }
        softmax_rows_in_place(probs, m);
        unsafe {
            product(
                s.head_mut(out_view, n, b, h),
                View::row_major(probs, n, m),
                s.head(v, m, b, h),
                1.0,
                false,
                Parallelism::None,
            )
        };
    };

    let probs = per_task(s.tasks(), s.scores(), keep_probs, head);
    // SAFETY: the heads together wrote every element of `out`.
    unsafe { out.set_len(s.batch * n * d) };
    (out, probs)
}

/// The gradients [`backward`] gives: q's, k's, v's and, when asked for, the bias's.
pub struct Grads {
    pub dq: Vec<f32>,
    pub dk: Vec<f32>,
    pub dv: Vec<f32>,
    pub dbias: Option<Vec<f32>>,
}

/// Gradients of q, k, v and (with `bias_grad`) of the bias, from the output gradient `dout`
/// (`[B, N, D]`) and the probabilities kept by [`forward`].
pub fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    dout: &[f32],
    s: Shape,
    bias_grad: bool,
) -> Grads {
    let (n, m, d, per) = (s.queries, s.keys, s.dim(), s.scores());
    assert_eq!(
        probs.len(),
        s.tasks() * per,
        "probabilities do not match the shape"
    );
    assert_eq!(
        dout.len(),
        s.batch * n * d,
        "output gradient does not match the shape"
    );
    let (q, k, v, dout) = (
        View::row_major(q, s.batch * n, d),
        View::row_major(k, s.batch * m, d),
        View::row_major(v, s.batch * m, d),
        View::row_major(dout, s.batch * n, d),
    );
    let (mut dq, dq_view) = fresh_matrix(s.batch * n, d);
    let (mut dk, dk_view) = fresh_matrix(s.batch * m, d);
    let (mut dv, dv_view) = fresh_matrix(s.batch * m, d);

    let head = |task: usize, ds: &mut [MaybeUninit<f32>]| {
        let (b, h) = (task / s.heads, task % s.heads);
        let p = &probs[task * per..(task + 1) * per];
        let inputs = [s.head(q, n, b, h), s.head(k, m, b, h), s.head(v, m, b, h)];
        let grads = [
            s.head_mut(dq_view, n, b, h),
            s.head_mut(dk_view, m, b, h),
            s.head_mut(dv_view, m, b, h),
        ];
        // SAFETY: `ds` is this task's own; each task writes its own column blocks of dq, dk and
        // dv; the inputs are borrowed for the whole call. The scores' gradient stays unscaled
        // (it is also the bias's, per image); q's and k's products take the scale.
        unsafe { head_backward(p, inputs, s.head(dout, n, b, h), grads, ds, [1.0, s.scale()]) };
    };

    // The scores' gradients are kept per task when the bias needs their sum over the batch.
    let kept = per_task(s.tasks(), per, bias_grad, head);
    // SAFETY: the tasks together wrote every element of the three gradients.
    unsafe {
        dq.set_len(s.batch * n * d);
        dk.set_len(s.batch * m * d);
        dv.set_len(s.batch * m * d);
    }
    let dbias = kept.map(|ds| sum_over_images(&ds, s.heads * per));
    Grads { dq, dk, dv, dbias }
}

fn flex_forward(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    bias: &FlexTensor,
    s: Shape,
    keep_probs: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    let (out, probs) = forward(slice(q), slice(k), slice(v), slice(bias), s, keep_probs);
    let out = f32_tensor(out, [s.batch, s.queries, s.dim()].into());
    let probs = probs.map(|p| f32_tensor(p, [s.batch, s.heads, s.queries, s.keys].into()));
    (out, probs)
}

impl BiasAttentionOps for Flex {
    fn bias_attention(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        bias: FlexTensor,
        heads: usize,
    ) -> FlexTensor {
        let [q, k, v, bias] = [q, k, v, bias].map(contiguous);
        let s = Shape::of(&q, &k, &v, &bias, heads);
        flex_forward(&q, &k, &v, &bias, s, false).0
    }
}

#[derive(Debug)]
struct BiasAttentionBackward;

impl Backward<Flex, 4> for BiasAttentionBackward {
    /// q, k, v (contiguous), the probabilities and the shape.
    type State = ([FlexTensor; 3], FlexTensor, Shape);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let ([q, k, v], probs, s) = ops.state;
        let [node_q, node_k, node_v, node_bias] = ops.parents.map(|p| p.map(|n| n.id));
        let g = backward(
            slice(&q),
            slice(&k),
            slice(&v),
            slice(&probs),
            slice(&grad),
            s,
            node_bias.is_some(),
        );
        register_grads(
            grads,
            [
                (node_q, Some(f32_tensor(g.dq, shape_of(&q)))),
                (node_k, Some(f32_tensor(g.dk, shape_of(&k)))),
                (node_v, Some(f32_tensor(g.dv, shape_of(&v)))),
                (
                    node_bias,
                    g.dbias
                        .map(|b| f32_tensor(b, [s.heads, s.queries, s.keys].into())),
                ),
            ],
        );
    }
}

impl<C: CheckpointStrategy> BiasAttentionOps for Autodiff<Flex, C> {
    fn bias_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self> {
        let [qp, kp, vp, bp] = [&q, &k, &v, &bias].map(|t| contiguous(t.primitive().clone()));
        let s = Shape::of(&qp, &kp, &vp, &bp, heads);
        match BiasAttentionBackward
            .prepare::<C>([q.node(), k.node(), v.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, probs) = flex_forward(&qp, &kp, &vp, &bp, s, true);
                let probs = probs.expect("probabilities kept for the backward");
                prep.finish(([qp, kp, vp], probs, s), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(flex_forward(&qp, &kp, &vp, &bp, s, false).0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(len: usize, f: f32, phase: f32) -> Vec<f32> {
        (0..len).map(|i| (i as f32 * f + phase).sin()).collect()
    }

    /// The output computed naively in f64.
    fn reference(q: &[f32], k: &[f32], v: &[f32], bias: &[f32], s: Shape) -> Vec<f64> {
        let (n, m, d, dh) = (s.queries, s.keys, s.dim(), s.head_dim);
        let mut out = vec![0.0; s.batch * n * d];
        for b in 0..s.batch {
            for h in 0..s.heads {
                for i in 0..n {
                    let scores: Vec<f64> = (0..m)
                        .map(|j| {
                            let dot: f64 = (0..dh)
                                .map(|c| {
                                    q[(b * n + i) * d + h * dh + c] as f64
                                        * k[(b * m + j) * d + h * dh + c] as f64
                                })
                                .sum();
                            dot / (dh as f64).sqrt() + bias[(h * n + i) * m + j] as f64
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..dh {
                        out[(b * n + i) * d + h * dh + c] = (0..m)
                            .map(|j| e[j] / z * v[(b * m + j) * d + h * dh + c] as f64)
                            .sum();
                    }
                }
            }
        }
        out
    }

    #[test]
    fn forward_matches_naive_attention_and_backward_matches_finite_differences() {
        let s = Shape {
            batch: 2,
            queries: 6,
            keys: 4,
            heads: 2,
            head_dim: 3,
        };
        let d = s.dim();
        let q = wave(s.batch * s.queries * d, 0.377, 0.0);
        let k = wave(s.batch * s.keys * d, 0.731, 0.4);
        let v = wave(s.batch * s.keys * d, 0.513, 1.1);
        let bias = wave(s.heads * s.queries * s.keys, 0.29, 2.0);
        let (out, probs) = forward(&q, &k, &v, &bias, s, true);
        for (a, b) in out.iter().zip(reference(&q, &k, &v, &bias, s)) {
            assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert_eq!(forward(&q, &k, &v, &bias, s, false).0, out);

        // Loss = <out, w>; every input's gradient against central differences in f64.
        let w = wave(out.len(), 0.91, 0.5);
        let g = backward(&q, &k, &v, &probs.expect("kept"), &w, s, true);
        let loss = |q: &[f32], k: &[f32], v: &[f32], bias: &[f32]| -> f64 {
            let o = reference(q, k, v, bias, s);
            o.iter().zip(&w).map(|(a, b)| a * *b as f64).sum()
        };
        let inputs = [&q, &k, &v, &bias];
        let analytic = [&g.dq, &g.dk, &g.dv, g.dbias.as_ref().expect("bias gradient")];
        for (which, grad) in analytic.iter().enumerate() {
            assert_eq!(grad.len(), inputs[which].len());
            for i in 0..grad.len() {
                let nudged = |delta: f32| {
                    let mut x = inputs.map(|t| t.clone());
                    x[which][i] += delta;
                    loss(&x[0], &x[1], &x[2], &x[3])
                };
                let numeric = (nudged(1e-3) - nudged(-1e-3)) / 2e-3;
                assert!(
                    (grad[i] as f64 - numeric).abs() < 1e-3,
                    "input {which}, element {i}: {} vs {numeric}",
                    grad[i]
                );
            }
        }
        let without = backward(
            &q,
            &k,
            &v,
            &forward(&q, &k, &v, &bias, s, true).1.unwrap(),
            &w,
            s,
            false,
        );
        assert!(without.dbias.is_none());
        assert_eq!((without.dq, without.dk, without.dv), (g.dq, g.dk, g.dv));
    }
}

//! BatchNorm over channels-last rows (CMT's tokens) as a Burn backend extension: batch
//! statistics, the normalisation with training-mode BatchNorm's backward (`batch_norm.rs`), and
//! for inference a 1×1 convolution with its GELU and the BatchNorm after it in one pass. On any
//! other device the wrappers return `None` and the caller composes Burn's operations.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;

use super::batch_norm;
use super::conv::{NoGradient, inference_only};
use super::{contiguous, f32_tensor, register_grads, shape_of, slice};

#[backend_extension(Flex, Autodiff)]
pub trait NormOps: Backend {
    /// Inference only: `gelu(x · w + b) * scale + shift` over the last axis (`w: [d_in, d_out]`):
    /// a 1×1 convolution, its GELU and the evaluation-mode BatchNorm after it, in one pass.
    fn norm_linear_gelu_affine(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    /// Per-channel batch mean and biased variance of `x: [R, C]`, as `[2, C]` (no gradient).
    fn norm_row_stats(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `(x - mean) / sqrt(var + eps) * gamma + beta` over the rows of `x: [R, C]` with
    /// `stats = [mean; var]` (`[2, C]`). Its backward is training-mode BatchNorm's, for
    /// statistics that are `x`'s own batch statistics.
    fn norm_batch_norm_rows(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self>;
}

/// Inference on the CPU: `gelu(x · weight + bias) * scale + shift` in one pass (see
/// [`NormOps::norm_linear_gelu_affine`]); `None` where that kernel does not run.
pub fn linear_gelu_affine(
    x: Tensor<3>,
    weight: Tensor<2>,
    bias: Tensor<1>,
    scale: Tensor<1>,
    shift: Tensor<1>,
) -> Option<Tensor<3>> {
    let fused = super::enabled(super::Fused::Epilogue) && super::applies(&x, super::Fused::Linear);
    if !fused || x.device().is_autodiff() {
        return None;
    }
    Some(Tensor::from_dispatch(
        <Dispatch as NormOps>::norm_linear_gelu_affine(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            scale.into_dispatch(),
            shift.into_dispatch(),
        ),
    ))
}

/// Training-mode BatchNorm over the rows of `x: [R, C]` where the fused kernels run: the
/// output, and the batch mean and biased variance (detached). `None` elsewhere.
pub fn batch_norm_rows_train(
    x: Tensor<2>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    eps: f64,
) -> Option<(Tensor<2>, Tensor<1>, Tensor<1>)> {
    if !super::applies(&x, super::Fused::BatchNorm) {
        return None;
    }
    let [_, c] = x.dims();
    let stats = Tensor::<2>::from_dispatch(<Dispatch as NormOps>::norm_row_stats(
        x.clone().detach().into_dispatch(),
    ));
    let out = Tensor::from_dispatch(<Dispatch as NormOps>::norm_batch_norm_rows(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        stats.clone().into_dispatch(),
        eps,
    ));
    let mean = stats.clone().narrow(0, 0, 1).reshape([c]);
    let var = stats.narrow(0, 1, 1).reshape([c]);
    Some((out, mean, var))
}

/// Evaluation-mode BatchNorm over the rows of `x: [R, C]` with the running statistics, where
/// the fused kernels run and no gradient is taken. `None` elsewhere.
pub fn batch_norm_rows_eval(
    x: Tensor<2>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    mean: Tensor<1>,
    var: Tensor<1>,
    eps: f64,
) -> Option<Tensor<2>> {
    if !super::applies(&x, super::Fused::BatchNorm) || x.device().is_autodiff() {
        return None;
    }
    let [c] = mean.dims();
    let stats = Tensor::cat(vec![mean.reshape([1, c]), var.reshape([1, c])], 0);
    Some(Tensor::from_dispatch(
        <Dispatch as NormOps>::norm_batch_norm_rows(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            stats.into_dispatch(),
            eps,
        ),
    ))
}

/// The two rows `[mean; var]` of a `[2, C]` statistics tensor.
fn stat_rows(stats: &FlexTensor) -> (Vec<f32>, Vec<f32>) {
    let stats = contiguous(stats.clone());
    let v = slice(&stats);
    let c = v.len() / 2;
    (v[..c].to_vec(), v[c..].to_vec())
}

/// The normalised rows and `rstd`.
fn flex_batch_norm_rows(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    stats: &FlexTensor,
    eps: f64,
) -> (FlexTensor, Vec<f32>) {
    let (mean, var) = stat_rows(stats);
    let (gamma, beta) = (contiguous(gamma.clone()), contiguous(beta.clone()));
    let (out, rstd) = batch_norm::normalize(slice(x), &mean, &var, slice(&gamma), slice(&beta), eps as f32);
    (f32_tensor(out, shape_of(x)), rstd)
}

impl NormOps for Flex {
    fn norm_linear_gelu_affine(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        scale: FlexTensor,
        shift: FlexTensor,
    ) -> FlexTensor {
        let x = contiguous(x);
        let (w, rows, shape) = super::linear_geometry(&x, &weight);
        let (bias, scale, shift) = (contiguous(bias), contiguous(scale), contiguous(shift));
        let (bias, scale, shift) = (slice(&bias), slice(&scale), slice(&shift));
        let epilogue = |block: &mut [f32]| {
            super::cpu::bias_gelu_rows_in_place(block, bias);
            batch_norm::scale_shift_rows_in_place(block, scale, shift);
        };
        let out = match super::matmul::epilogue_block_rows(rows) {
            Some(block_rows) => {
                super::matmul::linear_blocks(slice(&x), rows, super::weight_view(&w), block_rows, |_, b| {
                    epilogue(b)
                })
            }
            None => {
                let mut out = super::matmul::linear(slice(&x), rows, super::weight_view(&w), None);
                epilogue(&mut out);
                out
            }
        };
        f32_tensor(out, shape)
    }

    fn norm_row_stats(x: FlexTensor) -> FlexTensor {
        let x = contiguous(x);
        let c = shape_of(&x)[1];
        let (mean, var) = batch_norm::stats(slice(&x), c);
        f32_tensor([mean, var].concat(), [2, c].into())
    }

    fn norm_batch_norm_rows(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        stats: FlexTensor,
        eps: f64,
    ) -> FlexTensor {
        flex_batch_norm_rows(&contiguous(x), &gamma, &beta, &stats, eps).0
    }
}

#[derive(Debug)]
struct BatchNormRowsBackward;

impl Backward<Flex, 4> for BatchNormRowsBackward {
    /// Input (contiguous), its batch mean, `rstd` and gamma.
    type State = (FlexTensor, Vec<f32>, Vec<f32>, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let (x, mean, rstd, gamma) = ops.state;
        let gamma = contiguous(gamma);
        let c = mean.len();
        let [node_x, node_gamma, node_beta, _stats] = ops.parents.map(|p| p.map(|n| n.id));
        let (dx, dgamma, dbeta) = batch_norm::backward(slice(&x), &mean, &rstd, slice(&gamma), slice(&grad));
        register_grads(
            grads,
            [
                (node_x, Some(f32_tensor(dx, shape_of(&x)))),
                (node_gamma, Some(f32_tensor(dgamma, [c].into()))),
                (node_beta, Some(f32_tensor(dbeta, [c].into()))),
            ],
        );
    }
}

impl<C: CheckpointStrategy> NormOps for Autodiff<Flex, C> {
    fn norm_linear_gelu_affine(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        // Never called on an autodiff device (see `linear_gelu_affine`).
        let out = Flex::norm_linear_gelu_affine(
            x.primitive().clone(),
            weight.primitive().clone(),
            bias.primitive().clone(),
            scale.primitive().clone(),
            shift.primitive().clone(),
        );
        inference_only::<C>(&x, out, "the fused GELU + BatchNorm epilogue")
    }

    fn norm_row_stats(x: FloatTensor<Self>) -> FloatTensor<Self> {
        // Taken from a detached input (see `batch_norm_rows_train`): the normalisation's
        // backward accounts for the statistics, nothing flows through them here.
        let out = Flex::norm_row_stats(x.primitive().clone());
        match NoGradient.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn norm_batch_norm_rows(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        let input = contiguous(x.primitive().clone());
        let g = gamma.primitive().clone();
        let (out, rstd) = flex_batch_norm_rows(&input, &g, beta.primitive(), stats.primitive(), eps);
        match BatchNormRowsBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node(), stats.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (mean, _) = stat_rows(stats.primitive());
                prep.finish((input, mean, rstd, g), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

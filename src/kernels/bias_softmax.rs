//! `softmax(x + bias)` over the last axis with a bias shared by the batch (CMT's relative
//! position bias, `[heads, N, M]` onto scores `[B, heads, N, M]`), forward and backward.
//!
//! Why: Burn adds a bias broadcast over the batch through a strided iterator (a slow pass over
//! the largest attention tensor), then the softmax is another pass; here the add happens as
//! each row is read for its softmax. The bias gradient is the batch's sum of the scores'
//! gradients, summed image by image in order.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::{contiguous, cpu, f32_tensor, register_grads, shape_of, slice};

#[backend_extension(Flex, Autodiff)]
pub trait BiasSoftmaxOps: Backend {
    /// `softmax(x + bias)` over the last axis: `x: [B, …]`, `bias` of `x`'s shape without
    /// the batch axis.
    fn bias_softmax(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// `softmax(x + bias)` over the last axis, `bias` broadcast over the batch (`x: [B, h, N, M]`,
/// `bias: [h, N, M]`): one fused pass where the kernels run, Burn's operations elsewhere.
pub fn bias_softmax(x: Tensor<4>, bias: Tensor<3>) -> Tensor<4> {
    if super::applies(&x, super::Fused::Softmax) {
        Tensor::from_dispatch(<Dispatch as BiasSoftmaxOps>::bias_softmax(
            x.into_dispatch(),
            bias.into_dispatch(),
        ))
    } else {
        super::softmax_last(x + bias.unsqueeze::<4>())
    }
}

fn flex_bias_softmax(x: &FlexTensor, bias: &FlexTensor) -> FlexTensor {
    let shape = shape_of(x);
    let m = shape[shape.num_dims() - 1];
    let bias = contiguous(bias.clone());
    let (xs, bs) = (slice(x), slice(&bias));
    assert!(
        !bs.is_empty() && xs.len().is_multiple_of(bs.len()),
        "bias must be x's shape without the batch axis"
    );
    let mut out = vec![0.0f32; xs.len()];
    // Tasks of whole rows, aligned so each starts at a bias row.
    let rows_per_task = (16_384 / m.max(1)).max(1);
    out.par_chunks_mut(rows_per_task * m)
        .zip(xs.par_chunks(rows_per_task * m))
        .enumerate()
        .for_each(|(i, (o, x))| {
            let first = i * rows_per_task * m;
            for (j, (o, x)) in o.iter_mut().zip(x).enumerate() {
                *o = x + bs[(first + j) % bs.len()];
            }
            cpu::softmax_rows_in_place(o, m);
        });
    f32_tensor(out, shape)
}

/// The gradient of a bias shared by the batch: `x` (`[B, per]`) summed over its images, in
/// image order for every element (so the result does not depend on the threads).
pub(super) fn sum_over_images(x: &[f32], per: usize) -> Vec<f32> {
    const CHUNK: usize = 4096;
    let mut sum = vec![0.0f32; per];
    if per == 0 {
        return sum;
    }
    sum.par_chunks_mut(CHUNK).enumerate().for_each(|(i, part)| {
        for image in x.chunks_exact(per) {
            for (s, v) in part.iter_mut().zip(&image[i * CHUNK..]) {
                *s += v;
            }
        }
    });
    sum
}

impl BiasSoftmaxOps for Flex {
    fn bias_softmax(x: FlexTensor, bias: FlexTensor) -> FlexTensor {
        flex_bias_softmax(&contiguous(x), &bias)
    }
}

#[derive(Debug)]
struct BiasSoftmaxBackward;

impl Backward<Flex, 2> for BiasSoftmaxBackward {
    /// The output (contiguous) and the bias's shape.
    type State = (FlexTensor, burn::backend::Shape);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let (y, bias_shape) = ops.state;
        let shape = shape_of(&y);
        let m = shape[shape.num_dims() - 1];
        let dx = cpu::softmax_backward(slice(&y), slice(&grad), m);
        let [node_x, node_bias] = ops.parents.map(|p| p.map(|n| n.id));
        let dbias =
            node_bias.map(|_| f32_tensor(sum_over_images(&dx, bias_shape.num_elements()), bias_shape));
        register_grads(grads, [(node_x, Some(f32_tensor(dx, shape))), (node_bias, dbias)]);
    }
}

impl<C: CheckpointStrategy> BiasSoftmaxOps for Autodiff<Flex, C> {
    fn bias_softmax(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        let input = contiguous(x.primitive().clone());
        let out = flex_bias_softmax(&input, bias.primitive());
        let bias_shape = shape_of(bias.primitive());
        match BiasSoftmaxBackward
            .prepare::<C>([x.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((out.clone(), bias_shape), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

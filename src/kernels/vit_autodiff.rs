//! The backward passes of the ViT's fused operations (`VitOps`) and their autodiff
//! implementation: each operation records what its backward needs and computes its gradients
//! with the same kernels as the forward.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Flex};

use super::*;

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let x = ops.state;
            let dx = cpu::gelu_backward(slice(&x), slice(&grad));
            grads.register::<Flex>(node.id, f32_tensor(dx, shape_of(&x)));
        }
    }
}

#[derive(Debug)]
struct SoftmaxBackward;

impl Backward<Flex, 1> for SoftmaxBackward {
    /// The softmax output.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let y = ops.state;
            let shape = shape_of(&y);
            let n = shape[shape.num_dims() - 1];
            let dx = cpu::softmax_backward(slice(&y), slice(&grad), n);
            grads.register::<Flex>(node.id, f32_tensor(dx, shape));
        }
    }
}

#[derive(Debug)]
struct LayerNormBackward;

impl Backward<Flex, 3> for LayerNormBackward {
    /// Input, scale and epsilon.
    type State = (FlexTensor, FlexTensor, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let [node_x, node_gamma, node_beta] = ops.parents;
        let (x, gamma, eps) = ops.state;
        let gamma = contiguous(gamma);
        let (dx, dgamma, dbeta) =
            cpu::layer_norm_backward(slice(&x), slice(&gamma), slice(&grad), eps as f32);
        register_grads(
            grads,
            [
                (node_x.map(|n| n.id), Some(f32_tensor(dx, shape_of(&x)))),
                (
                    node_gamma.map(|n| n.id),
                    Some(f32_tensor(dgamma, shape_of(&gamma))),
                ),
                (node_beta.map(|n| n.id), Some(f32_tensor(dbeta, shape_of(&gamma)))),
            ],
        );
    }
}

/// Backward of the linear layer, with a bias (three parents) or without (two).
#[derive(Debug)]
struct LinearBackward;

impl<const N: usize> Backward<Flex, N> for LinearBackward {
    /// Input (contiguous) and weight.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let (x, w) = ops.state;
        let ids: [Option<NodeId>; 3] =
            [0, 1, 2].map(|i| ops.parents.get(i).and_then(|p| p.as_ref().map(|n| n.id)));
        let computed = flex_linear_backward(&x, &w, &grad, ids.map(|id| id.is_some()));
        register_grads(grads, ids.into_iter().zip(computed));
    }
}

#[derive(Debug)]
struct LinearGeluBackward;

impl Backward<Flex, 3> for LinearGeluBackward {
    /// Input (contiguous), weight and pre-activation `x · w + b`.
    type State = (FlexTensor, FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let (x, w, pre) = ops.state;
        let shape = shape_of(&pre);
        let width = shape[shape.num_dims() - 1];
        // Through the GELU (its bias gradient summed on the way), then the linear layer's
        // backward from there.
        let (dh, db) = cpu::gelu_backward_with_column_sums(slice(&pre), slice(&grad), width);
        let [node_x, node_w, node_b] = ops.parents.map(|p| p.map(|n| n.id));
        let [dx, dw, _] = flex_linear_backward(
            &x,
            &w,
            &f32_tensor(dh, shape),
            [node_x.is_some(), node_w.is_some(), false],
        );
        let db = node_b.is_some().then(|| f32_tensor(db, [width].into()));
        register_grads(grads, [(node_x, dx), (node_w, dw), (node_b, db)]);
    }
}

#[derive(Debug)]
struct LinearResidualBackward;

impl Backward<Flex, 4> for LinearResidualBackward {
    /// Input of the linear layer (contiguous) and its weight.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let (x, w) = ops.state;
        let [node_resid, node_x, node_w, node_b] = ops.parents.map(|p| p.map(|n| n.id));
        let linear = [node_x, node_w, node_b];
        let computed = flex_linear_backward(&x, &w, &grad, linear.map(|id| id.is_some()));
        register_grads(grads, linear.into_iter().zip(computed));
        // The residual passes its gradient through unchanged.
        register_grads(grads, [(node_resid, Some(grad))]);
    }
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 1> for AttentionBackward {
    /// qkv (contiguous), the attention probabilities and the number of heads.
    type State = (FlexTensor, FlexTensor, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let (qkv, probs, heads) = ops.state;
            let s = attention_shape(&qkv, heads);
            let dqkv = attention::backward(slice(&qkv), slice(&probs), slice(&grad), s);
            grads.register::<Flex>(node.id, f32_tensor(dqkv, shape_of(&qkv)));
        }
    }
}

impl<C: CheckpointStrategy> VitOps for Autodiff<Flex, C> {
    fn vit_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let input = contiguous(x.primitive().clone());
        let (w, b) = (weight.primitive().clone(), bias.primitive().clone());
        let out = flex_linear(&input, &w, Some(&b));
        match LinearBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((input, w), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn vit_linear_no_bias(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let input = contiguous(x.primitive().clone());
        let w = weight.primitive().clone();
        let out = flex_linear(&input, &w, None);
        match LinearBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((input, w), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn vit_linear_gelu(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let input = contiguous(x.primitive().clone());
        let (w, b) = (weight.primitive().clone(), bias.primitive().clone());
        match LinearGeluBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, pre) = flex_linear_gelu(&input, &w, &b, true);
                prep.finish((input, w, pre.expect("pre-activation kept")), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(flex_linear_gelu(&input, &w, &b, false).0),
        }
    }

    fn vit_linear_residual(
        resid: FloatTensor<Self>,
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let input = contiguous(x.primitive().clone());
        let (w, b) = (weight.primitive().clone(), bias.primitive().clone());
        let out = flex_linear_residual(resid.primitive(), &input, &w, &b);
        match LinearResidualBackward
            .prepare::<C>([resid.node(), x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((input, w), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn vit_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        let input = contiguous(qkv.primitive().clone());
        match AttentionBackward
            .prepare::<C>([qkv.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, probs) = flex_attention(&input, heads, true);
                let probs = probs.expect("probabilities kept for the backward");
                prep.finish((input, probs, heads), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(flex_attention(&input, heads, false).0),
        }
    }

    fn vit_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match GeluBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let input = contiguous(x.primitive().clone());
                let out = flex_gelu(input.clone());
                prep.finish(input, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(flex_gelu(x.into_primitive())),
        }
    }

    fn vit_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match SoftmaxBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = contiguous(Flex::vit_softmax(x.primitive().clone()));
                prep.finish(out.clone(), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::vit_softmax(x.into_primitive())),
        }
    }

    fn vit_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        match LayerNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let input = contiguous(x.primitive().clone());
                let out = Flex::vit_layer_norm(
                    input.clone(),
                    gamma.primitive().clone(),
                    beta.primitive().clone(),
                    eps,
                );
                prep.finish((input, gamma.primitive().clone(), eps), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::vit_layer_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                eps,
            )),
        }
    }
}

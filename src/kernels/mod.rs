//! Fused CPU operations for the ViT hot spots, added to Burn through its backend-extension
//! mechanism, each with its own backward pass.
//!
//! Why: under autodiff, Burn composes LayerNorm and softmax from a handful of primitive ops, each
//! a full pass over memory with its own allocation and its own backward node, and flex's GELU
//! calls libm's scalar `erff`. One pass forward and one backward per operation is what PyTorch
//! does. On any other device (CUDA) the wrappers fall back to Burn's own operations.

mod cpu;

use std::sync::OnceLock;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Bytes, DType, Dispatch, DispatchDevice, Flex, backend_extension};
use burn::tensor::Tensor;

#[backend_extension(Flex, Autodiff)]
pub trait VitOps: Backend {
    /// Exact GELU (erf form) with a vectorised error function.
    fn vit_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// Softmax over the last axis.
    fn vit_softmax(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// LayerNorm over the last axis.
    fn vit_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self>;
}

/// One bit per fused operation, for switching them off one at a time to measure each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fused {
    Gelu = 1,
    Softmax = 2,
    LayerNorm = 4,
}

/// The fused operations in use: all, unless the environment variable `VITKIT_FUSED` lists some
/// (`gelu,softmax,layernorm`) or says `none`.
pub fn enabled(op: Fused) -> bool {
    static MASK: OnceLock<u8> = OnceLock::new();
    let mask = *MASK.get_or_init(|| match std::env::var("VITKIT_FUSED") {
        Err(_) => 7,
        Ok(list) => list
            .split(',')
            .map(|s| match s.trim() {
                "gelu" => Fused::Gelu as u8,
                "softmax" => Fused::Softmax as u8,
                "layernorm" => Fused::LayerNorm as u8,
                "all" => 7,
                _ => 0,
            })
            .fold(0, |a, b| a | b),
    });
    mask & op as u8 != 0
}

/// Whether a fused kernel applies: it is enabled and `x` is an f32 tensor on the flex CPU backend
/// (with or without autodiff).
pub fn applies<const D: usize>(x: &Tensor<D>, op: Fused) -> bool {
    enabled(op)
        && matches!(x.device().inner().as_dispatch(), DispatchDevice::Flex(_))
        && x.dtype() == burn::tensor::DType::F32
}

/// Exact GELU, `x * Phi(x)`.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if applies(&x, Fused::Gelu) {
        Tensor::from_dispatch(<Dispatch as VitOps>::vit_gelu(x.into_dispatch()))
    } else {
        burn::tensor::activation::gelu(x)
    }
}

/// Softmax over the last axis.
pub fn softmax_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if applies(&x, Fused::Softmax) {
        Tensor::from_dispatch(<Dispatch as VitOps>::vit_softmax(x.into_dispatch()))
    } else {
        burn::tensor::activation::softmax(x, D - 1)
    }
}

/// LayerNorm over the last axis with scale and shift.
pub fn layer_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, beta: Tensor<1>, eps: f64) -> Tensor<D> {
    if applies(&x, Fused::LayerNorm) {
        Tensor::from_dispatch(<Dispatch as VitOps>::vit_layer_norm(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            eps,
        ))
    } else {
        burn::tensor::module::layer_norm(x, gamma, Some(beta), eps)
    }
}

fn f32_tensor(values: Vec<f32>, shape: burn::backend::Shape) -> FlexTensor {
    FlexTensor::new(Bytes::from_elems(values), Layout::contiguous(shape), DType::F32)
}

fn shape_of(t: &FlexTensor) -> burn::backend::Shape {
    t.layout().shape().clone()
}

fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.is_contiguous() { t } else { t.to_contiguous() }
}

fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

fn flex_gelu(x: FlexTensor) -> FlexTensor {
    let x = contiguous(x);
    f32_tensor(cpu::gelu(slice(&x)), shape_of(&x))
}

impl VitOps for Flex {
    fn vit_gelu(x: FlexTensor) -> FlexTensor {
        flex_gelu(x)
    }

    fn vit_softmax(x: FlexTensor) -> FlexTensor {
        let last = shape_of(&x).num_dims() - 1;
        <Flex as burn::backend::ops::ActivationOps<Flex>>::softmax(x, last)
    }

    fn vit_layer_norm(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, eps: f64) -> FlexTensor {
        <Flex as burn::backend::ops::ModuleOps<Flex>>::layer_norm(x, gamma, Some(beta), eps)
    }
}

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
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, f32_tensor(dx, shape_of(&x)));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, f32_tensor(dgamma, shape_of(&gamma)));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, f32_tensor(dbeta, shape_of(&gamma)));
        }
    }
}

impl<C: CheckpointStrategy> VitOps for Autodiff<Flex, C> {
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

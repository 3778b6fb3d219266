//! Fused CPU operations for the ViT hot spots, added to Burn through its backend-extension
//! mechanism, each with its own backward pass.
//!
//! Why: under autodiff, Burn composes LayerNorm and softmax from a handful of primitive ops, each
//! a full pass over memory with its own allocation and its own backward node, and flex's GELU
//! calls libm's scalar `erff`. flex's matrix products allocate every output zeroed and then
//! copy it once more, and attention needs copies to split and merge heads. Here: one pass
//! forward and one backward per elementwise operation (`cpu.rs`), linear layers that write each
//! output once with their bias, GELU or residual add folded in (`matmul.rs`), and attention that
//! reads q, k and v where the qkv projection left them (`attention.rs`). For inference, the
//! linear layers can multiply in bf16 with f32 sums (`bf16.rs`, off unless switched on). On any
//! other device (CUDA) the wrappers fall back to Burn's own operations.

mod attention;
mod batch_norm;
mod bf16;
mod bias_softmax;
mod conv;
mod cpu;
mod depthwise;
mod gpu;
mod im2col;
mod matmul;
mod norm_ops;

pub use bf16::{bf16_products, set_bf16_products};
pub use bias_softmax::bias_softmax;
pub use conv::{
    conv2d_channels_last, depthwise_conv, depthwise_conv_residual, depthwise_residual_gelu_affine,
};
pub use norm_ops::{batch_norm_rows_eval, batch_norm_rows_train, linear_gelu_affine};

use std::sync::OnceLock;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Bytes, DType, Dispatch, Flex, backend_extension};
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
    /// `x · weight + bias` over the last axis of `x`, with `weight: [d_in, d_out]`.
    fn vit_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    /// `x · weight` over the last axis of `x`, with `weight: [d_in, d_out]`. (The extension
    /// macro takes no optional tensors, hence two operations.)
    fn vit_linear_no_bias(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `gelu(x · weight + bias)`: a linear layer and its activation as one operation.
    fn vit_linear_gelu(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    /// `resid + x · weight + bias`: a linear layer added onto the residual stream.
    fn vit_linear_residual(
        resid: FloatTensor<Self>,
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    /// Multi-head self-attention from a fused qkv projection: `[B, N, 3 * D]` → `[B, N, D]`.
    fn vit_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self>;
}

/// One bit per fused operation (and per shortcut that is not a kernel), for switching them off
/// one at a time to measure each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fused {
    Gelu = 1,
    Softmax = 2,
    LayerNorm = 4,
    Linear = 8,
    Attention = 16,
    /// Not a kernel: class-token pooling runs the last block for the class token alone.
    ClassTokenOnly = 32,
    /// The bias, GELU and residual add done inside the linear layers around them.
    Epilogue = 64,
    /// Not a kernel: threaded products split along the weights' output features (see
    /// `matmul::split_parts`) instead of gemm's own threading.
    SplitProducts = 128,
    /// Not a kernel: for few rows, linear layers read their `[out, in]` weight in place rather
    /// than have gemm pack it (see `matmul::weight_in_place`).
    WeightInPlace = 256,
    /// The channels-last depthwise convolution (`depthwise.rs`) instead of flex's grouped one.
    Depthwise = 512,
    /// BatchNorm over channels-last rows (`batch_norm.rs`) instead of Burn's.
    BatchNorm = 1024,
}

const ALL_FUSED: u16 = 2047;

/// The names `VITKIT_FUSED` takes, with their bits.
const FUSED_NAMES: [(&str, u16); 12] = [
    ("gelu", Fused::Gelu as u16),
    ("softmax", Fused::Softmax as u16),
    ("layernorm", Fused::LayerNorm as u16),
    ("linear", Fused::Linear as u16),
    ("attention", Fused::Attention as u16),
    ("cls", Fused::ClassTokenOnly as u16),
    ("epilogue", Fused::Epilogue as u16),
    ("split", Fused::SplitProducts as u16),
    ("inplace", Fused::WeightInPlace as u16),
    ("depthwise", Fused::Depthwise as u16),
    ("batchnorm", Fused::BatchNorm as u16),
    ("all", ALL_FUSED),
];

/// The mask a `VITKIT_FUSED` value names: a comma-separated list of
/// `gelu,softmax,layernorm,linear,attention,epilogue,cls,split,inplace,depthwise,batchnorm`, `all`, or `none`.
/// An unknown name is an error naming it (a typo must not switch every kernel off).
pub fn parse_fused(list: &str) -> Result<u16, String> {
    if list.trim() == "none" {
        return Ok(0);
    }
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            FUSED_NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, bit)| *bit)
                .ok_or_else(|| {
                    let valid: Vec<&str> = FUSED_NAMES.iter().map(|(n, _)| *n).collect();
                    format!(
                        "VITKIT_FUSED names an unknown kernel '{name}'; valid: {}, none",
                        valid.join(", ")
                    )
                })
        })
        .try_fold(0, |mask, bit| bit.map(|b| mask | b))
}

/// `VITKIT_FUSED`'s mask (all kernels when unset), or the error for an invalid value.
fn fused_mask() -> &'static Result<u16, String> {
    static MASK: OnceLock<Result<u16, String>> = OnceLock::new();
    MASK.get_or_init(|| match std::env::var("VITKIT_FUSED") {
        Err(_) => Ok(ALL_FUSED),
        Ok(list) => parse_fused(&list),
    })
}

/// An error when `VITKIT_FUSED` is set to something [`parse_fused`] rejects; programs call
/// it at start-up (the `vitkit` binary does).
pub fn check_fused_env() -> Result<(), String> {
    fused_mask().clone().map(|_| ())
}

/// Whether the fused operation `op` is in use: all are, unless the environment variable
/// `VITKIT_FUSED` lists some (see [`parse_fused`]). For measuring what each buys. A program
/// that did not call [`check_fused_env`] and has an invalid value runs every kernel.
pub fn enabled(op: Fused) -> bool {
    let mask = match fused_mask() {
        Ok(mask) => *mask,
        Err(_) => ALL_FUSED,
    };
    mask & op as u16 != 0
}

/// Whether a fused kernel applies: it is enabled and `x` is an f32 tensor on the flex CPU backend
/// (with or without autodiff).
pub fn applies<const D: usize>(x: &Tensor<D>, op: Fused) -> bool {
    enabled(op) && on_flex(x) && x.dtype() == burn::tensor::DType::F32
}

/// Whether `x` lives on the flex CPU backend (with or without autodiff).
pub fn on_flex<const D: usize>(x: &Tensor<D>) -> bool {
    crate::device::is_cpu(&x.device())
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
    } else if gpu_softmax_applies(&x) {
        gpu_softmax_scaled(x, 1.0)
    } else {
        burn::tensor::activation::softmax(x, D - 1)
    }
}

/// Whether vitkit's one-kernel CUDA softmax (forward and backward) runs for `x`: built with
/// the `cuda` feature, `x` on a CUDA device, softmax not switched off in `VITKIT_FUSED`.
pub fn gpu_softmax_applies<const D: usize>(x: &Tensor<D>) -> bool {
    cfg!(feature = "cuda") && enabled(Fused::Softmax) && !on_flex(x)
}

/// `softmax(scale * x)` over the last axis in one CUDA kernel (forward and backward), for a
/// positive `scale`. Only where [`gpu_softmax_applies`].
/// (On the CPU: Burn's composed softmax, for tests.)
pub fn gpu_softmax_scaled<const D: usize>(x: Tensor<D>, scale: f32) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as gpu::GpuOps>::gpu_softmax(x.into_dispatch(), scale))
}

/// `x + bias` along the last axis, with a backward pass whose bias gradient is a column sum
/// in two stages (what the GPU's linear layers use; see `gpu.rs`).
pub fn add_bias<const D: usize>(x: Tensor<D>, bias: Tensor<1>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as gpu::GpuOps>::gpu_add_bias(
        x.into_dispatch(),
        bias.into_dispatch(),
    ))
}

/// LayerNorm over the last axis from Burn's operations with vitkit's backward pass (what the
/// GPU uses; see `gpu.rs`).
pub fn layer_norm_composed<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    eps: f64,
) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as gpu::GpuOps>::gpu_layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        eps,
    ))
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
    } else if !on_flex(&x) {
        layer_norm_composed(x, gamma, beta, eps)
    } else {
        burn::tensor::module::layer_norm(x, gamma, Some(beta), eps)
    }
}

/// A linear layer's output, `x · W + b`, for Burn's `Linear` (either weight layout).
pub fn linear<const D: usize>(x: Tensor<D>, layer: &burn::nn::Linear) -> Tensor<D> {
    linear_with(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
}

/// `x · weight + bias` over the last axis of `x`, with `weight: [d_in, d_out]` (any strides).
pub fn linear_with<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<D> {
    if applies(&x, Fused::Linear) {
        let (x, w) = (x.into_dispatch(), weight.into_dispatch());
        Tensor::from_dispatch(match bias {
            Some(b) => <Dispatch as VitOps>::vit_linear(x, w, b.into_dispatch()),
            None => <Dispatch as VitOps>::vit_linear_no_bias(x, w),
        })
    } else if !on_flex(&x) {
        linear_rows(x, weight, bias)
    } else {
        burn::tensor::module::linear(x, weight, bias)
    }
}

/// `x · weight + bias` as one `[rows, d_in] · [d_in, d_out]` product over all leading axes.
///
/// Why: for `[B, N, D]` inputs Burn keeps a batched product (the weight broadcast over B)
/// whenever folding would not make the output squarer, which is the case for ViT inference at
/// large batch (B = 256, N = 197). Each batch's 197 rows then fill their row tiles poorly: on
/// an H100, Burn's kernels for those batched products ran at 47–56 TFLOP/s (ncu), against
/// 74–76 TFLOP/s for the same layers as one tall product (what Burn already chooses at B = 64).
pub fn linear_rows<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<D> {
    let mut dims = x.dims();
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    dims[D - 1] = weight.dims()[1];
    let product = x.reshape([rows, d_in]).matmul(weight);
    match bias {
        Some(bias) => add_bias(product, bias),
        None => product,
    }
    .reshape(dims)
}

/// Whether [`linear_gelu`] and [`linear_residual`] have fused kernels for this input and layer
/// (they need a bias).
pub fn epilogue_applies<const D: usize>(x: &Tensor<D>, layer: &burn::nn::Linear) -> bool {
    enabled(Fused::Epilogue) && applies(x, Fused::Linear) && layer.bias.is_some()
}

/// `gelu(x · W + b)` in one operation. Only where [`epilogue_applies`].
pub fn linear_gelu(x: Tensor<3>, layer: &burn::nn::Linear) -> Tensor<3> {
    assert!(epilogue_applies(&x, layer), "no fused linear + GELU here");
    let bias = layer.bias.as_ref().expect("checked").val();
    Tensor::from_dispatch(<Dispatch as VitOps>::vit_linear_gelu(
        x.into_dispatch(),
        layer.weight.val().into_dispatch(),
        bias.into_dispatch(),
    ))
}

/// `gelu(x · weight + bias)` with `weight: [d_in, d_out]`: one operation where the fused
/// kernels run, a linear layer and a GELU elsewhere.
pub fn linear_gelu_with(x: Tensor<3>, weight: Tensor<2>, bias: Tensor<1>) -> Tensor<3> {
    if enabled(Fused::Epilogue) && applies(&x, Fused::Linear) {
        Tensor::from_dispatch(<Dispatch as VitOps>::vit_linear_gelu(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
        ))
    } else {
        gelu(linear_with(x, weight, Some(bias)))
    }
}

/// `resid + x · W + b` in one operation. Only where [`epilogue_applies`].
pub fn linear_residual(resid: Tensor<3>, x: Tensor<3>, layer: &burn::nn::Linear) -> Tensor<3> {
    assert!(epilogue_applies(&x, layer), "no fused residual linear here");
    let bias = layer.bias.as_ref().expect("checked").val();
    Tensor::from_dispatch(<Dispatch as VitOps>::vit_linear_residual(
        resid.into_dispatch(),
        x.into_dispatch(),
        layer.weight.val().into_dispatch(),
        bias.into_dispatch(),
    ))
}

/// `resid + x · weight + bias` with `weight: [d_in, d_out]`: one operation where the fused
/// kernels run, a linear layer and an add elsewhere.
pub fn linear_residual_with(resid: Tensor<3>, x: Tensor<3>, weight: Tensor<2>, bias: Tensor<1>) -> Tensor<3> {
    if enabled(Fused::Epilogue) && applies(&x, Fused::Linear) {
        Tensor::from_dispatch(<Dispatch as VitOps>::vit_linear_residual(
            resid.into_dispatch(),
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
        ))
    } else {
        resid + linear_with(x, weight, Some(bias))
    }
}

/// Whether [`attention`] has a fused kernel for this qkv tensor.
pub fn attention_applies(qkv: &Tensor<3>) -> bool {
    applies(qkv, Fused::Attention)
}

/// Multi-head self-attention (softmax(q kᵀ / sqrt(head_dim)) v, heads merged) from the fused
/// qkv projection `[B, N, 3 * D]`, laid out as timm's. Only where [`attention_applies`].
pub fn attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    assert!(attention_applies(&qkv), "no fused attention for this tensor");
    Tensor::from_dispatch(<Dispatch as VitOps>::vit_attention(qkv.into_dispatch(), heads))
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

/// A 2-d weight as a strided matrix view over its storage (copied only if a stride is negative).
fn weight_view(w: &FlexTensor) -> matmul::View {
    let layout = w.layout();
    let dims = layout.shape();
    assert_eq!(dims.num_dims(), 2, "linear weight must be 2-d");
    let strides = layout.strides();
    matmul::View::strided(
        w.storage::<f32>(),
        layout.start_offset(),
        dims[0],
        dims[1],
        strides[0],
        strides[1],
    )
}

pub(super) fn flex_linear(x: &FlexTensor, w: &FlexTensor, bias: Option<&FlexTensor>) -> FlexTensor {
    let (w, rows, shape) = linear_geometry(x, w);
    pin_for_bf16(&w);
    let bias = bias.map(|b| contiguous(b.clone()));
    let out = matmul::linear(slice(x), rows, weight_view(&w), bias.as_ref().map(slice));
    f32_tensor(out, shape)
}

/// A raw output pointer shared by tasks that write disjoint parts of one buffer.
struct SendPtr<T>(*mut T);

// Not derived: a derive would ask `T: Clone`, which a pointer does not need.
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}

// SAFETY: only used for disjoint writes, each task within its own range.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

/// With bf16 products on, packs the weight once and keeps it for later forward passes
/// (`bf16::pin`). Only a weight that is the model's own storage: a copy made here (negative
/// strides) would be pinned anew on every call.
fn pin_for_bf16(w: &FlexTensor) {
    if bf16::bf16_products() && w.layout().has_positive_strides() {
        bf16::pin(w, weight_view(w));
    }
}

/// The weight with non-negative strides (copied only if needed), the number of rows of `x`,
/// and the output shape of `x · w`.
fn linear_geometry(x: &FlexTensor, w: &FlexTensor) -> (FlexTensor, usize, burn::backend::Shape) {
    let w = if w.layout().has_positive_strides() {
        w.clone()
    } else {
        w.to_contiguous()
    };
    let (d_in, d_out) = {
        let dims = w.layout().shape();
        (dims[0], dims[1])
    };
    let mut shape = shape_of(x);
    let last = shape.num_dims() - 1;
    assert_eq!(shape[last], d_in, "linear input width differs from the weight's");
    let rows = shape.num_elements() / d_in.max(1);
    shape[last] = d_out;
    (w, rows, shape)
}

/// `gelu(x · w + b)`; with `keep_pre`, also the pre-activation `x · w + b` (for the backward).
fn flex_linear_gelu(
    x: &FlexTensor,
    w: &FlexTensor,
    b: &FlexTensor,
    keep_pre: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    let (w, rows, shape) = linear_geometry(x, w);
    pin_for_bf16(&w);
    let bias = contiguous(b.clone());
    let bias = slice(&bias);
    let d_out = bias.len();
    if let Some(block_rows) = matmul::epilogue_block_rows(rows) {
        // Each block's bias and GELU right after its product, while it is in cache.
        let view = weight_view(&w);
        if keep_pre {
            let mut out = Vec::with_capacity(rows * d_out);
            let out_ptr = SendPtr(out.spare_capacity_mut().as_mut_ptr());
            let h = matmul::linear_blocks(slice(x), rows, view, block_rows, |first, block| {
                // SAFETY: blocks are disjoint row ranges of `out`, which has room for all rows.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(first * d_out), block.len()) };
                cpu::bias_gelu_rows(block, bias, dst);
            });
            // SAFETY: every block wrote its rows of `out`.
            unsafe { out.set_len(rows * d_out) };
            return (f32_tensor(out, shape.clone()), Some(f32_tensor(h, shape)));
        }
        let out = matmul::linear_blocks(slice(x), rows, view, block_rows, |_, block| {
            cpu::bias_gelu_rows_in_place(block, bias)
        });
        return (f32_tensor(out, shape), None);
    }
    let mut h = matmul::linear(slice(x), rows, weight_view(&w), None);
    if keep_pre {
        let out = cpu::bias_gelu(&mut h, bias);
        (f32_tensor(out, shape.clone()), Some(f32_tensor(h, shape)))
    } else {
        cpu::bias_gelu_in_place(&mut h, bias);
        (f32_tensor(h, shape), None)
    }
}

/// `resid + x · w + b`.
fn flex_linear_residual(resid: &FlexTensor, x: &FlexTensor, w: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let (w, rows, shape) = linear_geometry(x, w);
    pin_for_bf16(&w);
    assert_eq!(
        shape_of(resid),
        shape,
        "residual shape differs from the linear output's"
    );
    let resid = contiguous(resid.clone());
    let bias = contiguous(b.clone());
    let start = cpu::add_row_vector(slice(&resid), slice(&bias));
    f32_tensor(matmul::linear_onto(start, slice(x), rows, weight_view(&w)), shape)
}

/// Gradients of [`flex_linear`] for `x`, `w` and the bias, each only where asked for.
pub(super) fn flex_linear_backward(
    x: &FlexTensor,
    w: &FlexTensor,
    grad: &FlexTensor,
    need: [bool; 3],
) -> [Option<FlexTensor>; 3] {
    let (w, rows, _) = linear_geometry(x, w);
    let view = weight_view(&w);
    let (d_in, d_out) = (view.rows, view.cols);
    let dy = slice(grad);
    [
        need[0].then(|| f32_tensor(matmul::linear_grad_input(dy, rows, view), shape_of(x))),
        need[1].then(|| {
            f32_tensor(
                matmul::linear_grad_weight(slice(x), dy, rows, d_in, d_out),
                shape_of(&w),
            )
        }),
        need[2].then(|| f32_tensor(cpu::column_sums(dy, rows, d_out), [d_out].into())),
    ]
}

fn attention_shape(qkv: &FlexTensor, heads: usize) -> attention::Shape {
    let shape = shape_of(qkv);
    assert_eq!(shape.num_dims(), 3, "qkv must be [batch, tokens, 3 * dim]");
    let dim = shape[2] / 3;
    assert!(
        heads > 0 && shape[2] == 3 * dim && dim.is_multiple_of(heads),
        "qkv width {} does not split into q, k, v of {heads} heads",
        shape[2]
    );
    attention::Shape {
        batch: shape[0],
        tokens: shape[1],
        heads,
        head_dim: dim / heads,
    }
}

/// Fused attention; also returns the probabilities `[B, heads, N, N]` when `keep_probs`.
fn flex_attention(qkv: &FlexTensor, heads: usize, keep_probs: bool) -> (FlexTensor, Option<FlexTensor>) {
    let s = attention_shape(qkv, heads);
    let (out, probs) = attention::forward(slice(qkv), s, keep_probs);
    let out = f32_tensor(out, [s.batch, s.tokens, s.heads * s.head_dim].into());
    let probs = probs.map(|p| f32_tensor(p, [s.batch, s.heads, s.tokens, s.tokens].into()));
    (out, probs)
}

impl VitOps for Flex {
    fn vit_linear(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        flex_linear(&contiguous(x), &weight, Some(&bias))
    }

    fn vit_linear_no_bias(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
        flex_linear(&contiguous(x), &weight, None)
    }

    fn vit_attention(qkv: FlexTensor, heads: usize) -> FlexTensor {
        flex_attention(&contiguous(qkv), heads, false).0
    }

    fn vit_linear_gelu(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        flex_linear_gelu(&contiguous(x), &weight, &bias, false).0
    }

    fn vit_linear_residual(
        resid: FlexTensor,
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
    ) -> FlexTensor {
        flex_linear_residual(&resid, &contiguous(x), &weight, &bias)
    }

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

/// Registers each computed gradient with its parent's node, where both exist.
fn register_grads(
    grads: &mut Gradients,
    pairs: impl IntoIterator<Item = (Option<NodeId>, Option<FlexTensor>)>,
) {
    for (node, grad) in pairs {
        if let (Some(node), Some(grad)) = (node, grad) {
            grads.register::<Flex>(node, grad);
        }
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

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

mod adamw;
mod attention;
mod batch_norm;
mod bf16;
mod bias_attention;
mod bias_softmax;
mod blas;
mod conv;
mod cpu;
mod depthwise;
mod gpu;
mod im2col;
#[cfg(test)]
mod layouts;
mod matmul;
mod max_pool;
mod norm_ops;
mod packed;
mod split;
mod switches;
mod views;
mod vit_autodiff;

pub use adamw::{AdamWStep, adamw_applies, adamw_update, scaled, sum_of_squares};
pub use bf16::{bf16_products, set_bf16_products};
pub use bias_attention::{bias_attention, bias_attention_applies};
pub use bias_softmax::bias_softmax;
pub use blas::product_backend;
pub use conv::{
    conv2d_channels_last, depthwise_conv, depthwise_conv_residual, depthwise_residual_gelu_affine,
};
pub use max_pool::max_pool_3x3_s2;
pub use norm_ops::{batch_norm_rows_eval, batch_norm_rows_train, linear_gelu_affine};
pub use switches::{Fused, applies, check_fused_env, enabled, on_flex, parse_fused};

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Bytes, DType, Dispatch, Flex, backend_extension};
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

/// A linear layer's weight gradient `xᵀ · dy` (`x: [rows, d_in]`, `dy: [rows, d_out]`, both
/// row-major) → `[d_in, d_out]`, as training computes it: for `examples/products.rs`.
#[doc(hidden)]
pub fn weight_gradient(x: &[f32], dy: &[f32], rows: usize, d_in: usize, d_out: usize) -> Vec<f32> {
    matmul::linear_grad_weight(x, dy, rows, d_in, d_out)
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
    epilogue_applies_to(x) && layer.bias.is_some()
}

/// Whether the fused linear epilogues (`*_with`, which take a bias) run for this input.
pub fn epilogue_applies_to<const D: usize>(x: &Tensor<D>) -> bool {
    enabled(Fused::Epilogue) && applies(x, Fused::Linear)
}

/// `gelu(x · W + b)` in one operation. Only where [`epilogue_applies`].
pub fn linear_gelu(x: Tensor<3>, layer: &burn::nn::Linear) -> Tensor<3> {
    assert!(epilogue_applies(&x, layer), "no fused linear + GELU here");
    let bias = layer.bias.as_ref().expect("checked").val();
    linear_gelu_with(x, layer.weight.val(), bias)
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
    linear_residual_with(resid, x, layer.weight.val(), bias)
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
fn weight_view(w: &FlexTensor) -> views::View {
    let layout = w.layout();
    let dims = layout.shape();
    assert_eq!(dims.num_dims(), 2, "linear weight must be 2-d");
    let strides = layout.strides();
    views::View::strided(
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

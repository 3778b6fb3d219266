//! The GPU's versions of what Burn composes from many passes, each with its own backward:
//! softmax over the last axis (one CUDA kernel forward, one backward), LayerNorm and the bias
//! add of linear layers (Burn's operations, arranged so that their parameter gradients are
//! column sums in two stages).
//!
//! Why, from Nsight Compute on an H100 (vit_base_patch16_224; docs/performance.md):
//! - softmax: Burn composes it from max, subtract, exp, sum and divide, and its backward from
//!   as many again; on attention scores (`[B, heads, N, N]`, the largest activations of a ViT)
//!   each is a pass over memory (28 ms of a 219 ms inference step at batch 256). Here one plane
//!   (32 lanes) owns a row: it reads the row for its maximum, again for the sum of
//!   exponentials (both reads hit the cache, a row is under 1 KiB at ViT lengths), and writes
//!   the result once; the backward reads the output and its gradient and writes
//!   `scale * y * (g - sum(g * y))` once. Sums are kept in f32 whatever the tensor type.
//! - parameter gradients of biases and LayerNorm: autodiff sums the output gradient over all
//!   rows (`[B * N, D]` → `[D]`), and Burn's reduction gives each output column one unit, so
//!   768 columns kept 24 thread blocks busy (0.12 ms per sum, 11.7 ms of a 174 ms training
//!   step at batch 64). Here the rows are cut into chunks, summed per chunk (many more
//!   outputs, all of the GPU busy), then the chunks summed.
//!
//! The trait is implemented for flex too, with Burn's composed operations for the kernels, so
//! that the backward passes here are tested on the CPU (`tests/kernels.rs`); the CPU itself
//! runs the fused kernels of this module's parent.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::{ActivationOps, FloatTensorOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, Shape, TensorMetadata, backend_extension};

#[backend_extension(Flex, Cube: cfg(feature = "cuda"), Fusion: cfg(feature = "cuda"), Autodiff)]
pub trait GpuOps: Backend {
    /// `softmax(scale * x)` over the last axis, for a positive `scale` (attention folds its
    /// `1 / sqrt(head_dim)` in).
    #[fusion(dtype = x, shape = x)]
    fn gpu_softmax(x: FloatTensor<Self>, scale: f32) -> FloatTensor<Self>;
    /// The gradient of `x` in `y = softmax(scale * x)` from `y` and the gradient of `y`.
    #[fusion(dtype = y, shape = y)]
    fn gpu_softmax_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>, scale: f32) -> FloatTensor<Self>;
    /// `x + bias` with `bias: [D]` added along the last axis of `x`.
    #[fusion(default)]
    fn gpu_add_bias(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        let bias = Self::float_reshape(bias, along_last_axis(&x.shape()));
        Self::float_add(x, bias)
    }
    /// LayerNorm over the last axis, `(x - mean) / sqrt(var + eps) * gamma + beta`.
    #[fusion(default)]
    fn gpu_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        Self::layer_norm(x, gamma, Some(beta), eps)
    }
}

/// The shape `[1, …, 1, D]` that broadcasts a `[D]` parameter along the last axis of `shape`.
fn along_last_axis(shape: &Shape) -> Shape {
    let rank = shape.num_dims();
    Shape::from(
        (0..rank)
            .map(|i| if i + 1 == rank { shape[i] } else { 1 })
            .collect::<Vec<_>>(),
    )
}

/// `g` summed over every axis but the last, as `[D]`: rows summed in chunks first, then the
/// chunks (see the module documentation for why).
fn column_sum<B: Backend>(g: FloatTensor<B>) -> FloatTensor<B> {
    let shape = g.shape();
    let d = shape[shape.num_dims() - 1];
    let rows = shape.num_elements() / d.max(1);
    // The largest divisor of `rows` up to 256 is the chunk; with none above 16 the sum is one
    // stage (a chunk that small would not pay for the second pass).
    let chunk = (1..=256.min(rows))
        .rev()
        .find(|c| rows.is_multiple_of(*c))
        .unwrap_or(1);
    let sum = if chunk >= 16 && rows > chunk {
        let parts = B::float_sum_dim(B::float_reshape(g, Shape::from(vec![rows / chunk, chunk, d])), 1);
        B::float_sum_dim(parts, 0)
    } else {
        B::float_sum_dim(B::float_reshape(g, Shape::from(vec![rows, d])), 0)
    };
    B::float_reshape(sum, Shape::from(vec![d]))
}

/// Flex: Burn's composed operations (for testing this module's backward passes on the CPU).
impl GpuOps for Flex {
    fn gpu_softmax(x: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        let last = x.shape().num_dims() - 1;
        Self::softmax(Self::float_mul_scalar(x, scale.into()), last)
    }

    fn gpu_softmax_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        softmax_backward_composed::<Self>(y, grad, scale)
    }
}

/// `scale * y * (g - sum(g * y))` from Burn's operations.
fn softmax_backward_composed<B: Backend>(
    y: FloatTensor<B>,
    grad: FloatTensor<B>,
    scale: f32,
) -> FloatTensor<B> {
    let last = y.shape().num_dims() - 1;
    let dot = B::float_sum_dim(B::float_mul(grad.clone(), y.clone()), last);
    let dy = B::float_mul(y, B::float_sub(grad, dot));
    B::float_mul_scalar(dy, scale.into())
}

#[cfg(feature = "cuda")]
mod cube {
    use super::GpuOps;
    use burn_cubecl::CubeBackend;
    use burn_cubecl::cubecl;
    use burn_cubecl::cubecl::prelude::*;
    use burn_cubecl::kernel::into_contiguous;
    use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
    use burn_cubecl::tensor::CubeTensor;

    /// Rows per cube: one plane of 32 lanes each.
    const ROWS_PER_CUBE: u32 = 8;
    const LANES: u32 = 32;

    /// The row this unit's plane owns (planes are the cube's rows: 32 lanes along x).
    #[cube]
    fn plane_row() -> usize {
        CUBE_POS * CUBE_DIM_Y as usize + UNIT_POS_Y as usize
    }

    #[cube(launch, address_type = "dynamic")]
    fn softmax_kernel<F: Float>(
        input: &Tensor<F>,
        output: &mut Tensor<F>,
        rows: usize,
        len: usize,
        scale: f32,
        #[define(F)] _dtype: ElemType,
    ) {
        let row = plane_row();
        if row >= rows {
            terminate!();
        }
        let (start, lane, step) = (row * len, UNIT_POS_X as usize, CUBE_DIM_X as usize);

        // max(scale * x) is scale * max(x) for a positive scale, the only kind attention uses.
        let mut max = f32::new(f32::NEG_INFINITY);
        for i in range_stepped(lane, len, step) {
            max = f32::max(max, f32::cast_from(input[start + i]));
        }
        let max = plane_max(max) * scale;
        let mut sum = 0.0f32;
        for i in range_stepped(lane, len, step) {
            sum += f32::exp(f32::cast_from(input[start + i]) * scale - max);
        }
        let inverse = 1.0f32 / plane_sum(sum);
        for i in range_stepped(lane, len, step) {
            output[start + i] =
                F::cast_from(f32::exp(f32::cast_from(input[start + i]) * scale - max) * inverse);
        }
    }

    #[cube(launch, address_type = "dynamic")]
    fn softmax_backward_kernel<F: Float>(
        y: &Tensor<F>,
        grad: &Tensor<F>,
        output: &mut Tensor<F>,
        rows: usize,
        len: usize,
        scale: f32,
        #[define(F)] _dtype: ElemType,
    ) {
        let row = plane_row();
        if row >= rows {
            terminate!();
        }
        let (start, lane, step) = (row * len, UNIT_POS_X as usize, CUBE_DIM_X as usize);

        let mut dot = 0.0f32;
        for i in range_stepped(lane, len, step) {
            dot += f32::cast_from(y[start + i]) * f32::cast_from(grad[start + i]);
        }
        let dot = plane_sum(dot);
        for i in range_stepped(lane, len, step) {
            let yi = f32::cast_from(y[start + i]);
            output[start + i] = F::cast_from(yi * (f32::cast_from(grad[start + i]) - dot) * scale);
        }
    }

    /// What both kernels need: their inputs contiguous, an output like the first, the rows
    /// and their length, the launch geometry (32 lanes × [`ROWS_PER_CUBE`] rows per cube), the
    /// address width and the element type.
    struct RowLaunch {
        inputs: Vec<CubeTensor>,
        output: CubeTensor,
        rows: usize,
        len: usize,
        count: CubeCount,
        dim: CubeDim,
        address: AddressType,
        dtype: ElemType,
    }

    fn row_launch(inputs: Vec<CubeTensor>) -> RowLaunch {
        let inputs: Vec<_> = inputs.into_iter().map(into_contiguous).collect();
        let x = &inputs[0];
        let shape = x.meta.shape().clone();
        let output =
            empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), shape.clone(), x.dtype);
        let len = shape[shape.num_dims() - 1];
        let rows = shape.num_elements() / len.max(1);
        let address = inputs
            .iter()
            .chain([&output])
            .map(|t| t.required_address_type())
            .max()
            .unwrap_or_default();
        RowLaunch {
            dtype: burn::backend::cubecl::dtype_to_storage_type(x.dtype),
            count: CubeCount::new_1d(rows.div_ceil(ROWS_PER_CUBE as usize) as u32),
            dim: CubeDim::new_2d(LANES, ROWS_PER_CUBE),
            inputs,
            output,
            rows,
            len,
            address,
        }
    }

    impl GpuOps for CubeBackend {
        fn gpu_softmax(x: CubeTensor, scale: f32) -> CubeTensor {
            assert!(scale > 0.0, "softmax scale must be positive");
            let RowLaunch {
                mut inputs,
                output,
                rows,
                len,
                count,
                dim,
                address,
                dtype,
            } = row_launch(vec![x]);
            if rows == 0 || len == 0 {
                return output;
            }
            softmax_kernel::launch(
                &output.client,
                count,
                dim,
                address,
                inputs.remove(0).into_tensor_arg(),
                output.clone().into_tensor_arg(),
                rows,
                len,
                scale,
                dtype,
            );
            output
        }

        fn gpu_softmax_backward(y: CubeTensor, grad: CubeTensor, scale: f32) -> CubeTensor {
            let RowLaunch {
                mut inputs,
                output,
                rows,
                len,
                count,
                dim,
                address,
                dtype,
            } = row_launch(vec![y, grad]);
            if rows == 0 || len == 0 {
                return output;
            }
            let (y, grad) = (inputs.remove(0), inputs.remove(0));
            softmax_backward_kernel::launch(
                &output.client,
                count,
                dim,
                address,
                y.into_tensor_arg(),
                grad.into_tensor_arg(),
                output.clone().into_tensor_arg(),
                rows,
                len,
                scale,
                dtype,
            );
            output
        }
    }
}

#[derive(Debug)]
struct GpuSoftmaxBackward;

impl<B: Backend + GpuOps> Backward<B, 1> for GpuSoftmaxBackward {
    /// The softmax output and the scale.
    type State = (FloatTensor<B>, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let (y, scale) = ops.state;
            grads.register::<B>(node.id, B::gpu_softmax_backward(y, grad, scale));
        }
    }
}

impl<B: Backend + GpuOps, C: CheckpointStrategy> GpuOps for Autodiff<B, C> {
    fn gpu_softmax(x: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        match GpuSoftmaxBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::gpu_softmax(x.primitive().clone(), scale);
                prep.finish((out.clone(), scale), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::gpu_softmax(x.into_primitive(), scale)),
        }
    }

    /// Composed from differentiable operations, so that a second derivative exists (the
    /// backward pass above calls the inner backend's kernel instead).
    fn gpu_softmax_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        softmax_backward_composed::<Self>(y, grad, scale)
    }

    fn gpu_add_bias(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        match BiasBackward
            .prepare::<C>([x.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::gpu_add_bias(x.primitive().clone(), bias.primitive().clone());
                prep.finish((), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::gpu_add_bias(x.into_primitive(), bias.into_primitive()))
            }
        }
    }

    fn gpu_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        match ComposedLayerNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                // Not the default body (Burn's layer_norm): the backward needs the rows' mean
                // and rstd, which that does not hand out.
                let x = x.primitive().clone();
                let gamma = gamma.primitive().clone();
                let (normalized, mean, rstd) = normalize::<B>(x.clone(), eps);
                let out = B::float_add(
                    B::float_mul(
                        normalized,
                        B::float_reshape(gamma.clone(), along_last_axis(&x.shape())),
                    ),
                    B::float_reshape(beta.primitive().clone(), along_last_axis(&x.shape())),
                );
                prep.finish((x, gamma, mean, rstd), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::gpu_layer_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                eps,
            )),
        }
    }
}

/// `((x - mean) * rstd, mean, rstd)` over the last axis, `rstd = 1 / sqrt(var + eps)`.
fn normalize<B: Backend>(x: FloatTensor<B>, eps: f64) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let last = x.shape().num_dims() - 1;
    let mean = B::float_mean_dim(x.clone(), last);
    let centered = B::float_sub(x, mean.clone());
    let var = B::float_mean_dim(B::float_mul(centered.clone(), centered.clone()), last);
    let rstd = B::float_recip(B::float_sqrt(B::float_add_scalar(var, eps.into())));
    (B::float_mul(centered, rstd.clone()), mean, rstd)
}

#[derive(Debug)]
struct BiasBackward;

impl<B: Backend> Backward<B, 2> for BiasBackward {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [x, bias] = ops.parents;
        if let Some(node) = bias {
            grads.register::<B>(node.id, column_sum::<B>(grad.clone()));
        }
        if let Some(node) = x {
            grads.register::<B>(node.id, grad);
        }
    }
}

#[derive(Debug)]
struct ComposedLayerNormBackward;

impl<B: Backend> Backward<B, 3> for ComposedLayerNormBackward {
    /// The input, gamma, and the rows' mean and `1 / sqrt(var + eps)`.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let [x_node, gamma_node, beta_node] = ops.parents;
        let (x, gamma, mean, rstd) = ops.state;
        let last = x.shape().num_dims() - 1;
        let gamma = B::float_reshape(gamma, along_last_axis(&x.shape()));
        // Recomputed rather than kept: one fused elementwise pass, and no activation-sized state.
        let normalized = B::float_mul(B::float_sub(x, mean), rstd.clone());
        if let Some(node) = beta_node {
            grads.register::<B>(node.id, column_sum::<B>(dy.clone()));
        }
        if let Some(node) = gamma_node {
            grads.register::<B>(
                node.id,
                column_sum::<B>(B::float_mul(dy.clone(), normalized.clone())),
            );
        }
        if let Some(node) = x_node {
            // dx = rstd * (g - mean(g) - x̂ * mean(g * x̂)), g = dy * gamma, means over the row.
            let g = B::float_mul(dy, gamma);
            let g_mean = B::float_mean_dim(g.clone(), last);
            let gx_mean = B::float_mean_dim(B::float_mul(g.clone(), normalized.clone()), last);
            let inner = B::float_sub(B::float_sub(g, g_mean), B::float_mul(normalized, gx_mean));
            grads.register::<B>(node.id, B::float_mul(inner, rstd));
        }
    }
}

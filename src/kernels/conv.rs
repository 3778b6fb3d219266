//! Convolutions for the convolutional families (CMT), added to Burn as a backend extension with
//! their own backward passes: the depthwise convolution on channels-last maps with its fused
//! epilogues (`depthwise.rs`) and the dense one as gathered windows times a matrix
//! (`im2col.rs`). On any other device the wrappers run Burn's own operations.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use burn::tensor::ops::ConvOptions;

use super::depthwise::{self, Epilogue, Geometry};
use super::im2col;
use super::views::View;
use super::{contiguous, f32_tensor, register_grads, shape_of, slice};

#[backend_extension(Flex, Autodiff)]
pub trait CnnOps: Backend {
    /// Depthwise convolution: `x: [B, H, W, C]` (channels-last), `weight: [C, 1, k, k]`,
    /// `bias: [C]`, square kernel, stride and zero padding → `[B, Ho, Wo, C]`; with `residual`,
    /// plus `x` (stride 1, same size).
    fn cnn_depthwise(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
        residual: bool,
    ) -> FloatTensor<Self>;
    /// Inference only: `gelu(conv(x) + x) * scale + shift` per channel for a stride-1,
    /// same-size depthwise convolution (CMT's IRFFN middle, its BatchNorm folded into
    /// `scale`/`shift`), in one pass.
    fn cnn_depthwise_gelu_affine(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    /// Dense convolution of a channels-last map `x: [B, H, W, C]` with `wmat: [k·k·C, O]`
    /// (window position major, channel minor) and `bias: [O]` → `[B, Ho, Wo, O]`.
    fn cnn_conv2d_cl(
        x: FloatTensor<Self>,
        wmat: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self>;
}

/// Dense 2-d convolution of a channels-last map `[B, H, W, C]` with a PyTorch-layout weight
/// `[O, C, k, k]` and bias `[O]` → `[B, Ho, Wo, O]`: windows gathered into rows and one matrix
/// product where the fused kernels run, Burn's NCHW `conv2d` elsewhere.
pub fn conv2d_channels_last(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    let [o, c, k, _] = weight.dims();
    if super::applies(&x, super::Fused::Depthwise) {
        let wmat = weight.permute([2, 3, 1, 0]).reshape([k * k * c, o]);
        Tensor::from_dispatch(<Dispatch as CnnOps>::cnn_conv2d_cl(
            x.into_dispatch(),
            wmat.into_dispatch(),
            bias.into_dispatch(),
            k,
            stride,
            padding,
        ))
    } else {
        let options = ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1);
        burn::tensor::module::conv2d(x.permute([0, 3, 1, 2]), weight, Some(bias), options)
            .permute([0, 2, 3, 1])
    }
}

/// Depthwise convolution of a channels-last map `[B, H, W, C]` with a PyTorch-layout weight
/// `[C, 1, k, k]` and bias `[C]` → `[B, Ho, Wo, C]`.
pub fn depthwise_conv(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    depthwise(x, weight, bias, stride, padding, false)
}

/// `x + conv(x)` for a stride-1 depthwise convolution that keeps the size (padding `k / 2`).
pub fn depthwise_conv_residual(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>) -> Tensor<4> {
    let k = weight.dims()[2];
    depthwise(x, weight, bias, 1, k / 2, true)
}

fn depthwise(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: usize,
    residual: bool,
) -> Tensor<4> {
    let [_, _, _, c] = x.dims();
    assert_eq!(
        weight.dims()[0],
        c,
        "depthwise weight must have one filter per channel"
    );
    if super::applies(&x, super::Fused::Depthwise) {
        Tensor::from_dispatch(<Dispatch as CnnOps>::cnn_depthwise(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            stride,
            padding,
            residual,
        ))
    } else {
        let options = ConvOptions::new([stride; 2], [padding; 2], [1, 1], c);
        let y = burn::tensor::module::conv2d(x.clone().permute([0, 3, 1, 2]), weight, Some(bias), options)
            .permute([0, 2, 3, 1]);
        if residual { y + x } else { y }
    }
}

/// Inference on the CPU: `gelu(x + conv(x)) * scale + shift` (see
/// [`CnnOps::cnn_depthwise_gelu_affine`]); `None` where that kernel does not run (training,
/// another device), for the caller to compose.
pub fn depthwise_residual_gelu_affine(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    scale: Tensor<1>,
    shift: Tensor<1>,
) -> Option<Tensor<4>> {
    if !super::applies(&x, super::Fused::Depthwise) || x.device().is_autodiff() {
        return None;
    }
    Some(Tensor::from_dispatch(
        <Dispatch as CnnOps>::cnn_depthwise_gelu_affine(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            scale.into_dispatch(),
            shift.into_dispatch(),
        ),
    ))
}

/// The geometry of a `kernel`×`kernel` convolution of `x: [B, H, W, C]`.
fn geometry(x: &FlexTensor, kernel: usize, stride: usize, padding: usize, residual: bool) -> Geometry {
    let xs = shape_of(x);
    assert_eq!(xs.num_dims(), 4, "convolution input must be [B, H, W, C]");
    assert!(stride > 0, "convolution stride must be positive");
    Geometry {
        batch: xs[0],
        height: xs[1],
        width: xs[2],
        channels: xs[3],
        kernel,
        stride,
        padding,
        residual,
    }
}

/// The kernel size of a square weight `[O, C, k, k]`.
fn kernel_of(w: &FlexTensor) -> usize {
    let ws = shape_of(w);
    assert_eq!(ws[2], ws[3], "convolution kernel must be square");
    ws[2]
}

fn flex_depthwise(
    x: &FlexTensor,
    w: &FlexTensor,
    b: &FlexTensor,
    g: Geometry,
    epilogue: Epilogue,
) -> FlexTensor {
    let (w, b) = (contiguous(w.clone()), contiguous(b.clone()));
    let out = depthwise::forward(slice(x), slice(&w), Some(slice(&b)), g, epilogue);
    f32_tensor(out, [g.batch, g.out_height(), g.out_width(), g.channels].into())
}

/// The convolution's output, `[B, Ho, Wo, O]`, for a contiguous `x`.
fn flex_conv2d_cl(x: &FlexTensor, wmat: &FlexTensor, bias: &FlexTensor, g: Geometry) -> FlexTensor {
    let (wmat, bias) = (contiguous(wmat.clone()), contiguous(bias.clone()));
    let o = shape_of(&wmat)[1];
    let out = im2col::forward(slice(x), weight_matrix(&wmat, g), slice(&bias), g);
    f32_tensor(out, [g.batch, g.out_height(), g.out_width(), o].into())
}

/// A contiguous `[k·k·C, O]` weight matrix as a view.
fn weight_matrix(wmat: &FlexTensor, g: Geometry) -> View {
    let o = shape_of(wmat)[1];
    View::row_major(slice(wmat), g.kernel * g.kernel * g.channels, o)
}

impl CnnOps for Flex {
    fn cnn_depthwise(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        stride: usize,
        padding: usize,
        residual: bool,
    ) -> FlexTensor {
        let g = geometry(&x, kernel_of(&weight), stride, padding, residual);
        flex_depthwise(&contiguous(x), &weight, &bias, g, Epilogue::NONE)
    }

    fn cnn_depthwise_gelu_affine(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        scale: FlexTensor,
        shift: FlexTensor,
    ) -> FlexTensor {
        let k = kernel_of(&weight);
        let g = geometry(&x, k, 1, k / 2, true);
        let (scale, shift) = (contiguous(scale), contiguous(shift));
        let epilogue = Epilogue {
            gelu: true,
            affine: Some((slice(&scale), slice(&shift))),
        };
        flex_depthwise(&contiguous(x), &weight, &bias, g, epilogue)
    }

    fn cnn_conv2d_cl(
        x: FlexTensor,
        wmat: FlexTensor,
        bias: FlexTensor,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> FlexTensor {
        let x = contiguous(x);
        let g = geometry(&x, kernel, stride, padding, false);
        flex_conv2d_cl(&x, &wmat, &bias, g)
    }
}

#[derive(Debug)]
struct ConvDenseBackward;

impl Backward<Flex, 3> for ConvDenseBackward {
    /// The input (contiguous), the weight matrix (contiguous) and the geometry.
    type State = (FlexTensor, FlexTensor, Geometry);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let (x, wmat, g) = ops.state;
        let o = shape_of(&wmat)[1];
        let [node_x, node_w, node_b] = ops.parents.map(|p| p.map(|n| n.id));
        let need = [node_x.is_some(), node_w.is_some(), node_b.is_some()];
        let d = im2col::backward(slice(&x), weight_matrix(&wmat, g), slice(&grad), g, need);
        let width = g.kernel * g.kernel * g.channels;
        register_grads(
            grads,
            [
                (node_x, d.x.map(|dx| f32_tensor(dx, shape_of(&x)))),
                (node_w, d.wmat.map(|dw| f32_tensor(dw, [width, o].into()))),
                (node_b, d.bias.map(|db| f32_tensor(db, [o].into()))),
            ],
        );
    }
}

/// The output of an inference-only kernel called with an autodiff tensor, which carries no
/// gradient. The wrappers call these kernels only without autodiff; an input that needs a
/// gradient here is a bug, not a user error.
pub(super) fn inference_only<C: CheckpointStrategy>(
    x: &FloatTensor<Autodiff<Flex, C>>,
    out: FlexTensor,
    what: &str,
) -> FloatTensor<Autodiff<Flex, C>> {
    match NoGradient.prepare::<C>([x.node()]).compute_bound().stateful() {
        OpsKind::Tracked(_) => unreachable!("{what} is for inference only"),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// The backward of an output no gradient flows through.
#[derive(Debug)]
pub(super) struct NoGradient;

impl Backward<Flex, 1> for NoGradient {
    type State = ();

    /// Nothing to pass on; the output's gradient may never have been registered (the
    /// normalisation that reads the statistics gives them none), so it is not read either.
    fn backward(self, _: Ops<Self::State, 1>, _: &mut Gradients, _: &mut Checkpointer) {}
}

#[derive(Debug)]
struct DepthwiseBackward;

impl Backward<Flex, 3> for DepthwiseBackward {
    /// Input (contiguous), weight and geometry.
    type State = (FlexTensor, FlexTensor, Geometry);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let (x, w, g) = ops.state;
        let w = contiguous(w);
        let [node_x, node_w, node_b] = ops.parents.map(|p| p.map(|n| n.id));
        let want = [node_x.is_some(), node_w.is_some(), node_b.is_some()];
        let (dx, dw, db) = depthwise::backward(slice(&x), slice(&w), slice(&grad), g, want);
        register_grads(
            grads,
            [
                (node_x, dx.map(|v| f32_tensor(v, shape_of(&x)))),
                (node_w, dw.map(|v| f32_tensor(v, shape_of(&w)))),
                (node_b, db.map(|v| f32_tensor(v, [g.channels].into()))),
            ],
        );
    }
}

impl<C: CheckpointStrategy> CnnOps for Autodiff<Flex, C> {
    fn cnn_depthwise(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
        residual: bool,
    ) -> FloatTensor<Self> {
        let input = contiguous(x.primitive().clone());
        let (w, b) = (weight.primitive().clone(), bias.primitive().clone());
        let g = geometry(&input, kernel_of(&w), stride, padding, residual);
        let out = flex_depthwise(&input, &w, &b, g, Epilogue::NONE);
        match DepthwiseBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((input, w, g), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn cnn_depthwise_gelu_affine(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        // Never called on an autodiff device (see `depthwise_residual_gelu_affine`); should it
        // be, on values that need no gradient it is still right.
        let out = Flex::cnn_depthwise_gelu_affine(
            x.primitive().clone(),
            weight.primitive().clone(),
            bias.primitive().clone(),
            scale.primitive().clone(),
            shift.primitive().clone(),
        );
        inference_only::<C>(&x, out, "the fused depthwise epilogue")
    }

    fn cnn_conv2d_cl(
        x: FloatTensor<Self>,
        wmat: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        let input = contiguous(x.primitive().clone());
        let (w, b) = (contiguous(wmat.primitive().clone()), bias.primitive().clone());
        let g = geometry(&input, kernel, stride, padding, false);
        let out = flex_conv2d_cl(&input, &w, &b, g);
        match ConvDenseBackward
            .prepare::<C>([x.node(), wmat.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((input, w, g), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

//! Convolution layers under PyTorch's names, for the convolutional parts of CMT (and any
//! family with a convolutional stem): a convolution's `weight`/`bias`, one layer of an
//! `nn.Sequential` (whose children PyTorch names by index: `sr.0.weight`, `sr.1.running_var`),
//! and the spatial reduction of keys and values (PVT, CMT).

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Device, Tensor};

use super::BatchNorm;

/// A convolution's parameters under PyTorch's names (`weight` `[out, in / groups, k, k]`,
/// `bias` `[out]`).
#[derive(Module, Debug)]
pub struct ConvWeights {
    pub weight: Param<Tensor<4>>,
    pub bias: Param<Tensor<1>>,
}

impl ConvWeights {
    /// Kaiming-normal weights for `fan_out = out * k * k` (PyTorch's
    /// `kaiming_normal_(mode='fan_out')`, ReLU gain) and a zero bias: CMT's initialisation.
    pub fn kaiming_fan_out(out: usize, in_per_group: usize, k: usize, device: &Device) -> Self {
        let std = (2.0 / (out * k * k) as f64).sqrt();
        Self {
            weight: Initializer::Normal { mean: 0.0, std }.init([out, in_per_group, k, k], device),
            bias: Initializer::Zeros.init([out], device),
        }
    }

    /// The output channels.
    pub fn out_channels(&self) -> usize {
        self.bias.lazy_shape()[0]
    }

    /// A (grouped) convolution of an NCHW map.
    pub fn conv2d(&self, x: Tensor<4>, stride: usize, padding: usize, groups: usize) -> Tensor<4> {
        let options = ConvOptions::new([stride; 2], [padding; 2], [1, 1], groups);
        burn::tensor::module::conv2d(x, self.weight.val(), Some(self.bias.val()), options)
    }

    /// A transposed convolution of an NCHW map (`weight` `[in, out, k, k]`, as PyTorch's
    /// `ConvTranspose2d`).
    pub fn conv_transpose2d(&self, x: Tensor<4>, stride: usize, padding: usize) -> Tensor<4> {
        let options = ConvTransposeOptions::new([stride; 2], [padding; 2], [0, 0], [1, 1], 1);
        burn::tensor::module::conv_transpose2d(x, self.weight.val(), Some(self.bias.val()), options)
    }

    /// A dense convolution of a channels-last map `[B, H, W, C]` → `[B, Ho, Wo, out]`.
    pub fn conv2d_channels_last(&self, x: Tensor<4>, stride: usize, padding: usize) -> Tensor<4> {
        crate::kernels::conv2d_channels_last(x, self.weight.val(), self.bias.val(), stride, padding)
    }

    /// A depthwise convolution of a channels-last map `[B, H, W, C]`.
    pub fn depthwise(&self, x: Tensor<4>, stride: usize, padding: usize) -> Tensor<4> {
        crate::kernels::depthwise_conv(x, self.weight.val(), self.bias.val(), stride, padding)
    }

    /// `x + conv(x)` for a stride-1 depthwise convolution of a channels-last map that keeps its
    /// size (CMT's local perception unit and IRFFN middle).
    pub fn depthwise_residual(&self, x: Tensor<4>) -> Tensor<4> {
        crate::kernels::depthwise_conv_residual(x, self.weight.val(), self.bias.val())
    }

    /// A 1×1 convolution (`[out, in, 1, 1]`) of channels-last tokens `[B, N, in]`: a linear
    /// layer over the last axis.
    pub fn pointwise(&self, x: Tensor<3>) -> Tensor<3> {
        crate::kernels::linear_with(x, self.matrix(), Some(self.bias.val()))
    }

    /// A 1×1 convolution followed by GELU, as one operation where the fused kernels run.
    pub fn pointwise_gelu(&self, x: Tensor<3>) -> Tensor<3> {
        crate::kernels::linear_gelu_with(x, self.matrix(), self.bias.val())
    }

    /// `norm(gelu(conv(x)))` for a 1×1 convolution: in inference on the CPU one pass, the
    /// BatchNorm applied as its per-channel scale and shift.
    pub fn pointwise_gelu_norm(&self, x: Tensor<3>, norm: &BatchNorm) -> Tensor<3> {
        if !norm.is_training(&x) {
            let (scale, shift) = norm.affine();
            if let Some(y) =
                crate::kernels::linear_gelu_affine(x.clone(), self.matrix(), self.bias.val(), scale, shift)
            {
                return y;
            }
        }
        norm.forward_tokens(self.pointwise_gelu(x))
    }

    /// A non-overlapping `k×k`, stride-`k` convolution of a channels-last map `[B, H, W, C]` →
    /// tokens `[B, (H/k)(W/k), out]`: each window gathered `(ky, kx, c)` and one matrix product.
    pub fn patchify(&self, x: Tensor<4>) -> Tensor<3> {
        let [b, h, w, c] = x.dims();
        let [out, _, k, _] = self.weight.lazy_shape().dims();
        let (gh, gw) = (h / k, w / k);
        let windows = x
            .reshape([b, gh, k, gw, k, c])
            .permute([0, 1, 3, 2, 4, 5])
            .reshape([b, gh * gw, k * k * c]);
        let weight = self
            .weight
            .val()
            .permute([0, 2, 3, 1])
            .reshape([out, k * k * c])
            .transpose();
        crate::kernels::linear_with(windows, weight, Some(self.bias.val()))
    }

    /// `resid + BN(conv(x))` for a 1×1 convolution followed by an evaluation-mode BatchNorm,
    /// the norm folded into the convolution's weights (`W * scale`, `b * scale + shift`) and
    /// the residual added in the same pass.
    pub fn pointwise_norm_residual(&self, resid: Tensor<3>, x: Tensor<3>, norm: &BatchNorm) -> Tensor<3> {
        let (weight, bias) = self.folded(norm);
        let [out, inp, _, _] = weight.dims();
        crate::kernels::linear_residual_with(resid, x, weight.reshape([out, inp]).transpose(), bias)
    }

    /// This convolution's weight and bias with an evaluation-mode BatchNorm after it folded in
    /// (`w * scale` per output channel, `b * scale + shift`): exact, as long as nothing sits
    /// between the two.
    pub fn folded(&self, norm: &BatchNorm) -> (Tensor<4>, Tensor<1>) {
        let (scale, shift) = norm.affine();
        let out = self.out_channels();
        let weight = self.weight.val() * scale.clone().reshape([out, 1, 1, 1]);
        (weight, self.bias.val() * scale + shift)
    }

    /// The `[out, in, 1, 1]` weight as the `[in, out]` matrix of a linear layer.
    fn matrix(&self) -> Tensor<2> {
        let [out, inp, _, _] = self.weight.lazy_shape().dims();
        self.weight.val().reshape([out, inp]).transpose()
    }
}

/// One child of a PyTorch `nn.Sequential`, so that a `Vec<SeqLayer>` saves under the indices
/// PyTorch gives them (the enum itself adds no path segment).
#[derive(Module, Debug)]
pub enum SeqLayer {
    Conv(ConvWeights),
    Norm(BatchNorm),
    Gelu(burn::nn::Gelu),
}

impl SeqLayer {
    pub fn conv(&self) -> &ConvWeights {
        match self {
            SeqLayer::Conv(c) => c,
            _ => panic!("expected a convolution in this nn.Sequential slot"),
        }
    }
    pub fn norm(&self) -> &BatchNorm {
        match self {
            SeqLayer::Norm(n) => n,
            _ => panic!("expected a BatchNorm in this nn.Sequential slot"),
        }
    }
}

/// Keys and values from a shorter sequence: a depthwise `r×r`, stride-`r` convolution of the
/// token map, then BatchNorm (`sr.0`, `sr.1`, as PVT and CMT name them).
pub type SpatialReduction = Vec<SeqLayer>;

/// A spatial reduction by `ratio` over `channels`.
pub fn spatial_reduction(channels: usize, ratio: usize, eps: f64, device: &Device) -> SpatialReduction {
    vec![
        SeqLayer::Conv(ConvWeights::kaiming_fan_out(channels, 1, ratio, device)),
        SeqLayer::Norm(BatchNorm::new(channels, eps, device)),
    ]
}

/// Tokens `[B, H*W, C]` of an `H×W` map → the reduced tokens `[B, (H/r)(W/r), C]`.
/// In inference the BatchNorm is folded into the convolution (`w * scale`, `b * scale + shift`;
/// exact, as nothing sits between them and the convolution has no padding).
pub fn reduce_tokens(sr: &[SeqLayer], x: Tensor<3>, grid: [usize; 2]) -> Tensor<3> {
    let [b, _, c] = x.dims();
    let (conv, norm) = (sr[0].conv(), sr[1].norm());
    let r = conv.weight.lazy_shape()[2];
    let map = x.reshape([b, grid[0], grid[1], c]);
    if !norm.is_training(&map) {
        let (weight, bias) = conv.folded(norm);
        let out = crate::kernels::depthwise_conv(map, weight, bias, r, 0);
        let [_, h, w, _] = out.dims();
        return out.reshape([b, h * w, c]);
    }
    let map = conv.depthwise(map, r, 0);
    let [_, h, w, _] = map.dims();
    norm.forward_tokens(map.reshape([b, h * w, c]))
}

//! Building blocks shared by the model families: LayerNorm, BatchNorm, the one attention core, the
//! transformer block, and position-embedding resampling.
//!
//! Parameter names follow timm's (`norm1.weight`, `attn.qkv.weight`, `mlp.fc1.bias`, ...) and
//! linear weights are kept in PyTorch's `[out, in]` layout when saved, so a checkpoint written
//! by vitkit and one written by timm differ only in their key sets.

mod attention;
mod batch_norm;
mod block;
mod block_grid;
mod conv;
mod norm;
mod resample;
mod shuffle;
mod spectral;

pub use attention::{Attention, AttentionArgs, HeadOrder, Mask, Projections, Queries};
pub use batch_norm::{BUFFER_NAMES, BatchNorm, is_buffer, is_counter};
pub use block::{Block, BlockConfig, DropPath, Mlp, run_blocks};
pub use block_grid::{PoolPadding, blockify, deblockify, host_blockify, host_deblockify, max_pool_3x3_s2};
pub use conv::{ConvWeights, SeqLayer, SpatialReduction, reduce_tokens, spatial_reduction};
pub use norm::LayerNorm;
pub use resample::{Resample, resample_pos_embed};
pub use shuffle::{pixel_shuffle, pixel_shuffle_channels_last, pixel_unshuffle};
pub use spectral::{POWER_ITERATIONS, SnConv2d, SnLinear, spectral_norm};

use burn::module::Param;
use burn::nn::{Initializer, Linear, LinearConfig, LinearLayout};
use burn::tensor::{Device, Tensor};

/// A linear layer initialised as timm does (weights N(0, 0.02), bias zero) and saved in
/// PyTorch's `[out, in]` layout.
pub fn timm_linear(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Linear {
    let mut linear = LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_layout(LinearLayout::Col)
        .with_initializer(Initializer::Normal { mean: 0.0, std: 0.02 })
        .init(device);
    if bias {
        linear.bias = Some(Initializer::Zeros.init([d_out], device));
    }
    linear
}

/// A linear layer in PyTorch's saved layout with the given weight and bias initialisers (for
/// families whose reference initialises its layers otherwise than timm).
pub fn linear_init(
    d_in: usize,
    d_out: usize,
    weight: Initializer,
    bias: Option<Initializer>,
    device: &Device,
) -> Linear {
    let mut linear = LinearConfig::new(d_in, d_out)
        .with_bias(bias.is_some())
        .with_layout(LinearLayout::Col)
        .with_initializer(weight)
        .init(device);
    if let Some(init) = bias {
        linear.bias = Some(init.init([d_out], device));
    }
    linear
}

/// A tensor's values on the host as f32, row-major (any float type converted).
pub fn host_values<const D: usize>(t: Tensor<D>) -> crate::Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| crate::VitError::Other(format!("reading a tensor back: {e:?}")))
}

/// PyTorch's default initialisation of a layer (linear, convolution, transposed convolution)
/// with `fan_in` inputs per output: U(±1/√fan_in) for weight and bias.
pub fn torch_default_init(fan_in: usize) -> Initializer {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Initializer::Uniform {
        min: -bound,
        max: bound,
    }
}

/// A parameter drawn from N(0, std²).
pub fn normal_param<const D: usize>(shape: [usize; D], std: f64, device: &Device) -> Param<Tensor<D>> {
    Initializer::Normal { mean: 0.0, std }.init(shape, device)
}

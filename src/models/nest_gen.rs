//! The NesT generator: NesT run backwards, from one image block to the full image. Our
//! reconstruction: the paper's generator section could not be retrieved (see
//! `../shared/spec/nest_gradcat_generator.md` §3), only that it replaces block aggregation by
//! block de-aggregation built on pixel shuffle.
//!
//! A latent vector becomes the top level's single block of `b`×`b` tokens (a linear layer).
//! Each level runs local transformer layers inside its blocks (the shared `nn::Block`, the
//! block axis folded into the batch, a learned position embedding per token of every block);
//! block de-aggregation then doubles the resolution: a linear layer to 4× the next level's
//! channels, pixel shuffle ×2 (so every token becomes a 2×2 patch of new tokens), LayerNorm,
//! and re-blocking into 4× as many blocks of the same size. It inverts aggregation's reshaping
//! exactly: aggregation halves the map (3×3 conv, LayerNorm, max-pool s2) and re-blocks into 4×
//! fewer blocks. After the last level a LayerNorm and a per-token linear layer give the pixels,
//! squashed by tanh into [−1, 1].

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::tanh;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::nn::{
    AttentionArgs, Block, BlockConfig, HeadOrder, LayerNorm, Projections, blockify, deblockify, normal_param,
    pixel_shuffle_channels_last, timm_linear,
};
use crate::{Result, VitError};

/// A NesT generator's shape, top level (one block) first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NestGenConfig {
    /// Tokens per block side, the same at every level.
    pub block_size: usize,
    /// Channels of each level, top first.
    pub dims: Vec<usize>,
    /// Transformer layers of each level.
    pub depths: Vec<usize>,
    /// Attention heads of each level.
    pub heads: Vec<usize>,
    pub mlp_ratio: f64,
}

impl NestGenConfig {
    pub fn levels(&self) -> usize {
        self.dims.len()
    }

    /// The output side: `block_size · 2^(levels − 1)` pixels (one token per pixel at the bottom).
    pub fn img_size(&self) -> usize {
        self.block_size << self.levels().saturating_sub(1)
    }

    pub fn validate(&self) -> Result<()> {
        let l = self.levels();
        let bad = |m: String| Err(VitError::Config(m));
        if l == 0 || self.depths.len() != l || self.heads.len() != l {
            return bad(format!(
                "a NesT generator needs one width, depth and head count per level (got {}, {}, {})",
                l,
                self.depths.len(),
                self.heads.len()
            ));
        }
        if self.block_size == 0 || l > 6 {
            return bad("a NesT generator needs a positive block size and at most 6 levels".into());
        }
        for (i, (&d, &h)) in self.dims.iter().zip(&self.heads).enumerate() {
            if h == 0 || d % h != 0 {
                return bad(format!("level {i}: width {d} does not split into {h} heads"));
            }
        }
        if self.mlp_ratio.is_nan() || self.mlp_ratio <= 0.0 {
            return bad("the MLP ratio must be positive".into());
        }
        Ok(())
    }

    pub fn init(&self, latent_dim: usize, out_chans: usize, device: &Device) -> NestGenerator {
        let b = self.block_size;
        let levels = (0..self.levels())
            .map(|l| {
                let dim = self.dims[l];
                let blocks = 1usize << (2 * l);
                let config = BlockConfig {
                    dim,
                    num_heads: self.heads[l],
                    mlp_ratio: self.mlp_ratio,
                    qkv_bias: true,
                    drop: 0.0,
                    attn_drop: 0.0,
                    drop_path: 0.0,
                    norm_eps: 1e-6,
                    projections: Projections::Fused,
                    merge: HeadOrder::HeadMajor,
                };
                GenLevel {
                    expand: (l > 0).then(|| timm_linear(self.dims[l - 1], 4 * dim, true, device)),
                    expand_norm: (l > 0).then(|| LayerNorm::new(dim, 1e-6, device)),
                    pos_embed: normal_param([1, blocks, b * b, dim], 0.02, device),
                    blocks: (0..self.depths[l]).map(|_| Block::new(&config, device)).collect(),
                    block_size: b,
                }
            })
            .collect();
        let last = *self.dims.last().unwrap_or(&1);
        NestGenerator {
            stem: timm_linear(latent_dim, b * b * self.dims[0], true, device),
            levels,
            norm: LayerNorm::new(last, 1e-6, device),
            to_pixels: timm_linear(last, out_chans, true, device),
            block_size: b,
        }
    }

    /// Multiply-accumulates of one image: the linear layers and the attention products.
    pub fn macs(&self, latent_dim: usize, out_chans: usize) -> f64 {
        let b2 = (self.block_size * self.block_size) as f64;
        let mut macs = latent_dim as f64 * b2 * self.dims[0] as f64;
        for l in 0..self.levels() {
            let d = self.dims[l] as f64;
            let tokens = b2 * (1u64 << (2 * l)) as f64;
            let per_layer = tokens * (4.0 * d * d + 2.0 * self.mlp_ratio * d * d) + 2.0 * tokens * b2 * d;
            macs += self.depths[l] as f64 * per_layer;
            if l > 0 {
                macs += tokens / 4.0 * self.dims[l - 1] as f64 * 4.0 * d;
            }
        }
        let last = self.dims.last().copied().unwrap_or(0) as f64;
        macs + b2 * (1u64 << (2 * self.levels().saturating_sub(1))) as f64 * last * out_chans as f64
    }
}

/// One level: (block de-aggregation from the level above), position embedding, transformer
/// layers inside each block.
#[derive(Module, Debug)]
pub struct GenLevel {
    /// Channels of the level above → 4× this level's, before the pixel shuffle.
    pub expand: Option<Linear>,
    pub expand_norm: Option<LayerNorm>,
    /// `[1, T, N, C]`: one vector per token of every block.
    pub pos_embed: Param<Tensor<4>>,
    pub blocks: Vec<Block>,
    pub block_size: usize,
}

impl GenLevel {
    /// Channels-last map in (the level above's), channels-last map out (twice the side, except
    /// at the top).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = match (&self.expand, &self.expand_norm) {
            (Some(expand), Some(norm)) => norm.forward(deaggregate(expand.forward(x))),
            _ => x,
        };
        let x = blockify(x, self.block_size) + self.pos_embed.val();
        let [b, t, n, c] = x.dims();
        let mut x = x.reshape([b * t, n, c]);
        let args = AttentionArgs::default();
        for layer in &self.blocks {
            x = layer.forward(x, &args).0;
        }
        deblockify(x.reshape([b, t, n, c]), self.block_size)
    }
}

/// Block de-aggregation's reshaping: `[B, H, W, 4C]` → `[B, 2H, 2W, C]` by pixel shuffle, so
/// that the 2×2 children of a token sit where block aggregation's pooling would gather them.
pub fn deaggregate(x: Tensor<4>) -> Tensor<4> {
    pixel_shuffle_channels_last(x, 2)
}

#[derive(Module, Debug)]
pub struct NestGenerator {
    /// The latent vector → the top block's tokens.
    pub stem: Linear,
    pub levels: Vec<GenLevel>,
    pub norm: LayerNorm,
    /// Each bottom-level token → one pixel's channels.
    pub to_pixels: Linear,
    pub block_size: usize,
}

impl NestGenerator {
    /// `[B, latent]` → images `[B, C, H, W]` in [−1, 1].
    pub fn forward(&self, z: Tensor<2>) -> Tensor<4> {
        let [n, _] = z.dims();
        let b = self.block_size;
        let x = self.stem.forward(z);
        let c = x.dims()[1] / (b * b);
        let mut x = x.reshape([n, b, b, c]);
        for level in &self.levels {
            x = level.forward(x);
        }
        tanh(self.to_pixels.forward(self.norm.forward(x))).permute([0, 3, 1, 2])
    }
}

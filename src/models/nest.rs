//! NesT (Zhang et al., AAAI 2022, "Nested Hierarchical Transformer"), shaped and named as
//! timm's `Nest`: transformer layers inside non-overlapping image blocks, and block
//! aggregation (3×3 convolution, LayerNorm, 3×3 max-pool with stride 2) between levels, each
//! level with 4× fewer blocks than the one below, up to one block.
//!
//! The block axis folds into the batch, so every layer is the plain pre-LN transformer block
//! (`nn::Block`) on `[B·T, N, C]` and the fused ViT kernels serve it. Two things differ from a
//! ViT's block: timm merges the heads head-minor before `proj` (`HeadOrder::HeadMinor`), and
//! the CIFAR models of the official code use multi-query attention (`Projections::MultiQuery`:
//! vitkit's own names `attn.q`, `attn.k`, `attn.v`, since timm has no such model).

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::state::{shape_of, square_side};
use super::vit::PatchEmbed;
use super::{
    Adaptation, Architecture, BlockTree, Classifier, Family, Model, SpatialMap, StateDict, TreeLayout,
};
pub use crate::nn::PoolPadding;
use crate::nn::{
    AttentionArgs, Block, BlockConfig, ConvWeights, HeadOrder, LayerNorm, Projections, Resample, blockify,
    deblockify, host_blockify, host_deblockify, max_pool_3x3_s2, normal_param, timm_linear,
};
use crate::{Result, VitError};

/// The attention inside a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NestAttention {
    /// timm's fused `qkv` (the ImageNet models).
    MultiHead,
    /// One key and value head shared by all query heads (the official CIFAR models).
    MultiQuery,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NestConfig {
    /// Square input side.
    pub img_size: usize,
    /// Pixel patch of the first embedding (timm's `patch_size`; JAX's `init_patch_embed_size`).
    pub patch_size: usize,
    pub in_chans: usize,
    pub num_classes: usize,
    /// Per level, bottom (most blocks) first.
    pub embed_dims: Vec<usize>,
    pub num_heads: Vec<usize>,
    pub depths: Vec<usize>,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    pub attention: NestAttention,
    pub padding: PoolPadding,
    pub drop_rate: f64,
    pub attn_drop_rate: f64,
    pub drop_path_rate: f64,
}

impl NestConfig {
    /// timm's defaults (multi-head attention, symmetric padding, mlp ratio 4, qkv bias, 1000
    /// classes, 3 channels, no dropout) with these shapes, one entry per level, bottom first.
    pub fn new(img: usize, patch: usize, dims: &[usize], heads: &[usize], depths: &[usize]) -> Self {
        Self {
            img_size: img,
            patch_size: patch,
            in_chans: 3,
            num_classes: 1000,
            embed_dims: dims.to_vec(),
            num_heads: heads.to_vec(),
            depths: depths.to_vec(),
            mlp_ratio: 4.0,
            qkv_bias: true,
            attention: NestAttention::MultiHead,
            padding: PoolPadding::Symmetric,
            drop_rate: 0.0,
            attn_drop_rate: 0.0,
            drop_path_rate: 0.0,
        }
    }

    pub fn levels(&self) -> usize {
        self.depths.len()
    }

    /// Tokens along the side of the patch grid.
    fn grid_side(&self) -> usize {
        self.img_size / self.patch_size.max(1)
    }

    /// Blocks along each side at the bottom level: 2^(levels−1).
    fn blocks_per_side(&self) -> usize {
        1 << self.levels().saturating_sub(1)
    }

    /// Block edge in tokens (timm's `block_size`), the same at every level.
    pub fn block_size(&self) -> usize {
        self.grid_side() / self.blocks_per_side()
    }

    /// Blocks at level `l` (0 = bottom).
    fn blocks_at(&self, level: usize) -> usize {
        let per_side = self.blocks_per_side() >> level;
        per_side * per_side
    }

    /// Image sides this model can take: multiples of patch · 2^(levels−1).
    fn side_multiple(&self) -> usize {
        self.patch_size * self.blocks_per_side()
    }

    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(VitError::Config(m));
        let l = self.levels();
        if l == 0 || self.embed_dims.len() != l || self.num_heads.len() != l {
            return err(format!(
                "NesT needs one width, head count and depth per level; got {} widths, {} head \
                 counts, {} depths",
                self.embed_dims.len(),
                self.num_heads.len(),
                l
            ));
        }
        if self.patch_size == 0 || self.in_chans == 0 || self.num_classes == 0 {
            return err("patch_size, in_chans and num_classes must be positive".into());
        }
        let m = self.side_multiple();
        if self.img_size == 0 || !self.img_size.is_multiple_of(m) {
            return err(format!(
                "a {l}-level NesT with {p}x{p} patches takes image sides that are multiples of {m} \
                 (the {s} patches per side must split into 2^{e} blocks per side, a power-of-two \
                 block tree), e.g. {}, {}, {}; got {}",
                m,
                2 * m,
                4 * m,
                self.img_size,
                p = self.patch_size,
                s = self.grid_side(),
                e = l - 1,
            ));
        }
        for (i, (&d, &h)) in self.embed_dims.iter().zip(&self.num_heads).enumerate() {
            if h == 0 || !d.is_multiple_of(h) {
                return err(format!("level {i}: width {d} is not divisible by {h} heads"));
            }
        }
        for (name, p) in [
            ("drop_rate", self.drop_rate),
            ("attn_drop_rate", self.attn_drop_rate),
            ("drop_path_rate", self.drop_path_rate),
        ] {
            if !(0.0..1.0).contains(&p) {
                return err(format!("{name} must be in [0, 1), got {p}"));
            }
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> Result<Nest> {
        self.validate()?;
        let total: usize = self.depths.iter().sum();
        // timm's stagewise rates: linspace(0, rate, total layers), split per level.
        let rate = |i: usize| {
            if total > 1 {
                self.drop_path_rate * i as f64 / (total - 1) as f64
            } else {
                0.0
            }
        };
        let b = self.block_size();
        let mut first_layer = 0;
        let levels = (0..self.levels())
            .map(|l| {
                let dim = self.embed_dims[l];
                let layers = (0..self.depths[l])
                    .map(|j| {
                        let config = BlockConfig {
                            dim,
                            num_heads: self.num_heads[l],
                            mlp_ratio: self.mlp_ratio,
                            qkv_bias: self.qkv_bias,
                            drop: 0.0,
                            attn_drop: self.attn_drop_rate,
                            drop_path: rate(first_layer + j),
                            norm_eps: 1e-6,
                            projections: match self.attention {
                                NestAttention::MultiHead => Projections::Fused,
                                NestAttention::MultiQuery => Projections::MultiQuery,
                            },
                            merge: match self.attention {
                                NestAttention::MultiHead => HeadOrder::HeadMinor,
                                NestAttention::MultiQuery => HeadOrder::HeadMajor,
                            },
                        };
                        Block::new(&config, device)
                    })
                    .collect();
                first_layer += self.depths[l];
                NestLevel {
                    pos_embed: normal_param([1, self.blocks_at(l), b * b, dim], 0.02, device),
                    pool: (l > 0).then(|| ConvPool {
                        conv: trunc_normal_conv(self.embed_dims[l - 1], dim, 3, device),
                        norm: LayerNorm::new(dim, 1e-6, device),
                        padding: self.padding,
                    }),
                    transformer_encoder: layers,
                    block_size: b,
                }
            })
            .collect();
        let last = self.embed_dims[self.levels() - 1]; // validate: one width per level, ≥ 1 level
        Ok(Nest {
            patch_embed: PatchEmbed {
                proj: trunc_normal_conv(self.in_chans, self.embed_dims[0], self.patch_size, device),
                patch_size: self.patch_size,
            },
            levels,
            norm: LayerNorm::new(last, 1e-6, device),
            head_drop: DropoutConfig::new(self.drop_rate).init(),
            head: timm_linear(last, self.num_classes, true, device),
            img_size: self.img_size,
        })
    }

    /// The multiply-accumulates of one level's layers on `tokens` tokens of width `d`.
    fn layer_macs(&self, level: usize, tokens: f64) -> f64 {
        let d = self.embed_dims[level] as f64;
        let dh = d / self.num_heads[level] as f64;
        let hidden = (d * self.mlp_ratio).floor();
        let n = (self.block_size() * self.block_size()) as f64;
        let qkv = match self.attention {
            NestAttention::MultiHead => 3.0 * d * d,
            NestAttention::MultiQuery => d * d + 2.0 * d * dh,
        };
        tokens * (qkv + d * d + 2.0 * d * hidden + 2.0 * n * d)
    }
}

/// timm's NesT initialisation of a convolution: N(0, 0.02) weights (truncated at ±2, i.e.
/// not at all), zero bias.
fn trunc_normal_conv(c_in: usize, c_out: usize, k: usize, device: &Device) -> ConvWeights {
    ConvWeights {
        weight: normal_param([c_out, c_in, k, k], 0.02, device),
        bias: burn::nn::Initializer::Zeros.init([c_out], device),
    }
}

/// Block aggregation: `conv` 3×3, `norm` over channels, max-pool 3×3 stride 2.
#[derive(Module, Debug)]
pub struct ConvPool {
    pub conv: ConvWeights,
    pub norm: LayerNorm,
    #[module(skip)]
    pub padding: PoolPadding,
}

impl ConvPool {
    /// Channels-last `[B, H, W, C]` → `[B, H/2, W/2, C_out]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.norm.forward(self.conv.conv2d_channels_last(x, 1, 1));
        max_pool_3x3_s2(x, self.padding)
    }
}

/// One level: (aggregation of the level below), position embedding, transformer layers.
#[derive(Module, Debug)]
pub struct NestLevel {
    /// `[1, T, N, C]`: one vector per token of every block.
    pub pos_embed: Param<Tensor<4>>,
    pub pool: Option<ConvPool>,
    pub transformer_encoder: Vec<Block>,
    pub block_size: usize,
}

impl NestLevel {
    /// Channels-last map in, channels-last map out.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = match &self.pool {
            Some(pool) => pool.forward(x),
            None => x,
        };
        let x = blockify(x, self.block_size) + self.pos_embed.val();
        let [b, t, n, c] = x.dims();
        let mut x = x.reshape([b * t, n, c]);
        let args = AttentionArgs::default();
        for layer in &self.transformer_encoder {
            x = layer.forward(x, &args).0;
        }
        deblockify(x.reshape([b, t, n, c]), self.block_size)
    }
}

#[derive(Module, Debug)]
pub struct Nest {
    pub patch_embed: PatchEmbed,
    pub levels: Vec<NestLevel>,
    pub norm: LayerNorm,
    pub head_drop: Dropout,
    pub head: Linear,
    pub img_size: usize,
}

impl Nest {
    /// The patch embedding as a channels-last map `[B, h, w, C0]`.
    fn embed(&self, x: Tensor<4>) -> Tensor<4> {
        let tokens = self.patch_embed.forward(x);
        let [b, _, c] = tokens.dims();
        let side = self.img_size / self.patch_embed.patch_size;
        tokens.reshape([b, side, side, c])
    }

    /// Every level's output (channels-last), bottom first.
    pub fn level_outputs(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let mut x = self.embed(x);
        let mut out = Vec::with_capacity(self.levels.len());
        for level in &self.levels {
            x = level.forward(x);
            out.push(x.clone());
        }
        out
    }

    /// The top level's output after the final norm, channels-last `[B, h, w, C]`.
    fn top_map(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.embed(x);
        for level in &self.levels {
            x = level.forward(x);
        }
        self.norm.forward(x)
    }

    /// Logits from level `level`'s output (channels-last): the levels above, norm, pooling,
    /// head.
    pub fn logits_from(&self, level: usize, map: Tensor<4>) -> Tensor<2> {
        let mut x = map;
        for upper in &self.levels[level + 1..] {
            x = upper.forward(x);
        }
        self.pool_head(self.norm.forward(x))
    }

    fn pool_head(&self, normed: Tensor<4>) -> Tensor<2> {
        Classifier::head(self, mean_pool(normed))
    }
}

/// The mean over all positions of a channels-last map, `[B, C]`.
fn mean_pool(map: Tensor<4>) -> Tensor<2> {
    let [b, h, w, c] = map.dims();
    map.reshape([b, h * w, c]).mean_dim(1).reshape([b, c])
}

impl From<Nest> for Model {
    fn from(m: Nest) -> Self {
        Model::Nest(m)
    }
}

impl Family for Nest {
    fn family_name(&self) -> &'static str {
        "nest"
    }
    fn classifier(&self) -> Option<&dyn Classifier> {
        Some(self)
    }
    fn spatial_map(&self) -> Option<&dyn SpatialMap> {
        Some(self)
    }
    fn block_tree(&self) -> Option<&dyn BlockTree> {
        Some(self)
    }
}

impl Classifier for Nest {
    fn features(&self, x: Tensor<4>) -> Tensor<2> {
        mean_pool(self.top_map(x))
    }
    fn head(&self, features: Tensor<2>) -> Tensor<2> {
        crate::kernels::linear(self.head_drop.forward(features), &self.head)
    }
    fn input_size(&self) -> [usize; 2] {
        [self.img_size; 2]
    }
}

impl SpatialMap for Nest {
    /// The top level's tokens after the final norm, `[B, C, h, w]`.
    fn feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        self.top_map(x).permute([0, 3, 1, 2])
    }
    fn classify_map(&self, map: Tensor<4>) -> Tensor<2> {
        self.pool_head(map.permute([0, 2, 3, 1]))
    }
    /// Mean pooling then one linear layer: a token's class score averages to the logit.
    fn pooled_linear_head(&self) -> bool {
        true
    }
}

impl BlockTree for Nest {
    fn tree(&self) -> TreeLayout {
        TreeLayout {
            levels: self.levels.len(),
            block_size: self.levels.first().map_or(0, |l| l.block_size),
            patch_size: self.patch_embed.patch_size,
        }
    }
    fn level_outputs(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        Nest::level_outputs(self, x)
    }
    fn logits_from(&self, level: usize, map: Tensor<4>) -> Tensor<2> {
        Nest::logits_from(self, level, map)
    }
}

impl Architecture for NestConfig {
    fn family(&self) -> &'static str {
        "nest"
    }
    fn validate(&self) -> Result<()> {
        NestConfig::validate(self)
    }
    fn build(&self, device: &Device) -> Result<Model> {
        Ok(self.init(device)?.into())
    }
    fn img_size(&self) -> [usize; 2] {
        [self.img_size; 2]
    }
    fn in_chans(&self) -> usize {
        self.in_chans
    }
    fn num_classes(&self) -> Option<usize> {
        Some(self.num_classes)
    }
    fn adapt(&mut self, a: &Adaptation) -> Result<()> {
        a.refuse_pretext("nest")?;
        if a.global_pool.is_some() {
            return Err(VitError::Config(
                "NesT always averages the top level's tokens; --global-pool does not apply".into(),
            ));
        }
        if let Some([h, w]) = a.img_size {
            if h != w {
                return Err(VitError::Config(format!(
                    "NesT takes square images (its block tree is square); got {h}x{w}"
                )));
            }
            self.img_size = h;
        }
        self.num_classes = a.num_classes.unwrap_or(self.num_classes);
        self.in_chans = a.in_chans.unwrap_or(self.in_chans);
        self.drop_path_rate = a.drop_path.unwrap_or(self.drop_path_rate);
        Ok(())
    }

    /// Patch embedding, every level's layers, the aggregations' convolutions (at the
    /// resolution below), head.
    fn forward_macs(&self) -> f64 {
        let side = self.grid_side();
        let mut macs =
            (side * side * self.in_chans * self.patch_size * self.patch_size * self.embed_dims[0]) as f64;
        for l in 0..self.levels() {
            let s = side >> l;
            if l > 0 {
                let below = side >> (l - 1);
                macs += (below * below * 9 * self.embed_dims[l - 1] * self.embed_dims[l]) as f64;
            }
            macs += self.depths[l] as f64 * self.layer_macs(l, (s * s) as f64);
        }
        macs + (self.embed_dims[self.levels() - 1] * self.num_classes) as f64
    }

    /// The official recipe's rule: every weight decays (biases and norms too) except the
    /// position embeddings.
    fn decay_exempt(&self, path: &str, _rank: usize) -> bool {
        path.ends_with("pos_embed")
    }

    fn head_params(&self) -> Vec<String> {
        vec!["head.weight".into(), "head.bias".into()]
    }

    /// Input channels from the patch embedding, classes from the head, the image size from
    /// the bottom level's block edge.
    fn read_weights(&mut self, file: &StateDict, fixed: &Adaptation) -> Result<()> {
        if fixed.in_chans.is_none()
            && let Some(&[_, c, _, _]) = shape_of(file, "patch_embed.proj.weight", 4)
        {
            self.in_chans = c;
        }
        if fixed.num_classes.is_none()
            && let Some(&[k, _]) = shape_of(file, "head.weight", 2)
        {
            self.num_classes = k;
        }
        if fixed.img_size.is_none()
            && let Some(&[_, _, n, _]) = shape_of(file, "levels.0.pos_embed", 4)
            && let Some(b) = square_side(n)
        {
            self.img_size = b * self.blocks_per_side() * self.patch_size;
        }
        Ok(())
    }

    /// Resamples each level's position embedding to this block edge as timm does: the
    /// blocks put back into one map, plain bicubic (timm's NesT rule, not the antialiased one
    /// of its ViT; bilinear when asked for), cut into blocks again.
    fn fit_weights(&self, file: &mut StateDict, resample: Resample) -> Result<()> {
        let resample = match resample {
            Resample::Bilinear => Resample::Bilinear,
            _ => Resample::Bicubic,
        };
        let b = self.block_size();
        for l in 0..self.levels() {
            let name = format!("levels.{l}.pos_embed");
            let Some(pos) = file.get_mut(&name) else {
                continue;
            };
            let &[1, t, n, c] = pos.shape.as_slice() else {
                continue; // reported as a shape mismatch when loaded
            };
            if n == b * b || t != self.blocks_at(l) || c != self.embed_dims[l] {
                continue;
            }
            let (Some(old_b), Some(g)) = (square_side(n), square_side(t)) else {
                return Err(VitError::Config(format!(
                    "{name} is {:?}: its blocks are not square, so it cannot be resampled",
                    pos.shape
                )));
            };
            let map = host_deblockify(&pos.values, g, old_b, c);
            let resized = crate::nn::resample_pos_embed(&map, c, 0, [g * old_b; 2], [g * b; 2], resample);
            pos.values = host_blockify(&resized, g, b, c);
            pos.shape = vec![1, t, b * b, c];
        }
        Ok(())
    }

    /// timm's NesT configurations: ImageNet's mean and std.
    fn pretrained_mean_std(&self) -> (Vec<f32>, Vec<f32>) {
        let mean = [0.485, 0.456, 0.406];
        let std = [0.229, 0.224, 0.225];
        let pick = |v: [f32; 3]| (0..self.in_chans).map(|c| v[c % 3]).collect();
        (pick(mean), pick(std))
    }
}

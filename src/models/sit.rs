//! SiT (Atito, Awais, Kittler 2021, the v1 design): a ViT without a class token whose sequence
//! starts with two learned tokens, a rotation token and a contrastive token. Pretraining
//! (`SitHeads::Pretext`) reads a 4-way rotation from the first, a contrastive embedding from
//! the second and a reconstructed image from the patch tokens (a transposed convolution with
//! stride = kernel = patch, i.e. one linear decoder per patch); three learned scalars weight the
//! three losses. As a classifier (`SitHeads::Classify`) each of the two tokens gets a linear
//! head and the prediction is the mean of their logits.
//!
//! Parameter names are the official `vision_transformer_SiT.py`'s (`rot_token`,
//! `contrastive_token`, `convTrans`, `rot_w`, …), so its `state_dict` loads as is.

// `convTrans` is the official parameter name; the derive repeats it in generated code.
#![allow(non_snake_case)]

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::state::{shape_of, square_side};
use super::vit::PatchEmbed;
use super::{
    Adaptation, Architecture, Classifier, Family, GlobalAttention, Model, Pooled, Pretext, PretextOutput,
    StateDict, TokenLayout, VitConfig,
};
use crate::nn::{Block, ConvWeights, LayerNorm, Resample, normal_param, timm_linear};
use crate::{Result, VitError};

/// The two extra tokens before the patches.
pub const PREFIX_TOKENS: usize = 2;
/// Rotation classes: 0°, 90° clockwise, 180°, 90° counter-clockwise.
pub const ROTATIONS: usize = 4;

/// Which heads sit on the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SitHeads {
    /// Rotation, contrastive and reconstruction heads with their loss weights: pretraining.
    Pretext,
    /// A linear classifier on each of the two tokens: linear evaluation and fine-tuning.
    Classify,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SitConfig {
    pub img_size: [usize; 2],
    pub patch_size: usize,
    pub in_chans: usize,
    /// Classes of the two classifier heads (in `Classify` mode).
    pub num_classes: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    pub drop_rate: f64,
    pub attn_drop_rate: f64,
    pub drop_path_rate: f64,
    pub norm_eps: f64,
    pub heads: SitHeads,
    /// Width of the contrastive embedding (512 in the paper).
    pub contrastive_dim: usize,
}

impl SitConfig {
    /// timm ViT shapes (qkv bias, mlp ratio 4, LayerNorm eps 1e-6) as a classifier.
    pub fn new(img: usize, patch: usize, dim: usize, depth: usize, heads: usize, classes: usize) -> Self {
        Self {
            img_size: [img, img],
            patch_size: patch,
            in_chans: 3,
            num_classes: classes,
            embed_dim: dim,
            depth,
            num_heads: heads,
            mlp_ratio: 4.0,
            qkv_bias: true,
            drop_rate: 0.0,
            attn_drop_rate: 0.0,
            drop_path_rate: 0.0,
            norm_eps: 1e-6,
            heads: SitHeads::Classify,
            contrastive_dim: 512,
        }
    }

    /// The backbone as a ViT configuration (shapes, validation, blocks).
    fn backbone(&self) -> VitConfig {
        VitConfig {
            img_size: self.img_size,
            patch_size: self.patch_size,
            in_chans: self.in_chans,
            num_classes: self.num_classes,
            embed_dim: self.embed_dim,
            depth: self.depth,
            num_heads: self.num_heads,
            mlp_ratio: self.mlp_ratio,
            qkv_bias: self.qkv_bias,
            global_pool: super::GlobalPool::Token,
            drop_rate: self.drop_rate,
            attn_drop_rate: self.attn_drop_rate,
            drop_path_rate: self.drop_path_rate,
            norm_eps: self.norm_eps,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.backbone().validate()?;
        if self.contrastive_dim == 0 {
            return Err(VitError::Config("contrastive_dim must be positive".into()));
        }
        if self.heads == SitHeads::Pretext && self.img_size[0] != self.img_size[1] {
            return Err(VitError::Config(format!(
                "SiT pretraining rotates its inputs by 90 degrees, so the image must be square, not {}x{}",
                self.img_size[0], self.img_size[1]
            )));
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> Result<Sit> {
        self.validate()?;
        let d = self.embed_dim;
        let vit = self.backbone().init(device)?;
        let n = self.backbone().num_patches();
        let pretext = self.heads == SitHeads::Pretext;
        let (rot_out, contrastive_out) = if pretext {
            (ROTATIONS, self.contrastive_dim)
        } else {
            (self.num_classes, self.num_classes)
        };
        // PyTorch's ConvTranspose2d default init (which SiT keeps): fan-in from the weight's
        // second axis, U(±1/sqrt(C·P·P)) for weight and bias.
        let p = self.patch_size;
        let uniform = crate::nn::torch_default_init(self.in_chans * p * p);
        let weight = |device: &Device| Some(Initializer::Ones.init([1], device));
        Ok(Sit {
            patch_embed: vit.patch_embed,
            rot_token: normal_param([1, 1, d], 0.02, device),
            contrastive_token: normal_param([1, 1, d], 0.02, device),
            pos_embed: normal_param([1, n + PREFIX_TOKENS, d], 0.02, device),
            pos_drop: DropoutConfig::new(self.drop_rate).init(),
            blocks: vit.blocks,
            norm: LayerNorm::new(d, self.norm_eps, device),
            rot_head: timm_linear(d, rot_out, true, device),
            contrastive_head: timm_linear(d, contrastive_out, true, device),
            convTrans: pretext.then(|| ConvWeights {
                weight: uniform.init([d, self.in_chans, p, p], device),
                bias: uniform.init([self.in_chans], device),
            }),
            rot_w: if pretext { weight(device) } else { None },
            contrastive_w: if pretext { weight(device) } else { None },
            recons_w: if pretext { weight(device) } else { None },
            img_size: self.img_size,
        })
    }
}

#[derive(Module, Debug)]
pub struct Sit {
    pub patch_embed: PatchEmbed,
    pub rot_token: Param<Tensor<3>>,
    pub contrastive_token: Param<Tensor<3>>,
    pub pos_embed: Param<Tensor<3>>,
    pub pos_drop: Dropout,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    pub rot_head: Linear,
    pub contrastive_head: Linear,
    /// The reconstruction decoder, `[D, C, P, P]` (pretext mode only).
    pub convTrans: Option<ConvWeights>,
    /// The learned loss weights `s_t`, `[1]` each (pretext mode only).
    pub rot_w: Option<Param<Tensor<1>>>,
    pub contrastive_w: Option<Param<Tensor<1>>>,
    pub recons_w: Option<Param<Tensor<1>>>,
    pub img_size: [usize; 2],
}

impl Sit {
    fn grid(&self) -> [usize; 2] {
        let p = self.patch_embed.patch_size;
        [self.img_size[0] / p, self.img_size[1] / p]
    }

    /// The normalised token sequence (only the two prefix tokens unless `all_tokens`), and
    /// every block's attention when asked for.
    fn encode(&self, x: Tensor<4>, all_tokens: bool, keep_attention: bool) -> (Tensor<3>, Vec<Tensor<4>>) {
        let x = self.patch_embed.forward(x);
        let [b, _, d] = x.dims();
        let rot = self.rot_token.val().expand([b, 1, d]);
        let contrastive = self.contrastive_token.val().expand([b, 1, d]);
        let x = self
            .pos_drop
            .forward(Tensor::cat(vec![rot, contrastive, x], 1) + self.pos_embed.val());
        // A classifier reads the two prefix tokens only.
        let pooled = (!all_tokens).then_some(PREFIX_TOKENS);
        let (x, attentions) = crate::nn::run_blocks(&self.blocks, x, pooled, keep_attention);
        (self.norm.forward(x), attentions)
    }

    /// Token `i` of a normalised sequence, `[B, D]`.
    fn token(x: &Tensor<3>, i: usize) -> Tensor<2> {
        let [b, _, d] = x.dims();
        x.clone().narrow(1, i, 1).reshape([b, d])
    }

    /// The two classifier heads' logits of `[B, 2D]` features (rotation token, contrastive token).
    fn token_heads(&self, features: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let [_, f] = features.dims();
        let d = f / 2;
        (
            crate::kernels::linear(features.clone().narrow(1, 0, d), &self.rot_head),
            crate::kernels::linear(features.narrow(1, d, d), &self.contrastive_head),
        )
    }

    /// Patch tokens `[B, N, D]` → image `[B, C, H, W]`: each token decodes its own patch.
    fn reconstruct(&self, decoder: &ConvWeights, patches: Tensor<3>) -> Tensor<4> {
        let [b, _, d] = patches.dims();
        let [gh, gw] = self.grid();
        let p = self.patch_embed.patch_size;
        let c = decoder.out_channels();
        let weight = decoder.weight.val().reshape([d, c * p * p]);
        let pixels = crate::kernels::linear_with(patches, weight, None);
        pixels
            .reshape([b, gh, gw, c, p, p])
            .permute([0, 3, 1, 4, 2, 5])
            .reshape([b, c, gh * p, gw * p])
            + decoder.bias.val().reshape([1, c, 1, 1])
    }
}

impl From<Sit> for Model {
    fn from(m: Sit) -> Self {
        Model::Sit(m)
    }
}

impl Family for Sit {
    fn family_name(&self) -> &'static str {
        "sit"
    }
    fn classifier(&self) -> Option<&dyn Classifier> {
        self.convTrans.is_none().then_some(self as &dyn Classifier)
    }
    fn global_attention(&self) -> Option<&dyn GlobalAttention> {
        Some(self)
    }
    fn pretext(&self) -> Option<&dyn Pretext> {
        self.convTrans.is_some().then_some(self as &dyn Pretext)
    }
}

impl Classifier for Sit {
    /// The two normalised prefix tokens side by side, `[B, 2D]`.
    fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let tokens = self.encode(x, false, false).0;
        Tensor::cat(vec![Self::token(&tokens, 0), Self::token(&tokens, 1)], 1)
    }
    /// The mean of the two heads' logits (the official prediction).
    fn head(&self, features: Tensor<2>) -> Tensor<2> {
        let (rot, contrastive) = self.token_heads(features);
        (rot + contrastive).div_scalar(2.0)
    }
    /// The rotation-token head and the contrastive-token head, each trained with its own
    /// cross-entropy.
    fn head_logits(&self, features: Tensor<2>) -> Vec<Tensor<2>> {
        let (rot, contrastive) = self.token_heads(features);
        vec![rot, contrastive]
    }
    fn input_size(&self) -> [usize; 2] {
        self.img_size
    }
}

/// The error for a pretext call on a SiT built as a classifier.
fn no_pretext_heads() -> VitError {
    VitError::Config("this SiT model was built as a classifier: it has no pretext heads".into())
}

impl Pretext for Sit {
    fn pretext(&self, x: Tensor<4>) -> Result<PretextOutput> {
        let decoder = self.convTrans.as_ref().ok_or_else(no_pretext_heads)?;
        let tokens = self.encode(x, true, false).0;
        let [_, t, _] = tokens.dims();
        Ok(PretextOutput {
            rotation: crate::kernels::linear(Self::token(&tokens, 0), &self.rot_head),
            contrastive: crate::kernels::linear(Self::token(&tokens, 1), &self.contrastive_head),
            reconstruction: self.reconstruct(decoder, tokens.narrow(1, PREFIX_TOKENS, t - PREFIX_TOKENS)),
        })
    }
    fn loss_weights(&self) -> Result<Tensor<1>> {
        let each = [&self.rot_w, &self.contrastive_w, &self.recons_w]
            .into_iter()
            .map(|w| w.as_ref().map(|w| w.val()).ok_or_else(no_pretext_heads))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(each, 0))
    }
}

impl GlobalAttention for Sit {
    fn layout(&self) -> TokenLayout {
        TokenLayout {
            prefix: PREFIX_TOKENS,
            grid: self.grid(),
            patch_size: self.patch_embed.patch_size,
            depth: self.blocks.len(),
            heads: self.blocks.first().map_or(0, |b| b.attn.num_heads),
            pooled: Pooled::Tokens(vec![0, 1]),
        }
    }
    fn attention_maps(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        self.encode(x, true, true).1
    }
    fn position_embedding(&self) -> Option<Tensor<3>> {
        Some(self.pos_embed.val())
    }
    fn patch_filters(&self) -> Option<Tensor<4>> {
        Some(self.patch_embed.proj.weight.val())
    }
}

/// Keys only the pretext model has.
const PRETEXT_ONLY: [&str; 5] = [
    "convTrans.weight",
    "convTrans.bias",
    "rot_w",
    "contrastive_w",
    "recons_w",
];

impl Architecture for SitConfig {
    fn family(&self) -> &'static str {
        "sit"
    }
    fn validate(&self) -> Result<()> {
        SitConfig::validate(self)
    }
    fn build(&self, device: &Device) -> Result<Model> {
        Ok(self.init(device)?.into())
    }
    fn img_size(&self) -> [usize; 2] {
        self.img_size
    }
    fn in_chans(&self) -> usize {
        self.in_chans
    }
    fn num_classes(&self) -> Option<usize> {
        (self.heads == SitHeads::Classify).then_some(self.num_classes)
    }
    fn adapt(&mut self, a: &Adaptation) -> Result<()> {
        if a.global_pool.is_some() {
            return Err(VitError::Config(
                "SiT classifies from its two prefix tokens; --global-pool does not apply".into(),
            ));
        }
        self.num_classes = a.num_classes.unwrap_or(self.num_classes);
        self.in_chans = a.in_chans.unwrap_or(self.in_chans);
        self.img_size = a.img_size.unwrap_or(self.img_size);
        self.drop_path_rate = a.drop_path.unwrap_or(self.drop_path_rate);
        self.norm_eps = a.norm_eps.unwrap_or(self.norm_eps);
        if let Some(pretext) = a.pretext {
            self.heads = if pretext {
                SitHeads::Pretext
            } else {
                SitHeads::Classify
            };
        }
        Ok(())
    }

    /// The backbone with two prefix tokens, the two heads, and in pretext mode the decoder.
    fn forward_macs(&self) -> f64 {
        let d = self.embed_dim as f64;
        let patches = self.backbone().num_patches() as f64;
        let tokens = patches + PREFIX_TOKENS as f64;
        let hidden = (d * self.mlp_ratio).floor();
        let pixels = (self.in_chans * self.patch_size * self.patch_size) as f64;
        let per_block = tokens * (4.0 * d * d + 2.0 * d * hidden) + 2.0 * tokens * tokens * d;
        let heads = match self.heads {
            SitHeads::Pretext => d * (ROTATIONS + self.contrastive_dim) as f64 + patches * pixels * d,
            SitHeads::Classify => 2.0 * d * self.num_classes as f64,
        };
        patches * pixels * d + self.depth as f64 * per_block + heads
    }

    /// The official `no_weight_decay` (tokens and position embedding) and every tensor of rank
    /// ≤ 1, which includes the three loss weights.
    fn decay_exempt(&self, path: &str, rank: usize) -> bool {
        rank <= 1 || matches!(path, "pos_embed" | "rot_token" | "contrastive_token")
    }

    fn head_params(&self) -> Vec<String> {
        ["rot_head", "contrastive_head"]
            .iter()
            .flat_map(|h| [format!("{h}.weight"), format!("{h}.bias")])
            .collect()
    }

    /// Channels from the patch embedding, pretext or classifier heads from whether a decoder
    /// is present, classes from the rotation-token head, image size from a square grid.
    fn read_weights(&mut self, file: &StateDict, fixed: &Adaptation) -> Result<()> {
        if fixed.in_chans.is_none()
            && let Some(&[_, c, _, _]) = shape_of(file, "patch_embed.proj.weight", 4)
        {
            self.in_chans = c;
        }
        if fixed.pretext.is_none() {
            self.heads = if file.contains_key("convTrans.weight") {
                SitHeads::Pretext
            } else {
                SitHeads::Classify
            };
        }
        if fixed.num_classes.is_none()
            && self.heads == SitHeads::Classify
            && let Some(&[k, _]) = shape_of(file, "rot_head.weight", 2)
        {
            self.num_classes = k;
        }
        if fixed.img_size.is_none()
            && let Some(&[_, t, _]) = shape_of(file, "pos_embed", 3)
            && let Some(n) = t.checked_sub(PREFIX_TOKENS)
            && n != self.backbone().num_patches()
            && let Some(side) = square_side(n)
        {
            self.img_size = [side * self.patch_size; 2];
        }
        Ok(())
    }

    /// A classifier built from a pretraining file leaves the pretext-only parts behind; the
    /// position grid is resampled with both prefix tokens kept.
    fn fit_weights(&self, file: &mut StateDict, resample: Resample) -> Result<()> {
        if self.heads == SitHeads::Classify {
            for key in PRETEXT_ONLY {
                file.remove(key);
            }
        }
        let Some(pos) = file.get_mut("pos_embed") else {
            return Ok(());
        };
        let &[_, t, d] = pos.shape.as_slice() else {
            return Ok(());
        };
        let grid = self.backbone().grid();
        let want = grid[0] * grid[1] + PREFIX_TOKENS;
        if t == want || d != self.embed_dim {
            return Ok(());
        }
        let Some(side) = t
            .checked_sub(PREFIX_TOKENS)
            .filter(|&n| n > 0)
            .and_then(square_side)
        else {
            return Err(VitError::Config(format!(
                "pos_embed has {t} tokens: not a square grid plus SiT's two tokens, so it cannot \
                 be resampled to {want}"
            )));
        };
        pos.values =
            crate::nn::resample_pos_embed(&pos.values, d, PREFIX_TOKENS, [side, side], grid, resample);
        pos.shape = vec![1, want, d];
        Ok(())
    }

    /// ImageNet mean and std, as the official code normalises.
    fn pretrained_mean_std(&self) -> (Vec<f32>, Vec<f32>) {
        let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        if self.in_chans == 3 {
            (mean.to_vec(), std.to_vec())
        } else {
            (vec![0.5; self.in_chans], vec![0.5; self.in_chans])
        }
    }
}

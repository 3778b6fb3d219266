//! CLIP (Radford et al. 2021) as open_clip builds it: a ViT image tower (patch projection
//! without bias, class token, `ln_pre`, pre-LN blocks, `ln_post` on the class token, a
//! projection matrix) and a causal text transformer (token and position embeddings, `ln_final`,
//! the hidden state at the end token, a projection matrix), compared by cosine similarity scaled
//! by a learned temperature.
//!
//! Parameter paths are open_clip's outside the blocks (`visual.conv1.weight`,
//! `visual.class_embedding`, `token_embedding.weight`, `text_projection`, `logit_scale`, …) and
//! timm's inside them (`transformer.resblocks.0.norm1.weight`, `attn.qkv`, `mlp.fc1`): the
//! blocks are the shared `nn::Block`, and `io::import` renames open_clip's `ln_1`,
//! `attn.in_proj_weight`, `mlp.c_fc`, … when it reads their files.

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::state::shape_of;
use super::{Adaptation, Architecture, Family, ImageText, Model, StateDict};
use crate::nn::{
    AttentionArgs, Block, BlockConfig, HeadOrder, LayerNorm, Mask, Projections, Resample, linear_init,
    normal_param,
};
use crate::text::tokenizer::VOCAB_SIZE;
use crate::{Result, VitError};

/// Channels per attention head in both towers (open_clip's `head_width`).
pub const HEAD_WIDTH: usize = 64;
/// The temperature CLIP starts from: `logit_scale = ln(1 / 0.07)`.
pub const INIT_LOGIT_SCALE: f64 = 2.659_260_036_932_778_4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    pub image_size: [usize; 2],
    pub patch_size: usize,
    pub in_chans: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    pub context_length: usize,
    pub vocab_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    /// Width of the shared image–text space.
    pub embed_dim: usize,
    pub vision: ClipVisionConfig,
    pub text: ClipTextConfig,
    /// OpenAI's `x·σ(1.702x)` in the MLPs instead of exact GELU (all OpenAI weights need it).
    pub quick_gelu: bool,
    /// LayerNorm epsilon (PyTorch's default 1e-5 in CLIP).
    pub norm_eps: f64,
}

impl ClipConfig {
    /// Towers with 64-channel heads, MLP ratio 4, a 77-token context and CLIP's vocabulary.
    pub fn new(embed_dim: usize, image: [usize; 4], text: [usize; 2]) -> Self {
        let [size, patch, width, layers] = image;
        let [text_width, text_layers] = text;
        Self {
            embed_dim,
            vision: ClipVisionConfig {
                image_size: [size, size],
                patch_size: patch,
                in_chans: 3,
                width,
                layers,
                heads: (width / HEAD_WIDTH).max(1),
                mlp_ratio: 4.0,
            },
            text: ClipTextConfig {
                context_length: crate::text::tokenizer::DEFAULT_CONTEXT,
                vocab_size: VOCAB_SIZE,
                width: text_width,
                layers: text_layers,
                heads: (text_width / HEAD_WIDTH).max(1),
                mlp_ratio: 4.0,
            },
            quick_gelu: false,
            norm_eps: 1e-5,
        }
    }

    pub fn with_context(mut self, context_length: usize) -> Self {
        self.text.context_length = context_length;
        self
    }

    pub fn with_quick_gelu(mut self) -> Self {
        self.quick_gelu = true;
        self
    }

    pub fn grid(&self) -> [usize; 2] {
        let p = self.vision.patch_size.max(1);
        [self.vision.image_size[0] / p, self.vision.image_size[1] / p]
    }

    fn block(&self, width: usize, heads: usize, mlp_ratio: f64) -> BlockConfig {
        BlockConfig {
            dim: width,
            num_heads: heads,
            mlp_ratio,
            qkv_bias: true,
            drop: 0.0,
            attn_drop: 0.0,
            drop_path: 0.0,
            norm_eps: self.norm_eps,
            projections: Projections::Fused,
            merge: HeadOrder::HeadMajor,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(VitError::Config(m));
        let v = &self.vision;
        let t = &self.text;
        if v.patch_size == 0
            || v.image_size
                .iter()
                .any(|&s| s == 0 || !s.is_multiple_of(v.patch_size))
        {
            return err(format!(
                "image size {}x{} is not divisible by the patch size {}",
                v.image_size[0], v.image_size[1], v.patch_size
            ));
        }
        for (tower, width, heads, layers) in [
            ("image", v.width, v.heads, v.layers),
            ("text", t.width, t.heads, t.layers),
        ] {
            if heads == 0 || layers == 0 || !width.is_multiple_of(heads) {
                return err(format!(
                    "the {tower} tower's width {width} must split into its {heads} heads, with at least one layer"
                ));
            }
        }
        if self.embed_dim == 0 || v.in_chans == 0 || t.context_length < 2 || t.vocab_size < 2 {
            return err(
                "embed_dim, in_chans and the vocabulary must be positive, the context at least 2 tokens"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> Result<Clip> {
        self.validate()?;
        let v = &self.vision;
        let t = &self.text;
        let [gh, gw] = self.grid();
        let scale = (v.width as f64).powf(-0.5);
        let fan_in = (v.in_chans * v.patch_size * v.patch_size) as f64;
        let bound = fan_in.powf(-0.5);
        let visual = ClipVisual {
            conv1: PatchProjection {
                weight: Initializer::Uniform {
                    min: -bound,
                    max: bound,
                }
                .init([v.width, v.in_chans, v.patch_size, v.patch_size], device),
            },
            class_embedding: normal_param([v.width], scale, device),
            positional_embedding: normal_param([gh * gw + 1, v.width], scale, device),
            ln_pre: LayerNorm::new(v.width, self.norm_eps, device),
            transformer: self.tower(v.width, v.heads, v.layers, v.mlp_ratio, None, device),
            ln_post: LayerNorm::new(v.width, self.norm_eps, device),
            proj: normal_param([v.width, self.embed_dim], scale, device),
            patch_size: v.patch_size,
        };
        let text_std = (t.width as f64).powf(-0.5);
        Ok(Clip {
            visual,
            token_embedding: EmbeddingConfig::new(t.vocab_size, t.width)
                .with_initializer(Initializer::Normal { mean: 0.0, std: 0.02 })
                .init(device),
            positional_embedding: normal_param([t.context_length, t.width], 0.01, device),
            transformer: self.tower(t.width, t.heads, t.layers, t.mlp_ratio, Some(t.layers), device),
            ln_final: LayerNorm::new(t.width, self.norm_eps, device),
            text_projection: normal_param([t.width, self.embed_dim], text_std, device),
            logit_scale: Initializer::Constant {
                value: INIT_LOGIT_SCALE,
            }
            .init([1], device),
        })
    }

    /// A stack of blocks. The text tower (`text_layers` given) is initialised as open_clip's
    /// `TextTransformer.init_parameters`; the image tower keeps PyTorch's module defaults
    /// (xavier-uniform fused projection, zero attention biases, uniform linear layers).
    fn tower(
        &self,
        width: usize,
        heads: usize,
        layers: usize,
        mlp_ratio: f64,
        text_layers: Option<usize>,
        device: &Device,
    ) -> Transformer {
        let config = self.block(width, heads, mlp_ratio);
        let w = width as f64;
        let hidden = (w * mlp_ratio).floor();
        let normal = |std: f64| Initializer::Normal { mean: 0.0, std };
        let uniform = |bound: f64| Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        let zeros = Some(Initializer::Zeros);
        let (qkv, proj, fc1, fc2) = match text_layers {
            Some(l) => {
                let proj_std = w.powf(-0.5) * (2.0 * l as f64).powf(-0.5);
                (
                    (normal(w.powf(-0.5)), zeros.clone()),
                    (normal(proj_std), zeros.clone()),
                    (normal((2.0 * w).powf(-0.5)), zeros.clone()),
                    (normal(proj_std), zeros),
                )
            }
            None => (
                (uniform((6.0 / (4.0 * w)).sqrt()), zeros.clone()),
                (uniform(w.powf(-0.5)), zeros),
                (uniform(w.powf(-0.5)), Some(uniform(w.powf(-0.5)))),
                (uniform(hidden.powf(-0.5)), Some(uniform(hidden.powf(-0.5)))),
            ),
        };
        let h = hidden as usize;
        let resblocks = (0..layers)
            .map(|_| {
                let mut block = Block::new(&config, device);
                block.mlp.quick_gelu = self.quick_gelu;
                block.attn.qkv = Some(linear_init(
                    width,
                    3 * width,
                    qkv.0.clone(),
                    qkv.1.clone(),
                    device,
                ));
                block.attn.proj = linear_init(width, width, proj.0.clone(), proj.1.clone(), device);
                block.mlp.fc1 = linear_init(width, h, fc1.0.clone(), fc1.1.clone(), device);
                block.mlp.fc2 = linear_init(h, width, fc2.0.clone(), fc2.1.clone(), device);
                block
            })
            .collect();
        Transformer { resblocks }
    }
}

/// open_clip's patch projection: a `Conv2d(k = s = patch)` without bias, `[width, C, P, P]`.
#[derive(Module, Debug)]
pub struct PatchProjection {
    pub weight: Param<Tensor<4>>,
}

/// A stack of pre-LN blocks (open_clip's `Transformer`, whose blocks are `resblocks`).
#[derive(Module, Debug)]
pub struct Transformer {
    pub resblocks: Vec<Block>,
}

#[derive(Module, Debug)]
pub struct ClipVisual {
    pub conv1: PatchProjection,
    pub class_embedding: Param<Tensor<1>>,
    pub positional_embedding: Param<Tensor<2>>,
    pub ln_pre: LayerNorm,
    pub transformer: Transformer,
    pub ln_post: LayerNorm,
    pub proj: Param<Tensor<2>>,
    pub patch_size: usize,
}

#[derive(Module, Debug)]
pub struct Clip {
    pub visual: ClipVisual,
    pub token_embedding: Embedding,
    pub positional_embedding: Param<Tensor<2>>,
    pub transformer: Transformer,
    pub ln_final: LayerNorm,
    pub text_projection: Param<Tensor<2>>,
    pub logit_scale: Param<Tensor<1>>,
}

impl ClipVisual {
    /// `[B, C, H, W]` → image features `[B, embed_dim]` (before normalisation).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let [b, c, h, w] = x.dims();
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let patches = x
            .reshape([b, c, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, gh * gw, c * p * p]);
        let weight = self.conv1.weight.val();
        let width = weight.dims()[0];
        let tokens =
            crate::kernels::linear_with(patches, weight.reshape([width, c * p * p]).transpose(), None);
        let class = self
            .class_embedding
            .val()
            .reshape([1, 1, width])
            .expand([b, 1, width]);
        let x = Tensor::cat(vec![class, tokens], 1) + self.positional_embedding.val().unsqueeze::<3>();
        let x = self.ln_pre.forward(x);
        // Only the class token is read: the last block runs for it alone.
        let (x, _) = crate::nn::run_blocks(&self.transformer.resblocks, x, Some(1), false);
        let pooled = self.ln_post.forward(x.narrow(1, 0, 1).reshape([b, width]));
        pooled.matmul(self.proj.val())
    }
}

impl Clip {
    /// CLIP's clamp after each optimizer step: `logit_scale` kept in `[0, max]`, the parameter
    /// (its id, whether it trains) otherwise unchanged.
    pub fn clamp_logit_scale(mut self, max: f64) -> Self {
        let trains = self.logit_scale.val().is_require_grad();
        self.logit_scale = self
            .logit_scale
            .map(|t| t.clamp(0.0, max).detach())
            .set_require_grad(trains);
        self
    }

    pub fn context_length(&self) -> usize {
        self.positional_embedding.lazy_shape()[0]
    }

    /// Token ids `[rows, T]` (row-major, `T ≤` the context) → text features `[rows, embed_dim]`
    /// (before normalisation): the hidden state at each row's largest id (the end token).
    pub fn encode_text_ids(&self, ids: &[u32], rows: usize) -> Result<Tensor<2>> {
        let vocab = self.token_embedding.weight.lazy_shape()[0];
        if rows == 0 || !ids.len().is_multiple_of(rows) {
            return Err(VitError::Config(format!(
                "{} token ids do not form {rows} rows",
                ids.len()
            )));
        }
        let t = ids.len() / rows;
        if t == 0 || t > self.context_length() {
            return Err(VitError::Config(format!(
                "rows of {t} tokens; the text tower takes 1 to {} (its context length)",
                self.context_length()
            )));
        }
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(VitError::Config(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let device = self.positional_embedding.lazy_device();
        // open_clip pools at `argmax(ids)`: the first position of the row's largest id.
        let eot: Vec<i64> = ids
            .chunks(t)
            .enumerate()
            .map(|(r, row)| {
                let max = row.iter().copied().max().unwrap_or(0);
                (r * t + row.iter().position(|&id| id == max).unwrap_or(0)) as i64
            })
            .collect();
        let ids: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [rows, t]), &device);
        let eot = Tensor::<1, Int>::from_data(TensorData::new(eot, [rows]), &device);
        let width = self.positional_embedding.lazy_shape()[1];
        let mut x = self.token_embedding.forward(ids)
            + self.positional_embedding.val().narrow(0, 0, t).unsqueeze::<3>();
        let args = AttentionArgs {
            mask: Some(Mask::causal(t, &device)),
            ..Default::default()
        };
        for block in &self.transformer.resblocks {
            x = block.forward(x, &args).0;
        }
        // LayerNorm acts per token: normalising the pooled rows alone is the same.
        let pooled = x.reshape([rows * t, width]).select(0, eot);
        Ok(self.ln_final.forward(pooled).matmul(self.text_projection.val()))
    }
}

/// Row-wise L2 normalisation.
pub fn normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powf_scalar(2.0).sum_dim(1).sqrt();
    x / norm
}

impl ImageText for Clip {
    fn encode_image(&self, x: Tensor<4>) -> Tensor<2> {
        self.visual.forward(x)
    }
    fn encode_text(&self, ids: &[u32], rows: usize) -> Result<Tensor<2>> {
        self.encode_text_ids(ids, rows)
    }
    fn logit_scale(&self) -> Tensor<1> {
        self.logit_scale.val()
    }
    fn context_length(&self) -> usize {
        Clip::context_length(self)
    }
}

impl From<Clip> for Model {
    fn from(m: Clip) -> Self {
        Model::Clip(m)
    }
}

impl Family for Clip {
    fn family_name(&self) -> &'static str {
        "clip"
    }
    fn image_text(&self) -> Option<&dyn ImageText> {
        Some(self)
    }
}

impl Architecture for ClipConfig {
    fn family(&self) -> &'static str {
        "clip"
    }
    fn validate(&self) -> Result<()> {
        ClipConfig::validate(self)
    }
    fn build(&self, device: &Device) -> Result<Model> {
        Ok(self.init(device)?.into())
    }
    fn img_size(&self) -> [usize; 2] {
        self.vision.image_size
    }
    fn in_chans(&self) -> usize {
        self.vision.in_chans
    }
    fn num_classes(&self) -> Option<usize> {
        None
    }
    fn adapt(&mut self, a: &Adaptation) -> Result<()> {
        a.refuse_pretext("clip")?;
        if a.num_classes.is_some() || a.global_pool.is_some() {
            return Err(VitError::Config(
                "a CLIP model has no classifier head: it trains with --task clip on image–caption data \
                 (captions:FILE or synthetic-captions) and classifies by comparing images with texts \
                 (zeroshot, predict --labels); classes and --global-pool do not apply"
                    .into(),
            ));
        }
        self.vision.in_chans = a.in_chans.unwrap_or(self.vision.in_chans);
        self.vision.image_size = a.img_size.unwrap_or(self.vision.image_size);
        self.norm_eps = a.norm_eps.unwrap_or(self.norm_eps);
        Ok(())
    }

    /// Both towers for one image and one full-context text: patch projection, per block
    /// qkv, attention, projection and MLP, and the two output projections.
    fn forward_macs(&self) -> f64 {
        let block =
            |n: f64, w: f64, ratio: f64| n * (4.0 * w * w + 2.0 * w * (w * ratio).floor()) + 2.0 * n * n * w;
        let v = &self.vision;
        let t = &self.text;
        let [gh, gw] = self.grid();
        let patches = (gh * gw) as f64;
        let vw = v.width as f64;
        let tw = t.width as f64;
        let e = self.embed_dim as f64;
        let image = patches * (v.in_chans * v.patch_size * v.patch_size) as f64 * vw
            + v.layers as f64 * block(patches + 1.0, vw, v.mlp_ratio)
            + vw * e;
        let text = t.layers as f64 * block(t.context_length as f64, tw, t.mlp_ratio) + tw * e;
        image + text
    }

    /// open_clip's: no decay on gains, biases, `logit_scale` (rank ≤ 1), the embeddings and the
    /// position tables.
    fn decay_exempt(&self, path: &str, rank: usize) -> bool {
        rank <= 1
            || matches!(
                path,
                "positional_embedding"
                    | "visual.positional_embedding"
                    | "visual.class_embedding"
                    | "token_embedding.weight"
            )
    }

    fn head_params(&self) -> Vec<String> {
        Vec::new()
    }

    /// Sizes from the file: channels and patch from `visual.conv1`, widths from the projections,
    /// the context from the text position table, the image size from a square grid.
    fn read_weights(&mut self, file: &StateDict, fixed: &Adaptation) -> Result<()> {
        if fixed.in_chans.is_none()
            && let Some(&[_, c, _, _]) = shape_of(file, "visual.conv1.weight", 4)
        {
            self.vision.in_chans = c;
        }
        if let Some(&[ctx, _]) = shape_of(file, "positional_embedding", 2) {
            self.text.context_length = ctx;
        }
        if let Some(&[vocab, _]) = shape_of(file, "token_embedding.weight", 2) {
            self.text.vocab_size = vocab;
        }
        if fixed.img_size.is_none()
            && let Some(&[t, _]) = shape_of(file, "visual.positional_embedding", 2)
            && let Some(side) = t.checked_sub(1).and_then(super::state::square_side)
        {
            self.vision.image_size = [side * self.vision.patch_size; 2];
        }
        Ok(())
    }

    /// Resamples the image tower's position grid to this image size (class row kept).
    fn fit_weights(&self, file: &mut StateDict, resample: Resample) -> Result<()> {
        let Some(pos) = file.get_mut("visual.positional_embedding") else {
            return Ok(());
        };
        let &[t, d] = pos.shape.as_slice() else {
            return Ok(());
        };
        let [gh, gw] = self.grid();
        let want = gh * gw + 1;
        if t == want || d != self.vision.width {
            return Ok(());
        }
        let Some(side) = t.checked_sub(1).and_then(super::state::square_side) else {
            return Err(VitError::Config(format!(
                "visual.positional_embedding has {t} rows: not a square grid plus a class token"
            )));
        };
        pos.values = crate::nn::resample_pos_embed(&pos.values, d, 1, [side, side], [gh, gw], resample);
        pos.shape = vec![want, d];
        Ok(())
    }

    /// OpenAI's CLIP normalisation (for 3 channels; one channel takes their mean).
    fn pretrained_mean_std(&self) -> (Vec<f32>, Vec<f32>) {
        let mean = [0.481_454_66, 0.457_827_5, 0.408_210_73_f32];
        let std = [0.268_629_54, 0.261_302_6, 0.275_777_1];
        if self.vision.in_chans == 3 {
            (mean.to_vec(), std.to_vec())
        } else {
            let m = mean.iter().sum::<f32>() / 3.0;
            let s = std.iter().sum::<f32>() / 3.0;
            (vec![m; self.vision.in_chans], vec![s; self.vision.in_chans])
        }
    }
}

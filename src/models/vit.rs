//! Vision Transformer (Dosovitskiy et al.), shaped and named as timm's `VisionTransformer`.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::state::{shape_of, square_side};
use super::{
    Adaptation, Architecture, Classifier, Family, GlobalAttention, Model, Pooled, SpatialMap, StateDict,
    TokenLayout,
};
pub use crate::nn::ConvWeights;
use crate::nn::{Block, BlockConfig, HeadOrder, LayerNorm, Projections, Resample, normal_param, timm_linear};
use crate::{Result, VitError};

pub use super::GlobalPool;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    pub img_size: [usize; 2],
    pub patch_size: usize,
    pub in_chans: usize,
    pub num_classes: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    pub global_pool: GlobalPool,
    pub drop_rate: f64,
    pub attn_drop_rate: f64,
    pub drop_path_rate: f64,
    pub norm_eps: f64,
}

impl VitConfig {
    /// A timm-default ViT (qkv bias, token pooling, LayerNorm eps 1e-6, mlp ratio 4).
    pub fn new(img: usize, patch: usize, dim: usize, depth: usize, heads: usize) -> Self {
        Self {
            img_size: [img, img],
            patch_size: patch,
            in_chans: 3,
            num_classes: 1000,
            embed_dim: dim,
            depth,
            num_heads: heads,
            mlp_ratio: 4.0,
            qkv_bias: true,
            global_pool: GlobalPool::Token,
            drop_rate: 0.0,
            attn_drop_rate: 0.0,
            drop_path_rate: 0.0,
            norm_eps: 1e-6,
        }
    }

    pub fn grid(&self) -> [usize; 2] {
        [
            self.img_size[0] / self.patch_size,
            self.img_size[1] / self.patch_size,
        ]
    }

    pub fn num_patches(&self) -> usize {
        let [gh, gw] = self.grid();
        gh * gw
    }

    /// Checks the shapes fit together; every user-supplied override passes through here.
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(VitError::Config(m));
        if self.patch_size == 0
            || self
                .img_size
                .iter()
                .any(|&s| s == 0 || !s.is_multiple_of(self.patch_size))
        {
            return err(format!(
                "image size {}x{} is not divisible by the patch size {}",
                self.img_size[0], self.img_size[1], self.patch_size
            ));
        }
        if self.num_heads == 0 || !self.embed_dim.is_multiple_of(self.num_heads) {
            return err(format!(
                "embed_dim {} is not divisible by num_heads {}",
                self.embed_dim, self.num_heads
            ));
        }
        if self.in_chans == 0 || self.num_classes == 0 || self.depth == 0 {
            return err("in_chans, num_classes and depth must be positive".into());
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

    pub fn init(&self, device: &Device) -> Result<Vit> {
        self.validate()?;
        let d = self.embed_dim;
        let n = self.num_patches();
        let blocks = (0..self.depth)
            .map(|i| {
                let dpr = if self.depth > 1 {
                    self.drop_path_rate * i as f64 / (self.depth - 1) as f64
                } else {
                    0.0
                };
                Block::new(
                    &BlockConfig {
                        dim: d,
                        num_heads: self.num_heads,
                        mlp_ratio: self.mlp_ratio,
                        qkv_bias: self.qkv_bias,
                        drop: self.drop_rate,
                        attn_drop: self.attn_drop_rate,
                        drop_path: dpr,
                        norm_eps: self.norm_eps,
                        projections: Projections::Fused,
                        merge: HeadOrder::HeadMajor,
                    },
                    device,
                )
            })
            .collect();
        let (norm, fc_norm) = match self.global_pool {
            GlobalPool::Token => (Some(LayerNorm::new(d, self.norm_eps, device)), None),
            GlobalPool::Avg => (None, Some(LayerNorm::new(d, self.norm_eps, device))),
        };
        Ok(Vit {
            patch_embed: PatchEmbed::new(self.in_chans, d, self.patch_size, device),
            cls_token: normal_param([1, 1, d], 1e-6, device),
            pos_embed: normal_param([1, n + 1, d], 0.02, device),
            pos_drop: DropoutConfig::new(self.drop_rate).init(),
            blocks,
            norm,
            fc_norm,
            head: timm_linear(d, self.num_classes, true, device),
            global_pool: self.global_pool,
            img_size: self.img_size,
        })
    }
}

/// Non-overlapping patches projected to `embed_dim`. The weight is timm's `Conv2d(k=P, s=P)`
/// kernel `[D, C, P, P]`; since the windows do not overlap the convolution is a reshape and
/// one matrix product, which is what runs.
#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub proj: ConvWeights,
    pub patch_size: usize,
}

impl PatchEmbed {
    fn new(in_chans: usize, dim: usize, patch: usize, device: &Device) -> Self {
        // PyTorch's Conv2d default init, which timm keeps: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        let bound = 1.0 / ((in_chans * patch * patch) as f64).sqrt();
        let init = Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        Self {
            proj: ConvWeights {
                weight: init.init([dim, in_chans, patch, patch], device),
                bias: init.init([dim], device),
            },
            patch_size: patch,
        }
    }

    /// `[B, C, H, W]` → `[B, N, D]`, patches in row-major (h, w) order.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<3> {
        let [b, c, h, w] = x.dims();
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let patches = x
            .reshape([b, c, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, gh * gw, c * p * p]);
        let weight = self.proj.weight.val();
        let [d, _, _, _] = weight.dims();
        let weight = weight.reshape([d, c * p * p]).transpose();
        crate::kernels::linear_with(patches, weight, Some(self.proj.bias.val()))
    }
}

#[derive(Module, Debug)]
pub struct Vit {
    pub patch_embed: PatchEmbed,
    pub cls_token: Param<Tensor<3>>,
    pub pos_embed: Param<Tensor<3>>,
    pub pos_drop: Dropout,
    pub blocks: Vec<Block>,
    pub norm: Option<LayerNorm>,
    pub fc_norm: Option<LayerNorm>,
    pub head: Linear,
    #[module(skip)]
    pub global_pool: GlobalPool,
    pub img_size: [usize; 2],
}

/// Everything one forward pass can hand back, for a caller who wants to look inside.
pub struct VitOutput {
    pub logits: Tensor<2>,
    /// Pooled features before the head `[B, D]`.
    pub pre_logits: Tensor<2>,
    /// Post-softmax attention of every block, `[B, heads, N+1, N+1]` each; empty unless asked for.
    pub attentions: Vec<Tensor<4>>,
}

impl Vit {
    /// Logits, pooled features and, when `keep_attention`, the attention of every block, from
    /// one pass (with the maps every block runs for every token; without, as [`Classifier`]).
    pub fn forward_detailed(&self, x: Tensor<4>, keep_attention: bool) -> VitOutput {
        let (tokens, attentions) = self.encode(x, keep_attention);
        let pre_logits = self.pool(tokens);
        VitOutput {
            logits: Classifier::head(self, pre_logits.clone()),
            pre_logits,
            attentions,
        }
    }

    /// The patch grid `[rows, columns]`.
    fn grid(&self) -> [usize; 2] {
        let p = self.patch_embed.patch_size;
        [self.img_size[0] / p, self.img_size[1] / p]
    }

    /// Token sequence after the last block (before the final norm; only the class token when
    /// class-token pooling needs nothing else), and optionally every block's attention.
    fn encode(&self, x: Tensor<4>, keep_attention: bool) -> (Tensor<3>, Vec<Tensor<4>>) {
        let x = self.patch_embed.forward(x);
        let [b, _, d] = x.dims();
        let cls = self.cls_token.val().expand([b, 1, d]);
        let x = self
            .pos_drop
            .forward(Tensor::cat(vec![cls, x], 1) + self.pos_embed.val());
        // Class-token pooling reads one token of the last block's output.
        let pooled = (self.global_pool == GlobalPool::Token).then_some(1);
        crate::nn::run_blocks(&self.blocks, x, pooled, keep_attention)
    }

    fn pool(&self, x: Tensor<3>) -> Tensor<2> {
        let [b, n, d] = x.dims();
        match self.global_pool {
            GlobalPool::Token => {
                let x = match &self.norm {
                    Some(norm) => norm.forward(x),
                    None => x,
                };
                x.narrow(1, 0, 1).reshape([b, d])
            }
            GlobalPool::Avg => {
                let x = x.narrow(1, 1, n - 1).mean_dim(1).reshape([b, d]);
                match &self.fc_norm {
                    Some(norm) => norm.forward(x),
                    None => x,
                }
            }
        }
    }
}

impl From<Vit> for Model {
    fn from(m: Vit) -> Self {
        Model::Vit(m)
    }
}

impl Family for Vit {
    fn family_name(&self) -> &'static str {
        "vit"
    }
    fn classifier(&self) -> Option<&dyn Classifier> {
        Some(self)
    }
    fn global_attention(&self) -> Option<&dyn GlobalAttention> {
        Some(self)
    }
    /// Average pooling reads the patch tokens as a map; the class token is not one.
    fn spatial_map(&self) -> Option<&dyn SpatialMap> {
        (self.global_pool == GlobalPool::Avg).then_some(self as &dyn SpatialMap)
    }
}

impl Classifier for Vit {
    fn features(&self, x: Tensor<4>) -> Tensor<2> {
        self.pool(self.encode(x, false).0)
    }
    fn head(&self, features: Tensor<2>) -> Tensor<2> {
        crate::kernels::linear(features, &self.head)
    }
    fn input_size(&self) -> [usize; 2] {
        self.img_size
    }
}

impl GlobalAttention for Vit {
    fn layout(&self) -> TokenLayout {
        TokenLayout {
            prefix: 1,
            grid: self.grid(),
            patch_size: self.patch_embed.patch_size,
            depth: self.blocks.len(),
            heads: self.blocks.first().map_or(0, |b| b.attn.num_heads),
            pooled: match self.global_pool {
                GlobalPool::Token => Pooled::Tokens(vec![0]),
                GlobalPool::Avg => Pooled::Patches,
            },
        }
    }
    fn attention_maps(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        self.encode(x, true).1
    }
    fn position_embedding(&self) -> Option<Tensor<3>> {
        Some(self.pos_embed.val())
    }
    fn patch_filters(&self) -> Option<Tensor<4>> {
        Some(self.patch_embed.proj.weight.val())
    }
}

impl SpatialMap for Vit {
    /// The patch tokens after the last block, `[B, D, gh, gw]`.
    fn feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        let tokens = self.encode(x, false).0;
        let [b, n, d] = tokens.dims();
        let [gh, gw] = self.grid();
        tokens.narrow(1, 1, n - 1).swap_dims(1, 2).reshape([b, d, gh, gw])
    }
    fn classify_map(&self, map: Tensor<4>) -> Tensor<2> {
        let [b, d, _, _] = map.dims();
        let pooled = map.mean_dim(3).mean_dim(2).reshape([b, d]);
        let pooled = match &self.fc_norm {
            Some(norm) => norm.forward(pooled),
            None => pooled,
        };
        self.head(pooled)
    }
}

impl Architecture for VitConfig {
    fn family(&self) -> &'static str {
        "vit"
    }
    fn validate(&self) -> Result<()> {
        VitConfig::validate(self)
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
        Some(self.num_classes)
    }
    fn adapt(&mut self, a: &Adaptation) -> Result<()> {
        a.refuse_pretext("vit")?;
        self.num_classes = a.num_classes.unwrap_or(self.num_classes);
        self.in_chans = a.in_chans.unwrap_or(self.in_chans);
        self.img_size = a.img_size.unwrap_or(self.img_size);
        self.global_pool = a.global_pool.unwrap_or(self.global_pool);
        self.drop_path_rate = a.drop_path.unwrap_or(self.drop_path_rate);
        self.norm_eps = a.norm_eps.unwrap_or(self.norm_eps);
        Ok(())
    }

    /// Patch embedding, qkv, attention scores and their product with v, projection, MLP, head.
    fn forward_macs(&self) -> f64 {
        let d = self.embed_dim as f64;
        let patches = self.num_patches() as f64;
        let tokens = patches + 1.0;
        let hidden = (self.embed_dim as f64 * self.mlp_ratio).floor();
        let patch_embed = patches * (self.in_chans * self.patch_size * self.patch_size) as f64 * d;
        let per_block = tokens * (3.0 * d * d + d * d + 2.0 * d * hidden) + 2.0 * tokens * tokens * d;
        patch_embed + self.depth as f64 * per_block + d * self.num_classes as f64
    }

    /// timm's `no_weight_decay`: norms, biases, the class token and the position embedding.
    fn decay_exempt(&self, path: &str, rank: usize) -> bool {
        rank <= 1 || matches!(path, "cls_token" | "pos_embed")
    }

    fn head_params(&self) -> Vec<String> {
        vec!["head.weight".into(), "head.bias".into()]
    }

    /// Input channels from the patch embedding, classes from the head, the pooling from which
    /// final norm is present (`fc_norm`: average pooling, `norm`: class token), and the image
    /// size from a square position grid of another size than the preset's.
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
        if fixed.global_pool.is_none() {
            match (
                file.contains_key("fc_norm.weight"),
                file.contains_key("norm.weight"),
            ) {
                (true, false) => self.global_pool = GlobalPool::Avg,
                (false, true) => self.global_pool = GlobalPool::Token,
                _ => {}
            }
        }
        if fixed.img_size.is_none()
            && let Some(&[_, t, _]) = shape_of(file, "pos_embed", 3)
            && let Some(n) = t.checked_sub(1)
            && n != self.num_patches()
            && let Some(side) = square_side(n)
        {
            self.img_size = [side * self.patch_size; 2];
        }
        Ok(())
    }

    /// Resamples `pos_embed` to this configuration's grid (the class-token row kept).
    fn fit_weights(&self, file: &mut StateDict, resample: Resample) -> Result<()> {
        let Some(pos) = file.get_mut("pos_embed") else {
            return Ok(());
        };
        let &[_, t, d] = pos.shape.as_slice() else {
            return Ok(()); // reported as a shape mismatch when loaded
        };
        let want = self.num_patches() + 1;
        if t == want || d != self.embed_dim {
            return Ok(());
        }
        let bad = |m: String| Err(VitError::Config(m));
        let Some(n) = t.checked_sub(1).filter(|&n| n > 0) else {
            return bad(format!(
                "pos_embed has {t} tokens: no patch positions to resample"
            ));
        };
        let Some(side) = square_side(n) else {
            return bad(format!(
                "pos_embed has {t} tokens: not a square grid plus a class token, so it cannot \
                 be resampled to {want}"
            ));
        };
        pos.values = crate::nn::resample_pos_embed(&pos.values, d, 1, [side, side], self.grid(), resample);
        pos.shape = vec![1, want, d];
        Ok(())
    }

    /// The Google/timm ViT convention: mean = std = 0.5.
    fn pretrained_mean_std(&self) -> (Vec<f32>, Vec<f32>) {
        (vec![0.5; self.in_chans], vec![0.5; self.in_chans])
    }
}

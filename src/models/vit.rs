//! Vision Transformer (Dosovitskiy et al.), shaped and named as timm's `VisionTransformer`.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::nn::{Block, BlockConfig, LayerNorm, normal_param, timm_linear};
use crate::{Result, VitError};

/// How the token sequence becomes one feature vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GlobalPool {
    /// The class token (`x[:, 0]`), after the final norm.
    Token,
    /// The mean of the patch tokens, then `fc_norm`.
    Avg,
}

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

/// A convolution's parameters under timm's names (`weight`, `bias`).
#[derive(Module, Debug)]
pub struct ConvWeights {
    pub weight: Param<Tensor<4>>,
    pub bias: Param<Tensor<1>>,
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

/// What a forward pass hands back when the caller wants to look inside.
pub struct VitOutput {
    pub logits: Tensor<2>,
    /// Pooled features before the head `[B, D]`.
    pub pre_logits: Tensor<2>,
    /// Post-softmax attention of every block, `[B, heads, N+1, N+1]` each; empty unless asked for.
    pub attentions: Vec<Tensor<4>>,
}

impl Vit {
    /// Token sequence after the last block (before the final norm; only the class token when
    /// class-token pooling needs nothing else), and optionally every block's attention.
    fn encode(&self, x: Tensor<4>, keep_attention: bool) -> (Tensor<3>, Vec<Tensor<4>>) {
        let x = self.patch_embed.forward(x);
        let [b, _, d] = x.dims();
        let cls = self.cls_token.val().expand([b, 1, d]);
        let mut x = self
            .pos_drop
            .forward(Tensor::cat(vec![cls, x], 1) + self.pos_embed.val());
        let mut attentions = Vec::new();
        // Class-token pooling reads one token of the last block's output: unless the caller
        // wants every attention map, that block runs for the class token alone (its keys and
        // values still come from all tokens). The logits are the same; about three quarters of
        // one block's work is not done.
        let first_token_only = self.global_pool == GlobalPool::Token
            && !keep_attention
            && crate::kernels::enabled(crate::kernels::Fused::ClassTokenOnly);
        let depth = self.blocks.len();
        for (i, block) in self.blocks.iter().enumerate() {
            if first_token_only && i + 1 == depth {
                x = block.forward_first_token(x);
                break;
            }
            let (y, attn) = block.forward(x, keep_attention);
            x = y;
            attentions.extend(attn);
        }
        (x, attentions)
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

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let (tokens, _) = self.encode(x, false);
        crate::kernels::linear(self.pool(tokens), &self.head)
    }

    /// Logits, pooled features and, when `keep_attention`, the attention of every block.
    pub fn forward_detailed(&self, x: Tensor<4>, keep_attention: bool) -> VitOutput {
        let (tokens, attentions) = self.encode(x, keep_attention);
        let pre_logits = self.pool(tokens);
        VitOutput {
            logits: crate::kernels::linear(pre_logits.clone(), &self.head),
            pre_logits,
            attentions,
        }
    }
}

impl super::ImageClassifier for Vit {
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        Vit::forward(self, x)
    }

    fn input_size(&self) -> [usize; 2] {
        self.img_size
    }
}

//! Model families and the preset registry. A new family is one file here, a variant of
//! [`ModelConfig`] and its entries in [`PRESETS`].

pub mod vit;

use burn::module::Module;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

pub use vit::{GlobalPool, Vit, VitConfig};

use crate::{Result, VitError};

/// What the training loop, `eval` and `predict` need from any classifier.
pub trait ImageClassifier: Module {
    /// `[B, C, H, W]` → logits `[B, classes]`.
    fn forward(&self, x: Tensor<4>) -> Tensor<2>;
    /// The input height and width the model takes.
    fn input_size(&self) -> [usize; 2];
}

/// A model's architecture, as saved in a checkpoint's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "lowercase")]
pub enum ModelConfig {
    Vit(VitConfig),
}

impl ModelConfig {
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Vit(c) => c.validate(),
        }
    }
    pub fn num_classes(&self) -> usize {
        match self {
            ModelConfig::Vit(c) => c.num_classes,
        }
    }
    pub fn in_chans(&self) -> usize {
        match self {
            ModelConfig::Vit(c) => c.in_chans,
        }
    }
    pub fn img_size(&self) -> [usize; 2] {
        match self {
            ModelConfig::Vit(c) => c.img_size,
        }
    }
    /// The same architecture with another head size, input channel count or input size, as
    /// timm's `create_model(name, num_classes=…, in_chans=…, img_size=…)`.
    pub fn adapted(
        &self,
        num_classes: Option<usize>,
        in_chans: Option<usize>,
        img_size: Option<[usize; 2]>,
    ) -> Result<Self> {
        let mut out = self.clone();
        match &mut out {
            ModelConfig::Vit(c) => {
                if let Some(n) = num_classes {
                    c.num_classes = n;
                }
                if let Some(ch) = in_chans {
                    c.in_chans = ch;
                }
                if let Some(s) = img_size {
                    c.img_size = s;
                }
            }
        }
        out.validate()?;
        Ok(out)
    }
}

/// A named architecture, like a timm model name.
pub struct Preset {
    pub name: &'static str,
    pub description: &'static str,
    pub config: fn() -> ModelConfig,
}

fn vit(img: usize, patch: usize, dim: usize, depth: usize, heads: usize, classes: usize) -> VitConfig {
    VitConfig {
        num_classes: classes,
        ..VitConfig::new(img, patch, dim, depth, heads)
    }
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "vit_tiny_patch16_224",
        description: "ViT-Ti/16 (timm), 224x224, 1000 classes",
        config: || ModelConfig::Vit(vit(224, 16, 192, 12, 3, 1000)),
    },
    Preset {
        name: "vit_small_patch16_224",
        description: "ViT-S/16 (timm), 224x224, 1000 classes",
        config: || ModelConfig::Vit(vit(224, 16, 384, 12, 6, 1000)),
    },
    Preset {
        name: "vit_base_patch16_224",
        description: "ViT-B/16 (timm), 224x224, 1000 classes",
        config: || ModelConfig::Vit(vit(224, 16, 768, 12, 12, 1000)),
    },
    Preset {
        name: "vit_base_patch32_224",
        description: "ViT-B/32 (timm), 224x224, 1000 classes",
        config: || ModelConfig::Vit(vit(224, 32, 768, 12, 12, 1000)),
    },
    Preset {
        name: "vit_large_patch16_224",
        description: "ViT-L/16 (timm), 224x224, 1000 classes",
        config: || ModelConfig::Vit(vit(224, 16, 1024, 24, 16, 1000)),
    },
    Preset {
        name: "vit_tiny_patch4_32",
        description: "ViT-Ti with 4x4 patches for 32x32 images (CIFAR)",
        config: || ModelConfig::Vit(vit(32, 4, 192, 12, 3, 10)),
    },
    Preset {
        name: "vit_tiny_patch4_28",
        description: "ViT-Ti with 4x4 patches for 28x28 images (Fashion-MNIST)",
        config: || ModelConfig::Vit(vit(28, 4, 192, 12, 3, 10)),
    },
    Preset {
        name: "vit_micro_patch4_28",
        description: "dim 128, depth 6, 4 heads, 4x4 patches on 28x28",
        config: || ModelConfig::Vit(vit(28, 4, 128, 6, 4, 10)),
    },
    Preset {
        name: "vit_micro_patch7_28",
        description: "dim 128, depth 6, 4 heads, 7x7 patches on 28x28",
        config: || ModelConfig::Vit(vit(28, 7, 128, 6, 4, 10)),
    },
    Preset {
        name: "vit_mini_patch4_28",
        description: "dim 64, depth 6, 4 heads, 4x4 patches on 28x28: the Fashion-MNIST preset",
        config: || ModelConfig::Vit(vit(28, 4, 64, 6, 4, 10)),
    },
    Preset {
        name: "vit_nano_patch8_32",
        description: "dim 64, depth 4, 2 heads, 8x8 patches on 32x32: the built-in demo preset",
        config: || ModelConfig::Vit(vit(32, 8, 64, 4, 2, 10)),
    },
];

pub fn preset_names() -> String {
    PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
}

/// The configuration of the preset `name`, or an error listing the valid names.
pub fn preset(name: &str) -> Result<ModelConfig> {
    PRESETS
        .iter()
        .find(|p| p.name == name)
        .map(|p| (p.config)())
        .ok_or_else(|| VitError::UnknownModel {
            name: name.to_string(),
            valid: preset_names(),
        })
}

/// Parameter count computed from the configuration alone (no allocation), as
/// `sum(p.numel() for p in model.parameters())` in PyTorch.
pub fn param_count(config: &ModelConfig) -> usize {
    match config {
        ModelConfig::Vit(c) => {
            let d = c.embed_dim;
            let hidden = (d as f64 * c.mlp_ratio) as usize;
            let p = c.patch_size;
            let embed = d * c.in_chans * p * p + d + d + (c.num_patches() + 1) * d;
            let qkv = 3 * d * d + if c.qkv_bias { 3 * d } else { 0 };
            let block = 2 * d + qkv + d * d + d + 2 * d + d * hidden + hidden + hidden * d + d;
            embed + c.depth * block + 2 * d + d * c.num_classes + c.num_classes
        }
    }
}

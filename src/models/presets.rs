//! The preset registry: named architectures, like timm's model names. Each family adds its
//! entries here.

use super::{ModelConfig, VitConfig};
use crate::{Result, VitError};

/// A named architecture.
pub struct Preset {
    pub name: &'static str,
    pub description: &'static str,
    pub config: fn() -> ModelConfig,
}

fn vit(img: usize, patch: usize, dim: usize, depth: usize, heads: usize, classes: usize) -> ModelConfig {
    ModelConfig::Vit(VitConfig {
        num_classes: classes,
        ..VitConfig::new(img, patch, dim, depth, heads)
    })
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "vit_tiny_patch16_224",
        description: "ViT-Ti/16 (timm), 224x224, 1000 classes",
        config: || vit(224, 16, 192, 12, 3, 1000),
    },
    Preset {
        name: "vit_small_patch16_224",
        description: "ViT-S/16 (timm), 224x224, 1000 classes",
        config: || vit(224, 16, 384, 12, 6, 1000),
    },
    Preset {
        name: "vit_base_patch16_224",
        description: "ViT-B/16 (timm), 224x224, 1000 classes",
        config: || vit(224, 16, 768, 12, 12, 1000),
    },
    Preset {
        name: "vit_base_patch32_224",
        description: "ViT-B/32 (timm), 224x224, 1000 classes",
        config: || vit(224, 32, 768, 12, 12, 1000),
    },
    Preset {
        name: "vit_large_patch16_224",
        description: "ViT-L/16 (timm), 224x224, 1000 classes",
        config: || vit(224, 16, 1024, 24, 16, 1000),
    },
    Preset {
        name: "vit_tiny_patch4_32",
        description: "ViT-Ti with 4x4 patches for 32x32 images (CIFAR)",
        config: || vit(32, 4, 192, 12, 3, 10),
    },
    Preset {
        name: "vit_tiny_patch4_28",
        description: "ViT-Ti with 4x4 patches for 28x28 images (Fashion-MNIST)",
        config: || vit(28, 4, 192, 12, 3, 10),
    },
    Preset {
        name: "vit_micro_patch4_28",
        description: "dim 128, depth 6, 4 heads, 4x4 patches on 28x28",
        config: || vit(28, 4, 128, 6, 4, 10),
    },
    Preset {
        name: "vit_micro_patch7_28",
        description: "dim 128, depth 6, 4 heads, 7x7 patches on 28x28",
        config: || vit(28, 7, 128, 6, 4, 10),
    },
    Preset {
        name: "vit_mini_patch4_28",
        description: "dim 64, depth 6, 4 heads, 4x4 patches on 28x28: the Fashion-MNIST preset",
        config: || vit(28, 4, 64, 6, 4, 10),
    },
    Preset {
        name: "vit_nano_patch8_32",
        description: "dim 64, depth 4, 2 heads, 8x8 patches on 32x32: the built-in demo preset",
        config: || vit(32, 8, 64, 4, 2, 10),
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

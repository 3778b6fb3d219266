//! The preset registry: named architectures, like timm's model names. Each family adds its
//! entries here.

use super::gan::{ConvGenConfig, GeneratorConfig};
use super::nest::{NestAttention, PoolPadding};
use super::nest_gen::NestGenConfig;
use super::{ClipConfig, CmtConfig, GanConfig, ModelConfig, NestConfig, SitConfig, VitConfig};
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

/// A SiT backbone of timm ViT shapes, as a classifier (pretraining switches to its pretext
/// heads).
fn sit(img: usize, patch: usize, dim: usize, depth: usize, heads: usize, classes: usize) -> ModelConfig {
    ModelConfig::Sit(SitConfig::new(img, patch, dim, depth, heads, classes))
}

/// A CLIP of two towers: image `[size, patch, width, layers]`, text `[width, layers]`, 64-channel
/// heads, into an `embed`-wide space.
fn clip(embed: usize, image: [usize; 4], text: [usize; 2]) -> ClipConfig {
    ClipConfig::new(embed, image, text)
}

/// A NesT generator of `block`×`block` blocks with `dims` per level (top first), one
/// transformer layer per level, against the discriminator of widths `disc`.
fn nest_gen(
    block: usize,
    dims: [usize; 3],
    heads: [usize; 3],
    disc: [usize; 3],
    chans: usize,
) -> ModelConfig {
    let generator = GeneratorConfig::Nest(NestGenConfig {
        block_size: block,
        dims: dims.to_vec(),
        depths: vec![1; 3],
        heads: heads.to_vec(),
        mlp_ratio: 4.0,
    });
    ModelConfig::Gan(GanConfig {
        in_chans: chans,
        ..GanConfig::new(generator, &disc)
    })
}

/// The convolutional baseline: a `base`×`base` map of `dims[0]` channels doubled twice.
fn dcgan(base: usize, dims: [usize; 3], disc: [usize; 3], chans: usize) -> ModelConfig {
    let generator = GeneratorConfig::Conv(ConvGenConfig {
        base,
        dims: dims.to_vec(),
    });
    ModelConfig::Gan(GanConfig {
        in_chans: chans,
        ..GanConfig::new(generator, &disc)
    })
}

/// An official CMT model (`cmt.py`'s `cmt_ti`, `cmt_xs`, `cmt_s`, `cmt_b`) at its README input
/// size, 1000 classes.
fn cmt(
    img: usize,
    dims: [usize; 4],
    stem: usize,
    depths: [usize; 4],
    mlp: f64,
    head_drop: f64,
) -> ModelConfig {
    ModelConfig::Cmt(CmtConfig {
        embed_dims: dims,
        stem_channels: stem,
        depths,
        mlp_ratios: [mlp; 4],
        head_drop,
        ..CmtConfig::tiny(img)
    })
}

/// A CMT for 32×32 inputs (CIFAR; Fashion-MNIST resized from 28): stem stride 1, so the
/// stages see 16, 8, 4 and 2 pixels a side, and reductions 4, 2, 1, 1 so keys and values keep
/// 16, 16, 16 and 4 tokens.
fn cmt_small_image(dims: [usize; 4], depths: [usize; 4], fc_dim: usize) -> ModelConfig {
    ModelConfig::Cmt(CmtConfig {
        embed_dims: dims,
        depths,
        stem_stride: 1,
        fc_dim,
        sr_ratios: [4, 2, 1, 1],
        num_classes: 10,
        ..CmtConfig::tiny(32)
    })
}

/// timm's ImageNet NesT: 224x224, 4x4 patches, three levels of 14x14-token blocks.
fn nest_imagenet(
    dims: [usize; 3],
    heads: [usize; 3],
    depths: [usize; 3],
    padding: PoolPadding,
    drop_path: f64,
) -> ModelConfig {
    ModelConfig::Nest(NestConfig {
        padding,
        drop_path_rate: drop_path,
        ..NestConfig::new(224, 4, &dims, &heads, &depths)
    })
}

/// The official CIFAR NesT: one pixel per token, four levels of 4x4-token blocks, constant
/// width, multi-query attention, SAME pooling as the JAX code, stochastic depth 0.1.
fn nest_cifar(dim: usize, heads: usize) -> ModelConfig {
    ModelConfig::Nest(NestConfig {
        num_classes: 10,
        attention: NestAttention::MultiQuery,
        padding: PoolPadding::Same,
        drop_path_rate: 0.1,
        ..NestConfig::new(32, 1, &[dim; 4], &[heads; 4], &[3; 4])
    })
}

/// The Fashion-MNIST preset: 32x32 (28 resized), 2x2 patches, so a 16x16 token grid in three
/// levels of 4x4-token blocks (16, 4, 1 blocks); widths doubling per level as the ImageNet
/// models; SAME pooling.
fn nest_mini_32() -> ModelConfig {
    ModelConfig::Nest(NestConfig {
        num_classes: 10,
        padding: PoolPadding::Same,
        drop_path_rate: 0.1,
        ..NestConfig::new(32, 2, &[64, 128, 256], &[2, 4, 8], &[2, 2, 2])
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
        name: "cmt_ti",
        description: "CMT-Ti (official cmt.py), 160x160, 1000 classes",
        config: || cmt(160, [46, 92, 184, 368], 16, [2, 2, 10, 2], 3.6, 0.1),
    },
    Preset {
        name: "cmt_xs",
        description: "CMT-XS (official cmt.py), 192x192, 1000 classes",
        config: || cmt(192, [52, 104, 208, 416], 16, [3, 3, 12, 3], 3.77, 0.1),
    },
    Preset {
        name: "cmt_s",
        description: "CMT-S (official cmt.py), 224x224, 1000 classes",
        config: || cmt(224, [64, 128, 256, 512], 32, [3, 3, 16, 3], 4.0, 0.1),
    },
    Preset {
        name: "cmt_b",
        description: "CMT-B (official cmt.py), 256x256, 1000 classes",
        config: || cmt(256, [76, 152, 304, 608], 38, [4, 4, 20, 4], 4.0, 0.3),
    },
    Preset {
        name: "cmt_mini_32",
        description: "CMT for 32x32 (stem stride 1), widths 32-256, depths 1-1-3-1: the Fashion-MNIST preset",
        config: || cmt_small_image([32, 64, 128, 256], [1, 1, 3, 1], 512),
    },
    Preset {
        name: "cmt_ti_32",
        description: "CMT-Ti's widths and depths for 32x32 (stem stride 1), 10 classes",
        config: || cmt_small_image([46, 92, 184, 368], [2, 2, 10, 2], 1280),
    },
    Preset {
        name: "nest_tiny",
        description: "NesT-T (timm), 224x224, 1000 classes, symmetric max-pool padding",
        config: || nest_imagenet([96, 192, 384], [3, 6, 12], [2, 2, 8], PoolPadding::Symmetric, 0.2),
    },
    Preset {
        name: "nest_small",
        description: "NesT-S (timm), 224x224, 1000 classes",
        config: || {
            nest_imagenet(
                [96, 192, 384],
                [3, 6, 12],
                [2, 2, 20],
                PoolPadding::Symmetric,
                0.3,
            )
        },
    },
    Preset {
        name: "nest_base",
        description: "NesT-B (timm), 224x224, 1000 classes",
        config: || {
            nest_imagenet(
                [128, 256, 512],
                [4, 8, 16],
                [2, 2, 20],
                PoolPadding::Symmetric,
                0.5,
            )
        },
    },
    Preset {
        name: "nest_tiny_jx",
        description: "NesT-T with TF-SAME pooling (timm's port of the official JAX weights)",
        config: || nest_imagenet([96, 192, 384], [3, 6, 12], [2, 2, 8], PoolPadding::Same, 0.2),
    },
    Preset {
        name: "nest_small_jx",
        description: "NesT-S with TF-SAME pooling (official JAX weights)",
        config: || nest_imagenet([96, 192, 384], [3, 6, 12], [2, 2, 20], PoolPadding::Same, 0.3),
    },
    Preset {
        name: "nest_base_jx",
        description: "NesT-B with TF-SAME pooling (official JAX weights)",
        config: || nest_imagenet([128, 256, 512], [4, 8, 16], [2, 2, 20], PoolPadding::Same, 0.5),
    },
    Preset {
        name: "nest_tiny_s16_32",
        description: "official CIFAR NesT-T: 1x1 patches, 4 levels of 4x4 blocks, width 192, multi-query",
        config: || nest_cifar(192, 3),
    },
    Preset {
        name: "nest_small_s16_32",
        description: "official CIFAR NesT-S: width 384, 6 heads, multi-query",
        config: || nest_cifar(384, 6),
    },
    Preset {
        name: "nest_base_s16_32",
        description: "official CIFAR NesT-B: width 768, 12 heads, multi-query",
        config: || nest_cifar(768, 12),
    },
    Preset {
        name: "nest_mini_32",
        description: "NesT for 32x32: 2x2 patches, 3 levels of 4x4-token blocks, widths 64-128-256: the Fashion-MNIST preset",
        config: nest_mini_32,
    },
    Preset {
        name: "sit_tiny_patch16_224",
        description: "SiT with ViT-Ti shapes (dim 192, depth 12, 3 heads), 224x224, two prefix tokens",
        config: || sit(224, 16, 192, 12, 3, 1000),
    },
    Preset {
        name: "sit_small_patch16_224",
        description: "SiT with ViT-S shapes (dim 384, depth 12, 6 heads), 224x224",
        config: || sit(224, 16, 384, 12, 6, 1000),
    },
    Preset {
        name: "sit_base_patch16_224",
        description: "SiT-B/16 (the official SiT_base_patch16_224), 224x224",
        config: || sit(224, 16, 768, 12, 12, 1000),
    },
    Preset {
        name: "sit_tiny_patch4_32",
        description: "SiT with ViT-Ti shapes and 4x4 patches for 32x32 images (CIFAR)",
        config: || sit(32, 4, 192, 12, 3, 10),
    },
    Preset {
        name: "sit_tiny_patch4_28",
        description: "SiT with ViT-Ti shapes and 4x4 patches for 28x28 images (Fashion-MNIST)",
        config: || sit(28, 4, 192, 12, 3, 10),
    },
    Preset {
        name: "sit_mini_patch4_28",
        description: "SiT, dim 96, depth 6, 4 heads, 4x4 patches on 28x28: the Fashion-MNIST pretraining preset",
        config: || sit(28, 4, 96, 6, 4, 10),
    },
    Preset {
        name: "sit_wide_patch7_28",
        description: "SiT, dim 192, depth 6, 3 heads, 7x7 patches on 28x28: twice the mini preset's width at 1.3x its cost",
        config: || sit(28, 7, 192, 6, 3, 10),
    },
    Preset {
        name: "sit_mini_patch4_32",
        description: "SiT, dim 96, depth 6, 4 heads, 4x4 patches on 32x32",
        config: || sit(32, 4, 96, 6, 4, 10),
    },
    Preset {
        name: "sit_nano_patch8_32",
        description: "SiT, dim 64, depth 4, 2 heads, 8x8 patches on 32x32: the built-in demo preset",
        config: || sit(32, 8, 64, 4, 2, 10),
    },
    Preset {
        name: "vit_nano_patch8_32",
        description: "dim 64, depth 4, 2 heads, 8x8 patches on 32x32: the built-in demo preset",
        config: || vit(32, 8, 64, 4, 2, 10),
    },
    Preset {
        name: "clip_vit_b32",
        description: "CLIP ViT-B/32 (open_clip ViT-B-32): 224x224 image tower, 77-token text tower, GELU",
        config: || ModelConfig::Clip(clip(512, [224, 32, 768, 12], [512, 12])),
    },
    Preset {
        name: "clip_vit_b32_quickgelu",
        description: "CLIP ViT-B/32 with QuickGELU (OpenAI's weights; open_clip ViT-B-32-quickgelu)",
        config: || ModelConfig::Clip(clip(512, [224, 32, 768, 12], [512, 12]).with_quick_gelu()),
    },
    Preset {
        name: "clip_vit_b16",
        description: "CLIP ViT-B/16 (open_clip ViT-B-16): 224x224 image tower, 77-token text tower, GELU",
        config: || ModelConfig::Clip(clip(512, [224, 16, 768, 12], [512, 12])),
    },
    Preset {
        name: "clip_tiny_32",
        description: "CLIP for 32x32 images: image tower width 128, depth 4, 4x4 patches; text width 128, depth 4, 32 tokens",
        config: || ModelConfig::Clip(clip(128, [32, 4, 128, 4], [128, 4]).with_context(32)),
    },
    Preset {
        name: "clip_tiny_64",
        description: "CLIP for 64x64 images (emoji): image tower width 128, depth 4, 8x8 patches; text width 128, depth 4, 32 tokens",
        config: || ModelConfig::Clip(clip(128, [64, 8, 128, 4], [128, 4]).with_context(32)),
    },
    Preset {
        name: "nest_gen_28",
        description: "NesT generator for 28x28 (Fashion-MNIST): 7x7-token blocks, 1 -> 4 -> 16 blocks, widths 128/64/32; with a spectrally normalised conv discriminator",
        config: || nest_gen(7, [128, 64, 32], [4, 2, 1], [32, 64, 128], 1),
    },
    Preset {
        name: "nest_gen_32",
        description: "NesT generator for 32x32 colour images: 8x8-token blocks, 1 -> 4 -> 16 blocks, widths 128/64/32; with a spectrally normalised conv discriminator",
        config: || nest_gen(8, [128, 64, 32], [4, 2, 1], [32, 64, 128], 3),
    },
    Preset {
        name: "dcgan_28",
        description: "DCGAN-like convolutional generator for 28x28 (the NesT generator's baseline): 7x7 map, two transposed-conv doublings; same discriminator",
        config: || dcgan(7, [128, 64, 32], [32, 64, 128], 1),
    },
    Preset {
        name: "dcgan_32",
        description: "DCGAN-like convolutional generator for 32x32 colour images: 8x8 map, two transposed-conv doublings; same discriminator",
        config: || dcgan(8, [128, 64, 32], [32, 64, 128], 3),
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

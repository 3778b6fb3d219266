//! Weights trained elsewhere: timm `VisionTransformer` and Hugging Face `ViTModel` /
//! `ViTForImageClassification` safetensors files, mapped onto vitkit's (timm-named) ViT, with
//! the position embedding resampled when the grid changes.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use burn::tensor::Device;

use super::weights::{FileTensor, LoadReport, apply_tensors, read_safetensors};
use crate::models::{Vit, VitConfig};
use crate::{Result, VitError};

/// Where a weights file comes from, which decides its key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightSource {
    /// timm's `VisionTransformer.state_dict()` (also what vitkit writes).
    Timm,
    /// Hugging Face transformers `ViTModel` / `ViTForImageClassification`.
    Hf,
}

impl FromStr for WeightSource {
    type Err = VitError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "timm" | "vitkit" => Ok(WeightSource::Timm),
            "hf" | "huggingface" | "transformers" => Ok(WeightSource::Hf),
            other => Err(VitError::Config(format!(
                "unknown weight source '{other}'; valid: timm, hf"
            ))),
        }
    }
}

/// How the position-embedding grid is resized (timm's `resample_abs_pos_embed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// Bicubic with antialiasing, as timm's `checkpoint_filter_fn` for .pth/safetensors files.
    BicubicAntialias,
    /// Bilinear without antialiasing (align_corners=False), as timm's loader for Google .npz files.
    Bilinear,
}

/// PyTorch's antialiased bicubic kernel (a = -0.5, as PIL).
fn cubic_aa(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Interpolation weights of each output index over the input indices along one axis:
/// (first input index, weights). Mirrors `F.interpolate(..., align_corners=False)`.
fn axis_weights(input: usize, output: usize, mode: Resample) -> Vec<(usize, Vec<f64>)> {
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|i| match mode {
            Resample::BicubicAntialias => {
                // Separable antialias filter: widened by the scale when shrinking.
                let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
                let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
                let centre = scale * (i as f64 + 0.5);
                let lo = ((centre - support + 0.5).floor().max(0.0)) as usize;
                let hi = ((centre + support + 0.5).floor() as usize).min(input);
                let mut w: Vec<f64> = (lo..hi)
                    .map(|j| cubic_aa((j as f64 - centre + 0.5) * inv))
                    .collect();
                let total: f64 = w.iter().sum();
                if total != 0.0 {
                    w.iter_mut().for_each(|v| *v /= total);
                }
                (lo, w)
            }
            Resample::Bilinear => {
                let src = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
                let lo = (src.floor() as usize).min(input - 1);
                let hi = (lo + 1).min(input - 1);
                let t = src - lo as f64;
                if hi == lo {
                    (lo, vec![1.0])
                } else {
                    (lo, vec![1.0 - t, t])
                }
            }
        })
        .collect()
}

/// Resizes the patch part of a `[T, D]` position embedding from `old` to `new` grid; the
/// `prefix` class-token rows are copied unchanged.
pub fn resample_pos_embed(
    pos: &[f32],
    dim: usize,
    prefix: usize,
    old: [usize; 2],
    new: [usize; 2],
    mode: Resample,
) -> Vec<f32> {
    let grid = &pos[prefix * dim..];
    let rows = axis_weights(old[0], new[0], mode);
    let cols = axis_weights(old[1], new[1], mode);
    // Width pass, then height pass, in f64.
    let mut wide = vec![0f64; old[0] * new[1] * dim];
    for y in 0..old[0] {
        for (x, (lo, w)) in cols.iter().enumerate() {
            let out = &mut wide[(y * new[1] + x) * dim..(y * new[1] + x + 1) * dim];
            for (k, wk) in w.iter().enumerate() {
                let src = &grid[(y * old[1] + lo + k) * dim..(y * old[1] + lo + k + 1) * dim];
                out.iter_mut().zip(src).for_each(|(o, &s)| *o += wk * s as f64);
            }
        }
    }
    let mut result: Vec<f32> = pos[..prefix * dim].to_vec();
    let mut tall = vec![0f64; new[0] * new[1] * dim];
    for (y, (lo, w)) in rows.iter().enumerate() {
        for x in 0..new[1] {
            let out = &mut tall[(y * new[1] + x) * dim..(y * new[1] + x + 1) * dim];
            for (k, wk) in w.iter().enumerate() {
                let src = &wide[((lo + k) * new[1] + x) * dim..((lo + k) * new[1] + x + 1) * dim];
                out.iter_mut().zip(src).for_each(|(o, &s)| *o += wk * s);
            }
        }
    }
    result.extend(tall.into_iter().map(|v| v as f32));
    result
}

/// One naming scheme of transformers' ViT blocks: the block prefix, (HF name, timm name) of the
/// directly renamed parts, and the q/k/v projections fused into `attn.qkv`.
type HfBlockLayout = (&'static str, [(&'static str, &'static str); 5], [&'static str; 3]);

/// Renames a Hugging Face ViT state dict to timm's names, fusing q/k/v into qkv.
fn hf_to_timm(mut t: BTreeMap<String, FileTensor>) -> BTreeMap<String, FileTensor> {
    // ViTModel files have no "vit." prefix; ViTForImageClassification files do.
    t = t
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("vit.").map(String::from).unwrap_or(k), v))
        .collect();
    let mut out = BTreeMap::new();
    let direct = [
        ("embeddings.cls_token", "cls_token"),
        ("embeddings.position_embeddings", "pos_embed"),
        (
            "embeddings.patch_embeddings.projection.weight",
            "patch_embed.proj.weight",
        ),
        (
            "embeddings.patch_embeddings.projection.bias",
            "patch_embed.proj.bias",
        ),
        ("layernorm.weight", "norm.weight"),
        ("layernorm.bias", "norm.bias"),
        ("classifier.weight", "head.weight"),
        ("classifier.bias", "head.bias"),
    ];
    for (from, to) in direct {
        if let Some(v) = t.remove(from) {
            out.insert(to.to_string(), v);
        }
    }
    // transformers 4.x names blocks `encoder.layer.N` with separate query/key/value;
    // 5.x names them `layers.N` with q_proj/k_proj/v_proj/o_proj and mlp.fc1/fc2.
    let layouts: [HfBlockLayout; 2] = [
        (
            "encoder.layer.",
            [
                ("layernorm_before", "norm1"),
                ("layernorm_after", "norm2"),
                ("attention.output.dense", "attn.proj"),
                ("intermediate.dense", "mlp.fc1"),
                ("output.dense", "mlp.fc2"),
            ],
            [
                "attention.attention.query",
                "attention.attention.key",
                "attention.attention.value",
            ],
        ),
        (
            "layers.",
            [
                ("layernorm_before", "norm1"),
                ("layernorm_after", "norm2"),
                ("attention.o_proj", "attn.proj"),
                ("mlp.fc1", "mlp.fc1"),
                ("mlp.fc2", "mlp.fc2"),
            ],
            ["attention.q_proj", "attention.k_proj", "attention.v_proj"],
        ),
    ];
    for (stem, renames, qkv) in layouts {
        let layers: std::collections::BTreeSet<usize> = t
            .keys()
            .filter_map(|k| k.strip_prefix(stem)?.split('.').next()?.parse().ok())
            .collect();
        for i in layers {
            let p = format!("{stem}{i}.");
            let b = format!("blocks.{i}.");
            for (from, to) in renames {
                for leaf in ["weight", "bias"] {
                    if let Some(v) = t.remove(&format!("{p}{from}.{leaf}")) {
                        out.insert(format!("{b}{to}.{leaf}"), v);
                    }
                }
            }
            for leaf in ["weight", "bias"] {
                let names: Vec<String> = qkv.iter().map(|q| format!("{p}{q}.{leaf}")).collect();
                if names.iter().all(|n| t.contains_key(n)) {
                    let parts: Vec<FileTensor> = names.iter().filter_map(|n| t.remove(n)).collect();
                    let mut shape = parts[0].shape.clone();
                    shape[0] *= 3;
                    let values = parts.into_iter().flat_map(|p| p.values).collect();
                    out.insert(format!("{b}attn.qkv.{leaf}"), FileTensor { shape, values });
                }
            }
        }
    }
    // Whatever is left (e.g. the pooler) is reported as unexpected.
    out.extend(t);
    out
}

/// What to do when the file and the model disagree.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Fail on any missing, unexpected or mismatched key.
    pub strict: bool,
    pub resample: Resample,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            strict: false,
            resample: Resample::BicubicAntialias,
        }
    }
}

/// Loads a foreign ViT checkpoint into a model built from `config`: keys renamed for `source`,
/// the position embedding resampled to `config`'s grid, and a classifier head of another size
/// left freshly initialised (reported as missing). Fails when nothing matches (another
/// architecture) or, with `strict`, when anything does not.
pub fn import_vit(
    path: &Path,
    source: WeightSource,
    config: &VitConfig,
    opts: &ImportOptions,
    device: &Device,
) -> Result<(Vit, LoadReport)> {
    let (tensors, metadata) = read_safetensors(path)?;
    let original_keys: Vec<String> = tensors.keys().take(5).cloned().collect();
    let mut tensors = match source {
        WeightSource::Timm => tensors
            .into_iter()
            .map(|(k, v)| (k.strip_prefix("module.").map(String::from).unwrap_or(k), v))
            .collect(),
        WeightSource::Hf => hf_to_timm(tensors),
    };
    let bad = |reason: String| VitError::CheckpointMismatch {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(pos) = tensors.get_mut("pos_embed")
        && pos.shape.len() == 3
    {
        let (t, d) = (pos.shape[1], pos.shape[2]);
        let want = config.num_patches() + 1;
        if t != want && d == config.embed_dim {
            let side = ((t - 1) as f64).sqrt().round() as usize;
            if side * side != t - 1 {
                return Err(bad(format!(
                    "pos_embed has {t} tokens: not a square grid plus a class token"
                )));
            }
            pos.values = resample_pos_embed(&pos.values, d, 1, [side, side], config.grid(), opts.resample);
            pos.shape = vec![1, want, d];
        }
    }
    let model = config.init(device)?;
    let (model, report) = apply_tensors(model, tensors, &metadata);
    if report.loaded.is_empty() {
        return Err(bad(format!(
            "none of the ViT's parameters are in it; is it a {} ViT checkpoint? Its first keys: {}",
            if source == WeightSource::Hf {
                "Hugging Face"
            } else {
                "timm"
            },
            original_keys.join(", ")
        )));
    }
    if opts.strict && !report.is_exact() {
        return Err(bad(report.describe()));
    }
    Ok((model, report))
}

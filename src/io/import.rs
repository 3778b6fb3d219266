//! Weights trained elsewhere: a foreign library's safetensors file, its keys renamed to
//! vitkit's (timm's names for the ViT; Hugging Face `ViTModel` / `ViTForImageClassification`
//! mapped onto them), read into a family's architecture.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::tensor::Device;

use super::weights::{FileTensor, LoadReport, apply_tensors, read_safetensors};
use crate::models::{Adaptation, Model, ModelConfig, StateDict};
use crate::nn::Resample;
use crate::{Result, VitError};

/// Where a weights file comes from, which decides its key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightSource {
    /// timm's `VisionTransformer.state_dict()` (also what vitkit writes).
    Timm,
    /// Hugging Face transformers `ViTModel` / `ViTForImageClassification`.
    Hf,
    /// A family's official code's `state_dict()` (CMT's `cmt.py`), whose names vitkit keeps.
    Official,
    /// open_clip's `CLIP.state_dict()`.
    OpenClip,
    /// OpenAI's CLIP state dict (the same names, plus three scalars in its JIT files).
    OpenAi,
}

impl WeightSource {
    pub fn name(&self) -> &'static str {
        match self {
            WeightSource::Timm => "timm",
            WeightSource::Hf => "Hugging Face",
            WeightSource::Official => "official",
            WeightSource::OpenClip => "open_clip",
            WeightSource::OpenAi => "OpenAI CLIP",
        }
    }
}

impl FromStr for WeightSource {
    type Err = VitError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "timm" | "vitkit" => Ok(WeightSource::Timm),
            "hf" | "huggingface" | "transformers" => Ok(WeightSource::Hf),
            "official" => Ok(WeightSource::Official),
            "open_clip" | "openclip" => Ok(WeightSource::OpenClip),
            "openai" => Ok(WeightSource::OpenAi),
            other => Err(VitError::Config(format!(
                "unknown weight source '{other}'; valid: timm, hf, official, open_clip, openai"
            ))),
        }
    }
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

/// How closely a file must fit the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// Every parameter from the file and nothing left over: what running a model needs
    /// (`infer`, `eval`, `predict`, `explain`).
    Exact,
    /// As `Exact`, except the classifier head, which is left freshly initialised.
    FreshHead,
    /// Whatever matches is loaded and the rest reported: fine-tuning (`train --weights`) and
    /// `import` without `--strict`.
    Lenient,
}

/// What to do when the file and the model disagree.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub strictness: Strictness,
    pub resample: Resample,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            strictness: Strictness::Lenient,
            resample: Resample::BicubicAntialias,
        }
    }
}

/// A model built from a foreign weights file, the configuration it was built with, and what
/// matched.
pub struct Imported {
    pub model: Model,
    pub config: ModelConfig,
    pub report: LoadReport,
}

/// A foreign weights file read into memory, its keys renamed to vitkit's.
pub struct ForeignWeights {
    pub path: PathBuf,
    pub source: WeightSource,
    tensors: StateDict,
    metadata: BTreeMap<String, String>,
    first_keys: Vec<String>,
}

impl ForeignWeights {
    pub fn read(path: &Path, source: WeightSource) -> Result<Self> {
        let (tensors, metadata) = read_safetensors(path)?;
        let first_keys = tensors.keys().take(5).cloned().collect();
        Ok(Self {
            path: path.to_path_buf(),
            source,
            tensors: translate(tensors, source),
            metadata,
            first_keys,
        })
    }

    fn mismatch(&self, reason: String) -> VitError {
        VitError::CheckpointMismatch {
            path: self.path.clone(),
            reason,
        }
    }

    /// `config` with `fixed` applied, completed from what the file states for every field
    /// `fixed` leaves open (classes, channels, pooling, image size; see
    /// [`ModelConfig::read_weights`]) and from its source's conventions (Hugging Face's
    /// LayerNorm epsilon, 1e-12).
    pub fn config_for(&self, config: &ModelConfig, fixed: &Adaptation) -> Result<ModelConfig> {
        let fixed = Adaptation {
            norm_eps: fixed
                .norm_eps
                .or((self.source == WeightSource::Hf).then_some(1e-12)),
            ..fixed.clone()
        };
        let mut config = config.adapted(&fixed)?;
        config.read_weights(&self.tensors, &fixed)?;
        Ok(config)
    }

    /// Builds [`Self::config_for`] on `device` and loads the file into it (a position grid
    /// resampled to the configuration's) under `opts.strictness`. Fails when nothing matches
    /// (another architecture).
    pub fn load(
        mut self,
        config: &ModelConfig,
        fixed: &Adaptation,
        opts: &ImportOptions,
        device: &Device,
    ) -> Result<Imported> {
        let config = self.config_for(config, fixed)?;
        let mut tensors = std::mem::take(&mut self.tensors);
        config
            .fit_weights(&mut tensors, opts.resample)
            .map_err(|e| self.mismatch(e.to_string()))?;
        let (model, report) = apply_tensors(config.build(device)?, tensors, &self.metadata);
        if report.loaded.is_empty() && !report.mismatched.is_empty() {
            return Err(self.mismatch(format!(
                "every parameter the file shares with the {} model has another shape ({}); \
                 nothing was loaded. Is it a model of another width or depth?",
                config.family(),
                report.describe()
            )));
        }
        if report.loaded.is_empty() {
            return Err(self.mismatch(format!(
                "none of the {} model's parameters are in it; is it a {} checkpoint of that \
                 family? Its first keys: {}",
                config.family(),
                self.source.name(),
                self.first_keys.join(", ")
            )));
        }
        let must_match = match opts.strictness {
            Strictness::Exact => report.clone(),
            Strictness::FreshHead => report.excluding(&config.head_params()),
            Strictness::Lenient => LoadReport::default(),
        };
        if !must_match.is_exact() {
            return Err(self.mismatch(format!(
                "{}; nothing was loaded. The file does not hold the configuration asked for{}",
                must_match.describe(),
                if opts.strictness == Strictness::Exact {
                    " (to run its backbone under a new classifier head, pass --fresh-head)"
                } else {
                    ""
                }
            )));
        }
        Ok(Imported {
            model,
            config,
            report,
        })
    }
}

/// Reads `path` (written by `source`) and loads it into `config` completed from the file;
/// see [`ForeignWeights`].
pub fn import_weights(
    path: &Path,
    source: WeightSource,
    config: &ModelConfig,
    fixed: &Adaptation,
    opts: &ImportOptions,
    device: &Device,
) -> Result<Imported> {
    ForeignWeights::read(path, source)?.load(config, fixed, opts, device)
}

/// Renames a file's keys from `source`'s naming to vitkit's.
fn translate(tensors: StateDict, source: WeightSource) -> StateDict {
    match source {
        WeightSource::Timm | WeightSource::Official => tensors
            .into_iter()
            .map(|(k, v)| (k.strip_prefix("module.").map(String::from).unwrap_or(k), v))
            .collect(),
        WeightSource::Hf => hf_to_timm(tensors),
        WeightSource::OpenClip | WeightSource::OpenAi => open_clip_to_vitkit(tensors),
    }
}

/// open_clip's / OpenAI's CLIP names → vitkit's: the same outside the blocks; inside them the
/// shared block's timm names (`ln_1` → `norm1`, `attn.in_proj_weight` → `attn.qkv.weight`,
/// `attn.out_proj` → `attn.proj`, `mlp.c_fc` → `mlp.fc1`, `mlp.c_proj` → `mlp.fc2`). OpenAI's
/// JIT scalars (`input_resolution`, `context_length`, `vocab_size`) are dropped.
fn open_clip_to_vitkit(tensors: StateDict) -> StateDict {
    const BLOCK_NAMES: [(&str, &str); 7] = [
        (".ln_1.", ".norm1."),
        (".ln_2.", ".norm2."),
        (".attn.in_proj_weight", ".attn.qkv.weight"),
        (".attn.in_proj_bias", ".attn.qkv.bias"),
        (".attn.out_proj.", ".attn.proj."),
        (".mlp.c_fc.", ".mlp.fc1."),
        (".mlp.c_proj.", ".mlp.fc2."),
    ];
    tensors
        .into_iter()
        .filter(|(k, _)| !matches!(k.as_str(), "input_resolution" | "context_length" | "vocab_size"))
        .map(|(k, v)| {
            let mut k = k.strip_prefix("module.").map(String::from).unwrap_or(k);
            if k.contains("resblocks.") {
                for (from, to) in BLOCK_NAMES {
                    k = k.replace(from, to);
                }
            }
            (k, v)
        })
        .collect()
}

//! Model families and the preset registry.
//!
//! A family is one file here: its configuration (which implements [`Architecture`]), its
//! module (which implements [`Family`] and the capabilities it has: [`Classifier`],
//! [`GlobalAttention`], [`SpatialMap`]), a variant in [`ModelConfig`] and in [`Model`], its arm
//! in `each_family!` (the one place that dispatches on the family), and its entries in
//! `presets.rs`. Nothing outside this folder names a family.

pub mod clip;
pub mod cmt;
pub mod gan;
pub mod nest;
pub mod nest_gen;
pub mod presets;
pub mod sit;
pub mod state;
pub mod vit;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use crate::nn::Resample;
pub use clip::{Clip, ClipConfig};
pub use cmt::{Cmt, CmtConfig};
pub use gan::{Gan, GanConfig, Generative};
pub use nest::{Nest, NestConfig};
pub use presets::{PRESETS, Preset, preset, preset_names};
pub use sit::{Sit, SitConfig, SitHeads};
pub use state::{HostTensor, StateDict};
pub use vit::{Vit, VitConfig};

use crate::{Result, VitError};

/// The one place that dispatches on the family: `each_family!(value, Enum, x => body)` runs
/// `body` with `x` bound to the family's configuration or model. A new family adds its arm here.
macro_rules! each_family {
    ($value:expr, $enum:ident, $x:ident => $body:expr) => {
        match $value {
            $enum::Vit($x) => $body,
            $enum::Cmt($x) => $body,
            $enum::Nest($x) => $body,
            $enum::Sit($x) => $body,
            $enum::Clip($x) => $body,
            $enum::Gan($x) => $body,
        }
    };
}

/// A model's architecture, as saved in a checkpoint's `config.json` (`"family": "vit"` and the
/// family's fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "lowercase")]
pub enum ModelConfig {
    Vit(VitConfig),
    Cmt(CmtConfig),
    Nest(NestConfig),
    Sit(SitConfig),
    Clip(ClipConfig),
    Gan(GanConfig),
}

/// A built model of any family. Its parameter paths are the family's own (the variant adds no
/// path segment; see `io::weights`).
// A model is built once and moved rarely; boxing a family would only add an indirection to
// every parameter path.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Model {
    Vit(Vit),
    Cmt(Cmt),
    Nest(Nest),
    Sit(Sit),
    Clip(Clip),
    Gan(Gan),
}

/// How the token sequence or feature map becomes one feature vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GlobalPool {
    /// The class token (`x[:, 0]`), after the final norm.
    Token,
    /// The mean over positions, then `fc_norm`.
    Avg,
}

impl std::str::FromStr for GlobalPool {
    type Err = VitError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "token" => Ok(GlobalPool::Token),
            "avg" => Ok(GlobalPool::Avg),
            other => Err(VitError::Config(format!(
                "unknown global pool '{other}'; valid: token, avg"
            ))),
        }
    }
}

/// Changes a user asks for on top of a preset, as timm's `create_model(name, num_classes=…,
/// in_chans=…, img_size=…, global_pool=…, drop_path_rate=…)`. `None` leaves the field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Adaptation {
    pub num_classes: Option<usize>,
    pub in_chans: Option<usize>,
    pub img_size: Option<[usize; 2]>,
    pub global_pool: Option<GlobalPool>,
    pub drop_path: Option<f64>,
    /// LayerNorm epsilon (Hugging Face's ViT uses 1e-12).
    pub norm_eps: Option<f64>,
    /// Pretext heads (SiT pretraining) instead of a classifier; `Some(false)` asks for the
    /// classifier of a family that has both.
    pub pretext: Option<bool>,
}

impl Adaptation {
    /// An error when pretext heads are asked of `family`, which has none.
    pub fn refuse_pretext(&self, family: &str) -> Result<()> {
        if self.pretext == Some(true) {
            return Err(VitError::Config(format!(
                "a {family} model has no pretext heads; self-supervised pretraining takes a SiT \
                 preset (sit_*)"
            )));
        }
        Ok(())
    }
}

/// What every family's configuration provides.
pub trait Architecture {
    /// The family's name, as in `config.json`.
    fn family(&self) -> &'static str;
    /// Checks the shapes fit together; every user-supplied change passes through here.
    fn validate(&self) -> Result<()>;
    fn build(&self, device: &Device) -> Result<Model>;
    fn img_size(&self) -> [usize; 2];
    fn in_chans(&self) -> usize;
    /// Classes of the classifier head; `None` for a family without one (CLIP).
    fn num_classes(&self) -> Option<usize>;
    /// Applies `a`; an error names a change the family cannot make.
    fn adapt(&mut self, a: &Adaptation) -> Result<()>;
    /// Multiply-accumulates of one image's forward pass through the matrix products and
    /// convolutions (elementwise work left out, as usual in FLOP counts).
    fn forward_macs(&self) -> f64;
    /// Multiply-accumulates of one image's training step: forward and backward, counted as
    /// three forward passes (a GAN's step runs two players twice).
    fn train_macs(&self) -> f64 {
        3.0 * self.forward_macs()
    }
    /// Whether the parameter at `path` with `rank` axes is exempt from weight decay. The
    /// default is timm's: every tensor of rank ≤ 1 (norms, biases).
    fn decay_exempt(&self, path: &str, rank: usize) -> bool {
        let _ = path;
        rank <= 1
    }
    /// Paths of the classifier head's parameters: what a fresh head replaces and what a linear
    /// probe trains.
    fn head_params(&self) -> Vec<String>;
    /// Takes from a weights file what it states unambiguously (e.g. head shape → classes), for
    /// every field `fixed` leaves open.
    fn read_weights(&mut self, file: &StateDict, fixed: &Adaptation) -> Result<()>;
    /// Fits a file's tensors to this configuration (e.g. resamples a position grid).
    fn fit_weights(&self, file: &mut StateDict, resample: Resample) -> Result<()>;
    /// Input normalisation that pretrained weights of this family expect, per channel.
    fn pretrained_mean_std(&self) -> (Vec<f32>, Vec<f32>);
}

/// An image classifier: pooled features, then a head.
pub trait Classifier {
    /// `[B, C, H, W]` → pooled features before the head, `[B, F]`.
    fn features(&self, x: Tensor<4>) -> Tensor<2>;
    /// Features → logits `[B, classes]`.
    fn head(&self, features: Tensor<2>) -> Tensor<2>;
    /// `[B, C, H, W]` → logits.
    fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        self.head(self.features(x))
    }
    /// The logits of each head that trains with its own cross-entropy (SiT has two, whose
    /// mean is [`Classifier::head`]); one head by default.
    fn head_logits(&self, features: Tensor<2>) -> Vec<Tensor<2>> {
        vec![self.head(features)]
    }
    /// The input height and width the model takes.
    fn input_size(&self) -> [usize; 2];
}

/// Which rows of the attention the pooled feature reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pooled {
    /// These prefix tokens (averaged).
    Tokens(Vec<usize>),
    /// The mean of the patch tokens.
    Patches,
}

/// How a model with global attention lays out its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLayout {
    /// Tokens before the patch tokens (a class token; SiT's two).
    pub prefix: usize,
    pub grid: [usize; 2],
    pub patch_size: usize,
    pub depth: usize,
    pub heads: usize,
    pub pooled: Pooled,
}

impl TokenLayout {
    pub fn tokens(&self) -> usize {
        self.prefix + self.grid[0] * self.grid[1]
    }
}

/// A transformer whose blocks attend over all tokens of the image: what attention rollout,
/// mean attention distance and the ViT paper's figures need.
pub trait GlobalAttention {
    fn layout(&self) -> TokenLayout;
    /// Post-softmax attention of every block, `[B, heads, T, T]`.
    fn attention_maps(&self, x: Tensor<4>) -> Vec<Tensor<4>>;
    /// The learned position embedding `[1, T, D]`, prefix rows first.
    fn position_embedding(&self) -> Option<Tensor<3>>;
    /// The patch-embedding filters `[D, C, P, P]`.
    fn patch_filters(&self) -> Option<Tensor<4>>;
}

/// A classifier whose output pools a spatial feature map: what Grad-CAM needs.
pub trait SpatialMap {
    /// The map the head pools, `[B, C, h, w]`.
    fn feature_map(&self, x: Tensor<4>) -> Tensor<4>;
    /// The logits from that map (pooling and head).
    fn classify_map(&self, map: Tensor<4>) -> Tensor<2>;
    /// Whether the head is mean pooling followed by one linear layer, so that the head applied
    /// to each position alone (a class activation map) averages to the logits.
    fn pooled_linear_head(&self) -> bool {
        false
    }
}

/// How a model nests its image blocks (NesT): level 0 has 4^(levels−1) blocks of
/// `block_size`² tokens, each level above has 4× fewer, the top one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeLayout {
    pub levels: usize,
    pub block_size: usize,
    /// Pixels per token side at level 0; a token at level l covers `patch_size · 2^l` pixels.
    pub patch_size: usize,
}

/// A model whose blocks form a tree (4 children per node): what GradCAT traverses.
pub trait BlockTree {
    fn tree(&self) -> TreeLayout;
    /// Every level's output, channels-last `[B, h_l, w_l, C_l]`, bottom level first.
    fn level_outputs(&self, x: Tensor<4>) -> Vec<Tensor<4>>;
    /// The logits from level `level`'s output (the levels above, the final norm, pooling and
    /// head).
    fn logits_from(&self, level: usize, map: Tensor<4>) -> Tensor<2>;
}

/// What a self-supervised model's pretext heads give for one batch (SiT).
pub struct PretextOutput {
    /// Rotation logits `[B, 4]`.
    pub rotation: Tensor<2>,
    /// Contrastive embedding `[B, E]` (not normalised).
    pub contrastive: Tensor<2>,
    /// The reconstructed image `[B, C, H, W]`.
    pub reconstruction: Tensor<4>,
}

/// A model pretrained by predicting rotations, pulling views together and reconstructing
/// corrupted images (SiT).
pub trait Pretext {
    fn pretext(&self, x: Tensor<4>) -> Result<PretextOutput>;
    /// The learned loss weights `[s_rotation, s_contrastive, s_reconstruction]`.
    fn loss_weights(&self) -> Result<Tensor<1>>;
}

/// A model of two towers that embed images and texts in one space (CLIP).
pub trait ImageText {
    /// `[B, C, H, W]` → image features `[B, E]` (before normalisation).
    fn encode_image(&self, x: Tensor<4>) -> Tensor<2>;
    /// Token ids, `rows` rows of at most the context length → text features `[rows, E]`
    /// (before normalisation).
    fn encode_text(&self, ids: &[u32], rows: usize) -> Result<Tensor<2>>;
    /// The learned `logit_scale` `[1]` (the similarity multiplier is its exponential).
    fn logit_scale(&self) -> Tensor<1>;
    fn context_length(&self) -> usize;
}

/// What each family's module says it can do; everything defaults to "cannot".
pub trait Family {
    /// The family's name, as in `config.json`.
    fn family_name(&self) -> &'static str;
    fn classifier(&self) -> Option<&dyn Classifier> {
        None
    }
    fn global_attention(&self) -> Option<&dyn GlobalAttention> {
        None
    }
    fn spatial_map(&self) -> Option<&dyn SpatialMap> {
        None
    }
    fn block_tree(&self) -> Option<&dyn BlockTree> {
        None
    }
    fn pretext(&self) -> Option<&dyn Pretext> {
        None
    }
    fn image_text(&self) -> Option<&dyn ImageText> {
        None
    }
    fn generative(&self) -> Option<&dyn Generative> {
        None
    }
}

impl Model {
    pub fn family(&self) -> &'static str {
        self.capabilities().family_name()
    }
    fn capabilities(&self) -> &dyn Family {
        each_family!(self, Model, m => m)
    }
    /// The classifier inside, or an error naming the family.
    pub fn classifier(&self) -> Result<&dyn Classifier> {
        self.capabilities()
            .classifier()
            .ok_or_else(|| VitError::Config(format!("a {} model is not an image classifier", self.family())))
    }
    pub fn global_attention(&self) -> Option<&dyn GlobalAttention> {
        self.capabilities().global_attention()
    }
    pub fn spatial_map(&self) -> Option<&dyn SpatialMap> {
        self.capabilities().spatial_map()
    }
    pub fn block_tree(&self) -> Option<&dyn BlockTree> {
        self.capabilities().block_tree()
    }
    pub fn pretext(&self) -> Option<&dyn Pretext> {
        self.capabilities().pretext()
    }
    /// Keeps a learned similarity scale (CLIP's `logit_scale`) in `[0, max]`; other models
    /// are returned as they are.
    pub fn clamp_logit_scale(self, max: f64) -> Self {
        match self {
            Model::Clip(c) => Model::Clip(c.clamp_logit_scale(max)),
            other => other,
        }
    }
    /// A generator–discriminator pair's moving average of the generator after one more step;
    /// other models are returned as they are.
    pub fn update_average(self) -> Self {
        match self {
            Model::Gan(g) => Model::Gan(g.update_average()),
            other => other,
        }
    }
    /// The generative pair inside, or an error naming the family.
    pub fn generative(&self) -> Result<&dyn Generative> {
        self.capabilities().generative().ok_or_else(|| {
            VitError::Config(format!(
                "a {} model does not generate images; this needs a GAN run (train --task gan with a \
                 nest_gen_* or dcgan_* model)",
                self.family()
            ))
        })
    }
    /// The image and text towers inside, or an error naming the family.
    pub fn image_text(&self) -> Result<&dyn ImageText> {
        self.capabilities().image_text().ok_or_else(|| {
            VitError::Config(format!(
                "a {} model is not an image–text model (CLIP); this needs a clip_* model",
                self.family()
            ))
        })
    }
}

impl ModelConfig {
    fn arch(&self) -> &dyn Architecture {
        each_family!(self, ModelConfig, c => c)
    }
    fn arch_mut(&mut self) -> &mut dyn Architecture {
        each_family!(self, ModelConfig, c => c)
    }
    pub fn family(&self) -> &'static str {
        self.arch().family()
    }
    pub fn validate(&self) -> Result<()> {
        self.arch().validate()
    }
    pub fn build(&self, device: &Device) -> Result<Model> {
        self.arch().build(device)
    }
    pub fn img_size(&self) -> [usize; 2] {
        self.arch().img_size()
    }
    pub fn in_chans(&self) -> usize {
        self.arch().in_chans()
    }
    pub fn num_classes(&self) -> Option<usize> {
        self.arch().num_classes()
    }
    /// Classes of the head, or an error saying the family has none.
    pub fn classes(&self) -> Result<usize> {
        self.num_classes()
            .ok_or_else(|| VitError::Config(format!("a {} model has no classifier head", self.family())))
    }
    /// The same architecture with `a` applied (and checked).
    pub fn adapted(&self, a: &Adaptation) -> Result<Self> {
        let mut out = self.clone();
        out.arch_mut().adapt(a)?;
        out.validate()?;
        Ok(out)
    }
    pub fn forward_macs(&self) -> f64 {
        self.arch().forward_macs()
    }
    pub fn train_macs(&self) -> f64 {
        self.arch().train_macs()
    }
    /// Whether the model is a generator–discriminator pair (what `--task gan` trains).
    pub fn generates_images(&self) -> bool {
        matches!(self, ModelConfig::Gan(_))
    }
    pub fn decay_exempt(&self, path: &str, rank: usize) -> bool {
        self.arch().decay_exempt(path, rank)
    }
    pub fn head_params(&self) -> Vec<String> {
        self.arch().head_params()
    }
    pub fn read_weights(&mut self, file: &StateDict, fixed: &Adaptation) -> Result<()> {
        self.arch_mut().read_weights(file, fixed)?;
        self.validate()
    }
    pub fn fit_weights(&self, file: &mut StateDict, resample: Resample) -> Result<()> {
        self.arch().fit_weights(file, resample)
    }
    pub fn pretrained_mean_std(&self) -> (Vec<f32>, Vec<f32>) {
        self.arch().pretrained_mean_std()
    }
}

/// Parameters of the model `config` builds, as `sum(p.numel() for p in model.parameters())`:
/// BatchNorm's buffers are not counted (the parameters are created lazily, so nothing is drawn
/// or allocated).
pub fn param_count(config: &ModelConfig) -> Result<usize> {
    let model = config.build(&Device::flex())?;
    Ok(crate::io::count_elements(&model, crate::nn::is_buffer))
}

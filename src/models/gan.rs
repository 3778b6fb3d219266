//! Generative adversarial pairs: a generator (the NesT generator of `nest_gen.rs`, or a
//! DCGAN-like convolutional baseline) trained against a spectrally normalised convolutional
//! discriminator, with an exponential moving average of the generator's weights for sampling
//! (`generator_ema`, what `sample` and FID use).
//!
//! One module holds all three so that one checkpoint, one optimizer (whose state is keyed by
//! parameter) and `--resume` serve the pair; the GAN task steps the discriminator's and the
//! generator's parameters in turn.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::{GroupNorm, GroupNormConfig, Linear};
use burn::tensor::activation::{leaky_relu, relu, tanh};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::nest_gen::{NestGenConfig, NestGenerator};
use super::{Adaptation, Architecture, Family, Model, StateDict};
use crate::nn::{ConvWeights, Resample, SnConv2d, SnLinear, timm_linear, torch_default_init};
use crate::{Result, VitError};

/// LeakyReLU slope of the discriminator (DCGAN's).
const SLOPE: f64 = 0.2;

/// A DCGAN-like generator: a linear layer to a `base`×`base` map, then per stage a transposed
/// convolution (4×4, stride 2) doubling the side, GroupNorm and ReLU, then a 3×3 convolution to
/// the pixels and tanh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvGenConfig {
    /// Side of the first map.
    pub base: usize,
    /// Channels of the first map and after each doubling.
    pub dims: Vec<usize>,
}

impl ConvGenConfig {
    fn img_size(&self) -> usize {
        self.base << self.dims.len().saturating_sub(1)
    }
}

/// Which generator a pair has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum GeneratorConfig {
    Nest(NestGenConfig),
    Conv(ConvGenConfig),
}

/// The discriminator: a 3×3 convolution, then per further width a 4×4 convolution with
/// stride 2, LeakyReLU(0.2) after each, and a linear layer from the flattened map to one
/// logit; every layer spectrally normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscConfig {
    pub dims: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GanConfig {
    pub latent_dim: usize,
    /// Image channels (what the generator draws and the discriminator reads).
    pub in_chans: usize,
    pub generator: GeneratorConfig,
    pub discriminator: DiscConfig,
    /// Per-step decay of the generator's moving average.
    pub ema_decay: f64,
}

impl GanConfig {
    pub fn new(generator: GeneratorConfig, discriminator: &[usize]) -> Self {
        Self {
            latent_dim: 128,
            in_chans: 3,
            generator,
            discriminator: DiscConfig {
                dims: discriminator.to_vec(),
            },
            ema_decay: 0.995,
        }
    }

    fn side(&self) -> usize {
        match &self.generator {
            GeneratorConfig::Nest(n) => n.img_size(),
            GeneratorConfig::Conv(c) => c.img_size(),
        }
    }

    /// Multiply-accumulates of the discriminator on one image.
    pub fn discriminator_macs(&self) -> f64 {
        let d = &self.discriminator.dims;
        let mut side = self.side() as f64;
        let mut macs = side * side * 9.0 * (self.in_chans * d[0]) as f64;
        for w in d.windows(2) {
            side /= 2.0;
            macs += side * side * 16.0 * (w[0] * w[1]) as f64;
        }
        macs + side * side * d[d.len() - 1] as f64
    }

    /// The discriminator's last map side.
    fn disc_side(&self) -> usize {
        self.side() >> self.discriminator.dims.len().saturating_sub(1)
    }

    fn init_generator(&self, device: &Device) -> Generator {
        match &self.generator {
            GeneratorConfig::Nest(n) => Generator::Nest(n.init(self.latent_dim, self.in_chans, device)),
            GeneratorConfig::Conv(c) => {
                let d0 = c.dims[0];
                let ups = c
                    .dims
                    .windows(2)
                    .map(|w| UpBlock {
                        conv: torch_conv(w[0], w[1], 4, true, device),
                        norm: GroupNormConfig::new(groups(w[1]), w[1]).init(device),
                    })
                    .collect();
                let last = *c.dims.last().unwrap_or(&d0);
                Generator::Conv(ConvGenerator {
                    stem: timm_linear(self.latent_dim, c.base * c.base * d0, true, device),
                    stem_norm: GroupNormConfig::new(groups(d0), d0).init(device),
                    ups,
                    to_pixels: torch_conv(last, self.in_chans, 3, false, device),
                    base: c.base,
                })
            }
        }
    }

    pub fn init(&self, device: &Device) -> Result<Gan> {
        self.validate()?;
        let dims = &self.discriminator.dims;
        let mut convs = vec![SnConv2d::new(self.in_chans, dims[0], 3, 1, 1, device)];
        convs.extend(
            dims.windows(2)
                .map(|w| SnConv2d::new(w[0], w[1], 4, 2, 1, device)),
        );
        let side = self.disc_side();
        let generator = self.init_generator(device);
        // The average starts as a copy of the generator, under parameters of its own.
        let generator_ema = average_into(self.init_generator(device), &generator, 0.0);
        Ok(Gan {
            generator,
            generator_ema,
            discriminator: Discriminator {
                convs,
                fc: SnLinear::new(side * side * dims[dims.len() - 1], 1, device),
            },
            latent_dim: self.latent_dim,
            ema_decay: self.ema_decay,
            channels: self.in_chans,
            side: self.side(),
        })
    }
}

/// GroupNorm groups for `c` channels: 8, or fewer when `c` does not split into 8.
fn groups(c: usize) -> usize {
    [8, 4, 2, 1]
        .into_iter()
        .find(|g| c.is_multiple_of(*g))
        .unwrap_or(1)
}

/// A convolution (or, `transposed`, a transposed one: weight `[in, out, k, k]`) initialised as
/// PyTorch's, whose fan-in is the weight's second axis times the kernel.
fn torch_conv(c_in: usize, c_out: usize, k: usize, transposed: bool, device: &Device) -> ConvWeights {
    let (shape, fan_in) = if transposed {
        ([c_in, c_out, k, k], c_out * k * k)
    } else {
        ([c_out, c_in, k, k], c_in * k * k)
    };
    let init = torch_default_init(fan_in);
    ConvWeights {
        weight: init.init(shape, device),
        bias: init.init([c_out], device),
    }
}

#[derive(Module, Debug)]
pub struct UpBlock {
    /// Transposed convolution, weight `[in, out, 4, 4]`.
    pub conv: ConvWeights,
    pub norm: GroupNorm,
}

#[derive(Module, Debug)]
pub struct ConvGenerator {
    pub stem: Linear,
    pub stem_norm: GroupNorm,
    pub ups: Vec<UpBlock>,
    pub to_pixels: ConvWeights,
    pub base: usize,
}

impl ConvGenerator {
    pub fn forward(&self, z: Tensor<2>) -> Tensor<4> {
        let [n, _] = z.dims();
        let x = self.stem.forward(z);
        let c = x.dims()[1] / (self.base * self.base);
        let mut x = relu(self.stem_norm.forward(x.reshape([n, c, self.base, self.base])));
        for up in &self.ups {
            x = relu(up.norm.forward(up.conv.conv_transpose2d(x, 2, 1)));
        }
        tanh(self.to_pixels.conv2d(x, 1, 1, 1))
    }
}

#[derive(Module, Debug)]
pub enum Generator {
    Nest(NestGenerator),
    Conv(ConvGenerator),
}

impl Generator {
    /// `[B, latent]` → images `[B, C, H, W]` in [−1, 1].
    pub fn forward(&self, z: Tensor<2>) -> Tensor<4> {
        match self {
            Generator::Nest(g) => g.forward(z),
            Generator::Conv(g) => g.forward(z),
        }
    }
}

#[derive(Module, Debug)]
pub struct Discriminator {
    pub convs: Vec<SnConv2d>,
    pub fc: SnLinear,
}

impl Discriminator {
    /// Images `[B, C, H, W]` in [−1, 1] → logits `[B, 1]` (real is positive).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = x;
        for conv in &self.convs {
            x = leaky_relu(conv.forward(x), SLOPE);
        }
        let [n, c, h, w] = x.dims();
        self.fc.forward(x.reshape([n, c * h * w]))
    }
}

#[derive(Module, Debug)]
pub struct Gan {
    pub generator: Generator,
    /// The moving average of `generator` (no gradient): what samples and FID use.
    pub generator_ema: Generator,
    pub discriminator: Discriminator,
    pub latent_dim: usize,
    pub ema_decay: f64,
    pub channels: usize,
    pub side: usize,
}

impl Gan {
    /// The generator's moving average after one more step.
    pub fn update_average(self) -> Self {
        let Gan {
            generator,
            generator_ema,
            ..
        } = self;
        let generator_ema = average_into(generator_ema, &generator, self.ema_decay);
        Gan {
            generator,
            generator_ema,
            ..self
        }
    }
}

/// `target ← decay · target + (1 − decay) · source`, parameter by parameter (the two must be
/// built alike); the result is frozen (no gradient).
fn average_into(target: Generator, source: &Generator, decay: f64) -> Generator {
    struct Collect(Vec<Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val().detach();
            let n = t.shape().num_elements();
            self.0.push(t.reshape([n]));
        }
    }
    struct Blend {
        source: std::vec::IntoIter<Tensor<1>>,
        decay: f64,
    }
    impl ModuleMapper for Blend {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let source = self
                .source
                .next()
                .expect("the average is built like the generator");
            let decay = self.decay;
            param
                .map(|t| {
                    let dims = t.dims();
                    let source = source.reshape(dims);
                    if decay == 0.0 {
                        source
                    } else {
                        t.detach().mul_scalar(decay) + source.mul_scalar(1.0 - decay)
                    }
                })
                .set_require_grad(false)
        }
    }
    let mut collect = Collect(Vec::new());
    source.visit(&mut collect);
    target.map(&mut Blend {
        source: collect.0.into_iter(),
        decay,
    })
}

impl From<Gan> for Model {
    fn from(g: Gan) -> Self {
        Model::Gan(g)
    }
}

/// What a generative pair offers the tasks and commands.
pub trait Generative {
    fn latent_dim(&self) -> usize;
    /// Latent vectors `[B, latent]` → images in [−1, 1]; `average` picks the moving average.
    fn generate(&self, z: Tensor<2>, average: bool) -> Tensor<4>;
    /// Images in [−1, 1] → discriminator logits `[B, 1]`.
    fn discriminate(&self, x: Tensor<4>) -> Tensor<2>;
    /// `[C, H, W]` of the images.
    fn image_shape(&self) -> [usize; 3];
    /// The generator alone (its parameters are what the generator's update trains).
    fn generator(&self) -> &Generator;
    /// The discriminator alone.
    fn discriminator(&self) -> &Discriminator;
}

impl Generative for Gan {
    fn latent_dim(&self) -> usize {
        self.latent_dim
    }
    fn generate(&self, z: Tensor<2>, average: bool) -> Tensor<4> {
        if average {
            self.generator_ema.forward(z)
        } else {
            self.generator.forward(z)
        }
    }
    fn discriminate(&self, x: Tensor<4>) -> Tensor<2> {
        self.discriminator.forward(x)
    }
    fn image_shape(&self) -> [usize; 3] {
        [self.channels, self.side, self.side]
    }
    fn generator(&self) -> &Generator {
        &self.generator
    }
    fn discriminator(&self) -> &Discriminator {
        &self.discriminator
    }
}

impl Family for Gan {
    fn family_name(&self) -> &'static str {
        "gan"
    }
    fn generative(&self) -> Option<&dyn Generative> {
        Some(self)
    }
}

impl Architecture for GanConfig {
    fn family(&self) -> &'static str {
        "gan"
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(VitError::Config(m));
        if self.latent_dim == 0 || self.in_chans == 0 {
            return bad("a GAN needs a positive latent size and channel count".into());
        }
        match &self.generator {
            GeneratorConfig::Nest(n) => n.validate()?,
            GeneratorConfig::Conv(c) => {
                if c.base == 0 || c.dims.is_empty() || c.dims.contains(&0) {
                    return bad("a convolutional generator needs a base side and positive widths".into());
                }
            }
        }
        let d = &self.discriminator.dims;
        if d.is_empty() || d.contains(&0) {
            return bad("the discriminator needs at least one positive width".into());
        }
        if !self.side().is_multiple_of(1 << (d.len() - 1)) || self.disc_side() == 0 {
            return bad(format!(
                "the discriminator's {} halvings do not divide the {}-pixel side",
                d.len() - 1,
                self.side()
            ));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad("the moving-average decay must be in [0, 1)".into());
        }
        Ok(())
    }

    fn build(&self, device: &Device) -> Result<Model> {
        Ok(self.init(device)?.into())
    }

    fn img_size(&self) -> [usize; 2] {
        [self.side(); 2]
    }

    fn in_chans(&self) -> usize {
        self.in_chans
    }

    fn num_classes(&self) -> Option<usize> {
        None
    }

    fn adapt(&mut self, a: &Adaptation) -> Result<()> {
        a.refuse_pretext("gan")?;
        if a.num_classes.is_some() || a.global_pool.is_some() {
            return Err(VitError::Config(
                "a GAN has no classifier head: it trains with --task gan and draws images (sample, fid)"
                    .into(),
            ));
        }
        if let Some(size) = a.img_size
            && size != self.img_size()
        {
            return Err(VitError::Config(format!(
                "this generator draws {}x{} images (its levels fix the size); the data is {}x{}: choose a \
                 preset of that size (see `vitkit models`)",
                self.side(),
                self.side(),
                size[0],
                size[1]
            )));
        }
        self.in_chans = a.in_chans.unwrap_or(self.in_chans);
        Ok(())
    }

    /// The generator's forward pass (what sampling costs).
    fn forward_macs(&self) -> f64 {
        match &self.generator {
            GeneratorConfig::Nest(n) => n.macs(self.latent_dim, self.in_chans),
            GeneratorConfig::Conv(c) => {
                let mut side = c.base as f64;
                let mut macs = self.latent_dim as f64 * side * side * c.dims[0] as f64;
                for w in c.dims.windows(2) {
                    // Each input pixel spreads a 4×4 kernel over the output (stride 2).
                    macs += side * side * 16.0 * (w[0] * w[1]) as f64;
                    side *= 2.0;
                }
                macs + side * side * 9.0 * (c.dims[c.dims.len() - 1] * self.in_chans) as f64
            }
        }
    }

    /// Per real image: the discriminator's update runs the generator forward and the
    /// discriminator forward and backward on a real and a fake image; the generator's update
    /// runs both forward and backward: 4 generator and 9 discriminator passes.
    fn train_macs(&self) -> f64 {
        4.0 * self.forward_macs() + 9.0 * self.discriminator_macs()
    }

    fn head_params(&self) -> Vec<String> {
        Vec::new()
    }

    fn read_weights(&mut self, _: &StateDict, _: &Adaptation) -> Result<()> {
        Ok(())
    }

    fn fit_weights(&self, _: &mut StateDict, _: Resample) -> Result<()> {
        Ok(())
    }

    /// Generators draw in [−1, 1]: pixels `p` map to `(p − 0.5) / 0.5`.
    fn pretrained_mean_std(&self) -> (Vec<f32>, Vec<f32>) {
        (vec![0.5; self.in_chans], vec![0.5; self.in_chans])
    }
}

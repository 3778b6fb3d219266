//! Adversarial training of a generator against a discriminator: per batch one discriminator
//! update (real images against detached samples), then one generator update (fresh samples
//! through the just-updated discriminator), each step followed by the generator's moving
//! average. Validation is the FID of samples of the averaged generator against the test images,
//! on a fixed vitkit classifier's features; after each epoch a fixed-latent sample grid is
//! written to `samples/` in the run directory.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::optim::GradientsParams;
use burn::tensor::activation::{relu, sigmoid, softplus};
use burn::tensor::{Device, Distribution, Gradients, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::fid::{FeatureExtractor, FeatureStats, frechet_distance};
use super::task::{BestBy, Step, StepContext, Task};
use crate::data::{Batch, BatchSpec, DataInfo, DatasetSplits, ImageDataset, Normalize};
use crate::models::{Generative, Model};
use crate::{Result, VitError};

/// The adversarial loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GanLoss {
    /// D: `softplus(−D(x)) + softplus(D(G(z)))`; G: `softplus(−D(G(z)))` (Goodfellow's
    /// non-saturating form).
    #[default]
    NonSaturating,
    /// D: `relu(1 − D(x)) + relu(1 + D(G(z)))`; G: `−D(G(z))`.
    Hinge,
}

impl std::str::FromStr for GanLoss {
    type Err = VitError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "non-saturating" | "ns" => Ok(GanLoss::NonSaturating),
            "hinge" => Ok(GanLoss::Hinge),
            other => Err(VitError::Config(format!(
                "unknown GAN loss '{other}'; valid: non-saturating, hinge"
            ))),
        }
    }
}

/// The GAN recipe beyond the optimizer's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GanSettings {
    pub loss: GanLoss,
    /// Generated images FID compares with the test split after each epoch.
    pub fid_samples: usize,
}

impl Default for GanSettings {
    fn default() -> Self {
        Self {
            loss: GanLoss::NonSaturating,
            fid_samples: 5000,
        }
    }
}

/// Seed of the latent vectors of every epoch's sample grid and of validation's samples.
pub const SAMPLE_SEED: u64 = 20_211_230;

/// `n` latent vectors of `dim` standard-normal values from `seed` (Box–Muller), row-major.
pub fn latent_vectors(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n * dim)
        .map(|_| {
            let u1: f64 = rng.random_range(f64::EPSILON..1.0);
            let u2: f64 = rng.random::<f64>();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

/// Images in [−1, 1] → bytes `[C, H, W]` per image.
pub fn to_bytes(images: &[f32]) -> Vec<u8> {
    images
        .iter()
        .map(|v| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8)
        .collect()
}

/// Hands `f` the images generated from the `n` latents of `seed`, `batch` at a time.
fn each_generated(
    generator: &dyn Generative,
    n: usize,
    seed: u64,
    average: bool,
    batch: usize,
    device: &Device,
    mut f: impl FnMut(Tensor<4>) -> Result<()>,
) -> Result<()> {
    let dim = generator.latent_dim();
    let z = latent_vectors(n, dim, seed);
    for chunk in z.chunks(batch.max(1) * dim) {
        let rows = chunk.len() / dim;
        let zt = Tensor::<2>::from_data(TensorData::new(chunk.to_vec(), [rows, dim]), device);
        f(generator.generate(zt, average))?;
    }
    Ok(())
}

/// Generates `n` images in [−1, 1] from the latents of `seed`, `batch` at a time, on the host
/// (`[n, C, H, W]` row-major).
pub fn generate_images(
    generator: &dyn Generative,
    n: usize,
    seed: u64,
    average: bool,
    batch: usize,
    device: &Device,
) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    each_generated(generator, n, seed, average, batch, device, |images| {
        out.extend(crate::nn::host_values(images)?);
        Ok(())
    })?;
    Ok(out)
}

/// FID of `n` samples of `generator` (seed `seed`) against reference statistics.
pub fn fid_against(
    generator: &dyn Generative,
    extractor: &FeatureExtractor,
    reference: &FeatureStats,
    n: usize,
    seed: u64,
    average: bool,
    device: &Device,
) -> Result<f64> {
    let mut features = Vec::new();
    each_generated(generator, n, seed, average, 256, device, |images| {
        features.extend(crate::nn::host_values(extractor.pixel_features(images)?)?);
        Ok(())
    })?;
    frechet_distance(&FeatureStats::of(&features, reference.dim)?, reference)
}

/// The discriminator's loss from its logits on real images and on (detached) samples.
pub fn discriminator_loss(loss: GanLoss, real: Tensor<2>, fake: Tensor<2>) -> Tensor<1> {
    match loss {
        GanLoss::NonSaturating => mean_of(softplus(real.neg(), 1.0)) + mean_of(softplus(fake, 1.0)),
        GanLoss::Hinge => mean_of(relu(real.neg().add_scalar(1.0))) + mean_of(relu(fake.add_scalar(1.0))),
    }
}

/// The generator's loss from the discriminator's logits on its samples.
pub fn generator_loss(loss: GanLoss, fake: Tensor<2>) -> Tensor<1> {
    match loss {
        GanLoss::NonSaturating => mean_of(softplus(fake.neg(), 1.0)),
        GanLoss::Hinge => mean_of(fake.neg()),
    }
}

pub struct GanTraining {
    pub settings: GanSettings,
    /// The classifier run whose features FID compares.
    pub extractor_dir: PathBuf,
    /// The data's normalisation (undone: the discriminator reads pixels in [−1, 1]).
    pub data_mean: Vec<f32>,
    pub data_std: Vec<f32>,
    /// The extractor and the test split's feature statistics, made at the first validation.
    reference: RefCell<Option<(FeatureExtractor, FeatureStats)>>,
}

impl GanTraining {
    /// The task for data described by `info` (whose normalisation the loader applies).
    pub fn new(settings: GanSettings, extractor_dir: PathBuf, info: &DataInfo) -> Self {
        Self {
            settings,
            extractor_dir,
            data_mean: info.mean.clone(),
            data_std: info.std.clone(),
            reference: RefCell::new(None),
        }
    }

    /// A normalised batch → pixels in [−1, 1].
    fn real_images(&self, batch: Batch, device: &Device) -> Tensor<4> {
        let shape = batch.shape;
        let plane = shape[2] * shape[3];
        let c = shape[1];
        let mut v = batch.into_images();
        for (i, x) in v.iter_mut().enumerate() {
            let ch = (i / plane) % c;
            let (m, s) = (
                self.data_mean[ch.min(self.data_mean.len() - 1)],
                self.data_std[ch.min(self.data_std.len() - 1)],
            );
            *x = 2.0 * (*x * s + m) - 1.0;
        }
        Tensor::from_data(TensorData::new(v, shape), device)
    }
}

fn mean_of(t: Tensor<2>) -> Tensor<1> {
    t.mean().reshape([1])
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

impl Task for GanTraining {
    fn batch_spec(&self) -> BatchSpec {
        BatchSpec {
            views: 1,
            labels: false,
            prepare: None,
        }
    }

    fn check(&self, model: &Model, data: &DatasetSplits) -> Result<()> {
        model.generative()?;
        FeatureExtractor::load(
            &self.extractor_dir,
            data.train.channels,
            [data.train.height, data.train.width],
            &Device::flex(),
        )?;
        if data.test.len() < 2 {
            return Err(VitError::Config("FID needs at least two test images".into()));
        }
        Ok(())
    }

    fn train_columns(&self) -> Vec<&'static str> {
        vec!["d_real", "d_fake", "g_loss"]
    }

    fn phases(&self) -> usize {
        2
    }

    fn step(&self, model: &Model, batch: Batch, ctx: &StepContext) -> Result<Step> {
        let gan = model.generative()?;
        let n = batch.len();
        let z = Tensor::<2>::random([n, gan.latent_dim()], Distribution::Normal(0.0, 1.0), ctx.device);
        if ctx.phase == 0 {
            let real = gan.discriminate(self.real_images(batch, ctx.device));
            let fake = gan.discriminate(gan.generate(z, false).detach());
            let loss = discriminator_loss(self.settings.loss, real.clone(), fake.clone());
            let values = vec![
                scalar(mean_of(sigmoid(real.detach()))),
                scalar(mean_of(sigmoid(fake.detach()))),
            ];
            Ok(Step { loss, values })
        } else {
            let fake = gan.discriminate(gan.generate(z, false));
            let loss = generator_loss(self.settings.loss, fake);
            let value = scalar(loss.clone().detach());
            Ok(Step {
                loss,
                values: vec![value],
            })
        }
    }

    /// The discriminator's update takes its gradients alone (the generator's samples are
    /// detached anyway); the generator's leaves the discriminator's gradients aside.
    fn phase_grads(&self, model: &Model, grads: Gradients, phase: usize) -> GradientsParams {
        match model.generative() {
            Ok(gan) if phase == 0 => GradientsParams::from_grads(grads, gan.discriminator()),
            Ok(gan) => GradientsParams::from_grads(grads, gan.generator()),
            Err(_) => GradientsParams::from_grads(grads, model),
        }
    }

    fn after_step(&self, model: Model) -> Model {
        model.update_average()
    }

    fn val_columns(&self) -> Vec<&'static str> {
        vec!["fid"]
    }

    fn validate(
        &self,
        model: &Model,
        data: Arc<ImageDataset>,
        _norm: &Normalize,
        batch_size: usize,
        device: &Device,
    ) -> Result<Vec<f64>> {
        let gan = model.generative()?;
        let mut reference = self.reference.borrow_mut();
        if reference.is_none() {
            let extractor = FeatureExtractor::load(
                &self.extractor_dir,
                data.channels,
                [data.height, data.width],
                device,
            )?;
            let (features, dim) = extractor.dataset_features(data, batch_size, device)?;
            *reference = Some((extractor, FeatureStats::of(&features, dim)?));
        }
        let Some((extractor, stats)) = reference.as_ref() else {
            return Err(VitError::Other("the FID reference was not made".into()));
        };
        let fid = fid_against(
            gan,
            extractor,
            stats,
            self.settings.fid_samples,
            SAMPLE_SEED,
            true,
            device,
        )?;
        Ok(vec![fid])
    }

    fn epoch_artifacts(&self, model: &Model, run_dir: &Path, epoch: usize, device: &Device) -> Result<()> {
        let gan = model.generative()?;
        let dir = run_dir.join("samples");
        std::fs::create_dir_all(&dir).map_err(|e| VitError::io(&dir, e))?;
        sample_grid(
            gan,
            64,
            SAMPLE_SEED,
            true,
            &dir.join(format!("epoch-{epoch:04}.png")),
            device,
        )
    }

    fn best_by(&self) -> BestBy {
        BestBy {
            column: "val_fid",
            higher_is_better: false,
        }
    }
}

/// Writes `n` samples of the latents of `seed` as a PNG grid (8 per row).
pub fn sample_grid(
    generator: &dyn Generative,
    n: usize,
    seed: u64,
    average: bool,
    path: &Path,
    device: &Device,
) -> Result<()> {
    let images = generate_images(generator, n, seed, average, 64, device)?;
    let [c, h, w] = generator.image_shape();
    image_grid(&images, c, h, w, 8, path)
}

/// Images in [−1, 1] `[n, C, H, W]` as a PNG grid of `cols` per row, unlabelled.
pub fn image_grid(images: &[f32], c: usize, h: usize, w: usize, cols: usize, path: &Path) -> Result<()> {
    let bytes = to_bytes(images);
    let tiles: Vec<(&[u8], String)> = bytes.chunks(c * h * w).map(|b| (b, String::new())).collect();
    crate::draw::image_grid_png(path, &tiles, c, h, w, cols, (84 / h.max(1)).max(1))
}

//! SiT pretraining (v1): two augmented views of each unlabelled image, each rotated by a
//! random multiple of 90° and corrupted; the model predicts the rotations, pulls the two views'
//! contrastive embeddings together (NT-Xent) and reconstructs the clean views (L1). The three
//! losses are combined with learned uncertainty weights `Σ exp(−a_t·s_t)·L_t + 0.5·s_t`.

use std::sync::Arc;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::classify::correct_predictions;
use super::task::{BestBy, Step, StepContext, Task};
use crate::data::pretext::{apply_corruptions, color_jitter, draw_corruptions, rotate, standard_normal};
use crate::data::{Batch, BatchLoader, BatchSpec, DatasetSplits, ImageDataset, Normalize};
use crate::models::sit::ROTATIONS;
use crate::models::{Model, PretextOutput};
use crate::{Result, VitError};

/// NT-Xent's temperature in SiT.
pub const TEMPERATURE: f64 = 0.5;
/// `a_t` of the uncertainty weighting: rotation, contrastive, reconstruction.
pub const LOSS_SCALES: [f64; 3] = [1.0, 1.0, 0.5];
/// Colour-jitter strength of each view (timm's `color_jitter = 0.4` in SiT's transform).
pub const COLOR_JITTER: f32 = 0.4;
/// Test images the validation pass reads (corrupted with a fixed seed).
pub const VAL_IMAGES: usize = 2048;

/// Which pretext tasks train (all three in SiT; the others are ablations), and the views'
/// colour jitter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SitTasks {
    pub rotation: bool,
    pub contrastive: bool,
    pub reconstruction: bool,
    /// Brightness/contrast/saturation jitter of each view (0: none).
    #[serde(default = "default_jitter")]
    pub color_jitter: f32,
}

fn default_jitter() -> f32 {
    COLOR_JITTER
}

impl Default for SitTasks {
    fn default() -> Self {
        Self {
            rotation: true,
            contrastive: true,
            reconstruction: true,
            color_jitter: COLOR_JITTER,
        }
    }
}

impl SitTasks {
    fn mask(&self) -> [f32; 3] {
        [self.rotation, self.contrastive, self.reconstruction].map(|on| if on { 1.0 } else { 0.0 })
    }
}

pub struct SitPretraining {
    pub tasks: SitTasks,
    pub batch_size: usize,
}

/// The pretext pipeline of one batch of two views: each view colour-jittered and rotated per
/// image (the clean target), then a corrupted copy. Views become `[clean 1, clean 2, corrupted 1, corrupted
/// 2]`; the targets are the rotations of view 1, then of view 2.
///
/// Non-square images cannot be turned by 90°: such a batch is left unprepared (no targets),
/// which the task reports as an error (every command checks the size before drawing).
pub fn prepare_views(batch: &mut Batch, norm: &Normalize, jitter: f32, rng: &mut StdRng) {
    let [n, c, h, w] = batch.shape;
    if h != w || batch.views.len() != 2 {
        return;
    }
    let len = c * h * w;
    let mut rotations = Vec::with_capacity(2 * n);
    let mut corrupted = Vec::new();
    for view in batch.views.iter_mut() {
        for i in 0..n {
            let r = rng.random_range(0..ROTATIONS as u32);
            let img = &mut view[i * len..(i + 1) * len];
            if jitter > 0.0 && norm.mean.len() == c {
                color_jitter(img, &norm.mean, &norm.std, jitter, rng);
            }
            let turned = rotate(img, c, h, r);
            img.copy_from_slice(&turned);
            rotations.push(r);
        }
        let mut copy = view.clone();
        let plan = draw_corruptions(rng, n, h, w);
        let mut noise_rng: StdRng = rand::SeedableRng::seed_from_u64(rng.random());
        apply_corruptions(&mut copy, batch.shape, &plan, &mut || {
            standard_normal(&mut noise_rng)
        });
        corrupted.push(copy);
    }
    batch.views.extend(corrupted);
    batch.targets = Some(rotations);
}

/// SimCLR's NT-Xent of two batches of embeddings `[B, E]`, positives the same row of the other
/// batch: rows L2-normalised, cosine similarities over τ, self excluded from each denominator,
/// the positive included; the mean over all 2B rows.
pub fn nt_xent(a: Tensor<2>, b: Tensor<2>, temperature: f64) -> Tensor<1> {
    let [n, _] = a.dims();
    let device = a.device();
    let z = Tensor::cat(vec![a, b], 0);
    let norm = z.clone().powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(1e-12);
    let z = z / norm;
    let sim = z.clone().matmul(z.transpose()).div_scalar(temperature);
    let m = 2 * n;
    let mut self_mask = vec![0f32; m * m];
    let mut positive = vec![0f32; m * m];
    for i in 0..m {
        self_mask[i * m + i] = -1e4;
        positive[i * m + (i + n) % m] = 1.0;
    }
    let self_mask = Tensor::<2>::from_data(TensorData::new(self_mask, [m, m]), &device);
    let positive = Tensor::<2>::from_data(TensorData::new(positive, [m, m]), &device);
    let pos = (sim.clone() * positive).sum_dim(1);
    let masked = sim + self_mask;
    let top = masked.clone().max_dim(1);
    let lse = (masked - top.clone()).exp().sum_dim(1).log() + top;
    (lse - pos).mean()
}

/// `Σ_t mask_t · (exp(−a_t·s_t)·L_t + 0.5·s_t)` of the task losses `[3]` and weights `s` `[3]`.
pub fn uncertainty_weighted(losses: Tensor<1>, s: Tensor<1>, scales: [f64; 3], mask: [f32; 3]) -> Tensor<1> {
    let device = s.device();
    let a = Tensor::<1>::from_data(TensorData::new(scales.map(|v| v as f32).to_vec(), [3]), &device);
    let mask = Tensor::<1>::from_data(TensorData::new(mask.to_vec(), [3]), &device);
    (((s.clone() * a).neg().exp() * losses + s.mul_scalar(0.5)) * mask).sum()
}

/// Cross-entropy of `logits` `[N, K]` against integer `targets`.
fn cross_entropy(logits: Tensor<2>, targets: &[u32]) -> Tensor<1> {
    let [n, k] = logits.dims();
    let mut onehot = vec![0f32; n * k];
    for (i, &t) in targets.iter().enumerate() {
        onehot[i * k + t as usize] = 1.0;
    }
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [n, k]), &logits.device());
    (log_softmax(logits, 1) * onehot).sum_dim(1).mean().neg()
}

/// The three task losses of one prepared batch (on `device`), and the rotation accuracy.
struct PretextLosses {
    /// `[rotation, contrastive, reconstruction]`, `[3]`.
    losses: Tensor<1>,
    rotation_acc: f64,
}

/// The model's pretext heads, or an error naming what it is.
pub fn pretext_heads(model: &Model) -> Result<&dyn crate::models::Pretext> {
    model.pretext().ok_or_else(|| {
        VitError::Config(format!(
            "a {} model has no pretext heads; SiT pretraining (and its reconstructions) take a \
             sit_* model built for pretraining",
            model.family()
        ))
    })
}

/// The first batch of `count` images of `data` through SiT's pipeline (`augment` first, then
/// `tasks`' jitter, rotations and corruptions), drawn with `seed`: what `show-data --method sit`
/// and the reconstructions picture.
pub fn pipeline_batch(
    data: Arc<ImageDataset>,
    count: usize,
    augment: Option<crate::data::Augment>,
    tasks: SitTasks,
    norm: &Normalize,
    seed: u64,
) -> Result<Batch> {
    let task = SitPretraining {
        tasks,
        batch_size: count,
    };
    BatchLoader::new(
        data,
        (0..count).collect(),
        count,
        augment,
        seed,
        norm.clone(),
        true,
        task.batch_spec(),
    )
    .next()
    .filter(|b| b.targets.is_some())
    .ok_or_else(|| VitError::Config(format!("no batch of {count} square images could be drawn")))
}

fn pretext_losses(model: &Model, batch: Batch, device: &Device) -> Result<(PretextLosses, Tensor<1>)> {
    let pretext = pretext_heads(model)?;
    let [n, c, h, w] = batch.shape;
    let rotations = batch
        .targets
        .clone()
        .ok_or_else(|| VitError::Other("the batch was not prepared for SiT".into()))?;
    let mut views = batch.views.into_iter();
    let (Some(clean1), Some(clean2), Some(bad1), Some(bad2)) =
        (views.next(), views.next(), views.next(), views.next())
    else {
        return Err(VitError::Other("a SiT batch holds four views".into()));
    };
    let tensor = |a: Vec<f32>, b: Vec<f32>| {
        Tensor::<4>::from_data(TensorData::new([a, b].concat(), [2 * n, c, h, w]), device)
    };
    let clean = tensor(clean1, clean2);
    let PretextOutput {
        rotation,
        contrastive,
        reconstruction,
    } = pretext.pretext(tensor(bad1, bad2))?;
    let rotation_loss = cross_entropy(rotation.clone(), &rotations);
    let contrastive_loss = nt_xent(
        contrastive.clone().narrow(0, 0, n),
        contrastive.narrow(0, n, n),
        TEMPERATURE,
    );
    let reconstruction_loss = (reconstruction - clean).abs().mean();
    let correct = correct_predictions(rotation, &rotations)?;
    Ok((
        PretextLosses {
            losses: Tensor::cat(vec![rotation_loss, contrastive_loss, reconstruction_loss], 0),
            rotation_acc: correct as f64 / (2 * n) as f64,
        },
        pretext.loss_weights()?,
    ))
}

fn values(t: Tensor<1>) -> Result<Vec<f64>> {
    Ok(crate::nn::host_values(t)?.into_iter().map(f64::from).collect())
}

impl Task for SitPretraining {
    fn batch_spec(&self) -> BatchSpec {
        let jitter = self.tasks.color_jitter;
        BatchSpec {
            views: 2,
            labels: false,
            prepare: Some(Arc::new(
                move |batch: &mut Batch, norm: &Normalize, rng: &mut StdRng| {
                    prepare_views(batch, norm, jitter, rng)
                },
            )),
        }
    }

    fn check(&self, model: &Model, data: &DatasetSplits) -> Result<()> {
        pretext_heads(model)?;
        let train = &data.train;
        if train.height != train.width {
            return Err(VitError::Config(format!(
                "SiT rotates images by 90 degrees: they must be square, not {}x{}",
                train.height, train.width
            )));
        }
        if train.len() < self.batch_size.max(2) {
            return Err(VitError::Config(format!(
                "SiT's contrastive loss compares each view with the 2B-1 other views of a full \
                 batch, but the training split has {} image(s), fewer than one batch of {}; \
                 lower --batch-size or add images",
                train.len(),
                self.batch_size
            )));
        }
        if data.test.len() < 2 {
            return Err(VitError::Config(
                "SiT validation needs at least two test images (one contrastive pair)".into(),
            ));
        }
        Ok(())
    }

    fn train_columns(&self) -> Vec<&'static str> {
        vec![
            "rotation_loss",
            "contrastive_loss",
            "reconstruction_loss",
            "rotation_s",
            "contrastive_s",
            "reconstruction_s",
            "rotation_acc",
        ]
    }

    fn step(&self, model: &Model, batch: Batch, ctx: &StepContext) -> Result<Step> {
        let (losses, s) = pretext_losses(model, batch, ctx.device)?;
        // The three losses and the three weights, read back in one transfer.
        let mut logged = values(Tensor::cat(vec![losses.losses.clone(), s.clone()], 0))?;
        logged.push(losses.rotation_acc);
        let loss = uncertainty_weighted(losses.losses, s, LOSS_SCALES, self.tasks.mask());
        Ok(Step { loss, values: logged })
    }

    fn val_columns(&self) -> Vec<&'static str> {
        vec![
            "loss",
            "rotation_loss",
            "contrastive_loss",
            "reconstruction_loss",
            "rotation_acc",
        ]
    }

    /// The same losses on the first [`VAL_IMAGES`] test images, corrupted with a fixed seed
    /// (their labels are not read).
    fn validate(
        &self,
        model: &Model,
        data: Arc<ImageDataset>,
        norm: &Normalize,
        batch_size: usize,
        device: &Device,
    ) -> Result<Vec<f64>> {
        let n = data.len().min(VAL_IMAGES);
        let batch = self.batch_size.min(batch_size).min(n).max(2);
        let loader = BatchLoader::new(
            data,
            (0..n).collect(),
            batch,
            None,
            17,
            norm.clone(),
            true,
            self.batch_spec(),
        );
        let mut sums = [0f64; 5];
        let mut count = 0usize;
        for b in loader {
            let size = b.len();
            let (losses, s) = pretext_losses(model, b, device)?;
            let total = uncertainty_weighted(losses.losses.clone(), s, LOSS_SCALES, self.tasks.mask());
            let each = values(losses.losses)?;
            let row = [values(total)?[0], each[0], each[1], each[2], losses.rotation_acc];
            for (sum, v) in sums.iter_mut().zip(row) {
                *sum += v * size as f64;
            }
            count += size;
        }
        Ok(sums.iter().map(|s| s / count.max(1) as f64).collect())
    }

    fn best_by(&self) -> BestBy {
        BestBy {
            column: "val_loss",
            higher_is_better: false,
        }
    }
}

use serde::{Deserialize, Serialize};

use crate::data::Augment;
use crate::{Result, VitError};

/// The recipe: saved in the run's `config.json`, and reused as is by `--resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate, reached at the end of warmup.
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f64,
    pub warmup_epochs: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub adam_eps: f64,
    pub label_smoothing: f64,
    /// Global gradient-norm clipping threshold (none when absent).
    pub grad_clip: Option<f64>,
    pub augment: Option<Augment>,
    pub seed: u64,
    /// Cap on optimizer steps per epoch (for quick trials); none means all.
    #[serde(default)]
    pub max_steps_per_epoch: Option<usize>,
    /// What is trained and how a batch becomes losses.
    #[serde(default)]
    pub task: TaskKind,
    /// Batches whose gradients are summed before each optimizer step (the effective batch is
    /// `batch_size × accum_steps`).
    #[serde(default = "one")]
    pub accum_steps: usize,
    /// Which parameters train.
    #[serde(default)]
    pub trainable: Trainable,
    /// The share of each class's training images used (1: all), drawn with `seed`.
    #[serde(default = "all")]
    pub label_fraction: f64,
    /// The classifier run whose features FID is computed on (`--task gan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid_features: Option<std::path::PathBuf>,
}

fn one() -> usize {
    1
}

fn all() -> f64 {
    1.0
}

/// The training tasks.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Single-label image classification (cross-entropy with label smoothing).
    #[default]
    Classify,
    /// SiT's self-supervised pretraining (rotation, contrastive and reconstruction pretext
    /// tasks with learned uncertainty weights); no label is read.
    Sit(super::sit::SitTasks),
    /// CLIP's contrastive training of an image and a text tower on image–caption pairs.
    Clip,
    /// Adversarial training of a generator against a discriminator (a GAN pair); no label is
    /// read.
    Gan(super::gan::GanSettings),
}

/// Which parameters the optimizer updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trainable {
    #[default]
    All,
    /// Only the classifier head (a linear probe); the frozen backbone runs as in inference.
    Head,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 128,
            lr: 1e-3,
            min_lr: 1e-5,
            warmup_epochs: 1.0,
            weight_decay: 0.05,
            beta1: 0.9,
            beta2: 0.999,
            adam_eps: 1e-8,
            label_smoothing: 0.1,
            grad_clip: Some(1.0),
            augment: None,
            seed: 0,
            max_steps_per_epoch: None,
            task: TaskKind::Classify,
            accum_steps: 1,
            trainable: Trainable::All,
            label_fraction: 1.0,
            fid_features: None,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(VitError::Config(m.to_string()));
        if self.epochs == 0 || self.batch_size == 0 || self.accum_steps == 0 {
            return bad("epochs, batch size and accumulation steps must be positive");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("learning rate must be a positive number");
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad("label smoothing must be in [0, 1)");
        }
        if self.warmup_epochs < 0.0 || self.weight_decay < 0.0 {
            return bad("warmup and weight decay must not be negative");
        }
        if !(self.label_fraction > 0.0 && self.label_fraction <= 1.0) {
            return bad("the label fraction must be in (0, 1]");
        }
        Ok(())
    }
}

/// Linear warmup to `lr` over `warmup` steps, then cosine decay to `min_lr` at `total`.
pub fn lr_at(step: usize, warmup: usize, total: usize, lr: f64, min_lr: f64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
}

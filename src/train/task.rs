//! A training task: what the loop drives. The loop owns the schedule, the optimizer,
//! accumulation, checkpoints and logs; the task owns how a batch is drawn, how it becomes
//! losses and metrics, how the model is validated, and which metric picks the best checkpoint.

use std::path::Path;
use std::sync::Arc;

use burn::optim::GradientsParams;
use burn::tensor::{Device, Gradients, Tensor};

use crate::Result;
use crate::data::{Batch, BatchSpec, DatasetSplits, ImageDataset, Normalize};
use crate::models::Model;

/// What one step of a task sees besides the batch.
pub struct StepContext<'a> {
    /// The training device (with autodiff).
    pub device: &'a Device,
    /// Only the head trains: the backbone may run as in inference, without autodiff.
    pub frozen_backbone: bool,
    /// Which of the task's updates of this batch runs (see [`Task::phases`]); 0 for most.
    pub phase: usize,
}

/// One batch's forward pass (of one phase).
pub struct Step {
    /// The loss to minimise (`[1]`); the first phase's is logged as `train_loss`.
    pub loss: Tensor<1>,
    /// Batch means of the task's other training columns, in [`Task::train_columns`] order
    /// (each phase gives its own, in phase order).
    pub values: Vec<f64>,
}

/// Which validation column picks the best checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BestBy {
    /// A log column, e.g. `val_acc`.
    pub column: &'static str,
    pub higher_is_better: bool,
}

impl BestBy {
    /// Whether `value` beats `best` (a NaN never does).
    pub fn improves(&self, value: f64, best: f64) -> bool {
        if self.higher_is_better {
            value > best
        } else {
            value < best
        }
    }
}

pub trait Task {
    /// Views and labels the loader hands each step.
    fn batch_spec(&self) -> BatchSpec;
    /// Checks that the model and the data fit the task, before anything is written.
    fn check(&self, model: &Model, data: &DatasetSplits) -> Result<()>;
    /// Training columns after `train_loss`, each logged as `train_<name>`.
    fn train_columns(&self) -> Vec<&'static str>;
    /// The forward pass of one batch (of phase `ctx.phase`).
    fn step(&self, model: &Model, batch: Batch, ctx: &StepContext) -> Result<Step>;
    /// Optimizer updates per batch, each with its own forward pass of the same batch and the
    /// model as the update before left it (a GAN: the discriminator's, then the generator's).
    fn phases(&self) -> usize {
        1
    }
    /// The part of phase `phase`'s gradients the optimizer applies: all of them by default; an
    /// adversarial task keeps the part of the model that phase trains.
    fn phase_grads(&self, model: &Model, grads: Gradients, phase: usize) -> GradientsParams {
        let _ = phase;
        GradientsParams::from_grads(grads, model)
    }
    /// Writes what a person checks along the way (a GAN's sample grid) into the run directory,
    /// after each epoch's validation; `model` is in inference mode.
    fn epoch_artifacts(&self, model: &Model, run_dir: &Path, epoch: usize, device: &Device) -> Result<()> {
        let _ = (model, run_dir, epoch, device);
        Ok(())
    }
    /// Runs after each optimizer step (e.g. a clamp on a learned temperature).
    fn after_step(&self, model: Model) -> Model {
        model
    }
    /// Validation columns, each logged as `val_<name>`.
    fn val_columns(&self) -> Vec<&'static str>;
    /// Validates `model` (in inference mode, on a device without autodiff) on `data`: one value
    /// per validation column.
    fn validate(
        &self,
        model: &Model,
        data: Arc<ImageDataset>,
        norm: &Normalize,
        batch_size: usize,
        device: &Device,
    ) -> Result<Vec<f64>>;
    fn best_by(&self) -> BestBy;
}

//! The training loop: drives a [`Task`] with AdamW, warmup + cosine, global-norm clipping and
//! gradient accumulation; validates and writes an atomic checkpoint every epoch; resumable
//! from the last one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsAccumulator;
use burn::tensor::Device;

use super::checkpoints::checkpoint_name;
use super::log::{EpochRecord, show_value};
use super::run_dir::{EpochCloser, OpenedRun, Schedule, open_run};
use super::task::{StepContext, Task};
use super::{RunConfig, TrainState, Trainable, clip_grad_norm, freeze_backbone};
use crate::data::{BatchLoader, DatasetSplits};
use crate::models::Model;
use crate::{Result, VitError};

#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub state: TrainState,
    pub history: Vec<EpochRecord>,
    pub last_checkpoint: PathBuf,
}

/// How one invocation of [`train`] treats the run directory.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Continue from the run's last checkpoint, with its saved recipe.
    pub resume: bool,
    /// Return after this epoch of the schedule (the run can be resumed later).
    pub stop_after_epoch: Option<usize>,
}

/// Trains `model` (built on `device`, which must have autodiff) for `task` on `splits` into
/// `run_dir`.
pub fn train(
    model: impl Into<Model>,
    task: &dyn Task,
    run: RunConfig,
    splits: &DatasetSplits,
    run_dir: &Path,
    session: &Session,
    device: &Device,
) -> Result<TrainOutcome> {
    let model = model.into();
    task.check(&model, splits)?;
    let norm = run.normalize()?;
    norm.check_channels(splits.train.channels)?;
    let train_data = Arc::new(splits.train.clone());
    let test_data = Arc::new(splits.test.clone());
    let model_config = run.model.clone();
    let OpenedRun {
        mut model,
        mut optim,
        mut state,
        run,
        cfg,
    } = open_run(
        model,
        run,
        run_dir,
        session.resume,
        task.best_by().column,
        |model, cfg, _| {
            let accum = cfg.accum_steps.max(1);
            if train_data.len() / (cfg.batch_size * accum) == 0 {
                return Err(VitError::Config(format!(
                    "batch size {} x {accum} accumulation step(s) is larger than the {} training images",
                    cfg.batch_size,
                    train_data.len()
                )));
            }
            Ok(match cfg.trainable {
                Trainable::All => model,
                Trainable::Head => freeze_backbone(model, &model_config),
            })
        },
    )?;
    let accum = cfg.accum_steps.max(1);
    let full_steps = train_data.len() / (cfg.batch_size * accum);
    let schedule = Schedule::new(&cfg, full_steps, session);
    let steps_per_epoch = schedule.steps_per_epoch;
    if accum > 1 && task.phases() > 1 {
        return Err(VitError::Config(
            "gradient accumulation applies to single-update tasks; this task updates its parts in turn \
             (use a larger --batch-size instead of --accum-steps)"
                .into(),
        ));
    }
    let ctx = StepContext {
        device,
        frozen_backbone: cfg.trainable == Trainable::Head,
        phase: 0,
    };
    let train_columns = task.train_columns();
    let mut closer = EpochCloser::new(run_dir, &run, cfg.epochs, task.best_by(), &state);
    while state.epoch < schedule.last_epoch {
        let epoch = state.epoch;
        let epoch_start = Instant::now();
        let mut order = schedule.epoch_order(&cfg, train_data.len(), epoch, device);
        order.truncate(steps_per_epoch * accum * cfg.batch_size);
        let loader = BatchLoader::new(
            train_data.clone(),
            order,
            cfg.batch_size,
            cfg.augment,
            cfg.seed ^ (epoch as u64) << 32,
            norm.clone(),
            true,
            task.batch_spec(),
        );
        // Sums over the epoch's images: train_loss first, then the task's columns.
        let mut sums = vec![0f64; 1 + train_columns.len()];
        let mut seen = 0usize;
        let mut lr = cfg.lr;
        let mut accumulated = GradientsAccumulator::new();
        for (i, batch) in loader.enumerate() {
            let micro = i % accum;
            if micro == 0 {
                lr = schedule.lr(&cfg, state.step);
            }
            let b = batch.len();
            // Each phase reads the same batch: earlier ones a copy, the last one the batch.
            let mut copies: Vec<_> = (1..task.phases()).map(|_| batch.clone()).collect();
            copies.push(batch);
            let mut values = Vec::new();
            let mut first_loss = 0.0;
            for (phase, this) in copies.into_iter().enumerate() {
                let ctx = StepContext { phase, ..ctx };
                let step = task.step(&model, this, &ctx)?;
                let loss_value = step.loss.clone().into_scalar::<f32>() as f64;
                if !loss_value.is_finite() {
                    closer.progress.end();
                    return Err(VitError::Diverged(format!(
                        "loss became {loss_value} at epoch {}, step {} (lr {lr:.3e}); the last good checkpoint is intact{}",
                        epoch + 1,
                        state.step,
                        if state.epoch > 0 {
                            format!(" at {}", run_dir.join(checkpoint_name(state.epoch)).display())
                        } else {
                            " (none was written yet)".into()
                        }
                    )));
                }
                if phase == 0 {
                    first_loss = loss_value;
                }
                values.extend(step.values);
                // With accumulation each batch's loss counts 1/accum of the step's, so the summed
                // gradient is that of the mean loss over all accumulated images.
                let loss = if accum > 1 {
                    step.loss.div_scalar(accum as f64)
                } else {
                    step.loss
                };
                let mut grads = task.phase_grads(&model, loss.backward(), phase);
                if accum > 1 {
                    accumulated.accumulate(&model, grads);
                    if micro + 1 < accum {
                        continue;
                    }
                    grads = std::mem::take(&mut accumulated).grads();
                }
                clip_grad_norm(&model, &mut grads, cfg.grad_clip);
                model = optim.step(lr, model, grads);
            }
            for (sum, v) in sums.iter_mut().zip(std::iter::once(first_loss).chain(values)) {
                *sum += v * b as f64;
            }
            seen += b;
            if accum > 1 && micro + 1 < accum {
                continue;
            }
            model = task.after_step(model);
            state.step += 1;
            let secs = epoch_start.elapsed().as_secs_f64();
            let shown: Vec<String> = std::iter::once("loss")
                .chain(train_columns.iter().copied())
                .zip(&sums)
                .map(|(c, s)| show_value(c, s / seen as f64))
                .collect();
            closer.progress.show(
                &format!(
                    "epoch {}/{} [{:>4}/{}] {} lr {:.2e} {:.0} img/s",
                    epoch + 1,
                    cfg.epochs,
                    (i + 1) / accum,
                    steps_per_epoch,
                    shown.join(" "),
                    lr,
                    seen as f64 / secs
                ),
                false,
            );
        }
        let train_s = epoch_start.elapsed().as_secs_f64();
        let inference = model.valid();
        let eval_device = device.clone().inner();
        let val = task.validate(
            &inference,
            test_data.clone(),
            &norm,
            cfg.batch_size.max(256),
            &eval_device,
        )?;
        task.epoch_artifacts(&inference, run_dir, state.epoch + 1, &eval_device)?;
        drop(inference);
        state.epoch += 1;
        let epoch_s = epoch_start.elapsed().as_secs_f64();
        state.elapsed_s = closer.elapsed_s();
        let mut columns: Vec<(String, f64)> = std::iter::once("loss")
            .chain(train_columns.iter().copied())
            .zip(&sums)
            .map(|(c, s)| (format!("train_{c}"), s / seen.max(1) as f64))
            .collect();
        columns.extend(
            task.val_columns()
                .into_iter()
                .zip(val)
                .map(|(c, v)| (format!("val_{c}"), v)),
        );
        let rec = EpochRecord {
            epoch: state.epoch,
            step: state.step,
            lr,
            columns,
            images_per_s: seen as f64 / train_s,
            epoch_s,
            elapsed_s: state.elapsed_s,
        };
        closer.close(rec, &mut state, &model, &optim)?;
    }
    Ok(closer.finish(state))
}

//! The training loop: drives a [`Task`] with AdamW, warmup + cosine, global-norm clipping and
//! gradient accumulation; validates and writes an atomic checkpoint every epoch; resumable
//! from the last one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsAccumulator;
use burn::tensor::Device;

use super::checkpoints::{checkpoint_name, load_resume, save_checkpoint};
use super::log::{EpochRecord, Progress, append_logs, show_value};
use super::task::{StepContext, Task};
use super::{RunConfig, TrainState, Trainable, build_optimizer, clip_grad_norm, freeze_backbone, lr_at};
use crate::data::{BatchLoader, DatasetSplits, shuffled_indices};
use crate::io::write_json_atomic;
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
    let resume = session.resume;
    let fresh_cfg = run
        .train
        .clone()
        .ok_or_else(|| VitError::Config("no training configuration".into()))?;
    fresh_cfg.validate()?;
    task.check(&model, splits)?;
    let norm = run.normalize()?;
    norm.check_channels(splits.train.channels)?;
    let has_checkpoints = run_dir.join("last.json").exists();
    if !resume && has_checkpoints {
        return Err(VitError::Config(format!(
            "{} already holds a training run; pass --resume to continue it or choose another --out",
            run_dir.display()
        )));
    }
    // On resume the checkpoint's weights come first: the optimizer's parameter groups (which
    // parameters skip weight decay) are keyed by the restored parameter ids.
    let (model, resumed) = if resume && has_checkpoints {
        let (model, r) = load_resume(model, run_dir, &run)?;
        eprintln!(
            "resuming {} from epoch {} (step {})",
            run_dir.display(),
            r.state.epoch,
            r.state.step
        );
        (model, Some(r))
    } else {
        (model, None)
    };
    // A resumed run continues with its saved recipe: freezing and the optimizer follow it.
    let cfg = resumed
        .as_ref()
        .and_then(|r| r.run.train.clone())
        .unwrap_or(fresh_cfg);
    cfg.validate()?;
    let accum = cfg.accum_steps.max(1);
    let train_data = Arc::new(splits.train.clone());
    let test_data = Arc::new(splits.test.clone());
    let full_steps = train_data.len() / (cfg.batch_size * accum);
    if full_steps == 0 {
        return Err(VitError::Config(format!(
            "batch size {} x {accum} accumulation step(s) is larger than the {} training images",
            cfg.batch_size,
            train_data.len()
        )));
    }
    let model = match cfg.trainable {
        Trainable::All => model,
        Trainable::Head => freeze_backbone(model, &run.model),
    };
    let optim = build_optimizer(&model, &run.model, &cfg);
    // Only now, with every check passed, is the run directory written.
    let (mut model, mut optim, mut state, run) = match resumed {
        Some(r) => {
            let optim = r.restore_optimizer(optim)?;
            (model, optim, r.state, r.run)
        }
        None => {
            std::fs::create_dir_all(run_dir).map_err(|e| VitError::io(run_dir, e))?;
            write_json_atomic(&run_dir.join("config.json"), &run)?;
            let state = TrainState {
                best_metric: task.best_by().column.to_string(),
                ..TrainState::default()
            };
            (model, optim, state, run)
        }
    };
    let steps_per_epoch = cfg.max_steps_per_epoch.map_or(full_steps, |m| m.min(full_steps));
    let total_steps = steps_per_epoch * cfg.epochs;
    let warmup = (cfg.warmup_epochs * steps_per_epoch as f64).round() as usize;
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
    let best_by = task.best_by();
    let mut progress = Progress::new();
    let mut history = Vec::new();
    let mut last_checkpoint = run_dir.join("last.json");
    let session_start = Instant::now();
    let elapsed_before = state.elapsed_s;

    let last_epoch = session.stop_after_epoch.map_or(cfg.epochs, |e| e.min(cfg.epochs));
    while state.epoch < last_epoch {
        let epoch = state.epoch;
        let epoch_start = Instant::now();
        device.seed(cfg.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
        let mut order = shuffled_indices(train_data.len(), cfg.seed.wrapping_add(epoch as u64 * 7919));
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
                lr = lr_at(state.step, warmup, total_steps, cfg.lr, cfg.min_lr);
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
                    progress.end();
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
            progress.show(
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
        state.elapsed_s = elapsed_before + session_start.elapsed().as_secs_f64();
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
        let value = rec
            .get(best_by.column)
            .ok_or_else(|| VitError::Other(format!("the task logs no column {}", best_by.column)))?;
        let is_best = best_by.improves(value, state.best_value) || state.best_epoch == 0;
        if is_best {
            state.best_value = value;
            state.best_epoch = state.epoch;
        }
        let show = |prefix: &str| -> String {
            rec.columns
                .iter()
                .filter(|(c, _)| c.starts_with(prefix))
                .map(|(c, v)| show_value(c, *v))
                .collect::<Vec<_>>()
                .join(" ")
        };
        progress.show(
            &format!(
                "epoch {}/{} train {} | val {} | {:.0} img/s, {:.0}s{}",
                rec.epoch,
                cfg.epochs,
                show("train_"),
                show("val_"),
                rec.images_per_s,
                epoch_s,
                if is_best { " (best)" } else { "" }
            ),
            true,
        );
        progress.end();
        last_checkpoint = save_checkpoint(run_dir, &model, &optim, &state, &run, is_best, value)?;
        append_logs(run_dir, &rec)?;
        history.push(rec);
    }
    Ok(TrainOutcome {
        state,
        history,
        last_checkpoint,
    })
}

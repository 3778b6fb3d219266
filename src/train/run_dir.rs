//! What every training loop does with its run directory: opens it (fresh, or resumed from the
//! last checkpoint with the saved recipe and optimizer state) and closes each epoch into it
//! (the best epoch so far, the epoch's line, an atomic checkpoint, the log rows).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::optim::ModuleOptimizer;
use burn::tensor::Device;

use super::checkpoints::{load_resume, save_checkpoint};
use super::log::{EpochRecord, Progress, append_logs, show_value};
use super::{BestBy, RunConfig, Session, TrainConfig, TrainOutcome, TrainState, build_optimizer, lr_at};
use crate::data::shuffled_indices;
use crate::io::write_json_atomic;
use crate::models::Model;
use crate::{Result, VitError};

/// A run directory ready for its next epoch.
pub(super) struct OpenedRun {
    pub model: Model,
    pub optim: ModuleOptimizer,
    pub state: TrainState,
    /// The saved configuration on resume, else the one given.
    pub run: RunConfig,
    /// The recipe that continues (a resumed run keeps its saved one).
    pub cfg: TrainConfig,
}

/// Opens `run_dir` for training `model` as `run` describes. `prepare` readies the model (fresh,
/// or with the checkpoint's weights when told `true`) under the recipe that continues — e.g.
/// freezes the backbone — and makes the last checks: the directory is written only after it.
pub(super) fn open_run(
    model: Model,
    run: RunConfig,
    run_dir: &Path,
    resume: bool,
    best_metric: &str,
    prepare: impl FnOnce(Model, &TrainConfig, bool) -> Result<Model>,
) -> Result<OpenedRun> {
    let fresh_cfg = run
        .train
        .clone()
        .ok_or_else(|| VitError::Config("no training configuration".into()))?;
    fresh_cfg.validate()?;
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
    let cfg = resumed
        .as_ref()
        .and_then(|r| r.run.train.clone())
        .unwrap_or(fresh_cfg);
    cfg.validate()?;
    let model = prepare(model, &cfg, resumed.is_some())?;
    let optim = build_optimizer(&model, &run.model, &cfg);
    Ok(match resumed {
        Some(r) => OpenedRun {
            optim: r.restore_optimizer(optim)?,
            model,
            state: r.state,
            run: r.run,
            cfg,
        },
        None => {
            std::fs::create_dir_all(run_dir).map_err(|e| VitError::io(run_dir, e))?;
            write_json_atomic(&run_dir.join("config.json"), &run)?;
            let state = TrainState {
                best_metric: best_metric.to_string(),
                ..TrainState::default()
            };
            OpenedRun {
                model,
                optim,
                state,
                run,
                cfg,
            }
        }
    })
}

/// How a session of a run steps through its epochs.
pub(super) struct Schedule {
    pub steps_per_epoch: usize,
    total_steps: usize,
    warmup: usize,
    /// The epoch this session stops after.
    pub last_epoch: usize,
}

impl Schedule {
    /// `full_steps` optimizer steps make a whole epoch (fewer with `--max-steps-per-epoch`).
    pub fn new(cfg: &TrainConfig, full_steps: usize, session: &Session) -> Self {
        let steps_per_epoch = cfg.max_steps_per_epoch.map_or(full_steps, |m| m.min(full_steps));
        Self {
            steps_per_epoch,
            total_steps: steps_per_epoch * cfg.epochs,
            warmup: (cfg.warmup_epochs * steps_per_epoch as f64).round() as usize,
            last_epoch: session.stop_after_epoch.map_or(cfg.epochs, |e| e.min(cfg.epochs)),
        }
    }

    /// The learning rate of optimizer step `step`: warmup, then cosine.
    pub fn lr(&self, cfg: &TrainConfig, step: usize) -> f64 {
        lr_at(step, self.warmup, self.total_steps, cfg.lr, cfg.min_lr)
    }

    /// Seeds `device` for `epoch` and returns the epoch's order of the `n` training items.
    pub fn epoch_order(&self, cfg: &TrainConfig, n: usize, epoch: usize, device: &Device) -> Vec<usize> {
        device.seed(cfg.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
        shuffled_indices(n, cfg.seed.wrapping_add(epoch as u64 * 7919))
    }
}

/// Closes a session's epochs into the run directory and keeps their records.
pub(super) struct EpochCloser<'a> {
    run_dir: &'a Path,
    run: &'a RunConfig,
    epochs: usize,
    best_by: BestBy,
    pub progress: Progress,
    history: Vec<EpochRecord>,
    last_checkpoint: PathBuf,
    session_start: Instant,
    elapsed_before: f64,
}

impl<'a> EpochCloser<'a> {
    pub fn new(
        run_dir: &'a Path,
        run: &'a RunConfig,
        epochs: usize,
        best_by: BestBy,
        state: &TrainState,
    ) -> Self {
        Self {
            run_dir,
            run,
            epochs,
            best_by,
            progress: Progress::new(),
            history: Vec::new(),
            last_checkpoint: run_dir.join("last.json"),
            session_start: Instant::now(),
            elapsed_before: state.elapsed_s,
        }
    }

    /// Training wall time of the run so far, earlier sessions included.
    pub fn elapsed_s(&self) -> f64 {
        self.elapsed_before + self.session_start.elapsed().as_secs_f64()
    }

    /// Marks the epoch of `rec` best if it is, shows its line, writes `model` and `optim` as its
    /// checkpoint and appends the log rows.
    pub fn close(
        &mut self,
        rec: EpochRecord,
        state: &mut TrainState,
        model: &Model,
        optim: &ModuleOptimizer,
    ) -> Result<()> {
        let column = self.best_by.column;
        let value = rec
            .get(column)
            .ok_or_else(|| VitError::Other(format!("the task logs no column {column}")))?;
        let is_best = self.best_by.improves(value, state.best_value) || state.best_epoch == 0;
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
        self.progress.show(
            &format!(
                "epoch {}/{} train {} | val {} | {:.0} img/s, {:.0}s{}",
                rec.epoch,
                self.epochs,
                show("train_"),
                show("val_"),
                rec.images_per_s,
                rec.epoch_s,
                if is_best { " (best)" } else { "" }
            ),
            true,
        );
        self.progress.end();
        self.last_checkpoint = save_checkpoint(self.run_dir, model, optim, state, self.run, is_best, value)?;
        append_logs(self.run_dir, &rec)?;
        self.history.push(rec);
        Ok(())
    }

    /// What the session did.
    pub fn finish(self, state: TrainState) -> TrainOutcome {
        TrainOutcome {
            state,
            history: self.history,
            last_checkpoint: self.last_checkpoint,
        }
    }
}

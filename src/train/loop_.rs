//! The training loop: AdamW with warmup + cosine, label smoothing, global-norm clipping,
//! validation and an atomic checkpoint every epoch, resumable from the last one.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Bytes, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::{build_optimizer, clip_grad_norm, evaluate, lr_at};
use crate::data::{BatchLoader, DatasetSplits, Normalize, shuffled_indices};
use crate::io::{
    CheckpointPaths, Pointer, RunConfig, TrainState, Which, find_checkpoint, load_weights, read_json,
    save_weights, write_atomic, write_json_atomic,
};
use crate::models::ImageClassifier;
use crate::{Result, VitError};

/// One row of `log.jsonl` / `log.csv`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub step: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    pub val_top5: f64,
    pub images_per_s: f64,
    pub epoch_s: f64,
    pub elapsed_s: f64,
}

#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub state: TrainState,
    pub history: Vec<EpochRecord>,
    pub last_checkpoint: PathBuf,
}

const CSV_HEADER: &str =
    "epoch,step,lr,train_loss,train_acc,val_loss,val_acc,val_top5,images_per_s,epoch_s,elapsed_s\n";

fn checkpoint_name(epoch: usize) -> String {
    format!("checkpoints/epoch-{epoch:04}")
}

/// `(1-ε)·onehot + ε/K` targets, built on the host.
fn smoothed_targets(labels: &[u32], classes: usize, smoothing: f64) -> Vec<f32> {
    let off = (smoothing / classes as f64) as f32;
    let on = (1.0 - smoothing) as f32 + off;
    let mut t = vec![off; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        t[i * classes + l as usize] = on;
    }
    t
}

struct Progress {
    tty: bool,
    last: Instant,
}

impl Progress {
    fn show(&mut self, line: &str, force: bool) {
        let every = if self.tty { 0.25 } else { 30.0 };
        if !force && self.last.elapsed().as_secs_f64() < every {
            return;
        }
        self.last = Instant::now();
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
    fn end(&mut self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// Loads a run's last checkpoint for `--resume`, checking it belongs to the same model/data.
fn load_resume<M: ImageClassifier>(
    model: M,
    run_dir: &Path,
    run: &RunConfig,
    optim: ModuleOptimizer,
) -> Result<(M, ModuleOptimizer, TrainState, RunConfig)> {
    let ck = find_checkpoint(run_dir, Which::Last)?;
    let saved: RunConfig = read_json(&ck.config())?;
    if saved.model != run.model || saved.data.name != run.data.name {
        return Err(VitError::CheckpointMismatch {
            path: ck.dir.clone(),
            reason: format!(
                "it was trained as {} on '{}', not {} on '{}'; nothing was changed",
                saved.model_name, saved.data.name, run.model_name, run.data.name
            ),
        });
    }
    let (model, _) = load_weights(model, &ck.model(), true)?;
    let bytes = std::fs::read(ck.optimizer()).map_err(|e| VitError::io(ck.optimizer(), e))?;
    let optim = optim
        .from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(|e| VitError::Checkpoint {
            path: ck.optimizer(),
            reason: format!("optimizer state unreadable: {e:?}"),
        })?;
    let state: TrainState = read_json(&ck.state())?;
    Ok((model, optim, state, saved))
}

fn save_checkpoint<M: Module>(
    run_dir: &Path,
    model: &M,
    optim: &ModuleOptimizer,
    state: &TrainState,
    run: &RunConfig,
    is_best: bool,
    val_acc: f64,
) -> Result<PathBuf> {
    let name = checkpoint_name(state.epoch);
    let final_dir = run_dir.join(&name);
    let tmp_dir = run_dir.join(format!("{name}.partial"));
    let _ = std::fs::remove_dir_all(&tmp_dir);
    std::fs::create_dir_all(&tmp_dir).map_err(|e| VitError::io(&tmp_dir, e))?;
    let tmp = CheckpointPaths::new(&tmp_dir);
    let mut meta = BTreeMap::new();
    meta.insert("vitkit.model".to_string(), run.model_name.clone());
    meta.insert("vitkit.epoch".to_string(), state.epoch.to_string());
    save_weights(model, &tmp.model(), &meta)?;
    let bytes = optim
        .into_bytes()
        .map_err(|e| VitError::Other(format!("optimizer state: {e:?}")))?;
    write_atomic(&tmp.optimizer(), &bytes)?;
    write_json_atomic(&tmp.state(), state)?;
    write_json_atomic(&tmp.config(), run)?;
    if final_dir.exists() {
        // A re-run of this epoch after a resume: the new one replaces it.
        std::fs::remove_dir_all(&final_dir).map_err(|e| VitError::io(&final_dir, e))?;
    }
    std::fs::rename(&tmp_dir, &final_dir).map_err(|e| VitError::io(&final_dir, e))?;
    let ptr = Pointer {
        checkpoint: name,
        epoch: state.epoch,
        val_acc: Some(val_acc),
    };
    write_json_atomic(&run_dir.join("last.json"), &ptr)?;
    if is_best {
        write_json_atomic(&run_dir.join("best.json"), &ptr)?;
    }
    prune_checkpoints(run_dir)?;
    Ok(final_dir)
}

/// Keeps the last two checkpoints and the best one.
fn prune_checkpoints(run_dir: &Path) -> Result<()> {
    let keep: Vec<String> = ["last.json", "best.json"]
        .iter()
        .filter_map(|p| read_json::<Pointer>(&run_dir.join(p)).ok())
        .map(|p| p.checkpoint)
        .collect();
    let dir = run_dir.join("checkpoints");
    let mut epochs: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| VitError::io(&dir, e))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("epoch-") && !n.ends_with(".partial"))
        .collect();
    epochs.sort();
    let n = epochs.len();
    for (i, e) in epochs.into_iter().enumerate() {
        let rel = format!("checkpoints/{e}");
        if i + 2 < n && !keep.contains(&rel) {
            let _ = std::fs::remove_dir_all(dir.join(e));
        }
    }
    Ok(())
}

fn append_logs(run_dir: &Path, rec: &EpochRecord) -> Result<()> {
    use std::fs::OpenOptions;
    let jsonl = run_dir.join("log.jsonl");
    let csv = run_dir.join("log.csv");
    let new_csv = !csv.exists();
    let line = serde_json::to_string(rec).map_err(|e| VitError::Other(e.to_string()))?;
    let open = |p: &Path| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| VitError::io(p, e))
    };
    writeln!(open(&jsonl)?, "{line}").map_err(|e| VitError::io(&jsonl, e))?;
    let mut f = open(&csv)?;
    if new_csv {
        f.write_all(CSV_HEADER.as_bytes())
            .map_err(|e| VitError::io(&csv, e))?;
    }
    writeln!(
        f,
        "{},{},{:.6e},{:.5},{:.5},{:.5},{:.5},{:.5},{:.1},{:.1},{:.1}",
        rec.epoch,
        rec.step,
        rec.lr,
        rec.train_loss,
        rec.train_acc,
        rec.val_loss,
        rec.val_acc,
        rec.val_top5,
        rec.images_per_s,
        rec.epoch_s,
        rec.elapsed_s
    )
    .map_err(|e| VitError::io(&csv, e))
}

/// How one invocation of [`train`] treats the run directory.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Continue from the run's last checkpoint, with its saved recipe.
    pub resume: bool,
    /// Return after this epoch of the schedule (the run can be resumed later).
    pub stop_after_epoch: Option<usize>,
}

/// Trains `model` (built on `device`, which must have autodiff) on `splits` into `run_dir`.
pub fn train<M: ImageClassifier>(
    model: M,
    run: RunConfig,
    splits: &DatasetSplits,
    run_dir: &Path,
    session: &Session,
    device: &Device,
) -> Result<TrainOutcome> {
    let resume = session.resume;
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
    let optim = build_optimizer(&model, &fresh_cfg);
    let (mut model, mut optim, mut state, run) = if resume && has_checkpoints {
        let (m, o, s, saved) = load_resume(model, run_dir, &run, optim)?;
        eprintln!(
            "resuming {} from epoch {} (step {})",
            run_dir.display(),
            s.epoch,
            s.step
        );
        (m, o, s, saved)
    } else {
        std::fs::create_dir_all(run_dir).map_err(|e| VitError::io(run_dir, e))?;
        write_json_atomic(&run_dir.join("config.json"), &run)?;
        (model, optim, TrainState::default(), run)
    };
    let cfg = run.train.clone().unwrap_or(fresh_cfg);
    let classes = run.model.num_classes();
    if let Some(&bad) = splits.train.labels.iter().find(|&&l| l as usize >= classes) {
        return Err(VitError::Config(format!(
            "dataset has label {bad} but the model has {classes} classes"
        )));
    }
    let norm = Normalize {
        mean: run.data.mean.clone(),
        std: run.data.std.clone(),
        out_channels: run.model.in_chans(),
    };
    norm.check_channels(splits.train.channels)?;
    let train_data = Arc::new(splits.train.clone());
    let test_data = Arc::new(splits.test.clone());
    let full_batches = train_data.len() / cfg.batch_size;
    if full_batches == 0 {
        return Err(VitError::Config(format!(
            "batch size {} is larger than the {} training images",
            cfg.batch_size,
            train_data.len()
        )));
    }
    let steps_per_epoch = cfg
        .max_steps_per_epoch
        .map_or(full_batches, |m| m.min(full_batches));
    let total_steps = steps_per_epoch * cfg.epochs;
    let warmup = (cfg.warmup_epochs * steps_per_epoch as f64).round() as usize;
    let mut progress = Progress {
        tty: std::io::stderr().is_terminal(),
        last: Instant::now(),
    };
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
        order.truncate(steps_per_epoch * cfg.batch_size);
        let loader = BatchLoader::new(
            train_data.clone(),
            order,
            cfg.batch_size,
            cfg.augment.map(|a| (a, cfg.seed ^ (epoch as u64) << 32)),
            norm.clone(),
            true,
        );
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let mut lr = cfg.lr;
        for (i, batch) in loader.enumerate() {
            lr = lr_at(state.step, warmup, total_steps, cfg.lr, cfg.min_lr);
            let b = batch.labels.len();
            let x = Tensor::<4>::from_data(TensorData::new(batch.images, batch.shape), device);
            let targets = Tensor::<2>::from_data(
                TensorData::new(
                    smoothed_targets(&batch.labels, classes, cfg.label_smoothing),
                    [b, classes],
                ),
                device,
            );
            let logits = model.forward(x);
            let loss = (log_softmax(logits.clone(), 1) * targets).sum_dim(1).mean().neg();
            let loss_value = loss.clone().into_scalar::<f32>() as f64;
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
            let predicted = logits
                .argmax(1)
                .into_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .unwrap_or_default();
            correct += predicted
                .iter()
                .zip(&batch.labels)
                .filter(|(p, l)| **p == **l as i64)
                .count();
            let grads = loss.backward();
            let mut grads = GradientsParams::from_grads(grads, &model);
            clip_grad_norm(&model, &mut grads, cfg.grad_clip);
            model = optim.step(lr, model, grads);
            state.step += 1;
            loss_sum += loss_value * b as f64;
            seen += b;
            let secs = epoch_start.elapsed().as_secs_f64();
            progress.show(
                &format!(
                    "epoch {}/{} [{:>4}/{}] loss {:.4} acc {:.2}% lr {:.2e} {:.0} img/s",
                    epoch + 1,
                    cfg.epochs,
                    i + 1,
                    steps_per_epoch,
                    loss_sum / seen as f64,
                    100.0 * correct as f64 / seen as f64,
                    lr,
                    seen as f64 / secs
                ),
                false,
            );
        }
        let train_s = epoch_start.elapsed().as_secs_f64();
        let eval = evaluate(
            &model.valid(),
            test_data.clone(),
            &norm,
            cfg.batch_size.max(256),
            classes,
            &device.clone().inner(),
        )?;
        state.epoch += 1;
        let epoch_s = epoch_start.elapsed().as_secs_f64();
        state.elapsed_s = elapsed_before + session_start.elapsed().as_secs_f64();
        let is_best = eval.top1 > state.best_val_acc || state.best_epoch == 0;
        if is_best {
            state.best_val_acc = eval.top1;
            state.best_epoch = state.epoch;
        }
        let rec = EpochRecord {
            epoch: state.epoch,
            step: state.step,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            val_loss: eval.loss,
            val_acc: eval.top1,
            val_top5: eval.top5,
            images_per_s: seen as f64 / train_s,
            epoch_s,
            elapsed_s: state.elapsed_s,
        };
        progress.show(
            &format!(
                "epoch {}/{} train loss {:.4} acc {:.2}% | val loss {:.4} acc {:.2}% top5 {:.2}% | {:.0} img/s, {:.0}s{}",
                rec.epoch, cfg.epochs, rec.train_loss, 100.0 * rec.train_acc, rec.val_loss, 100.0 * rec.val_acc, 100.0 * rec.val_top5, rec.images_per_s, epoch_s,
                if is_best { " (best)" } else { "" }
            ),
            true,
        );
        progress.end();
        last_checkpoint = save_checkpoint(run_dir, &model, &optim, &state, &run, is_best, eval.top1)?;
        append_logs(run_dir, &rec)?;
        history.push(rec);
    }
    Ok(TrainOutcome {
        state,
        history,
        last_checkpoint,
    })
}

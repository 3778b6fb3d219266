//! A run's checkpoints: written atomically each epoch, pruned to the last two and the best,
//! and read back for `--resume`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::ModuleOptimizer;
use burn::tensor::{Bytes, Tensor};

use super::{RunConfig, TrainState};
use crate::io::{
    CheckpointPaths, Pointer, Which, find_checkpoint, load_weights, read_json, save_weights, write_atomic,
    write_json_atomic,
};
use crate::models::Model;
use crate::{Result, VitError};

pub fn checkpoint_name(epoch: usize) -> String {
    format!("checkpoints/epoch-{epoch:04}")
}

/// What `--resume` reads from a run's last checkpoint besides the weights.
pub struct Resumed {
    pub state: TrainState,
    /// The saved run configuration (its recipe is the one that continues).
    pub run: RunConfig,
    optimizer: PathBuf,
}

impl Resumed {
    /// `optim` (built for [`Self::model`], so its parameter groups hold the restored ids)
    /// with the checkpoint's optimizer state.
    pub fn restore_optimizer(&self, optim: ModuleOptimizer) -> Result<ModuleOptimizer> {
        let bytes = std::fs::read(&self.optimizer).map_err(|e| VitError::io(&self.optimizer, e))?;
        optim
            .from_bytes(Bytes::from_bytes_vec(bytes))
            .map_err(|e| VitError::Checkpoint {
                path: self.optimizer.clone(),
                reason: format!("optimizer state unreadable: {e:?}"),
            })
    }
}

/// Gives each loaded parameter the memory layout an optimizer step leaves it in.
///
/// Why: a linear weight loaded from a file is a transposed view of the file's `[out, in]`
/// data, while after an AdamW step it is a fresh `[in, out]` tensor. The matrix products
/// round differently for the two layouts, so a resumed run drifted from the uninterrupted one
/// in the last bits, and Adam magnifies such bits where a gradient is pure rounding noise
/// (the key bias, whose true gradient is zero). An elementwise identity (`x · 1`, exact) gives
/// the loaded weights the updated layout, and a resumed run repeats the uninterrupted one.
struct AsUpdated;

impl ModuleMapper for AsUpdated {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| {
            let (autodiff, require_grad) = (t.is_autodiff(), t.is_require_grad());
            let t = t.inner().mul_scalar(1.0);
            let t = if autodiff { t.autodiff() } else { t };
            if require_grad { t.require_grad() } else { t }
        })
    }
}

/// Loads a run's last checkpoint for `--resume` into `model` (with the saved parameter ids,
/// which the optimizer state is keyed by), checking it belongs to the same model, data and task.
pub fn load_resume(model: Model, run_dir: &Path, run: &RunConfig) -> Result<(Model, Resumed)> {
    let ck = find_checkpoint(run_dir, Which::Last)?;
    let saved: RunConfig = read_json(&ck.config())?;
    let task = |r: &RunConfig| r.train.as_ref().map(|t| t.task);
    if saved.model != run.model || saved.data.name != run.data.name || task(&saved) != task(run) {
        return Err(VitError::CheckpointMismatch {
            path: ck.dir.clone(),
            reason: format!(
                "it was trained as {} on '{}', not {} on '{}'; nothing was changed",
                saved.model_name, saved.data.name, run.model_name, run.data.name
            ),
        });
    }
    let (model, _) = load_weights(model, &ck.model(), true)?;
    let state: TrainState = read_json(&ck.state())?;
    let resumed = Resumed {
        state,
        run: saved,
        optimizer: ck.optimizer(),
    };
    Ok((model.map(&mut AsUpdated), resumed))
}

/// Writes the checkpoint of `state.epoch` under a temporary name, renames it into place,
/// then moves the pointers (`last.json`, and `best.json` when `is_best`).
pub fn save_checkpoint(
    run_dir: &Path,
    model: &Model,
    optim: &ModuleOptimizer,
    state: &TrainState,
    run: &RunConfig,
    is_best: bool,
    value: f64,
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
        value: Some(value),
        metric: Some(state.best_metric.clone()),
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

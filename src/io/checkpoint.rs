//! The run directory:
//!
//! ```text
//! RUN/config.json                     model, data and training configuration
//! RUN/checkpoints/epoch-0003/         model.safetensors, optimizer.bpk, state.json, config.json
//! RUN/last.json, RUN/best.json        which checkpoint is the latest / has the best val accuracy
//! RUN/log.jsonl, RUN/log.csv          one row per epoch
//! ```
//! A checkpoint directory is written under a temporary name and renamed when complete, and the
//! pointers are replaced atomically after it, so a crash never loses an earlier checkpoint.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Result, VitError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Pointer {
    pub checkpoint: String,
    pub epoch: usize,
    /// The value of the metric that picks the best checkpoint (runs before the metric was
    /// named saved it as `val_acc`).
    #[serde(default, alias = "val_acc")]
    pub value: Option<f64>,
    #[serde(default)]
    pub metric: Option<String>,
}

/// The files of one checkpoint directory.
#[derive(Debug, Clone)]
pub struct CheckpointPaths {
    pub dir: PathBuf,
}

impl CheckpointPaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn model(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
    pub fn optimizer(&self) -> PathBuf {
        self.dir.join("optimizer.bpk")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    pub fn is_complete(&self) -> bool {
        self.model().is_file() && self.config().is_file()
    }
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| VitError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| VitError::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("invalid JSON: {e}"),
    })
}

/// Which checkpoint of a run directory to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Best,
    Last,
}

/// Resolves `path` to a checkpoint directory: `path` itself when it is one, otherwise the
/// checkpoint its `best.json` (or `last.json`) points to.
pub fn find_checkpoint(path: &Path, which: Which) -> Result<CheckpointPaths> {
    let direct = CheckpointPaths::new(path);
    if direct.is_complete() {
        return Ok(direct);
    }
    if !path.exists() {
        return Err(VitError::Checkpoint {
            path: path.to_path_buf(),
            reason: "no such file or directory".into(),
        });
    }
    let order = match which {
        Which::Best => ["best.json", "last.json"],
        Which::Last => ["last.json", "best.json"],
    };
    for pointer in order {
        let p = path.join(pointer);
        if p.is_file() {
            let ptr: Pointer = read_json(&p)?;
            let ck = CheckpointPaths::new(path.join(&ptr.checkpoint));
            if ck.is_complete() {
                return Ok(ck);
            }
            return Err(VitError::Checkpoint {
                path: ck.dir,
                reason: format!("named by {pointer} but incomplete"),
            });
        }
    }
    Err(VitError::Checkpoint {
        path: path.to_path_buf(),
        reason: "not a checkpoint: no model.safetensors + config.json, and no last.json/best.json".into(),
    })
}

//! What a run directory records besides weights: `config.json` (how to rebuild and feed the
//! model) and each checkpoint's `state.json` (how far training got).

use serde::{Deserialize, Serialize};

use super::TrainConfig;
use crate::Result;
use crate::data::{DataInfo, Normalize};
use crate::models::ModelConfig;

/// Everything needed to rebuild a model and feed it: saved as `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub model_name: String,
    pub model: ModelConfig,
    pub data: DataInfo,
    #[serde(default)]
    pub train: Option<TrainConfig>,
}

impl RunConfig {
    /// The input normalisation, checked against the model (a hand-edited `config.json` with
    /// a channel count or statistics that do not fit is an error here, not a panic later).
    pub fn normalize(&self) -> Result<Normalize> {
        self.model.validate()?;
        Normalize::checked(&self.data, self.model.in_chans())
    }
}

/// Progress at the end of an epoch: saved as `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Completed epochs.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: usize,
    /// The metric that picks the best checkpoint (a log column, e.g. `val_acc`).
    #[serde(default = "default_best_metric")]
    pub best_metric: String,
    /// Its best value so far (runs before the metric was named saved `best_val_acc`).
    #[serde(alias = "best_val_acc")]
    pub best_value: f64,
    pub best_epoch: usize,
    /// Training wall time so far, seconds.
    pub elapsed_s: f64,
}

fn default_best_metric() -> String {
    "val_acc".into()
}

impl Default for TrainState {
    fn default() -> Self {
        Self {
            epoch: 0,
            step: 0,
            best_metric: default_best_metric(),
            best_value: 0.0,
            best_epoch: 0,
            elapsed_s: 0.0,
        }
    }
}

//! Training: the loop, the tasks it drives, their recipe, logs and checkpoints, and
//! evaluation of classifiers.

mod checkpoints;
mod classify;
mod config;
mod eval;
mod log;
mod loop_;
mod optim;
mod run;
pub mod sit;
mod task;

pub use classify::{Classification, correct_predictions};
pub use config::{TaskKind, TrainConfig, Trainable, lr_at};
pub use eval::{EvalResult, Predictions, evaluate, predict_batch};
pub use log::{EpochRecord, format_value, show_value};
pub use loop_::{Session, TrainOutcome, train};
pub use optim::{build_optimizer, clip_grad_norm, freeze_backbone, no_decay_ids};
pub use run::{RunConfig, TrainState};
pub use task::{BestBy, Step, StepContext, Task};

use crate::Result;
use crate::models::ModelConfig;

impl TaskKind {
    /// The task for a model of `config` trained with `recipe`.
    pub fn build(&self, config: &ModelConfig, recipe: &TrainConfig) -> Result<Box<dyn Task>> {
        Ok(match self {
            TaskKind::Classify => Box::new(Classification {
                classes: config.classes()?,
                label_smoothing: recipe.label_smoothing,
            }),
            TaskKind::Sit(tasks) => Box::new(sit::SitPretraining {
                tasks: *tasks,
                batch_size: recipe.batch_size,
            }),
        })
    }
}

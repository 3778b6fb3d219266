//! Training: the loop, the tasks it drives, their recipe, logs and checkpoints, and
//! evaluation of classifiers.

mod checkpoints;
mod classify;
pub mod clip;
mod config;
mod eval;
pub mod fid;
pub mod gan;
mod log;
mod loop_;
mod optim;
pub mod probe;
mod run;
mod run_dir;
pub mod sit;
mod task;

pub use classify::{Classification, correct_predictions};
pub use config::{TaskKind, TrainConfig, Trainable, lr_at};
pub use eval::{EvalResult, Predictions, evaluate, predict_batch};
pub use log::{EpochRecord, format_value, show_value};
pub use loop_::{Session, TrainOutcome, train};
pub use optim::{build_optimizer, clip_grad_norm, freeze_backbone, no_decay_ids};
pub use probe::train_probe;
pub use run::{RunConfig, TrainState};
pub use task::{BestBy, Step, StepContext, Task};

use crate::Result;
use crate::data::DatasetSplits;
use crate::models::ModelConfig;

impl TaskKind {
    /// The task for a model of `config` trained with `recipe`.
    pub fn build(
        &self,
        config: &ModelConfig,
        recipe: &TrainConfig,
        data: &DatasetSplits,
    ) -> Result<Box<dyn Task>> {
        Ok(match self {
            TaskKind::Classify => Box::new(Classification {
                classes: config.classes()?,
                label_smoothing: recipe.label_smoothing,
            }),
            TaskKind::Sit(tasks) => Box::new(sit::SitPretraining {
                tasks: *tasks,
                batch_size: recipe.batch_size,
            }),
            TaskKind::Gan(settings) => Box::new(gan::GanTraining::new(
                *settings,
                recipe.fid_features.clone().ok_or_else(|| {
                    crate::VitError::Config(
                        "a GAN is validated by FID on the features of a classifier trained on the same data: \
                         pass --fid-features RUN (e.g. a `vitkit train` run on this dataset)"
                            .into(),
                    )
                })?,
                &data.info,
            )),
            TaskKind::Clip => Box::new(clip::ClipTraining {
                captions: std::sync::Arc::new(data.captions.clone().ok_or_else(|| {
                    crate::VitError::Config(format!(
                        "CLIP trains on image–caption pairs; {} has no captions (use captions:FILE or \
                         synthetic-captions)",
                        data.info.name
                    ))
                })?),
            }),
        })
    }
}

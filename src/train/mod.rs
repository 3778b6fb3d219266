//! Supervised training and evaluation of image classifiers.

mod config;
mod eval;
mod loop_;
mod optim;

pub use config::{TrainConfig, lr_at};
pub use eval::{EvalResult, Predictions, evaluate, predict_batch};
pub use loop_::{EpochRecord, Session, TrainOutcome, train};
pub use optim::{build_optimizer, clip_grad_norm, no_decay_ids};

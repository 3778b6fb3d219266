//! vitkit: train, evaluate, explain and run vision transformers with Burn.
//!
//! Layout: `kernels` the fused CPU operations, `nn` building blocks shared by the model
//! families, `models` one file per family plus the preset registry, `data` the dataset readers
//! and the batch loader, `io` weights and checkpoint files, `train` the loop and its tasks,
//! `draw` the PNG outputs, `explain` what a model looks at, `report` the HTML report of a run.
//! The `vitkit` binary in `cli/` is a thin layer over `app`.

pub mod app;
pub mod bench;
pub mod data;
pub mod device;
pub mod draw;
pub mod error;
pub mod explain;
pub mod io;
pub mod kernels;
pub mod models;
pub mod nn;
pub mod report;
pub mod text;
pub mod train;

pub use error::{Result, VitError};

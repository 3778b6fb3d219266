//! vitkit: train, evaluate, explain and run vision transformers with Burn.
//!
//! Layout: `nn` holds building blocks shared by the model families, `models` one file per
//! family plus the preset registry, `data` the dataset readers and the batch loader, `train`
//! the training loop, `io` checkpoints, `report` the PNG outputs, `kernels` the fused CPU operations. The `vitkit` binary in
//! `cli/` is a thin layer over these.

pub mod app;
pub mod bench;
pub mod data;
pub mod device;
pub mod error;
pub mod explain;
pub mod io;
pub mod kernels;
pub mod models;
pub mod nn;
pub mod report;
pub mod train;

pub use error::{Result, VitError};

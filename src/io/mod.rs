//! Weights and checkpoint files: weights as safetensors under each family's key names (timm's
//! for the ViT), foreign files read into a family, configs as JSON, optimizer
//! state as Burn's burnpack bytes; every file written atomically.

mod atomic;
mod checkpoint;
mod import;
mod weights;

pub use crate::nn::{Resample, resample_pos_embed};
pub use atomic::{write_atomic, write_json_atomic};
pub(crate) use checkpoint::Pointer;
pub use checkpoint::{CheckpointPaths, Which, find_checkpoint, read_json};
pub use import::{ForeignWeights, ImportOptions, Imported, Strictness, WeightSource, import_weights};
pub(crate) use weights::ParamPath;
pub use weights::{
    FileTensor, LoadReport, SafetensorsContents, count_elements, load_weights, named_tensors,
    read_safetensors, save_weights, weights_to_bytes, write_tensors,
};

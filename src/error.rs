//! The library's error type: every failure a user can cause ends here, never in a panic.

use std::path::PathBuf;

pub type Result<T, E = VitError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum VitError {
    // The cause is part of the message (not a `source`), so it is printed once.
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("dataset not found at {path}: {hint}")]
    MissingDataset { path: PathBuf, hint: String },
    #[error("{path}: invalid data: {reason}")]
    BadData { path: PathBuf, reason: String },
    #[error("cannot decode image {path}: {reason}")]
    BadImage { path: PathBuf, reason: String },
    #[error("unknown model '{name}'; valid models: {valid}")]
    UnknownModel { name: String, valid: String },
    #[error("unknown dataset '{name}'; valid datasets: {valid}")]
    UnknownDataset { name: String, valid: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("checkpoint {path} does not match: {reason}")]
    CheckpointMismatch { path: PathBuf, reason: String },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("training stopped: {0}")]
    Diverged(String),
    #[error("{0}")]
    Other(String),
}

impl VitError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        VitError::Io {
            path: path.into(),
            cause: source,
        }
    }
}

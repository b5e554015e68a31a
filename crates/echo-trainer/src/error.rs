//! The trainer's error type. The lower crates' errors convert with `?` (`#[from]`); the
//! failures a caller may want to tell apart have variants of their own: a refused run
//! folder, a resume under another config, a non-finite loss or gradient, a checkpoint that
//! cannot be saved or read. Every message names
//! the file, key or step it is about.
//!
//! Helpers inside the crate that still report a `String` convert into [`TrainError::Other`]
//! with `?` (and back with `to_string`), so the variants can grow one call site at a time.

use crate::checkpoint::ConfigChange;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Tensor(#[from] echo_tensor::Error),
    #[error(transparent)]
    Autograd(#[from] echo_autograd::Error),
    #[error(transparent)]
    Model(#[from] echo_model::Error),
    #[error(transparent)]
    Data(#[from] echo_data::Error),
    #[error(transparent)]
    Adapter(#[from] echo_adapters::PeftError),
    /// Training into a folder that holds a run, without `--resume` or `--overwrite`.
    #[error(
        "{}: this folder holds a run ({}); pass --resume to continue it, or --overwrite to move it aside \
         (to {}.old-<unix time>) and start a new run there",
        dir.display(), found.join(", "), dir.display()
    )]
    RunFolderInUse { dir: PathBuf, found: Vec<String> },
    /// `--resume` under a config that differs from the checkpoint's in more than the length.
    #[error(
        "{}: the checkpoint was written under a different config ({}). Resume with the config it was written \
         under, or start a new output folder; only the run's length ({}) may change on resume",
        checkpoint.display(),
        changes.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("; "),
        length_keys.join(", ")
    )]
    ConfigMismatch { checkpoint: PathBuf, changes: Vec<ConfigChange>, length_keys: Vec<String> },
    /// A NaN or infinite loss (`what = "loss"`) or gradient norm: the run stops before the
    /// optimizer step, leaving the last checkpoint as it was.
    #[error(
        "step {step}: the {what} is {value} (non-finite); stopping. The last checkpoint ({}) is untouched.",
        checkpoint.display()
    )]
    NonFinite { step: usize, what: &'static str, value: f32, checkpoint: PathBuf },
    /// A checkpoint that cannot be written, read or found whole (`path`: the file or folder).
    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    /// Anything else, as a message.
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl From<String> for TrainError {
    fn from(msg: String) -> Self {
        TrainError::Other(msg)
    }
}

impl From<TrainError> for String {
    fn from(e: TrainError) -> Self {
        e.to_string()
    }
}

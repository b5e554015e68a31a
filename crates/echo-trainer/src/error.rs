//! The trainer's error type. The lower crates' errors convert with `?` (`#[from]`); the
//! failures a caller may want to tell apart have variants of their own: a refused run
//! folder, a resume under another config, a non-finite loss or gradient, a checkpoint that
//! cannot be saved or read. Every message names
//! the file, key or step it is about.
//!
//! No function of the crate returns a `String` error: lower errors convert with `?`, and
//! [`Context::context`] names the work they happened in. `From<String>` remains for the
//! messages that fit no variant ([`TrainError::Other`]).

use crate::checkpoint::ConfigChange;
use std::path::{Path, PathBuf};

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
    #[error(transparent)]
    Cuda(#[from] echo_kernels::cuda::CudaError),
    /// Training into a folder that holds a run, without `--resume` or `--overwrite`.
    #[error(
        "{}: this folder holds a run ({}); pass --resume to continue it, or --overwrite to move it aside \
         (to {}.old-<unix time>) and start a new run there",
        dir.display(), found.join(", "), dir.display()
    )]
    RunFolderInUse { dir: PathBuf, found: Vec<String> },
    /// Another process trains into the same folder (it holds the lock).
    #[error(
        "{}: another run is using this folder (it holds the lock on {}); wait for it to end, or train into \
         another folder (--out)",
        dir.display(), lock.display()
    )]
    RunFolderLocked { dir: PathBuf, lock: PathBuf },
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
    /// A file the run reads or writes (metrics, plots, the run lock, a run moved aside).
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A run config that cannot be read or is refused; `file` when it came from one.
    #[error("{}{msg}", file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default())]
    Config { file: Option<PathBuf>, msg: String },
    /// A batch the step cannot take (a packing that overflows its row, mismatched lengths).
    #[error("{0}")]
    Batch(String),
    /// Drawing a plot failed (plotters' message).
    #[error("drawing the plot: {0}")]
    Plot(String),
    /// A device that cannot be used as asked.
    #[error("{0}")]
    Device(String),
    /// An error inside a named piece of work (`adamw on `x``, `echo diagnostics`).
    #[error("{what}: {source}")]
    In {
        what: String,
        #[source]
        source: Box<TrainError>,
    },
    /// Anything else, as a message.
    #[error("{0}")]
    Other(String),
}

impl TrainError {
    /// A config error with no file (a value refused while validating).
    pub fn config(msg: impl Into<String>) -> Self {
        TrainError::Config { file: None, msg: msg.into() }
    }

    /// This error as read from the config file `path`: a config error gets the file named
    /// (once); any other is returned as it is.
    pub fn in_file(self, path: &Path) -> Self {
        match self {
            TrainError::Config { file: None, msg } => TrainError::Config { file: Some(path.to_path_buf()), msg },
            other => other,
        }
    }

    /// An I/O error on `path` while doing `what`.
    pub fn io(path: impl Into<PathBuf>, what: &'static str) -> impl FnOnce(std::io::Error) -> TrainError {
        let path = path.into();
        move |source| TrainError::Io { path, what, source }
    }
}

/// Names the work an error happened in: `x.context("adamw on `w`")?`.
pub trait Context<T> {
    fn context(self, what: impl Into<String>) -> Result<T>;
}

impl<T, E: Into<TrainError>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| TrainError::In { what: what.into(), source: Box::new(e.into()) })
    }
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

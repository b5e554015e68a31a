use std::path::PathBuf;

/// Errors of model loading and running. Every variant that comes from a file names it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid JSON at line {line}, column {column}: {msg}")]
    Json { path: PathBuf, line: usize, column: usize, msg: String },
    #[error("{path}: key `{key}`: {msg}")]
    Config { path: PathBuf, key: String, msg: String },
    #[error("{path}: unsupported: {what}")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: not a valid safetensors file: {msg}")]
    SafeTensors { path: PathBuf, msg: String },
    #[error("{path}: tensor `{name}` not found{hint}")]
    MissingTensor { path: PathBuf, name: String, hint: String },
    #[error("{path}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    TensorShape { path: PathBuf, name: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("{path}: tensor `{name}` has dtype {got}, expected {expected}")]
    TensorDType { path: PathBuf, name: String, expected: String, got: String },
    #[error("{path}: tensor `{name}` holds {value} at index {index:?} (shape {shape:?}); weights must be finite")]
    NonFinite { path: PathBuf, name: String, shape: Vec<usize>, index: Vec<usize>, value: f32 },
    #[error(
        "{path}: {count} tensor(s) belong to layers beyond the {declared} that config.json's num_hidden_layers declares ({names}); the config and the weights disagree"
    )]
    UnexpectedTensors { path: PathBuf, declared: usize, count: usize, names: String },
    #[error(
        "{path}: {count} tensor(s) that a LLaMA model does not have ({names}); ignoring them would load a different model than the file describes"
    )]
    UnknownTensors { path: PathBuf, count: usize, names: String },
    #[error("{index}: shard `{shard}` (holding `{tensor}`) does not exist")]
    MissingShard { index: PathBuf, shard: String, tensor: String },
    #[error("input: {0}")]
    Input(String),
    #[error(transparent)]
    Tensor(#[from] echo_tensor::Error),
    #[error(transparent)]
    Autograd(#[from] echo_autograd::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub(crate) fn json(path: impl Into<PathBuf>, e: &serde_json::Error) -> Self {
        Error::Json { path: path.into(), line: e.line(), column: e.column(), msg: e.to_string() }
    }
}

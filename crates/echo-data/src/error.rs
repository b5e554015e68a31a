//! One error type for the crate. Every variant names the file it is about and, where a record
//! is involved, the record's index in the file (from 0, as `jq '.[i]'` counts) and the line and
//! column (1-based, columns in bytes) where it starts or where parsing stopped.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {what}: {source}", path.display())]
    Io { path: PathBuf, what: &'static str, source: std::io::Error },

    /// Not valid JSON / JSON Lines, or a value of the wrong type.
    #[error("{}:{line}:{column}: {}{msg}", path.display(), record_prefix(*record))]
    Json { path: PathBuf, line: u64, column: u64, record: Option<usize>, msg: String },

    #[error(
        "{}:{line}:{column}: record [{record}]: field `{field}` is missing or null (expected a string)",
        path.display()
    )]
    MissingField { path: PathBuf, record: usize, line: u64, column: u64, field: &'static str },

    #[error(
        "{}:{line}:{column}: record [{record}]: field `{field}` is empty (expected a non-empty string)",
        path.display()
    )]
    EmptyField { path: PathBuf, record: usize, line: u64, column: u64, field: &'static str },

    /// A record whose fields do not fit the template's format: `msg` says which template
    /// expects which fields, the fields found and the template they fit.
    #[error("{}:{line}:{column}: record [{record}]: {msg}", path.display())]
    Shape { path: PathBuf, record: usize, line: u64, column: u64, msg: String },

    #[error(
        "{}:{line}:{column}: invalid UTF-8 at byte offset {offset} (expected UTF-8 text)",
        path.display()
    )]
    InvalidUtf8 { path: PathBuf, offset: u64, line: u64, column: u64 },

    #[error("{}: empty dataset: {detail}", path.display())]
    EmptyDataset { path: PathBuf, detail: String },

    #[error("{}: tokenizer: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },

    #[error("{}: record [{record}]: tokenising failed: {msg}", path.display())]
    Encode { path: PathBuf, record: usize, msg: String },

    #[error("template `{name}`: {msg}")]
    Template { name: String, msg: String },

    /// Every record was dropped (or there was none): nothing to train on.
    #[error("{}: no examples left: {detail}", path.display())]
    NoExamples { path: PathBuf, detail: String },

    #[error("batcher: {0}")]
    Batcher(String),

    /// Arrays that do not make a batch (lengths that disagree, a token id that is no u32).
    #[error("batch: {0}")]
    Batch(String),

    #[error("mix: {0}")]
    Mix(String),

    #[error("synthetic data: {0}")]
    Synthetic(String),

    #[error("validation split: {0}")]
    Split(String),
}

fn record_prefix(record: Option<usize>) -> String {
    match record {
        Some(i) => format!("record [{i}]: "),
        None => String::new(),
    }
}

impl Error {
    pub(crate) fn io(path: &Path, what: &'static str, source: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), what, source }
    }
}

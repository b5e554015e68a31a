use crate::{DType, Device, Shape};

/// Everything a tensor op can refuse. Each variant names the op and what it was given.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shape mismatch: {lhs} vs {rhs}")]
    ShapeMismatch { op: &'static str, lhs: Shape, rhs: Shape },
    #[error("{op}: {msg}")]
    BadShape { op: &'static str, msg: String },
    #[error("{op}: dtype mismatch: {lhs} vs {rhs}")]
    DTypeMismatch { op: &'static str, lhs: DType, rhs: DType },
    #[error("{op}: needs {expected} data, got {got}")]
    UnsupportedDType { op: &'static str, expected: DType, got: DType },
    #[error("{op}: index {index} out of range for a dimension of size {size}")]
    IndexOutOfRange { op: &'static str, index: i64, size: usize },
    #[error("{op}: {what} must be {expected}, got {got}")]
    BadValue { op: &'static str, what: &'static str, expected: String, got: String },
    #[error("{op}: device {device} has no backend in this build (only cpu)")]
    DeviceUnavailable { op: &'static str, device: Device },
    #[error("tensor data has {len} elements but shape {shape} needs {expected}")]
    DataLength { len: usize, shape: Shape, expected: usize },
}

pub type Result<T> = std::result::Result<T, Error>;

use crate::{DType, Device, Shape};
use echo_kernels::cuda::CudaError;

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
    /// The device cannot serve this request: no usable driver, or host access to data that
    /// lives in device memory, or an op that has no device form (`map` with a closure).
    #[error("{op}: device {device} unavailable: {reason}")]
    DeviceUnavailable { op: &'static str, device: Device, reason: String },
    /// Operands of one op live on different devices; nothing is moved implicitly.
    #[error("{op}: operands on different devices: {lhs} vs {rhs} (move one with to_device)")]
    DeviceMismatch { op: &'static str, lhs: Device, rhs: Device },
    /// A CUDA launch, copy or allocation failed, or a kernel refused the shape.
    #[error("{op} on {device}: {source}")]
    Cuda { op: &'static str, device: Device, source: CudaError },
    #[error("tensor data has {len} elements but shape {shape} needs {expected}")]
    DataLength { len: usize, shape: Shape, expected: usize },
}

pub type Result<T> = std::result::Result<T, Error>;

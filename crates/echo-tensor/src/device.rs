use std::fmt;

/// Where a tensor's data lives: host memory, or the memory of CUDA device `n` (see
/// [`crate::Tensor::to_device`]; every op runs where its operands are, and operands on
/// different devices are an [`crate::Error::DeviceMismatch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

use std::fmt;

/// Where a tensor's data lives. Only `Cpu` has a backend today; `Cuda(n)` is the seam the
/// CUDA backend plugs into, and ops asked to run there answer [`crate::Error::DeviceUnavailable`].
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

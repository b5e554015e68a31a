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

/// The device's runtime, for measuring (benches, `gpu-check`): on the host there is nothing
/// queued and no allocator cache, so these are no-ops there.
impl Device {
    /// Waits until every op queued on this device has run.
    pub fn synchronize(self) -> crate::Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(n) => crate::cuda::synchronize(n),
        }
    }

    /// The most bytes this device's caching allocator has had in use (`None` on the host, or
    /// when the device cannot be opened).
    pub fn peak_memory_in_use(self) -> Option<u64> {
        match self {
            Device::Cpu => None,
            Device::Cuda(n) => crate::cuda::peak_in_use(n),
        }
    }

    /// Hands the caching allocator's unused blocks back to the driver and waits until it has
    /// them (the frees are stream-ordered), so another process can use the memory.
    pub fn release_cached_memory(self) -> crate::Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(n) => crate::cuda::release_cached(n),
        }
    }
}

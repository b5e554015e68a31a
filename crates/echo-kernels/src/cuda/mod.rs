//! The CUDA backend: hand-written kernels (`kernels/*.cu`, embedded here and compiled with
//! NVRTC on first use, cached on disk), a caching device allocator, one stream per device,
//! cuBLAS for the frozen-weight GEMMs, typed launch wrappers, and the checks that compare
//! every kernel with its CPU twin.
//!
//! Everything is loaded at run time (cudarc with dynamic loading): the same binary builds
//! without a CUDA toolkit and runs without a GPU. cudarc panics when a library it needs is
//! missing, so nothing here touches CUDA before [`probe`] has found the libraries;
//! [`Device::select`] is the entry point a `--device` flag should call.
//!
//! | module | job |
//! | --- | --- |
//! | [`libs`] | finding libcuda / NVRTC / cuBLAS (incl. pip-installed NVIDIA wheels) |
//! | [`source`] | the embedded `.cu` sources, [`source::compile_options`], NVRTC compilation and the cubin cache |
//! | [`tiles`] | the kernels' tile sizes, defined once: `-D` options for the compilers, constants for the launch wrappers |
//! | [`runtime`] | [`runtime::Gpu`]: context, stream, cuBLAS handle, loaded modules, launching |
//! | [`alloc`] | the caching allocator and [`alloc::GpuBuf`] |
//! | [`blas`] | row-major GEMM through cuBLAS (bf16 in, fp32 accumulate and out; fp32) |
//! | [`ops`] | one launch wrapper per kernel, mirroring the CPU twin's signature |
//! | [`tensor_ops`] | the generic tensor ops (maps, broadcasting arithmetic, reductions, softmax, layout) for echo-tensor |
//! | [`check`] | every kernel against its twin, random and edge-case shapes |
//! | [`checker`] | how a check is judged: NaN-prefilled outputs, two bit-identical runs, per-element error at the output's scale, the stop at the first driver error |
//! | [`bench`] | timing of the headline kernels against an unfused cuBLAS baseline |

pub mod alloc;
pub mod bench;
pub mod blas;
pub mod check;
pub mod checker;
pub mod libs;
pub mod ops;
pub mod runtime;
pub mod source;
pub mod tensor_ops;
pub mod tiles;

use std::fmt;
use std::str::FromStr;

/// What went wrong on the CUDA side, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("bad device '{0}': expected auto, cpu, cuda or cuda:N")]
    BadSpec(String),
    #[error("no CUDA driver: libcuda could not be loaded (no NVIDIA driver on this machine?)")]
    NoDriver,
    #[error("CUDA driver found but it reports no usable device: {0}")]
    NoDevice(String),
    #[error("cuda:{ordinal} requested but the machine has {count} CUDA device(s)")]
    BadOrdinal { ordinal: usize, count: usize },
    #[error("NVRTC (libnvrtc) not found: install the CUDA toolkit or `pip install nvidia-cuda-nvrtc`, or point ECHO_CUDA_LIB_DIR at the folder holding libnvrtc.so")]
    NoNvrtc,
    #[error("cuBLAS (libcublas) not found: install the CUDA toolkit or `pip install nvidia-cublas`, or point ECHO_CUDA_LIB_DIR at the folder holding libcublas.so")]
    NoCublas,
    #[error("CUDA driver call failed: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("cuBLAS call failed: {0}")]
    Cublas(#[from] cudarc::cublas::result::CublasError),
    #[error("NVRTC failed to compile kernels/{file} for {arch}:\n{log}")]
    Compile { file: String, arch: String, log: String },
    #[error("NVRTC call failed: {0}")]
    Nvrtc(#[from] cudarc::nvrtc::result::NvrtcError),
    #[error("kernel {0} is not in any kernels/*.cu source")]
    UnknownKernel(String),
    #[error("{0}")]
    Unsupported(String),
}

pub type Result<T> = std::result::Result<T, CudaError>;

/// A device as a user writes it: `auto`, `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = CudaError;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => match t.strip_prefix("cuda:") {
                Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                    n.parse().map(DeviceSpec::Cuda).map_err(|_| CudaError::BadSpec(s.to_string()))
                }
                _ => Err(CudaError::BadSpec(s.to_string())),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// What the machine offers, found without letting cudarc panic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub driver: bool,
    pub nvrtc: bool,
    pub cublas: bool,
    /// Device count when the driver initialised; the driver's error otherwise.
    pub devices: std::result::Result<usize, String>,
}

impl Probe {
    /// Why CUDA cannot be used as a whole, if it cannot (ordinal not considered).
    pub fn unusable(&self) -> Option<CudaError> {
        if !self.driver {
            return Some(CudaError::NoDriver);
        }
        match &self.devices {
            Err(e) => return Some(CudaError::NoDevice(e.clone())),
            Ok(0) => return Some(CudaError::NoDevice("device count is 0".into())),
            Ok(_) => {}
        }
        if !self.nvrtc {
            return Some(CudaError::NoNvrtc);
        }
        if !self.cublas {
            return Some(CudaError::NoCublas);
        }
        None
    }
}

/// Looks for the driver, NVRTC and cuBLAS, and counts devices. Loads libraries but never
/// calls into one that is missing.
pub fn probe() -> Probe {
    let driver = libs::driver_present();
    let devices = if driver {
        cudarc::driver::result::init()
            .and_then(|_| cudarc::driver::result::device::get_count())
            .map(|n| n.max(0) as usize)
            .map_err(|e| e.to_string())
    } else {
        Err("no driver".into())
    };
    Probe { driver, nvrtc: libs::nvrtc_present(), cublas: libs::cublas_present(), devices }
}

/// Where compute runs: the resolved form of a [`DeviceSpec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl Device {
    /// Parses and resolves a device string. `auto` picks `cuda:0` when the driver, a device,
    /// NVRTC and cuBLAS are all there, and the CPU otherwise (never an error); `cuda:N`
    /// returns a clear error when any of them is missing; `cpu` is always the CPU.
    pub fn select(spec: &str) -> Result<Device> {
        Self::resolve(spec.parse()?)
    }

    pub fn resolve(spec: DeviceSpec) -> Result<Device> {
        Self::resolve_explained(spec).map(|(d, _)| d)
    }

    /// As [`Device::resolve`], also saying why `auto` fell back to the CPU (for a log line).
    pub fn resolve_explained(spec: DeviceSpec) -> Result<(Device, Option<CudaError>)> {
        match spec {
            DeviceSpec::Cpu => Ok((Device::Cpu, None)),
            DeviceSpec::Auto => match probe().unusable() {
                None => Ok((Device::Cuda(0), None)),
                Some(why) => Ok((Device::Cpu, Some(why))),
            },
            DeviceSpec::Cuda(ordinal) => {
                let p = probe();
                if let Some(e) = p.unusable() {
                    return Err(e);
                }
                let count = p.devices.unwrap_or(0);
                if ordinal >= count {
                    return Err(CudaError::BadOrdinal { ordinal, count });
                }
                Ok((Device::Cuda(ordinal), None))
            }
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_strings() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!(" CPU ".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        for bad in ["", "cuda:", "cuda:-1", "cuda:x", "tpu", "cuda:1:2", "cuda0"] {
            let e = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(e.to_string().contains("expected auto, cpu, cuda or cuda:N"), "{bad}: {e}");
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn cpu_is_always_cpu() {
        assert_eq!(Device::select("cpu").unwrap(), Device::Cpu);
    }

    /// On a machine without a usable GPU (CI, the dev box): auto falls back to the CPU and
    /// cuda:0 is a clear error, never a panic. With one, both resolve to the GPU.
    #[test]
    fn auto_and_cuda_follow_the_probe() {
        let p = probe();
        match p.unusable() {
            Some(why) => {
                println!("no usable CUDA here ({why}): checking the fallbacks");
                assert_eq!(Device::select("auto").unwrap(), Device::Cpu);
                let (d, reason) = Device::resolve_explained(DeviceSpec::Auto).unwrap();
                assert_eq!((d, reason.map(|r| r.to_string())), (Device::Cpu, Some(why.to_string())));
                let e = Device::select("cuda:0").unwrap_err();
                assert_eq!(e.to_string(), why.to_string());
            }
            None => {
                assert_eq!(Device::select("auto").unwrap(), Device::Cuda(0));
                assert_eq!(Device::select("cuda:0").unwrap(), Device::Cuda(0));
                let n = p.devices.unwrap();
                assert!(matches!(Device::select(&format!("cuda:{n}")), Err(CudaError::BadOrdinal { .. })));
            }
        }
    }
}

//! The CUDA side of echo-tensor: device storage ([`CudaData`]), moving data between host and
//! device, and the device form of every op ([`Cuda`], the `crate::backend::Backend` of device
//! tensors; `ops`: generic ops, `nn`: the fused pairs).
//!
//! An op comes here from its op file (after the shape checks) through `crate::backend::of`
//! when any operand is on a CUDA device. Each function here first checks that all operands
//! are on one device ([`Cx::of`]), then the dtypes in the order and with the messages of the
//! CPU code (`crate::cpu`), then launches on the device's stream. Nothing here waits for the GPU except a
//! download (and DoRA's weight norm, which finishes on the host).
//!
//! Dtypes on a device: f32 for everything computed; bf16 (raw `u16` bits) for frozen base
//! weights, which `linear`, the LoRA/DoRA pairs and `index_select` (the embedding) consume
//! directly (cuBLAS with fp32 accumulation, or widened on load); f16 is storage only,
//! converted on the host (there is no f16 kernel, and nothing computes in f16).

pub(crate) mod nn;
pub(crate) mod ops;

/// CUDA devices: NVRTC-compiled kernels and cuBLAS, on each device's stream. Its
/// `crate::backend::Backend` calls the functions of `ops` and `nn` (`backend.rs`).
pub(crate) struct Cuda;

use crate::{Buffer, DType, Device, Error, Result, Shape, Tensor};
use echo_kernels::cuda::alloc::GpuBuf;
use echo_kernels::cuda::ops as k;
use echo_kernels::cuda::runtime::Gpu;
use echo_kernels::cuda::CudaError;
use half::slice::HalfFloatSliceExt;
use half::vec::HalfBitsVecExt;
use half::{bf16, f16};
use std::fmt;
use std::sync::Arc;

/// The elements of a tensor on a CUDA device, with the device they are on.
pub(crate) struct CudaData {
    pub gpu: Arc<Gpu>,
    pub dtype: DType,
    pub buf: DevBuf,
}

/// Device buffers by element width: f32, or the raw bits of bf16/f16 (`CudaData::dtype` says
/// which), as the kernels and cuBLAS take them.
pub(crate) enum DevBuf {
    F32(GpuBuf<f32>),
    Bits16(GpuBuf<u16>),
}

impl CudaData {
    pub fn len(&self) -> usize {
        match &self.buf {
            DevBuf::F32(b) => b.len(),
            DevBuf::Bits16(b) => b.len(),
        }
    }

    pub fn device(&self) -> Device {
        Device::Cuda(self.gpu.ordinal)
    }
}

impl fmt::Debug for CudaData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CudaData({} x {} on {})", self.len(), self.dtype, self.device())
    }
}

/// The open device `ordinal`. `Gpu::get` probes for the driver, NVRTC and cuBLAS before
/// cudarc touches them (cudarc panics when a library is missing), so a machine without CUDA
/// gets an error naming the device and what is missing.
pub(crate) fn gpu(op: &'static str, ordinal: usize) -> Result<Arc<Gpu>> {
    Gpu::get(ordinal).map_err(|e| Error::DeviceUnavailable { op, device: Device::Cuda(ordinal), reason: e.to_string() })
}

fn cuda_err(op: &'static str, device: Device) -> impl Fn(CudaError) -> Error {
    move |source| Error::Cuda { op, device, source }
}

/// A host buffer copied to device `ordinal`.
pub(crate) fn upload(b: &Buffer, shape: Shape, ordinal: usize) -> Result<Tensor> {
    let op = "to_device";
    let gpu = gpu(op, ordinal)?;
    let err = cuda_err(op, Device::Cuda(ordinal));
    let buf = match b {
        Buffer::F32(v) => DevBuf::F32(gpu.upload(v).map_err(&err)?),
        Buffer::BF16(v) => DevBuf::Bits16(gpu.upload(v.reinterpret_cast()).map_err(&err)?),
        Buffer::F16(v) => DevBuf::Bits16(gpu.upload(v.reinterpret_cast()).map_err(&err)?),
    };
    Ok(Tensor::from_cuda(CudaData { gpu, dtype: b.dtype(), buf }, shape))
}

/// The device data as a host buffer of the same dtype (waits for queued work).
pub(crate) fn download(c: &CudaData) -> Result<Buffer> {
    let err = cuda_err("to_device", c.device());
    Ok(match (&c.buf, c.dtype) {
        (DevBuf::F32(b), _) => Buffer::F32(c.gpu.download(b).map_err(err)?),
        (DevBuf::Bits16(b), DType::BF16) => Buffer::BF16(c.gpu.download(b).map_err(err)?.reinterpret_into::<bf16>()),
        (DevBuf::Bits16(b), _) => Buffer::F16(c.gpu.download(b).map_err(err)?.reinterpret_into::<f16>()),
    })
}

/// All elements as f32 on the host. 16-bit data is downloaded as bits and widened here:
/// the widening is exact, so this equals a device cast followed by a download.
pub(crate) fn download_f32(c: &CudaData) -> Result<Vec<f32>> {
    Ok(match download(c)? {
        Buffer::F32(v) => v,
        Buffer::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
        Buffer::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
    })
}

/// A dtype conversion on the device. f32 <-> bf16 run the cast kernels (the same rounding,
/// bit for bit, as the host's `half` crate); anything involving f16 goes through the host,
/// since no kernel handles f16 (a storage type only: correct, not fast).
pub(crate) fn to_dtype(c: &CudaData, dtype: DType, shape: Shape) -> Result<Tensor> {
    let op = "to_dtype";
    let err = cuda_err(op, c.device());
    let buf = match (&c.buf, c.dtype, dtype) {
        (DevBuf::F32(src), DType::F32, DType::BF16) => {
            let mut dst = c.gpu.alloc::<u16>(src.len()).map_err(&err)?;
            k::f32_to_bf16(&c.gpu, src, &mut dst).map_err(&err)?;
            DevBuf::Bits16(dst)
        }
        (DevBuf::Bits16(src), DType::BF16, DType::F32) => {
            let mut dst = c.gpu.alloc::<f32>(src.len()).map_err(&err)?;
            k::bf16_to_f32(&c.gpu, src, &mut dst).map_err(&err)?;
            DevBuf::F32(dst)
        }
        _ => {
            let host = Tensor::from_buffer(download(c)?, shape.clone())?.try_to_dtype(dtype)?;
            return upload(host.buffer(), shape, c.gpu.ordinal);
        }
    };
    Ok(Tensor::from_cuda(CudaData { gpu: c.gpu.clone(), dtype, buf }, shape))
}

/// Waits for everything queued on `cuda:ordinal`.
pub(crate) fn synchronize(ordinal: usize) -> Result<()> {
    let op = "synchronize";
    gpu(op, ordinal)?.synchronize().map_err(cuda_err(op, Device::Cuda(ordinal)))
}

/// The caching allocator's peak bytes in use on `cuda:ordinal`.
pub(crate) fn peak_in_use(ordinal: usize) -> Option<u64> {
    Gpu::get(ordinal).ok().map(|g| g.pool_stats().peak_in_use as u64)
}

/// Frees the caching allocator's unused blocks on `cuda:ordinal`, then synchronises the stream
/// and the context: the driver has the memory back only then.
pub(crate) fn release_cached(ordinal: usize) -> Result<()> {
    let op = "release_cached_memory";
    let err = cuda_err(op, Device::Cuda(ordinal));
    let gpu = gpu(op, ordinal)?;
    gpu.pool().empty_cache();
    gpu.synchronize().map_err(&err)?;
    gpu.context().synchronize().map_err(|e| err(CudaError::Driver(e)))
}

/// The one device all of `devices` are on, or a mismatch naming the first two that differ.
pub(crate) fn common_device(op: &'static str, devices: impl IntoIterator<Item = Device>) -> Result<Option<Device>> {
    let mut found: Option<Device> = None;
    for d in devices {
        match found {
            None => found = Some(d),
            Some(f) if f != d => return Err(Error::DeviceMismatch { op, lhs: f, rhs: d }),
            Some(_) => {}
        }
    }
    Ok(found)
}

/// The context of one op on one device: its name (for errors), the device and its `Gpu`.
pub(crate) struct Cx {
    pub op: &'static str,
    pub device: Device,
    pub gpu: Arc<Gpu>,
}

impl Cx {
    /// The device of `ts`, which must all be on the same CUDA device (callers come here
    /// only when one of them is).
    pub fn of<'a>(op: &'static str, ts: impl IntoIterator<Item = &'a Tensor>) -> Result<Cx> {
        let ts: Vec<&Tensor> = ts.into_iter().collect();
        common_device(op, ts.iter().map(|t| t.device()))?;
        match ts.iter().find_map(|t| t.cuda_data()) {
            Some(c) => Ok(Cx { op, device: c.device(), gpu: c.gpu.clone() }),
            None => unreachable!("{op}: came to the CUDA path without a CUDA operand"),
        }
    }

    /// Maps a kernel-layer error to this op's [`Error::Cuda`].
    pub fn k<T>(&self, r: std::result::Result<T, CudaError>) -> Result<T> {
        r.map_err(cuda_err(self.op, self.device))
    }

    fn data<'t>(&self, t: &'t Tensor) -> Result<&'t CudaData> {
        match t.cuda_data() {
            Some(c) if c.device() == self.device => Ok(c),
            _ => Err(Error::DeviceMismatch { op: self.op, lhs: self.device, rhs: t.device() }),
        }
    }

    /// The f32 device buffer of `t`; any other dtype is the CPU code's `UnsupportedDType`.
    pub fn f32<'t>(&self, t: &'t Tensor) -> Result<&'t GpuBuf<f32>> {
        let c = self.data(t)?;
        match &c.buf {
            DevBuf::F32(b) => Ok(b),
            DevBuf::Bits16(_) => Err(Error::UnsupportedDType { op: self.op, expected: DType::F32, got: c.dtype }),
        }
    }

    /// `t`'s buffer when it is a bf16 weight (`None` for f32, an error for other dtypes).
    pub fn weight<'t>(&self, t: &'t Tensor) -> Result<Weight<'t>> {
        let c = self.data(t)?;
        match (&c.buf, c.dtype) {
            (DevBuf::F32(b), _) => Ok(Weight::F32(b)),
            (DevBuf::Bits16(b), DType::BF16) => Ok(Weight::Bf16(b)),
            (DevBuf::Bits16(_), got) => Err(Error::UnsupportedDType { op: self.op, expected: DType::F32, got }),
        }
    }

    /// `len` f32 elements, contents undefined (every caller overwrites them all).
    pub fn alloc(&self, len: usize) -> Result<GpuBuf<f32>> {
        self.k(self.gpu.alloc::<f32>(len))
    }

    pub fn zeros(&self, len: usize) -> Result<GpuBuf<f32>> {
        self.k(self.gpu.zeros::<f32>(len))
    }

    /// A new f32 device copy of `src` (for ops the kernels do in place).
    pub fn copy(&self, src: &GpuBuf<f32>) -> Result<GpuBuf<f32>> {
        let n = src.len();
        let mut dst = self.alloc(n)?;
        self.k(ops::tk::copy_2d(&self.gpu, src, 0, n, &mut dst, 0, n, 1, n))?;
        Ok(dst)
    }

    /// An f32 result tensor on this device.
    pub fn tensor(&self, buf: GpuBuf<f32>, shape: impl Into<Shape>) -> Tensor {
        Tensor::from_cuda(CudaData { gpu: self.gpu.clone(), dtype: DType::F32, buf: DevBuf::F32(buf) }, shape.into())
    }

    /// `x` in bf16 (for cuBLAS with a bf16 weight), through the cast kernel.
    pub fn to_bf16(&self, x: &GpuBuf<f32>) -> Result<GpuBuf<u16>> {
        let mut dst = self.k(self.gpu.alloc::<u16>(x.len()))?;
        self.k(k::f32_to_bf16(&self.gpu, x, &mut dst))?;
        Ok(dst)
    }
}

/// A weight operand: f32, or a frozen bf16 base weight.
pub(crate) enum Weight<'a> {
    F32(&'a GpuBuf<f32>),
    Bf16(&'a GpuBuf<u16>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_device_names_the_first_mismatch() {
        assert_eq!(common_device("add", []).unwrap(), None);
        assert_eq!(common_device("add", [Device::Cuda(1), Device::Cuda(1)]).unwrap(), Some(Device::Cuda(1)));
        let e = common_device("add", [Device::Cuda(0), Device::Cuda(0), Device::Cpu]).unwrap_err().to_string();
        assert!(e.contains("add") && e.contains("cuda:0") && e.contains("cpu"), "{e}");
        let e = common_device("concat", [Device::Cuda(0), Device::Cuda(1)]).unwrap_err().to_string();
        assert!(e.contains("concat") && e.contains("cuda:0") && e.contains("cuda:1"), "{e}");
    }
}

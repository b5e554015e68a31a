use crate::cuda::{self, CudaData};
use crate::{DType, Device, Error, Result, Rng, Shape};
use half::{bf16, f16};
use std::sync::{Arc, Weak};

/// Host storage of one tensor, by dtype.
#[derive(Clone, Debug)]
pub enum Buffer {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
}

impl Buffer {
    pub fn len(&self) -> usize {
        match self {
            Buffer::F32(v) => v.len(),
            Buffer::BF16(v) => v.len(),
            Buffer::F16(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> DType {
        match self {
            Buffer::F32(_) => DType::F32,
            Buffer::BF16(_) => DType::BF16,
            Buffer::F16(_) => DType::F16,
        }
    }
}

/// A contiguous, row-major tensor. Cloning is cheap (the data is shared); data is never
/// mutated while shared: [`Tensor::f32_mut`] copies first if another clone exists.
///
/// The data lives in host memory ([`Buffer`]) or, after [`Tensor::to_device`], in the memory
/// of a CUDA device; ops run where their operands are.
#[derive(Clone, Debug)]
pub struct Tensor {
    data: Data,
    shape: Shape,
    device: Device,
}

/// Where the elements are. Each side is its own `Arc`, so the host path is exactly what it
/// was before device storage existed (`Arc::make_mut` copy-on-write included).
#[derive(Clone, Debug)]
enum Data {
    Host(Arc<Buffer>),
    Cuda(Arc<CudaData>),
}

/// A non-owning handle, used to prove that an activation was released.
pub struct WeakTensor(WeakData);

enum WeakData {
    Host(Weak<Buffer>),
    Cuda(Weak<CudaData>),
}

impl WeakTensor {
    pub fn is_alive(&self) -> bool {
        match &self.0 {
            WeakData::Host(w) => w.strong_count() > 0,
            WeakData::Cuda(w) => w.strong_count() > 0,
        }
    }
}

impl Tensor {
    pub fn from_buffer(buffer: Buffer, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        if buffer.len() != shape.numel() {
            return Err(Error::DataLength { len: buffer.len(), expected: shape.numel(), shape });
        }
        Ok(Tensor { data: Data::Host(Arc::new(buffer)), shape, device: Device::Cpu })
    }

    pub fn new(data: Vec<f32>, shape: impl Into<Shape>) -> Result<Self> {
        Self::from_buffer(Buffer::F32(data), shape)
    }

    pub fn from_slice(data: &[f32], shape: impl Into<Shape>) -> Result<Self> {
        Self::new(data.to_vec(), shape)
    }

    pub fn full(value: f32, shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        Tensor { data: Data::Host(Arc::new(Buffer::F32(vec![value; shape.numel()]))), shape, device: Device::Cpu }
    }

    pub fn zeros(shape: impl Into<Shape>) -> Self {
        Self::full(0.0, shape)
    }

    pub fn ones(shape: impl Into<Shape>) -> Self {
        Self::full(1.0, shape)
    }

    pub fn scalar(value: f32) -> Self {
        Self::full(value, Shape::new(vec![]))
    }

    /// [`Tensor::full`] made directly on `device` (no host buffer, no upload for a GPU).
    pub fn full_on(value: f32, shape: impl Into<Shape>, device: Device) -> Result<Self> {
        let shape = shape.into();
        match device {
            Device::Cpu => Ok(Self::full(value, shape)),
            Device::Cuda(n) => cuda::ops::full(value, shape, n),
        }
    }

    /// Standard-normal entries times `std`.
    pub fn randn(shape: impl Into<Shape>, std: f32, rng: &mut Rng) -> Self {
        let shape = shape.into();
        let data = (0..shape.numel()).map(|_| rng.normal() * std).collect();
        Tensor { data: Data::Host(Arc::new(Buffer::F32(data))), shape, device: Device::Cpu }
    }

    /// Uniform entries in [lo, hi).
    pub fn rand_uniform(shape: impl Into<Shape>, lo: f32, hi: f32, rng: &mut Rng) -> Self {
        let shape = shape.into();
        let data = (0..shape.numel()).map(|_| rng.uniform_range(lo, hi)).collect();
        Tensor { data: Data::Host(Arc::new(Buffer::F32(data))), shape, device: Device::Cpu }
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    pub fn rank(&self) -> usize {
        self.shape.rank()
    }
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }
    pub fn dtype(&self) -> DType {
        match &self.data {
            Data::Host(b) => b.dtype(),
            Data::Cuda(c) => c.dtype,
        }
    }
    pub fn device(&self) -> Device {
        self.device
    }

    /// The host buffer. Panics for a tensor on a device (move it with
    /// [`Tensor::to_device`]`(Device::Cpu)` first): device memory is never read as host.
    pub fn buffer(&self) -> &Buffer {
        match &self.data {
            Data::Host(b) => b,
            Data::Cuda(_) => panic!("buffer() on a tensor on {}: move it to the cpu first", self.device),
        }
    }

    /// Copies the tensor to `device` (a clone when it is already there). Uploading needs a
    /// usable CUDA driver, NVRTC and cuBLAS: without them this is a
    /// [`Error::DeviceUnavailable`] saying what is missing, never a panic.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        match (&self.data, device) {
            _ if device == self.device => Ok(self.clone()),
            (Data::Host(b), Device::Cuda(n)) => cuda::upload(b, self.shape.clone(), n),
            (Data::Cuda(c), Device::Cpu) => Self::from_buffer(cuda::download(c)?, self.shape.clone()),
            // Between two GPUs through the host: correct, not fast (no peer copies yet).
            (Data::Cuda(c), Device::Cuda(n)) => cuda::upload(&cuda::download(c)?, self.shape.clone(), n),
            (Data::Host(_), Device::Cpu) => unreachable!("host data is always on the cpu"),
        }
    }

    /// The f32 data, for ops that compute. Errors name `op` and the dtype found.
    pub fn f32s(&self, op: &'static str) -> Result<&[f32]> {
        let b = match &self.data {
            Data::Host(b) => b,
            Data::Cuda(_) => return Err(self.not_on_host(op)),
        };
        match &**b {
            Buffer::F32(v) => Ok(v),
            other => Err(Error::UnsupportedDType { op, expected: DType::F32, got: other.dtype() }),
        }
    }

    fn not_on_host(&self, op: &'static str) -> Error {
        let reason = "the data is in device memory: use tensor ops, or to_device(Device::Cpu) first".into();
        Error::DeviceUnavailable { op, device: self.device, reason }
    }

    /// Shorthand for [`Tensor::f32s`] where the dtype is known to be f32 and the data is on
    /// the host (panics otherwise).
    pub fn as_f32(&self) -> &[f32] {
        match &self.data {
            Data::Host(b) => match &**b {
                Buffer::F32(v) => v,
                b => panic!("as_f32 on a {} tensor", b.dtype()),
            },
            Data::Cuda(_) => panic!("as_f32 on a tensor on {}: move it to the cpu first", self.device),
        }
    }

    /// Mutable f32 data; copies first if the buffer is shared with another tensor. Host
    /// data only (a device tensor answers [`Error::DeviceUnavailable`]).
    pub fn f32_mut(&mut self, op: &'static str) -> Result<&mut [f32]> {
        if let Data::Cuda(_) = self.data {
            return Err(self.not_on_host(op));
        }
        let Data::Host(b) = &mut self.data else { unreachable!("checked above") };
        match Arc::make_mut(b) {
            Buffer::F32(v) => Ok(v),
            other => Err(Error::UnsupportedDType { op, expected: DType::F32, got: other.dtype() }),
        }
    }

    /// All elements as f32 (converting from bf16/f16 if needed; downloading device data).
    /// Panics only if a device download fails (a driver error): see [`Tensor::try_to_vec_f32`].
    pub fn to_vec_f32(&self) -> Vec<f32> {
        self.try_to_vec_f32().unwrap_or_else(|e| panic!("to_vec_f32: {e}"))
    }

    /// [`Tensor::to_vec_f32`], with a failed device download as an error.
    pub fn try_to_vec_f32(&self) -> Result<Vec<f32>> {
        match &self.data {
            Data::Host(b) => Ok(match &**b {
                Buffer::F32(v) => v.clone(),
                Buffer::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
                Buffer::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            }),
            Data::Cuda(c) => cuda::download_f32(c),
        }
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::BadShape { op: "item", msg: format!("needs one element, got shape {}", self.shape) });
        }
        Ok(self.try_to_vec_f32()?[0])
    }

    /// Converts to `dtype` (round-to-nearest-even for the 16-bit types), on the tensor's
    /// device. Panics only if a device operation fails: see [`Tensor::try_to_dtype`].
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        self.try_to_dtype(dtype).unwrap_or_else(|e| panic!("to_dtype: {e}"))
    }

    /// [`Tensor::to_dtype`], with a failed device operation as an error.
    pub fn try_to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        if let Data::Cuda(c) = &self.data {
            return cuda::to_dtype(c, dtype, self.shape.clone());
        }
        let f = self.to_vec_f32();
        let buffer = match dtype {
            DType::F32 => Buffer::F32(f),
            DType::BF16 => Buffer::BF16(f.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::F16 => Buffer::F16(f.iter().map(|&x| f16::from_f32(x)).collect()),
        };
        Ok(Tensor { data: Data::Host(Arc::new(buffer)), shape: self.shape.clone(), device: self.device })
    }

    /// Same data, new shape of equal element count.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            return Err(Error::ShapeMismatch { op: "reshape", lhs: self.shape.clone(), rhs: shape });
        }
        Ok(Tensor { data: self.data.clone(), shape, device: self.device })
    }

    /// Whether the two tensors hold the same data (one is a clone or reshape of the other).
    pub fn shares_data(&self, other: &Tensor) -> bool {
        match (&self.data, &other.data) {
            (Data::Host(a), Data::Host(b)) => Arc::ptr_eq(a, b),
            (Data::Cuda(a), Data::Cuda(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    pub fn downgrade(&self) -> WeakTensor {
        WeakTensor(match &self.data {
            Data::Host(b) => WeakData::Host(Arc::downgrade(b)),
            Data::Cuda(c) => WeakData::Cuda(Arc::downgrade(c)),
        })
    }

    /// A new f32 host tensor: the result of a CPU op (whose operands are all on the host).
    pub(crate) fn with_data(&self, data: Vec<f32>, shape: Shape) -> Tensor {
        debug_assert_eq!(data.len(), shape.numel());
        debug_assert_eq!(self.device, Device::Cpu, "a CPU op ran on a device tensor");
        Tensor { data: Data::Host(Arc::new(Buffer::F32(data))), shape, device: self.device }
    }

    /// A tensor over device data (`shape` must match its length; the callers allocate it so).
    pub(crate) fn from_cuda(data: CudaData, shape: Shape) -> Tensor {
        debug_assert_eq!(data.len(), shape.numel());
        let device = Device::Cuda(data.gpu.ordinal);
        Tensor { data: Data::Cuda(Arc::new(data)), shape, device }
    }

    /// The device data, `None` for a host tensor.
    pub(crate) fn cuda_data(&self) -> Option<&CudaData> {
        match &self.data {
            Data::Cuda(c) => Some(c),
            Data::Host(_) => None,
        }
    }

    /// The device data for writing in place, `None` for a host tensor or while the data is
    /// shared with another tensor (the caller then writes a copy: immutable while shared).
    pub(crate) fn cuda_data_mut(&mut self) -> Option<&mut CudaData> {
        match &mut self.data {
            Data::Cuda(c) => Arc::get_mut(c),
            Data::Host(_) => None,
        }
    }

    /// Largest absolute elementwise difference; shapes must match. Either tensor may be on
    /// any device (device data is downloaded), which is what tests comparing devices need.
    pub fn max_abs_diff(&self, other: &Tensor) -> Result<f32> {
        if self.shape != other.shape {
            return Err(Error::ShapeMismatch { op: "max_abs_diff", lhs: self.shape.clone(), rhs: other.shape.clone() });
        }
        let (a, b) = (self.try_to_vec_f32()?, other.try_to_vec_f32()?);
        Ok(a.iter().zip(&b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())))
    }
}

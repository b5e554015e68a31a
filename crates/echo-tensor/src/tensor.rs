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
#[derive(Clone, Debug)]
pub struct Tensor {
    data: Arc<Buffer>,
    shape: Shape,
    device: Device,
}

/// A non-owning handle, used to prove that an activation was released.
pub struct WeakTensor(Weak<Buffer>);

impl WeakTensor {
    pub fn is_alive(&self) -> bool {
        self.0.strong_count() > 0
    }
}

impl Tensor {
    pub fn from_buffer(buffer: Buffer, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        if buffer.len() != shape.numel() {
            return Err(Error::DataLength { len: buffer.len(), expected: shape.numel(), shape });
        }
        Ok(Tensor { data: Arc::new(buffer), shape, device: Device::Cpu })
    }

    pub fn new(data: Vec<f32>, shape: impl Into<Shape>) -> Result<Self> {
        Self::from_buffer(Buffer::F32(data), shape)
    }

    pub fn from_slice(data: &[f32], shape: impl Into<Shape>) -> Result<Self> {
        Self::new(data.to_vec(), shape)
    }

    pub fn full(value: f32, shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        Tensor { data: Arc::new(Buffer::F32(vec![value; shape.numel()])), shape, device: Device::Cpu }
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

    /// Standard-normal entries times `std`.
    pub fn randn(shape: impl Into<Shape>, std: f32, rng: &mut Rng) -> Self {
        let shape = shape.into();
        let data = (0..shape.numel()).map(|_| rng.normal() * std).collect();
        Tensor { data: Arc::new(Buffer::F32(data)), shape, device: Device::Cpu }
    }

    /// Uniform entries in [lo, hi).
    pub fn rand_uniform(shape: impl Into<Shape>, lo: f32, hi: f32, rng: &mut Rng) -> Self {
        let shape = shape.into();
        let data = (0..shape.numel()).map(|_| rng.uniform_range(lo, hi)).collect();
        Tensor { data: Arc::new(Buffer::F32(data)), shape, device: Device::Cpu }
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
        self.data.dtype()
    }
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn buffer(&self) -> &Buffer {
        &self.data
    }

    /// Moves the tensor to `device`. Only the CPU exists in this build.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        match device {
            Device::Cpu => Ok(self.clone()),
            d => Err(Error::DeviceUnavailable { op: "to_device", device: d }),
        }
    }

    /// The f32 data, for ops that compute. Errors name `op` and the dtype found.
    pub fn f32s(&self, op: &'static str) -> Result<&[f32]> {
        if self.device != Device::Cpu {
            return Err(Error::DeviceUnavailable { op, device: self.device });
        }
        match &*self.data {
            Buffer::F32(v) => Ok(v),
            other => Err(Error::UnsupportedDType { op, expected: DType::F32, got: other.dtype() }),
        }
    }

    /// Shorthand for [`Tensor::f32s`] where the dtype is known to be f32 (panics otherwise).
    pub fn as_f32(&self) -> &[f32] {
        match &*self.data {
            Buffer::F32(v) => v,
            b => panic!("as_f32 on a {} tensor", b.dtype()),
        }
    }

    /// Mutable f32 data; copies first if the buffer is shared with another tensor.
    pub fn f32_mut(&mut self, op: &'static str) -> Result<&mut [f32]> {
        match Arc::make_mut(&mut self.data) {
            Buffer::F32(v) => Ok(v),
            other => Err(Error::UnsupportedDType { op, expected: DType::F32, got: other.dtype() }),
        }
    }

    /// All elements as f32 (converting from bf16/f16 if needed).
    pub fn to_vec_f32(&self) -> Vec<f32> {
        match &*self.data {
            Buffer::F32(v) => v.clone(),
            Buffer::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Buffer::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::BadShape { op: "item", msg: format!("needs one element, got shape {}", self.shape) });
        }
        Ok(self.to_vec_f32()[0])
    }

    /// Converts to `dtype` (round-to-nearest-even for the 16-bit types).
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        let f = self.to_vec_f32();
        let buffer = match dtype {
            DType::F32 => Buffer::F32(f),
            DType::BF16 => Buffer::BF16(f.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::F16 => Buffer::F16(f.iter().map(|&x| f16::from_f32(x)).collect()),
        };
        Tensor { data: Arc::new(buffer), shape: self.shape.clone(), device: self.device }
    }

    /// Same data, new shape of equal element count.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            return Err(Error::ShapeMismatch { op: "reshape", lhs: self.shape.clone(), rhs: shape });
        }
        Ok(Tensor { data: self.data.clone(), shape, device: self.device })
    }

    pub fn downgrade(&self) -> WeakTensor {
        WeakTensor(Arc::downgrade(&self.data))
    }

    /// A new f32 tensor on the same device.
    pub(crate) fn with_data(&self, data: Vec<f32>, shape: Shape) -> Tensor {
        debug_assert_eq!(data.len(), shape.numel());
        Tensor { data: Arc::new(Buffer::F32(data)), shape, device: self.device }
    }

    /// Largest absolute elementwise difference; shapes must match.
    pub fn max_abs_diff(&self, other: &Tensor) -> Result<f32> {
        if self.shape != other.shape {
            return Err(Error::ShapeMismatch { op: "max_abs_diff", lhs: self.shape.clone(), rhs: other.shape.clone() });
        }
        let (a, b) = (self.to_vec_f32(), other.to_vec_f32());
        Ok(a.iter().zip(&b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())))
    }
}

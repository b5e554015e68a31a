use crate::backend::{self, BinaryOp, UnaryOp};
use crate::{cpu, Error, Result, Shape, Tensor};

/// The numpy broadcast of two shapes, or a mismatch error naming both.
pub fn broadcast_shape(op: &'static str, a: &Shape, b: &Shape) -> Result<Shape> {
    let r = a.rank().max(b.rank());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.rank() >= r { a.dim(i + a.rank() - r) } else { 1 };
        let db = if i + b.rank() >= r { b.dim(i + b.rank() - r) } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(Error::ShapeMismatch { op, lhs: a.clone(), rhs: b.clone() }),
        };
    }
    Ok(Shape::new(out))
}

impl Tensor {
    /// The shapes are broadcast (and a mismatch reported) by the backend, after its dtype
    /// checks, so a wrong dtype is reported first on every device.
    fn binary(&self, rhs: &Tensor, op: &'static str, kind: BinaryOp) -> Result<Tensor> {
        backend::of([self, rhs]).binary(self, rhs, op, kind)
    }

    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, "add", BinaryOp::Add)
    }
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, "sub", BinaryOp::Sub)
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, "mul", BinaryOp::Mul)
    }
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, "div", BinaryOp::Div)
    }

    /// Applies `f` to every element. Host tensors only: a closure cannot run on a GPU, so a
    /// device tensor answers [`Error::DeviceUnavailable`] (the named ops below run anywhere).
    pub fn map(&self, op: &'static str, f: impl Fn(f32) -> f32 + Sync) -> Result<Tensor> {
        backend::host_only(self, op, "map with a closure runs on the host only: use the named op (neg, exp, ln, sqr, sigmoid, silu, scale, add_scalar)")?;
        cpu::ops::map(self, op, f)
    }

    fn unary(&self, op: &'static str, kind: UnaryOp) -> Result<Tensor> {
        backend::of([self]).unary(self, op, kind)
    }

    pub fn scale(&self, s: f32) -> Result<Tensor> {
        self.unary("scale", UnaryOp::Scale(s))
    }
    pub fn add_scalar(&self, s: f32) -> Result<Tensor> {
        self.unary("add_scalar", UnaryOp::AddScalar(s))
    }
    pub fn neg(&self) -> Result<Tensor> {
        self.unary("neg", UnaryOp::Neg)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary("exp", UnaryOp::Exp)
    }
    pub fn ln(&self) -> Result<Tensor> {
        self.unary("ln", UnaryOp::Ln)
    }
    pub fn sqr(&self) -> Result<Tensor> {
        self.unary("sqr", UnaryOp::Sqr)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary("sigmoid", UnaryOp::Sigmoid)
    }
    pub fn silu(&self) -> Result<Tensor> {
        self.unary("silu", UnaryOp::Silu)
    }

    /// `self += rhs` in place, same shape (gradient accumulation).
    pub fn add_assign(&mut self, rhs: &Tensor) -> Result<()> {
        if self.shape() != rhs.shape() {
            return Err(Error::ShapeMismatch { op: "add_assign", lhs: self.shape().clone(), rhs: rhs.shape().clone() });
        }
        backend::of([&*self, rhs]).add_assign(self, rhs)
    }

    /// Broadcasts to `shape` (numpy rules), materialising the result.
    pub fn broadcast_to(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        let b = broadcast_shape("broadcast_to", self.shape(), &shape)?;
        if b != shape {
            return Err(Error::ShapeMismatch { op: "broadcast_to", lhs: self.shape().clone(), rhs: shape });
        }
        backend::of([self]).broadcast_to(self, shape)
    }

    /// Sums over the dimensions along which `shape` was broadcast to this tensor's shape:
    /// the adjoint of [`Tensor::broadcast_to`], used by the backward of broadcasting ops.
    pub fn sum_to(&self, shape: &Shape) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let b = broadcast_shape("sum_to", shape, self.shape())?;
        if &b != self.shape() {
            return Err(Error::ShapeMismatch { op: "sum_to", lhs: self.shape().clone(), rhs: shape.clone() });
        }
        backend::of([self]).sum_to(self, shape)
    }
}

use crate::cuda::{self, ops::BinaryOp, ops::UnaryOp};
use crate::{Error, Result, Shape, Tensor};
use echo_kernels::cpu::activation::{sigmoid, silu};
use rayon::prelude::*;

const PAR_MIN: usize = 1 << 15;

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

/// Strides of `s` read as if broadcast to `out` (0 along broadcast dimensions).
fn broadcast_strides(s: &Shape, out: &Shape) -> Vec<usize> {
    let st = s.strides();
    let off = out.rank() - s.rank();
    (0..out.rank()).map(|i| if i < off || s.dim(i - off) == 1 { 0 } else { st[i - off] }).collect()
}

/// Calls `f(out_index, offset_a, offset_b)` for every element of `out` in row-major order.
fn for_each_broadcast(out: &Shape, sa: &[usize], sb: &[usize], mut f: impl FnMut(usize, usize, usize)) {
    let dims = out.dims();
    let n = out.numel();
    let mut idx = vec![0usize; dims.len()];
    let (mut oa, mut ob) = (0usize, 0usize);
    for i in 0..n {
        f(i, oa, ob);
        for d in (0..dims.len()).rev() {
            idx[d] += 1;
            oa += sa[d];
            ob += sb[d];
            if idx[d] < dims[d] {
                break;
            }
            oa -= sa[d] * dims[d];
            ob -= sb[d] * dims[d];
            idx[d] = 0;
        }
    }
}

impl Tensor {
    fn binary(
        &self,
        rhs: &Tensor,
        op: &'static str,
        kind: BinaryOp,
        f: impl Fn(f32, f32) -> f32 + Sync,
    ) -> Result<Tensor> {
        if cuda::on_gpu([self, rhs]) {
            return cuda::ops::binary(self, rhs, op, kind);
        }
        let (a, b) = (self.f32s(op)?, rhs.f32s(op)?);
        if self.shape() == rhs.shape() {
            let mut out = vec![0.0f32; a.len()];
            if a.len() >= PAR_MIN {
                out.par_iter_mut().zip(a.par_iter().zip(b.par_iter())).for_each(|(o, (x, y))| *o = f(*x, *y));
            } else {
                out.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (x, y))| *o = f(*x, *y));
            }
            return Ok(self.with_data(out, self.shape().clone()));
        }
        let shape = broadcast_shape(op, self.shape(), rhs.shape())?;
        let (sa, sb) = (broadcast_strides(self.shape(), &shape), broadcast_strides(rhs.shape(), &shape));
        let mut out = vec![0.0f32; shape.numel()];
        for_each_broadcast(&shape, &sa, &sb, |i, oa, ob| out[i] = f(a[oa], b[ob]));
        Ok(self.with_data(out, shape))
    }

    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, "add", BinaryOp::Add, |a, b| a + b)
    }
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, "sub", BinaryOp::Sub, |a, b| a - b)
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, "mul", BinaryOp::Mul, |a, b| a * b)
    }
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, "div", BinaryOp::Div, |a, b| a / b)
    }

    /// Applies `f` to every element. Host tensors only: a closure cannot run on a GPU, so a
    /// device tensor answers [`Error::DeviceUnavailable`] (the named ops below run anywhere).
    pub fn map(&self, op: &'static str, f: impl Fn(f32) -> f32 + Sync) -> Result<Tensor> {
        if cuda::on_gpu([self]) {
            return Err(cuda::ops::map_unavailable(self, op));
        }
        let a = self.f32s(op)?;
        let mut out = vec![0.0f32; a.len()];
        if a.len() >= PAR_MIN {
            out.par_iter_mut().zip(a.par_iter()).for_each(|(o, x)| *o = f(*x));
        } else {
            out.iter_mut().zip(a).for_each(|(o, x)| *o = f(*x));
        }
        Ok(self.with_data(out, self.shape().clone()))
    }

    /// A named elementwise op: `f` on the host, the unary kernel `kind` on a GPU.
    fn unary(&self, op: &'static str, kind: UnaryOp, f: impl Fn(f32) -> f32 + Sync) -> Result<Tensor> {
        if cuda::on_gpu([self]) {
            return cuda::ops::unary(self, op, kind);
        }
        self.map(op, f)
    }

    pub fn scale(&self, s: f32) -> Result<Tensor> {
        self.unary("scale", UnaryOp::Scale(s), |x| x * s)
    }
    pub fn add_scalar(&self, s: f32) -> Result<Tensor> {
        self.unary("add_scalar", UnaryOp::AddScalar(s), |x| x + s)
    }
    pub fn neg(&self) -> Result<Tensor> {
        self.unary("neg", UnaryOp::Neg, |x| -x)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary("exp", UnaryOp::Exp, f32::exp)
    }
    pub fn ln(&self) -> Result<Tensor> {
        self.unary("ln", UnaryOp::Ln, f32::ln)
    }
    pub fn sqr(&self) -> Result<Tensor> {
        self.unary("sqr", UnaryOp::Sqr, |x| x * x)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary("sigmoid", UnaryOp::Sigmoid, sigmoid)
    }
    pub fn silu(&self) -> Result<Tensor> {
        self.unary("silu", UnaryOp::Silu, silu)
    }

    /// `self += rhs` in place, same shape (gradient accumulation).
    pub fn add_assign(&mut self, rhs: &Tensor) -> Result<()> {
        if self.shape() != rhs.shape() {
            return Err(Error::ShapeMismatch { op: "add_assign", lhs: self.shape().clone(), rhs: rhs.shape().clone() });
        }
        if cuda::on_gpu([&*self, rhs]) {
            return cuda::ops::add_assign(self, rhs);
        }
        let b = rhs.f32s("add_assign")?.to_vec();
        let a = self.f32_mut("add_assign")?;
        a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// Broadcasts to `shape` (numpy rules), materialising the result.
    pub fn broadcast_to(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        let b = broadcast_shape("broadcast_to", self.shape(), &shape)?;
        if b != shape {
            return Err(Error::ShapeMismatch { op: "broadcast_to", lhs: self.shape().clone(), rhs: shape });
        }
        if cuda::on_gpu([self]) {
            return cuda::ops::broadcast_to(self, shape);
        }
        let a = self.f32s("broadcast_to")?;
        let sa = broadcast_strides(self.shape(), &shape);
        let zeros = vec![0; shape.rank()];
        let mut out = vec![0.0f32; shape.numel()];
        for_each_broadcast(&shape, &sa, &zeros, |i, oa, _| out[i] = a[oa]);
        Ok(self.with_data(out, shape))
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
        if cuda::on_gpu([self]) {
            return cuda::ops::sum_to(self, shape);
        }
        let a = self.f32s("sum_to")?;
        let st = broadcast_strides(shape, self.shape());
        let zeros = vec![0; self.rank()];
        let mut out = vec![0.0f32; shape.numel()];
        for_each_broadcast(self.shape(), &st, &zeros, |i, o, _| out[o] += a[i]);
        Ok(self.with_data(out, shape.clone()))
    }
}

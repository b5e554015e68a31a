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
    (0..out.rank())
        .map(|i| if i < off || s.dim(i - off) == 1 { 0 } else { st[i - off] })
        .collect()
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
    fn binary(&self, rhs: &Tensor, op: &'static str, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Tensor> {
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
        self.binary(rhs, "add", |a, b| a + b)
    }
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, "sub", |a, b| a - b)
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, "mul", |a, b| a * b)
    }
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, "div", |a, b| a / b)
    }

    /// Applies `f` to every element.
    pub fn map(&self, op: &'static str, f: impl Fn(f32) -> f32 + Sync) -> Result<Tensor> {
        let a = self.f32s(op)?;
        let mut out = vec![0.0f32; a.len()];
        if a.len() >= PAR_MIN {
            out.par_iter_mut().zip(a.par_iter()).for_each(|(o, x)| *o = f(*x));
        } else {
            out.iter_mut().zip(a).for_each(|(o, x)| *o = f(*x));
        }
        Ok(self.with_data(out, self.shape().clone()))
    }

    pub fn scale(&self, s: f32) -> Result<Tensor> {
        self.map("scale", |x| x * s)
    }
    pub fn add_scalar(&self, s: f32) -> Result<Tensor> {
        self.map("add_scalar", |x| x + s)
    }
    pub fn neg(&self) -> Result<Tensor> {
        self.map("neg", |x| -x)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.map("exp", f32::exp)
    }
    pub fn ln(&self) -> Result<Tensor> {
        self.map("ln", f32::ln)
    }
    pub fn sqr(&self) -> Result<Tensor> {
        self.map("sqr", |x| x * x)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.map("sigmoid", sigmoid)
    }
    pub fn silu(&self) -> Result<Tensor> {
        self.map("silu", silu)
    }

    /// `self += rhs` in place, same shape (gradient accumulation).
    pub fn add_assign(&mut self, rhs: &Tensor) -> Result<()> {
        if self.shape() != rhs.shape() {
            return Err(Error::ShapeMismatch { op: "add_assign", lhs: self.shape().clone(), rhs: rhs.shape().clone() });
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
        let a = self.f32s("sum_to")?;
        let st = broadcast_strides(shape, self.shape());
        let zeros = vec![0; self.rank()];
        let mut out = vec![0.0f32; shape.numel()];
        for_each_broadcast(self.shape(), &st, &zeros, |i, o, _| out[o] += a[i]);
        Ok(self.with_data(out, shape.clone()))
    }
}

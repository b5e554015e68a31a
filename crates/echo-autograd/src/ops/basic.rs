//! Generic differentiable ops.

use crate::{Error, Result, Var};
use echo_tensor::{Shape, Tensor};

fn binary(
    a: &Var,
    b: &Var,
    value: Tensor,
    da: impl Fn(&Tensor) -> echo_tensor::Result<Tensor> + 'static,
    db: impl Fn(&Tensor) -> echo_tensor::Result<Tensor> + 'static,
) -> Result<Var> {
    let (sa, sb) = (a.shape().clone(), b.shape().clone());
    a.tape().record(value, &[a, b], move |g, needs| {
        let ga = if needs[0] { Some(da(g)?.sum_to(&sa)?) } else { None };
        let gb = if needs[1] { Some(db(g)?.sum_to(&sb)?) } else { None };
        Ok(vec![ga, gb])
    })
}

/// `a + b` with broadcasting.
pub fn add(a: &Var, b: &Var) -> Result<Var> {
    binary(a, b, a.value().add(b.value())?, |g| Ok(g.clone()), |g| Ok(g.clone()))
}

/// `a - b` with broadcasting.
pub fn sub(a: &Var, b: &Var) -> Result<Var> {
    binary(a, b, a.value().sub(b.value())?, |g| Ok(g.clone()), |g| g.neg())
}

/// `a * b` elementwise with broadcasting.
pub fn mul(a: &Var, b: &Var) -> Result<Var> {
    let (av, bv) = (a.value().clone(), b.value().clone());
    binary(a, b, a.value().mul(b.value())?, move |g| g.mul(&bv), move |g| g.mul(&av))
}

/// `s * a`.
pub fn scale(a: &Var, s: f32) -> Result<Var> {
    a.tape().record(a.value().scale(s)?, &[a], move |g, _| Ok(vec![Some(g.scale(s)?)]))
}

/// Batched `op(a) @ op(b)` (see [`Tensor::matmul_t`]). A 2-D `b` is shared by all batches
/// of `a`; then `a` may not be transposed.
pub fn matmul_t(a: &Var, b: &Var, ta: bool, tb: bool) -> Result<Var> {
    if b.value().rank() == 2 && a.value().rank() > 2 && ta {
        return Err(Error::Invalid("matmul_t: a transposed batched lhs with a shared 2-D rhs is not supported".into()));
    }
    let value = a.value().matmul_t(b.value(), ta, tb)?;
    let (av, bv) = (a.value().clone(), b.value().clone());
    a.tape().record(value, &[a, b], move |g, needs| {
        let da = if !needs[0] {
            None
        } else {
            Some(match (ta, tb) {
                (false, false) => g.matmul_t(&bv, false, true)?,
                (false, true) => g.matmul_t(&bv, false, false)?,
                (true, false) => bv.matmul_t(g, false, true)?,
                (true, true) => bv.matmul_t(g, true, true)?,
            })
        };
        let db = if !needs[1] {
            None
        } else {
            // With a shared 2-D `b`, fold the batch into the rows so one GEMM sums over it.
            let (a2, g2) = if bv.rank() == 2 && av.rank() > 2 {
                (av.reshape([av.shape().rows(), av.shape().last()])?, g.reshape([g.shape().rows(), g.shape().last()])?)
            } else {
                (av.clone(), g.clone())
            };
            Some(match (ta, tb) {
                (false, false) => a2.matmul_t(&g2, true, false)?,
                (false, true) => g2.matmul_t(&a2, true, false)?,
                (true, false) => a2.matmul_t(&g2, false, false)?,
                (true, true) => g2.matmul_t(&a2, true, true)?,
            })
        };
        Ok(vec![da, db])
    })
}

pub fn matmul(a: &Var, b: &Var) -> Result<Var> {
    matmul_t(a, b, false, false)
}

/// `x @ w^T` with `x` `[..., in]`, `w` `[out, in]`; `dw` is computed only if `w` is trainable.
pub fn linear(x: &Var, w: &Var) -> Result<Var> {
    let value = x.value().linear(w.value())?;
    let (xv, wv) = (x.value().clone(), w.value().clone());
    x.tape().record(value, &[x, w], move |g, needs| {
        let (rows, out) = (g.shape().rows(), g.shape().last());
        let g2 = g.reshape([rows, out])?;
        let dx = if needs[0] { Some(g2.matmul_t(&wv, false, false)?.reshape(xv.shape().clone())?) } else { None };
        let dw = if needs[1] { Some(g2.matmul_t(&xv.reshape([rows, xv.shape().last()])?, true, false)?) } else { None };
        Ok(vec![dx, dw])
    })
}

pub fn reshape(a: &Var, shape: impl Into<Shape>) -> Result<Var> {
    let from = a.shape().clone();
    a.tape().record(a.value().reshape(shape)?, &[a], move |g, _| Ok(vec![Some(g.reshape(from)?)]))
}

pub fn permute(a: &Var, perm: &[usize]) -> Result<Var> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        if p < inv.len() {
            inv[p] = i;
        }
    }
    a.tape().record(a.value().permute(perm)?, &[a], move |g, _| Ok(vec![Some(g.permute(&inv)?)]))
}

/// `len` entries of `dim` from `start`; backward pads the gradient with zeros.
pub fn narrow(a: &Var, dim: usize, start: usize, len: usize) -> Result<Var> {
    let dims = a.dims().to_vec();
    a.tape().record(a.value().narrow(dim, start, len)?, &[a], move |g, _| {
        let mut before = dims.clone();
        before[dim] = start;
        let mut after = dims.clone();
        after[dim] = dims[dim] - start - len;
        let (z0, z1) = (Tensor::full_on(0.0, before, g.device())?, Tensor::full_on(0.0, after, g.device())?);
        Ok(vec![Some(Tensor::concat(&[&z0, g, &z1], dim)?)])
    })
}

pub fn concat(parts: &[&Var], dim: usize) -> Result<Var> {
    let first = parts.first().ok_or_else(|| Error::Invalid("concat of no variables".into()))?;
    let values: Vec<&Tensor> = parts.iter().map(|p| p.value()).collect();
    let sizes: Vec<usize> = parts.iter().map(|p| p.dims().get(dim).copied().unwrap_or(0)).collect();
    first.tape().record(Tensor::concat(&values, dim)?, parts, move |g, needs| {
        let mut start = 0;
        let mut out = Vec::with_capacity(sizes.len());
        for (s, need) in sizes.iter().zip(needs) {
            out.push(if *need { Some(g.narrow(dim, start, *s)?) } else { None });
            start += s;
        }
        Ok(out)
    })
}

/// The gradient of a full reduction: the scalar `g` (divided by `divisor`) everywhere in
/// `shape`, computed where `g` is (on a GPU backward never waits for it).
fn spread(g: &Tensor, shape: Shape, divisor: Option<f32>) -> Result<Tensor> {
    let g = match divisor {
        Some(n) => g.div(&Tensor::full_on(n, [], g.device())?)?,
        None => g.clone(),
    };
    Ok(g.reshape(vec![1; shape.rank()])?.broadcast_to(shape)?)
}

pub fn sum_all(a: &Var) -> Result<Var> {
    let shape = a.shape().clone();
    a.tape().record(a.value().sum_all()?, &[a], move |g, _| Ok(vec![Some(spread(g, shape, None)?)]))
}

pub fn mean_all(a: &Var) -> Result<Var> {
    let shape = a.shape().clone();
    let n = shape.numel() as f32;
    a.tape().record(a.value().mean_all()?, &[a], move |g, _| Ok(vec![Some(spread(g, shape, Some(n))?)]))
}

pub fn sum_dim(a: &Var, dim: usize, keepdim: bool) -> Result<Var> {
    let shape = a.shape().clone();
    a.tape().record(a.value().sum_dim(dim, keepdim)?, &[a], move |g, _| {
        let mut kd = shape.dims().to_vec();
        kd[dim] = 1;
        Ok(vec![Some(g.reshape(kd)?.broadcast_to(shape)?)])
    })
}

/// Softmax over the last dimension; backward `y * (g - sum(g * y))`, the row sum in order.
pub fn softmax_last(a: &Var) -> Result<Var> {
    let y = a.value().softmax_last()?;
    let yv = y.clone();
    a.tape().record(y, &[a], move |g, _| {
        let dot = g.mul(&yv)?.sum_dim(yv.rank() - 1, true)?;
        Ok(vec![Some(yv.mul(&g.sub(&dot)?)?)])
    })
}

/// Rows of `table` (dim 0) at `idx`: the embedding lookup. Backward scatter-adds.
pub fn index_select(table: &Var, idx: &[usize]) -> Result<Var> {
    let rows = table.dims().first().copied().unwrap_or(0);
    let idx_owned = idx.to_vec();
    table.tape().record(table.value().index_select(idx)?, &[table], move |g, _| {
        Ok(vec![Some(g.scatter_add_rows(&idx_owned, rows)?)])
    })
}

/// Backward `g * y * (1 - y)`.
pub fn sigmoid(a: &Var) -> Result<Var> {
    let y = a.value().sigmoid()?;
    let yv = y.clone();
    a.tape().record(y, &[a], move |g, _| Ok(vec![Some(g.mul(&yv)?.mul(&yv.neg()?.add_scalar(1.0)?)?)]))
}

/// Backward `g * silu'(x)`, `silu'(x) = s (1 + x (1 - s))` with `s = sigmoid(x)`, in the
/// order of `echo_kernels::cpu::activation::silu_grad`.
pub fn silu(a: &Var) -> Result<Var> {
    let xv = a.value().clone();
    a.tape().record(a.value().silu()?, &[a], move |g, _| {
        let s = xv.sigmoid()?;
        let grad = s.mul(&xv.mul(&s.neg()?.add_scalar(1.0)?)?.add_scalar(1.0)?)?;
        Ok(vec![Some(g.mul(&grad)?)])
    })
}

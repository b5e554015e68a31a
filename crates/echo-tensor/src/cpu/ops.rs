//! Host forms of the generic ops (`crate::ops`): elementwise and broadcasting, reductions,
//! layout, gathers and matmul, on f32 host buffers (`echo_kernels::cpu::gemm` for the GEMMs).
//! Each op's shape checks ran in its op file; dtype checks are here (`Tensor::f32s`).

use super::mixed;
use crate::backend::{BinaryOp, ReduceOp, UnaryOp};
use crate::{broadcast_shape, Buffer, Error, Result, Shape, Tensor};
use echo_kernels::cpu::activation::{sigmoid, silu};
use echo_kernels::cpu::gemm::{matmul, Par};
use rayon::prelude::*;

/// Elementwise loops this long or longer run on the rayon pool.
const PAR_MIN: usize = 1 << 15;

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

// ---------------------------------------------------------------- elementwise

/// Each kind's arithmetic as its own closure, so every loop below is compiled for one kind.
pub(crate) fn binary(a: &Tensor, b: &Tensor, op: &'static str, kind: BinaryOp) -> Result<Tensor> {
    match kind {
        BinaryOp::Add => binary_with(a, b, op, |x, y| x + y),
        BinaryOp::Sub => binary_with(a, b, op, |x, y| x - y),
        BinaryOp::Mul => binary_with(a, b, op, |x, y| x * y),
        BinaryOp::Div => binary_with(a, b, op, |x, y| x / y),
    }
}

fn binary_with(lhs: &Tensor, rhs: &Tensor, op: &'static str, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Tensor> {
    let (a, b) = (lhs.f32s(op)?, rhs.f32s(op)?);
    if lhs.shape() == rhs.shape() {
        let mut out = vec![0.0f32; a.len()];
        if a.len() >= PAR_MIN {
            out.par_iter_mut().zip(a.par_iter().zip(b.par_iter())).for_each(|(o, (x, y))| *o = f(*x, *y));
        } else {
            out.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (x, y))| *o = f(*x, *y));
        }
        return Ok(lhs.with_data(out, lhs.shape().clone()));
    }
    let shape = broadcast_shape(op, lhs.shape(), rhs.shape())?;
    let (sa, sb) = (broadcast_strides(lhs.shape(), &shape), broadcast_strides(rhs.shape(), &shape));
    let mut out = vec![0.0f32; shape.numel()];
    for_each_broadcast(&shape, &sa, &sb, |i, oa, ob| out[i] = f(a[oa], b[ob]));
    Ok(lhs.with_data(out, shape))
}

pub(crate) fn unary(x: &Tensor, op: &'static str, kind: UnaryOp) -> Result<Tensor> {
    match kind {
        UnaryOp::Scale(s) => map(x, op, |v| v * s),
        UnaryOp::AddScalar(s) => map(x, op, |v| v + s),
        UnaryOp::Neg => map(x, op, |v| -v),
        UnaryOp::Exp => map(x, op, f32::exp),
        UnaryOp::Ln => map(x, op, f32::ln),
        UnaryOp::Sqr => map(x, op, |v| v * v),
        UnaryOp::Sigmoid => map(x, op, sigmoid),
        UnaryOp::Silu => map(x, op, silu),
    }
}

/// `f` on every element (`Tensor::map`, and each unary kind).
pub(crate) fn map(x: &Tensor, op: &'static str, f: impl Fn(f32) -> f32 + Sync) -> Result<Tensor> {
    let a = x.f32s(op)?;
    let mut out = vec![0.0f32; a.len()];
    if a.len() >= PAR_MIN {
        out.par_iter_mut().zip(a.par_iter()).for_each(|(o, x)| *o = f(*x));
    } else {
        out.iter_mut().zip(a).for_each(|(o, x)| *o = f(*x));
    }
    Ok(x.with_data(out, x.shape().clone()))
}

pub(crate) fn add_assign(a: &mut Tensor, rhs: &Tensor) -> Result<()> {
    let b = rhs.f32s("add_assign")?.to_vec();
    let a = a.f32_mut("add_assign")?;
    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
    Ok(())
}

pub(crate) fn broadcast_to(x: &Tensor, shape: Shape) -> Result<Tensor> {
    let a = x.f32s("broadcast_to")?;
    let sa = broadcast_strides(x.shape(), &shape);
    let zeros = vec![0; shape.rank()];
    let mut out = vec![0.0f32; shape.numel()];
    for_each_broadcast(&shape, &sa, &zeros, |i, oa, _| out[i] = a[oa]);
    Ok(x.with_data(out, shape))
}

pub(crate) fn sum_to(x: &Tensor, shape: &Shape) -> Result<Tensor> {
    let a = x.f32s("sum_to")?;
    let st = broadcast_strides(shape, x.shape());
    let zeros = vec![0; x.rank()];
    let mut out = vec![0.0f32; shape.numel()];
    for_each_broadcast(x.shape(), &st, &zeros, |i, o, _| out[o] += a[i]);
    Ok(x.with_data(out, shape.clone()))
}

// ---------------------------------------------------------------- reductions

pub(crate) fn reduce_dim(x: &Tensor, op: &'static str, dim: usize, keepdim: bool, kind: ReduceOp) -> Result<Tensor> {
    match kind {
        ReduceOp::Sum => reduce_dim_with(x, op, dim, keepdim, 0.0, |a, v| a + v),
        ReduceOp::Max => reduce_dim_with(x, op, dim, keepdim, f32::NEG_INFINITY, f32::max),
    }
}

fn reduce_dim_with(
    x: &Tensor,
    op: &'static str,
    dim: usize,
    keepdim: bool,
    init: f32,
    f: impl Fn(f32, f32) -> f32,
) -> Result<Tensor> {
    let a = x.f32s(op)?;
    let (outer, size, inner) = x.split_at_dim(dim);
    let mut out = vec![init; outer * inner];
    for o in 0..outer {
        for s in 0..size {
            let row = &a[(o * size + s) * inner..(o * size + s + 1) * inner];
            for (acc, v) in out[o * inner..(o + 1) * inner].iter_mut().zip(row) {
                *acc = f(*acc, *v);
            }
        }
    }
    let mut dims = x.dims().to_vec();
    if keepdim {
        dims[dim] = 1;
    } else {
        dims.remove(dim);
    }
    Ok(x.with_data(out, Shape::new(dims)))
}

/// Summed in f64 and divided in f64 (exact for `denom` 1), rounded to f32 once.
pub(crate) fn sum_all_div(x: &Tensor, denom: f32) -> Result<Tensor> {
    let s: f64 = x.f32s("sum_all")?.iter().map(|&v| v as f64).sum();
    Ok(x.with_data(vec![(s / denom as f64) as f32], Shape::new(vec![])))
}

/// The f32 sum divided in f32.
pub(crate) fn mean_all(x: &Tensor) -> Result<Tensor> {
    let s = sum_all_div(x, 1.0)?.item()?;
    Ok(Tensor::scalar(s / x.numel() as f32))
}

pub(crate) fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let n = x.shape().last();
    let a = x.f32s("softmax_last")?;
    let mut out = a.to_vec();
    for row in out.chunks_mut(n.max(1)) {
        let m = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut s = 0.0f32;
        row.iter_mut().for_each(|v| {
            *v = (*v - m).exp();
            s += *v;
        });
        row.iter_mut().for_each(|v| *v /= s);
    }
    Ok(x.with_data(out, x.shape().clone()))
}

/// Squares and sums in f64.
pub(crate) fn sum_squares(ts: &[&Tensor]) -> Result<f64> {
    let mut total = 0.0f64;
    for t in ts {
        total += t.f32s("sum_squares")?.iter().map(|&v| v as f64 * v as f64).sum::<f64>();
    }
    Ok(total)
}

// ---------------------------------------------------------------- layout

pub(crate) fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let a = x.f32s("permute")?;
    let r = x.rank();
    let in_strides = x.shape().strides();
    let out_dims: Vec<usize> = perm.iter().map(|&p| x.dims()[p]).collect();
    let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let n = x.numel();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; r];
    let mut off = 0usize;
    for _ in 0..n {
        out.push(a[off]);
        for d in (0..r).rev() {
            idx[d] += 1;
            off += strides[d];
            if idx[d] < out_dims[d] {
                break;
            }
            off -= strides[d] * out_dims[d];
            idx[d] = 0;
        }
    }
    Ok(x.with_data(out, Shape::new(out_dims)))
}

pub(crate) fn narrow(x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
    let a = x.f32s("narrow")?;
    let (outer, size, inner) = x.split_at_dim(dim);
    let mut out = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        out.extend_from_slice(&a[(o * size + start) * inner..(o * size + start + len) * inner]);
    }
    let mut dims = x.dims().to_vec();
    dims[dim] = len;
    Ok(x.with_data(out, Shape::new(dims)))
}

pub(crate) fn concat(parts: &[&Tensor], dim: usize) -> Result<Tensor> {
    let first = parts[0];
    let (outer, _, inner) = first.split_at_dim(dim);
    let total: usize = parts.iter().map(|p| p.dims()[dim]).sum();
    let mut out = Vec::with_capacity(outer * total * inner);
    for o in 0..outer {
        for p in parts {
            let size = p.dims()[dim];
            out.extend_from_slice(&p.f32s("concat")?[o * size * inner..(o + 1) * size * inner]);
        }
    }
    let mut dims = first.dims().to_vec();
    dims[dim] = total;
    Ok(first.with_data(out, Shape::new(dims)))
}

pub(crate) fn index_select(x: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let rows = x.dims()[0];
    let inner = x.numel() / rows.max(1);
    // A frozen bf16 table (the base embedding) is accepted, its rows widened as they are
    // gathered, as the GPU's gather does (`mixed`); other dtypes must be f32.
    let table32 = match x.buffer() {
        Buffer::BF16(_) => None,
        _ => Some(x.f32s("index_select")?),
    };
    if let Some(&i) = idx.iter().find(|&&i| i >= rows) {
        return Err(Error::IndexOutOfRange { op: "index_select", index: i as i64, size: rows });
    }
    let mut out = Vec::with_capacity(idx.len() * inner);
    match (table32, x.buffer()) {
        (Some(a), _) => idx.iter().for_each(|&i| out.extend_from_slice(&a[i * inner..(i + 1) * inner])),
        (None, Buffer::BF16(a)) => {
            idx.iter().for_each(|&i| out.extend(a[i * inner..(i + 1) * inner].iter().map(|h| h.to_f32())))
        }
        (None, _) => unreachable!("only a bf16 table has no f32 view"),
    }
    let mut dims = x.dims().to_vec();
    dims[0] = idx.len();
    Ok(x.with_data(out, Shape::new(dims)))
}

pub(crate) fn scatter_add_rows(x: &Tensor, idx: &[usize], rows: usize) -> Result<Tensor> {
    let inner = x.numel() / idx.len().max(1);
    let a = x.f32s("scatter_add_rows")?;
    let mut out = vec![0.0f32; rows * inner];
    for (k, &i) in idx.iter().enumerate() {
        if i >= rows {
            return Err(Error::IndexOutOfRange { op: "scatter_add_rows", index: i as i64, size: rows });
        }
        out[i * inner..(i + 1) * inner].iter_mut().zip(&a[k * inner..(k + 1) * inner]).for_each(|(o, s)| *o += s);
    }
    let mut dims = x.dims().to_vec();
    dims[0] = rows;
    Ok(x.with_data(out, Shape::new(dims)))
}

// ---------------------------------------------------------------- matmul

pub(crate) fn matmul_t(a: &Tensor, b: &Tensor, ta: bool, tb: bool, m: usize, k: usize, n: usize) -> Result<Tensor> {
    let op = "matmul";
    let (ar, br) = (a.rank(), b.rank());
    let batch_dims = &a.dims()[..ar - 2];
    let batch: usize = batch_dims.iter().product();
    let mut out = vec![0.0f32; batch * m * n];
    let mut dims = batch_dims.to_vec();
    dims.extend([m, n]);
    // A frozen bf16 weight shared by every batch (`x W^T`, or `dy W` for its input
    // gradient): the twin of the GPU's mixed precision (`mixed`).
    if mixed::is_bf16_host(b) && br == 2 && !ta {
        let a16 = mixed::round_bf16(a.f32s(op)?);
        let w = mixed::weight_f32(b, op)?;
        matmul(&mut out, &a16, &w, batch * m, k, n, false, tb, 1.0, false, Par::Rayon);
        return Ok(a.with_data(out, Shape::new(dims)));
    }
    let (a_data, b_data) = (a.f32s(op)?, b.f32s(op)?);
    // A shared 2-D right operand with an untransposed left one is one big GEMM.
    if br == 2 && !ta {
        matmul(&mut out, a_data, b_data, batch * m, k, n, false, tb, 1.0, false, Par::Rayon);
    } else {
        let b_step = if br == 2 { 0 } else { k * n };
        for i in 0..batch {
            matmul(
                &mut out[i * m * n..(i + 1) * m * n],
                &a_data[i * m * k..(i + 1) * m * k],
                &b_data[i * b_step..i * b_step + k * n],
                m,
                k,
                n,
                ta,
                tb,
                1.0,
                false,
                Par::Rayon,
            );
        }
    }
    Ok(a.with_data(out, Shape::new(dims)))
}

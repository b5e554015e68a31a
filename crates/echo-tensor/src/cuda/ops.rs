//! Device forms of the generic ops (`crate::ops`): elementwise and reductions through the
//! `tensor_ops` kernels, layout through copies and the permute kernel, gathers through the
//! embedding kernels, matmul through cuBLAS. Each is reached through `crate::backend` after
//! the op file's shape checks, and checks devices and dtypes itself (see the module docs of
//! `cuda`).

use super::{Cx, Weight};
use crate::{broadcast_shape, DType, Device, Error, Result, Shape, Tensor};
use echo_kernels::cuda::alloc::GpuBuf;
use echo_kernels::cuda::{blas, ops as k, CudaError};

pub(crate) use echo_kernels::cuda::tensor_ops as tk;
pub(crate) use tk::{BinaryOp, ReduceOp, UnaryOp};

/// Indices as the kernels take them (int32), after the caller checked them against the size.
pub(crate) fn upload_indices(cx: &Cx, idx: &[usize]) -> Result<GpuBuf<i32>> {
    let v = idx.iter().map(|&i| i32::try_from(i)).collect::<std::result::Result<Vec<i32>, _>>().map_err(|_| {
        Error::Cuda { op: cx.op, device: cx.device, source: CudaError::Unsupported("an index exceeds i32".into()) }
    })?;
    cx.k(cx.gpu.upload(&v))
}

/// `C[m, n] = op(A) op(B)` in fp32; an empty inner dimension gives zeros (cuBLAS is not asked
/// to define that case).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into(
    cx: &Cx,
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    kk: usize,
    a: &GpuBuf<f32>,
    b: &GpuBuf<f32>,
    c: &mut GpuBuf<f32>,
) -> Result<()> {
    if kk == 0 {
        return cx.k(cx.gpu.memset_zero(c));
    }
    cx.k(blas::gemm_f32(&cx.gpu, ta, tb, m, n, kk, 1.0, a, b, 0.0, c))
}

/// `y[m, n] = x[m, k] W[n, k]^T`: fp32, or a bf16 base weight through cuBLAS with `x` cast to
/// bf16 (fp32 accumulation and output), the mixed precision of the CUDA backend.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_into(
    cx: &Cx,
    x: &GpuBuf<f32>,
    w: &Weight<'_>,
    y: &mut GpuBuf<f32>,
    m: usize,
    kk: usize,
    n: usize,
) -> Result<()> {
    match w {
        Weight::F32(w) => gemm_into(cx, false, true, m, n, kk, x, w, y),
        Weight::Bf16(_) if kk == 0 => cx.k(cx.gpu.memset_zero(y)),
        Weight::Bf16(w) => {
            let x16 = cx.to_bf16(x)?;
            cx.k(blas::linear_bf16(&cx.gpu, &x16, w, y, m, kk, n, false))
        }
    }
}

/// Its input gradient `dx[m, k] = dy[m, n] W[n, k]` (bf16 weight: `dy` cast to bf16).
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_dx_into(
    cx: &Cx,
    dy: &GpuBuf<f32>,
    w: &Weight<'_>,
    dx: &mut GpuBuf<f32>,
    m: usize,
    kk: usize,
    n: usize,
) -> Result<()> {
    match w {
        Weight::F32(w) => gemm_into(cx, false, false, m, kk, n, dy, w, dx),
        Weight::Bf16(_) if n == 0 => cx.k(cx.gpu.memset_zero(dx)),
        Weight::Bf16(w) => {
            let dy16 = cx.to_bf16(dy)?;
            cx.k(blas::linear_bf16_dx(&cx.gpu, &dy16, w, dx, m, kk, n, false))
        }
    }
}

/// `Tensor::full_on` for a CUDA device.
pub(crate) fn full(value: f32, shape: Shape, ordinal: usize) -> Result<Tensor> {
    let op = "full_on";
    let cx = Cx { op, device: Device::Cuda(ordinal), gpu: super::gpu(op, ordinal)? };
    let mut y = cx.alloc(shape.numel())?;
    cx.k(tk::fill(&cx.gpu, &mut y, value))?;
    Ok(cx.tensor(y, shape))
}

// ---------------------------------------------------------------- elementwise

/// `a (op) b` with numpy broadcasting; dtypes are checked before shapes, as on the CPU.
pub(crate) fn binary(a: &Tensor, b: &Tensor, op: &'static str, kind: BinaryOp) -> Result<Tensor> {
    let cx = Cx::of(op, [a, b])?;
    let (ab, bb) = (cx.f32(a)?, cx.f32(b)?);
    let shape = if a.shape() == b.shape() { a.shape().clone() } else { broadcast_shape(op, a.shape(), b.shape())? };
    let mut y = cx.alloc(shape.numel())?;
    cx.k(tk::binary(&cx.gpu, kind, ab, a.dims(), bb, b.dims(), &mut y, shape.dims()))?;
    Ok(cx.tensor(y, shape))
}

pub(crate) fn unary(x: &Tensor, op: &'static str, kind: UnaryOp) -> Result<Tensor> {
    let cx = Cx::of(op, [x])?;
    let xb = cx.f32(x)?;
    let mut y = cx.alloc(xb.len())?;
    cx.k(tk::unary(&cx.gpu, kind, xb, &mut y))?;
    Ok(cx.tensor(y, x.shape().clone()))
}

/// `a += b` in place when `a` holds its data alone; a new buffer otherwise (copy-on-write:
/// the other holders keep what they saw).
pub(crate) fn add_assign(a: &mut Tensor, b: &Tensor) -> Result<()> {
    let op = "add_assign";
    let cx = Cx::of(op, [a, b])?;
    let bb = cx.f32(b)?;
    cx.f32(a)?;
    if let Some(super::CudaData { buf: super::DevBuf::F32(ab), .. }) = a.cuda_data_mut() {
        return cx.k(tk::add_assign(&cx.gpu, ab, bb));
    }
    *a = binary(a, b, op, BinaryOp::Add)?;
    Ok(())
}

pub(crate) fn broadcast_to(x: &Tensor, shape: Shape) -> Result<Tensor> {
    let op = "broadcast_to";
    let cx = Cx::of(op, [x])?;
    let xb = cx.f32(x)?;
    // A broadcast multiply by one: exact for every value (-0, infinities, NaN), so a copy.
    let one = cx.k(cx.gpu.upload(&[1.0f32]))?;
    let mut y = cx.alloc(shape.numel())?;
    cx.k(tk::binary(&cx.gpu, BinaryOp::Mul, xb, x.dims(), &one, &[], &mut y, shape.dims()))?;
    Ok(cx.tensor(y, shape))
}

pub(crate) fn sum_to(x: &Tensor, shape: &Shape) -> Result<Tensor> {
    let op = "sum_to";
    let cx = Cx::of(op, [x])?;
    let xb = cx.f32(x)?;
    let mut y = cx.alloc(shape.numel())?;
    cx.k(tk::sum_to(&cx.gpu, xb, x.dims(), &mut y, shape.dims()))?;
    Ok(cx.tensor(y, shape.clone()))
}

// ---------------------------------------------------------------- layout

pub(crate) fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let cx = Cx::of("permute", [x])?;
    let xb = cx.f32(x)?;
    let dims: Vec<usize> = perm.iter().map(|&p| x.dims()[p]).collect();
    let mut y = cx.alloc(xb.len())?;
    cx.k(tk::permute(&cx.gpu, xb, x.dims(), perm, &mut y))?;
    Ok(cx.tensor(y, dims))
}

/// `len` entries of `dim` from `start`: a strided 2-D copy (`outer` rows).
pub(crate) fn narrow(x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
    let cx = Cx::of("narrow", [x])?;
    let xb = cx.f32(x)?;
    let (outer, size, inner) = x.split_at_dim(dim);
    let mut y = cx.alloc(outer * len * inner)?;
    cx.k(tk::copy_2d(&cx.gpu, xb, start * inner, size * inner, &mut y, 0, len * inner, outer, len * inner))?;
    let mut dims = x.dims().to_vec();
    dims[dim] = len;
    Ok(cx.tensor(y, dims))
}

/// One strided 2-D copy per part into its column range of the output.
pub(crate) fn concat(parts: &[&Tensor], dim: usize) -> Result<Tensor> {
    let cx = Cx::of("concat", parts.iter().copied())?;
    let first = parts[0];
    let (outer, _, inner) = first.split_at_dim(dim);
    let total: usize = parts.iter().map(|p| p.dims()[dim]).sum();
    let mut y = cx.alloc(outer * total * inner)?;
    let mut at = 0;
    for p in parts {
        let pb = cx.f32(p)?;
        let size = p.dims()[dim];
        cx.k(tk::copy_2d(&cx.gpu, pb, 0, size * inner, &mut y, at * inner, total * inner, outer, size * inner))?;
        at += size;
    }
    let mut dims = first.dims().to_vec();
    dims[dim] = total;
    Ok(cx.tensor(y, dims))
}

/// Rows of dimension 0 (the embedding lookup). A bf16 table (the frozen base embedding) is
/// accepted here and widened to f32 by the gather kernel, unlike on the CPU.
/// `idx` is uploaded on every call.
pub(crate) fn index_select(x: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let op = "index_select";
    let cx = Cx::of(op, [x])?;
    let rows = x.dims()[0];
    let inner = x.numel() / rows.max(1);
    let table = cx.weight(x)?;
    if let Some(&i) = idx.iter().find(|&&i| i >= rows) {
        return Err(Error::IndexOutOfRange { op, index: i as i64, size: rows });
    }
    let ig = upload_indices(&cx, idx)?;
    let mut y = cx.alloc(idx.len() * inner)?;
    match table {
        Weight::F32(t) => cx.k(k::embed_gather_f32(&cx.gpu, t, &ig, idx.len(), inner, &mut y))?,
        Weight::Bf16(t) => cx.k(k::embed_gather_bf16(&cx.gpu, t, &ig, idx.len(), inner, &mut y))?,
    }
    let mut dims = x.dims().to_vec();
    dims[0] = idx.len();
    Ok(cx.tensor(y, dims))
}

/// The adjoint of `index_select`: the scatter-add kernel sums rows in index order, as the CPU
/// loop does. `idx` is uploaded on every call.
pub(crate) fn scatter_add_rows(x: &Tensor, idx: &[usize], rows: usize) -> Result<Tensor> {
    let op = "scatter_add_rows";
    let cx = Cx::of(op, [x])?;
    let inner = x.numel() / idx.len().max(1);
    let xb = cx.f32(x)?;
    if let Some(&i) = idx.iter().find(|&&i| i >= rows) {
        return Err(Error::IndexOutOfRange { op, index: i as i64, size: rows });
    }
    let ig = upload_indices(&cx, idx)?;
    let mut y = cx.zeros(rows * inner)?;
    cx.k(k::embed_scatter_add(&cx.gpu, xb, &ig, idx.len(), inner, &mut y))?;
    let mut dims = x.dims().to_vec();
    dims[0] = rows;
    Ok(cx.tensor(y, dims))
}

// ---------------------------------------------------------------- matmul

/// Batched `op(a) op(b)` (shapes validated by the caller, see `Tensor::matmul_t`): one GEMM
/// when a 2-D `b` is shared and `a` is not transposed, else one strided-batched GEMM.
/// A shared 2-D `b` may also be a frozen bf16 weight: `x W^T` (linear) or `dy W` (its input
/// gradient) in cuBLAS with `a` cast to bf16, fp32 accumulation and output.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_t(a: &Tensor, b: &Tensor, ta: bool, tb: bool, m: usize, kk: usize, n: usize) -> Result<Tensor> {
    let cx = Cx::of("matmul", [a, b])?;
    let ab = cx.f32(a)?;
    let batch_dims = &a.dims()[..a.rank() - 2];
    let batch: usize = batch_dims.iter().product();
    let mut c = cx.alloc(batch * m * n)?;
    let shared = b.rank() == 2 && !ta;
    match cx.weight(b)? {
        w @ Weight::Bf16(_) if shared && tb => linear_into(&cx, ab, &w, &mut c, batch * m, kk, n)?,
        w @ Weight::Bf16(_) if shared => linear_dx_into(&cx, ab, &w, &mut c, batch * m, n, kk)?,
        Weight::Bf16(_) => return Err(Error::UnsupportedDType { op: cx.op, expected: DType::F32, got: DType::BF16 }),
        Weight::F32(bb) if shared => gemm_into(&cx, false, tb, batch * m, n, kk, ab, bb, &mut c)?,
        Weight::F32(_) if kk == 0 => cx.k(cx.gpu.memset_zero(&mut c))?,
        Weight::F32(bb) => {
            let b_step = if b.rank() == 2 { 0 } else { kk * n };
            let (pa, pb, pc) = (ab.ptr(), bb.ptr(), c.ptr());
            cx.k(blas::gemm_strided_batched_f32_raw(
                &cx.gpu,
                ta,
                tb,
                m,
                n,
                kk,
                1.0,
                pa,
                m * kk,
                pb,
                b_step,
                0.0,
                pc,
                m * n,
                batch,
            ))?;
        }
    }
    let mut dims = batch_dims.to_vec();
    dims.extend([m, n]);
    Ok(cx.tensor(c, dims))
}

// ---------------------------------------------------------------- reductions

/// Sum (in f64, rounded once) or max over `dim`; an empty `dim` gives 0 or -inf, as on the
/// CPU.
pub(crate) fn reduce_dim(x: &Tensor, op: &'static str, dim: usize, keepdim: bool, kind: ReduceOp) -> Result<Tensor> {
    let cx = Cx::of(op, [x])?;
    let xb = cx.f32(x)?;
    let (outer, size, inner) = x.split_at_dim(dim);
    let mut y = cx.alloc(outer * inner)?;
    cx.k(tk::reduce_axis(&cx.gpu, kind, xb, outer, size, inner, &mut y))?;
    let mut dims = x.dims().to_vec();
    if keepdim {
        dims[dim] = 1;
    } else {
        dims.remove(dim);
    }
    Ok(cx.tensor(y, dims))
}

/// Sum of all elements as a scalar, accumulated in f64 like the CPU's (in another order).
pub(crate) fn sum_all(x: &Tensor) -> Result<Tensor> {
    let cx = Cx::of("sum_all", [x])?;
    let xb = cx.f32(x)?;
    let mut y = cx.alloc(1)?;
    cx.k(tk::reduce_axis(&cx.gpu, ReduceOp::Sum, xb, 1, xb.len(), 1, &mut y))?;
    Ok(cx.tensor(y, Shape::new(vec![])))
}

/// `sum_all / denom`: the f64 sum rounded once, then multiplied by `1/denom` (within an ulp
/// of the CPU, which divides in f64 before rounding).
pub(crate) fn sum_all_div(x: &Tensor, denom: f32) -> Result<Tensor> {
    let s = sum_all(x)?;
    if denom == 1.0 {
        return Ok(s);
    }
    unary(&s, "sum_all", UnaryOp::Scale(1.0 / denom))
}

/// `sum_all / n` (as a multiplication by `1/n`: within an ulp of the CPU's division).
pub(crate) fn mean_all(x: &Tensor) -> Result<Tensor> {
    unary(&sum_all(x)?, "mean_all", UnaryOp::Scale(1.0 / x.numel() as f32))
}

/// Sum of squares over several tensors: squares (f32) summed per tensor on the device, the
/// per-tensor sums joined and summed, and that one scalar read back (the optimizer step's
/// single wait for the GPU).
pub(crate) fn sum_squares(ts: &[&Tensor]) -> Result<f64> {
    let sums = ts
        .iter()
        .map(|t| sum_all(&unary(t, "sum_squares", UnaryOp::Sqr)?)?.reshape([1]))
        .collect::<Result<Vec<_>>>()?;
    let total = sum_all(&concat(&sums.iter().collect::<Vec<_>>(), 0)?)?;
    Ok(total.item()? as f64)
}

pub(crate) fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let cx = Cx::of("softmax_last", [x])?;
    let xb = cx.f32(x)?;
    let cols = x.shape().last();
    let mut y = cx.alloc(xb.len())?;
    cx.k(tk::softmax_rows(&cx.gpu, xb, &mut y, xb.len() / cols.max(1), cols))?;
    Ok(cx.tensor(y, x.shape().clone()))
}

//! Row-major GEMM through cuBLAS, for the big frozen-weight products (bf16 operands, fp32
//! accumulation and output) and for the fp32 baseline the benches compare our kernels with.

use super::alloc::GpuBuf;
use super::runtime::Gpu;
use super::Result;
use cudarc::cublas::result::gemm_ex;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t};
use std::ffi::c_void;

/// Element type of the A and B operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// bf16 stored as raw `u16` bits (see `cpu::cast`).
    Bf16,
    F32,
}

impl Operand {
    fn cuda(self) -> cudaDataType_t {
        match self {
            Operand::Bf16 => cudaDataType_t::CUDA_R_16BF,
            Operand::F32 => cudaDataType_t::CUDA_R_32F,
        }
    }
}

/// `C[m, n] = alpha * op(A) op(B) + beta * C`, all row-major, C fp32, accumulation fp32.
/// `op(A)` is `m x k` (A stored `[k, m]` when `ta`), `op(B)` is `k x n` (B stored `[n, k]`
/// when `tb`). Pointers are raw device addresses of buffers holding at least those elements.
#[allow(clippy::too_many_arguments)]
pub fn gemm_raw(
    gpu: &Gpu,
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: u64,
    b: u64,
    ty: Operand,
    beta: f32,
    c: u64,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    let int = |v: usize| {
        i32::try_from(v).map_err(|_| super::CudaError::Unsupported(format!("GEMM dimension {v} exceeds i32")))
    };
    let (mi, ni, ki) = (int(m)?, int(n)?, int(k)?);
    gpu.context().bind_to_thread()?;
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    let lda_b = if tb { ki } else { ni }; // leading dimension of B as cuBLAS's first operand
    let ldb_a = if ta { mi } else { ki };
    // SAFETY: the handle lives in `gpu`; alpha/beta are host scalars (default pointer mode);
    // the caller guarantees the buffers' sizes.
    unsafe {
        gemm_ex(
            *gpu.blas().handle(),
            op(tb),
            op(ta),
            ni,
            mi,
            ki,
            &alpha as *const f32 as *const c_void,
            b as *const c_void,
            ty.cuda(),
            lda_b.max(1),
            a as *const c_void,
            ty.cuda(),
            ldb_a.max(1),
            &beta as *const f32 as *const c_void,
            c as *mut c_void,
            cudaDataType_t::CUDA_R_32F,
            ni.max(1),
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )?;
    }
    Ok(())
}

/// The frozen linear layer: `y[m, n] (+)= x[m, k] W[n, k]^T` with bf16 `x` and `W`, fp32 `y`.
#[allow(clippy::too_many_arguments)]
pub fn linear_bf16(
    gpu: &Gpu,
    x: &GpuBuf<u16>,
    w: &GpuBuf<u16>,
    y: &mut GpuBuf<f32>,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) -> Result<()> {
    check_len("linear_bf16", "x", x.len(), m * k)?;
    check_len("linear_bf16", "w", w.len(), n * k)?;
    check_len("linear_bf16", "y", y.len(), m * n)?;
    gemm_raw(
        gpu,
        false,
        true,
        m,
        n,
        k,
        1.0,
        x.ptr(),
        w.ptr(),
        Operand::Bf16,
        if accumulate { 1.0 } else { 0.0 },
        y.ptr(),
    )
}

/// Its input gradient: `dx[m, k] (+)= dy[m, n] W[n, k]` with bf16 `dy` and `W`, fp32 `dx`.
#[allow(clippy::too_many_arguments)]
pub fn linear_bf16_dx(
    gpu: &Gpu,
    dy: &GpuBuf<u16>,
    w: &GpuBuf<u16>,
    dx: &mut GpuBuf<f32>,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) -> Result<()> {
    check_len("linear_bf16_dx", "dy", dy.len(), m * n)?;
    check_len("linear_bf16_dx", "w", w.len(), n * k)?;
    check_len("linear_bf16_dx", "dx", dx.len(), m * k)?;
    gemm_raw(
        gpu,
        false,
        false,
        m,
        k,
        n,
        1.0,
        dy.ptr(),
        w.ptr(),
        Operand::Bf16,
        if accumulate { 1.0 } else { 0.0 },
        dx.ptr(),
    )
}

/// fp32 `C[m, n] = alpha op(A) op(B) + beta C` on buffers (the benches' cuBLAS baseline).
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32(
    gpu: &Gpu,
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &GpuBuf<f32>,
    b: &GpuBuf<f32>,
    beta: f32,
    c: &mut GpuBuf<f32>,
) -> Result<()> {
    check_len("gemm_f32", "a", a.len(), m * k)?;
    check_len("gemm_f32", "b", b.len(), k * n)?;
    check_len("gemm_f32", "c", c.len(), m * n)?;
    gemm_raw(gpu, ta, tb, m, n, k, alpha, a.ptr(), b.ptr(), Operand::F32, beta, c.ptr())
}

pub(crate) fn check_len(op: &str, what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(super::CudaError::Unsupported(format!("{op}: {what} holds {have} elements, {need} needed")));
    }
    Ok(())
}

/// Strided-batched fp32 GEMM on raw addresses: for each of `batch` problems,
/// `C_i = alpha op(A_i) op(B_i) + beta C_i` (row-major, as [`gemm_raw`]), `A_i = a + i*stride_a`
/// elements, and so on (a stride may be 0 to share an operand).
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided_batched_f32_raw(
    gpu: &Gpu,
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: u64,
    stride_a: usize,
    b: u64,
    stride_b: usize,
    beta: f32,
    c: u64,
    stride_c: usize,
    batch: usize,
) -> Result<()> {
    use cudarc::cublas::result::gemm_strided_batched_ex;
    if m == 0 || n == 0 || batch == 0 {
        return Ok(());
    }
    let int = |v: usize| {
        i32::try_from(v).map_err(|_| super::CudaError::Unsupported(format!("GEMM dimension {v} exceeds i32")))
    };
    let (mi, ni, ki, bi) = (int(m)?, int(n)?, int(k)?, int(batch)?);
    gpu.context().bind_to_thread()?;
    let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    let lda_b = if tb { ki } else { ni };
    let ldb_a = if ta { mi } else { ki };
    // SAFETY: as gemm_raw.
    unsafe {
        gemm_strided_batched_ex(
            *gpu.blas().handle(),
            op(tb),
            op(ta),
            ni,
            mi,
            ki,
            &alpha as *const f32 as *const c_void,
            b as *const c_void,
            cudaDataType_t::CUDA_R_32F,
            lda_b.max(1),
            stride_b as i64,
            a as *const c_void,
            cudaDataType_t::CUDA_R_32F,
            ldb_a.max(1),
            stride_a as i64,
            &beta as *const f32 as *const c_void,
            c as *mut c_void,
            cudaDataType_t::CUDA_R_32F,
            ni.max(1),
            stride_c as i64,
            bi,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )?;
    }
    Ok(())
}

/// Element-wise `c[i] = a[i] * x[i]` for `n` elements, through cuBLAS `dgmm` (a 1 x n matrix
/// times diag(x)); the baseline's stand-in for a hand-written element-wise kernel.
pub fn mul_elementwise_f32_raw(gpu: &Gpu, a: u64, x: u64, c: u64, n: usize) -> Result<()> {
    use cudarc::cublas::sys::{cublasSdgmm, cublasSideMode_t};
    if n == 0 {
        return Ok(());
    }
    let ni = i32::try_from(n).map_err(|_| super::CudaError::Unsupported(format!("dgmm length {n} exceeds i32")))?;
    gpu.context().bind_to_thread()?;
    // SAFETY: raw cuBLAS call on buffers of n floats (caller's guarantee).
    unsafe {
        cublasSdgmm(
            *gpu.blas().handle(),
            cublasSideMode_t::CUBLAS_SIDE_RIGHT,
            1,
            ni,
            a as *const f32,
            1,
            x as *const f32,
            1,
            c as *mut f32,
            1,
        )
    }
    .result()?;
    Ok(())
}

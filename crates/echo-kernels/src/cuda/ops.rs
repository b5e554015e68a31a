//! Launch wrappers: one function per kernel (or per fused op), taking device buffers and the
//! same dimensions as the CPU twin. Each checks every buffer's length against the dimensions
//! before launching, so a wrong call is an error, never an out-of-bounds access. All work is
//! queued on the device's stream; nothing here synchronises.
//!
//! The tile constants mirror the `#define`s of the `.cu` files: change both together.

use super::alloc::GpuBuf;
use super::blas::{self, check_len as need};
use super::runtime::{Arg, Gpu};
use super::{CudaError, Result};
use crate::cpu::lowrank::LoraDims;

use super::tiles::{
    ATT_DKV_BK, ATT_DQ_BQ, ATT_FWD_BQ, ATT_THREADS, ATT_WARPS, EXPAND_COLS, EXPAND_ROWS, LOSS_THREADS, LR_THREADS,
    NORM_THREADS, SHRINK_ROWS, WG_TILE,
};
pub use super::tiles::{ATT_DMAX, LR_MAX_RANK};
// element-wise kernels
const EW: u32 = 256;

fn int(op: &str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| CudaError::Unsupported(format!("{op}: {what} = {v} exceeds i32")))
}

fn blocks(op: &str, n: usize, per: usize) -> Result<u32> {
    u32::try_from(n.div_ceil(per))
        .map_err(|_| CudaError::Unsupported(format!("{op}: {n} elements need too many blocks")))
}

fn ptr<T>(b: &GpuBuf<T>) -> Arg {
    Arg::Ptr(b.ptr())
}

fn opt<T>(b: Option<&GpuBuf<T>>) -> Arg {
    Arg::Ptr(b.map_or(0, |b| b.ptr()))
}

fn ew(gpu: &Gpu, name: &str, n: usize, args: &[Arg]) -> Result<()> {
    gpu.launch(name, (blocks(name, n, EW as usize)?, 1, 1), (EW, 1, 1), args)
}

// ---------------------------------------------------------------- low-rank path (lowrank.cu)

/// Per-sample gate and projection on the device (`[samples, r]` each), as `cpu::lowrank::Inject`.
#[derive(Clone, Copy)]
pub struct InjectGpu<'a> {
    pub gate: &'a GpuBuf<f32>,
    pub proj: &'a GpuBuf<f32>,
    pub rows_per_sample: usize,
}

fn check_inject(op: &str, inj: &InjectGpu<'_>, rows: usize, rank: usize) -> Result<()> {
    if inj.rows_per_sample == 0 || !rows.is_multiple_of(inj.rows_per_sample) {
        return Err(CudaError::Unsupported(format!(
            "{op}: {rows} rows are not whole samples of {}",
            inj.rows_per_sample
        )));
    }
    let samples = rows / inj.rows_per_sample;
    need(op, "gate", inj.gate.len(), samples * rank)?;
    need(op, "proj", inj.proj.len(), samples * rank)
}

fn check_rank(op: &str, rank: usize) -> Result<()> {
    if rank == 0 || rank > LR_MAX_RANK {
        return Err(CudaError::Unsupported(format!("{op}: rank {rank} outside 1..={LR_MAX_RANK}")));
    }
    Ok(())
}

/// `c[M, n] = alpha * x[M, K] mat(k, j)` (+ injection), `mat(k, j) = mat[k ks + j js]`.
#[allow(clippy::too_many_arguments)]
fn shrink(
    gpu: &Gpu,
    x: &GpuBuf<f32>,
    mat: &GpuBuf<f32>,
    c: &mut GpuBuf<f32>,
    m: usize,
    k: usize,
    n: usize,
    ks: usize,
    js: usize,
    alpha: f32,
    inj: Option<InjectGpu<'_>>,
) -> Result<()> {
    let op = "lowrank_shrink";
    check_rank(op, n)?;
    need(op, "x", x.len(), m * k)?;
    need(op, "mat", mat.len(), k * n)?;
    need(op, "out", c.len(), m * n)?;
    if let Some(i) = &inj {
        check_inject(op, i, m, n)?;
    }
    let args = [
        ptr(x),
        ptr(mat),
        ptr(c),
        Arg::I32(int(op, "rows", m)?),
        Arg::I32(int(op, "K", k)?),
        Arg::I32(n as i32),
        Arg::I64(ks as i64),
        Arg::I64(js as i64),
        Arg::F32(alpha),
        opt(inj.map(|i| i.gate)),
        opt(inj.map(|i| i.proj)),
        Arg::I32(int(op, "rows_per_sample", inj.map_or(1, |i| i.rows_per_sample))?),
    ];
    gpu.launch(op, (blocks(op, m, SHRINK_ROWS)?, 1, 1), (LR_THREADS, 1, 1), &args)
}

/// `y[M, N] (+)= alpha * (z[M, n] mat(j, o)) * keep`, `mat(j, o) = mat[o os + j js]`.
#[allow(clippy::too_many_arguments)]
fn expand(
    gpu: &Gpu,
    z: &GpuBuf<f32>,
    mat: &GpuBuf<f32>,
    y: &mut GpuBuf<f32>,
    m: usize,
    n_out: usize,
    n: usize,
    os: usize,
    js: usize,
    alpha: f32,
    keep: Option<&GpuBuf<f32>>,
    accumulate: bool,
) -> Result<()> {
    let op = "lowrank_expand";
    check_rank(op, n)?;
    need(op, "z", z.len(), m * n)?;
    need(op, "mat", mat.len(), n_out * n)?;
    need(op, "y", y.len(), m * n_out)?;
    if let Some(k) = keep {
        need(op, "keep", k.len(), m * n_out)?;
    }
    let args = [
        ptr(z),
        ptr(mat),
        ptr(y),
        Arg::I32(int(op, "rows", m)?),
        Arg::I32(int(op, "cols", n_out)?),
        Arg::I32(n as i32),
        Arg::I64(os as i64),
        Arg::I64(js as i64),
        Arg::F32(alpha),
        opt(keep),
        Arg::I32(accumulate as i32),
    ];
    gpu.launch(op, (blocks(op, n_out, EXPAND_COLS)?, blocks(op, m, EXPAND_ROWS)?, 1), (EXPAND_COLS as u32, 1, 1), &args)
}

/// `c[I, J] (+)= alpha * p[M, I]^T q[M, J]`.
#[allow(clippy::too_many_arguments)]
fn wgrad(
    gpu: &Gpu,
    p: &GpuBuf<f32>,
    q: &GpuBuf<f32>,
    c: &mut GpuBuf<f32>,
    m: usize,
    i: usize,
    j: usize,
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    let op = "lowrank_wgrad";
    need(op, "p", p.len(), m * i)?;
    need(op, "q", q.len(), m * j)?;
    need(op, "c", c.len(), i * j)?;
    let args = [
        ptr(p),
        ptr(q),
        ptr(c),
        Arg::I32(int(op, "M", m)?),
        Arg::I32(int(op, "I", i)?),
        Arg::I32(int(op, "J", j)?),
        Arg::F32(alpha),
        Arg::I32(accumulate as i32),
    ];
    gpu.launch(op, (blocks(op, j, WG_TILE)?, blocks(op, i, WG_TILE)?, 1), (256, 1, 1), &args)
}

/// LoRA shrink with the injection fused: `z = x A^T (+ g ⊙ p)`.
pub fn lora_shrink(
    gpu: &Gpu,
    d: &LoraDims,
    x: &GpuBuf<f32>,
    a: &GpuBuf<f32>,
    inject: Option<InjectGpu<'_>>,
    z: &mut GpuBuf<f32>,
) -> Result<()> {
    shrink(gpu, x, a, z, d.rows, d.d_in, d.rank, 1, d.d_in, 1.0, inject)
}

/// LoRA expand: `y (+)= s z B^T`.
pub fn lora_expand(
    gpu: &Gpu,
    d: &LoraDims,
    z: &GpuBuf<f32>,
    b: &GpuBuf<f32>,
    scale: f32,
    y: &mut GpuBuf<f32>,
    accumulate: bool,
) -> Result<()> {
    expand(gpu, z, b, y, d.rows, d.d_out, d.rank, d.rank, 1, scale, None, accumulate)
}

/// The whole LoRA forward, as `cpu::lowrank::lora_forward`: the frozen bf16 base GEMM in
/// cuBLAS (`x_bf16` is `x` in bf16), then the shrink with the injection fused and the expand
/// added into the base output. `xd` is the dropped-out input (`None`: `x`).
#[allow(clippy::too_many_arguments)]
pub fn lora_forward(
    gpu: &Gpu,
    d: &LoraDims,
    x: &GpuBuf<f32>,
    x_bf16: &GpuBuf<u16>,
    xd: Option<&GpuBuf<f32>>,
    w: &GpuBuf<u16>,
    a: &GpuBuf<f32>,
    b: &GpuBuf<f32>,
    scale: f32,
    inject: Option<InjectGpu<'_>>,
    y: &mut GpuBuf<f32>,
    z: &mut GpuBuf<f32>,
) -> Result<()> {
    blas::linear_bf16(gpu, x_bf16, w, y, d.rows, d.d_in, d.d_out, false)?;
    lora_shrink(gpu, d, xd.unwrap_or(x), a, inject, z)?;
    lora_expand(gpu, d, z, b, scale, y, true)
}

/// Gradient buffers for [`lora_backward`]; `None` skips that product (a frozen weight has no
/// gradient; `dx` is not wanted for the first layer's input).
pub struct LoraGradsGpu<'a> {
    pub dx: Option<&'a mut GpuBuf<f32>>,
    pub da: Option<&'a mut GpuBuf<f32>>,
    pub db: Option<&'a mut GpuBuf<f32>>,
    /// Always written: the bottleneck gradient, which the injection backward consumes.
    pub dz: &'a mut GpuBuf<f32>,
}

/// The LoRA backward, as `cpu::lowrank::lora_backward`: `dB = s dy^T z`, `dz = s dy B`,
/// `dA = dz^T xd`, `dx = dy W + (dz A) ⊙ keep` (the base part in cuBLAS from `dy` cast to
/// bf16). Gradients are overwritten, not accumulated.
#[allow(clippy::too_many_arguments)]
pub fn lora_backward(
    gpu: &Gpu,
    d: &LoraDims,
    dy: &GpuBuf<f32>,
    x: &GpuBuf<f32>,
    xd: Option<&GpuBuf<f32>>,
    keep: Option<&GpuBuf<f32>>,
    w: &GpuBuf<u16>,
    a: &GpuBuf<f32>,
    b: &GpuBuf<f32>,
    z: &GpuBuf<f32>,
    scale: f32,
    g: LoraGradsGpu<'_>,
) -> Result<()> {
    let LoraGradsGpu { dx, da, db, dz } = g;
    lora_lowrank_backward(gpu, d, dy, xd.unwrap_or(x), b, z, scale, da, db, dz)?;
    if let Some(dx) = dx {
        let mut dy16 = gpu.alloc::<u16>(d.rows * d.d_out)?;
        f32_to_bf16(gpu, dy, &mut dy16)?;
        blas::linear_bf16_dx(gpu, &dy16, w, dx, d.rows, d.d_in, d.d_out, false)?;
        lora_expand_dx(gpu, d, dz, a, keep, dx)?;
    }
    Ok(())
}

/// The adapter part of the LoRA backward: `dB = s dy^T z` and `dA = dz^T xd` (when wanted)
/// and `dz = s dy B` (always). `xd` is the (dropped-out) input the shrink saw.
#[allow(clippy::too_many_arguments)]
pub fn lora_lowrank_backward(
    gpu: &Gpu,
    d: &LoraDims,
    dy: &GpuBuf<f32>,
    xd: &GpuBuf<f32>,
    b: &GpuBuf<f32>,
    z: &GpuBuf<f32>,
    scale: f32,
    da: Option<&mut GpuBuf<f32>>,
    db: Option<&mut GpuBuf<f32>>,
    dz: &mut GpuBuf<f32>,
) -> Result<()> {
    let (n, r) = (d.rows, d.rank);
    if let Some(db) = db {
        wgrad(gpu, dy, z, db, n, d.d_out, r, scale, false)?;
    }
    shrink(gpu, dy, b, dz, n, d.d_out, r, r, 1, scale, None)?;
    if let Some(da) = da {
        wgrad(gpu, dz, xd, da, n, r, d.d_in, 1.0, false)?;
    }
    Ok(())
}

/// `dx += (dz A) ⊙ keep` (`keep = None`: no dropout), the adapter's share of the input gradient.
pub fn lora_expand_dx(
    gpu: &Gpu,
    d: &LoraDims,
    dz: &GpuBuf<f32>,
    a: &GpuBuf<f32>,
    keep: Option<&GpuBuf<f32>>,
    dx: &mut GpuBuf<f32>,
) -> Result<()> {
    expand(gpu, dz, a, dx, d.rows, d.d_in, d.rank, 1, d.d_in, 1.0, keep, true)
}

/// `z[row] += gate[b] ⊙ proj[b]` for every row of sample `b` (`z` is `[rows, rank]`).
pub fn gated_inject_forward(
    gpu: &Gpu,
    z: &mut GpuBuf<f32>,
    inj: InjectGpu<'_>,
    rows: usize,
    rank: usize,
) -> Result<()> {
    let op = "gated_inject_fwd";
    need(op, "z", z.len(), rows * rank)?;
    check_inject(op, &inj, rows, rank)?;
    let args = [
        ptr(z),
        ptr(inj.gate),
        ptr(inj.proj),
        Arg::I32(int(op, "rows", rows)?),
        Arg::I32(int(op, "rank", rank)?),
        Arg::I32(int(op, "rows_per_sample", inj.rows_per_sample)?),
    ];
    ew(gpu, op, rows * rank, &args)
}

/// `dgate[b] = sum_t dz ⊙ proj[b]`, `dproj[b] = sum_t dz ⊙ gate[b]`.
pub fn gated_inject_backward(
    gpu: &Gpu,
    dz: &GpuBuf<f32>,
    inj: InjectGpu<'_>,
    rows: usize,
    rank: usize,
    dgate: &mut GpuBuf<f32>,
    dproj: &mut GpuBuf<f32>,
) -> Result<()> {
    let op = "gated_inject_bwd";
    need(op, "dz", dz.len(), rows * rank)?;
    check_inject(op, &inj, rows, rank)?;
    let samples = rows / inj.rows_per_sample;
    need(op, "dgate", dgate.len(), samples * rank)?;
    need(op, "dproj", dproj.len(), samples * rank)?;
    let args = [
        ptr(dz),
        ptr(inj.gate),
        ptr(inj.proj),
        ptr(dgate),
        ptr(dproj),
        Arg::I32(int(op, "rank", rank)?),
        Arg::I32(int(op, "rows_per_sample", inj.rows_per_sample)?),
    ];
    gpu.launch(op, (blocks(op, rank, 32)?, int(op, "samples", samples)? as u32, 1), (32, 8, 1), &args)
}

/// DoRA's column scaling `y = pre * (m / norm)` per output column (`pre` is `[rows, cols]`).
pub fn dora_scale_forward(
    gpu: &Gpu,
    pre: &GpuBuf<f32>,
    magnitude: &GpuBuf<f32>,
    norm: &GpuBuf<f32>,
    y: &mut GpuBuf<f32>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let op = "dora_scale_fwd";
    need(op, "pre", pre.len(), rows * cols)?;
    need(op, "magnitude", magnitude.len(), cols)?;
    need(op, "norm", norm.len(), cols)?;
    need(op, "y", y.len(), rows * cols)?;
    let args = [
        ptr(pre),
        ptr(magnitude),
        ptr(norm),
        ptr(y),
        Arg::I32(int(op, "rows", rows)?),
        Arg::I32(int(op, "cols", cols)?),
    ];
    ew(gpu, op, rows * cols, &args)
}

/// Its backward (norm detached): `dpre = dy * (m / norm)`, `dm = sum_rows dy * pre / norm`.
#[allow(clippy::too_many_arguments)]
pub fn dora_scale_backward(
    gpu: &Gpu,
    dy: &GpuBuf<f32>,
    pre: &GpuBuf<f32>,
    magnitude: &GpuBuf<f32>,
    norm: &GpuBuf<f32>,
    dpre: &mut GpuBuf<f32>,
    dm: Option<&mut GpuBuf<f32>>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let op = "dora_scale_bwd";
    need(op, "dy", dy.len(), rows * cols)?;
    need(op, "pre", pre.len(), rows * cols)?;
    need(op, "magnitude", magnitude.len(), cols)?;
    need(op, "norm", norm.len(), cols)?;
    need(op, "dpre", dpre.len(), rows * cols)?;
    if let Some(dm) = &dm {
        need(op, "dm", dm.len(), cols)?;
    }
    let args = [
        ptr(dy),
        ptr(pre),
        ptr(magnitude),
        ptr(norm),
        ptr(dpre),
        opt(dm.as_deref()),
        Arg::I32(int(op, "rows", rows)?),
        Arg::I32(int(op, "cols", cols)?),
    ];
    ew(gpu, op, cols, &args)
}

// ---------------------------------------------------------------- transformer ops

/// RMSNorm forward over `rows` rows of `dim` (norm.cu); `w = None` for the weightless form.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_forward(
    gpu: &Gpu,
    x: &GpuBuf<f32>,
    w: Option<&GpuBuf<f32>>,
    y: &mut GpuBuf<f32>,
    rstd: &mut GpuBuf<f32>,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<()> {
    let op = "rmsnorm_fwd";
    need(op, "x", x.len(), rows * dim)?;
    need(op, "y", y.len(), rows * dim)?;
    need(op, "rstd", rstd.len(), rows)?;
    if let Some(w) = w {
        need(op, "w", w.len(), dim)?;
    }
    let args = [
        ptr(x),
        opt(w),
        ptr(y),
        ptr(rstd),
        Arg::I32(int(op, "rows", rows)?),
        Arg::I32(int(op, "dim", dim)?),
        Arg::F32(eps),
    ];
    gpu.launch(op, (int(op, "rows", rows)? as u32, 1, 1), (NORM_THREADS, 1, 1), &args)
}

/// RMSNorm backward: writes `dx`; adds into `dw` when given (as the twin).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    gpu: &Gpu,
    dy: &GpuBuf<f32>,
    x: &GpuBuf<f32>,
    w: Option<&GpuBuf<f32>>,
    rstd: &GpuBuf<f32>,
    dx: &mut GpuBuf<f32>,
    dw: Option<&mut GpuBuf<f32>>,
    rows: usize,
    dim: usize,
) -> Result<()> {
    let op = "rmsnorm_bwd_dx";
    need(op, "dy", dy.len(), rows * dim)?;
    need(op, "x", x.len(), rows * dim)?;
    need(op, "rstd", rstd.len(), rows)?;
    need(op, "dx", dx.len(), rows * dim)?;
    if let Some(w) = w {
        need(op, "w", w.len(), dim)?;
    }
    let (ri, di) = (int(op, "rows", rows)?, int(op, "dim", dim)?);
    let args = [ptr(dy), ptr(x), opt(w), ptr(rstd), ptr(dx), Arg::I32(ri), Arg::I32(di)];
    gpu.launch(op, (ri as u32, 1, 1), (NORM_THREADS, 1, 1), &args)?;
    if let Some(dw) = dw {
        need("rmsnorm_bwd_dw", "dw", dw.len(), dim)?;
        let args = [ptr(dy), ptr(x), ptr(rstd), ptr(dw), Arg::I32(ri), Arg::I32(di)];
        ew(gpu, "rmsnorm_bwd_dw", dim, &args)?;
    }
    Ok(())
}

/// A RoPE table on the device (`cpu::rope::RopeTable` uploaded once).
pub struct RopeTableGpu {
    pub half: usize,
    pub max_pos: usize,
    pub cos: GpuBuf<f32>,
    pub sin: GpuBuf<f32>,
}

impl RopeTableGpu {
    pub fn upload(gpu: &Gpu, t: &crate::cpu::rope::RopeTable) -> Result<Self> {
        Ok(RopeTableGpu { half: t.half, max_pos: t.max_pos, cos: gpu.upload(&t.cos)?, sin: gpu.upload(&t.sin)? })
    }
}

/// Rotates `x` (`[tokens, heads, 2*half]`) in place; `pos` (`[tokens]`, int32) must be
/// `< max_pos` (checked by the layer above, as for the twin's slices).
pub fn rope_apply(
    gpu: &Gpu,
    x: &mut GpuBuf<f32>,
    pos: &GpuBuf<i32>,
    tokens: usize,
    heads: usize,
    table: &RopeTableGpu,
    inverse: bool,
) -> Result<()> {
    let op = "rope_apply";
    let half = table.half;
    need(op, "x", x.len(), tokens * heads * 2 * half)?;
    need(op, "pos", pos.len(), tokens)?;
    let args = [
        ptr(x),
        ptr(pos),
        ptr(&table.cos),
        ptr(&table.sin),
        Arg::I32(int(op, "tokens", tokens)?),
        Arg::I32(int(op, "heads", heads)?),
        Arg::I32(int(op, "half", half)?),
        Arg::I32(inverse as i32),
    ];
    ew(gpu, op, tokens * heads * half, &args)
}

pub fn swiglu_forward(gpu: &Gpu, gate: &GpuBuf<f32>, up: &GpuBuf<f32>, out: &mut GpuBuf<f32>, n: usize) -> Result<()> {
    let op = "swiglu_fwd";
    need(op, "gate", gate.len(), n)?;
    need(op, "up", up.len(), n)?;
    need(op, "out", out.len(), n)?;
    ew(gpu, op, n, &[ptr(gate), ptr(up), ptr(out), Arg::I64(n as i64)])
}

#[allow(clippy::too_many_arguments)]
pub fn swiglu_backward(
    gpu: &Gpu,
    dout: &GpuBuf<f32>,
    gate: &GpuBuf<f32>,
    up: &GpuBuf<f32>,
    dgate: &mut GpuBuf<f32>,
    dup: &mut GpuBuf<f32>,
    n: usize,
) -> Result<()> {
    let op = "swiglu_bwd";
    for (what, len) in
        [("dout", dout.len()), ("gate", gate.len()), ("up", up.len()), ("dgate", dgate.len()), ("dup", dup.len())]
    {
        need(op, what, len, n)?;
    }
    ew(gpu, op, n, &[ptr(dout), ptr(gate), ptr(up), ptr(dgate), ptr(dup), Arg::I64(n as i64)])
}

fn check_attn(op: &str, d: &crate::cpu::attention::AttnDims) -> Result<()> {
    if d.head_dim == 0 || d.head_dim > ATT_DMAX {
        return Err(CudaError::Unsupported(format!("{op}: head_dim {} outside 1..={ATT_DMAX}", d.head_dim)));
    }
    if d.kv_heads == 0 || !d.q_heads.is_multiple_of(d.kv_heads) {
        return Err(CudaError::Unsupported(format!(
            "{op}: {} query heads are not a multiple of {} kv heads",
            d.q_heads, d.kv_heads
        )));
    }
    Ok(())
}

fn attn_dims_args(op: &str, d: &crate::cpu::attention::AttnDims) -> Result<[Arg; 5]> {
    Ok([
        Arg::I32(int(op, "batch", d.batch)?),
        Arg::I32(int(op, "seq", d.seq)?),
        Arg::I32(int(op, "q_heads", d.q_heads)?),
        Arg::I32(int(op, "kv_heads", d.kv_heads)?),
        Arg::I32(int(op, "head_dim", d.head_dim)?),
    ])
}

/// Causal GQA attention forward (attention.cu): writes `out` (`[B, T, Hq, D]`) and `lse`
/// (`[B, Hq, T]`). `key_valid` is `[B, T]` bytes (0/1), `key_start` `[B, T]` (the CPU twin's
/// [`AttnMask`](crate::cpu::attention::AttnMask), checked there).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    gpu: &Gpu,
    d: &crate::cpu::attention::AttnDims,
    q: &GpuBuf<f32>,
    k: &GpuBuf<f32>,
    v: &GpuBuf<f32>,
    key_valid: &GpuBuf<u8>,
    key_start: &GpuBuf<i32>,
    scale: f32,
    out: &mut GpuBuf<f32>,
    lse: &mut GpuBuf<f32>,
) -> Result<()> {
    let op = "attention_fwd";
    check_attn(op, d)?;
    let (qn, kn) = (d.batch * d.seq * d.q_heads * d.head_dim, d.batch * d.seq * d.kv_heads * d.head_dim);
    need(op, "q", q.len(), qn)?;
    need(op, "k", k.len(), kn)?;
    need(op, "v", v.len(), kn)?;
    need(op, "key_valid", key_valid.len(), d.batch * d.seq)?;
    need(op, "key_start", key_start.len(), d.batch * d.seq)?;
    need(op, "out", out.len(), qn)?;
    need(op, "lse", lse.len(), d.batch * d.q_heads * d.seq)?;
    let dims = attn_dims_args(op, d)?;
    let mut args = vec![ptr(q), ptr(k), ptr(v), ptr(key_valid), ptr(key_start), ptr(out), ptr(lse)];
    args.extend(dims);
    args.push(Arg::F32(scale));
    gpu.launch(op, (blocks(op, d.seq, ATT_FWD_BQ)?, d.q_heads as u32, d.batch as u32), (ATT_THREADS, 1, 1), &args)
}

/// Its backward: writes `dq`, `dk`, `dv` (overwritten). `out` and `lse` are the forward's.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    gpu: &Gpu,
    d: &crate::cpu::attention::AttnDims,
    q: &GpuBuf<f32>,
    k: &GpuBuf<f32>,
    v: &GpuBuf<f32>,
    key_valid: &GpuBuf<u8>,
    key_start: &GpuBuf<i32>,
    scale: f32,
    out: &GpuBuf<f32>,
    lse: &GpuBuf<f32>,
    dout: &GpuBuf<f32>,
    dq: &mut GpuBuf<f32>,
    dk: &mut GpuBuf<f32>,
    dv: &mut GpuBuf<f32>,
) -> Result<()> {
    let op = "attention_bwd";
    check_attn(op, d)?;
    let (qn, kn) = (d.batch * d.seq * d.q_heads * d.head_dim, d.batch * d.seq * d.kv_heads * d.head_dim);
    for (what, len, want) in [
        ("q", q.len(), qn),
        ("k", k.len(), kn),
        ("v", v.len(), kn),
        ("out", out.len(), qn),
        ("dout", dout.len(), qn),
        ("dq", dq.len(), qn),
        ("dk", dk.len(), kn),
        ("dv", dv.len(), kn),
    ] {
        need(op, what, len, want)?;
    }
    need(op, "key_valid", key_valid.len(), d.batch * d.seq)?;
    need(op, "key_start", key_start.len(), d.batch * d.seq)?;
    let rows = d.batch * d.q_heads * d.seq;
    need(op, "lse", lse.len(), rows)?;
    let dims = attn_dims_args(op, d)?;
    let delta = gpu.alloc::<f32>(rows)?;
    let args = [ptr(out), ptr(dout), ptr(&delta), dims[0], dims[1], dims[2], dims[4]];
    gpu.launch("attention_bwd_delta", (blocks(op, rows, ATT_WARPS)?, 1, 1), (ATT_THREADS, 1, 1), &args)?;
    let mut args =
        vec![ptr(q), ptr(k), ptr(v), ptr(key_valid), ptr(key_start), ptr(lse), ptr(&delta), ptr(dout), ptr(dq)];
    args.extend(dims);
    args.push(Arg::F32(scale));
    gpu.launch(
        "attention_bwd_dq",
        (blocks(op, d.seq, ATT_DQ_BQ)?, d.q_heads as u32, d.batch as u32),
        (ATT_THREADS, 1, 1),
        &args,
    )?;
    let mut args = vec![
        ptr(q),
        ptr(k),
        ptr(v),
        ptr(key_valid),
        ptr(key_start),
        ptr(lse),
        ptr(&delta),
        ptr(dout),
        ptr(dk),
        ptr(dv),
    ];
    args.extend(dims);
    args.push(Arg::F32(scale));
    // `delta` goes back to the pool here; whatever reuses it is queued after these kernels
    // on the same stream.
    gpu.launch(
        "attention_bwd_dkv",
        (blocks(op, d.seq, ATT_DKV_BK)?, d.kv_heads as u32, d.batch as u32),
        (ATT_THREADS, 1, 1),
        &args,
    )
}

// ---------------------------------------------------------------- losses (loss.cu)

/// `loss[r] = lse(logits[r]) - logits[r, target[r]]`, 0 for target -100; also writes `lse`.
pub fn cross_entropy_forward(
    gpu: &Gpu,
    logits: &GpuBuf<f32>,
    targets: &GpuBuf<i64>,
    rows: usize,
    vocab: usize,
    loss: &mut GpuBuf<f32>,
    lse: &mut GpuBuf<f32>,
) -> Result<()> {
    let op = "cross_entropy_fwd";
    need(op, "logits", logits.len(), rows * vocab)?;
    need(op, "targets", targets.len(), rows)?;
    need(op, "loss", loss.len(), rows)?;
    need(op, "lse", lse.len(), rows)?;
    let args = [
        ptr(logits),
        ptr(targets),
        ptr(loss),
        ptr(lse),
        Arg::I32(int(op, "rows", rows)?),
        Arg::I32(int(op, "vocab", vocab)?),
    ];
    gpu.launch(op, (int(op, "rows", rows)? as u32, 1, 1), (LOSS_THREADS, 1, 1), &args)
}

#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_backward(
    gpu: &Gpu,
    logits: &GpuBuf<f32>,
    targets: &GpuBuf<i64>,
    lse: &GpuBuf<f32>,
    row_scale: &GpuBuf<f32>,
    rows: usize,
    vocab: usize,
    dlogits: &mut GpuBuf<f32>,
) -> Result<()> {
    let op = "cross_entropy_bwd";
    need(op, "logits", logits.len(), rows * vocab)?;
    need(op, "targets", targets.len(), rows)?;
    need(op, "lse", lse.len(), rows)?;
    need(op, "row_scale", row_scale.len(), rows)?;
    need(op, "dlogits", dlogits.len(), rows * vocab)?;
    let args = [
        ptr(logits),
        ptr(targets),
        ptr(lse),
        ptr(row_scale),
        ptr(dlogits),
        Arg::I32(int(op, "rows", rows)?),
        Arg::I32(int(op, "vocab", vocab)?),
    ];
    ew(gpu, op, rows * vocab, &args)
}

pub fn kl_forward(
    gpu: &Gpu,
    teacher: &GpuBuf<f32>,
    student: &GpuBuf<f32>,
    rows: usize,
    vocab: usize,
    tau: f32,
    kl: &mut GpuBuf<f32>,
) -> Result<()> {
    let op = "kl_fwd";
    need(op, "teacher", teacher.len(), rows * vocab)?;
    need(op, "student", student.len(), rows * vocab)?;
    need(op, "kl", kl.len(), rows)?;
    let args = [
        ptr(teacher),
        ptr(student),
        ptr(kl),
        Arg::I32(int(op, "rows", rows)?),
        Arg::I32(int(op, "vocab", vocab)?),
        Arg::F32(tau),
    ];
    gpu.launch(op, (int(op, "rows", rows)? as u32, 1, 1), (LOSS_THREADS, 1, 1), &args)
}

#[allow(clippy::too_many_arguments)]
pub fn kl_backward_student(
    gpu: &Gpu,
    teacher: &GpuBuf<f32>,
    student: &GpuBuf<f32>,
    row_scale: &GpuBuf<f32>,
    rows: usize,
    vocab: usize,
    tau: f32,
    dstudent: &mut GpuBuf<f32>,
) -> Result<()> {
    let op = "kl_bwd_student";
    need(op, "teacher", teacher.len(), rows * vocab)?;
    need(op, "student", student.len(), rows * vocab)?;
    need(op, "row_scale", row_scale.len(), rows)?;
    need(op, "dstudent", dstudent.len(), rows * vocab)?;
    let args = [
        ptr(teacher),
        ptr(student),
        ptr(row_scale),
        ptr(dstudent),
        Arg::I32(int(op, "rows", rows)?),
        Arg::I32(int(op, "vocab", vocab)?),
        Arg::F32(tau),
    ];
    gpu.launch(op, (int(op, "rows", rows)? as u32, 1, 1), (LOSS_THREADS, 1, 1), &args)
}

// ---------------------------------------------------------------- pooling (pool.cu)

fn pool_counts(gpu: &Gpu, mask: &GpuBuf<f32>, batch: usize, seq: usize) -> Result<GpuBuf<f32>> {
    let op = "pool_counts";
    need(op, "mask", mask.len(), batch * seq)?;
    let counts = gpu.alloc::<f32>(batch)?;
    ew(gpu, op, batch, &[ptr(mask), ptr(&counts), Arg::I32(int(op, "batch", batch)?), Arg::I32(int(op, "seq", seq)?)])?;
    Ok(counts)
}

/// `out[b] = sum_t m[b,t] x[b,t] / sum_t m[b,t]` (`x` is `[B, T, D]`, `mask` `[B, T]`).
pub fn masked_mean_forward(
    gpu: &Gpu,
    x: &GpuBuf<f32>,
    mask: &GpuBuf<f32>,
    batch: usize,
    seq: usize,
    dim: usize,
    out: &mut GpuBuf<f32>,
) -> Result<()> {
    let op = "masked_mean_fwd";
    need(op, "x", x.len(), batch * seq * dim)?;
    need(op, "out", out.len(), batch * dim)?;
    let counts = pool_counts(gpu, mask, batch, seq)?;
    let args = [
        ptr(x),
        ptr(mask),
        ptr(&counts),
        ptr(out),
        Arg::I32(int(op, "batch", batch)?),
        Arg::I32(int(op, "seq", seq)?),
        Arg::I32(int(op, "dim", dim)?),
    ];
    ew(gpu, op, batch * dim, &args)
}

pub fn masked_mean_backward(
    gpu: &Gpu,
    dout: &GpuBuf<f32>,
    mask: &GpuBuf<f32>,
    batch: usize,
    seq: usize,
    dim: usize,
    dx: &mut GpuBuf<f32>,
) -> Result<()> {
    let op = "masked_mean_bwd";
    need(op, "dout", dout.len(), batch * dim)?;
    need(op, "dx", dx.len(), batch * seq * dim)?;
    let counts = pool_counts(gpu, mask, batch, seq)?;
    let args = [
        ptr(dout),
        ptr(mask),
        ptr(&counts),
        ptr(dx),
        Arg::I32(int(op, "batch", batch)?),
        Arg::I32(int(op, "seq", seq)?),
        Arg::I32(int(op, "dim", dim)?),
    ];
    ew(gpu, op, batch * seq * dim, &args)
}

// ---------------------------------------------------------------- embedding (embed.cu)

/// `out[i, :] = table[idx[i], :]` from an fp32 table; indices must be `< table rows`.
pub fn embed_gather_f32(
    gpu: &Gpu,
    table: &GpuBuf<f32>,
    idx: &GpuBuf<i32>,
    n: usize,
    dim: usize,
    out: &mut GpuBuf<f32>,
) -> Result<()> {
    let op = "embed_gather_f32";
    need(op, "idx", idx.len(), n)?;
    need(op, "out", out.len(), n * dim)?;
    ew(gpu, op, n * dim, &[ptr(table), ptr(idx), ptr(out), Arg::I32(int(op, "n", n)?), Arg::I32(int(op, "dim", dim)?)])
}

/// The same from a bf16 table (the frozen base embedding), widened to fp32.
pub fn embed_gather_bf16(
    gpu: &Gpu,
    table: &GpuBuf<u16>,
    idx: &GpuBuf<i32>,
    n: usize,
    dim: usize,
    out: &mut GpuBuf<f32>,
) -> Result<()> {
    let op = "embed_gather_bf16";
    need(op, "idx", idx.len(), n)?;
    need(op, "out", out.len(), n * dim)?;
    ew(gpu, op, n * dim, &[ptr(table), ptr(idx), ptr(out), Arg::I32(int(op, "n", n)?), Arg::I32(int(op, "dim", dim)?)])
}

/// `out[idx[k], :] += src[k, :]` in order of `k` (bit-identical to the twin).
pub fn embed_scatter_add(
    gpu: &Gpu,
    src: &GpuBuf<f32>,
    idx: &GpuBuf<i32>,
    n: usize,
    dim: usize,
    out: &mut GpuBuf<f32>,
) -> Result<()> {
    let op = "embed_scatter_add";
    need(op, "src", src.len(), n * dim)?;
    need(op, "idx", idx.len(), n)?;
    ew(gpu, op, dim, &[ptr(src), ptr(idx), ptr(out), Arg::I32(int(op, "n", n)?), Arg::I32(int(op, "dim", dim)?)])
}

// ---------------------------------------------------------------- optimizer, casts

/// One fused AdamW step over a parameter tensor (adamw.cu), as `cpu::optim::adamw_step`.
pub fn adamw_step(
    gpu: &Gpu,
    w: &mut GpuBuf<f32>,
    grad: &GpuBuf<f32>,
    m: &mut GpuBuf<f32>,
    v: &mut GpuBuf<f32>,
    s: &crate::cpu::optim::AdamWStep,
) -> Result<()> {
    let op = "adamw_step";
    let n = w.len();
    need(op, "grad", grad.len(), n)?;
    need(op, "m", m.len(), n)?;
    need(op, "v", v.len(), n)?;
    let args = [
        ptr(w),
        ptr(grad),
        ptr(m),
        ptr(v),
        Arg::I64(n as i64),
        Arg::F32(s.grad_scale),
        Arg::F32(s.lr),
        Arg::F32(s.beta1),
        Arg::F32(s.beta2),
        Arg::F32(s.eps),
        Arg::F32(s.weight_decay),
        Arg::F64(s.bc1),
        Arg::F64(s.bc2),
    ];
    ew(gpu, op, n, &args)
}

/// fp32 -> bf16 bits (round to nearest even, as the `half` crate), `src.len()` elements.
pub fn f32_to_bf16(gpu: &Gpu, src: &GpuBuf<f32>, dst: &mut GpuBuf<u16>) -> Result<()> {
    let n = src.len();
    need("f32_to_bf16", "dst", dst.len(), n)?;
    ew(gpu, "f32_to_bf16", n, &[ptr(src), ptr(dst), Arg::I64(n as i64)])
}

pub fn bf16_to_f32(gpu: &Gpu, src: &GpuBuf<u16>, dst: &mut GpuBuf<f32>) -> Result<()> {
    let n = src.len();
    need("bf16_to_f32", "dst", dst.len(), n)?;
    ew(gpu, "bf16_to_f32", n, &[ptr(src), ptr(dst), Arg::I64(n as i64)])
}

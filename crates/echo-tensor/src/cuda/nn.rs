//! Device forms of the fused forward/backward pairs (`crate::nn`), over the launch wrappers of
//! `echo_kernels::cuda::ops`. Each is reached through `crate::backend` after the op file's
//! shape checks and checks devices and dtypes in the order of `crate::cpu::nn`. The wrappers' conventions match the CPU
//! twins' (`echo_kernels::cpu::*`): layouts, what forward saves, which outputs accumulate.
//!
//! Host-side arguments (targets, positions, key masks, row weights) are uploaded on every
//! call: correct first; keeping them on the device is a later optimisation.

use super::ops::{gemm_into, linear_dx_into, linear_into};
use super::{Cx, Weight};
use crate::nn::{inject_rows, lora_operands, DoraSaved, Injection, LoraGradsOut, LoraParams, Want};
use crate::{Error, Result, RopeTable, Shape, Tensor};
use echo_kernels::cpu::attention::{AttnDims, AttnMask};
use echo_kernels::cpu::lowrank::LoraDims;
use echo_kernels::cuda::alloc::GpuBuf;
use echo_kernels::cuda::ops::{self as k, InjectGpu, RopeTableGpu};
use echo_kernels::cuda::{blas, CudaError};

fn unsupported(cx: &Cx, msg: String) -> Error {
    Error::Cuda { op: cx.op, device: cx.device, source: CudaError::Unsupported(msg) }
}

// ---------------------------------------------------------------- transformer

/// RMSNorm over the last dim: `(y, rstd)`.
pub(crate) fn rmsnorm_forward(x: &Tensor, w: Option<&Tensor>, eps: f32) -> Result<(Tensor, Tensor)> {
    let cx = Cx::of("rmsnorm", [x].into_iter().chain(w))?;
    let wb = w.map(|w| cx.f32(w)).transpose()?;
    let xb = cx.f32(x)?;
    let (rows, dim) = (x.shape().rows(), x.shape().last());
    let (mut y, mut rstd) = (cx.alloc(xb.len())?, cx.alloc(rows)?);
    cx.k(k::rmsnorm_forward(&cx.gpu, xb, wb, &mut y, &mut rstd, rows, dim, eps))?;
    Ok((cx.tensor(y, x.shape().clone()), cx.tensor(rstd, [rows])))
}

/// `(dx, dw)`; the kernel adds into `dw` (as the twin), so it starts from zeros.
pub(crate) fn rmsnorm_backward(
    dy: &Tensor,
    x: &Tensor,
    w: Option<&Tensor>,
    rstd: &Tensor,
    want_dw: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let cx = Cx::of("rmsnorm_backward", [dy, x, rstd].into_iter().chain(w))?;
    let wb = w.map(|w| cx.f32(w)).transpose()?;
    let (dyb, xb, rb) = (cx.f32(dy)?, cx.f32(x)?, cx.f32(rstd)?);
    let (rows, dim) = (x.shape().rows(), x.shape().last());
    let mut dx = cx.alloc(xb.len())?;
    let mut dw = (want_dw && w.is_some()).then(|| cx.zeros(dim)).transpose()?;
    cx.k(k::rmsnorm_backward(&cx.gpu, dyb, xb, wb, rb, &mut dx, dw.as_mut(), rows, dim))?;
    Ok((cx.tensor(dx, x.shape().clone()), dw.map(|d| cx.tensor(d, [dim]))))
}

/// Rotary embedding of `x` `[B, T, H, D]` (positions checked `< max_pos` by the caller).
/// Only the table rows up to the largest position are uploaded (same values, so the same
/// rotation), on every call: a model on the GPU could keep its `RopeTableGpu` instead.
pub(crate) fn rope(x: &Tensor, positions: &[usize], table: &RopeTable, inverse: bool) -> Result<Tensor> {
    let cx = Cx::of("rope", [x])?;
    let xb = cx.f32(x)?;
    let (tokens, heads) = (x.dims()[0] * x.dims()[1], x.dims()[2]);
    let used = positions.iter().max().map_or(0, |&p| p + 1);
    let pos = positions.iter().map(|&p| i32::try_from(p)).collect::<std::result::Result<Vec<i32>, _>>();
    let pos = pos.map_err(|_| unsupported(&cx, "a position exceeds i32".into()))?;
    let half = table.half;
    let t = RopeTableGpu {
        half,
        max_pos: used,
        cos: cx.k(cx.gpu.upload(&table.cos[..used * half]))?,
        sin: cx.k(cx.gpu.upload(&table.sin[..used * half]))?,
    };
    let posg = cx.k(cx.gpu.upload(&pos))?;
    let mut y = cx.copy(xb)?;
    cx.k(k::rope_apply(&cx.gpu, &mut y, &posg, tokens, heads, &t, inverse))?;
    Ok(cx.tensor(y, x.shape().clone()))
}

/// The mask's two arrays on the device: valid flags as bytes, key starts as `i32` (positions
/// fit: the launch wrappers check `T` against `i32`).
fn key_mask(cx: &Cx, mask: &AttnMask) -> Result<(GpuBuf<u8>, GpuBuf<i32>)> {
    let bytes: Vec<u8> = mask.key_valid.iter().map(|&v| v as u8).collect();
    let starts: Vec<i32> = mask.key_start.iter().map(|&s| s as i32).collect();
    Ok((cx.k(cx.gpu.upload(&bytes))?, cx.k(cx.gpu.upload(&starts))?))
}

/// Causal GQA attention: `(out [B, T, Hq, D], lse [B, Hq, T])`. `head_dim` up to 128.
pub(crate) fn attention_forward(
    d: &AttnDims,
    q: &Tensor,
    k_: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
) -> Result<(Tensor, Tensor)> {
    let cx = Cx::of("attention", [q, k_, v])?;
    let (qb, kb, vb) = (cx.f32(q)?, cx.f32(k_)?, cx.f32(v)?);
    let (valid, start) = key_mask(&cx, mask)?;
    let scale = 1.0 / (d.head_dim as f32).sqrt();
    let (mut out, mut lse) = (cx.alloc(qb.len())?, cx.alloc(d.batch * d.q_heads * d.seq)?);
    cx.k(k::attention_forward(&cx.gpu, d, qb, kb, vb, &valid, &start, scale, &mut out, &mut lse))?;
    Ok((cx.tensor(out, q.shape().clone()), cx.tensor(lse, [d.batch, d.q_heads, d.seq])))
}

/// `(dq, dk, dv)` from the forward's `out` and `lse`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward(
    d: &AttnDims,
    q: &Tensor,
    k_: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let cx = Cx::of("attention_backward", [q, k_, v, out, lse, dout])?;
    let (qb, kb, vb) = (cx.f32(q)?, cx.f32(k_)?, cx.f32(v)?);
    let (ob, lb, db) = (cx.f32(out)?, cx.f32(lse)?, cx.f32(dout)?);
    let (valid, start) = key_mask(&cx, mask)?;
    let scale = 1.0 / (d.head_dim as f32).sqrt();
    let (mut dq, mut dk, mut dv) = (cx.alloc(qb.len())?, cx.alloc(kb.len())?, cx.alloc(vb.len())?);
    cx.k(k::attention_backward(&cx.gpu, d, qb, kb, vb, &valid, &start, scale, ob, lb, db, &mut dq, &mut dk, &mut dv))?;
    Ok((cx.tensor(dq, q.shape().clone()), cx.tensor(dk, k_.shape().clone()), cx.tensor(dv, v.shape().clone())))
}

pub(crate) fn swiglu_forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let cx = Cx::of("swiglu", [gate, up])?;
    let (gb, ub) = (cx.f32(gate)?, cx.f32(up)?);
    let mut out = cx.alloc(gb.len())?;
    cx.k(k::swiglu_forward(&cx.gpu, gb, ub, &mut out, gb.len()))?;
    Ok(cx.tensor(out, gate.shape().clone()))
}

pub(crate) fn swiglu_backward(dout: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    let cx = Cx::of("swiglu_backward", [dout, gate, up])?;
    let (db, gb, ub) = (cx.f32(dout)?, cx.f32(gate)?, cx.f32(up)?);
    let n = gb.len();
    let (mut dg, mut du) = (cx.alloc(n)?, cx.alloc(n)?);
    cx.k(k::swiglu_backward(&cx.gpu, db, gb, ub, &mut dg, &mut du, n))?;
    Ok((cx.tensor(dg, gate.shape().clone()), cx.tensor(du, gate.shape().clone())))
}

// ---------------------------------------------------------------- adapters

/// An injection's buffers, checked as the twin's `inject_view` does (shapes, then dtypes).
/// `None` for an empty bottleneck: the kernels' sample split needs at least one row.
fn inject_gpu<'t>(cx: &Cx, inj: &Injection<'t>, d: &LoraDims) -> Result<Option<InjectGpu<'t>>> {
    let rows_per_sample = inject_rows(cx.op, inj, d)?;
    let (gate, proj) = (cx.f32(inj.gate)?, cx.f32(inj.proj)?);
    Ok((d.rows > 0).then_some(InjectGpu { gate, proj, rows_per_sample }))
}

/// LoRA forward `(y, z)`: the base product (cuBLAS; bf16 base weights with `x` cast to
/// bf16), the shrink with the injection fused, the expand added into `y` — the composition
/// of `echo_kernels::cuda::ops::lora_forward`, which takes bf16 weights only.
pub(crate) fn lora_forward(
    d: &LoraDims,
    x: &Tensor,
    xd: Option<&Tensor>,
    p: &LoraParams<'_>,
    inj: Option<&Injection<'_>>,
) -> Result<(Tensor, Tensor)> {
    let cx = Cx::of("lora_linear", lora_operands(x, xd, None, p, inj))?;
    let inject = inj.map(|i| inject_gpu(&cx, i, d)).transpose()?.flatten();
    let xdb = xd.map(|t| cx.f32(t)).transpose()?;
    let xb = cx.f32(x)?;
    let wb = cx.weight(p.w)?;
    let (ab, bb) = (cx.f32(p.a)?, cx.f32(p.b)?);
    let (mut y, mut z) = (cx.alloc(d.rows * d.d_out)?, cx.alloc(d.rows * d.rank)?);
    linear_into(&cx, xb, &wb, &mut y, d.rows, d.d_in, d.d_out)?;
    cx.k(k::lora_shrink(&cx.gpu, d, xdb.unwrap_or(xb), ab, inject, &mut z))?;
    cx.k(k::lora_expand(&cx.gpu, d, &z, bb, p.scale, &mut y, true))?;
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("lora checked rank >= 1") = d.d_out;
    Ok((cx.tensor(y, dims), cx.tensor(z, [d.rows, d.rank])))
}

/// LoRA backward: `dB`, `dz`, `dA` from the low-rank kernels, `dx = dy W + (dz A) ⊙ keep`
/// (base part in cuBLAS). Gradients are overwritten, as the twin's.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lora_backward(
    d: &LoraDims,
    dy: &Tensor,
    x: &Tensor,
    xd: Option<&Tensor>,
    keep: Option<&Tensor>,
    p: &LoraParams<'_>,
    z: &Tensor,
    want: Want,
) -> Result<LoraGradsOut> {
    let cx = Cx::of("lora_linear_backward", lora_operands(x, xd, keep, p, None).chain([dy, z]))?;
    let (dyb, xb) = (cx.f32(dy)?, cx.f32(x)?);
    let xdb = xd.map(|t| cx.f32(t)).transpose()?;
    let keepb = keep.map(|t| cx.f32(t)).transpose()?;
    let wb = cx.weight(p.w)?;
    let (ab, bb, zb) = (cx.f32(p.a)?, cx.f32(p.b)?, cx.f32(z)?);
    let mut da = want.da.then(|| cx.alloc(p.a.numel())).transpose()?;
    let mut db = want.db.then(|| cx.alloc(p.b.numel())).transpose()?;
    let mut dz = cx.alloc(d.rows * d.rank)?;
    cx.k(k::lora_lowrank_backward(
        &cx.gpu,
        d,
        dyb,
        xdb.unwrap_or(xb),
        bb,
        zb,
        p.scale,
        da.as_mut(),
        db.as_mut(),
        &mut dz,
    ))?;
    let dx = match want.dx {
        false => None,
        true => {
            let mut dx = cx.alloc(x.numel())?;
            linear_dx_into(&cx, dyb, &wb, &mut dx, d.rows, d.d_in, d.d_out)?;
            cx.k(k::lora_expand_dx(&cx.gpu, d, &dz, ab, keepb, &mut dx))?;
            Some(dx)
        }
    };
    Ok(LoraGradsOut {
        dx: dx.map(|v| cx.tensor(v, x.shape().clone())),
        da: da.map(|v| cx.tensor(v, p.a.shape().clone())),
        db: db.map(|v| cx.tensor(v, p.b.shape().clone())),
        dz: cx.tensor(dz, [d.rows, d.rank]),
    })
}

/// `z + g ⊙ p` per sample (the kernel works in place, on a copy of `z`).
pub(crate) fn gated_inject_forward(z: &Tensor, inj: &Injection<'_>, d: &LoraDims) -> Result<Tensor> {
    let cx = Cx::of("gated_injection", [z, inj.gate, inj.proj])?;
    let view = inject_gpu(&cx, inj, d)?;
    let zb = cx.f32(z)?;
    let mut out = cx.copy(zb)?;
    if let Some(view) = view {
        cx.k(k::gated_inject_forward(&cx.gpu, &mut out, view, d.rows, d.rank))?;
    }
    Ok(cx.tensor(out, z.shape().clone()))
}

/// `(dgate, dproj)`, each `[S, r]` (zeros for an empty bottleneck).
pub(crate) fn gated_inject_backward(dz: &Tensor, inj: &Injection<'_>, d: &LoraDims) -> Result<(Tensor, Tensor)> {
    let cx = Cx::of("gated_injection_backward", [dz, inj.gate, inj.proj])?;
    let view = inject_gpu(&cx, inj, d)?;
    let dzb = cx.f32(dz)?;
    let n = inj.gate.numel();
    let (dg, dp) = match view {
        Some(view) => {
            let (mut dg, mut dp) = (cx.alloc(n)?, cx.alloc(n)?);
            cx.k(k::gated_inject_backward(&cx.gpu, dzb, view, d.rows, d.rank, &mut dg, &mut dp))?;
            (dg, dp)
        }
        None => (cx.zeros(n)?, cx.zeros(n)?),
    };
    let shape = inj.gate.shape().clone();
    Ok((cx.tensor(dg, shape.clone()), cx.tensor(dp, shape)))
}

/// `out[j] = sum_t a[j, t] b[j, t]` over `rows` rows of `len`: a strided-batched GEMM of
/// 1x1 products, so no elementwise temporary is needed.
fn row_dots(cx: &Cx, a: &GpuBuf<f32>, b: &GpuBuf<f32>, rows: usize, len: usize, out: &mut GpuBuf<f32>) -> Result<()> {
    if len == 0 {
        return cx.k(cx.gpu.memset_zero(out));
    }
    if a.len() < rows * len || b.len() < rows * len || out.len() < rows {
        return Err(unsupported(cx, format!("row_dots: buffers too short for {rows} rows of {len}")));
    }
    let (pa, pb, po) = (a.ptr(), b.ptr(), out.ptr());
    cx.k(blas::gemm_strided_batched_f32_raw(&cx.gpu, false, true, 1, 1, len, 1.0, pa, len, pb, len, 0.0, po, 1, rows))
}

/// DoRA's `n[o] = ||W_o + s (B A)_o||` as the twin computes it, without forming `B A`:
/// `||W_o||^2 + 2s B_o.(W A^T)_o + s^2 B_o (A A^T) B_o^T`. The GEMMs and per-row dot
/// products run in cuBLAS (fp32); the three `[out]` vectors are combined on the host in f64
/// like the twin (clamp at 0, square root: no kernel has those), so each call downloads and
/// uploads `3 x out` floats and waits for the GPU once. A bf16 `W` is widened into a
/// temporary fp32 copy (`out x in`), freed at the end of the call.
pub(crate) fn dora_weight_norm(d: &LoraDims, p: &LoraParams<'_>) -> Result<Tensor> {
    let cx = Cx::of("dora_weight_norm", [p.w, p.a, p.b])?;
    let wb = cx.weight(p.w)?;
    let (ab, bb) = (cx.f32(p.a)?, cx.f32(p.b)?);
    let (o, i, r) = (d.d_out, d.d_in, d.rank);
    let widened;
    let w = match wb {
        Weight::F32(w) => w,
        Weight::Bf16(w16) => {
            let mut t = cx.alloc(o * i)?;
            cx.k(k::bf16_to_f32(&cx.gpu, w16, &mut t))?;
            widened = t;
            &widened
        }
    };
    let (mut ww, mut cross, mut quad) = (cx.alloc(o)?, cx.alloc(o)?, cx.alloc(o)?);
    row_dots(&cx, w, w, o, i, &mut ww)?;
    let (mut wat, mut gram, mut bg) = (cx.alloc(o * r)?, cx.alloc(r * r)?, cx.alloc(o * r)?);
    gemm_into(&cx, false, true, o, r, i, w, ab, &mut wat)?;
    gemm_into(&cx, false, true, r, r, i, ab, ab, &mut gram)?;
    gemm_into(&cx, false, false, o, r, r, bb, &gram, &mut bg)?;
    row_dots(&cx, bb, &wat, o, r, &mut cross)?;
    row_dots(&cx, &bg, bb, o, r, &mut quad)?;
    let (ww, cross, quad) =
        (cx.k(cx.gpu.download(&ww))?, cx.k(cx.gpu.download(&cross))?, cx.k(cx.gpu.download(&quad))?);
    let s = p.scale as f64;
    let n: Vec<f32> = (0..o)
        .map(|j| (ww[j] as f64 + 2.0 * s * cross[j] as f64 + s * s * quad[j] as f64).max(0.0).sqrt() as f32)
        .collect();
    Ok(cx.tensor(cx.k(cx.gpu.upload(&n))?, [o]))
}

/// DoRA's column scaling `y = pre * (m / n)` after the LoRA forward and the norm.
pub(crate) fn dora_scale_forward(
    pre: Tensor,
    z: Tensor,
    norm: Tensor,
    magnitude: &Tensor,
) -> Result<(Tensor, DoraSaved)> {
    let cx = Cx::of("dora_linear", [&pre, &norm, magnitude])?;
    let mb = cx.f32(magnitude)?;
    let (pb, nb) = (cx.f32(&pre)?, cx.f32(&norm)?);
    let cols = nb.len();
    let rows = pb.len().checked_div(cols).unwrap_or(0);
    let mut y = cx.alloc(pb.len())?;
    cx.k(k::dora_scale_forward(&cx.gpu, pb, mb, nb, &mut y, rows, cols))?;
    let y = cx.tensor(y, pre.shape().clone());
    Ok((y, DoraSaved { z, pre, norm }))
}

/// The scaling's backward (norm detached): `(dpre, dm)`; the caller runs the LoRA backward
/// on `dpre`.
pub(crate) fn dora_scale_backward(
    dy: &Tensor,
    magnitude: &Tensor,
    saved: &DoraSaved,
    want_dm: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let cx = Cx::of("dora_linear_backward", [dy, magnitude, &saved.pre, &saved.norm])?;
    let (mb, nb) = (cx.f32(magnitude)?, cx.f32(&saved.norm)?);
    let (dyb, pb) = (cx.f32(dy)?, cx.f32(&saved.pre)?);
    let cols = nb.len();
    let rows = dyb.len().checked_div(cols).unwrap_or(0);
    let mut dpre = cx.alloc(dyb.len())?;
    let mut dm = want_dm.then(|| cx.alloc(cols)).transpose()?;
    cx.k(k::dora_scale_backward(&cx.gpu, dyb, pb, mb, nb, &mut dpre, dm.as_mut(), rows, cols))?;
    Ok((cx.tensor(dpre, dy.shape().clone()), dm.map(|b| cx.tensor(b, magnitude.shape().clone()))))
}

// ---------------------------------------------------------------- losses, pooling

/// Per-row `(loss, lse)` of `logits` `[n, V]`; `targets` uploaded per call.
pub(crate) fn cross_entropy_forward(logits: &Tensor, targets: &[i64]) -> Result<(Tensor, Tensor)> {
    let cx = Cx::of("cross_entropy", [logits])?;
    let lb = cx.f32(logits)?;
    let (n, v) = (logits.dims()[0], logits.dims()[1]);
    let tg = cx.k(cx.gpu.upload(targets))?;
    let (mut l, mut z) = (cx.alloc(n)?, cx.alloc(n)?);
    cx.k(k::cross_entropy_forward(&cx.gpu, lb, &tg, n, v, &mut l, &mut z))?;
    Ok((cx.tensor(l, [n]), cx.tensor(z, [n])))
}

pub(crate) fn cross_entropy_backward(
    logits: &Tensor,
    targets: &[i64],
    lse: &Tensor,
    row_scale: &[f32],
) -> Result<Tensor> {
    let cx = Cx::of("cross_entropy_backward", [logits, lse])?;
    let (lb, zb) = (cx.f32(logits)?, cx.f32(lse)?);
    let (n, v) = (logits.dims()[0], logits.dims()[1]);
    let (tg, sg) = (cx.k(cx.gpu.upload(targets))?, cx.k(cx.gpu.upload(row_scale))?);
    let mut d = cx.alloc(n * v)?;
    cx.k(k::cross_entropy_backward(&cx.gpu, lb, &tg, zb, &sg, n, v, &mut d))?;
    Ok(cx.tensor(d, logits.shape().clone()))
}

pub(crate) fn kl_forward(teacher: &Tensor, student: &Tensor, tau: f32) -> Result<Tensor> {
    let cx = Cx::of("kl_div", [teacher, student])?;
    let (tb, sb) = (cx.f32(teacher)?, cx.f32(student)?);
    let (n, v) = (student.dims()[0], student.dims()[1]);
    let mut kl = cx.alloc(n)?;
    cx.k(k::kl_forward(&cx.gpu, tb, sb, n, v, tau, &mut kl))?;
    Ok(cx.tensor(kl, [n]))
}

pub(crate) fn kl_backward_student(teacher: &Tensor, student: &Tensor, tau: f32, row_scale: &[f32]) -> Result<Tensor> {
    let cx = Cx::of("kl_div_backward", [teacher, student])?;
    let (tb, sb) = (cx.f32(teacher)?, cx.f32(student)?);
    let (n, v) = (student.dims()[0], student.dims()[1]);
    let rg = cx.k(cx.gpu.upload(row_scale))?;
    let mut d = cx.alloc(n * v)?;
    cx.k(k::kl_backward_student(&cx.gpu, tb, sb, &rg, n, v, tau, &mut d))?;
    Ok(cx.tensor(d, student.shape().clone()))
}

pub(crate) fn masked_mean_forward(x: &Tensor, mask: &Tensor, b: usize, t: usize, d: usize) -> Result<Tensor> {
    let cx = Cx::of("masked_mean", [x, mask])?;
    let (xb, mb) = (cx.f32(x)?, cx.f32(mask)?);
    let mut out = cx.alloc(b * d)?;
    cx.k(k::masked_mean_forward(&cx.gpu, xb, mb, b, t, d, &mut out))?;
    Ok(cx.tensor(out, [b, d]))
}

pub(crate) fn masked_mean_backward(dout: &Tensor, x_shape: &Shape, mask: &Tensor) -> Result<Tensor> {
    let cx = Cx::of("masked_mean_backward", [dout, mask])?;
    let (db, mb) = (cx.f32(dout)?, cx.f32(mask)?);
    let (b, t, d) = (x_shape.dim(0), x_shape.dim(1), x_shape.dim(2));
    let mut dx = cx.alloc(x_shape.numel())?;
    cx.k(k::masked_mean_backward(&cx.gpu, db, mb, b, t, d, &mut dx))?;
    Ok(cx.tensor(dx, x_shape.clone()))
}

// ---------------------------------------------------------------- optimizer

/// Gives `t` a device buffer of its own (a copy when the data is shared), so it can be
/// written in place without changing what another holder sees.
fn unshare(cx: &Cx, t: &mut Tensor) -> Result<()> {
    if t.cuda_data_mut().is_none() {
        let copy = cx.tensor(cx.copy(cx.f32(t)?)?, t.shape().clone());
        *t = copy;
    }
    Ok(())
}

/// The f32 device buffer of a tensor that holds it alone (after [`unshare`]).
fn buf_mut(t: &mut Tensor) -> &mut GpuBuf<f32> {
    match t.cuda_data_mut() {
        Some(super::CudaData { buf: super::DevBuf::F32(b), .. }) => b,
        _ => unreachable!("unshare gave an f32 device buffer held alone"),
    }
}

/// One fused AdamW step (`adamw.cu`) of `w`, `m`, `v` in place from `grad`.
pub(crate) fn adamw_step(
    w: &mut Tensor,
    grad: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    s: &echo_kernels::cpu::optim::AdamWStep,
) -> Result<()> {
    let cx = Cx::of("adamw_step", [&*w, grad, &*m, &*v])?;
    for t in [&*w, &*m, &*v] {
        cx.f32(t)?;
    }
    let gb = cx.f32(grad)?;
    for t in [&mut *w, &mut *m, &mut *v] {
        unshare(&cx, t)?;
    }
    cx.k(k::adamw_step(&cx.gpu, buf_mut(w), gb, buf_mut(m), buf_mut(v), s))
}

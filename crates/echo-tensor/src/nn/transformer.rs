//! RMSNorm, RoPE, causal GQA attention and SwiGLU.

use super::{expect_dims, expect_rank};
use crate::cuda::{self, nn as gpu};
use crate::{Error, Result, RopeTable, Shape, Tensor};
pub use echo_kernels::cpu::attention::AttnMask;
use echo_kernels::cpu::{activation, attention, norm, rope};

/// RMSNorm over the last dimension, with an optional weight. Returns `(y, rstd)`.
pub fn rmsnorm_forward(x: &Tensor, w: Option<&Tensor>, eps: f32) -> Result<(Tensor, Tensor)> {
    let op = "rmsnorm";
    let dim = x.shape().last();
    if let Some(w) = w {
        expect_dims(op, "weight", w, &[dim])?;
    }
    if !(eps >= 0.0) {
        return Err(Error::BadValue { op, what: "eps", expected: ">= 0".into(), got: eps.to_string() });
    }
    if cuda::on_gpu([x].into_iter().chain(w)) {
        return gpu::rmsnorm_forward(x, w, eps);
    }
    let mut y = vec![0.0f32; x.numel()];
    let mut rstd = vec![0.0f32; x.shape().rows()];
    let wd = w.map(|w| w.f32s(op)).transpose()?;
    norm::rmsnorm_forward(x.f32s(op)?, wd, &mut y, &mut rstd, dim, eps);
    let rows = Shape::new(vec![x.shape().rows()]);
    Ok((x.with_data(y, x.shape().clone()), x.with_data(rstd, rows)))
}

/// Gradients of RMSNorm: `(dx, dw)`; `dw` only when `want_dw`.
pub fn rmsnorm_backward(
    dy: &Tensor,
    x: &Tensor,
    w: Option<&Tensor>,
    rstd: &Tensor,
    want_dw: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let op = "rmsnorm_backward";
    expect_dims(op, "dy", dy, x.dims())?;
    if cuda::on_gpu([dy, x, rstd].into_iter().chain(w)) {
        return gpu::rmsnorm_backward(dy, x, w, rstd, want_dw);
    }
    let dim = x.shape().last();
    let mut dx = vec![0.0f32; x.numel()];
    let mut dw = (want_dw && w.is_some()).then(|| vec![0.0f32; dim]);
    let wd = w.map(|w| w.f32s(op)).transpose()?;
    norm::rmsnorm_backward(dy.f32s(op)?, x.f32s(op)?, wd, rstd.f32s(op)?, &mut dx, dw.as_deref_mut(), dim);
    Ok((x.with_data(dx, x.shape().clone()), dw.map(|d| x.with_data(d, Shape::new(vec![dim])))))
}

/// Rotary embedding of `x` `[B, T, H, D]`, token `(b, t)` at position `positions[b*T + t]`.
/// `inverse` applies the backward (rotation by the negative angle).
pub fn rope(x: &Tensor, positions: &[usize], table: &RopeTable, inverse: bool) -> Result<Tensor> {
    let op = "rope";
    expect_rank(op, "x", x, 4)?;
    let (tokens, heads, d) = (x.dims()[0] * x.dims()[1], x.dims()[2], x.dims()[3]);
    if d != 2 * table.half {
        return Err(Error::BadShape {
            op,
            msg: format!("head dim {d} of x {} does not match the table's {}", x.shape(), 2 * table.half),
        });
    }
    if positions.len() != tokens {
        return Err(Error::BadShape {
            op,
            msg: format!("{} positions for {tokens} tokens of x {}", positions.len(), x.shape()),
        });
    }
    if let Some(&p) = positions.iter().find(|&&p| p >= table.max_pos) {
        return Err(Error::IndexOutOfRange { op, index: p as i64, size: table.max_pos });
    }
    if cuda::on_gpu([x]) {
        return gpu::rope(x, positions, table, inverse);
    }
    let mut out = x.f32s(op)?.to_vec();
    rope::rope_apply(&mut out, positions, heads, table, inverse);
    Ok(x.with_data(out, x.shape().clone()))
}

fn attn_dims(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask) -> Result<attention::AttnDims> {
    let op = "attention";
    expect_rank(op, "q", q, 4)?;
    expect_rank(op, "k", k, 4)?;
    let (b, t, hq, d) = (q.dims()[0], q.dims()[1], q.dims()[2], q.dims()[3]);
    let hkv = k.dims()[2];
    if k.dims()[0] != b || k.dims()[1] != t || k.dims()[3] != d || hkv == 0 || hq % hkv != 0 {
        return Err(Error::ShapeMismatch { op, lhs: q.shape().clone(), rhs: k.shape().clone() });
    }
    if v.dims() != k.dims() {
        return Err(Error::ShapeMismatch { op, lhs: k.shape().clone(), rhs: v.shape().clone() });
    }
    mask.check(b, t).map_err(|msg| Error::BadShape { op, msg: format!("{msg} (q {})", q.shape()) })?;
    Ok(attention::AttnDims { batch: b, seq: t, q_heads: hq, kv_heads: hkv, head_dim: d })
}

/// Causal attention, `q` `[B, T, Hq, D]`, `k`/`v` `[B, T, Hkv, D]`, `mask` over `[B, T]` (padding
/// and packed examples: [`AttnMask`]),
/// scores scaled by `1/sqrt(D)`. Returns `(out [B, T, Hq, D], lse [B, Hq, T])`.
pub fn attention_forward(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask) -> Result<(Tensor, Tensor)> {
    let dims = attn_dims(q, k, v, mask)?;
    if cuda::on_gpu([q, k, v]) {
        return gpu::attention_forward(&dims, q, k, v, mask);
    }
    let scale = 1.0 / (dims.head_dim as f32).sqrt();
    let mut out = vec![0.0f32; q.numel()];
    let mut lse = vec![0.0f32; dims.batch * dims.q_heads * dims.seq];
    let op = "attention";
    attention::attention_forward(&dims, q.f32s(op)?, k.f32s(op)?, v.f32s(op)?, mask, scale, &mut out, &mut lse);
    let lse_shape = Shape::new(vec![dims.batch, dims.q_heads, dims.seq]);
    Ok((q.with_data(out, q.shape().clone()), q.with_data(lse, lse_shape)))
}

/// Gradients `(dq, dk, dv)` of [`attention_forward`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dims = attn_dims(q, k, v, mask)?;
    let op = "attention_backward";
    expect_dims(op, "dout", dout, q.dims())?;
    expect_dims(op, "out", out, q.dims())?;
    if cuda::on_gpu([q, k, v, out, lse, dout]) {
        return gpu::attention_backward(&dims, q, k, v, mask, out, lse, dout);
    }
    let scale = 1.0 / (dims.head_dim as f32).sqrt();
    let (mut dq, mut dk, mut dv) = (vec![0.0f32; q.numel()], vec![0.0f32; k.numel()], vec![0.0f32; v.numel()]);
    attention::attention_backward(
        &dims,
        q.f32s(op)?,
        k.f32s(op)?,
        v.f32s(op)?,
        mask,
        scale,
        out.f32s(op)?,
        lse.f32s(op)?,
        dout.f32s(op)?,
        &mut dq,
        &mut dk,
        &mut dv,
    );
    Ok((q.with_data(dq, q.shape().clone()), k.with_data(dk, k.shape().clone()), v.with_data(dv, v.shape().clone())))
}

/// `silu(gate) * up`.
pub fn swiglu_forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        return Err(Error::ShapeMismatch { op: "swiglu", lhs: gate.shape().clone(), rhs: up.shape().clone() });
    }
    if cuda::on_gpu([gate, up]) {
        return gpu::swiglu_forward(gate, up);
    }
    let mut out = vec![0.0f32; gate.numel()];
    activation::swiglu_forward(gate.f32s("swiglu")?, up.f32s("swiglu")?, &mut out);
    Ok(gate.with_data(out, gate.shape().clone()))
}

/// Gradients `(dgate, dup)` of [`swiglu_forward`].
pub fn swiglu_backward(dout: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    let op = "swiglu_backward";
    if gate.shape() != up.shape() || dout.shape() != gate.shape() {
        return Err(Error::ShapeMismatch { op, lhs: gate.shape().clone(), rhs: dout.shape().clone() });
    }
    if cuda::on_gpu([dout, gate, up]) {
        return gpu::swiglu_backward(dout, gate, up);
    }
    let (mut dg, mut du) = (vec![0.0f32; gate.numel()], vec![0.0f32; gate.numel()]);
    activation::swiglu_backward(dout.f32s(op)?, gate.f32s(op)?, up.f32s(op)?, &mut dg, &mut du);
    Ok((gate.with_data(dg, gate.shape().clone()), gate.with_data(du, gate.shape().clone())))
}

//! RMSNorm, RoPE, causal GQA attention and SwiGLU.

use super::{expect_dims, expect_rank};
use crate::backend;
use crate::{Error, Result, RopeTable, Tensor};
use echo_kernels::cpu::attention;
pub use echo_kernels::cpu::attention::AttnMask;

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
    backend::of([x].into_iter().chain(w)).rmsnorm_forward(x, w, eps)
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
    backend::of([dy, x, rstd].into_iter().chain(w)).rmsnorm_backward(dy, x, w, rstd, want_dw)
}

/// Rotary embedding of `x` `[B, T, H, D]`, token `(b, t)` at position `positions[b*T + t]`.
/// `inverse` applies the backward (rotation by the negative angle).
pub fn rope(x: &Tensor, positions: &[usize], table: &RopeTable, inverse: bool) -> Result<Tensor> {
    let op = "rope";
    expect_rank(op, "x", x, 4)?;
    let (tokens, d) = (x.dims()[0] * x.dims()[1], x.dims()[3]);
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
    backend::of([x]).rope(x, positions, table, inverse)
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
    backend::of([q, k, v]).attention_forward(&dims, q, k, v, mask)
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
    backend::of([q, k, v, out, lse, dout]).attention_backward(&dims, q, k, v, mask, out, lse, dout)
}

/// `silu(gate) * up`.
pub fn swiglu_forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        return Err(Error::ShapeMismatch { op: "swiglu", lhs: gate.shape().clone(), rhs: up.shape().clone() });
    }
    backend::of([gate, up]).swiglu_forward(gate, up)
}

/// Gradients `(dgate, dup)` of [`swiglu_forward`].
pub fn swiglu_backward(dout: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    let op = "swiglu_backward";
    if gate.shape() != up.shape() || dout.shape() != gate.shape() {
        return Err(Error::ShapeMismatch { op, lhs: gate.shape().clone(), rhs: dout.shape().clone() });
    }
    backend::of([dout, gate, up]).swiglu_backward(dout, gate, up)
}

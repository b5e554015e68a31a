//! The transformer block's fused nodes.

use crate::{Result, Var};
use echo_tensor::{nn, RopeTable};
use std::sync::Arc;

/// RMSNorm over the last dimension with an optional (usually frozen) weight.
pub fn rmsnorm(x: &Var, w: Option<&Var>, eps: f32) -> Result<Var> {
    let (y, rstd) = nn::rmsnorm_forward(x.value(), w.map(|w| w.value()), eps)?;
    let (xv, wv) = (x.value().clone(), w.map(|w| w.value().clone()));
    let mut inputs = vec![x];
    inputs.extend(w);
    x.tape().record(y, &inputs, move |g, needs| {
        let want_dw = needs.get(1).copied().unwrap_or(false);
        let (dx, dw) = nn::rmsnorm_backward(g, &xv, wv.as_ref(), &rstd, want_dw)?;
        let mut out = vec![needs[0].then_some(dx)];
        if wv.is_some() {
            out.push(dw);
        }
        Ok(out)
    })
}

/// Parameter-free RMSNorm of vectors (the echo path's normalisation).
pub fn rms_normalize(x: &Var, eps: f32) -> Result<Var> {
    rmsnorm(x, None, eps)
}

/// Rotary embedding of `x` `[B, T, H, D]` at the given per-token positions.
pub fn rope(x: &Var, positions: &Arc<Vec<usize>>, table: &Arc<RopeTable>) -> Result<Var> {
    let y = nn::rope(x.value(), positions, table, false)?;
    let (positions, table) = (positions.clone(), table.clone());
    x.tape().record(y, &[x], move |g, _| Ok(vec![Some(nn::rope(g, &positions, &table, true)?)]))
}

/// Causal grouped-query attention under a padding / packing mask ([`nn::AttnMask`]).
pub fn attention(q: &Var, k: &Var, v: &Var, mask: &Arc<nn::AttnMask>) -> Result<Var> {
    let (out, lse) = nn::attention_forward(q.value(), k.value(), v.value(), mask)?;
    let (qv, kv, vv, ov) = (q.value().clone(), k.value().clone(), v.value().clone(), out.clone());
    let mask = mask.clone();
    q.tape().record(out, &[q, k, v], move |g, _| {
        let (dq, dk, dv) = nn::attention_backward(&qv, &kv, &vv, &mask, &ov, &lse, g)?;
        Ok(vec![Some(dq), Some(dk), Some(dv)])
    })
}

/// `silu(gate) * up`.
pub fn swiglu(gate: &Var, up: &Var) -> Result<Var> {
    let y = nn::swiglu_forward(gate.value(), up.value())?;
    let (gv, uv) = (gate.value().clone(), up.value().clone());
    gate.tape().record(y, &[gate, up], move |g, needs| {
        let (dg, du) = nn::swiglu_backward(g, &gv, &uv)?;
        Ok(vec![needs[0].then_some(dg), needs[1].then_some(du)])
    })
}

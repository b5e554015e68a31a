//! LoRA and DoRA linears with optional gated injection into the low-rank bottleneck.
//!
//! `x` is `[..., in]` with `N` rows in all, `W` `[out, in]`, `A` `[r, in]`, `B` `[out, r]`.
//! An injection's gate and projection are `[S, r]`, one row per sample; the `N` rows of `x`
//! belong to the `S` samples in order, `N / S` each.

use super::expect_dims;
use crate::backend;
use crate::{Error, Result, Shape, Tensor};
use echo_kernels::cpu::lowrank::LoraDims;

/// The tensors of one adapted linear.
#[derive(Clone, Copy)]
pub struct LoraParams<'a> {
    pub w: &'a Tensor,
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub scale: f32,
}

/// Per-sample gate and projection, `[S, r]` each.
#[derive(Clone, Copy)]
pub struct Injection<'a> {
    pub gate: &'a Tensor,
    pub proj: &'a Tensor,
}

/// Which gradients a backward should produce (the others' GEMMs are skipped).
#[derive(Clone, Copy, Debug, Default)]
pub struct Want {
    pub dx: bool,
    pub da: bool,
    pub db: bool,
}

/// Gradients of a LoRA linear. `dz` (`[N, r]`) is the bottleneck gradient, for the injection.
pub struct LoraGradsOut {
    pub dx: Option<Tensor>,
    pub da: Option<Tensor>,
    pub db: Option<Tensor>,
    pub dz: Tensor,
}

fn lora_dims(op: &'static str, x: &Tensor, p: &LoraParams<'_>) -> Result<LoraDims> {
    if x.rank() < 1 || p.w.rank() != 2 || p.w.dims()[1] != x.shape().last() {
        return Err(Error::ShapeMismatch { op, lhs: x.shape().clone(), rhs: p.w.shape().clone() });
    }
    let (d_out, d_in) = (p.w.dims()[0], p.w.dims()[1]);
    if p.a.rank() != 2 || p.a.dims()[1] != d_in {
        return Err(Error::ShapeMismatch { op, lhs: p.w.shape().clone(), rhs: p.a.shape().clone() });
    }
    let rank = p.a.dims()[0];
    expect_dims(op, "lora B", p.b, &[d_out, rank])?;
    Ok(LoraDims { rows: x.shape().rows(), d_in, d_out, rank })
}

/// Every tensor a LoRA op reads (the operands whose device picks the backend).
pub(crate) fn lora_operands<'a>(
    x: &'a Tensor,
    xd: Option<&'a Tensor>,
    keep: Option<&'a Tensor>,
    p: &LoraParams<'a>,
    inj: Option<&Injection<'a>>,
) -> impl Iterator<Item = &'a Tensor> + 'a {
    let (gate, proj) = (inj.map(|i| i.gate), inj.map(|i| i.proj));
    [Some(x), xd, keep, Some(p.w), Some(p.a), Some(p.b), gate, proj].into_iter().flatten()
}

/// Checks an injection's shapes against the bottleneck; returns the rows per sample.
pub(crate) fn inject_rows(op: &'static str, inj: &Injection<'_>, d: &LoraDims) -> Result<usize> {
    if inj.gate.rank() != 2 || inj.gate.dims()[1] != d.rank || inj.gate.shape() != inj.proj.shape() {
        return Err(Error::ShapeMismatch { op, lhs: inj.gate.shape().clone(), rhs: inj.proj.shape().clone() });
    }
    let samples = inj.gate.dims()[0];
    if samples == 0 || !d.rows.is_multiple_of(samples) {
        return Err(Error::BadShape {
            op,
            msg: format!("{} rows cannot be split evenly over {samples} samples", d.rows),
        });
    }
    Ok(d.rows / samples)
}

fn check_xd(op: &'static str, x: &Tensor, xd: Option<&Tensor>) -> Result<()> {
    match xd {
        Some(xd) if xd.shape() != x.shape() => {
            Err(Error::ShapeMismatch { op, lhs: x.shape().clone(), rhs: xd.shape().clone() })
        }
        _ => Ok(()),
    }
}

/// `x`'s shape with the last dimension `d_out`: a LoRA linear's output.
pub(crate) fn out_shape(x: &Tensor, d_out: usize) -> Shape {
    let mut dims = x.dims().to_vec();
    *dims.last_mut().unwrap() = d_out;
    Shape::new(dims)
}

/// `y = x W^T + s (xd A^T + g ⊙ p) B^T`; `xd` is the dropped-out input (`None`: `x`).
/// Returns `(y, z)` with `z` the bottleneck activations `[N, r]`.
pub fn lora_forward(
    x: &Tensor,
    xd: Option<&Tensor>,
    p: &LoraParams<'_>,
    inj: Option<&Injection<'_>>,
) -> Result<(Tensor, Tensor)> {
    let op = "lora_linear";
    let d = lora_dims(op, x, p)?;
    check_xd(op, x, xd)?;
    backend::of(lora_operands(x, xd, None, p, inj)).lora_forward(&d, x, xd, p, inj)
}

/// Backward of [`lora_forward`]. `keep` is the dropout multiplier (0 or 1/(1-p)) per element
/// of `x`, present exactly when `xd` is.
#[allow(clippy::too_many_arguments)]
pub fn lora_backward(
    dy: &Tensor,
    x: &Tensor,
    xd: Option<&Tensor>,
    keep: Option<&Tensor>,
    p: &LoraParams<'_>,
    z: &Tensor,
    want: Want,
) -> Result<LoraGradsOut> {
    let op = "lora_linear_backward";
    let d = lora_dims(op, x, p)?;
    check_xd(op, x, xd)?;
    check_xd(op, x, keep)?;
    expect_dims(op, "dy", dy, out_shape(x, d.d_out).dims())?;
    expect_dims(op, "z", z, &[d.rows, d.rank])?;
    backend::of(lora_operands(x, xd, keep, p, None).chain([dy, z])).lora_backward(&d, dy, x, xd, keep, p, z, want)
}

/// `z + g ⊙ p` broadcast over each sample's rows; `z` is `[N, r]` (or `[N, out]`: the echo's
/// output site adds the same per-sample term to a module's output; nothing here depends on
/// the width).
pub fn gated_inject_forward(z: &Tensor, inj: &Injection<'_>) -> Result<Tensor> {
    let op = "gated_injection";
    if z.rank() != 2 {
        return Err(Error::BadShape { op, msg: format!("z must be [N, r], got {}", z.shape()) });
    }
    let d = LoraDims { rows: z.dims()[0], d_in: 0, d_out: 0, rank: z.dims()[1] };
    backend::of([z, inj.gate, inj.proj]).gated_inject_forward(z, inj, &d)
}

/// Gradients `(dgate, dproj)` of the injection, given the bottleneck gradient `dz` `[N, r]`.
pub fn gated_inject_backward(dz: &Tensor, inj: &Injection<'_>) -> Result<(Tensor, Tensor)> {
    let op = "gated_injection_backward";
    if dz.rank() != 2 {
        return Err(Error::BadShape { op, msg: format!("dz must be [N, r], got {}", dz.shape()) });
    }
    let d = LoraDims { rows: dz.dims()[0], d_in: 0, d_out: 0, rank: dz.dims()[1] };
    backend::of([dz, inj.gate, inj.proj]).gated_inject_backward(dz, inj, &d)
}

/// DoRA's `n[o] = ||W[o,:] + s (B A)[o,:]||_2`, `[out]`.
pub fn dora_weight_norm(p: &LoraParams<'_>) -> Result<Tensor> {
    let op = "dora_weight_norm";
    let d = lora_dims(op, &Tensor::zeros([0, p.w.dims().get(1).copied().unwrap_or(0)]), p)?;
    backend::of([p.w, p.a, p.b]).dora_weight_norm(&d, p)
}

/// What DoRA's backward needs from its forward.
pub struct DoraSaved {
    pub z: Tensor,
    /// `x W^T + s z B^T`, before the magnitude scaling, `[N, out]`.
    pub pre: Tensor,
    /// The (detached) weight norm, `[out]`.
    pub norm: Tensor,
}

/// `y = (m / n) ⊙ (x W^T + s (xd A^T + g ⊙ p) B^T)` with `n` from [`dora_weight_norm`].
pub fn dora_forward(
    x: &Tensor,
    xd: Option<&Tensor>,
    p: &LoraParams<'_>,
    magnitude: &Tensor,
    inj: Option<&Injection<'_>>,
) -> Result<(Tensor, DoraSaved)> {
    expect_dims("dora_linear", "magnitude", magnitude, &[p.w.dims()[0]])?;
    let (pre, z) = lora_forward(x, xd, p, inj)?;
    let norm = dora_weight_norm(p)?;
    let be = backend::of([&pre, &norm, magnitude]);
    be.dora_scale_forward(pre, z, norm, magnitude)
}

/// Backward of [`dora_forward`]: the LoRA gradients and `dm` (when `want_dm`). The norm is a
/// constant, as in PEFT.
#[allow(clippy::too_many_arguments)]
pub fn dora_backward(
    dy: &Tensor,
    x: &Tensor,
    xd: Option<&Tensor>,
    keep: Option<&Tensor>,
    p: &LoraParams<'_>,
    magnitude: &Tensor,
    saved: &DoraSaved,
    want: Want,
    want_dm: bool,
) -> Result<(LoraGradsOut, Option<Tensor>)> {
    let op = "dora_linear_backward";
    expect_dims(op, "dy", dy, saved.pre.dims())?;
    let (dpre, dm) =
        backend::of([dy, magnitude, &saved.pre, &saved.norm]).dora_scale_backward(dy, magnitude, saved, want_dm)?;
    Ok((lora_backward(&dpre, x, xd, keep, p, &saved.z, want)?, dm))
}

//! LoRA and DoRA linears with optional gated injection into the low-rank bottleneck.
//!
//! `x` is `[..., in]` with `N` rows in all, `W` `[out, in]`, `A` `[r, in]`, `B` `[out, r]`.
//! An injection's gate and projection are `[S, r]`, one row per sample; the `N` rows of `x`
//! belong to the `S` samples in order, `N / S` each.

use super::expect_dims;
use crate::cuda::{self, nn as gpu};
use crate::{mixed, Error, Result, Shape, Tensor};
use echo_kernels::cpu::gemm::{matmul, Par};
use echo_kernels::cpu::lowrank::{self, Inject, LoraDims, LoraGrads};

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

fn inject_view<'a>(op: &'static str, inj: &Injection<'a>, d: &LoraDims) -> Result<Inject<'a>> {
    let rows_per_sample = inject_rows(op, inj, d)?;
    Ok(Inject { gate: inj.gate.f32s(op)?, proj: inj.proj.f32s(op)?, rows_per_sample })
}

fn check_xd(op: &'static str, x: &Tensor, xd: Option<&Tensor>) -> Result<()> {
    match xd {
        Some(xd) if xd.shape() != x.shape() => {
            Err(Error::ShapeMismatch { op, lhs: x.shape().clone(), rhs: xd.shape().clone() })
        }
        _ => Ok(()),
    }
}

fn out_shape(x: &Tensor, d_out: usize) -> Shape {
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
    if cuda::on_gpu(gpu::lora_operands(x, xd, None, p, inj)) {
        return gpu::lora_forward(&d, x, xd, p, inj);
    }
    let inject = inj.map(|i| inject_view(op, i, &d)).transpose()?;
    let mut y = vec![0.0f32; d.rows * d.d_out];
    let mut z = vec![0.0f32; d.rows * d.rank];
    let xdd = xd.map(|t| t.f32s(op)).transpose()?;
    let (x32, w) = (x.f32s(op)?, mixed::weight_f32(p.w, op)?);
    let (a, b) = (p.a.f32s(op)?, p.b.f32s(op)?);
    if mixed::is_bf16_host(p.w) {
        // The base product sees `x` rounded to bf16 (as cuBLAS on a GPU); the low-rank path
        // keeps the f32 input.
        lowrank::lora_forward(
            &d,
            &mixed::round_bf16(x32),
            Some(xdd.unwrap_or(x32)),
            &w,
            a,
            b,
            p.scale,
            inject,
            &mut y,
            &mut z,
        );
    } else {
        lowrank::lora_forward(&d, x32, xdd, &w, a, b, p.scale, inject, &mut y, &mut z);
    }
    Ok((x.with_data(y, out_shape(x, d.d_out)), x.with_data(z, Shape::new(vec![d.rows, d.rank]))))
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
    if cuda::on_gpu(gpu::lora_operands(x, xd, keep, p, None).chain([dy, z])) {
        return gpu::lora_backward(&d, dy, x, xd, keep, p, z, want);
    }
    if mixed::is_bf16_host(p.w) {
        return lora_backward_bf16(&d, dy, x, xd, keep, p, z, want);
    }
    let mut dx = want.dx.then(|| vec![0.0f32; x.numel()]);
    let mut da = want.da.then(|| vec![0.0f32; p.a.numel()]);
    let mut db = want.db.then(|| vec![0.0f32; p.b.numel()]);
    let mut dz = vec![0.0f32; d.rows * d.rank];
    lowrank::lora_backward(
        &d,
        dy.f32s(op)?,
        x.f32s(op)?,
        xd.map(|t| t.f32s(op)).transpose()?,
        keep.map(|t| t.f32s(op)).transpose()?,
        p.w.f32s(op)?,
        p.a.f32s(op)?,
        p.b.f32s(op)?,
        z.f32s(op)?,
        p.scale,
        LoraGrads { dx: dx.as_deref_mut(), da: da.as_deref_mut(), db: db.as_deref_mut(), dz: &mut dz },
    );
    Ok(LoraGradsOut {
        dx: dx.map(|v| x.with_data(v, x.shape().clone())),
        da: da.map(|v| x.with_data(v, p.a.shape().clone())),
        db: db.map(|v| x.with_data(v, p.b.shape().clone())),
        dz: x.with_data(dz, Shape::new(vec![d.rows, d.rank])),
    })
}

/// [`lora_backward`] with a bf16 base weight on the CPU, as the GPU computes it: `dA`, `dB`
/// and `dz` from the f32 `dy` (the low-rank routine without its `dx`), then
/// `dx = bf16(dy) W + (dz A) ⊙ keep` (the base part as cuBLAS gets it, `crate::mixed`).
#[allow(clippy::too_many_arguments)]
fn lora_backward_bf16(
    d: &LoraDims,
    dy: &Tensor,
    x: &Tensor,
    xd: Option<&Tensor>,
    keep: Option<&Tensor>,
    p: &LoraParams<'_>,
    z: &Tensor,
    want: Want,
) -> Result<LoraGradsOut> {
    let op = "lora_linear_backward";
    let (dyd, a) = (dy.f32s(op)?, p.a.f32s(op)?);
    let mut da = want.da.then(|| vec![0.0f32; p.a.numel()]);
    let mut db = want.db.then(|| vec![0.0f32; p.b.numel()]);
    let mut dz = vec![0.0f32; d.rows * d.rank];
    let xd32 = xd.map(|t| t.f32s(op)).transpose()?;
    let w = mixed::weight_f32(p.w, op)?;
    let grads = LoraGrads { dx: None, da: da.as_deref_mut(), db: db.as_deref_mut(), dz: &mut dz };
    lowrank::lora_backward(d, dyd, x.f32s(op)?, xd32, None, &w, a, p.b.f32s(op)?, z.f32s(op)?, p.scale, grads);
    let dx = match want.dx {
        false => None,
        true => {
            let mut dx = vec![0.0f32; x.numel()];
            matmul(&mut dx, &mixed::round_bf16(dyd), &w, d.rows, d.d_out, d.d_in, false, false, 1.0, false, Par::Rayon);
            let mut low = vec![0.0f32; x.numel()];
            matmul(&mut low, &dz, a, d.rows, d.rank, d.d_in, false, false, 1.0, false, Par::Rayon);
            match keep.map(|k| k.f32s(op)).transpose()? {
                Some(k) => dx.iter_mut().zip(low.iter().zip(k)).for_each(|(o, (l, k))| *o += l * k),
                None => dx.iter_mut().zip(&low).for_each(|(o, l)| *o += l),
            }
            Some(dx)
        }
    };
    Ok(LoraGradsOut {
        dx: dx.map(|v| x.with_data(v, x.shape().clone())),
        da: da.map(|v| x.with_data(v, p.a.shape().clone())),
        db: db.map(|v| x.with_data(v, p.b.shape().clone())),
        dz: x.with_data(dz, Shape::new(vec![d.rows, d.rank])),
    })
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
    if cuda::on_gpu([z, inj.gate, inj.proj]) {
        return gpu::gated_inject_forward(z, inj, &d);
    }
    let view = inject_view(op, inj, &d)?;
    let mut out = z.f32s(op)?.to_vec();
    lowrank::gated_inject_forward(&mut out, view, d.rank);
    Ok(z.with_data(out, z.shape().clone()))
}

/// Gradients `(dgate, dproj)` of the injection, given the bottleneck gradient `dz` `[N, r]`.
pub fn gated_inject_backward(dz: &Tensor, inj: &Injection<'_>) -> Result<(Tensor, Tensor)> {
    let op = "gated_injection_backward";
    if dz.rank() != 2 {
        return Err(Error::BadShape { op, msg: format!("dz must be [N, r], got {}", dz.shape()) });
    }
    let d = LoraDims { rows: dz.dims()[0], d_in: 0, d_out: 0, rank: dz.dims()[1] };
    if cuda::on_gpu([dz, inj.gate, inj.proj]) {
        return gpu::gated_inject_backward(dz, inj, &d);
    }
    let view = inject_view(op, inj, &d)?;
    let (mut dg, mut dp) = (vec![0.0f32; inj.gate.numel()], vec![0.0f32; inj.gate.numel()]);
    lowrank::gated_inject_backward(dz.f32s(op)?, view, d.rank, &mut dg, &mut dp);
    Ok((dz.with_data(dg, inj.gate.shape().clone()), dz.with_data(dp, inj.gate.shape().clone())))
}

/// DoRA's `n[o] = ||W[o,:] + s (B A)[o,:]||_2`, `[out]`.
pub fn dora_weight_norm(p: &LoraParams<'_>) -> Result<Tensor> {
    let op = "dora_weight_norm";
    let d = lora_dims(op, &Tensor::zeros([0, p.w.dims().get(1).copied().unwrap_or(0)]), p)?;
    if cuda::on_gpu([p.w, p.a, p.b]) {
        return gpu::dora_weight_norm(&d, p);
    }
    let mut n = vec![0.0f32; d.d_out];
    lowrank::dora_weight_norm(&d, &mixed::weight_f32(p.w, op)?, p.a.f32s(op)?, p.b.f32s(op)?, p.scale, &mut n);
    Ok(p.w.with_data(n, Shape::new(vec![d.d_out])))
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
    if cuda::on_gpu([&pre, &norm, magnitude]) {
        return gpu::dora_scale_forward(pre, z, norm, magnitude);
    }
    // The routine the CUDA kernel is checked against (`echo_kernels::cuda::check`).
    let mut y = vec![0.0f32; pre.as_f32().len()];
    lowrank::dora_scale_forward(pre.as_f32(), magnitude.f32s("dora_linear")?, norm.as_f32(), &mut y);
    let y = pre.with_data(y, pre.shape().clone());
    Ok((y, DoraSaved { z, pre, norm }))
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
    if cuda::on_gpu([dy, magnitude, &saved.pre, &saved.norm]) {
        let (dpre, dm) = gpu::dora_scale_backward(dy, magnitude, saved, want_dm)?;
        return Ok((lora_backward(&dpre, x, xd, keep, p, &saved.z, want)?, dm));
    }
    // The routine the CUDA kernel is checked against (`echo_kernels::cuda::check`).
    let (m, n, dyd) = (magnitude.f32s(op)?, saved.norm.f32s(op)?, dy.f32s(op)?);
    let mut dpre = vec![0.0f32; dyd.len()];
    let mut dm = want_dm.then(|| vec![0.0f32; n.len()]);
    lowrank::dora_scale_backward(dyd, saved.pre.as_f32(), m, n, &mut dpre, dm.as_deref_mut());
    let dm = dm.map(|v| dy.with_data(v, magnitude.shape().clone()));
    let dpre = dy.with_data(dpre, dy.shape().clone());
    let grads = lora_backward(&dpre, x, xd, keep, p, &saved.z, want)?;
    Ok((grads, dm))
}

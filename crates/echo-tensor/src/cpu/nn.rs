//! Host forms of the fused pairs (`crate::nn`): each wraps its `echo_kernels::cpu` routine,
//! the same routine the CUDA kernel is checked against (`echo_kernels::cuda::check`).

use super::mixed;
use crate::nn::{inject_rows, out_shape, AttnMask, DoraSaved, Injection, LoraGradsOut, LoraParams, Want};
use crate::{Result, RopeTable, Shape, Tensor};
use echo_kernels::cpu::attention::{self, AttnDims};
use echo_kernels::cpu::gemm::{matmul, Par};
use echo_kernels::cpu::lowrank::{self, Inject, LoraDims, LoraGrads};
use echo_kernels::cpu::optim::AdamWStep;
use echo_kernels::cpu::{activation, loss, norm, pool, rope as rope_k};

// ---------------------------------------------------------------- transformer

pub(crate) fn rmsnorm_forward(x: &Tensor, w: Option<&Tensor>, eps: f32) -> Result<(Tensor, Tensor)> {
    let op = "rmsnorm";
    let dim = x.shape().last();
    let mut y = vec![0.0f32; x.numel()];
    let mut rstd = vec![0.0f32; x.shape().rows()];
    let wd = w.map(|w| w.f32s(op)).transpose()?;
    norm::rmsnorm_forward(x.f32s(op)?, wd, &mut y, &mut rstd, dim, eps);
    let rows = Shape::new(vec![x.shape().rows()]);
    Ok((x.with_data(y, x.shape().clone()), x.with_data(rstd, rows)))
}

pub(crate) fn rmsnorm_backward(
    dy: &Tensor,
    x: &Tensor,
    w: Option<&Tensor>,
    rstd: &Tensor,
    want_dw: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let op = "rmsnorm_backward";
    let dim = x.shape().last();
    let mut dx = vec![0.0f32; x.numel()];
    let mut dw = (want_dw && w.is_some()).then(|| vec![0.0f32; dim]);
    let wd = w.map(|w| w.f32s(op)).transpose()?;
    norm::rmsnorm_backward(dy.f32s(op)?, x.f32s(op)?, wd, rstd.f32s(op)?, &mut dx, dw.as_deref_mut(), dim);
    Ok((x.with_data(dx, x.shape().clone()), dw.map(|d| x.with_data(d, Shape::new(vec![dim])))))
}

pub(crate) fn rope(x: &Tensor, positions: &[usize], table: &RopeTable, inverse: bool) -> Result<Tensor> {
    let mut out = x.f32s("rope")?.to_vec();
    rope_k::rope_apply(&mut out, positions, x.dims()[2], table, inverse);
    Ok(x.with_data(out, x.shape().clone()))
}

pub(crate) fn attention_forward(
    dims: &AttnDims,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
) -> Result<(Tensor, Tensor)> {
    let op = "attention";
    let scale = 1.0 / (dims.head_dim as f32).sqrt();
    let mut out = vec![0.0f32; q.numel()];
    let mut lse = vec![0.0f32; dims.batch * dims.q_heads * dims.seq];
    attention::attention_forward(dims, q.f32s(op)?, k.f32s(op)?, v.f32s(op)?, mask, scale, &mut out, &mut lse);
    let lse_shape = Shape::new(vec![dims.batch, dims.q_heads, dims.seq]);
    Ok((q.with_data(out, q.shape().clone()), q.with_data(lse, lse_shape)))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward(
    dims: &AttnDims,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "attention_backward";
    let scale = 1.0 / (dims.head_dim as f32).sqrt();
    let (mut dq, mut dk, mut dv) = (vec![0.0f32; q.numel()], vec![0.0f32; k.numel()], vec![0.0f32; v.numel()]);
    attention::attention_backward(
        dims,
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

pub(crate) fn swiglu_forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let mut out = vec![0.0f32; gate.numel()];
    activation::swiglu_forward(gate.f32s("swiglu")?, up.f32s("swiglu")?, &mut out);
    Ok(gate.with_data(out, gate.shape().clone()))
}

pub(crate) fn swiglu_backward(dout: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    let op = "swiglu_backward";
    let (mut dg, mut du) = (vec![0.0f32; gate.numel()], vec![0.0f32; gate.numel()]);
    activation::swiglu_backward(dout.f32s(op)?, gate.f32s(op)?, up.f32s(op)?, &mut dg, &mut du);
    Ok((gate.with_data(dg, gate.shape().clone()), gate.with_data(du, gate.shape().clone())))
}

// ---------------------------------------------------------------- adapters

/// The injection as the low-rank routines take it.
fn inject_view<'a>(op: &'static str, inj: &Injection<'a>, d: &LoraDims) -> Result<Inject<'a>> {
    let rows_per_sample = inject_rows(op, inj, d)?;
    Ok(Inject { gate: inj.gate.f32s(op)?, proj: inj.proj.f32s(op)?, rows_per_sample })
}

pub(crate) fn lora_forward(
    d: &LoraDims,
    x: &Tensor,
    xd: Option<&Tensor>,
    p: &LoraParams<'_>,
    inj: Option<&Injection<'_>>,
) -> Result<(Tensor, Tensor)> {
    let op = "lora_linear";
    let inject = inj.map(|i| inject_view(op, i, d)).transpose()?;
    let mut y = vec![0.0f32; d.rows * d.d_out];
    let mut z = vec![0.0f32; d.rows * d.rank];
    let xdd = xd.map(|t| t.f32s(op)).transpose()?;
    let (x32, w) = (x.f32s(op)?, mixed::weight_f32(p.w, op)?);
    let (a, b) = (p.a.f32s(op)?, p.b.f32s(op)?);
    if mixed::is_bf16_host(p.w) {
        // The base product sees `x` rounded to bf16 (as cuBLAS on a GPU); the low-rank path
        // keeps the f32 input.
        lowrank::lora_forward(
            d,
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
        lowrank::lora_forward(d, x32, xdd, &w, a, b, p.scale, inject, &mut y, &mut z);
    }
    Ok((x.with_data(y, out_shape(x, d.d_out)), x.with_data(z, Shape::new(vec![d.rows, d.rank]))))
}

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
    let op = "lora_linear_backward";
    if mixed::is_bf16_host(p.w) {
        return lora_backward_bf16(d, dy, x, xd, keep, p, z, want);
    }
    let mut dx = want.dx.then(|| vec![0.0f32; x.numel()]);
    let mut da = want.da.then(|| vec![0.0f32; p.a.numel()]);
    let mut db = want.db.then(|| vec![0.0f32; p.b.numel()]);
    let mut dz = vec![0.0f32; d.rows * d.rank];
    lowrank::lora_backward(
        d,
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

/// [`lora_backward`] with a bf16 base weight, as the GPU computes it: `dA`, `dB` and `dz`
/// from the f32 `dy` (the low-rank routine without its `dx`), then
/// `dx = bf16(dy) W + (dz A) ⊙ keep` (the base part as cuBLAS gets it, `mixed`).
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

pub(crate) fn gated_inject_forward(z: &Tensor, inj: &Injection<'_>, d: &LoraDims) -> Result<Tensor> {
    let op = "gated_injection";
    let view = inject_view(op, inj, d)?;
    let mut out = z.f32s(op)?.to_vec();
    lowrank::gated_inject_forward(&mut out, view, d.rank);
    Ok(z.with_data(out, z.shape().clone()))
}

pub(crate) fn gated_inject_backward(dz: &Tensor, inj: &Injection<'_>, d: &LoraDims) -> Result<(Tensor, Tensor)> {
    let op = "gated_injection_backward";
    let view = inject_view(op, inj, d)?;
    let (mut dg, mut dp) = (vec![0.0f32; inj.gate.numel()], vec![0.0f32; inj.gate.numel()]);
    lowrank::gated_inject_backward(dz.f32s(op)?, view, d.rank, &mut dg, &mut dp);
    Ok((dz.with_data(dg, inj.gate.shape().clone()), dz.with_data(dp, inj.gate.shape().clone())))
}

pub(crate) fn dora_weight_norm(d: &LoraDims, p: &LoraParams<'_>) -> Result<Tensor> {
    let op = "dora_weight_norm";
    let mut n = vec![0.0f32; d.d_out];
    lowrank::dora_weight_norm(d, &mixed::weight_f32(p.w, op)?, p.a.f32s(op)?, p.b.f32s(op)?, p.scale, &mut n);
    Ok(p.w.with_data(n, Shape::new(vec![d.d_out])))
}

pub(crate) fn dora_scale_forward(
    pre: Tensor,
    z: Tensor,
    norm: Tensor,
    magnitude: &Tensor,
) -> Result<(Tensor, DoraSaved)> {
    let mut y = vec![0.0f32; pre.as_f32().len()];
    lowrank::dora_scale_forward(pre.as_f32(), magnitude.f32s("dora_linear")?, norm.as_f32(), &mut y);
    let y = pre.with_data(y, pre.shape().clone());
    Ok((y, DoraSaved { z, pre, norm }))
}

pub(crate) fn dora_scale_backward(
    dy: &Tensor,
    magnitude: &Tensor,
    saved: &DoraSaved,
    want_dm: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let op = "dora_linear_backward";
    let (m, n, dyd) = (magnitude.f32s(op)?, saved.norm.f32s(op)?, dy.f32s(op)?);
    let mut dpre = vec![0.0f32; dyd.len()];
    let mut dm = want_dm.then(|| vec![0.0f32; n.len()]);
    lowrank::dora_scale_backward(dyd, saved.pre.as_f32(), m, n, &mut dpre, dm.as_deref_mut());
    let dm = dm.map(|v| dy.with_data(v, magnitude.shape().clone()));
    Ok((dy.with_data(dpre, dy.shape().clone()), dm))
}

// ---------------------------------------------------------------- losses

pub(crate) fn cross_entropy_forward(logits: &Tensor, targets: &[i64]) -> Result<(Tensor, Tensor)> {
    let (n, v) = (logits.dims()[0], logits.dims()[1]);
    let (mut l, mut z) = (vec![0.0f32; n], vec![0.0f32; n]);
    loss::cross_entropy_forward(logits.f32s("cross_entropy")?, targets, v, &mut l, &mut z);
    Ok((logits.with_data(l, Shape::new(vec![n])), logits.with_data(z, Shape::new(vec![n]))))
}

pub(crate) fn cross_entropy_backward(
    logits: &Tensor,
    targets: &[i64],
    lse: &Tensor,
    row_scale: &[f32],
) -> Result<Tensor> {
    let op = "cross_entropy_backward";
    let (n, v) = (logits.dims()[0], logits.dims()[1]);
    let mut d = vec![0.0f32; n * v];
    loss::cross_entropy_backward(logits.f32s(op)?, targets, lse.f32s(op)?, row_scale, v, &mut d);
    Ok(logits.with_data(d, logits.shape().clone()))
}

pub(crate) fn kl_forward(teacher: &Tensor, student: &Tensor, tau: f32) -> Result<Tensor> {
    let op = "kl_div";
    let (n, v) = (student.dims()[0], student.dims()[1]);
    let mut k = vec![0.0f32; n];
    loss::kl_forward(teacher.f32s(op)?, student.f32s(op)?, v, tau, &mut k);
    Ok(student.with_data(k, Shape::new(vec![n])))
}

pub(crate) fn kl_backward_student(teacher: &Tensor, student: &Tensor, tau: f32, row_scale: &[f32]) -> Result<Tensor> {
    let op = "kl_div_backward";
    let (n, v) = (student.dims()[0], student.dims()[1]);
    let mut d = vec![0.0f32; n * v];
    loss::kl_backward_student(teacher.f32s(op)?, student.f32s(op)?, row_scale, v, tau, &mut d);
    Ok(student.with_data(d, student.shape().clone()))
}

pub(crate) fn masked_mean_forward(x: &Tensor, mask: &Tensor, b: usize, t: usize, d: usize) -> Result<Tensor> {
    let op = "masked_mean";
    let mut out = vec![0.0f32; b * d];
    pool::masked_mean_forward(x.f32s(op)?, mask.f32s(op)?, t, d, &mut out);
    Ok(x.with_data(out, Shape::new(vec![b, d])))
}

pub(crate) fn masked_mean_backward(dout: &Tensor, x_shape: &Shape, mask: &Tensor) -> Result<Tensor> {
    let op = "masked_mean_backward";
    let dims = x_shape.dims();
    let mut dx = vec![0.0f32; x_shape.numel()];
    pool::masked_mean_backward(dout.f32s(op)?, mask.f32s(op)?, dims[1], dims[2], &mut dx);
    Ok(dout.with_data(dx, x_shape.clone()))
}

// ---------------------------------------------------------------- optimizer

/// The exact update the trainer always performed (`echo_kernels::cpu::optim::adamw_step`).
pub(crate) fn adamw_step(w: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, s: &AdamWStep) -> Result<()> {
    let op = "adamw_step";
    let g = grad.f32s(op)?;
    // The three outputs are distinct tensors, so their buffers can be borrowed together
    // once each holds its data alone (f32_mut copies a shared buffer first).
    let (wd, md, vd) = (w.f32_mut(op)?, m.f32_mut(op)?, v.f32_mut(op)?);
    echo_kernels::cpu::optim::adamw_step(wd, g, md, vd, s);
    Ok(())
}

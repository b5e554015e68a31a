//! LoRA and DoRA linears (one node each: base GEMM, shrink, optional gated injection, expand)
//! and the standalone gated injection node.

use crate::{Error, Result, Var};
use echo_tensor::nn::{self, Injection, LoraParams, Want};
use echo_tensor::{Rng, Tensor};

/// Inverted dropout on the adapter input: each element kept with probability `1 - p` and
/// scaled by `1 / (1 - p)`. Draws come from `rng`, so a seeded run is reproducible.
pub struct Dropout<'a> {
    pub p: f32,
    pub rng: &'a mut Rng,
}

/// The per-sample gate and projection (`[S, r]` each) injected into the bottleneck.
#[derive(Clone, Copy)]
pub struct Inject<'a> {
    pub gate: &'a Var,
    pub proj: &'a Var,
}

/// `(x ⊙ keep, keep)` or `None` when there is nothing to drop.
fn apply_dropout(x: &Tensor, dropout: Option<Dropout<'_>>) -> Result<Option<(Tensor, Tensor)>> {
    let Some(d) = dropout else { return Ok(None) };
    if !(0.0..1.0).contains(&d.p) {
        return Err(Error::Invalid(format!("lora dropout must be in [0, 1), got {}", d.p)));
    }
    if d.p == 0.0 {
        return Ok(None);
    }
    let inv = 1.0 / (1.0 - d.p);
    let keep: Vec<f32> = (0..x.numel()).map(|_| if d.rng.bernoulli(d.p) { 0.0 } else { inv }).collect();
    // Drawn on the host from the seeded stream (the same masks on every device), then moved
    // where `x` is.
    let keep = Tensor::new(keep, x.shape().clone())?.to_device(x.device())?;
    Ok(Some((x.mul(&keep)?, keep)))
}

fn inputs<'a>(fixed: &[&'a Var], inject: Option<Inject<'a>>) -> Vec<&'a Var> {
    let mut v = fixed.to_vec();
    if let Some(i) = inject {
        v.push(i.gate);
        v.push(i.proj);
    }
    v
}

/// The injection's gradients from the bottleneck gradient, if the injection needs any.
fn inject_grads(dz: &Tensor, inj: &Option<(Tensor, Tensor)>, need: &[bool]) -> Result<Vec<Option<Tensor>>> {
    let Some((g, p)) = inj else { return Ok(vec![]) };
    if !need.iter().any(|&n| n) {
        return Ok(vec![None, None]);
    }
    let (dg, dp) = nn::gated_inject_backward(dz, &Injection { gate: g, proj: p })?;
    Ok(vec![need[0].then_some(dg), need[1].then_some(dp)])
}

/// `y = x W^T + s (drop(x) A^T + g ⊙ p) B^T`. `w` is frozen (a plain tensor: no gradient
/// buffer, no weight-gradient GEMM); `a` and `b` are usually trainable.
pub fn lora_linear(
    x: &Var,
    w: &Tensor,
    a: &Var,
    b: &Var,
    scale: f32,
    dropout: Option<Dropout<'_>>,
    inject: Option<Inject<'_>>,
) -> Result<Var> {
    let dropped = apply_dropout(x.value(), dropout)?;
    let inj = inject.map(|i| (i.gate.value().clone(), i.proj.value().clone()));
    let injection = inj.as_ref().map(|(g, p)| Injection { gate: g, proj: p });
    let p = LoraParams { w, a: a.value(), b: b.value(), scale };
    let (y, z) = nn::lora_forward(x.value(), dropped.as_ref().map(|d| &d.0), &p, injection.as_ref())?;
    let (xv, wv, av, bv) = (x.value().clone(), w.clone(), a.value().clone(), b.value().clone());
    x.tape().record(y, &inputs(&[x, a, b], inject), move |g, needs| {
        let p = LoraParams { w: &wv, a: &av, b: &bv, scale };
        let want = Want { dx: needs[0], da: needs[1], db: needs[2] };
        let (xd, keep) = (dropped.as_ref().map(|d| &d.0), dropped.as_ref().map(|d| &d.1));
        let gr = nn::lora_backward(g, &xv, xd, keep, &p, &z, want)?;
        let mut out = vec![gr.dx, gr.da, gr.db];
        out.extend(inject_grads(&gr.dz, &inj, &needs[3..])?);
        Ok(out)
    })
}

/// DoRA: `y = (m / n) ⊙ (x W^T + s (drop(x) A^T + g ⊙ p) B^T)` with
/// `n = ||W + s B A||` per output feature, treated as a constant in backward (as PEFT).
#[allow(clippy::too_many_arguments)]
pub fn dora_linear(
    x: &Var,
    w: &Tensor,
    a: &Var,
    b: &Var,
    magnitude: &Var,
    scale: f32,
    dropout: Option<Dropout<'_>>,
    inject: Option<Inject<'_>>,
) -> Result<Var> {
    let dropped = apply_dropout(x.value(), dropout)?;
    let inj = inject.map(|i| (i.gate.value().clone(), i.proj.value().clone()));
    let injection = inj.as_ref().map(|(g, p)| Injection { gate: g, proj: p });
    let p = LoraParams { w, a: a.value(), b: b.value(), scale };
    let (y, saved) =
        nn::dora_forward(x.value(), dropped.as_ref().map(|d| &d.0), &p, magnitude.value(), injection.as_ref())?;
    let (xv, wv, av, bv, mv) =
        (x.value().clone(), w.clone(), a.value().clone(), b.value().clone(), magnitude.value().clone());
    x.tape().record(y, &inputs(&[x, a, b, magnitude], inject), move |g, needs| {
        let p = LoraParams { w: &wv, a: &av, b: &bv, scale };
        let want = Want { dx: needs[0], da: needs[1], db: needs[2] };
        let (xd, keep) = (dropped.as_ref().map(|d| &d.0), dropped.as_ref().map(|d| &d.1));
        let (gr, dm) = nn::dora_backward(g, &xv, xd, keep, &p, &mv, &saved, want, needs[3])?;
        let mut out = vec![gr.dx, gr.da, gr.db, dm];
        out.extend(inject_grads(&gr.dz, &inj, &needs[4..])?);
        Ok(out)
    })
}

/// `z + g ⊙ p`, broadcast over each sample's rows of `z` `[N, k]` (`g, p` `[S, k]`). Any
/// width `k`: the echo's bottleneck (`r`) or a module's output (`out`, the output site).
pub fn gated_injection(z: &Var, gate: &Var, proj: &Var) -> Result<Var> {
    let y = nn::gated_inject_forward(z.value(), &Injection { gate: gate.value(), proj: proj.value() })?;
    let inj = Some((gate.value().clone(), proj.value().clone()));
    z.tape().record(y, &[z, gate, proj], move |g, needs| {
        let mut out = vec![needs[0].then(|| g.clone())];
        out.extend(inject_grads(g, &inj, &needs[1..])?);
        Ok(out)
    })
}

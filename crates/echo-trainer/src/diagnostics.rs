//! Echo diagnostics (docs/method.md, "Diagnostics"): what the echo path is doing, measured on
//! a fixed probe batch (the first validation examples) every `train.diagnostics_every` steps,
//! without dropout and without recording a gradient. One `{"step", "echo"}` line of
//! `metrics.jsonl` per measurement; `echo.svg` plots them.
//!
//! Nothing here changes what a training step computes: the probe runs its own plain and echo
//! forwards on an inference tape, reading the adapters' bottleneck (or output delta) through a
//! [`Recorder`] that wraps the adapters' projector instead of touching the op kernels.

use crate::echo::{EchoPath, InjectionSite};
use crate::error::{Context, Result, TrainError};
use crate::step::StepContext;
use echo_adapters::{AdapterProjector, Adapters};
use echo_autograd::{ops, ParamStore, Tape, Var};
use echo_data::{Batch as DataBatch, Example};
use echo_model::{shifted_targets, Batch, Proj, Projector};
use echo_tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Instant;

/// What the diagnostics' errors are said to happen in.
const W: &str = "echo diagnostics";

/// Examples in the probe: few enough that a measurement costs about one validation
/// micro-batch (see docs/method.md for the measured cost).
pub const PROBE_EXAMPLES: usize = 8;

/// The probe batch: the first [`PROBE_EXAMPLES`] validation examples, right-padded. Always
/// padded, whatever `train.packing` says: packing is exact (the same outputs to f32
/// rounding) and not part of a run's identity, so a padded probe keeps the series of one run
/// comparable across a resume that switches it, and lets the echo forward cover every sample
/// in the same layout as the plain one (so with `B = 0` at the bottleneck both routes' logits
/// are the same bits).
pub struct Probe {
    /// Padded; its `lengths` (real tokens per sample) weigh each sample's `g ⊙ p`, which every
    /// token of it receives.
    batch: DataBatch,
}

impl Probe {
    /// The first `min(PROBE_EXAMPLES, val.len())` examples; `None` without any.
    pub fn new(val: &[Example], pad_id: u32) -> Option<Probe> {
        let refs: Vec<&Example> = val.iter().take(PROBE_EXAMPLES).collect();
        if refs.is_empty() {
            return None;
        }
        Some(Probe { batch: DataBatch::from_examples(&refs, pad_id) })
    }

    pub fn samples(&self) -> usize {
        self.batch.batch_size
    }
}

/// One measurement. Per-layer lists follow `target_layers`, `layer_mix` follows
/// `source_layers`. Norms are Frobenius norms of the parameters as they are at `step`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EchoDiagnostics {
    pub site: InjectionSite,
    pub probe_samples: usize,
    /// Counted (labelled, HF-shifted) positions of the probe: the KL's denominator.
    pub probe_positions: usize,
    pub target_layers: Vec<usize>,
    pub source_layers: Vec<usize>,
    /// Mean of `g` over the probe's samples, the gate's units and the layer's target modules.
    pub gate_mean: Vec<f32>,
    /// rms of `g ⊙ p` over the probe's real tokens (each token receives its sample's term),
    /// the units and the layer's target modules.
    pub inject_rms: Vec<f32>,
    /// rms of the adapter's own term at the injection site over the same elements: `A x` at
    /// the bottleneck, the adapter's output delta (LoRA `s B A x`, DoRA `y − W x`) at the
    /// output site; `x` the module's input in the echo forward.
    pub adapter_rms: Vec<f32>,
    /// `inject_rms / adapter_rms`; `None` where the adapter's term is exactly zero (a fresh
    /// `B` at the output site), where the ratio has no value.
    pub rms_ratio: Vec<Option<f32>>,
    /// `sqrt(Σ_m ‖U_m‖²)` over the layer's target modules.
    pub proj_norm: Vec<f32>,
    /// `sqrt(Σ_m ‖G_m‖²)` over the layer's target modules.
    pub gate_weight_norm: Vec<f32>,
    /// Mean of the gate biases `c_m` over the layer's target modules' units.
    pub gate_bias_mean: Vec<f32>,
    /// `‖D‖` of the trunk.
    pub trunk_norm: f32,
    /// `softmax(echo.layer_logits)`.
    pub layer_mix: Vec<f32>,
    /// Mean over the probe's counted positions of `KL(p_echo ‖ p_plain)` at temperature 1;
    /// `None` when the probe has no counted position.
    pub kl: Option<f32>,
    /// Wall-clock seconds of this measurement (its cost).
    pub seconds: f64,
}

/// A diagnostics line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoLine {
    pub step: usize,
    pub echo: EchoDiagnostics,
}

/// The adapters' projector, recording per echo-target module the sum of squares of the
/// adapter's own term at the injection site over the real tokens, then projecting as the
/// wrapped projector does (so the forward is the echo route's, unchanged).
struct Recorder<'a> {
    inner: AdapterProjector<'a>,
    adapters: &'a Adapters,
    store: &'a ParamStore,
    site: InjectionSite,
    /// Per flat row `b * T + t`: a real token (padding is not measured).
    real: &'a [bool],
    /// `(layer, proj)` -> sum of squares, f64.
    sums: HashMap<(usize, Proj), f64>,
}

impl Projector for Recorder<'_> {
    fn project(&mut self, layer: usize, proj: Proj, x: &Var, w: &Tensor) -> echo_autograd::Result<Var> {
        if let Some(sum) = self.sums.get_mut(&(layer, proj)) {
            let site = self.adapters.site(layer, proj).expect("every echo target has an adapter (EchoPath::register)");
            let tape = x.tape().clone();
            let a = tape.param(self.store, site.a);
            let term = match (self.site, site.magnitude) {
                (InjectionSite::Bottleneck, _) => ops::linear(x, &a)?,
                // Computed directly rather than as `y − W x`, which would lose the small delta
                // to cancellation against the base output.
                (InjectionSite::Output, None) => ops::scale(
                    &ops::linear(&ops::linear(x, &a)?, &tape.param(self.store, site.b))?,
                    self.adapters.config.scale(),
                )?,
                // DoRA's delta also rescales `W x` (by `m / n`), so it is the difference.
                (InjectionSite::Output, Some(_)) => {
                    let mut plain = self.adapters.projector(self.store, None, None);
                    ops::sub(&plain.project(layer, proj, x, w)?, &ops::linear(x, &tape.constant(w.clone()))?)?
                }
            };
            let width = term.shape().last();
            let v = term.value().try_to_vec_f32()?;
            *sum += v
                .chunks(width)
                .zip(self.real)
                .filter(|&(_, &r)| r)
                .flat_map(|(row, _)| row.iter().map(|&e| e as f64 * e as f64))
                .sum::<f64>();
        }
        self.inner.project(layer, proj, x, w)
    }
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.try_to_vec_f32()?)
}

fn sum_sq(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64 * x as f64).sum()
}

/// Measures the echo path on `probe` with the parameters in `store` (see [`EchoDiagnostics`]):
/// a plain forward (boundary states captured), the echo vectors, an echo forward over every
/// probe sample with the adapters' term recorded, both routes' logits at the counted
/// positions. No dropout, nothing recorded for backward, `store` untouched.
pub fn measure(ctx: &StepContext<'_>, store: &ParamStore, probe: &Probe) -> Result<EchoDiagnostics> {
    let started = Instant::now();
    let ep: &EchoPath =
        ctx.echo.ok_or_else(|| TrainError::config("echo diagnostics need the echo path (echo.enabled = true)"))?;
    let model = ctx.model;
    let data = &probe.batch;
    let (b, t) = (data.batch_size, data.seq_len);
    let batch = Batch::new(&data.input_ids, &data.attention_mask, b, t, model.config.vocab_size).context(W)?;
    let prompt: Vec<f32> = data.prompt_mask.iter().map(|&m| m as f32).collect();
    let tape = Tape::inference();
    let plain = {
        let mut proj = ctx.adapters.projector(store, None, None);
        model.forward(&tape, &batch, &mut proj, &ep.sources).context(W)?
    };
    let values = ep.aggregate(&tape, store, &plain.boundary, &prompt, b, t).context(W)?;
    let all: Vec<usize> = (0..b).collect();
    let inject = ep.injections(&tape, store, &values.trunk_u, &all).context(W)?;
    let real: Vec<bool> = data.attention_mask.iter().map(|&m| m == 1).collect();
    let mut rec = Recorder {
        inner: ctx.adapters.projector(store, None, Some(&inject)),
        adapters: ctx.adapters,
        store,
        site: ep.config.injection,
        real: &real,
        sums: ep.modules.iter().map(|m| ((m.layer, m.proj), 0.0)).collect(),
    };
    let hidden_echo = model.forward(&tape, &batch, &mut rec, &[]).context(W)?.hidden;
    let sums = rec.sums;

    let (rows, _) = shifted_targets(&data.labels, b, t);
    let kl = if rows.is_empty() {
        None
    } else {
        let plain_logits = model.logits_at(&plain.hidden, &rows).context(W)?;
        let echo_logits = model.logits_at(&hidden_echo, &rows).context(W)?;
        let n = rows.len();
        let kl = ops::kl_div(echo_logits.value(), &plain_logits, 1.0, &vec![1.0; n], n as f32).context(W)?;
        Some(kl.value().item().context(W)?)
    };

    // Per target layer, in the config's order, the modules' numbers pooled.
    let tokens: f64 = data.lengths.iter().sum::<usize>() as f64;
    let mut layers: Vec<usize> = Vec::new();
    #[derive(Default)]
    struct Acc {
        gate_sum: f64,
        gate_n: f64,
        inject_sq: f64,
        adapter_sq: f64,
        elems: f64,
        proj_sq: f64,
        gate_w_sq: f64,
        bias_sum: f64,
        bias_n: f64,
    }
    let mut acc: HashMap<usize, Acc> = HashMap::new();
    for m in &ep.modules {
        if !layers.contains(&m.layer) {
            layers.push(m.layer);
        }
        let a = acc.entry(m.layer).or_default();
        let (g, p) = &inject.modules[&(m.layer, m.proj)];
        let width = g.shape().last();
        let (g, p) = (host(g.value())?, host(p.value())?);
        a.gate_sum += g.iter().map(|&x| x as f64).sum::<f64>();
        a.gate_n += g.len() as f64;
        // Sample s's term reaches each of its real tokens: weight it by their count.
        for ((gs, ps), &n) in g.chunks(width).zip(p.chunks(width)).zip(&data.lengths) {
            a.inject_sq += n as f64 * gs.iter().zip(ps).map(|(&g, &p)| (g as f64 * p as f64).powi(2)).sum::<f64>();
        }
        a.adapter_sq += sums[&(m.layer, m.proj)];
        a.elems += tokens * width as f64;
        a.proj_sq += sum_sq(&host(store.value(m.proj_w))?);
        a.gate_w_sq += sum_sq(&host(store.value(m.gate_w))?);
        let bias = host(store.value(m.gate_b))?;
        a.bias_sum += bias.iter().map(|&x| x as f64).sum::<f64>();
        a.bias_n += bias.len() as f64;
    }
    let per = |f: &dyn Fn(&Acc) -> f64| layers.iter().map(|l| f(&acc[l]) as f32).collect::<Vec<f32>>();
    let inject_rms = per(&|a| (a.inject_sq / a.elems).sqrt());
    let adapter_rms = per(&|a| (a.adapter_sq / a.elems).sqrt());
    let rms_ratio = layers
        .iter()
        .map(|l| {
            let a = &acc[l];
            (a.adapter_sq > 0.0).then(|| ((a.inject_sq / a.adapter_sq).sqrt()) as f32)
        })
        .collect();
    let logits = host(store.value(ep.layer_logits))?;
    let top = logits.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let exp: Vec<f64> = logits.iter().map(|&x| (x as f64 - top).exp()).collect();
    let z: f64 = exp.iter().sum();
    Ok(EchoDiagnostics {
        site: ep.config.injection,
        probe_samples: b,
        probe_positions: rows.len(),
        target_layers: layers.clone(),
        source_layers: ep.sources.clone(),
        gate_mean: per(&|a| a.gate_sum / a.gate_n),
        inject_rms,
        adapter_rms,
        rms_ratio,
        proj_norm: per(&|a| a.proj_sq.sqrt()),
        gate_weight_norm: per(&|a| a.gate_w_sq.sqrt()),
        gate_bias_mean: per(&|a| a.bias_sum / a.bias_n),
        trunk_norm: sum_sq(&host(store.value(ep.trunk))?).sqrt() as f32,
        layer_mix: exp.iter().map(|e| (e / z) as f32).collect(),
        kl,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Whether a diagnostics line is due after `step` (0: before training) under `every`
/// (`None`: diagnostics off), `last` the run's last step: before training, every `every`
/// steps (`0`: none between) and at the end.
pub fn due(every: Option<usize>, step: usize, last: bool) -> bool {
    match every {
        None => false,
        Some(n) => step == 0 || last || (n > 0 && step.is_multiple_of(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_before_training_every_n_and_at_the_end() {
        let steps = |every| (0..=12).filter(|&s| due(every, s, s == 12)).collect::<Vec<_>>();
        assert_eq!(steps(Some(5)), [0, 5, 10, 12]);
        assert_eq!(steps(Some(0)), [0, 12], "0 between: only before training and at the end");
        assert!(steps(None).is_empty());
    }
}

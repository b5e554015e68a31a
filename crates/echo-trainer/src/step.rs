//! One Echo-LoRA training step (docs/method.md section 3): plain forward, echo from its
//! boundary states, echo forward over the routed samples, CE on each sample's route, masked
//! distillation from the (detached) echo route to the plain route, one backward.
//! With the echo path absent or no sample routed, this is exactly a plain LoRA/DoRA step.

use crate::echo::EchoPath;
use crate::error::{Result, TrainError};
use crate::layout::Samples;
use echo_adapters::Adapters;
use echo_autograd::{ops, ParamStore, Tape, Var};
use echo_data::Batch as DataBatch;
use echo_model::{shifted_targets, Llama};
use echo_tensor::{Rng, Tensor};

/// What one step takes: a batch as the data pipeline makes it (`echo_data::Batch`, right-padded
/// or packed; `Batch::from_arrays` makes one from HF-style arrays), and which of its samples
/// take the echo route. The echo pools over the batch's `prompt_mask`.
pub struct StepInput<'a> {
    pub batch: &'a DataBatch,
    /// Per sample (example): takes the echo route. Ignored without an echo path.
    pub route: &'a [bool],
}

/// What a step measured. Losses are the unscaled values of this batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepStats {
    pub loss: f32,
    /// L_ce over all counted positions (each on its sample's route).
    pub loss_ce: f32,
    /// CE of the plain route's counted positions alone (divided by N), for monitoring.
    pub ce_plain: f32,
    /// CE of the echo route's counted positions alone (divided by N).
    pub ce_echo: f32,
    /// L_kd before the factor `lambda_kd * tau^2`.
    pub loss_kd: f32,
    /// N: counted positions.
    pub tokens: usize,
    /// N_r: counted positions of routed samples.
    pub routed_tokens: usize,
    pub routed_samples: usize,
}

/// Full-vocabulary outputs for parity checks (computed without recording).
pub struct Trace {
    pub logits_plain: Tensor,
    pub logits_echo: Option<Tensor>,
    pub echo: Option<Tensor>,
    pub pooled: Vec<Tensor>,
    pub layer_weights: Option<Tensor>,
    pub trunk_u: Option<Tensor>,
}

pub struct StepContext<'a> {
    pub model: &'a Llama,
    pub adapters: &'a Adapters,
    pub echo: Option<&'a EchoPath>,
}

/// The loss terms a step reports, read together once the forward is built: one
/// concatenation and one read (on a GPU, the step's single wait for logging).
#[derive(Default)]
struct Readback {
    ce_plain: Option<Tensor>,
    ce_echo: Option<Tensor>,
    loss_kd: Option<Tensor>,
}

impl Readback {
    fn fill(&self, stats: &mut StepStats, loss: &Tensor) -> echo_tensor::Result<()> {
        let terms = [&self.ce_plain, &self.ce_echo, &self.loss_kd];
        let mut scalars: Vec<&Tensor> = vec![loss];
        scalars.extend(terms.iter().filter_map(|t| t.as_ref()));
        let flat = scalars.iter().map(|t| t.reshape([1])).collect::<echo_tensor::Result<Vec<_>>>()?;
        let values = Tensor::concat(&flat.iter().collect::<Vec<_>>(), 0)?.try_to_vec_f32()?;
        let mut values = values.into_iter();
        stats.loss = values.next().expect("the loss is read");
        for (slot, term) in [&mut stats.ce_plain, &mut stats.ce_echo, &mut stats.loss_kd].into_iter().zip(terms) {
            if term.is_some() {
                *slot = values.next().expect("one value per term");
            }
        }
        Ok(())
    }
}

fn all_logits(model: &Llama, hidden: &Var) -> echo_autograd::Result<Tensor> {
    let _g = hidden.tape().no_grad();
    let (b, t) = (hidden.dims()[0], hidden.dims()[1]);
    let rows: Vec<usize> = (0..b * t).collect();
    let l = model.logits_at(hidden, &rows).map_err(|e| echo_autograd::Error::Invalid(e.to_string()))?;
    Ok(l.value().reshape([b, t, model.config.vocab_size])?)
}

/// Runs forward and backward of one (micro-)batch, adding `loss_scale * dL/dθ` into `store`.
/// `dropout_rng` enables adapter dropout (training). With `trace`, also returns full logits
/// of both routes over every sample (the echo forward then covers all samples, as the
/// parity fixture does; the loss still uses only the routed ones).
pub fn forward_backward(
    ctx: &StepContext<'_>,
    input: &StepInput<'_>,
    store: &mut ParamStore,
    mut dropout_rng: Option<&mut Rng>,
    loss_scale: f32,
    trace: bool,
) -> Result<(StepStats, Option<Trace>)> {
    let data = input.batch;
    let (b, t) = (data.batch_size, data.seq_len);
    let model = ctx.model;
    let samples = Samples::from_input(data.packed.as_deref(), b, t)?;
    if trace && samples.is_packed() {
        return Err(TrainError::Batch("tracing (the parity command) needs a padded batch".into()));
    }
    let vocab = model.config.vocab_size;
    let batch = samples.model_batch(&data.input_ids, &data.attention_mask, vocab)?;
    let lens = [data.labels.len(), data.prompt_mask.len()];
    if lens != [b * t; 2] || input.route.len() != samples.count() {
        return Err(TrainError::Batch(format!(
            "labels ({}), prompt mask ({}) or route ({}) do not match the batch [{b}, {t}] of {} samples",
            data.labels.len(),
            data.prompt_mask.len(),
            input.route.len(),
            samples.count()
        )));
    }
    let labels = samples.labels(&data.labels);
    let (rows, targets) = shifted_targets(&labels, b, t);
    let n = rows.len();
    if n == 0 {
        return Err(TrainError::Batch(
            "the batch has no labelled position (every label is -100 after the shift)".into(),
        ));
    }
    let echo = ctx.echo.filter(|_| input.route.iter().any(|&r| r) || trace);
    let routed: Vec<usize> =
        if echo.is_some() { (0..samples.count()).filter(|&i| input.route[i]).collect() } else { vec![] };
    let is_routed = |flat: usize| echo.is_some() && input.route[samples.of(flat)];
    let (mut rows_p, mut tgt_p, mut rows_r, mut tgt_r) = (vec![], vec![], vec![], vec![]);
    for (&r, &tg) in rows.iter().zip(&targets) {
        if is_routed(r) {
            rows_r.push(r);
            tgt_r.push(tg);
        } else {
            rows_p.push(r);
            tgt_p.push(tg);
        }
    }
    let tape = Tape::new();
    let mut stats =
        StepStats { tokens: n, routed_tokens: rows_r.len(), routed_samples: routed.len(), ..Default::default() };
    let mut tr = None;
    let mut read = Readback::default();
    let loss = {
        let capture = echo.map(|e| e.sources.clone()).unwrap_or_default();
        let plain = {
            let mut proj = ctx.adapters.projector(store, dropout_rng.as_deref_mut(), None);
            model.forward(&tape, &batch, &mut proj, &capture)?
        };
        let mut terms: Vec<Var> = Vec::new();
        if !rows_p.is_empty() {
            let logits = model.logits_at(&plain.hidden, &rows_p)?;
            let ce = ops::cross_entropy(&logits, &tgt_p, n as f32)?;
            read.ce_plain = Some(ce.value().clone());
            terms.push(ce);
        }
        let mut trace_echo = None;
        if let Some(ep) = echo {
            let pmask: Vec<f32> = data.prompt_mask.iter().map(|&m| m as f32).collect();
            let values = match samples.pooling_window(&pmask) {
                None => ep.aggregate(&tape, store, &plain.boundary, &pmask, b, t),
                // Packed: each sample's prompt gathered into a row of its own, `[S, width, d]`.
                Some((gather, mask, width)) => {
                    let d = model.config.hidden_size;
                    let windows = plain
                        .boundary
                        .iter()
                        .map(|h| {
                            ops::reshape(
                                &ops::index_select(&ops::reshape(h, [b * t, d])?, &gather)?,
                                [samples.count(), width, d],
                            )
                        })
                        .collect::<echo_autograd::Result<Vec<Var>>>()?;
                    ep.aggregate(&tape, store, &windows, &mask, samples.count(), width)
                }
            }?;
            // The echo forward runs over the routed samples (all of them when tracing).
            let echo_rows: Vec<usize> = if trace { (0..b).collect() } else { routed.clone() };
            let sub = samples.select(&data.input_ids, &data.attention_mask, &echo_rows);
            let mut inject = ep.injections(&tape, store, &values.trunk_u, &echo_rows)?;
            if sub.samples.is_packed() {
                // One injection row per token of the sub-batch (its sample's), since packed
                // samples have different lengths.
                let rows = sub.samples.token_rows();
                for (g, p) in inject.modules.values_mut() {
                    *g = ops::index_select(g, &rows)?;
                    *p = ops::index_select(p, &rows)?;
                }
            }
            let sub_batch = sub.samples.model_batch(&sub.ids, &sub.attention_mask, vocab)?;
            let hidden_echo = {
                let mut proj = ctx.adapters.projector(store, dropout_rng, Some(&inject));
                model.forward(&tape, &sub_batch, &mut proj, &[])?.hidden
            };
            if !rows_r.is_empty() {
                let pos: Vec<usize> = rows_r
                    .iter()
                    .map(|&r| {
                        let s = samples.of(r);
                        let k = echo_rows.iter().position(|&e| e == s).expect("routed sample in the echo batch");
                        sub.position(k, samples.start(s), r)
                    })
                    .collect();
                let logits_echo = model.logits_at(&hidden_echo, &pos)?;
                let ce = ops::cross_entropy(&logits_echo, &tgt_r, n as f32)?;
                read.ce_echo = Some(ce.value().clone());
                terms.push(ce);
                let c = &ep.config;
                let student = model.logits_at(&plain.hidden, &rows_r)?;
                let kd =
                    ops::kl_div(logits_echo.value(), &student, c.tau, &vec![1.0; rows_r.len()], rows_r.len() as f32)?;
                read.loss_kd = Some(kd.value().clone());
                if c.lambda_kd > 0.0 {
                    terms.push(ops::scale(&kd, c.lambda_kd * c.tau * c.tau)?);
                }
            }
            if trace {
                trace_echo = Some((all_logits(model, &hidden_echo)?, values));
            }
        }
        if trace {
            let (le, values) = match trace_echo {
                Some((l, v)) => (Some(l), Some(v)),
                None => (None, None),
            };
            tr = Some(Trace {
                logits_plain: all_logits(model, &plain.hidden)?,
                logits_echo: le,
                echo: values.as_ref().map(|v| v.echo.value().clone()),
                pooled: values
                    .as_ref()
                    .map(|v| v.pooled.iter().map(|p| p.value().clone()).collect())
                    .unwrap_or_default(),
                layer_weights: values.as_ref().map(|v| v.layer_weights.value().clone()),
                trunk_u: values.as_ref().map(|v| v.trunk_u.value().clone()),
            });
        }
        let mut total = terms[0].clone();
        for t in &terms[1..] {
            total = ops::add(&total, t)?;
        }
        total
    };
    read.fill(&mut stats, loss.value())?;
    stats.loss_ce = stats.ce_plain + stats.ce_echo;
    let scaled = if loss_scale == 1.0 { loss } else { ops::scale(&loss, loss_scale)? };
    tape.backward(&scaled, store)?;
    Ok((stats, tr))
}

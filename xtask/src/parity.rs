//! `cargo xtask logits`: the parity command. Reads a batch in the layout of the fixtures'
//! `reference.safetensors` and writes what we compute for it, so any other implementation
//! can be compared with ours (and ours with the fixtures).

use anyhow::{bail, Context, Result};
use echo_adapters::{load_peft, Adapters};
use echo_autograd::{ParamStore, Tape};
use echo_model::weights::{save_safetensors, SaveTensor, WeightFiles};
use echo_model::{Batch, Llama, Plain};
use echo_trainer::parity::load_echo_dir;
use echo_trainer::{forward_backward, StepContext, StepInput};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct LogitsArgs {
    /// HF model folder (or `smollm2`).
    #[arg(long)]
    model: String,
    /// Input: int64 `input_ids` [B,T], `attention_mask` [B,T], optional `labels` [B,T] and `route` [B].
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors: `logits` (or, with --echo, `logits_plain` and `logits_echo`), `loss`, `grad.*`.
    #[arg(long)]
    out: PathBuf,
    /// A PEFT adapter folder (LoRA or DoRA) to apply.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Also write the gradient of the loss w.r.t. every adapter (and echo) tensor as `grad.<name>`.
    #[arg(long)]
    grads: bool,
    /// Run one Echo-LoRA step: DIR holds `echo-config.json` and `echo-init.safetensors`.
    #[arg(long)]
    echo: Option<PathBuf>,
}

pub fn run(a: LogitsArgs) -> Result<()> {
    let model = Llama::load(&crate::model::resolve_model(&a.model)?)?;
    let input = WeightFiles::open_files(std::slice::from_ref(&a.input))?;
    let (ids, shape) = input.i64_tensor("input_ids")?;
    if shape.len() != 2 {
        bail!("{}: input_ids must be [B, T], got {shape:?}", a.input.display());
    }
    let (b, t) = (shape[0], shape[1]);
    let (mask, mshape) = input.i64_tensor("attention_mask")?;
    if mshape != shape {
        bail!("{}: attention_mask has shape {mshape:?}, input_ids {shape:?}", a.input.display());
    }
    let labels = if input.contains("labels") { Some(input.i64_tensor("labels")?.0) } else { None };
    if a.grads && labels.is_none() {
        bail!("--grads needs `labels` in {}", a.input.display());
    }
    let mut store = ParamStore::new();
    let adapters = match &a.adapter {
        Some(dir) => Some(load_peft(dir, &model, &mut store)?),
        None => None,
    };
    let mut out: Vec<(String, SaveTensor)> = Vec::new();
    let Some(labels) = labels else {
        // Logits only.
        let batch = Batch::new(&ids, &mask, b, t, model.config.vocab_size)?;
        let tape = Tape::inference();
        let hidden = match &adapters {
            Some(ad) => model.forward(&tape, &batch, &mut ad.projector(&store, None, None), &[])?.hidden,
            None => model.forward(&tape, &batch, &mut Plain, &[])?.hidden,
        };
        let logits = model.logits_at(&hidden, &(0..b * t).collect::<Vec<_>>())?;
        out.push(("logits".into(), SaveTensor::F32(logits.value().to_vec_f32(), vec![b, t, model.config.vocab_size])));
        save_safetensors(&a.out, out, None)?;
        println!("wrote logits [{b}, {t}, {}] to {}", model.config.vocab_size, a.out.display());
        return Ok(());
    };
    let adapters = match adapters {
        Some(ad) => ad,
        // The base model as an adapter set with no sites: the projector is then the plain one.
        None => Adapters::init(
            echo_adapters::AdapterConfig {
                method: echo_adapters::Method::Lora,
                r: 1,
                alpha: 1.0,
                use_rslora: false,
                dropout: 0.0,
                targets: vec![],
                layers: None,
            },
            &model,
            &mut store,
            &mut echo_tensor::Rng::new(0),
        )?,
    };
    let (echo, route) = match &a.echo {
        Some(dir) => {
            if a.adapter.is_none() {
                bail!("--echo needs --adapter");
            }
            let (path, cfg_route) = load_echo_dir(dir, &model, &adapters, &mut store)?;
            let route: Vec<bool> = if input.contains("route") {
                input.i64_tensor("route")?.0.iter().map(|&r| r != 0).collect()
            } else {
                cfg_route.with_context(|| {
                    format!("no `route` in {} nor in {}/echo-config.json", a.input.display(), dir.display())
                })?
            };
            (Some(path), route)
        }
        None => (None, vec![false; b]),
    };
    let ctx = StepContext { model: &model, adapters: &adapters, echo: echo.as_ref() };
    let data = echo_data::Batch::from_arrays(&ids, &mask, &labels, b, t, None)
        .with_context(|| format!("{}: input_ids / attention_mask / labels", a.input.display()))?;
    let step_in = StepInput { batch: &data, route: &route };
    let (stats, trace) = forward_backward(&ctx, &step_in, &mut store, None, 1.0, true)?;
    let trace = trace.expect("trace requested");
    let v = model.config.vocab_size;
    let f32t = |x: &echo_tensor::Tensor| SaveTensor::from_tensor(x);
    let scalar = |x: f32| SaveTensor::F32(vec![x], vec![]);
    if echo.is_some() {
        out.push(("logits_plain".into(), f32t(&trace.logits_plain)));
        out.push(("logits_echo".into(), f32t(trace.logits_echo.as_ref().expect("echo ran"))));
        out.push(("echo".into(), f32t(trace.echo.as_ref().expect("echo ran"))));
        out.push(("loss_ce".into(), scalar(stats.loss_ce)));
        out.push(("loss_kd".into(), scalar(stats.loss_kd)));
        if let Some(w) = &trace.layer_weights {
            out.push(("aux.layer_weights".into(), f32t(w)));
        }
        if let Some(u) = &trace.trunk_u {
            out.push(("aux.trunk_u".into(), f32t(u)));
        }
    } else {
        out.push(("logits".into(), SaveTensor::F32(trace.logits_plain.to_vec_f32(), vec![b, t, v])));
    }
    out.push(("loss".into(), scalar(stats.loss)));
    if a.grads {
        let mut names = adapters.tensors();
        if let Some(e) = &echo {
            names.extend(e.param_ids().into_iter().map(|id| (id, store.get(id).name.clone())));
        }
        for (id, name) in names {
            let g =
                store.grad(id).cloned().unwrap_or_else(|| echo_tensor::Tensor::zeros(store.value(id).shape().clone()));
            out.push((format!("grad.{name}"), f32t(&g)));
        }
    }
    let n = out.len();
    save_safetensors(
        &a.out,
        out,
        Some(HashMap::from([("generator".to_string(), "echo-lora xtask logits".to_string())])),
    )?;
    println!("wrote {n} tensors to {} (loss {:.6} over {} tokens)", a.out.display(), stats.loss, stats.tokens);
    Ok(())
}

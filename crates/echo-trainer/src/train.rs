//! The training loop: data, adapters and echo path set up from a [`RunConfig`], AdamW over
//! token-weighted micro-batches, clipping, a schedule, periodic validation (keeping the best
//! adapter by validation loss, as the LLM-Adapters recipe does), checkpoints, metrics.

use crate::checkpoint::{self, TrainState};
use crate::config::RunConfig;
use crate::echo::EchoPath;
use crate::metrics::{Metrics, StepLine};
use crate::optim::{clip_factor, global_grad_norm, lr_at, AdamW, AdamWConfig};
use crate::step::{forward_backward, StepContext, StepInput};
use echo_adapters::{load_peft, save_peft, Adapters};
use echo_autograd::{ParamId, ParamStore, Tape};
use echo_data::{
    Batch as DataBatch, BatchConfig, Batcher, EncodeConfig, Example, Overlong, Progress, Template, Tokenizer,
};
use echo_model::{Batch, Llama};
use echo_tensor::Rng;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue from `out_dir/checkpoint`.
    pub resume: bool,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
    /// Stop after this many optimizer steps in this invocation (testing resume).
    pub stop_after: Option<usize>,
}

/// What a run reports at the end (also written to `summary.json`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunSummary {
    pub steps: usize,
    pub total_steps: usize,
    pub train_examples: usize,
    pub val_examples: usize,
    pub first_loss: Option<f32>,
    pub last_loss: Option<f32>,
    pub first_val_loss: Option<f32>,
    pub best_val_loss: Option<f32>,
    pub best_step: Option<usize>,
    pub wall_seconds: f64,
    pub tokens_per_second: f64,
    pub out_dir: PathBuf,
    pub adapter_dir: PathBuf,
    /// Where the run computed (`cpu`, `cuda:0`, ...).
    pub device: String,
}

/// The loaded data: train and validation examples.
pub struct Data {
    pub train: Vec<Example>,
    pub val: Vec<Example>,
    pub pad_id: u32,
}

/// Reads, tokenises and splits the data as `[data]` says.
pub fn load_data(cfg: &RunConfig, tok: &Tokenizer, progress: bool) -> Result<Data, String> {
    let d = &cfg.data;
    let template = Template::by_name(&d.template).map_err(|e| e.to_string())?;
    let enc = EncodeConfig {
        cutoff: Some(d.cutoff),
        overlong: if d.overlong == "drop" { Overlong::Drop } else { Overlong::Truncate },
        train_on_inputs: d.train_on_inputs,
    };
    let prog = if progress { Progress::Auto } else { Progress::Hidden };
    let examples = if d.train == ["synthetic"] {
        let spec = echo_data::SyntheticSpec { count: d.synthetic_records, seed: cfg.train.seed, ..Default::default() };
        let records = echo_data::synthetic_records(&spec).map_err(|e| e.to_string())?;
        echo_data::encode_records(tok, &template, &records, &enc, Path::new("synthetic"), 0)
            .map_err(|e| e.to_string())?
            .examples
    } else {
        let weights = if d.weights.is_empty() { vec![1.0; d.train.len()] } else { d.weights.clone() };
        let sources = d
            .train
            .iter()
            .zip(weights)
            .map(|(p, w)| echo_data::MixSource { path: PathBuf::from(p), weight: w })
            .collect();
        let spec = echo_data::MixSpec { sources, total: None, seed: cfg.train.seed };
        let cache = echo_data::Cache::user_default()?;
        echo_data::load_mix(&spec, tok, &template, &enc, Some(&cache), prog).map_err(|e| e.to_string())?.examples
    };
    if examples.len() <= d.val_count {
        return Err(format!(
            "data: {} examples cannot leave data.val_count = {} for validation and some for training",
            examples.len(),
            d.val_count
        ));
    }
    let (train, val) = echo_data::split_validation(examples, d.val_count, cfg.train.seed).map_err(|e| e.to_string())?;
    Ok(Data { train, val, pad_id: tok.pad_id() })
}

/// A data batch as the step wants it.
struct Arrays {
    ids: Vec<i64>,
    mask: Vec<i64>,
    labels: Vec<i64>,
    prompt: Vec<f32>,
    batch: usize,
    seq: usize,
}

fn arrays(b: &DataBatch) -> Arrays {
    Arrays {
        ids: b.input_ids.iter().map(|&x| x as i64).collect(),
        mask: b.attention_mask.iter().map(|&x| x as i64).collect(),
        labels: b.labels.clone(),
        prompt: b.prompt_mask.iter().map(|&x| x as f32).collect(),
        batch: b.batch_size,
        seq: b.seq_len,
    }
}

/// Counted positions under the HF shift.
fn counted(labels: &[i64], batch: usize, seq: usize) -> usize {
    echo_model::shifted_targets(labels, batch, seq).0.len()
}

/// Mean validation loss of the deployed (plain) route over `val`, batched by `micro`.
pub fn validation_loss(
    model: &Llama,
    adapters: &Adapters,
    store: &ParamStore,
    val: &[Example],
    pad_id: u32,
    micro: usize,
) -> Result<Option<f32>, String> {
    let (mut sum, mut count) = (0.0f64, 0usize);
    for chunk in val.chunks(micro.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let a = arrays(&DataBatch::from_examples(&refs, pad_id));
        let n = counted(&a.labels, a.batch, a.seq);
        if n == 0 {
            continue;
        }
        let batch = Batch::new(&a.ids, &a.mask, a.batch, a.seq, model.config.vocab_size).map_err(|e| e.to_string())?;
        let tape = Tape::inference();
        let mut proj = adapters.projector(store, None, None);
        let hidden = model.forward(&tape, &batch, &mut proj, &[]).map_err(|e| e.to_string())?.hidden;
        let (loss, n) = model.lm_loss(&hidden, &a.labels, &batch).map_err(|e| e.to_string())?;
        sum += loss.value().item().map_err(|e| e.to_string())? as f64 * n as f64;
        count += n;
    }
    Ok((count > 0).then(|| (sum / count as f64) as f32))
}

/// Trains as `cfg` says on the model in `model_dir`, writing into `out_dir`.
pub fn train(cfg: &RunConfig, model_dir: &Path, out_dir: &Path, opts: &RunOptions) -> Result<RunSummary, String> {
    let started = Instant::now();
    let (device, notice) = crate::device::resolve(&cfg.train.device)?;
    println!("{notice}");
    let model = Llama::load_on(model_dir, device).map_err(|e| e.to_string())?;
    let tok = Tokenizer::from_dir(model_dir).map_err(|e| e.to_string())?;
    let data = load_data(cfg, &tok, opts.progress)?;
    let t = &cfg.train;
    let n_layers = model.config.num_hidden_layers;
    // The device is where a run computes, not what it computes: it is left out of the config
    // a checkpoint must match, so a run may be resumed on another device.
    let mut identity = cfg.clone();
    identity.train.device = crate::config::TrainSection::default().device;
    let config_toml = toml::to_string(&identity).map_err(|e| e.to_string())?;

    let mut batcher = Batcher::new(
        data.train.clone(),
        data.pad_id,
        BatchConfig {
            batch_size: t.batch_size,
            seed: t.seed,
            shuffle: true,
            bucket: cfg.data.bucket_by_length.then_some(8),
            drop_last: false,
        },
    )
    .map_err(|e| e.to_string())?;
    let per_epoch = batcher.batches_per_epoch();
    let total_steps = if t.max_steps > 0 { t.max_steps } else { t.epochs * per_epoch };

    let mut store = ParamStore::new();
    let ckpt_dir = out_dir.join("checkpoint");
    let resumed = if opts.resume { Some(checkpoint::load(&ckpt_dir)?) } else { None };
    let adapters = match &resumed {
        Some(_) => load_peft(&checkpoint::adapter_dir(&ckpt_dir), &model, &mut store).map_err(|e| e.to_string())?,
        None => match &cfg.adapter.from {
            Some(dir) => load_peft(Path::new(dir), &model, &mut store).map_err(|e| format!("adapter.from: {e}"))?,
            None => Adapters::init(
                cfg.adapter_config(n_layers)?,
                &model,
                &mut store,
                &mut Rng::derive(t.seed, "adapter-init"),
            )
            .map_err(|e| e.to_string())?,
        },
    };
    let echo = match cfg.echo_config(n_layers)? {
        None => None,
        Some(ec) => {
            let c = &model.config;
            Some(match &resumed {
                Some(l) => EchoPath::register(
                    ec,
                    &adapters,
                    n_layers,
                    c.hidden_size,
                    c.rms_norm_eps,
                    &mut store,
                    |name, _| {
                        l.echo
                            .get(name)
                            .cloned()
                            .ok_or_else(|| format!("{}: checkpoint has no `{name}`", ckpt_dir.display()))
                    },
                )?,
                None => EchoPath::init(
                    ec,
                    &adapters,
                    n_layers,
                    c.hidden_size,
                    c.rms_norm_eps,
                    &mut store,
                    &mut Rng::derive(t.seed, "echo-init"),
                )?,
            })
        }
    };
    // Adapter and echo parameters are made on the host (seeded, as on the CPU) and moved to
    // the run's device once, in f32.
    let mut store = store.to_device(device).map_err(|e| e.to_string())?;
    let mut trainable: Vec<ParamId> = adapters.tensors().into_iter().map(|(id, _)| id).collect();
    let echo_ids = echo.as_ref().map(|e| e.param_ids()).unwrap_or_default();
    trainable.extend(&echo_ids);

    let mut adam =
        AdamW::new(AdamWConfig { beta1: t.beta1, beta2: t.beta2, eps: t.adam_eps, weight_decay: t.weight_decay });
    let mut state = TrainState {
        step: 0,
        position: Default::default(),
        dropout_rng: Rng::derive(t.seed, "dropout").state(),
        routing_rng: Rng::derive(t.seed, "routing").state(),
        adam_step: 0,
        best_val_loss: None,
        best_step: None,
        config_toml: config_toml.clone(),
    };
    if let Some(l) = resumed {
        if l.state.config_toml != config_toml {
            return Err(format!("{}: the checkpoint was written under a different config; resume with the same config or start a new output dir", ckpt_dir.display()));
        }
        adam.state = l.adam;
        state = l.state;
        batcher.seek(state.position).map_err(|e| e.to_string())?;
    }
    let mut dropout_rng = Rng::from_state(state.dropout_rng);
    let mut routing_rng = Rng::from_state(state.routing_rng);
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let mut metrics = Metrics::open(&out_dir.join("metrics.jsonl"), opts.resume)?;
    let base_name = model_dir.to_string_lossy().into_owned();
    let ctx = StepContext { model: &model, adapters: &adapters, echo: echo.as_ref() };

    let bar = if opts.progress { ProgressBar::new(total_steps as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} step, ETA {eta} | {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_position(state.step as u64);
    let (mut first_loss, mut last_loss, mut first_val) = (None, None, None);
    let (mut tokens_seen, mut compute_secs) = (0usize, 0.0f64);
    let stop_at = opts.stop_after.map(|n| (state.step + n).min(total_steps)).unwrap_or(total_steps);
    if state.step == 0 {
        first_val = validation_loss(&model, &adapters, &store, &data.val, data.pad_id, t.micro_batch_size)?;
        metrics.eval(0, first_val)?;
    }
    while state.step < stop_at {
        let step_start = Instant::now();
        let batch = batcher.next_batch();
        let total_counted = counted(&batch.labels, batch.batch_size, batch.seq_len);
        let mut agg = crate::StepStats::default();
        let mut step_tokens = 0;
        for rows in batch.example_indices.chunks(t.micro_batch_size) {
            let refs: Vec<&Example> = rows.iter().map(|&i| &batcher.examples()[i]).collect();
            let mb = DataBatch::from_examples(&refs, data.pad_id);
            let a = arrays(&mb);
            let n = counted(&a.labels, a.batch, a.seq);
            if n == 0 {
                continue;
            }
            let route: Vec<bool> =
                (0..a.batch).map(|_| echo.is_some() && routing_rng.bernoulli(cfg.echo.p_route)).collect();
            let input = StepInput {
                input_ids: &a.ids,
                attention_mask: &a.mask,
                labels: &a.labels,
                batch: a.batch,
                seq: a.seq,
                route: &route,
                prompt_mask: Some(&a.prompt),
            };
            let w = n as f32 / total_counted as f32;
            let (s, _) = forward_backward(&ctx, &input, &mut store, Some(&mut dropout_rng), w, false)?;
            if !s.loss.is_finite() {
                return Err(format!(
                    "step {}: the loss is {} (non-finite); stopping. The last checkpoint ({}) is untouched.",
                    state.step + 1,
                    s.loss,
                    ckpt_dir.display()
                ));
            }
            agg.loss += w * s.loss;
            agg.ce_plain += w * s.ce_plain;
            agg.ce_echo += w * s.ce_echo;
            agg.loss_kd += w * s.loss_kd;
            agg.tokens += s.tokens;
            agg.routed_tokens += s.routed_tokens;
            agg.routed_samples += s.routed_samples;
            step_tokens += mb.tokens();
        }
        let grad_norm = global_grad_norm(&store, &trainable)?;
        if !grad_norm.is_finite() {
            return Err(format!(
                "step {}: the gradient norm is {grad_norm} (non-finite); stopping. The last checkpoint ({}) is untouched.",
                state.step + 1,
                ckpt_dir.display()
            ));
        }
        let clip = clip_factor(grad_norm, t.max_grad_norm);
        let lr = lr_at(t.schedule, t.lr, state.step, t.warmup_steps, total_steps);
        adam.step(&mut store, &trainable, lr, clip)?;
        store.zero_grad();
        state.step += 1;
        state.position = batcher.position();
        let secs = step_start.elapsed().as_secs_f64();
        tokens_seen += step_tokens;
        compute_secs += secs;
        first_loss.get_or_insert(agg.loss);
        last_loss = Some(agg.loss);
        metrics.step(&StepLine {
            step: state.step,
            epoch: state.position.epoch,
            loss: agg.loss,
            ce_plain: agg.ce_plain,
            ce_echo: agg.ce_echo,
            kd: agg.loss_kd,
            lr,
            grad_norm,
            tokens: step_tokens,
            tokens_per_s: step_tokens as f64 / secs.max(1e-9),
        })?;
        bar.set_position(state.step as u64);
        bar.set_message(format!("loss {:.4} | {:.0} tok/s", agg.loss, tokens_seen as f64 / compute_secs.max(1e-9)));

        let last = state.step == total_steps;
        if (t.eval_every > 0 && state.step % t.eval_every == 0) || last {
            let v = validation_loss(&model, &adapters, &store, &data.val, data.pad_id, t.micro_batch_size)?;
            metrics.eval(state.step, v)?;
            if let Some(v) = v {
                if state.best_val_loss.is_none_or(|b| v < b) {
                    state.best_val_loss = Some(v);
                    state.best_step = Some(state.step);
                    save_peft(&out_dir.join("best-adapter"), &adapters, &store, &base_name)
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        if (t.save_every > 0 && state.step % t.save_every == 0) || last || state.step == stop_at {
            state.dropout_rng = dropout_rng.state();
            state.routing_rng = routing_rng.state();
            state.adam_step = adam.state.step;
            checkpoint::save(&ckpt_dir, &state, &adapters, &echo_ids, &adam.state, &store, &base_name)?;
        }
    }
    bar.finish_and_clear();
    let adapter_dir = out_dir.join("adapter");
    save_peft(&adapter_dir, &adapters, &store, &base_name).map_err(|e| e.to_string())?;
    crate::metrics::plot_svg(&out_dir.join("metrics.jsonl"), &out_dir.join("loss.svg"))?;
    let summary = RunSummary {
        steps: state.step,
        total_steps,
        train_examples: data.train.len(),
        val_examples: data.val.len(),
        first_loss,
        last_loss,
        first_val_loss: first_val,
        best_val_loss: state.best_val_loss,
        best_step: state.best_step,
        wall_seconds: started.elapsed().as_secs_f64(),
        tokens_per_second: tokens_seen as f64 / compute_secs.max(1e-9),
        out_dir: out_dir.to_path_buf(),
        adapter_dir,
        device: device.to_string(),
    };
    let json = serde_json::to_string_pretty(&summary).expect("summary serialises");
    echo_model::weights::write_atomic(&out_dir.join("summary.json"), json.as_bytes()).map_err(|e| e.to_string())?;
    Ok(summary)
}

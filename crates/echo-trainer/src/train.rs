//! The training loop. [`train`] reads top to bottom as the run goes: claim the run folder,
//! pick the device, set up a [`Trainer`] (model, data, adapters and echo path, optimizer,
//! and what a resumed checkpoint carries), then step, validate (keeping the best adapter by
//! validation loss, as the LLM-Adapters recipe does), measure the echo diagnostics and
//! checkpoint until the run, or this piece of it, ends; then the final adapter, plots and
//! summary. The data side is `run_data`, what the run shows `report`, the folder's lock
//! `run_folder`.

use crate::checkpoint::{self, TrainState};
use crate::config::{DataSection, RunConfig, TrainSection};
use crate::diagnostics::Probe;
use crate::echo::EchoPath;
use crate::error::{Context, Result, TrainError};
use crate::metrics::{Metrics, StepLine};
use crate::optim::{clip_factor, global_grad_norm, lr_at, AdamW, AdamWConfig};
use crate::report::Reporter;
use crate::run_data::{counted, describe_data, load_data, micro_batch, validation_loss, Data};
use crate::step::{forward_backward, StepContext, StepInput};
use echo_adapters::{load_peft, save_peft, Adapters};
use echo_autograd::{ParamId, ParamStore};
use echo_data::{BatchConfig, Batcher, Example, Tokenizer};
use echo_model::Llama;
use echo_tensor::{Device, Rng};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue from the run folder's checkpoint (see [`checkpoint::latest`]).
    pub resume: bool,
    /// Start a new run in a folder that holds one: the old run is moved aside (to
    /// `<out_dir>.old-<unix time>`), never deleted. Without it (or `resume`) such a folder is
    /// refused.
    pub overwrite: bool,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
    /// Stop after this many optimizer steps in this invocation (a run in pieces; testing
    /// resume). A checkpoint is written at the stop.
    pub stop_after: Option<usize>,
    /// Stop at the first step that ends after this instant (a run in pieces that fit a time
    /// slot), writing a checkpoint there.
    pub deadline: Option<Instant>,
}

/// What a run reports at the end (also written to `summary.json`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunSummary {
    pub steps: usize,
    pub total_steps: usize,
    pub train_examples: usize,
    pub val_examples: usize,
    /// The whole run's, also after a resume: the first step's loss, the last step's, the
    /// validation loss before training.
    pub first_loss: Option<f32>,
    pub last_loss: Option<f32>,
    pub first_val_loss: Option<f32>,
    pub best_val_loss: Option<f32>,
    pub best_step: Option<usize>,
    /// Wall-clock seconds of every process of the run (each counted up to its last
    /// checkpoint, this one to its end), and tokens per second of step time over the run.
    pub wall_seconds: f64,
    pub tokens_per_second: f64,
    /// The step this process resumed from (`None`: it started the run).
    pub resumed_from: Option<usize>,
    pub out_dir: PathBuf,
    pub adapter_dir: PathBuf,
    /// Where the run computed (`cpu`, `cuda:0`, ...).
    pub device: String,
    /// This process's peak resident memory in bytes (`VmHWM` of `/proc/self/status`;
    /// `None` where the OS does not report it). Host memory only: a GPU's is not in it.
    pub peak_rss_bytes: Option<u64>,
}

/// The process's peak resident set size (`VmHWM`), in bytes, on Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The config a checkpoint must match, as stored in it: the keys that only say where a run
/// computes, where it writes or how it reports are set to their defaults (`train.device`: a
/// run may resume on another device; `output.dir`: a run folder may be moved, and `--out`
/// overrides it anyway; `train.log_every`; `train.diagnostics_every`, which only measures;
/// `train.packing`, exact either way; `data.max_truncated_fraction`, a check before the first
/// step), so changing them never blocks a resume.
fn identity(cfg: &RunConfig) -> RunConfig {
    let mut c = cfg.clone();
    let (t, d) = (TrainSection::default(), DataSection::default());
    c.train.device = t.device;
    c.train.log_every = t.log_every;
    c.train.diagnostics_every = t.diagnostics_every;
    c.train.packing = t.packing;
    c.data.max_truncated_fraction = d.max_truncated_fraction;
    c.output = Default::default();
    c
}

/// The keys that set a run's length: the only ones a resume may change (extending a run).
const LENGTH_KEYS: [&str; 2] = ["train.epochs", "train.max_steps"];

/// Optimizer steps of a run: `train.max_steps`, else the epochs' batches.
fn run_length(t: &TrainSection, per_epoch: usize) -> usize {
    if t.max_steps > 0 {
        t.max_steps
    } else {
        t.epochs * per_epoch
    }
}

fn schedule_name(s: crate::optim::Schedule) -> &'static str {
    match s {
        crate::optim::Schedule::Constant => "constant",
        crate::optim::Schedule::Linear => "linear",
        crate::optim::Schedule::Cosine => "cosine",
    }
}

/// Everything a run holds while it trains: the model, the trainable parameters and their
/// optimizer, the data in its shuffled order, the RNG streams, the metrics file and the
/// run-so-far state a checkpoint stores. [`train`] drives it.
struct Trainer<'a> {
    cfg: &'a RunConfig,
    out_dir: &'a Path,
    device: Device,
    model: Llama,
    adapters: Adapters,
    echo: Option<EchoPath>,
    store: ParamStore,
    /// Every trainable parameter (adapters, then the echo path's), and the echo path's alone.
    trainable: Vec<ParamId>,
    echo_ids: Vec<ParamId>,
    adam: AdamW,
    state: TrainState,
    data: Data,
    batcher: Batcher,
    dropout_rng: Rng,
    routing_rng: Rng,
    metrics: Metrics,
    metrics_path: PathBuf,
    /// The newest checkpoint: what a run stopped by a non-finite loss resumes from.
    ckpt_dir: PathBuf,
    total_steps: usize,
    resumed_from: Option<usize>,
    /// Wall-clock seconds of the earlier processes of a resumed run.
    wall_before: f64,
    /// The base model as the PEFT adapter config names it.
    base_name: String,
    /// The echo diagnostics' schedule and fixed probe batch (`None`: off).
    schedule: Option<usize>,
    probe: Option<Probe>,
    /// Tokens and step seconds of this process (its reported tokens/s).
    tokens_seen: usize,
    compute_secs: f64,
}

/// What one optimizer step reports.
struct StepDone {
    loss: f32,
    lr: f32,
}

impl<'a> Trainer<'a> {
    /// Loads the model and data, makes (or, resuming, restores) the adapters, the echo path,
    /// AdamW and the run's state, and opens the metrics. A resume is checked against the
    /// checkpoint's config before anything slow: only the run's length may differ.
    fn setup(
        cfg: &'a RunConfig,
        model_dir: &Path,
        out_dir: &'a Path,
        opts: &RunOptions,
        device: Device,
    ) -> Result<Self> {
        // The config a checkpoint must match (see `identity`), checked before anything slow.
        let ident = identity(cfg);
        let config_toml =
            toml::to_string(&ident).map_err(|e| TrainError::Other(format!("serialising the run identity: {e}")))?;
        let mut ckpt_dir = out_dir.join(checkpoint::POINTER);
        let resumed =
            if opts.resume {
                match checkpoint::latest(out_dir)? {
                    None => return Err(TrainError::Checkpoint {
                        path: ckpt_dir,
                        msg:
                            "no checkpoint to resume from (--resume continues a run from the checkpoint it wrote into \
                              its output folder; run without --resume to start one)"
                                .into(),
                    }),
                    Some(found) => {
                        for note in &found.notes {
                            println!("{note}");
                        }
                        ckpt_dir = found.dir;
                        Some(found.loaded)
                    }
                }
            } else {
                None
            };
        let mut length_change = None;
        if let Some(l) = &resumed {
            let old = identity(&checkpoint::stored_config(&ckpt_dir, &l.state)?);
            let (length, other): (Vec<_>, Vec<_>) = checkpoint::config_changes(&old, &ident)
                .into_iter()
                .partition(|c| LENGTH_KEYS.contains(&c.key.as_str()));
            if !other.is_empty() {
                return Err(TrainError::ConfigMismatch {
                    checkpoint: ckpt_dir.clone(),
                    changes: other,
                    length_keys: LENGTH_KEYS.map(String::from).to_vec(),
                });
            }
            if !length.is_empty() {
                length_change = Some((old, length));
            }
        }

        let model = Llama::load_on(model_dir, device)?;
        cfg.check_against_model(&model.config)?;
        let tok = Tokenizer::from_dir(model_dir)?;
        let data = load_data(cfg, &tok, opts.progress)?;
        println!("{}", describe_data(&cfg.data, &data));
        let t = &cfg.train;
        let n_layers = model.config.num_hidden_layers;

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
        )?;
        let per_epoch = batcher.batches_per_epoch();
        let total_steps = run_length(t, per_epoch);

        let mut store = ParamStore::new();
        let adapters = match &resumed {
            Some(_) => load_peft(&checkpoint::adapter_dir(&ckpt_dir), &model, &mut store)?,
            None => match &cfg.adapter.from {
                Some(dir) => load_peft(Path::new(dir), &model, &mut store).context("adapter.from")?,
                None => Adapters::init(
                    cfg.adapter_config(n_layers)?,
                    &model,
                    &mut store,
                    &mut Rng::derive(t.seed, "adapter-init"),
                )?,
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
                            l.echo.get(name).cloned().ok_or_else(|| TrainError::Checkpoint {
                                path: ckpt_dir.clone(),
                                msg: format!("checkpoint has no `{name}`"),
                            })
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
        let store = store.to_device(device)?;
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
            first_loss: None,
            first_val_loss: None,
            last_loss: None,
            tokens: 0,
            train_seconds: 0.0,
            wall_seconds: 0.0,
        };
        let resumed_from = resumed.as_ref().map(|l| l.state.step);
        if let Some(l) = resumed {
            if l.state.step > total_steps {
                return Err(TrainError::Checkpoint {
                    path: ckpt_dir,
                    msg: format!(
                        "the checkpoint is at step {}, past this config's length of {total_steps} steps (train.max_steps \
                         = {}, train.epochs = {} of {per_epoch} steps); a run can be lengthened on resume, not shortened",
                        l.state.step, t.max_steps, t.epochs
                    ),
                });
            }
            if let Some((old, keys)) = &length_change {
                let old_total = run_length(&old.train, per_epoch);
                if old_total != total_steps {
                    let keys: Vec<String> = keys.iter().map(|c| c.to_string()).collect();
                    let s = l.state.step;
                    let lr_schedule = match t.schedule {
                        crate::optim::Schedule::Constant => "the constant lr schedule is unaffected".to_string(),
                        other => format!(
                            "the {} lr schedule runs its remaining steps as planned for {total_steps}: step {} gets lr \
                             {:.2e} (the old plan: {:.2e})",
                            schedule_name(other),
                            s + 1,
                            lr_at(other, t.lr, s, t.warmup_steps, total_steps),
                            lr_at(other, t.lr, s, t.warmup_steps, old_total),
                        ),
                    };
                    println!(
                        "resuming at step {s}: the run's length changes from {old_total} to {total_steps} steps ({}); \
                         {lr_schedule}",
                        keys.join("; ")
                    );
                }
            }
            adam.state = l.adam;
            state = l.state;
            // The checkpoint now stands for this config (it differs at most in its length).
            state.config_toml = config_toml.clone();
            batcher.seek(state.position)?;
        }
        let dropout_rng = Rng::from_state(state.dropout_rng);
        let routing_rng = Rng::from_state(state.routing_rng);
        std::fs::create_dir_all(out_dir).map_err(TrainError::io(out_dir, "creating the output folder"))?;
        let metrics_path = out_dir.join("metrics.jsonl");
        let metrics = if opts.resume {
            // Lines past the checkpoint (an interrupted process wrote them) are dropped: those
            // steps run again. Checkpoints older than the run-so-far fields take them from here.
            let (m, start) = Metrics::resume(&metrics_path, state.step)?;
            state.first_loss = state.first_loss.or(start.first_loss);
            state.first_val_loss = state.first_val_loss.or(start.first_val_loss);
            m
        } else {
            Metrics::open(&metrics_path, false)?
        };
        let wall_before = state.wall_seconds;
        let base_name = model_dir.to_string_lossy().into_owned();
        // The echo diagnostics' probe: fixed for the whole run (the first validation examples).
        let schedule = cfg.diagnostics_schedule().filter(|_| echo.is_some());
        let probe = schedule.and_then(|_| Probe::new(&data.val, data.pad_id));
        if schedule.is_some() && probe.is_none() {
            println!("echo diagnostics: off, no validation example to probe with (data.val_count = 0)");
        }
        Ok(Trainer {
            cfg,
            out_dir,
            device,
            model,
            adapters,
            echo,
            store,
            trainable,
            echo_ids,
            adam,
            state,
            data,
            batcher,
            dropout_rng,
            routing_rng,
            metrics,
            metrics_path,
            ckpt_dir,
            total_steps,
            resumed_from,
            wall_before,
            base_name,
            schedule,
            probe,
            tokens_seen: 0,
            compute_secs: 0.0,
        })
    }

    /// One optimizer step over the next batch: its micro-batches forward and backward
    /// (gradients weighted by each one's share of the batch's counted tokens), the gradient
    /// norm, clipping, AdamW, and the step's metrics line. A non-finite loss or gradient norm
    /// stops the run before the update.
    fn step(&mut self) -> Result<StepDone> {
        let (cfg, t) = (self.cfg, &self.cfg.train);
        let ctx = StepContext { model: &self.model, adapters: &self.adapters, echo: self.echo.as_ref() };
        let step_start = Instant::now();
        let batch = self.batcher.next_batch();
        let total_counted = counted(&batch.labels, batch.batch_size, batch.seq_len);
        let mut agg = crate::StepStats::default();
        let mut step_tokens = 0;
        for rows in batch.example_indices.chunks(t.micro_batch_size) {
            let refs: Vec<&Example> = rows.iter().map(|&i| &self.batcher.examples()[i]).collect();
            let mb = micro_batch(&refs, self.data.pad_id, t.packing);
            let n = counted(&mb.labels, mb.batch_size, mb.seq_len);
            if n == 0 {
                continue;
            }
            let route: Vec<bool> = (0..mb.examples())
                .map(|_| self.echo.is_some() && self.routing_rng.bernoulli(cfg.echo.p_route))
                .collect();
            let input = StepInput { batch: &mb, route: &route };
            let w = n as f32 / total_counted as f32;
            let (s, _) = forward_backward(&ctx, &input, &mut self.store, Some(&mut self.dropout_rng), w, false)?;
            if !s.loss.is_finite() {
                return Err(TrainError::NonFinite {
                    step: self.state.step + 1,
                    what: "loss",
                    value: s.loss,
                    checkpoint: self.ckpt_dir.clone(),
                });
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
        let grad_norm = global_grad_norm(&self.store, &self.trainable)?;
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFinite {
                step: self.state.step + 1,
                what: "gradient norm",
                value: grad_norm,
                checkpoint: self.ckpt_dir.clone(),
            });
        }
        let clip = clip_factor(grad_norm, t.max_grad_norm);
        let lr = lr_at(t.schedule, t.lr, self.state.step, t.warmup_steps, self.total_steps);
        self.adam.step(&mut self.store, &self.trainable, lr, clip)?;
        self.store.zero_grad();
        let state = &mut self.state;
        state.step += 1;
        state.position = self.batcher.position();
        let secs = step_start.elapsed().as_secs_f64();
        self.tokens_seen += step_tokens;
        self.compute_secs += secs;
        state.tokens += step_tokens as u64;
        state.train_seconds += secs;
        state.first_loss.get_or_insert(agg.loss);
        state.last_loss = Some(agg.loss);
        self.metrics.step(&StepLine {
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
        Ok(StepDone { loss: agg.loss, lr })
    }

    /// Tokens per second of this process's steps so far.
    fn tokens_per_s(&self) -> f64 {
        self.tokens_seen as f64 / self.compute_secs.max(1e-9)
    }

    /// The validation loss now, written to the metrics; after step 0, a new best is saved as
    /// `best-adapter` (`true`). Before training it is the run's first validation loss.
    fn validate(&mut self) -> Result<(Option<f32>, bool)> {
        let t = &self.cfg.train;
        let (val, pad) = (&self.data.val, self.data.pad_id);
        let v = validation_loss(&self.model, &self.adapters, &self.store, val, pad, t.micro_batch_size, t.packing)?;
        let state = &mut self.state;
        if state.step == 0 {
            state.first_val_loss = v;
        }
        self.metrics.eval(state.step, v)?;
        let mut best = false;
        if let Some(v) = v.filter(|_| state.step > 0) {
            if state.best_val_loss.is_none_or(|b| v < b) {
                best = true;
                state.best_val_loss = Some(v);
                state.best_step = Some(state.step);
                save_peft(&self.out_dir.join("best-adapter"), &self.adapters, &self.store, &self.base_name)?;
            }
        }
        Ok((v, best))
    }

    /// The echo diagnostics line, when one is due at this step.
    fn diagnose(&mut self) -> Result<()> {
        let step = self.state.step;
        let due = crate::diagnostics::due(self.schedule, step, step == self.total_steps);
        if let Some(probe) = self.probe.as_ref().filter(|_| due) {
            let ctx = StepContext { model: &self.model, adapters: &self.adapters, echo: self.echo.as_ref() };
            let d = crate::diagnostics::measure(&ctx, &self.store, probe)?;
            self.metrics.echo(step, &d)?;
        }
        Ok(())
    }

    /// Writes a checkpoint of everything a resume needs (the RNG streams where they are now).
    fn checkpoint(&mut self, started: Instant) -> Result<()> {
        let state = &mut self.state;
        state.dropout_rng = self.dropout_rng.state();
        state.routing_rng = self.routing_rng.state();
        state.adam_step = self.adam.state.step;
        state.wall_seconds = self.wall_before + started.elapsed().as_secs_f64();
        self.ckpt_dir = checkpoint::save(
            self.out_dir,
            state,
            &self.adapters,
            &self.echo_ids,
            &self.adam.state,
            &self.store,
            &self.base_name,
        )?;
        Ok(())
    }

    /// The final adapter, the plots and `summary.json`.
    fn finish(self, started: Instant) -> Result<RunSummary> {
        let out_dir = self.out_dir;
        let adapter_dir = out_dir.join("adapter");
        save_peft(&adapter_dir, &self.adapters, &self.store, &self.base_name)?;
        crate::metrics::plot_svg(&self.metrics_path, &out_dir.join("loss.svg"))?;
        crate::metrics::plot_echo_svg(&self.metrics_path, &out_dir.join("echo.svg"))?;
        let state = &self.state;
        let summary = RunSummary {
            steps: state.step,
            total_steps: self.total_steps,
            train_examples: self.data.train.len(),
            val_examples: self.data.val.len(),
            first_loss: state.first_loss,
            last_loss: state.last_loss,
            first_val_loss: state.first_val_loss,
            best_val_loss: state.best_val_loss,
            best_step: state.best_step,
            wall_seconds: self.wall_before + started.elapsed().as_secs_f64(),
            tokens_per_second: state.tokens as f64 / state.train_seconds.max(1e-9),
            resumed_from: self.resumed_from,
            out_dir: out_dir.to_path_buf(),
            adapter_dir,
            device: self.device.to_string(),
            peak_rss_bytes: peak_rss_bytes(),
        };
        let json = serde_json::to_string_pretty(&summary).expect("summary serialises");
        echo_model::weights::write_atomic(&out_dir.join("summary.json"), json.as_bytes())?;
        Ok(summary)
    }
}

/// Trains as `cfg` says on the model in `model_dir`, writing into `out_dir`.
pub fn train(cfg: &RunConfig, model_dir: &Path, out_dir: &Path, opts: &RunOptions) -> Result<RunSummary> {
    let started = Instant::now();
    // The run folder is this process's until it ends (the OS releases the lock of a process
    // that dies); a folder holding a run is continued, moved aside or refused.
    let lock = crate::run_folder::claim(out_dir, opts.resume, opts.overwrite)?;
    checkpoint::remove_stale(out_dir)?;
    let (device, notice) = crate::device::resolve(cfg.train.device)?;
    println!("{notice}");
    let mut run = Trainer::setup(cfg, model_dir, out_dir, opts, device)?;
    let (t, total) = (&cfg.train, run.total_steps);
    let mut stop_at = opts.stop_after.map(|n| (run.state.step + n).min(total)).unwrap_or(total);
    let mut report = Reporter::new(opts.progress, t.log_every, total, run.state.step, stop_at, started);
    if run.state.step == 0 {
        let (v, _) = run.validate()?;
        report.validation(0, v, run.data.val.len(), false);
        run.diagnose()?;
    }
    report.start_steps();
    while run.state.step < stop_at {
        let done = run.step()?;
        let step = run.state.step;
        report.step(step, done.loss, done.lr, run.tokens_per_s());
        let last = step == total;
        if (t.eval_every > 0 && step.is_multiple_of(t.eval_every)) || last {
            let (v, best) = run.validate()?;
            report.validation(step, v, run.data.val.len(), best);
        }
        // Before the checkpoint, so that a resume from it keeps this line and one from an
        // earlier checkpoint drops it (and measures again).
        run.diagnose()?;
        if opts.deadline.is_some_and(|d| Instant::now() >= d) && step < stop_at {
            println!("stopping at step {step} of {total}: the time slot is over (resume to continue)");
            stop_at = step;
        }
        if crate::interrupt::stop_requested() && step < stop_at {
            println!("stopping at step {step} of {total}: interrupted (resume to continue)");
            stop_at = step;
        }
        if (t.save_every > 0 && step.is_multiple_of(t.save_every)) || last || step == stop_at {
            run.checkpoint(started)?;
        }
    }
    report.finish();
    let summary = run.finish(started)?;
    drop(lock);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_ignores_device_logging_diagnostics_and_the_cutoff_check_but_not_the_length() {
        let mut a = RunConfig::parse("[model]\npath = \"m\"\n").unwrap();
        let mut b = a.clone();
        b.train.device = echo_kernels::cuda::DeviceSpec::Cpu;
        b.train.log_every = 7;
        b.train.diagnostics_every = Some(3);
        b.data.max_truncated_fraction = 0.5;
        b.output.dir = "elsewhere".into();
        assert_eq!(identity(&a), identity(&b));
        b.train.max_steps = 9;
        a.adapter.r = 8;
        let changes: Vec<String> =
            checkpoint::config_changes(&identity(&a), &identity(&b)).iter().map(|c| c.to_string()).collect();
        assert_eq!(changes, ["adapter.r: 8 -> 32", "train.max_steps: 0 -> 9"]);
    }
}

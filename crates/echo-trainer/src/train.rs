//! The training loop: data, adapters and echo path set up from a [`RunConfig`], AdamW over
//! token-weighted micro-batches, clipping, a schedule, periodic validation (keeping the best
//! adapter by validation loss, as the LLM-Adapters recipe does), checkpoints, metrics.

use crate::checkpoint::{self, TrainState};
use crate::config::{DataSection, RunConfig, TrainSection};
use crate::diagnostics::Probe;
use crate::echo::EchoPath;
use crate::error::{Context, Result, TrainError};
use crate::metrics::{Metrics, StepLine};
use crate::optim::{clip_factor, global_grad_norm, lr_at, AdamW, AdamWConfig};
use crate::step::{forward_backward, StepContext, StepInput};
use echo_adapters::{load_peft, save_peft, Adapters};
use echo_autograd::{ParamId, ParamStore, Tape};
use echo_data::{
    Batch as DataBatch, BatchConfig, Batcher, EncodeConfig, Example, Overlong, Progress, Report, Template, Tokenizer,
};
use echo_model::Llama;
use echo_tensor::Rng;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
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

/// The loaded data: train and validation examples.
pub struct Data {
    pub train: Vec<Example>,
    pub val: Vec<Example>,
    pub pad_id: u32,
    /// What encoding did to the records (over all of them, before the validation split):
    /// how many the cutoff truncated or dropped.
    pub report: Report,
}

/// Reads, tokenises and splits the data as `[data]` says.
pub fn load_data(cfg: &RunConfig, tok: &Tokenizer, progress: bool) -> Result<Data> {
    let d = &cfg.data;
    // The same templates as `cargo xtask data --template` (chat reads the tokenizer's folder).
    let template = Template::from_config(
        d.template.name(),
        d.prompt_format.as_deref(),
        d.prompt_format_with_input.as_deref(),
        tok.path(),
    )
    .context("data.template")?;
    let enc = EncodeConfig { cutoff: Some(d.cutoff), overlong: d.overlong, train_on_inputs: d.train_on_inputs };
    let prog = if progress { Progress::Auto } else { Progress::Hidden };
    let (examples, report) = if d.train == ["synthetic"] {
        let spec = echo_data::SyntheticSpec { count: d.synthetic_records, seed: cfg.train.seed, ..Default::default() };
        let records = echo_data::synthetic_records(&spec)?;
        let ds = echo_data::encode_records(tok, &template, &records, &enc, Path::new("synthetic"), 0)?;
        (ds.examples, ds.report)
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
        let mixed = echo_data::load_mix(&spec, tok, &template, &enc, Some(&cache), prog)?;
        let report = mixed.report();
        (mixed.examples, report)
    };
    check_cutoff(d, &report)?;
    if examples.len() <= d.val_count {
        return Err(TrainError::config(format!(
            "data: {} examples cannot leave data.val_count = {} for validation and some for training",
            examples.len(),
            d.val_count
        )));
    }
    let (train, val) = echo_data::split_validation(examples, d.val_count, cfg.train.seed)?;
    Ok(Data { train, val, pad_id: tok.pad_id(), report })
}

/// Refuses data from which the cutoff took learned tokens in more than
/// `data.max_truncated_fraction` of the records (under `overlong = "truncate"`).
fn check_cutoff(d: &DataSection, r: &Report) -> Result<()> {
    let cut = r.answers_cut();
    if d.overlong != Overlong::Truncate || r.records == 0 || cut as f64 <= d.max_truncated_fraction * r.records as f64 {
        return Ok(());
    }
    Err(TrainError::config(format!(
        "data: data.cutoff = {} takes learned (answer) tokens from {cut} of {} records ({:.1}%: {} truncated, {} \
         dropped because the prompt alone reaches the cutoff, {} dropped untokenised as over {} bytes), more than \
         data.max_truncated_fraction = {} allows. \
         The longest sample has {} tokens: raise data.cutoff ({} keeps every sample whole), set data.overlong = \
         \"drop\" to leave the long ones out, or raise data.max_truncated_fraction to accept the loss",
        d.cutoff,
        r.records,
        100.0 * cut as f64 / r.records as f64,
        r.truncated,
        r.dropped_prompt_over_cutoff,
        r.dropped_too_large,
        d.cutoff * 64,
        d.max_truncated_fraction,
        r.longest_before_cutoff,
        r.longest_before_cutoff,
    )))
}

/// One line on what the cutoff did to the data, printed before the first step.
pub fn describe_data(d: &DataSection, data: &Data) -> String {
    let r = &data.report;
    let mut s = format!(
        "data: {} records, {} examples ({} train, {} validation); cutoff {} tokens (data.cutoff): {} truncated, {} \
         dropped",
        r.records,
        data.train.len() + data.val.len(),
        data.train.len(),
        data.val.len(),
        d.cutoff,
        r.truncated,
        r.dropped,
    );
    if r.dropped > 0 {
        let over = r.dropped - r.dropped_prompt_over_cutoff - r.dropped_too_large;
        s += &format!(" ({} with a prompt reaching the cutoff", r.dropped_prompt_over_cutoff);
        if r.dropped_too_large > 0 {
            s += &format!(", {} over the size limit (cutoff × 64 bytes), never tokenised", r.dropped_too_large);
        }
        if over > 0 {
            s += &format!(", {over} longer than it under data.overlong = \"drop\"");
        }
        s += ")";
    }
    if r.answers_cut() > 0 && r.records > 0 {
        s += &format!(
            "; answer tokens cut from {:.1}% of the records (data.max_truncated_fraction {})",
            100.0 * r.answers_cut() as f64 / r.records as f64,
            d.max_truncated_fraction
        );
    }
    s + &format!("; longest sample {} tokens", r.longest_before_cutoff)
}

/// A data batch as the step wants it.
struct Arrays {
    ids: Vec<i64>,
    mask: Vec<i64>,
    labels: Vec<i64>,
    prompt: Vec<f32>,
    batch: usize,
    seq: usize,
    packed: Option<Vec<Vec<usize>>>,
}

/// A micro-batch of `examples`: packed into one row (`train.packing`) or padded.
fn micro_batch(examples: &[&Example], pad_id: u32, packing: bool) -> DataBatch {
    if packing {
        DataBatch::packed(examples)
    } else {
        DataBatch::from_examples(examples, pad_id)
    }
}

fn arrays(b: &DataBatch) -> Arrays {
    Arrays {
        ids: b.input_ids.iter().map(|&x| x as i64).collect(),
        mask: b.attention_mask.iter().map(|&x| x as i64).collect(),
        labels: b.labels.clone(),
        prompt: b.prompt_mask.iter().map(|&x| x as f32).collect(),
        batch: b.batch_size,
        seq: b.seq_len,
        packed: b.packed.clone(),
    }
}

/// Counted positions under the HF shift.
fn counted(labels: &[i64], batch: usize, seq: usize) -> usize {
    echo_model::shifted_targets(labels, batch, seq).0.len()
}

/// Mean validation loss of the deployed (plain) route over `val`, batched by `micro`
/// (packed into one row per micro-batch with `packing`).
pub fn validation_loss(
    model: &Llama,
    adapters: &Adapters,
    store: &ParamStore,
    val: &[Example],
    pad_id: u32,
    micro: usize,
    packing: bool,
) -> Result<Option<f32>> {
    let (mut sum, mut count) = (0.0f64, 0usize);
    for chunk in val.chunks(micro.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let a = arrays(&micro_batch(&refs, pad_id, packing));
        let n = counted(&a.labels, a.batch, a.seq);
        if n == 0 {
            continue;
        }
        let batch = crate::layout::Samples::from_input(a.packed.as_deref(), a.batch, a.seq)?.model_batch(
            &a.ids,
            &a.mask,
            model.config.vocab_size,
        )?;
        let tape = Tape::inference();
        let mut proj = adapters.projector(store, None, None);
        let hidden = model.forward(&tape, &batch, &mut proj, &[])?.hidden;
        let (loss, n) = model.lm_loss(&hidden, &a.labels, &batch)?;
        sum += loss.value().item()? as f64 * n as f64;
        count += n;
    }
    Ok((count > 0).then(|| (sum / count as f64) as f32))
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

/// `h:mm:ss`.
fn hms(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Time left for `remaining` steps at the pace of the `done` steps this process took in
/// `elapsed` seconds (`None` before its first step). Steps a resumed run did in an earlier
/// process do not count: they took no time here.
fn eta(elapsed: f64, done: usize, remaining: usize) -> Option<f64> {
    (done > 0).then(|| elapsed / done as f64 * remaining as f64)
}

/// What a run shows while it trains: on a terminal, a progress bar (on stderr) with loss,
/// lr, the last validation loss, speed and ETA, left on screen at the end; otherwise (stdout
/// piped to a file, or no bar) a line every `every` steps and one per validation, on stdout.
struct Reporter {
    bar: ProgressBar,
    bar_drawn: bool,
    lines: bool,
    every: usize,
    total: usize,
    /// Where this process started (after a resume, the checkpoint's step) and stops.
    start_step: usize,
    stop_at: usize,
    started: Instant,
    loop_start: Instant,
    last_val: Option<f32>,
    /// The last step's loss, lr, tokens/s and ETA.
    last_step: Option<(f32, f32, f64, String)>,
}

impl Reporter {
    fn new(
        progress: bool,
        log_every: usize,
        total: usize,
        start_step: usize,
        stop_at: usize,
        started: Instant,
    ) -> Self {
        let bar_drawn = progress && std::io::stderr().is_terminal();
        let lines = !bar_drawn || !std::io::stdout().is_terminal();
        let bar = if bar_drawn { ProgressBar::new(total as u64) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} steps | {msg}")
                .expect("template")
                .progress_chars("=> "),
        );
        bar.set_position(start_step as u64);
        bar.set_message("validating");
        let every = if log_every > 0 { log_every } else { (total / 50).max(1) };
        let now = Instant::now();
        Reporter {
            bar,
            bar_drawn,
            lines,
            every,
            total,
            start_step,
            stop_at,
            started,
            loop_start: now,
            last_val: None,
            last_step: None,
        }
    }

    /// The steps of this process start now (the ETA's clock).
    fn start_steps(&mut self) {
        self.loop_start = Instant::now();
        self.bar.set_message("first step");
    }

    fn step(&mut self, step: usize, loss: f32, lr: f32, tokens_per_s: f64) {
        let done = step - self.start_step;
        let eta = eta(self.loop_start.elapsed().as_secs_f64(), done, self.stop_at - step)
            .map(hms)
            .unwrap_or_else(|| "-".into());
        self.bar.set_position(step as u64);
        self.last_step = Some((loss, lr, tokens_per_s, eta.clone()));
        self.show();
        if self.lines && (done == 1 || step.is_multiple_of(self.every) || step == self.stop_at) {
            println!(
                "step {step}/{}  loss {loss:.4}  lr {lr:.2e}  {tokens_per_s:.0} tok/s  elapsed {}  ETA {eta}",
                self.total,
                hms(self.started.elapsed().as_secs_f64())
            );
        }
    }

    /// The bar's message: the last step's numbers and the last validation loss.
    fn show(&self) {
        if let Some((loss, lr, tokens_per_s, eta)) = &self.last_step {
            let val = self.last_val.map(|v| format!(" | val {v:.4}")).unwrap_or_default();
            self.bar.set_message(format!("loss {loss:.4} | lr {lr:.2e}{val} | {tokens_per_s:.0} tok/s | ETA {eta}"));
        }
    }

    fn validation(&mut self, step: usize, loss: Option<f32>, records: usize, best: bool) {
        let Some(v) = loss else { return };
        self.last_val = Some(v);
        self.show();
        let line = if step == 0 {
            format!("validation before training: loss {v:.4} ({records} held-out records)")
        } else {
            format!("validation at step {step}/{}: loss {v:.4}{}", self.total, if best { " (best so far)" } else { "" })
        };
        if self.lines {
            println!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// Leaves the bar on screen, with the last step's numbers.
    fn finish(&self) {
        if self.bar_drawn {
            self.bar.finish();
        }
    }
}

/// Trains as `cfg` says on the model in `model_dir`, writing into `out_dir`.
pub fn train(cfg: &RunConfig, model_dir: &Path, out_dir: &Path, opts: &RunOptions) -> Result<RunSummary, TrainError> {
    let started = Instant::now();
    // The run folder is this process's until it ends (the OS releases the lock of a process
    // that dies); a folder holding a run is continued, moved aside or refused.
    let mut lock = RunLock::acquire(out_dir)?;
    if !opts.resume {
        let found = run_files(out_dir);
        if !found.is_empty() {
            if !opts.overwrite {
                return Err(TrainError::RunFolderInUse { dir: out_dir.to_path_buf(), found });
            }
            let aside = move_aside(out_dir)?;
            println!("--overwrite: the run that was in {} is now in {}", out_dir.display(), aside.display());
            lock = RunLock::acquire(out_dir)?;
        }
    }
    checkpoint::remove_stale(out_dir)?;
    let (device, notice) = crate::device::resolve(cfg.train.device)?;
    println!("{notice}");
    // The config a checkpoint must match (see `identity`), checked before anything slow.
    let ident = identity(cfg);
    let config_toml =
        toml::to_string(&ident).map_err(|e| TrainError::Other(format!("serialising the run identity: {e}")))?;
    let mut ckpt_dir = out_dir.join(checkpoint::POINTER);
    let resumed = if opts.resume {
        match checkpoint::latest(out_dir)? {
            None => {
                return Err(TrainError::Checkpoint {
                    path: ckpt_dir,
                    msg: "no checkpoint to resume from (--resume continues a run from the checkpoint it wrote into \
                          its output folder; run without --resume to start one)"
                        .into(),
                })
            }
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
        let (length, other): (Vec<_>, Vec<_>) =
            checkpoint::config_changes(&old, &ident).into_iter().partition(|c| LENGTH_KEYS.contains(&c.key.as_str()));
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
    let mut store = store.to_device(device)?;
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
    let mut dropout_rng = Rng::from_state(state.dropout_rng);
    let mut routing_rng = Rng::from_state(state.routing_rng);
    std::fs::create_dir_all(out_dir).map_err(TrainError::io(out_dir, "creating the output folder"))?;
    let metrics_path = out_dir.join("metrics.jsonl");
    let mut metrics = if opts.resume {
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
    let ctx = StepContext { model: &model, adapters: &adapters, echo: echo.as_ref() };

    let (mut tokens_seen, mut compute_secs) = (0usize, 0.0f64);
    let mut stop_at = opts.stop_after.map(|n| (state.step + n).min(total_steps)).unwrap_or(total_steps);
    let mut report = Reporter::new(opts.progress, t.log_every, total_steps, state.step, stop_at, started);
    // The echo diagnostics' probe: fixed for the whole run (the first validation examples).
    let schedule = cfg.diagnostics_schedule().filter(|_| echo.is_some());
    let probe = schedule.and_then(|_| Probe::new(&data.val, data.pad_id));
    if schedule.is_some() && probe.is_none() {
        println!("echo diagnostics: off, no validation example to probe with (data.val_count = 0)");
    }
    let diagnose = |metrics: &mut Metrics, store: &ParamStore, step: usize| -> Result<()> {
        if let Some(probe) = probe.as_ref().filter(|_| crate::diagnostics::due(schedule, step, step == total_steps)) {
            metrics.echo(step, &crate::diagnostics::measure(&ctx, store, probe)?)?;
        }
        Ok(())
    };
    if state.step == 0 {
        let v = validation_loss(&model, &adapters, &store, &data.val, data.pad_id, t.micro_batch_size, t.packing)?;
        state.first_val_loss = v;
        metrics.eval(0, v)?;
        report.validation(0, v, data.val.len(), false);
        diagnose(&mut metrics, &store, 0)?;
    }
    report.start_steps();
    while state.step < stop_at {
        let step_start = Instant::now();
        let batch = batcher.next_batch();
        let total_counted = counted(&batch.labels, batch.batch_size, batch.seq_len);
        let mut agg = crate::StepStats::default();
        let mut step_tokens = 0;
        for rows in batch.example_indices.chunks(t.micro_batch_size) {
            let refs: Vec<&Example> = rows.iter().map(|&i| &batcher.examples()[i]).collect();
            let mb = micro_batch(&refs, data.pad_id, t.packing);
            let a = arrays(&mb);
            let n = counted(&a.labels, a.batch, a.seq);
            if n == 0 {
                continue;
            }
            let route: Vec<bool> =
                (0..mb.examples()).map(|_| echo.is_some() && routing_rng.bernoulli(cfg.echo.p_route)).collect();
            let input = StepInput {
                input_ids: &a.ids,
                attention_mask: &a.mask,
                labels: &a.labels,
                batch: a.batch,
                seq: a.seq,
                route: &route,
                packed: a.packed.as_deref(),
                prompt_mask: Some(&a.prompt),
            };
            let w = n as f32 / total_counted as f32;
            let (s, _) = forward_backward(&ctx, &input, &mut store, Some(&mut dropout_rng), w, false)?;
            if !s.loss.is_finite() {
                return Err(TrainError::NonFinite {
                    step: state.step + 1,
                    what: "loss",
                    value: s.loss,
                    checkpoint: ckpt_dir.clone(),
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
        let grad_norm = global_grad_norm(&store, &trainable)?;
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFinite {
                step: state.step + 1,
                what: "gradient norm",
                value: grad_norm,
                checkpoint: ckpt_dir.clone(),
            });
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
        state.tokens += step_tokens as u64;
        state.train_seconds += secs;
        state.first_loss.get_or_insert(agg.loss);
        state.last_loss = Some(agg.loss);
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
        report.step(state.step, agg.loss, lr, tokens_seen as f64 / compute_secs.max(1e-9));

        let last = state.step == total_steps;
        if (t.eval_every > 0 && state.step.is_multiple_of(t.eval_every)) || last {
            let v = validation_loss(&model, &adapters, &store, &data.val, data.pad_id, t.micro_batch_size, t.packing)?;
            metrics.eval(state.step, v)?;
            let mut best = false;
            if let Some(v) = v {
                if state.best_val_loss.is_none_or(|b| v < b) {
                    best = true;
                    state.best_val_loss = Some(v);
                    state.best_step = Some(state.step);
                    save_peft(&out_dir.join("best-adapter"), &adapters, &store, &base_name)?;
                }
            }
            report.validation(state.step, v, data.val.len(), best);
        }
        // Before the checkpoint, so that a resume from it keeps this line and one from an
        // earlier checkpoint drops it (and measures again).
        diagnose(&mut metrics, &store, state.step)?;
        if opts.deadline.is_some_and(|d| Instant::now() >= d) && state.step < stop_at {
            println!("stopping at step {} of {total_steps}: the time slot is over (resume to continue)", state.step);
            stop_at = state.step;
        }
        if crate::interrupt::stop_requested() && state.step < stop_at {
            println!("stopping at step {} of {total_steps}: interrupted (resume to continue)", state.step);
            stop_at = state.step;
        }
        if (t.save_every > 0 && state.step.is_multiple_of(t.save_every)) || last || state.step == stop_at {
            state.dropout_rng = dropout_rng.state();
            state.routing_rng = routing_rng.state();
            state.adam_step = adam.state.step;
            state.wall_seconds = wall_before + started.elapsed().as_secs_f64();
            ckpt_dir = checkpoint::save(out_dir, &state, &adapters, &echo_ids, &adam.state, &store, &base_name)?;
        }
    }
    report.finish();
    let adapter_dir = out_dir.join("adapter");
    save_peft(&adapter_dir, &adapters, &store, &base_name)?;
    crate::metrics::plot_svg(&metrics_path, &out_dir.join("loss.svg"))?;
    crate::metrics::plot_echo_svg(&metrics_path, &out_dir.join("echo.svg"))?;
    let summary = RunSummary {
        steps: state.step,
        total_steps,
        train_examples: data.train.len(),
        val_examples: data.val.len(),
        first_loss: state.first_loss,
        last_loss: state.last_loss,
        first_val_loss: state.first_val_loss,
        best_val_loss: state.best_val_loss,
        best_step: state.best_step,
        wall_seconds: wall_before + started.elapsed().as_secs_f64(),
        tokens_per_second: state.tokens as f64 / state.train_seconds.max(1e-9),
        resumed_from,
        out_dir: out_dir.to_path_buf(),
        adapter_dir,
        device: device.to_string(),
        peak_rss_bytes: peak_rss_bytes(),
    };
    let json = serde_json::to_string_pretty(&summary).expect("summary serialises");
    echo_model::weights::write_atomic(&out_dir.join("summary.json"), json.as_bytes())?;
    drop(lock);
    Ok(summary)
}

/// The name of the lock file in a run folder.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive lock (`flock`) on a run folder's [`LOCK_FILE`], held while it lives; the OS
/// releases it when the process ends, however it ends, so a crash never leaves it behind.
struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Creates `dir` if needed and locks it, or says which folder another run holds.
    fn acquire(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir).map_err(TrainError::io(dir, "creating the output folder"))?;
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(TrainError::io(&path, "opening the run lock"))?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(TrainError::RunFolderLocked { dir: dir.to_path_buf(), lock: path })
            }
            Err(std::fs::TryLockError::Error(e)) => Err(TrainError::io(&path, "locking the run folder")(e)),
        }
    }
}

/// What in `dir` makes it a run's folder (what a run writes), by name.
fn run_files(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else { return vec![] };
    let fixed =
        ["metrics.jsonl", "summary.json", "loss.svg", "echo.svg", "adapter", "best-adapter", checkpoint::POINTER];
    let mut found: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| fixed.contains(&n.as_str()) || n.starts_with("checkpoint-") || n.starts_with(".checkpoint"))
        .collect();
    found.sort();
    found
}

/// Renames the run folder `dir` to `<dir>.old-<unix time>` (`-2`, `-3`, ... when taken)
/// and returns the new name.
fn move_aside(dir: &Path) -> Result<PathBuf> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let base = dir.as_os_str().to_string_lossy().trim_end_matches('/').to_string();
    let mut aside = PathBuf::from(format!("{base}.old-{secs}"));
    let mut n = 1;
    while aside.symlink_metadata().is_ok() {
        n += 1;
        aside = PathBuf::from(format!("{base}.old-{secs}-{n}"));
    }
    std::fs::rename(dir, &aside)
        .map_err(|e| TrainError::Other(format!("{}: cannot move it to {}: {e}", dir.display(), aside.display())))?;
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_counts_only_this_process_steps() {
        // Resumed at step 100 of 200: 10 steps here in 20 s leave 90 steps, 180 s.
        assert_eq!(eta(20.0, 10, 90), Some(180.0));
        assert_eq!(eta(5.0, 0, 100), None);
        assert_eq!(hms(3725.4), "1:02:05");
        assert_eq!(hms(59.6), "0:01:00");
    }

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

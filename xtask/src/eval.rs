//! `cargo xtask eval`: the commonsense evaluation (LLM-Adapters protocol) of a base model or a
//! base model + PEFT adapter, with a per-dataset table and a JSON file of every prediction.

use anyhow::{Context, Result};
use echo_data::Tokenizer;
use echo_eval::{EvalOptions, EvalReport, Mode};
use echo_model::Llama;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// The base model's HF folder (or `smollm2`).
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// A PEFT adapter folder (a run's `adapter/` or `best-adapter/`), merged before scoring.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Folder with one sub-folder per dataset, each holding a test.json (default: the
    /// repository's `data/commonsense`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Comma-separated dataset names (default: every known dataset found in --data).
    #[arg(long, value_delimiter = ',')]
    pub datasets: Vec<String>,
    /// `generate` (greedy, first match of the answer pattern) or `loglik` (best candidate).
    #[arg(long, default_value = "generate")]
    pub mode: String,
    /// Score only the first N records of each test set.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Records per batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// New-token budget in generate mode (the protocol's 32).
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Results JSON (default: next to the adapter's folder, or runs/eval/ for a base model).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// What to evaluate and how; shared by `eval` and `study`.
pub struct EvalJob<'a> {
    pub model_dir: &'a Path,
    pub adapter: Option<&'a Path>,
    pub data: &'a Path,
    pub datasets: &'a [String],
    pub limit: Option<usize>,
    pub opts: EvalOptions,
    pub progress: bool,
}

pub fn evaluate(job: &EvalJob) -> Result<EvalReport> {
    let t0 = Instant::now();
    // Datasets first: a bad folder or name fails before the model is loaded.
    let data = echo_eval::load(job.data, job.datasets, job.limit)?;
    let mut model =
        Llama::load(job.model_dir).with_context(|| format!("loading the model {}", job.model_dir.display()))?;
    if let Some(a) = job.adapter {
        echo_eval::apply_adapter(&mut model, a, job.model_dir)?;
    }
    let tok = Tokenizer::from_dir(job.model_dir)?;
    let total: usize = data.iter().map(|d| d.records.len()).sum();
    let bar = if job.progress { ProgressBar::new(total as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} records, ETA {eta} | {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    let mut before = 0;
    let mut current = String::new();
    let result = echo_eval::evaluate(&model, &tok, &data, &job.opts, &mut |name, done| {
        if name != current {
            before = bar.position() as usize;
            current = name.to_string();
            bar.set_message(current.clone());
        }
        bar.set_position((before + done) as u64);
    })?;
    bar.finish_and_clear();
    Ok(EvalReport {
        model: job.model_dir.display().to_string(),
        adapter: job.adapter.map(|a| a.display().to_string()),
        mode: job.opts.mode,
        decoding: "greedy".into(),
        max_new_tokens: job.opts.max_new_tokens,
        limit: job.limit,
        average: EvalReport::average_of(&result.scores),
        datasets: result.scores,
        seconds: t0.elapsed().as_secs_f64(),
        predictions: result.predictions,
        skipped: result.skipped,
    })
}

/// Writes the report as pretty JSON, atomically (a crash never leaves half a file).
pub fn write_report(path: &Path, report: &EvalReport) -> Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    echo_model::weights::write_atomic(path, serde_json::to_string_pretty(report)?.as_bytes())?;
    Ok(())
}

pub fn run(a: EvalArgs) -> Result<()> {
    let mode = Mode::parse(&a.mode)?;
    let model_dir = crate::model::resolve_model(&a.model)?;
    let opts = EvalOptions { mode, batch: a.batch, max_new_tokens: a.max_new_tokens };
    let job = EvalJob {
        model_dir: &model_dir,
        adapter: a.adapter.as_deref(),
        data: &a.data.clone().unwrap_or_else(echo_testdata::commonsense),
        datasets: &a.datasets,
        limit: a.limit,
        opts,
        progress: !a.quiet,
    };
    let report = evaluate(&job)?;
    let out = a.out.clone().unwrap_or_else(|| match &a.adapter {
        Some(ad) => ad.parent().unwrap_or(Path::new(".")).join(format!("eval-{}.json", mode.name())),
        None => PathBuf::from("runs/eval").join(format!("base-{}.json", mode.name())),
    });
    write_report(&out, &report)?;
    println!("{}", report.markdown());
    println!(
        "mode {} ({}), {} records in {:.1} s; every prediction in {}",
        mode.name(),
        if mode == Mode::Generate {
            format!("greedy, max {} new tokens", a.max_new_tokens)
        } else {
            "best candidate by log-likelihood".into()
        },
        report.predictions.len(),
        report.seconds,
        out.display()
    );
    if let Some(s) = report.skipped.first() {
        println!(
            "{} records skipped: they do not fit the model's context of {} positions ({}; e.g. {} record {} needs {}); listed under `skipped` in {}",
            report.skipped.len(),
            s.limit,
            if mode == Mode::Generate {
                format!("prompt + {} new tokens", a.max_new_tokens)
            } else {
                "prompt + longest candidate answer - 1".into()
            },
            s.dataset,
            s.index,
            s.positions,
            out.display()
        );
    }
    Ok(())
}

//! `cargo xtask study CONFIG`: trains several arms (LoRA, Echo-LoRA, ...) on the same data,
//! budget and seeds, evaluates each, and writes one side-by-side table (Markdown + JSON) and a
//! bar chart (SVG) to the study's output folder.
//!
//! A study config names a base run config and, per arm, the keys that differ (dotted names of
//! the run config: `"echo.enabled" = false`). Every arm × seed trains into
//! `<out>/<arm>-seed<N>/`; a finished one is reused and an interrupted one resumes from its
//! checkpoint, so a long study survives being stopped.
//!
//! Each finished arm × seed is evaluated once per `[eval] modes` entry into
//! `eval-<mode>.json` (an older study's `eval.json` counts as the report of its own mode; no
//! report is ever overwritten). Per mode, the table compares every arm with the reference arm
//! (`[eval] reference`, default the first), seed by seed on the same records (`paired.rs`).

use crate::eval::{evaluate, write_report, EvalJob};
use crate::paired::{self, Comparison};
use anyhow::{bail, Context, Result};
use echo_eval::{EvalOptions, EvalReport, Mode};
use echo_trainer::{train, RunConfig, RunOptions};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct StudyArgs {
    /// Study configuration (TOML), e.g. configs/study-smollm2-135m.toml.
    config: PathBuf,
    /// Only (re)write the table from the arms already finished.
    #[arg(long)]
    report_only: bool,
    /// Train for at most this many minutes in this invocation, then checkpoint and stop (the
    /// table covers the arms finished so far); the same command continues. For studies that
    /// run in pieces.
    #[arg(long)]
    minutes: Option<f64>,
    /// Train at most this many optimizer steps in this invocation (over all arms), then
    /// checkpoint and stop.
    #[arg(long)]
    steps: Option<usize>,
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct StudyConfig {
    /// The run config every arm starts from (relative to this file).
    base: String,
    /// Overrides applied to every arm (dotted run-config keys).
    #[serde(default)]
    set: toml::Table,
    #[serde(default = "default_seeds")]
    seeds: Vec<u64>,
    /// Output folder (relative to the working directory, as run configs' paths are).
    out: String,
    /// Also evaluate the untuned base model, as a reference row.
    #[serde(default = "yes")]
    eval_base: bool,
    eval: EvalSection,
    arm: Vec<Arm>,
}

/// Whether the arm's run trained all its steps (a run stopped in pieces also writes a
/// `summary.json`, with fewer steps than its total).
fn run_finished(dir: &Path) -> Result<bool> {
    let path = dir.join("summary.json");
    if !path.exists() {
        return Ok(false);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let s: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not a run summary", path.display()))?;
    match (s["steps"].as_u64(), s["total_steps"].as_u64()) {
        (Some(done), Some(total)) => Ok(done >= total),
        _ => bail!("{}: no `steps` / `total_steps` (expected a run summary)", path.display()),
    }
}

fn default_seeds() -> Vec<u64> {
    vec![42]
}
fn yes() -> bool {
    true
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct EvalSection {
    data: String,
    /// Empty: every known dataset found in `data`.
    #[serde(default)]
    datasets: Vec<String>,
    /// One mode: the older spelling of `modes = [mode]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    /// The modes every arm is evaluated in (`generate`, `loglik`); default `["generate"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    modes: Option<Vec<String>>,
    /// The arm the others are compared with (paired statistics); default the first arm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
    limit: Option<usize>,
    #[serde(default = "default_batch")]
    batch: usize,
    #[serde(default = "default_new_tokens")]
    max_new_tokens: usize,
    /// The expected length of one evaluation, in minutes: in a study run in pieces
    /// (`--minutes`), an evaluation starts only if this much of the piece is left, since it
    /// cannot be interrupted. Default 0: any evaluation starts before the deadline.
    #[serde(default)]
    expected_minutes: f64,
}

impl EvalSection {
    /// The modes to evaluate, in order: `modes`, or `[mode]`, or `["generate"]`.
    fn modes(&self) -> Result<Vec<Mode>> {
        let names = match (&self.mode, &self.modes) {
            (Some(_), Some(_)) => bail!(
                "[eval]: give either `mode` (one) or `modes` (a list, e.g. modes = [\"generate\", \"loglik\"]), \
                 not both"
            ),
            (Some(m), None) => vec![m.clone()],
            (None, Some(ms)) => ms.clone(),
            (None, None) => vec!["generate".into()],
        };
        if names.is_empty() {
            bail!("[eval] modes: empty (expected one or both of \"generate\", \"loglik\")");
        }
        let mut modes = Vec::new();
        for n in &names {
            let m = Mode::parse(n).with_context(|| format!("[eval] modes = {names:?}"))?;
            if modes.contains(&m) {
                bail!("[eval] modes = {names:?}: `{n}` is listed twice");
            }
            modes.push(m);
        }
        Ok(modes)
    }

    /// The reference arm's name: `reference`, or the first arm's.
    fn reference<'a>(&'a self, arms: &'a [Arm]) -> Result<&'a str> {
        match &self.reference {
            None => Ok(&arms[0].name),
            Some(r) if arms.iter().any(|a| &a.name == r) => Ok(r),
            Some(r) => bail!(
                "[eval] reference = {r:?}: no arm has that name (arms: {:?})",
                arms.iter().map(|a| a.name.as_str()).collect::<Vec<_>>()
            ),
        }
    }
}
fn default_batch() -> usize {
    16
}
fn default_new_tokens() -> usize {
    32
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct Arm {
    name: String,
    #[serde(default)]
    set: toml::Table,
}

/// Sets `overrides` into `table`: a key `a.b.c` (quoted, or written as nested tables) reaches
/// into sub-tables; tables merge, anything else replaces.
fn apply(table: &mut toml::Table, overrides: &toml::Table, context: &str) -> Result<()> {
    for (key, value) in overrides {
        let parts: Vec<&str> = key.split('.').collect();
        let mut t = &mut *table;
        for p in &parts[..parts.len() - 1] {
            t = t
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .with_context(|| format!("{context}: `{key}`: `{p}` is not a table"))?;
        }
        let last = parts[parts.len() - 1];
        match (t.get_mut(last), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(sub)) => apply(existing, sub, context)?,
            _ => {
                t.insert(last.to_string(), value.clone());
            }
        }
    }
    Ok(())
}

/// A folder name for an arm: lower-case ASCII letters, digits and single dashes.
fn slug(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.is_empty() && !s.ends_with('-') {
            s.push('-');
        }
    }
    s.trim_end_matches('-').to_string()
}

/// One finished arm × seed: its training.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct ArmRun {
    arm: String,
    seed: u64,
    dir: PathBuf,
    train_seconds: f64,
    steps: usize,
    tokens_per_second: f64,
    best_val_loss: Option<f64>,
}

fn read_run(arm: &str, seed: u64, dir: &Path) -> Result<ArmRun> {
    let path = dir.join("summary.json");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("{}: not a run summary", path.display()))?;
    Ok(ArmRun {
        arm: arm.into(),
        seed,
        dir: dir.into(),
        train_seconds: s["wall_seconds"].as_f64().unwrap_or(0.0),
        steps: s["steps"].as_u64().unwrap_or(0) as usize,
        tokens_per_second: s["tokens_per_second"].as_f64().unwrap_or(0.0),
        best_val_loss: s["best_val_loss"].as_f64(),
    })
}

/// One arm × seed's evaluation in one mode.
#[derive(Serialize, Clone, Debug)]
struct EvalRow {
    arm: String,
    seed: u64,
    /// The report it comes from.
    file: PathBuf,
    eval_seconds: f64,
    /// Accuracy per dataset, in the order of the mode's `datasets`.
    accuracy: Vec<f64>,
    no_answer: Vec<usize>,
    average: f64,
}

impl EvalRow {
    fn new(arm: &str, seed: u64, file: &Path, report: &EvalReport) -> Self {
        EvalRow {
            arm: arm.into(),
            seed,
            file: file.into(),
            eval_seconds: report.seconds,
            accuracy: report.datasets.iter().map(|d| d.accuracy).collect(),
            no_answer: report.datasets.iter().map(|d| d.no_answer).collect(),
            average: report.average,
        }
    }
}

/// Where a new report of `mode` goes in `dir`.
fn new_report_file(dir: &Path, mode: Mode) -> PathBuf {
    dir.join(format!("eval-{}.json", mode.name()))
}

/// The report of `mode` in `dir`, when there is one: `eval-<mode>.json`, else an older
/// study's `eval.json` when it was evaluated in `mode`.
fn report_file(dir: &Path, mode: Mode) -> Result<Option<PathBuf>> {
    let path = new_report_file(dir, mode);
    if path.exists() {
        return Ok(Some(path));
    }
    let old = dir.join("eval.json");
    if old.exists() {
        #[derive(Deserialize)]
        struct ModeOf {
            mode: Mode,
        }
        let text = std::fs::read_to_string(&old).with_context(|| format!("reading {}", old.display()))?;
        let m: ModeOf = serde_json::from_str(&text)
            .with_context(|| format!("{}: expected an evaluation report with a `mode`", old.display()))?;
        if m.mode == mode {
            return Ok(Some(old));
        }
    }
    Ok(None)
}

/// Reads a report, which must be of `mode`.
fn read_report(path: &Path, mode: Mode) -> Result<EvalReport> {
    let report: EvalReport =
        serde_json::from_str(&std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("{}: expected an evaluation report (cargo xtask eval's JSON)", path.display()))?;
    if report.mode != mode {
        bail!(
            "{}: evaluated in mode `{}`, expected `{}` (move it aside to re-evaluate)",
            path.display(),
            report.mode.name(),
            mode.name()
        );
    }
    Ok(report)
}

/// One mode's reports as the study collects them.
struct ModeRuns {
    mode: Mode,
    /// The dataset names of the first report read; every other must match.
    datasets: Option<(Vec<String>, PathBuf)>,
    base: Option<BaseRow>,
    rows: Vec<EvalRow>,
    /// (arm, seed, file, report), for the pairing.
    reports: Vec<(String, u64, PathBuf, EvalReport)>,
}

impl ModeRuns {
    fn check_datasets(&mut self, path: &Path, report: &EvalReport) -> Result<()> {
        let names: Vec<String> = report.datasets.iter().map(|d| d.name.clone()).collect();
        match &self.datasets {
            None => self.datasets = Some((names, path.into())),
            Some((first, first_path)) if first != &names => bail!(
                "{}: evaluated on {:?}, but {} on {:?} (move one aside to re-evaluate)",
                path.display(),
                names,
                first_path.display(),
                first
            ),
            Some(_) => {}
        }
        Ok(())
    }

    /// Every arm but the reference against the reference, seed by seed, in config order.
    fn paired(&self, arms: &[Arm], reference: &str) -> Result<Vec<PairedRow>> {
        let mut rows = Vec::new();
        for arm in arms.iter().filter(|a| a.name != reference) {
            for (name, seed, file, report) in self.reports.iter().filter(|r| r.0 == arm.name) {
                let Some((_, _, ref_file, ref_report)) = self.reports.iter().find(|r| r.0 == reference && r.1 == *seed)
                else {
                    continue;
                };
                let pairs = paired::pair_records(&ref_report.predictions, &report.predictions)
                    .with_context(|| format!("pairing {} with the reference {}", file.display(), ref_file.display()))?;
                rows.push(PairedRow {
                    arm: name.clone(),
                    seed: *seed,
                    reference: reference.into(),
                    file: file.clone(),
                    reference_file: ref_file.clone(),
                    comparison: paired::compare(&pairs, paired::RESAMPLES, paired::SEED),
                });
            }
        }
        Ok(rows)
    }
}

/// One arm × seed to run: its name, seed, output folder and full run config.
type Plan = (String, u64, PathBuf, RunConfig);

/// Reads a study config and builds (and validates) every arm's run config, before anything
/// runs: a typo in any arm fails the whole study at once.
fn plan(config: &Path) -> Result<(StudyConfig, Vec<Plan>)> {
    let text = std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let mut study: StudyConfig = toml::from_str(&text).with_context(|| format!("{}", config.display()))?;
    if study.arm.is_empty() || study.seeds.is_empty() {
        bail!("{}: a study needs at least one [[arm]] and one seed", config.display());
    }
    // Paths are relative to the file they are written in: `out`, `[eval] data` and the arms'
    // overrides to the study file, the base config's own paths to the base file.
    let study_dir =
        std::path::absolute(config.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
            .with_context(|| format!("{}: its folder", config.display()))?;
    for p in [&mut study.out, &mut study.eval.data] {
        *p = echo_trainer::config::resolve_relative(&study_dir, p);
    }
    let base_path = study_dir.join(&study.base);
    let base_cfg = RunConfig::from_file(&base_path)
        .map_err(|e| anyhow::anyhow!("{}: base = {}: {e}", config.display(), study.base))?;
    let base = toml::Table::try_from(&base_cfg).with_context(|| format!("{}", base_path.display()))?;
    let out = PathBuf::from(&study.out);
    study.eval.modes().with_context(|| format!("{}", config.display()))?;
    if !(study.eval.expected_minutes.is_finite() && study.eval.expected_minutes >= 0.0) {
        bail!(
            "{}: [eval] expected_minutes = {}: expected a number of minutes >= 0",
            config.display(),
            study.eval.expected_minutes
        );
    }
    study.eval.reference(&study.arm).with_context(|| format!("{}", config.display()))?;

    // Every arm's run config, built and validated before anything runs.
    let mut plans = Vec::new();
    for seed in &study.seeds {
        for arm in &study.arm {
            let mut t = base.clone();
            let ctx = format!("{} arm `{}`", config.display(), arm.name);
            apply(&mut t, &study.set, &ctx)?;
            apply(&mut t, &arm.set, &ctx)?;
            let dir = out.join(format!("{}-seed{seed}", slug(&arm.name)));
            let mut seed_dir = toml::Table::new();
            seed_dir.insert("train.seed".into(), toml::Value::Integer(*seed as i64));
            seed_dir.insert("output.dir".into(), toml::Value::String(dir.display().to_string()));
            apply(&mut t, &seed_dir, &ctx)?;
            let mut cfg = RunConfig::parse(&toml::to_string(&t)?).map_err(|e| anyhow::anyhow!("{ctx}: {e}"))?;
            cfg.resolve_paths(&study_dir);
            plans.push((arm.name.clone(), *seed, dir, cfg));
        }
    }
    Ok((study, plans))
}

pub fn run(args: StudyArgs) -> Result<()> {
    let (study, plans) = plan(&args.config)?;
    let config_name = args.config.display().to_string();
    let modes = study.eval.modes().with_context(|| config_name.clone())?;
    let reference = study.eval.reference(&study.arm).with_context(|| config_name.clone())?.to_string();
    let out = PathBuf::from(&study.out);
    if plans.iter().any(|p| p.3.model.path != plans[0].3.model.path) {
        bail!("{config_name}: every arm must use the same base model");
    }
    // The model is needed to train and evaluate only: --report-only works without it.
    let model_dir = if args.report_only { None } else { Some(crate::model::resolve_model(&plans[0].3.model.path)?) };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let data = PathBuf::from(&study.eval.data);
    let run_eval = |adapter: Option<&Path>, mode: Mode| -> Result<EvalReport> {
        evaluate(&EvalJob {
            model_dir: model_dir.as_deref().context("evaluating needs the model (not loaded with --report-only)")?,
            adapter,
            data: &data,
            datasets: &study.eval.datasets,
            limit: study.eval.limit,
            opts: EvalOptions { mode, batch: study.eval.batch, max_new_tokens: study.eval.max_new_tokens },
            progress: true,
        })
    };
    let deadline = args.minutes.map(|m| std::time::Instant::now() + std::time::Duration::from_secs_f64(m * 60.0));
    // An interrupt (Ctrl-C) ends the piece as its deadline does.
    let past_deadline =
        || deadline.is_some_and(|d| std::time::Instant::now() >= d) || echo_trainer::interrupt::stop_requested();
    let mut per_mode: Vec<ModeRuns> = modes
        .iter()
        .map(|&mode| ModeRuns { mode, datasets: None, base: None, rows: Vec::new(), reports: Vec::new() })
        .collect();

    // Pass 1, training: every unfinished arm trains (or resumes) in order until the piece's
    // budget is spent. Training stops cleanly at any step, so it fills a piece; evaluations
    // cannot be interrupted, so they come after all training.
    let mut steps_left = args.steps;
    if !args.report_only {
        for (i, (arm, seed, dir, cfg)) in plans.iter().enumerate() {
            let tag = format!("[{}/{}] {arm}, seed {seed}", i + 1, plans.len());
            if run_finished(dir)? {
                continue;
            }
            if steps_left == Some(0) || past_deadline() {
                println!("== {tag}: not started in this piece (run the command again)");
                continue;
            }
            let resume = echo_trainer::checkpoint::exists(dir);
            println!("== {tag}: {} ({})", if resume { "resuming" } else { "training" }, dir.display());
            // An arm stopped before its first checkpoint starts again, its partial run
            // moved aside (`<arm>.old-<unix time>`).
            let model_dir = model_dir.as_deref().context("training needs the model")?;
            let summary = train(
                cfg,
                model_dir,
                dir,
                &RunOptions { resume, overwrite: !resume, progress: true, stop_after: steps_left, deadline },
            )
            .with_context(|| format!("arm `{arm}` seed {seed}"))?;
            let done_here = summary.steps - summary.resumed_from.unwrap_or(0);
            steps_left = steps_left.map(|n| n.saturating_sub(done_here));
            if summary.steps < summary.total_steps {
                println!(
                    "== {tag}: stopped at step {}/{} (checkpoint saved; run the command again to continue)",
                    summary.steps, summary.total_steps
                );
            }
        }
    }

    // Pass 2, evaluation: each finished arm, then the base model, in every mode. An evaluation
    // starts only if it fits in what is left of the piece (`[eval] expected_minutes`), as it
    // runs to its end once started.
    let fits = || {
        let need = std::time::Duration::from_secs_f64(study.eval.expected_minutes * 60.0);
        !echo_trainer::interrupt::stop_requested() && deadline.is_none_or(|d| std::time::Instant::now() + need <= d)
    };
    let mut to_evaluate: Vec<(String, Option<PathBuf>, PathBuf)> = Vec::new();
    for (i, (arm, seed, dir, _)) in plans.iter().enumerate() {
        if run_finished(dir)? {
            // The adapter with the best validation loss when validation ran, else the last.
            let best = dir.join("best-adapter");
            let adapter = if best.join("adapter_config.json").exists() { best } else { dir.join("adapter") };
            to_evaluate.push((format!("[{}/{}] {arm}, seed {seed}", i + 1, plans.len()), Some(adapter), dir.clone()));
        }
    }
    if study.eval_base {
        to_evaluate.push(("base model (no adapter)".into(), None, out.join("base")));
    }
    if !args.report_only {
        for (tag, adapter, dir) in &to_evaluate {
            for &mode in &modes {
                if report_file(dir, mode)?.is_some() {
                    continue;
                }
                if !fits() {
                    println!(
                        "== {tag}: the {} evaluation is left to the next piece (run the command again)",
                        mode.name()
                    );
                    continue;
                }
                match adapter {
                    Some(a) => println!("== {tag}: evaluating {}, mode {}", a.display(), mode.name()),
                    None => println!("== {tag}: evaluating, mode {}", mode.name()),
                }
                write_report(&new_report_file(dir, mode), &run_eval(adapter.as_deref(), mode)?)?;
            }
        }
    }

    // The tables: every evaluation on disk.
    let mut runs = Vec::new();
    if study.eval_base {
        let dir = out.join("base");
        for m in &mut per_mode {
            if let Some(path) = report_file(&dir, m.mode)? {
                let r = read_report(&path, m.mode)?;
                m.check_datasets(&path, &r)?;
                m.base = Some(BaseRow {
                    accuracy: r.datasets.iter().map(|d| d.accuracy).collect(),
                    no_answer: r.datasets.iter().map(|d| d.no_answer).collect(),
                    average: r.average,
                });
            }
        }
    }
    for (arm, seed, dir, _) in &plans {
        if !run_finished(dir)? {
            continue;
        }
        let mut evaluated = false;
        for m in &mut per_mode {
            if let Some(path) = report_file(dir, m.mode)? {
                let report = read_report(&path, m.mode)?;
                m.check_datasets(&path, &report)?;
                m.rows.push(EvalRow::new(arm, *seed, &path, &report));
                m.reports.push((arm.clone(), *seed, path, report));
                evaluated = true;
            }
        }
        if evaluated {
            runs.push(read_run(arm, *seed, dir)?);
        }
    }
    let mut tables = Vec::new();
    for m in per_mode {
        let paired = m.paired(&study.arm, &reference)?;
        tables.push(ModeTable {
            mode: m.mode,
            datasets: m.datasets.map(|d| d.0).unwrap_or_default(),
            base: m.base,
            runs: m.rows,
            paired,
        });
    }
    let table = Table { study: study.clone(), config_path: config_name, reference, runs, modes: tables };
    let md = table.markdown();
    echo_model::weights::write_atomic(&out.join("results.md"), md.as_bytes())?;
    echo_model::weights::write_atomic(&out.join("results.json"), serde_json::to_string_pretty(&table)?.as_bytes())?;
    echo_model::weights::write_atomic(&out.join("results.svg"), table.svg().as_bytes())?;
    println!("{md}");
    println!("wrote {}/results.{{md,json,svg}}", out.display());
    Ok(())
}

#[derive(Serialize)]
struct BaseRow {
    accuracy: Vec<f64>,
    no_answer: Vec<usize>,
    average: f64,
}

/// One arm × seed compared with the reference arm's run of the same seed.
#[derive(Serialize)]
struct PairedRow {
    arm: String,
    seed: u64,
    reference: String,
    file: PathBuf,
    reference_file: PathBuf,
    #[serde(flatten)]
    comparison: Comparison,
}

/// One mode's results: accuracies and the paired comparisons.
#[derive(Serialize)]
struct ModeTable {
    mode: Mode,
    datasets: Vec<String>,
    base: Option<BaseRow>,
    runs: Vec<EvalRow>,
    paired: Vec<PairedRow>,
}

#[derive(Serialize)]
struct Table {
    study: StudyConfig,
    config_path: String,
    /// The arm the others are compared with.
    reference: String,
    /// Every finished, evaluated arm × seed: its training.
    runs: Vec<ArmRun>,
    /// Per evaluation mode, in the config's order.
    modes: Vec<ModeTable>,
}

/// Mean and sample standard deviation (0 for one value).
fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// One arm's row of the results table: its name, its finished seeds, and per column (mean,
/// std) over those seeds, with the average as the last column.
type ArmRow = (String, usize, Vec<(f64, f64)>);

/// A p-value for the table: 3 decimals, or 2 significant digits below 0.001.
fn p_value(p: f64) -> String {
    if p < 1e-3 {
        format!("{p:.1e}")
    } else {
        format!("{p:.3}")
    }
}

impl ModeTable {
    /// Arms in config order with their evaluated seeds.
    fn arm_rows(&self, arms: &[Arm]) -> Vec<ArmRow> {
        let mut rows = Vec::new();
        for arm in arms {
            let runs: Vec<&EvalRow> = self.runs.iter().filter(|r| r.arm == arm.name).collect();
            if runs.is_empty() {
                continue;
            }
            let mut cols: Vec<(f64, f64)> = (0..self.datasets.len())
                .map(|j| mean_std(&runs.iter().map(|r| r.accuracy[j]).collect::<Vec<_>>()))
                .collect();
            cols.push(mean_std(&runs.iter().map(|r| r.average).collect::<Vec<_>>()));
            rows.push((arm.name.clone(), runs.len(), cols));
        }
        rows
    }

    fn markdown(&self, study: &StudyConfig, reference: &str) -> String {
        let pct = |(m, s): (f64, f64), n: usize| {
            if n > 1 {
                format!("{:.1} ± {:.1}", 100.0 * m, 100.0 * s)
            } else {
                format!("{:.1}", 100.0 * m)
            }
        };
        let mut s = format!(
            "### Mode `{}`{}\n\nAccuracy (%); mean ± std over seeds where more than one.\n\n",
            self.mode.name(),
            if self.mode == Mode::Generate {
                format!(" (greedy, max {} new tokens, no-answers count as wrong)", study.eval.max_new_tokens)
            } else {
                " (the candidate answer with the highest log-likelihood)".into()
            }
        );
        if self.datasets.is_empty() {
            return s + "Nothing evaluated in this mode yet.\n";
        }
        s += &format!("| arm | seeds | {} | average |\n", self.datasets.join(" | "));
        s += &format!("| --- | ---: |{}\n", " ---: |".repeat(self.datasets.len() + 1));
        if let Some(b) = &self.base {
            let cols: Vec<String> = b.accuracy.iter().map(|a| format!("{:.1}", 100.0 * a)).collect();
            s += &format!("| base (untuned) | - | {} | {:.1} |\n", cols.join(" | "), 100.0 * b.average);
        }
        for (name, n, cols) in self.arm_rows(&study.arm) {
            let cells: Vec<String> = cols.iter().map(|c| pct(*c, n)).collect();
            s += &format!("| {name} | {n} | {} |\n", cells.join(" | "));
        }
        if self.paired.is_empty() {
            return s;
        }
        let resamples = self.paired[0].comparison.bootstrap_resamples;
        s += &format!(
            "\nPaired with the reference arm `{reference}`, seed by seed, on the same records. Difference: arm − \
             `{reference}`, percentage points. 95% interval: paired bootstrap ({resamples} resamples of the records \
             within each dataset; the average's is of the mean over datasets). b / c: records only `{reference}` / \
             only the arm got right; p: McNemar's exact two-sided test on b and c (the average's pools every \
             dataset's records). An interval that contains 0 reads \"no difference\", else \"higher\" or \"lower\" \
             (the arm compared with `{reference}`).\n\n"
        );
        s += &format!(
            "| arm | seed | dataset | records | {reference} (%) | arm (%) | difference (pp) | 95% interval (pp) | b | c | \
             McNemar p | reading |\n| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |\n"
        );
        for row in &self.paired {
            for st in row.comparison.datasets.iter().chain([&row.comparison.average]) {
                let reading = if st.no_difference() {
                    "no difference"
                } else if st.difference_pp > 0.0 {
                    "higher"
                } else {
                    "lower"
                };
                let name = if st.dataset == "average" { "**average**".to_string() } else { st.dataset.clone() };
                s += &format!(
                    "| {} | {} | {name} | {} | {:.1} | {:.1} | {:+.1} | [{:+.1}, {:+.1}] | {} | {} | {} | {reading} |\n",
                    row.arm,
                    row.seed,
                    st.records,
                    100.0 * st.reference_accuracy,
                    100.0 * st.arm_accuracy,
                    st.difference_pp,
                    st.interval_pp[0],
                    st.interval_pp[1],
                    st.b,
                    st.c,
                    p_value(st.mcnemar_p)
                );
            }
        }
        s
    }

    /// Grouped bars, as a nested `<svg>` at height `y0`: one group per dataset (and the
    /// average), one bar per arm (mean over seeds, with a ±std whisker), plus the base model
    /// when evaluated. Returns the chart and its width and height.
    fn svg(&self, arms: &[Arm], y0: f64) -> (String, f64, f64) {
        let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        if let Some(b) = &self.base {
            series.push((
                "base".into(),
                b.accuracy.iter().chain(std::iter::once(&b.average)).map(|&a| (a, 0.0)).collect(),
            ));
        }
        series.extend(self.arm_rows(arms).into_iter().map(|(n, _, c)| (n, c)));
        let groups: Vec<String> = self.datasets.iter().cloned().chain(std::iter::once("average".into())).collect();
        let colors = ["#9e9e9e", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
        let (w, h, left, bottom, top) = (120.0 * groups.len() as f64 + 80.0, 380.0, 50.0, 40.0, 60.0);
        let plot_h = h - bottom - top;
        let bar_w = 100.0 / series.len().max(1) as f64;
        let mut s = format!("<svg x=\"0\" y=\"{y0}\" width=\"{w}\" height=\"{h}\">\n");
        s += &format!("<text x=\"{left}\" y=\"16\" font-weight=\"bold\">mode {}</text>\n", self.mode.name());
        for tick in 0..=5 {
            let v = tick as f64 * 20.0;
            let y = top + plot_h * (1.0 - v / 100.0);
            s += &format!("<line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v}</text>\n", w - 10.0, left - 4.0, y + 4.0);
        }
        for (g, name) in groups.iter().enumerate() {
            let x0 = left + 10.0 + 120.0 * g as f64;
            for (k, (_, vals)) in series.iter().enumerate() {
                let (m, sd) = vals[g];
                let bh = plot_h * m;
                let x = x0 + bar_w * k as f64;
                s += &format!("<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"><title>{:.1}%</title></rect>\n", top + plot_h - bh, bar_w - 2.0, colors[k % colors.len()], 100.0 * m);
                if sd > 0.0 {
                    let cx = x + (bar_w - 2.0) / 2.0;
                    s += &format!(
                        "<line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>\n",
                        top + plot_h * (1.0 - m - sd),
                        top + plot_h * (1.0 - m + sd)
                    );
                }
            }
            s += &format!(
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{name}</text>\n",
                x0 + 50.0,
                h - bottom + 16.0
            );
        }
        for (k, (name, _)) in series.iter().enumerate() {
            let x = left + 130.0 * k as f64;
            s += &format!("<rect x=\"{x}\" y=\"28\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"38\">{name}</text>\n", colors[k % colors.len()], x + 16.0);
        }
        s += &format!("<text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">accuracy (%)</text>\n</svg>\n", top + plot_h / 2.0, top + plot_h / 2.0);
        (s, w, h)
    }
}

impl Table {
    fn markdown(&self) -> String {
        let e = &self.study.eval;
        let mut s = format!(
            "Study `{}`: {} seed(s) {:?}; {} test records of each dataset; modes {}.\n\n",
            self.config_path,
            self.study.seeds.len(),
            self.study.seeds,
            e.limit.map(|l| format!("the first {l}")).unwrap_or_else(|| "all".into()),
            self.modes.iter().map(|m| format!("`{}`", m.mode.name())).collect::<Vec<_>>().join(", ")
        );
        for m in &self.modes {
            s += &m.markdown(&self.study, &self.reference);
            s += "\n";
        }
        s += "### Runs\n\n| arm | seed | steps | train time | tokens/s | best val loss |";
        let mut rule = String::from("| --- | ---: | ---: | ---: | ---: | ---: |");
        for m in &self.modes {
            s += &format!(" eval time ({}) |", m.mode.name());
            rule += " ---: |";
            if m.mode == Mode::Generate {
                s += " no answers (generate) |";
                rule += " --- |";
            }
        }
        s += &format!("\n{rule}\n");
        for r in &self.runs {
            s += &format!(
                "| {} | {} | {} | {:.0} s | {:.0} | {} |",
                r.arm,
                r.seed,
                r.steps,
                r.train_seconds,
                r.tokens_per_second,
                r.best_val_loss.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into()),
            );
            for m in &self.modes {
                let row = m.runs.iter().find(|e| e.arm == r.arm && e.seed == r.seed);
                s += &match row {
                    Some(e) => format!(" {:.0} s |", e.eval_seconds),
                    None => " - |".into(),
                };
                if m.mode == Mode::Generate {
                    s += &match row {
                        Some(e) => format!(" {:?} |", e.no_answer),
                        None => " - |".into(),
                    };
                }
            }
            s += "\n";
        }
        s
    }

    /// One chart per mode, stacked.
    fn svg(&self) -> String {
        let (mut body, mut width, mut y) = (String::new(), 0f64, 0.0);
        for m in &self.modes {
            let (chart, w, h) = m.svg(&self.study.arm, y);
            body += &chart;
            width = width.max(w);
            y += h;
        }
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{y}\" font-family=\"sans-serif\" \
             font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_reach_into_tables_and_typos_fail_validation() {
        let mut base: toml::Table =
            toml::from_str("[model]\npath = \"m\"\n[echo]\nenabled = true\nd_echo = 64\n").unwrap();
        let over: toml::Table = toml::from_str("\"echo.enabled\" = false\ntrain = { max_steps = 7 }\n").unwrap();
        apply(&mut base, &over, "test").unwrap();
        let cfg = RunConfig::parse(&toml::to_string(&base).unwrap()).unwrap();
        assert!(!cfg.echo.enabled);
        assert_eq!(cfg.echo.d_echo, 64, "siblings kept");
        assert_eq!(cfg.train.max_steps, 7);
        let typo: toml::Table = toml::from_str("\"echo.enabld\" = false\n").unwrap();
        apply(&mut base, &typo, "test").unwrap();
        let e = RunConfig::parse(&toml::to_string(&base).unwrap()).unwrap_err().to_string();
        assert!(e.contains("enabld"), "{e}");
        let bad: toml::Table = toml::from_str("\"model.path.x\" = 1\n").unwrap();
        assert!(apply(&mut base, &bad, "test").unwrap_err().to_string().contains("not a table"));
    }

    #[test]
    fn every_shipped_study_config_builds_its_arms() {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs"));
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.file_name().unwrap().to_string_lossy().starts_with("study-") {
                let (study, plans) = plan(&p).unwrap_or_else(|e| panic!("{e:#}"));
                assert_eq!(plans.len(), study.arm.len() * study.seeds.len(), "{}", p.display());
                // Arms differ from each other; same data and budget.
                for w in plans.windows(2) {
                    assert_eq!(w[0].3.data, w[1].3.data);
                    assert_eq!(w[0].3.train.max_steps, w[1].3.train.max_steps);
                }
                // Every path resolves, from the file it is written in, to something the
                // repository ships (a clone with nothing beside it can run the study).
                assert!(Path::new(&study.eval.data).join("boolq/test.json").is_file(), "{}", study.eval.data);
                for f in plans.iter().flat_map(|p| &p.3.data.train) {
                    assert!(Path::new(f).is_file(), "{}: data.train {f} is not a file", p.display());
                }
                assert!(plans.iter().all(|p| p.3.output.dir.starts_with(&study.out)));
                n += 1;
            }
        }
        assert!(n >= 3, "found {n} study configs");
    }

    #[test]
    fn a_typo_in_an_arm_names_the_arm_and_key() {
        let dir = std::env::temp_dir().join(format!("echo-study-typo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("base.toml"), "[model]\npath = \"m\"\n").unwrap();
        let study = "base = \"base.toml\"\nout = \"o\"\n[eval]\ndata = \"d\"\n[[arm]]\nname = \"A\"\n[[arm]]\nname = \"B\"\nset = { \"echo.p_rout\" = 1.0 }\n";
        std::fs::write(dir.join("study.toml"), study).unwrap();
        let e = format!("{:#}", plan(&dir.join("study.toml")).unwrap_err());
        assert!(e.contains("arm `B`") && e.contains("p_rout"), "{e}");
    }

    #[test]
    fn eval_modes_and_reference() {
        let section = |extra: &str| -> EvalSection { toml::from_str(&format!("data = \"d\"\n{extra}")).unwrap() };
        assert_eq!(section("").modes().unwrap(), vec![Mode::Generate]);
        assert_eq!(section("mode = \"loglik\"").modes().unwrap(), vec![Mode::Loglik]);
        let both = section("modes = [\"loglik\", \"generate\"]");
        assert_eq!(both.modes().unwrap(), vec![Mode::Loglik, Mode::Generate]);
        let err = |extra: &str| format!("{:#}", section(extra).modes().unwrap_err());
        let e = err("mode = \"loglik\"\nmodes = [\"loglik\"]");
        assert!(e.contains("either `mode`") && e.contains("not both"), "{e}");
        assert!(err("modes = []").contains("empty"));
        assert!(err("modes = [\"loglik\", \"loglik\"]").contains("listed twice"));
        let e = err("modes = [\"generate\", \"logprob\"]");
        assert!(e.contains("logprob") && e.contains("`generate` or `loglik`"), "{e}");

        let arms: Vec<Arm> = ["A", "B"].iter().map(|n| Arm { name: n.to_string(), set: toml::Table::new() }).collect();
        assert_eq!(section("").reference(&arms).unwrap(), "A");
        assert_eq!(section("reference = \"B\"").reference(&arms).unwrap(), "B");
        let e = format!("{:#}", section("reference = \"C\"").reference(&arms).unwrap_err());
        assert!(e.contains("\"C\"") && e.contains("[\"A\", \"B\"]"), "{e}");
    }

    #[test]
    fn an_older_eval_json_is_the_report_of_its_mode() {
        let dir = std::env::temp_dir().join(format!("echo-study-reports-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let report = |mode: Mode| EvalReport {
            model: "m".into(),
            adapter: None,
            mode,
            decoding: "greedy".into(),
            max_new_tokens: 32,
            limit: None,
            datasets: Vec::new(),
            average: 0.0,
            seconds: 1.0,
            predictions: Vec::new(),
            skipped: Vec::new(),
        };
        assert_eq!(report_file(&dir, Mode::Loglik).unwrap(), None);
        write_report(&dir.join("eval.json"), &report(Mode::Loglik)).unwrap();
        assert_eq!(report_file(&dir, Mode::Loglik).unwrap(), Some(dir.join("eval.json")));
        assert_eq!(report_file(&dir, Mode::Generate).unwrap(), None);
        // eval-<mode>.json is preferred; a file holding another mode than its name says is refused.
        write_report(&dir.join("eval-loglik.json"), &report(Mode::Generate)).unwrap();
        let path = report_file(&dir, Mode::Loglik).unwrap().unwrap();
        assert_eq!(path, dir.join("eval-loglik.json"));
        let e = format!("{:#}", read_report(&path, Mode::Loglik).unwrap_err());
        assert!(e.contains("eval-loglik.json") && e.contains("mode `generate`, expected `loglik`"), "{e}");
        std::fs::write(dir.join("eval.json"), "{}").unwrap();
        let e = format!("{:#}", report_file(&dir, Mode::Generate).unwrap_err());
        assert!(e.contains("eval.json") && e.contains("expected an evaluation report"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn arm_folders() {
        assert_eq!(slug("Echo-LoRA"), "echo-lora");
        assert_eq!(slug("no KD (lambda_kd 0)"), "no-kd-lambda-kd-0");
    }

    #[test]
    fn mean_and_spread() {
        assert_eq!(mean_std(&[0.5]), (0.5, 0.0));
        let (m, s) = mean_std(&[0.4, 0.6]);
        assert!((m - 0.5).abs() < 1e-12 && (s - 0.1414213562).abs() < 1e-9);
    }
}

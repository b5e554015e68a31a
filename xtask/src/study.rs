//! `cargo xtask study CONFIG`: trains several arms (LoRA, Echo-LoRA, ...) on the same data,
//! budget and seeds, evaluates each, and writes one side-by-side table (Markdown + JSON) and a
//! bar chart (SVG) to the study's output folder.
//!
//! A study config names a base run config and, per arm, the keys that differ (dotted names of
//! the run config: `"echo.enabled" = false`). Every arm × seed trains into
//! `<out>/<arm>-seed<N>/`; a finished one (summary.json + eval.json present) is reused and an
//! interrupted one resumes from its checkpoint, so a long study survives being stopped.

use crate::eval::{evaluate, write_report, EvalJob};
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
    #[serde(default = "default_mode")]
    mode: String,
    limit: Option<usize>,
    #[serde(default = "default_batch")]
    batch: usize,
    #[serde(default = "default_new_tokens")]
    max_new_tokens: usize,
}

fn default_mode() -> String {
    "generate".into()
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

/// One finished arm × seed.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct ArmRun {
    arm: String,
    seed: u64,
    dir: PathBuf,
    train_seconds: f64,
    steps: usize,
    tokens_per_second: f64,
    best_val_loss: Option<f64>,
    eval_seconds: f64,
    /// Accuracy per dataset, in the order of `datasets`.
    accuracy: Vec<f64>,
    no_answer: Vec<usize>,
    average: f64,
}

fn read_run(arm: &str, seed: u64, dir: &Path, report: &EvalReport) -> Result<ArmRun> {
    let path = dir.join("summary.json");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?)?;
    Ok(ArmRun {
        arm: arm.into(),
        seed,
        dir: dir.into(),
        train_seconds: s["wall_seconds"].as_f64().unwrap_or(0.0),
        steps: s["steps"].as_u64().unwrap_or(0) as usize,
        tokens_per_second: s["tokens_per_second"].as_f64().unwrap_or(0.0),
        best_val_loss: s["best_val_loss"].as_f64(),
        eval_seconds: report.seconds,
        accuracy: report.datasets.iter().map(|d| d.accuracy).collect(),
        no_answer: report.datasets.iter().map(|d| d.no_answer).collect(),
        average: report.average,
    })
}

fn read_report(path: &Path) -> Result<EvalReport> {
    serde_json::from_str(&std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)
        .with_context(|| format!("parsing {}", path.display()))
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
    let study_dir = std::path::absolute(config.parent().unwrap_or(Path::new("")))
        .with_context(|| format!("{}: its folder", config.display()))?;
    for p in [&mut study.out, &mut study.eval.data] {
        *p = echo_trainer::config::resolve_relative(&study_dir, p);
    }
    let base_path = study_dir.join(&study.base);
    let base_cfg = RunConfig::from_file(&base_path)
        .map_err(|e| anyhow::anyhow!("{}: base = {}: {e}", config.display(), study.base))?;
    let base = toml::Table::try_from(&base_cfg).with_context(|| format!("{}", base_path.display()))?;
    let out = PathBuf::from(&study.out);
    Mode::parse(&study.eval.mode).with_context(|| format!("{}: [eval] mode", config.display()))?;

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
    let out = PathBuf::from(&study.out);
    let mode = Mode::parse(&study.eval.mode).with_context(|| format!("{}: [eval] mode", args.config.display()))?;
    let model_dir = crate::model::resolve_model(&plans[0].3.model.path)?;
    if plans.iter().any(|p| p.3.model.path != plans[0].3.model.path) {
        bail!("{}: every arm must use the same base model", args.config.display());
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let opts = EvalOptions { mode, batch: study.eval.batch, max_new_tokens: study.eval.max_new_tokens };
    let data = PathBuf::from(&study.eval.data);
    let run_eval = |adapter: Option<&Path>| -> Result<EvalReport> {
        evaluate(&EvalJob {
            model_dir: &model_dir,
            adapter,
            data: &data,
            datasets: &study.eval.datasets,
            limit: study.eval.limit,
            opts: opts.clone(),
            progress: true,
        })
    };

    let mut base_report = None;
    if study.eval_base {
        let path = out.join("base").join("eval.json");
        if !path.exists() && !args.report_only {
            println!("== base model (no adapter): evaluating");
            write_report(&path, &run_eval(None)?)?;
        }
        if path.exists() {
            base_report = Some(read_report(&path)?);
        }
    }
    let mut runs = Vec::new();
    let mut dataset_names: Option<Vec<String>> =
        base_report.as_ref().map(|r| r.datasets.iter().map(|d| d.name.clone()).collect());
    let deadline = args.minutes.map(|m| std::time::Instant::now() + std::time::Duration::from_secs_f64(m * 60.0));
    let mut steps_left = args.steps;
    let mut stopped = false;
    for (i, (arm, seed, dir, cfg)) in plans.iter().enumerate() {
        let eval_path = dir.join("eval.json");
        let finished = run_finished(dir)?;
        let out_of_budget = steps_left == Some(0) || deadline.is_some_and(|d| std::time::Instant::now() >= d);
        if !args.report_only && (!finished || !eval_path.exists()) && (stopped || out_of_budget) {
            stopped = true;
            println!(
                "== [{}/{}] {arm}, seed {seed}: not started in this piece (run the command again)",
                i + 1,
                plans.len()
            );
            continue;
        }
        if !args.report_only {
            if !finished {
                let resume = echo_trainer::checkpoint::exists(dir);
                println!(
                    "== [{}/{}] {arm}, seed {seed}: {} ({})",
                    i + 1,
                    plans.len(),
                    if resume { "resuming" } else { "training" },
                    dir.display()
                );
                // An arm stopped before its first checkpoint starts again, its partial run
                // moved aside (`<arm>.old-<unix time>`).
                let summary = train(
                    cfg,
                    &model_dir,
                    dir,
                    &RunOptions { resume, overwrite: !resume, progress: true, stop_after: steps_left, deadline },
                )
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("arm `{arm}` seed {seed}"))?;
                let done_here = summary.steps - summary.resumed_from.unwrap_or(0);
                steps_left = steps_left.map(|n| n.saturating_sub(done_here));
                if summary.steps < summary.total_steps {
                    println!(
                        "== [{}/{}] {arm}, seed {seed}: stopped at step {}/{} (checkpoint saved; run the command again \
                         to continue)",
                        i + 1,
                        plans.len(),
                        summary.steps,
                        summary.total_steps
                    );
                    stopped = true;
                    continue;
                }
            }
            if !eval_path.exists() {
                // The adapter with the best validation loss when validation ran, else the last.
                let best = dir.join("best-adapter");
                let adapter = if best.join("adapter_config.json").exists() { best } else { dir.join("adapter") };
                println!("== [{}/{}] {arm}, seed {seed}: evaluating {}", i + 1, plans.len(), adapter.display());
                write_report(&eval_path, &run_eval(Some(&adapter))?)?;
            }
        }
        if run_finished(dir)? && eval_path.exists() {
            let report = read_report(&eval_path)?;
            let names: Vec<String> = report.datasets.iter().map(|d| d.name.clone()).collect();
            if dataset_names.get_or_insert_with(|| names.clone()) != &names {
                bail!(
                    "{}: evaluated on {:?}, other arms on {:?} (delete it to re-evaluate)",
                    eval_path.display(),
                    names,
                    dataset_names
                );
            }
            runs.push(read_run(arm, *seed, dir, &report)?);
        }
    }
    let datasets = dataset_names.unwrap_or_default();
    let table = Table {
        study: study.clone(),
        config_path: args.config.display().to_string(),
        datasets,
        base: base_report.map(|r| BaseRow {
            accuracy: r.datasets.iter().map(|d| d.accuracy).collect(),
            no_answer: r.datasets.iter().map(|d| d.no_answer).collect(),
            average: r.average,
        }),
        runs,
    };
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

#[derive(Serialize)]
struct Table {
    study: StudyConfig,
    config_path: String,
    datasets: Vec<String>,
    base: Option<BaseRow>,
    runs: Vec<ArmRun>,
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

impl Table {
    /// Arms in config order with their finished seeds.
    fn arm_rows(&self) -> Vec<ArmRow> {
        let mut rows = Vec::new();
        for arm in &self.study.arm {
            let runs: Vec<&ArmRun> = self.runs.iter().filter(|r| r.arm == arm.name).collect();
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

    fn markdown(&self) -> String {
        let pct = |(m, s): (f64, f64), n: usize| {
            if n > 1 {
                format!("{:.1} ± {:.1}", 100.0 * m, 100.0 * s)
            } else {
                format!("{:.1}", 100.0 * m)
            }
        };
        let e = &self.study.eval;
        let mut s = format!(
            "Accuracy (%) on the first {} test records of each dataset, mode `{}`{}; {} seed(s): {:?}. Study: `{}`.\n\n",
            e.limit.map(|l| l.to_string()).unwrap_or_else(|| "all".into()),
            e.mode,
            if e.mode == "generate" { format!(" (greedy, max {} new tokens, no-answers count as wrong)", e.max_new_tokens) } else { String::new() },
            self.study.seeds.len(),
            self.study.seeds,
            self.config_path
        );
        s += &format!("| arm | seeds | {} | average |\n", self.datasets.join(" | "));
        s += &format!("| --- | ---: |{}\n", " ---: |".repeat(self.datasets.len() + 1));
        if let Some(b) = &self.base {
            let cols: Vec<String> = b.accuracy.iter().map(|a| format!("{:.1}", 100.0 * a)).collect();
            s += &format!("| base (untuned) | - | {} | {:.1} |\n", cols.join(" | "), 100.0 * b.average);
        }
        for (name, n, cols) in self.arm_rows() {
            let cells: Vec<String> = cols.iter().map(|c| pct(*c, n)).collect();
            s += &format!("| {name} | {n} | {} |\n", cells.join(" | "));
        }
        s += "\n| arm | seed | steps | train time | tokens/s | best val loss | eval time | no answers |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n";
        for r in &self.runs {
            s += &format!(
                "| {} | {} | {} | {:.0} s | {:.0} | {} | {:.0} s | {:?} |\n",
                r.arm,
                r.seed,
                r.steps,
                r.train_seconds,
                r.tokens_per_second,
                r.best_val_loss.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into()),
                r.eval_seconds,
                r.no_answer
            );
        }
        s
    }

    /// Grouped bars: one group per dataset (and the average), one bar per arm (mean over
    /// seeds, with a ±std whisker), plus the base model when evaluated.
    fn svg(&self) -> String {
        let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        if let Some(b) = &self.base {
            series.push((
                "base".into(),
                b.accuracy.iter().chain(std::iter::once(&b.average)).map(|&a| (a, 0.0)).collect(),
            ));
        }
        series.extend(self.arm_rows().into_iter().map(|(n, _, c)| (n, c)));
        let groups: Vec<String> = self.datasets.iter().cloned().chain(std::iter::once("average".into())).collect();
        let colors = ["#9e9e9e", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
        let (w, h, left, bottom, top) = (120.0 * groups.len() as f64 + 80.0, 360.0, 50.0, 40.0, 40.0);
        let plot_h = h - bottom - top;
        let bar_w = 100.0 / series.len().max(1) as f64;
        let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
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
            s += &format!("<rect x=\"{x}\" y=\"12\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"22\">{name}</text>\n", colors[k % colors.len()], x + 16.0);
        }
        s += &format!("<text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">accuracy (%)</text>\n</svg>\n", top + plot_h / 2.0, top + plot_h / 2.0);
        s
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
        let e = RunConfig::parse(&toml::to_string(&base).unwrap()).unwrap_err();
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

//! `cargo xtask train [CONFIG]`: fine-tune as the run config says (default: the embedded
//! `configs/default.toml`: SmolLM2-135M-Instruct on the synthetic task, a few minutes on a CPU).

use anyhow::{Context, Result};
use echo_trainer::{train, RunConfig, RunOptions};
use std::path::{Path, PathBuf};

/// The default run, embedded so `cargo xtask train` works from any directory.
const DEFAULT_CONFIG: &str = include_str!("../../configs/default.toml");
const DEFAULT_CONFIG_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs");

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Run configuration (TOML). Default: configs/default.toml (embedded in the binary).
    config: Option<PathBuf>,
    /// Output folder (default: the config's `output.dir`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in the output folder from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Start a new run in an output folder that holds one, moving the old run aside to
    /// `<folder>.old-<unix time>` (never deleting it). Without it, or --resume, such a
    /// folder is refused.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Override `train.max_steps`.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Where to compute: auto, cpu, cuda or cuda:N (overrides `train.device`; auto takes the
    /// first CUDA device when one is usable, else the CPU, and says which and why).
    #[arg(long)]
    device: Option<echo_kernels::cuda::DeviceSpec>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let mut cfg = match &args.config {
        Some(p) => RunConfig::from_file(p)?,
        None => {
            let mut c =
                RunConfig::parse(DEFAULT_CONFIG).map_err(|e| anyhow::anyhow!("embedded configs/default.toml: {e}"))?;
            // Its paths mean what they mean in configs/default.toml, the file it was read from.
            c.resolve_paths(Path::new(DEFAULT_CONFIG_DIR));
            c
        }
    };
    if let Some(n) = args.max_steps {
        cfg.train.max_steps = n;
    }
    if let Some(d) = args.device {
        cfg.train.device = d;
    }
    let model_dir = crate::model::resolve_model(&cfg.model.path)?;
    let out = args.out.unwrap_or_else(|| PathBuf::from(&cfg.output.dir));
    let echo = if cfg.echo.enabled {
        let e = &cfg.echo;
        format!(
            "echo on (injection at the {}, p_route {}, lambda_kd {}, tau {})",
            e.injection.name(),
            e.p_route,
            e.lambda_kd,
            e.tau
        )
    } else {
        "echo off".into()
    };
    println!(
        "training {} r={} on {} with {echo}\n  data: {}\n  output: {}",
        cfg.adapter.method,
        cfg.adapter.r,
        model_dir.display(),
        cfg.data.train.join(", "),
        out.display()
    );
    let s = train(
        &cfg,
        &model_dir,
        &out,
        &RunOptions {
            resume: args.resume,
            overwrite: args.overwrite,
            progress: true,
            stop_after: None,
            deadline: None,
        },
    )
    .with_context(|| match &args.config {
        Some(p) => format!("training with {} failed", p.display()),
        None => "training failed".into(),
    })?;
    let f = |x: Option<f32>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    let resumed = s.resumed_from.map(|r| format!(", resumed at step {r}")).unwrap_or_default();
    let peak = s.peak_rss_bytes.map(|b| format!(", peak RSS {:.2} GB", b as f64 / 1e9)).unwrap_or_default();
    println!(
        "done: {}/{} steps in {:.0} s ({:.0} tokens/s) on {}{peak}{resumed}",
        s.steps, s.total_steps, s.wall_seconds, s.tokens_per_second, s.device
    );
    println!("  train loss: first step {} -> last step {}", f(s.first_loss), f(s.last_loss));
    println!(
        "  validation loss (plain route, {} held-out records): before training {} -> best {} (step {})",
        s.val_examples,
        f(s.first_val_loss),
        f(s.best_val_loss),
        s.best_step.map(|x| x.to_string()).unwrap_or("-".into())
    );
    println!("  adapter (HF PEFT): {}", s.adapter_dir.display());
    println!("  best adapter: {}", s.out_dir.join("best-adapter").display());
    // The echo diagnostics' plot exists only for a run that measured the echo path.
    let echo_svg = s.out_dir.join("echo.svg");
    let echo_plot =
        if echo_svg.is_file() { format!(", echo diagnostics: {}", echo_svg.display()) } else { String::new() };
    println!(
        "  metrics: {}, plot: {}{echo_plot}",
        s.out_dir.join("metrics.jsonl").display(),
        s.out_dir.join("loss.svg").display()
    );
    Ok(())
}

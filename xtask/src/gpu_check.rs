//! `cargo xtask gpu-check`: on a GPU machine, every CUDA kernel against its CPU twin (random
//! and edge-case shapes, max error vs tolerance), the whole training step on tiny-llama-a
//! against the CPU (LoRA, DoRA, Echo-LoRA, Echo-DoRA: loss, every gradient, one AdamW step),
//! then the benches: the kernels against the unfused cuBLAS baseline, and the headline LoRA
//! step on a LLaMA-7B-shaped model against transformers + PEFT on the same GPU (a ratio of
//! tokens/s), and one summary. Without a CUDA driver it says so and succeeds.
//!
//! Made for a first run that may be short: every kernel check runs its GPU side twice on
//! NaN-prefilled outputs (bit-identical runs required), the first driver error stops
//! everything after it and heads the summary (after an illegal address the context is dead,
//! and every later stage would only repeat that error), the LLaMA-7B step fails unless its
//! first loss is near `ln V`, and our GPU memory is freed and the device synchronised before
//! the PEFT process starts (both peaks are printed). `--load-only` just compiles and loads the
//! kernels (filling the cubin cache, e.g. before a run under compute-sanitizer).
//!
//! Everything runs from library code (`echo_kernels::cuda::{check, bench}`,
//! `echo_trainer::{device_check, step_bench}`), so the prebuilt `target/release/xtask
//! gpu-check` works on a GPU machine that has no Rust toolchain: the kernels are embedded and
//! compiled there by NVRTC (cached under ~/.cache/echo-lora/kernels), and so is the PEFT
//! script (`benches/peft_step_7b.py`), run with `python3` from PATH when torch, transformers
//! and peft are importable (skipped with a message otherwise). The step check needs the
//! tiny-llama-a fixture folder (`--fixture`, or found next to the repository).

use anyhow::{bail, Result};
use echo_kernels::cuda::{self, bench, check, runtime::Gpu, CudaError};
use echo_tensor::Device;
use echo_trainer::device_check::{self, StepCheck};
use echo_trainer::step_bench::{self, StepBench, StepBenchResult};
use echo_trainer::TrainError;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The transformers + PEFT side of the headline bench, run with `--python`.
const PEFT_SCRIPT: &str = include_str!("../../benches/peft_step_7b.py");
/// The goal for ours / transformers+PEFT tokens per second.
const GOAL_RATIO: f64 = 2.0;

#[derive(clap::Args)]
pub struct GpuCheckArgs {
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Checks only, no benches.
    #[arg(long)]
    no_bench: bool,
    /// Benches only, no checks: for profiling the step (e.g. under `ncu`), whose launches are
    /// then the only ones besides the kernel benches'.
    #[arg(long, conflicts_with_all = ["no_bench", "load_only"])]
    bench_only: bool,
    /// Only open the device and compile / load every kernel file (fills the on-disk cubin
    /// cache), then stop.
    #[arg(long)]
    load_only: bool,
    /// The tiny-llama-a fixture folder for the whole-step check (default: looked for next to
    /// the repository, `fixtures/tiny-llama-a`, or under $ECHO_FIXTURES).
    #[arg(long)]
    fixture: Option<PathBuf>,
    /// Decoder layers of the LLaMA-7B-shaped step bench (32 is the real shape).
    #[arg(long, default_value_t = 32)]
    layers: usize,
    /// Timed steps of the step bench (each side), after --warmup steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed steps of the step bench before the timed ones (compilation, allocator warm-up).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Python with torch, transformers and peft for the reference side of the step bench.
    #[arg(long, default_value = "python3")]
    python: String,
}

/// The fixture folder: `--fixture`, else the first candidate holding a config.json.
fn find_fixture(given: Option<&Path>) -> Result<PathBuf, TrainError> {
    if let Some(p) = given {
        return match p.join("config.json").exists() {
            true => Ok(p.to_path_buf()),
            false => Err(TrainError::Other(format!("--fixture {}: no config.json there", p.display()))),
        };
    }
    // The repository's copy ($ECHO_FIXTURES when set), then the working directory's (the
    // device bundle runs from the root of a copy of the tree, not where this was compiled).
    let candidates = [echo_testdata::tiny_llama_a(), PathBuf::from("fixtures/tiny-llama-a")];
    candidates.iter().find(|c| c.join("config.json").exists()).cloned().ok_or_else(|| {
        let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
        TrainError::Other(format!(
            "the tiny-llama-a fixture was not found (tried {}): pass --fixture DIR",
            tried.join(", ")
        ))
    })
}

/// The reference side's outcome.
enum Peft {
    Ran(serde_json::Value),
    Skipped(String),
    Failed(String),
}

/// Runs `peft_step_7b.py` with `python` and reads its JSON line: the file named by
/// `$ECHO_PEFT_SCRIPT` if set, else the copy embedded in this binary (written to a temporary
/// file for the run).
fn run_peft(python: &str, ordinal: usize, layers: usize, steps: usize, warmup: usize) -> Peft {
    let (script, temporary) = match std::env::var_os("ECHO_PEFT_SCRIPT") {
        Some(p) => (PathBuf::from(p), false),
        None => (std::env::temp_dir().join(format!("echo-lora-peft_step_7b-{}.py", std::process::id())), true),
    };
    if temporary {
        if let Err(e) = std::fs::write(&script, PEFT_SCRIPT) {
            return Peft::Failed(format!("writing {}: {e}", script.display()));
        }
    }
    let out = Command::new(python)
        .arg(&script)
        .args([
            "--layers",
            &layers.to_string(),
            "--steps",
            &steps.to_string(),
            "--warmup",
            &warmup.to_string(),
            "--device",
            &format!("cuda:{ordinal}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output();
    if temporary {
        let _ = std::fs::remove_file(&script);
    }
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Peft::Skipped(format!("{python} not found on PATH"))
        }
        Err(e) => return Peft::Failed(format!("running {python}: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout.lines().rev().find_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok());
    match (out.status.code(), json) {
        (Some(3 | 4), j) => Peft::Skipped(
            j.and_then(|j| j["skipped"].as_str().map(String::from))
                .unwrap_or_else(|| "torch, transformers or peft unavailable".into()),
        ),
        (Some(0), Some(j)) if j["tokens_per_s"].is_number() => Peft::Ran(j),
        (code, _) => Peft::Failed(format!("{python} peft_step_7b.py exited with {code:?}, no result line")),
    }
}

/// `f()`, with a panic turned into an error, so one broken stage still leaves the others and
/// the summary (the panic's message is printed by the default hook as it happens).
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, TrainError>) -> Result<T, TrainError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(TrainError::Other(format!("{what} panicked (message above)"))))
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn print_bench(r: &StepBenchResult, vocab: usize) {
    let mean = r.step_seconds.iter().sum::<f64>() / r.step_seconds.len().max(1) as f64;
    println!(
        "ours: {:.0} tokens/s ({} tokens/step, mean {:.3} s over {} steps; setup {:.1} s; loss {:.4} (ln V = {:.4}, must be within {}) -> {:.4}; allocator peak {})",
        r.tokens_per_s,
        r.tokens_per_step,
        mean,
        r.step_seconds.len(),
        r.setup_seconds,
        r.first_loss,
        (vocab as f32).ln(),
        step_bench::FIRST_LOSS_TOL,
        r.last_loss,
        r.device_peak_bytes.map_or("-".to_string(), |b| format!("{:.2} GiB", gib(b)))
    );
}

/// What the summary says about a stop after a driver error.
struct Stop {
    at: String,
    error: String,
    skipped: String,
}

pub fn run(args: GpuCheckArgs) -> Result<()> {
    let probe = cuda::probe();
    match probe.unusable() {
        Some(CudaError::NoDriver) => {
            println!("skipped: no CUDA driver (libcuda could not be loaded on this machine)");
            return Ok(());
        }
        Some(e @ CudaError::NoDevice(_)) => {
            println!("skipped: no CUDA driver with a usable device ({e})");
            return Ok(());
        }
        Some(e) => bail!("a CUDA driver is here but the backend cannot run: {e}"),
        None => {}
    }
    let t = Instant::now();
    let gpu = Gpu::get(args.device)?;
    println!(
        "device cuda:{}: {} ({}), {} device(s)",
        gpu.ordinal,
        gpu.name,
        gpu.arch,
        probe.devices.as_ref().map_or(0, |n| *n)
    );
    gpu.load_all()?;
    let compiled: Vec<String> =
        gpu.compile_log().iter().map(|(f, fresh)| format!("{f}{}", if *fresh { "" } else { " (cached)" })).collect();
    println!("kernels loaded in {:.2} s: {}", t.elapsed().as_secs_f64(), compiled.join(", "));
    if let Some(d) = cuda::source::cache_dir() {
        println!("kernel cache: {}", d.display());
    }
    if args.load_only {
        return Ok(());
    }

    println!("\n== kernels vs CPU twins (each GPU side twice on NaN-prefilled outputs, bit-identical required)");
    let t = Instant::now();
    let results = if args.bench_only {
        println!("skipped (--bench-only)");
        Vec::new()
    } else {
        check::run_all(&gpu)
    };
    for r in &results {
        println!("{r}");
    }
    let failed = results.iter().filter(|r| !r.ok && r.not_run == 0).count();
    let compared = results.iter().filter(|r| r.not_run == 0).count();
    println!("{compared} comparisons in {:.1} s", t.elapsed().as_secs_f64());
    let mut stop = check::stopped_at(&results).map(|r| Stop {
        at: format!("kernel check `{}` ({})", r.name, r.shape),
        error: r.error.clone().unwrap_or_default(),
        skipped: format!(
            "{} later kernel check(s), the whole-step check and the benches were not run",
            results.iter().map(|r| r.not_run).sum::<usize>()
        ),
    });
    if let Some(s) = &stop {
        println!("STOPPED at a driver error in {}: {}", s.at, s.error);
    }

    let mut steps: Option<Result<Vec<StepCheck>, TrainError>> = None;
    if stop.is_none() && !args.bench_only {
        println!("\n== whole training step on tiny-llama-a: cuda:{} vs cpu (device side twice)", gpu.ordinal);
        let t = Instant::now();
        let s = find_fixture(args.fixture.as_deref()).and_then(|dir| {
            println!("fixture: {}", dir.display());
            guarded("the whole-step check", || device_check::step_checks(&dir, Device::Cuda(gpu.ordinal)))
        });
        match &s {
            Ok(s) => {
                for c in s {
                    println!("{c}");
                }
                println!(
                    "{} cases in {:.1} s (tolerances: loss and gradient norm rel {:.0e}; each gradient cosine >= {}, norm within {:.0}%, or {}x the gradient's own noise floor on the cpu where that is larger; AdamW update {:.0e} lr; two device runs bit-identical)",
                    s.len(),
                    t.elapsed().as_secs_f64(),
                    device_check::LOSS_TOL,
                    1.0 - device_check::COS_TOL,
                    device_check::NORM_TOL * 100.0,
                    device_check::NOISE_FACTOR,
                    device_check::UPDATE_TOL
                );
            }
            Err(e) => println!("step check error: {e}"),
        }
        steps = Some(s);
        // A fault in the step leaves the context dead: every later stage would repeat it.
        if let Err(e) = gpu.synchronize() {
            println!("STOPPED: the CUDA context is unusable after the whole-step check: {e}");
            stop = Some(Stop {
                at: "the whole-step check".into(),
                error: e.to_string(),
                skipped: "the benches were not run".into(),
            });
        }
    }
    let step_failed = match &steps {
        Some(Ok(s)) => s.iter().filter(|c| !c.ok()).count(),
        _ => 0,
    };

    let mut benches = Vec::new();
    let mut bench_error = None;
    let mut step_bench: Option<Result<StepBenchResult, TrainError>> = None;
    let mut peft = None;
    let vocab = StepBench::llama_7b().config.vocab_size;
    if !args.no_bench && stop.is_none() {
        println!("\n== benches (ours vs unfused cuBLAS baseline)");
        match bench::run_all(&gpu) {
            Ok(b) => {
                for r in &b {
                    println!("{r}");
                }
                benches = b;
            }
            Err(e) => {
                println!("bench error: {e}");
                bench_error = Some(e);
            }
        }
        let b = StepBench {
            steps: args.steps.max(1),
            warmup: args.warmup,
            ..StepBench::llama_7b().with_layers(args.layers)
        };
        println!(
            "\n== LoRA step, LLaMA-7B shape ({} layers), batch {} x {}, r = {} on q,k,v,up,down, bf16 base weights",
            args.layers, b.batch, b.seq, b.r
        );
        let ours = guarded("the step bench", || step_bench::run(&b, Device::Cuda(gpu.ordinal)));
        match &ours {
            Ok(r) => print_bench(r, vocab),
            Err(e) => println!("ours: error: {e}"),
        }
        step_bench = Some(ours);
        // step_bench::run frees and synchronises already; again here in case it panicked.
        match Device::Cuda(gpu.ordinal).release_cached_memory() {
            Ok(()) => {
                let s = gpu.pool_stats();
                let info = gpu.context().mem_get_info().map_or_else(
                    |e| format!("unknown ({e})"),
                    |(free, total)| format!("{:.1} GiB free of {:.1} GiB", gib(free), gib(total)),
                );
                println!(
                    "device memory before transformers+PEFT: {info} (ours: {:.1} MiB in use, {:.1} MiB cached)",
                    s.in_use as f64 / (1 << 20) as f64,
                    s.cached as f64 / (1 << 20) as f64
                );
            }
            Err(e) => println!("freeing our device memory before transformers+PEFT: {e}"),
        }
        println!("transformers + PEFT ({}):", args.python);
        let p = run_peft(&args.python, gpu.ordinal, args.layers, args.steps.max(1), args.warmup);
        match &p {
            Peft::Ran(j) => println!("transformers+peft: {j}"),
            Peft::Skipped(why) => println!("transformers+peft: skipped: {why}"),
            Peft::Failed(why) => println!("transformers+peft: failed: {why}"),
        }
        peft = Some(p);
    }
    let stats = gpu.pool_stats();
    println!("\n== summary");
    if let Some(s) = &stop {
        println!("STOPPED at the first driver error, in {}: {}", s.at, s.error);
        println!(
            "  {} (the CUDA context is unusable after a fault). device-bundle/run.sh runs the kernel test under compute-sanitizer first: its log names the faulting kernel and access.",
            s.skipped
        );
    }
    println!("device: {} ({})", gpu.name, gpu.arch);
    println!("checks: {} ok, {} failed (each GPU side run twice on NaN-prefilled outputs)", compared - failed, failed);
    for r in results.iter().filter(|r| !r.ok) {
        println!("  {r}");
    }
    match &steps {
        Some(Ok(s)) => {
            println!("whole step vs cpu: {} ok, {step_failed} failed", s.len() - step_failed);
            for c in s.iter().filter(|c| !c.ok()) {
                println!("  {c}");
            }
        }
        Some(Err(e)) => println!("whole step vs cpu: error: {e}"),
        None => println!("whole step vs cpu: not run"),
    }
    if !args.no_bench {
        match (&bench_error, stop.is_some()) {
            (_, true) => println!("benches: not run"),
            (Some(e), _) => println!("benches: error: {e}"),
            (None, _) => {
                for r in &benches {
                    println!("bench {:<24} {:<40} x{:.2} vs cuBLAS", r.name, r.shape, r.baseline_us / r.ours_us);
                }
            }
        }
        let ours = step_bench.as_ref().and_then(|r| r.as_ref().ok()).map(|r| r.tokens_per_s);
        let theirs = match &peft {
            Some(Peft::Ran(j)) => j["tokens_per_s"].as_f64(),
            _ => None,
        };
        let line = match (&step_bench, ours, theirs, &peft) {
            (Some(Err(e)), ..) => format!("error (ours): {e}"),
            (_, Some(o), Some(t), _) => format!(
                "ours {o:.0} tokens/s, transformers+PEFT {t:.0} tokens/s: x{:.2} (goal >= x{GOAL_RATIO}: {})",
                o / t,
                if o / t >= GOAL_RATIO { "met" } else { "NOT met" }
            ),
            (_, Some(o), None, Some(Peft::Skipped(why))) => {
                format!("ours {o:.0} tokens/s; no ratio: transformers+PEFT skipped ({why})")
            }
            (_, Some(o), None, Some(Peft::Failed(why))) => {
                format!("ours {o:.0} tokens/s; no ratio: transformers+PEFT failed ({why})")
            }
            _ => "not run".into(),
        };
        println!("bench LoRA step LLaMA-7B shape ({} layers, 16 x 256, r 32): {line}", args.layers);
        if let Some(r) = step_bench.as_ref().and_then(|r| r.as_ref().ok()) {
            println!(
                "  first loss {:.4} vs ln V {:.4} (must be within {}), last {:.4}",
                r.first_loss,
                (vocab as f32).ln(),
                step_bench::FIRST_LOSS_TOL,
                r.last_loss
            );
        }
        if step_bench.is_some() {
            let ours_peak = step_bench
                .as_ref()
                .and_then(|r| r.as_ref().ok())
                .and_then(|r| r.device_peak_bytes)
                .unwrap_or(stats.peak_in_use);
            let theirs_peak = match &peft {
                Some(Peft::Ran(j)) => j["peak_memory_gib"].as_f64().map_or("-".to_string(), |g| format!("{g:.2} GiB")),
                _ => "-".to_string(),
            };
            println!(
                "  peak device memory: ours {:.2} GiB (our allocator's peak in use), transformers+PEFT {theirs_peak} (torch max_memory_allocated)",
                gib(ours_peak)
            );
        }
    }
    println!(
        "allocator: peak {:.1} MiB in use, {} driver allocations, {:.1} MiB cached",
        stats.peak_in_use as f64 / (1 << 20) as f64,
        stats.driver_allocs,
        stats.cached as f64 / (1 << 20) as f64
    );
    let step_error = matches!(steps, Some(Err(_)));
    let step_bench_error = matches!(step_bench, Some(Err(_)));
    if stop.is_some() || failed > 0 || step_failed > 0 || step_error || bench_error.is_some() || step_bench_error {
        bail!(
            "gpu-check failed: {}{failed} kernel comparison(s) and {step_failed} whole-step case(s) out of tolerance{}{}{}",
            stop.as_ref().map_or(String::new(), |s| format!("stopped at a driver error in {}; ", s.at)),
            if step_error { ", the whole-step check errored" } else { "" },
            if bench_error.is_some() { ", kernel benches errored" } else { "" },
            if step_bench_error { ", the step bench errored" } else { "" }
        );
    }
    Ok(())
}

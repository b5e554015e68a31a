//! `cargo xtask bench`: the criterion benchmarks of `benches/` side by side with the numpy
//! (OpenBLAS) reference `benches/numpy_reference.py`.
//!
//! 1. `cargo bench -p echo-benches --bench gemm --bench lora` (every bench file of the crate
//!    with `--all`); criterion writes `target/criterion/<id>/new/*.json`;
//! 2. the numpy script, in the venv `.venv-bench` (created, and numpy installed, on first use),
//!    with `OPENBLAS_CORETYPE` / `OPENBLAS_L2_SIZE` removed from its environment so numpy runs
//!    stock OpenBLAS;
//! 3. one table: per benchmark id, our mean time and GFLOP/s, numpy's, and the ratio. Results of
//!    the other bench files (`--all`) follow as mean times: their throughput is not in FLOPs;
//! 4. the paired run (`bench_paired`): our GEMM and numpy's OpenBLAS library alternating call
//!    by call in one process, the measurement the GEMM goal is judged on; both verdicts are
//!    printed.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

/// Virtual environment holding numpy for the reference, at the workspace root.
const VENV: &str = ".venv-bench";
pub(crate) const SCRIPT: &str = "benches/numpy_reference.py";
/// Tuning overrides that would make the reference something other than stock OpenBLAS.
const OPENBLAS_OVERRIDES: [&str; 2] = ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"];
/// The bench files (`benches/benches/*.rs`) this command runs by default: those whose
/// throughput is in FLOPs and that `numpy_reference.py` mirrors.
const FLOP_BENCHES: [&str; 2] = ["gemm", "lora"];
/// Their criterion groups: only these rows get a GFLOP/s column.
const FLOP_GROUPS: [&str; 2] = ["gemm/", "lora_fwd_bwd/"];
/// The foundation issue's target: our GEMM at no less than this fraction of OpenBLAS.
const GEMM_GOAL: f64 = 0.90;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Shorter runs (1 s warm-up, 3 s of measurement per benchmark, criterion and numpy alike)
    /// instead of 2 s and 6 s: noisier numbers, about half the time.
    #[arg(long)]
    quick: bool,
    /// Skip the numpy reference: criterion only (no venv, no network).
    #[arg(long)]
    no_numpy: bool,
    /// Run every bench file of echo-benches (data pipeline, training step, ...), not only the
    /// GEMM and LoRA ones; the others are listed by mean time after the table. Takes minutes.
    #[arg(long)]
    all: bool,
    /// Python used to create the venv.
    #[arg(long, default_value = "python3")]
    python: String,
}

/// One benchmark's result: mean seconds per iteration and FLOPs per iteration (the declared
/// `Throughput::Elements`, which are FLOPs in the FLOP groups only).
#[derive(Clone, Copy)]
struct Timing {
    secs: f64,
    flops: f64,
}

fn is_flop_bench(id: &str) -> bool {
    FLOP_GROUPS.iter().any(|g| id.starts_with(g))
}

impl Timing {
    fn gflops(&self) -> f64 {
        self.flops / self.secs / 1e9
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    let root = workspace_root();
    warn_if_busy();
    let started = SystemTime::now();

    run_criterion(&root, args.quick, args.all)?;
    let ours = read_criterion(&target_dir(&root)?.join("criterion"), started)?;
    if ours.is_empty() {
        bail!("cargo bench ran but no criterion result of this run was found under target/criterion");
    }

    // The venv's interpreter, kept for the paired run, which needs numpy's OpenBLAS: it runs
    // only when the numpy step worked.
    let mut venv_py = None;
    let (reference, numpy_error) = if args.no_numpy {
        (Vec::new(), None)
    } else {
        match ensure_venv(&root, &args.python).and_then(|py| run_numpy(&root, &py, &args).map(|r| (py, r))) {
            Ok((py, r)) => {
                venv_py = Some(py);
                (r, None)
            }
            Err(e) => (Vec::new(), Some(e)),
        }
    };
    let paired = venv_py.map(|py| crate::bench_paired::run(&root, &py, args.quick));

    let separate_worst = print_table(&ours, &reference);
    let paired_worst = match &paired {
        Some(Ok(rows)) => Some(crate::bench_paired::print(rows)),
        _ => None,
    };
    println!();
    let verdict = |worst: f64| {
        if worst >= GEMM_GOAL {
            format!("met (worst ratio {worst:.2})")
        } else {
            format!("NOT met (worst ratio {worst:.2})")
        }
    };
    match (paired_worst, separate_worst) {
        (Some(p), s) => {
            println!(
                "GEMM goal (>= {:.0}% of OpenBLAS on every shape), judged on the paired run: {}",
                GEMM_GOAL * 100.0,
                verdict(p)
            );
            if let Some(s) = s {
                println!("  (separate runs, criterion mean against numpy mean minutes apart: {})", verdict(s));
            }
        }
        (None, Some(s)) => println!(
            "GEMM goal (>= {:.0}% of OpenBLAS on every shape), separate runs only: {}",
            GEMM_GOAL * 100.0,
            verdict(s)
        ),
        (None, None) if !args.no_numpy => println!("GEMM goal: not assessed (no OpenBLAS result to compare with)"),
        (None, None) => {}
    }
    if let Some(e) = numpy_error {
        return Err(e.context("the numpy reference did not run (pass --no-numpy to skip it)"));
    }
    if let Some(Err(e)) = paired {
        return Err(e.context("the paired GEMM run (ours against numpy's OpenBLAS in one process) failed"));
    }
    Ok(())
}

/// Benchmarks use every core: other work running at the same time skews both columns.
/// Warns when the CPUs are already more than a quarter busy (Linux: `/proc/stat`, sampled
/// over half a second; the load average lags too much to tell).
fn warn_if_busy() {
    fn cpu_times() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
        let idle = fields.get(3)? + fields.get(4).unwrap_or(&0); // idle + iowait
        Some((fields.iter().sum(), idle))
    }
    let Some((t0, i0)) = cpu_times() else { return };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let Some((t1, i1)) = cpu_times() else { return };
    let busy = 1.0 - (i1 - i0) as f64 / (t1 - t0).max(1) as f64;
    if busy > 0.25 {
        eprintln!(
            "warning: the CPUs are already {:.0}% busy: the benchmarks use every core, so these numbers will be noisy",
            busy * 100.0
        );
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace root").to_path_buf()
}

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs `cmd` with its stderr passed through and returns its stdout; `what` names it in errors
/// ("running {what}", "{what} failed (exit status)").
pub(crate) fn stdout_of(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    let out = cmd.stderr(Stdio::inherit()).output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({})", out.status);
    }
    Ok(out.stdout)
}

/// Cargo's target directory (honours `CARGO_TARGET_DIR` and `build.target-dir`).
fn target_dir(root: &Path) -> Result<PathBuf> {
    let stdout = stdout_of(
        cargo().args(["metadata", "--format-version", "1", "--no-deps"]).current_dir(root),
        "cargo metadata",
    )?;
    let meta: Value = serde_json::from_slice(&stdout).context("parsing cargo metadata")?;
    let dir = meta["target_directory"].as_str().context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir))
}

fn run_criterion(root: &Path, quick: bool, all: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "echo-benches"]).current_dir(root);
    if !all {
        for bench in FLOP_BENCHES {
            cmd.args(["--bench", bench]);
        }
    }
    cmd.args(["--", "--noplot"]);
    if quick {
        cmd.args(["--warm-up-time", "1", "--measurement-time", "3"]);
    }
    let files = if all { String::new() } else { FLOP_BENCHES.map(|b| format!(" --bench {b}")).concat() };
    eprintln!("==> cargo bench -p echo-benches{files}{}", if quick { " (quick)" } else { "" });
    let status = cmd.status().context("running cargo bench")?;
    if !status.success() {
        bail!("cargo bench -p echo-benches failed ({status})");
    }
    Ok(())
}

/// Criterion results written since `since`, by id (`group/value`): the mean point estimate
/// of `new/estimates.json` and the FLOP count the bench declared as its throughput.
/// Older results (benchmarks this run did not execute) are left out.
fn read_criterion(dir: &Path, since: SystemTime) -> Result<BTreeMap<String, Timing>> {
    let mut found = Vec::new();
    find_files(dir, "benchmark.json", &mut found)?;
    let mut out = BTreeMap::new();
    for bench in found {
        let new_dir = bench.parent().expect("a file has a parent");
        if new_dir.file_name().and_then(|n| n.to_str()) != Some("new") {
            continue;
        }
        let estimates = new_dir.join("estimates.json");
        let fresh = std::fs::metadata(&estimates).and_then(|m| m.modified()).map(|t| t >= since).unwrap_or(false);
        if !fresh {
            continue;
        }
        let meta = read_json(&bench)?;
        let est = read_json(&estimates)?;
        let id = meta["full_id"].as_str().with_context(|| format!("{}: no full_id", bench.display()))?;
        let ns = est["mean"]["point_estimate"].as_f64().with_context(|| format!("{}: no mean", estimates.display()))?;
        let flops = meta["throughput"]["Elements"].as_f64();
        if is_flop_bench(id) && flops.is_none() {
            eprintln!("warning: {id} declares no Throughput::Elements (FLOPs): no GFLOP/s for it");
        }
        out.insert(id.to_string(), Timing { secs: ns * 1e-9, flops: flops.unwrap_or(f64::NAN) });
    }
    Ok(out)
}

fn find_files(dir: &Path, name: &str, out: &mut Vec<PathBuf>) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            find_files(&path, name, out)?;
        } else if path.file_name().and_then(|n| n.to_str()) == Some(name) {
            out.push(path);
        }
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn venv_python(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}

/// The venv's interpreter, with numpy importable: creates the venv and installs numpy when
/// needed.
fn ensure_venv(root: &Path, python: &str) -> Result<PathBuf> {
    let venv = root.join(VENV);
    let py = venv_python(&venv);
    if !py.exists() {
        eprintln!("==> creating {VENV} ({python} -m venv)");
        let ok = Command::new(python).args(["-m", "venv"]).arg(&venv).status().map(|s| s.success());
        if !matches!(ok, Ok(true)) {
            bail!(
                "could not create the venv {VENV} with `{python} -m venv` (is {python} installed, with its venv module \
                 — Debian: apt-get install python3-venv?)"
            );
        }
    }
    let has_numpy = |py: &Path| {
        Command::new(py)
            .args(["-c", "import numpy"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_numpy(&py) {
        eprintln!("==> installing numpy into {VENV} (python -m pip install numpy)");
        let ok = Command::new(&py).args(["-m", "pip", "install", "numpy"]).status().is_ok_and(|s| s.success());
        if !ok || !has_numpy(&py) {
            bail!(
                "pip could not install numpy into {VENV} (no network or no package index?). Install it by hand with \
                 `{} -m pip install numpy`, or pass --no-numpy",
                py.display()
            );
        }
    }
    Ok(py)
}

/// Runs the numpy reference with the venv's interpreter `py`; its results by benchmark id.
fn run_numpy(root: &Path, py: &Path, args: &BenchArgs) -> Result<Vec<(String, Timing)>> {
    eprintln!("==> {SCRIPT}{}", if args.quick { " --quick" } else { "" });
    let mut cmd = Command::new(py);
    cmd.arg(root.join(SCRIPT)).current_dir(root);
    for var in OPENBLAS_OVERRIDES {
        if let Some(v) = std::env::var_os(var) {
            eprintln!("    ({var}={} is set here; removed for the numpy run)", v.to_string_lossy());
        }
        cmd.env_remove(var);
    }
    if args.quick {
        cmd.arg("--quick");
    }
    let stdout = stdout_of(&mut cmd, SCRIPT)?;
    let mut results = Vec::new();
    for line in String::from_utf8_lossy(&stdout).lines().filter(|l| l.trim_start().starts_with('{')) {
        let v: Value = serde_json::from_str(line).with_context(|| format!("{SCRIPT} printed bad JSON: {line}"))?;
        if let Some(info) = v.get("blas") {
            println!("numpy reference: {}", describe_blas(info));
            continue;
        }
        let (Some(name), Some(ms), Some(flops)) = (v["name"].as_str(), v["ms"].as_f64(), v["flops"].as_f64()) else {
            bail!("{SCRIPT}: a result line lacks name, ms or flops: {line}");
        };
        results.push((name.to_string(), Timing { secs: ms * 1e-3, flops }));
    }
    Ok(results)
}

fn describe_blas(info: &Value) -> String {
    let s = |k: &str| info[k].as_str().map(str::to_string).or_else(|| info[k].as_u64().map(|n| n.to_string()));
    let mut parts =
        vec![format!("numpy {}", s("numpy").unwrap_or_default()), s("blas").unwrap_or_else(|| "unknown BLAS".into())];
    if let Some(core) = s("core") {
        parts.push(format!("core {core}"));
    }
    if let Some(t) = s("threads") {
        parts.push(format!("{t} threads"));
    }
    parts.join(", ")
}

/// Rows in the numpy script's order (GEMMs, then LoRA), then any benchmark only we ran.
/// Returns the worst ours/numpy ratio of the GEMM rows, if numpy ran them.
fn print_table(ours: &BTreeMap<String, Timing>, reference: &[(String, Timing)]) -> Option<f64> {
    let mut rows: Vec<(&str, Option<Timing>)> = reference.iter().map(|(id, t)| (id.as_str(), Some(*t))).collect();
    let unpaired = |id: &&String| !reference.iter().any(|(r, _)| r == *id);
    rows.extend(ours.keys().filter(unpaired).filter(|id| is_flop_bench(id)).map(|id| (id.as_str(), None)));
    println!();
    println!("| benchmark | ours ms | ours GFLOP/s | numpy ms | numpy GFLOP/s | ours/numpy |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut gemm_ratios = Vec::new();
    for (id, reference) in rows {
        let Some(t) = ours.get(id) else {
            eprintln!("warning: numpy ran {id}, which has no criterion result in this run");
            continue;
        };
        let (np_ms, np_gf, ratio) = match reference {
            Some(r) => {
                if (r.flops - t.flops).abs() > 0.5 {
                    eprintln!("warning: {id}: FLOP counts differ (ours {}, numpy {})", t.flops, r.flops);
                }
                let ratio = t.gflops() / r.gflops();
                if id.starts_with("gemm/") {
                    gemm_ratios.push(ratio);
                }
                (format!("{:.2}", r.secs * 1e3), format!("{:.1}", r.gflops()), format!("{ratio:.2}"))
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!("| {id} | {:.2} | {:.1} | {np_ms} | {np_gf} | {ratio} |", t.secs * 1e3, t.gflops());
    }
    let others: Vec<_> = ours.iter().filter(|(id, _)| !is_flop_bench(id)).collect();
    if !others.is_empty() {
        println!();
        println!("Other benchmarks of this run (criterion mean time per iteration):");
        for (id, t) in others {
            println!("  {id}: {:.3} ms", t.secs * 1e3);
        }
    }
    (!gemm_ratios.is_empty()).then(|| gemm_ratios.iter().copied().fold(f64::INFINITY, f64::min))
}

//! `cargo xtask check-kernels`: every `kernels/*.cu` compiled for sm_80 and sm_90 without a GPU.
//!
//! 1. A venv (`.venv-cuda` at the workspace root, created on first use and reused after, CI
//!    caches it) with NVIDIA's PyPI packages pinned to one CUDA 13.0 release: nvcc, NVRTC, the
//!    crt and runtime headers, NVVM, and CCCL (headers nvcc's host pass wants).
//! 2. nvcc compiles each file to a cubin per architecture with exactly the options NVRTC gets
//!    at run time (`echo_kernels::cuda::source::compile_options`: the flags and the tile sizes as
//!    `-D` definitions), so register or shared-memory
//!    overflows surface here as they would on the GPU.
//! 3. NVRTC itself (the venv's libnvrtc, loaded the way the runtime loads it) compiles the
//!    sources embedded in this binary, and the parameter lists in the PTX are checked against
//!    the launch wrappers' declarations (`source::SOURCES`).
//!
//! One line per file, architecture and compiler; any error makes the command fail.

use anyhow::{bail, Context, Result};
use echo_kernels::cuda::{libs, source};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The pinned packages: one CUDA 13.0 toolkit (13.0.88), CCCL at its 13.0 release.
pub const PINS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-runtime==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-cccl==13.0.85",
];

/// Written into the venv once the pins are installed; a different list reinstalls.
const MARKER: &str = ".echo-cuda-pins";

#[derive(clap::Args)]
pub struct CheckKernelsArgs {
    /// The venv holding the CUDA packages (relative paths are from the workspace root).
    #[arg(long, default_value = ".venv-cuda")]
    venv: PathBuf,
    /// Architectures to compile for, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "sm_80,sm_90")]
    arch: Vec<String>,
    /// Skip the NVRTC pass (nvcc only).
    #[arg(long)]
    no_nvrtc: bool,
    /// Python used to create the venv.
    #[arg(long, default_value = "python3")]
    python: String,
}

pub fn run(args: CheckKernelsArgs) -> Result<()> {
    let root = workspace_root();
    let venv = if args.venv.is_absolute() { args.venv.clone() } else { root.join(&args.venv) };
    let started = Instant::now();
    ensure_venv(&venv, &args.python)?;
    let cu13 = toolkit_dir(&venv)?;
    let nvcc = cu13.join("bin/nvcc");
    println!("toolkit: {} ({:.1} s to make ready)", cu13.display(), started.elapsed().as_secs_f64());

    let kernels_dir = root.join("kernels");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&kernels_dir)
        .with_context(|| format!("reading {}", kernels_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no kernels/*.cu found in {}", kernels_dir.display());
    }

    let mut failures = 0usize;
    for f in &files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_string();
        if source::find_source(&name).is_none() {
            println!("kernels/{name:<16} not embedded: add it to SOURCES in crates/echo-kernels/src/cuda/source.rs");
            failures += 1;
        }
    }
    let out_dir = std::env::temp_dir().join(format!("echo-check-kernels-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir)?;
    let t_nvcc = Instant::now();
    let jobs: Vec<(PathBuf, String)> =
        files.iter().flat_map(|f| args.arch.iter().map(move |a| (f.clone(), a.clone()))).collect();
    let outcomes = parallel(&jobs, |(f, arch)| {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_string();
        let out = out_dir.join(format!("{name}.{arch}.cubin"));
        let result = Command::new(&nvcc)
            .arg("-cubin")
            .args(source::compile_options())
            .arg(source::arch_option(arch))
            .arg("-o")
            .arg(&out)
            .arg(f)
            .output()
            .with_context(|| format!("running {}", nvcc.display()))?;
        let msg = String::from_utf8_lossy(&result.stderr).trim().to_string();
        Ok(if result.status.success() {
            let note = if msg.is_empty() { String::new() } else { format!(" (with output: {})", one_line(&msg)) };
            (true, format!("kernels/{name:<16} {arch:<6} nvcc   ok{note}"))
        } else {
            (false, format!("kernels/{name:<16} {arch:<6} nvcc   ERROR\n{}", indent(&msg)))
        })
    });
    for o in outcomes {
        let (ok, line) = o?;
        println!("{line}");
        failures += usize::from(!ok);
    }
    let nvcc_secs = t_nvcc.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&out_dir);

    let mut nvrtc_secs = 0.0;
    if !args.no_nvrtc {
        let t = Instant::now();
        let lib = cu13.join("lib");
        for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?.flatten() {
            let p = entry.path();
            if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libnvrtc-builtins.so"))
                && !is_alt(&p)
            {
                libs::preload(&p);
            }
        }
        libs::preload(&lib.join("libnvrtc.so.13"));
        if !libs::nvrtc_present() {
            bail!("could not load libnvrtc from {}", lib.display());
        }
        let version = source::nvrtc_version()?;
        let jobs: Vec<(&source::KernelSource, String)> =
            source::SOURCES.iter().flat_map(|s| args.arch.iter().map(move |a| (s, a.clone()))).collect();
        let outcomes = parallel(&jobs, |(s, arch)| {
            Ok(match source::nvrtc_check(s, arch) {
                Ok(()) => (
                    true,
                    format!(
                        "kernels/{:<16} {arch:<6} nvrtc  ok (NVRTC {}.{}, PTX signatures match the wrappers)",
                        s.file, version.0, version.1
                    ),
                ),
                Err(e) => (false, format!("kernels/{:<16} {arch:<6} nvrtc  ERROR\n{}", s.file, indent(&e))),
            })
        });
        for o in outcomes {
            let (ok, line) = o?;
            println!("{line}");
            failures += usize::from(!ok);
        }
        nvrtc_secs = t.elapsed().as_secs_f64();
    }
    println!(
        "{} kernel files x {} architectures: nvcc {:.1} s, NVRTC {:.1} s, {:.1} s in all",
        files.len(),
        args.arch.len(),
        nvcc_secs,
        nvrtc_secs,
        started.elapsed().as_secs_f64()
    );
    if failures > 0 {
        bail!("{failures} kernel compilation(s) failed");
    }
    Ok(())
}

/// Runs `f` over `jobs` on as many threads as there are cores; results in job order.
fn parallel<J: Sync, R: Send>(jobs: &[J], f: impl Fn(&J) -> Result<R> + Sync) -> Vec<Result<R>> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len()).max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<Result<R>>> = (0..jobs.len()).map(|_| None).collect();
    let slots = std::sync::Mutex::new(&mut results);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= jobs.len() {
                    break;
                }
                let r = f(&jobs[i]);
                slots.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    results.into_iter().map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("job did not run")))).collect()
}

/// `libnvrtc-builtins.alt.so.*` is the alternative (non-default) build: skip it.
fn is_alt(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(".alt."))
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace root").to_path_buf()
}

/// Creates the venv and installs [`PINS`] unless the marker says they are already there.
fn ensure_venv(venv: &Path, python: &str) -> Result<()> {
    let want = PINS.join("\n");
    let marker = venv.join(MARKER);
    if std::fs::read_to_string(&marker).is_ok_and(|have| have == want) && venv.join("bin/python").exists() {
        return Ok(());
    }
    let t = Instant::now();
    if !venv.join("bin/python").exists() {
        println!("creating {} ...", venv.display());
        let st = Command::new(python)
            .args(["-m", "venv"])
            .arg(venv)
            .status()
            .with_context(|| format!("running {python} -m venv"))?;
        if !st.success() {
            bail!("{python} -m venv {} failed ({st})", venv.display());
        }
    }
    println!("installing {} ...", PINS.join(" "));
    let st = Command::new(venv.join("bin/python"))
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(PINS)
        .status()
        .context("running pip")?;
    if !st.success() {
        bail!("pip install of the CUDA packages failed ({st}); needs access to PyPI");
    }
    std::fs::write(&marker, want)?;
    println!("installed in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// `<venv>/lib/python3.*/site-packages/nvidia/cu13`, where the CUDA 13 wheels put the toolkit.
fn toolkit_dir(venv: &Path) -> Result<PathBuf> {
    let lib = venv.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?.flatten() {
        let dir = entry.path().join("site-packages/nvidia/cu13");
        if dir.join("bin/nvcc").is_file() {
            return Ok(dir);
        }
    }
    bail!("no nvidia/cu13/bin/nvcc under {} (delete the venv to reinstall)", lib.display())
}

//! `cargo xtask gpu-check`: on a GPU machine, every CUDA kernel against its CPU twin (random
//! and edge-case shapes, max error vs tolerance), then the headline benches against the
//! unfused cuBLAS baseline, and one summary. Without a CUDA driver it says so and succeeds.
//!
//! Everything runs from library code (`echo_kernels::cuda::{check, bench}`), so the prebuilt
//! `target/release/xtask gpu-check` works on a GPU machine that has no Rust toolchain: the
//! kernels are embedded and compiled there by NVRTC (cached under ~/.cache/echo-lora/kernels).

use anyhow::{bail, Result};
use echo_kernels::cuda::{self, bench, check, runtime::Gpu, CudaError};
use std::time::Instant;

#[derive(clap::Args)]
pub struct GpuCheckArgs {
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Checks only, no benches.
    #[arg(long)]
    no_bench: bool,
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
    println!("device cuda:{}: {} ({}), {} device(s)", gpu.ordinal, gpu.name, gpu.arch, probe.devices.as_ref().map_or(0, |n| *n));
    gpu.load_all()?;
    let compiled: Vec<String> = gpu.compile_log().iter().map(|(f, fresh)| format!("{f}{}", if *fresh { "" } else { " (cached)" })).collect();
    println!("kernels loaded in {:.2} s: {}", t.elapsed().as_secs_f64(), compiled.join(", "));
    if let Some(d) = cuda::source::cache_dir() {
        println!("kernel cache: {}", d.display());
    }

    println!("\n== kernels vs CPU twins");
    let t = Instant::now();
    let results = check::run_all(&gpu);
    for r in &results {
        println!("{r}");
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    println!("{} comparisons in {:.1} s", results.len(), t.elapsed().as_secs_f64());

    let mut benches = Vec::new();
    let mut bench_error = None;
    if !args.no_bench {
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
    }
    let stats = gpu.pool_stats();
    println!("\n== summary");
    println!("device: {} ({})", gpu.name, gpu.arch);
    println!("checks: {} ok, {} failed", results.len() - failed, failed);
    for r in results.iter().filter(|r| !r.ok) {
        println!("  {r}");
    }
    if !args.no_bench {
        match &bench_error {
            Some(e) => println!("benches: error: {e}"),
            None => {
                for r in &benches {
                    println!("bench {:<24} {:<40} x{:.2} vs cuBLAS", r.name, r.shape, r.baseline_us / r.ours_us);
                }
            }
        }
    }
    println!(
        "allocator: peak {:.1} MiB in use, {} driver allocations, {:.1} MiB cached",
        stats.peak_in_use as f64 / (1 << 20) as f64,
        stats.driver_allocs,
        stats.cached as f64 / (1 << 20) as f64
    );
    if failed > 0 || bench_error.is_some() {
        bail!("gpu-check failed: {failed} comparison(s) out of tolerance{}", if bench_error.is_some() { ", benches errored" } else { "" });
    }
    Ok(())
}

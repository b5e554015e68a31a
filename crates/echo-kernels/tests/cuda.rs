//! The CUDA kernels against their CPU twins (the same checks as `cargo xtask gpu-check`).
//! Without a usable GPU each test prints why and returns: in CI these are the only tests
//! allowed to skip.

use echo_kernels::cuda::{self, bench, check, runtime::Gpu};
use std::sync::Arc;

fn gpu_or_skip() -> Option<Arc<Gpu>> {
    match cuda::probe().unusable() {
        Some(cuda::CudaError::NoDriver) => {
            println!("skipped: no CUDA driver (GPU test)");
            return None;
        }
        Some(why) => {
            println!("skipped: {why} (GPU test)");
            return None;
        }
        None => {}
    }
    Some(Gpu::get(0).expect("a usable CUDA device opens"))
}

#[test]
fn kernels_match_their_cpu_twins() {
    let Some(gpu) = gpu_or_skip() else { return };
    let results = check::run_all(&gpu);
    for r in &results {
        println!("{r}");
    }
    let failed: Vec<String> = results.iter().filter(|r| !r.ok).map(|r| r.to_string()).collect();
    assert!(failed.is_empty(), "{} of {} comparisons failed:\n{}", failed.len(), results.len(), failed.join("\n"));
}

#[test]
fn allocator_reuses_freed_blocks() {
    let Some(gpu) = gpu_or_skip() else { return };
    let a = gpu.alloc::<f32>(1000).unwrap();
    drop(a);
    let before = gpu.pool_stats().driver_allocs;
    let b = gpu.alloc::<f32>(900).unwrap(); // same size class
    assert_eq!(gpu.pool_stats().driver_allocs, before, "a freed block of the same class is reused");
    let host: Vec<f32> = (0..900).map(|i| i as f32).collect();
    let mut b = b;
    gpu.copy_to(&host, &mut b).unwrap();
    assert_eq!(gpu.download(&b).unwrap(), host);
}

#[test]
fn kernel_cache_is_reused() {
    let Some(gpu) = gpu_or_skip() else { return };
    gpu.load_all().unwrap();
    // A second load in the same process is a map hit; across processes the cubin cache is
    // (compile_log records which files were compiled rather than read from disk).
    let first = gpu.compile_log();
    gpu.load_all().unwrap();
    assert_eq!(gpu.compile_log(), first);
}

#[test]
fn headline_benches_run() {
    let Some(gpu) = gpu_or_skip() else { return };
    for r in bench::run_all(&gpu).unwrap() {
        println!("{r}");
        assert!(r.ours_us > 0.0 && r.baseline_us > 0.0);
    }
}

#[test]
fn launch_rejects_wrong_arguments() {
    let Some(gpu) = gpu_or_skip() else { return };
    let e = gpu.launch("swiglu_fwd", (1, 1, 1), (32, 1, 1), &[cuda::runtime::Arg::I32(0)]).unwrap_err();
    assert!(e.to_string().contains("kernel takes"), "{e}");
}

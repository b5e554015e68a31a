//! The CUDA kernels against their CPU twins (the same checks as `cargo xtask gpu-check`).
//! Every test here needs a GPU and is `#[ignore]`d: `cargo test` (CI) lists them as ignored,
//! never as passed; `--include-ignored` runs them and fails with the reason where no GPU is
//! usable.

use echo_kernels::cuda::{self, bench, check, runtime::Gpu};
use std::sync::Arc;

/// The GPU these tests need. They are `#[ignore]`d, so `cargo test` lists them as ignored on
/// every machine; asked for explicitly (`--include-ignored`, as device-bundle/run.sh does), a
/// missing GPU is a failure that says why, never a silent pass.
fn require_gpu() -> Arc<Gpu> {
    if let Some(why) = cuda::probe().unusable() {
        panic!("this test needs a usable CUDA device: {why}");
    }
    Gpu::get(0).expect("a usable CUDA device opens")
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn kernels_match_their_cpu_twins() {
    let gpu = require_gpu();
    let results = check::run_all(&gpu);
    for r in &results {
        println!("{r}");
    }
    let failed: Vec<String> = results.iter().filter(|r| !r.ok).map(|r| r.to_string()).collect();
    assert!(failed.is_empty(), "{} of {} comparisons failed:\n{}", failed.len(), results.len(), failed.join("\n"));
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn allocator_reuses_freed_blocks() {
    let gpu = require_gpu();
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
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn kernel_cache_is_reused() {
    let gpu = require_gpu();
    gpu.load_all().unwrap();
    // A second load in the same process is a map hit; across processes the cubin cache is
    // (compile_log records which files were compiled rather than read from disk).
    let first = gpu.compile_log();
    gpu.load_all().unwrap();
    assert_eq!(gpu.compile_log(), first);
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn headline_benches_run() {
    let gpu = require_gpu();
    for r in bench::run_all(&gpu).unwrap() {
        println!("{r}");
        assert!(r.ours_us > 0.0 && r.baseline_us > 0.0);
    }
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn launch_rejects_wrong_arguments() {
    let gpu = require_gpu();
    let e = gpu.launch("swiglu_fwd", (1, 1, 1), (32, 1, 1), &[cuda::runtime::Arg::I32(0)]).unwrap_err();
    assert!(e.to_string().contains("kernel takes"), "{e}");
}

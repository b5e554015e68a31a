//! CUDA benches of the two headline kernels against an unfused cuBLAS-only baseline:
//! the LoRA low-rank path (forward + backward) and the gated injection (forward + backward).
//! Shapes and the two implementations live in `echo_kernels::cuda::bench` (also used by
//! `cargo xtask gpu-check`). Without a usable GPU this prints why and runs nothing.

use criterion::{criterion_group, criterion_main, Criterion};
use echo_kernels::cuda::{self, bench::LoraBench, runtime::Gpu};
use std::time::{Duration, Instant};

fn cuda_kernels(c: &mut Criterion) {
    if let Some(why) = cuda::probe().unusable() {
        println!("skipped: {why}: the CUDA benches need a GPU");
        return;
    }
    let gpu = Gpu::get(0).expect("a usable CUDA device opens");
    gpu.load_all().expect("kernels compile");
    for (d, rps) in cuda::bench::shapes() {
        let mut lb = LoraBench::new(&gpu, d, rps).expect("bench buffers");
        let id = format!("N{}_{}x{}_r{}", d.rows, d.d_in, d.d_out, d.rank);
        let mut g = c.benchmark_group("cuda_lora_lowrank_fwd_bwd");
        // Each sample queues `iters` calls and waits once: the GPU's time, not launch latency.
        g.bench_function(format!("ours/{id}"), |b| b.iter_custom(|n| timed(&gpu, n, || lb.lora_fused(&gpu))));
        g.bench_function(format!("cublas/{id}"), |b| b.iter_custom(|n| timed(&gpu, n, || lb.lora_baseline(&gpu))));
        g.finish();
        let mut g = c.benchmark_group("cuda_gated_injection_fwd_bwd");
        g.bench_function(format!("ours/{id}"), |b| b.iter_custom(|n| timed(&gpu, n, || lb.inject_fused(&gpu))));
        g.bench_function(format!("cublas/{id}"), |b| b.iter_custom(|n| timed(&gpu, n, || lb.inject_baseline(&gpu))));
        g.finish();
    }
}

fn timed(gpu: &Gpu, iters: u64, mut f: impl FnMut() -> cuda::Result<()>) -> Duration {
    gpu.synchronize().expect("device ok");
    let t = Instant::now();
    for _ in 0..iters {
        f().expect("launch");
    }
    gpu.synchronize().expect("device ok");
    t.elapsed()
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = cuda_kernels
}
criterion_main!(benches);

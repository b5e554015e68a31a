//! f32 GEMM at the two projection shapes of the LoRA benchmark, `C = X W^T` through
//! `echo_kernels::cpu::gemm::matmul` into a preallocated `C` (the kernel alone: no tensor
//! allocation), all cores (rayon). Throughput is in FLOPs (`2 m n k`), so criterion's
//! "elem/s" reads as FLOP/s.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use echo_benches::{random_f32, GEMM_SHAPES};
use echo_kernels::cpu::gemm::{matmul, Par};
use std::time::Duration;

fn bench_gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemm");
    for s in GEMM_SHAPES {
        let x = random_f32(s.m * s.k, 1.0, 1);
        let w = random_f32(s.n * s.k, 1.0 / (s.k as f32).sqrt(), 2);
        let mut out = vec![0.0f32; s.m * s.n];
        group.throughput(Throughput::Elements(s.flops()));
        group.bench_function(BenchmarkId::from_parameter(s.id()), |bch| {
            bch.iter(|| {
                matmul(&mut out, black_box(&x), black_box(&w), s.m, s.k, s.n, false, true, 1.0, false, Par::Rayon);
                black_box(&mut out);
            })
        });
    }
    group.finish();
}

// Each call is ~10-40 ms: 20 samples in 6 s keeps the whole file under ~20 s.
// `--warm-up-time` / `--measurement-time` / `--sample-size` on the command line override these.
criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(6));
    targets = bench_gemm
}
criterion_main!(benches);

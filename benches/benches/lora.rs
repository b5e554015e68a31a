//! LoRA linear forward + backward through the autograd tape: `x` `[1024, in]`, frozen `W`
//! `[out, in]`, trainable `A` `[32, in]` and `B` `[out, 32]`, scale 2, no dropout; `x`, `A`
//! and `B` are gradient-requiring leaves, so backward runs `dx`, `dA`, `dB` (and no `dW`).
//! One iteration = new tape, forward, `backward_from` with a fixed `dy`. Throughput is the
//! FLOP count of the eight GEMMs involved (see `LoraShape::flops`), so criterion's "elem/s"
//! reads as FLOP/s.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use echo_autograd::ops::lora_linear;
use echo_autograd::{ParamStore, Tape};
use echo_benches::{LORA_SHAPES, SCALE};
use std::time::Duration;

fn bench_lora(c: &mut Criterion) {
    let mut group = c.benchmark_group("lora_fwd_bwd");
    for s in LORA_SHAPES {
        let inp = s.inputs(7);
        let mut store = ParamStore::new();
        let step = |store: &mut ParamStore| {
            let tape = Tape::new();
            let x = tape.leaf(inp.x.clone());
            let a = tape.leaf(inp.a.clone());
            let b = tape.leaf(inp.b.clone());
            let y = lora_linear(&x, &inp.w, &a, &b, SCALE, None, None).expect("lora_linear forward");
            let grads = tape.backward_from(&y, inp.dy.clone(), store).expect("lora_linear backward");
            (grads, x, a, b)
        };
        // Every gradient the benchmark claims to compute is really there.
        let (grads, x, a, b) = step(&mut store);
        assert_eq!(grads.get(&x).expect("dx").dims(), inp.x.dims());
        assert_eq!(grads.get(&a).expect("dA").dims(), inp.a.dims());
        assert_eq!(grads.get(&b).expect("dB").dims(), inp.b.dims());

        group.throughput(Throughput::Elements(s.flops()));
        group.bench_function(BenchmarkId::from_parameter(s.id()), |bch| bch.iter(|| black_box(step(&mut store))));
    }
    group.finish();
}

// Each iteration is ~40-60 ms: 10 samples (55 iterations at least) fit in 6 s, and the whole
// file stays under ~20 s.
// `--warm-up-time` / `--measurement-time` / `--sample-size` on the command line override these.
criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(6));
    targets = bench_lora
}
criterion_main!(benches);

//! One training step (forward + backward, no optimizer) on SmolLM2-135M, batch 8 x 128
//! tokens, adapters r = 32 (alpha 64, no dropout) on q, k, v, up, down of every layer, fp32:
//! `train_step/lora`, `train_step/dora` and `train_step/echo_lora` side by side. The PyTorch +
//! PEFT side of the same step is `benches/peft_step.py`; `benches/STEP.md` has the table.
//!
//! The batch is fixed and identical in the Python script: token ids from splitmix64 (seed 0)
//! in `[16, V)`, every token real (attention mask all ones), labels = the last 32 tokens of
//! each row (the rest -100), so 8 x 32 = 256 positions count after the shift. Loss scale 1.
//! One iteration = `store.zero_grad()` + `forward_backward` (the frozen model and adapters are
//! set up once, outside the timing). Adapters are freshly initialised (B = 0), as PEFT does, so
//! the LoRA and DoRA losses equal the base model's: the bench prints them for comparison with
//! the PyTorch side.
//!
//! Echo-LoRA: source layers the last 4 (26..29), target layers the first quarter (0..6),
//! d_echo 64, lambda_kd 1, tau 1, route fixed to [true, false] * 4 (half the samples take the
//! echo route: a second forward over 4 samples plus the KD term).
//!
//! The model comes from `cargo xtask fetch-model smollm2` ($ECHO_LORA_CACHE, else
//! $XDG_CACHE_HOME/echo-lora, else ~/.cache/echo-lora; `ECHO_SMOLLM2_DIR` overrides the
//! folder). Without it the bench says so and measures nothing.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use echo_adapters::{AdapterConfig, Adapters, Method};
use echo_autograd::ParamStore;
use echo_model::{Llama, Proj};
use echo_tensor::Rng;
use echo_trainer::{forward_backward, EchoConfig, EchoPath, StepContext, StepInput};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const BATCH: usize = 8;
const SEQ: usize = 128;
const ANSWER: usize = 32;
const RANK: usize = 32;
const ALPHA: f32 = 64.0;

fn model_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ECHO_SMOLLM2_DIR") {
        return PathBuf::from(d);
    }
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let root = env("ECHO_LORA_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("echo-lora")))
        .or_else(|| env("HOME").map(|h| h.join(".cache").join("echo-lora")))
        .unwrap_or_else(|| PathBuf::from(".cache/echo-lora"));
    root.join("models").join("smollm2-135m-instruct")
}

/// splitmix64, the same generator `benches/peft_step.py` uses for the batch.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `(input_ids, attention_mask, labels)`, `[BATCH, SEQ]` row-major.
fn batch(vocab: usize) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let mut s = 0u64;
    let ids: Vec<i64> = (0..BATCH * SEQ).map(|_| 16 + (splitmix64(&mut s) % (vocab as u64 - 16)) as i64).collect();
    let mask = vec![1i64; BATCH * SEQ];
    let labels = ids.iter().enumerate().map(|(i, &t)| if i % SEQ >= SEQ - ANSWER { t } else { -100 }).collect();
    (ids, mask, labels)
}

struct Variant {
    id: &'static str,
    store: ParamStore,
    adapters: Adapters,
    echo: Option<EchoPath>,
}

fn variant(model: &Llama, id: &'static str, method: Method, echo: bool) -> Variant {
    let n_layers = model.config.num_hidden_layers;
    let cfg = AdapterConfig {
        method,
        r: RANK,
        alpha: ALPHA,
        use_rslora: false,
        dropout: 0.0,
        targets: vec![Proj::Q, Proj::K, Proj::V, Proj::Up, Proj::Down],
        layers: None,
    };
    let mut store = ParamStore::new();
    let adapters = Adapters::init(cfg, model, &mut store, &mut Rng::derive(0, "adapter-init")).expect("adapters");
    let echo = echo.then(|| {
        let ec = EchoConfig {
            source_layers: vec![-4, -3, -2, -1],
            target_layers: (0..(n_layers / 4).max(1) as i64).collect(),
            d_echo: 64,
            lambda_kd: 1.0,
            tau: 1.0,
            ..Default::default()
        };
        let c = &model.config;
        EchoPath::init(ec, &adapters, n_layers, c.hidden_size, c.rms_norm_eps, &mut store, &mut Rng::derive(0, "echo-init")).expect("echo path")
    });
    Variant { id, store, adapters, echo }
}

fn bench_train_step(c: &mut Criterion) {
    let dir = model_dir();
    if !dir.join("config.json").is_file() {
        eprintln!("train_step: no SmolLM2 at {}: run `cargo xtask fetch-model smollm2` first; skipping", dir.display());
        return;
    }
    let t0 = Instant::now();
    let model = Llama::load(&dir).expect("load SmolLM2");
    eprintln!("train_step: loaded {} in {:.1} s", dir.display(), t0.elapsed().as_secs_f64());
    let (ids, mask, labels) = batch(model.config.vocab_size);
    let route: Vec<bool> = (0..BATCH).map(|i| i % 2 == 0).collect();
    let input = StepInput { input_ids: &ids, attention_mask: &mask, labels: &labels, batch: BATCH, seq: SEQ, route: &route, prompt_mask: None };

    let mut group = c.benchmark_group("train_step");
    for (id, method, echo) in [("lora", Method::Lora, false), ("dora", Method::Dora, false), ("echo_lora", Method::Lora, true)] {
        let mut v = variant(&model, id, method, echo);
        let ctx = StepContext { model: &model, adapters: &v.adapters, echo: v.echo.as_ref() };
        // One untimed step: the loss (for comparison with PEFT's) and that gradients arrive.
        let t = Instant::now();
        let (stats, _) = forward_backward(&ctx, &input, &mut v.store, None, 1.0, false).expect("step");
        let first = t.elapsed().as_secs_f64();
        let with_grad = v.adapters.tensors().iter().filter(|(pid, _)| v.store.grad(*pid).is_some()).count();
        assert_eq!(with_grad, v.adapters.tensors().len(), "every adapter tensor gets a gradient");
        eprintln!(
            "train_step/{}: first step {first:.2} s, loss {:.6} (ce_plain {:.6}, ce_echo {:.6}, kd {:.6}), {} counted tokens, {} routed samples, {} adapter tensors",
            v.id,
            stats.loss,
            stats.ce_plain,
            stats.ce_echo,
            stats.loss_kd,
            stats.tokens,
            stats.routed_samples,
            with_grad
        );
        let store = &mut v.store;
        group.bench_function(v.id, |b| {
            b.iter(|| {
                store.zero_grad();
                black_box(forward_backward(&ctx, &input, store, None, 1.0, false).expect("step").0.loss)
            })
        });
    }
    group.finish();
}

// A step takes seconds: criterion's minimum of 10 samples (one iteration each) is the
// measurement; the warm-up is one step. Command-line flags override these.
criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(10)).without_plots();
    targets = bench_train_step
}
criterion_main!(benches);

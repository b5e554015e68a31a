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
//! `ECHO_STEP_PROFILE=1` also prints (to stderr, before the timed steps) where a LoRA and a
//! DoRA step spend their time: forward split by projection kind (through a timing
//! [`Projector`]), LM head + CE, backward; and forward + backward of each fused op alone at
//! SmolLM2's shapes, times the 30 layers.
//!
//! The model comes from `cargo xtask fetch-model smollm2` ($ECHO_LORA_CACHE, else
//! $XDG_CACHE_HOME/echo-lora, else ~/.cache/echo-lora; `ECHO_SMOLLM2_DIR` overrides the
//! folder). Without it the bench says so and measures nothing.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use echo_adapters::{AdapterConfig, Adapters, Method};
use echo_autograd::{ops, ParamStore, Tape, Var};
use echo_model::{shifted_targets, Batch, Llama, Proj, Projector};
use echo_tensor::{Rng, Tensor};
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

/// `(input_ids, attention_mask, labels)`, `[BATCH, SEQ]` row-major. The ids are those of the
/// GPU step bench (splitmix64 from seed 0, in `[16, V)`), which `benches/peft_step.py` repeats.
fn batch(vocab: usize) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let ids = echo_trainer::step_bench::bench_batch(BATCH, SEQ, vocab);
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
        EchoPath::init(
            ec,
            &adapters,
            n_layers,
            c.hidden_size,
            c.rms_norm_eps,
            &mut store,
            &mut Rng::derive(0, "echo-init"),
        )
        .expect("echo path")
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
    let input = StepInput {
        batch: &echo_data::Batch::from_arrays(&ids, &mask, &labels, BATCH, SEQ, None).expect("batch"),
        route: &route,
    };

    if std::env::var_os("ECHO_STEP_PROFILE").is_some_and(|v| v == "1") {
        profile(&model, &ids, &mask, &labels);
    }

    let mut group = c.benchmark_group("train_step");
    for (id, method, echo) in
        [("lora", Method::Lora, false), ("dora", Method::Dora, false), ("echo_lora", Method::Lora, true)]
    {
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

/// Times each projection's forward (frozen GEMM + adapter) by kind.
struct Timed<'a, P: Projector> {
    inner: P,
    secs: &'a mut [f64; 7],
}

impl<P: Projector> Projector for Timed<'_, P> {
    fn project(&mut self, layer: usize, proj: Proj, x: &Var, w: &Tensor) -> echo_autograd::Result<Var> {
        let t = Instant::now();
        let y = self.inner.project(layer, proj, x, w);
        self.secs[proj as usize] += t.elapsed().as_secs_f64();
        y
    }
}

/// Mean seconds of `f` over `n` runs after one warm-up run.
fn time_it(n: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() / n as f64
}

/// Forward + backward of one op on fresh leaves; returns mean seconds.
fn op_fwd_bwd(n: usize, leaves: &[Tensor], op: impl Fn(&[Var]) -> Var) -> f64 {
    let mut store = ParamStore::new();
    time_it(n, || {
        let tape = Tape::new();
        let vars: Vec<Var> = leaves.iter().map(|t| tape.leaf(t.clone())).collect();
        let y = op(&vars);
        let dy = Tensor::full(1e-3, y.shape().clone());
        black_box(tape.backward_from(&y, dy, &mut store).expect("backward"));
    })
}

fn profile(model: &Llama, ids: &[i64], mask: &[i64], labels: &[i64]) {
    let c = &model.config;
    let (d, ff, hd, hq, hkv, l) = (
        c.hidden_size,
        c.intermediate_size,
        c.head_dim,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.num_hidden_layers,
    );
    let n_tok = BATCH * SEQ;
    let batch = Batch::new(ids, mask, BATCH, SEQ, c.vocab_size).expect("batch");
    let (rows, targets) = shifted_targets(labels, BATCH, SEQ);
    eprintln!("profile: {n_tok} tokens, {} LM-head rows, {l} layers", rows.len());
    // Whole-step phases.
    for (name, method) in [("lora", Method::Lora), ("dora", Method::Dora)] {
        let v = variant(model, name, method, false);
        let mut store = v.store;
        let (mut fwd, mut head, mut bwd, mut proj) = (0.0, 0.0, 0.0, [0.0f64; 7]);
        let reps = 3;
        for rep in 0..=reps {
            store.zero_grad();
            let mut p = [0.0f64; 7];
            let tape = Tape::new();
            let t0 = Instant::now();
            let hidden = {
                let mut tp = Timed { inner: v.adapters.projector(&store, None, None), secs: &mut p };
                model.forward(&tape, &batch, &mut tp, &[]).expect("forward").hidden
            };
            let t1 = Instant::now();
            let logits = model.logits_at(&hidden, &rows).expect("logits");
            let loss = ops::cross_entropy(&logits, &targets, rows.len() as f32).expect("ce");
            let t2 = Instant::now();
            tape.backward(&loss, &mut store).expect("backward");
            let t3 = Instant::now();
            if rep > 0 {
                fwd += (t1 - t0).as_secs_f64() / reps as f64;
                head += (t2 - t1).as_secs_f64() / reps as f64;
                bwd += (t3 - t2).as_secs_f64() / reps as f64;
                for (a, b) in proj.iter_mut().zip(p) {
                    *a += b / reps as f64;
                }
            }
        }
        let proj_total: f64 = proj.iter().sum();
        eprintln!(
            "profile {name}: step {:.3} s = forward {fwd:.3} (projections {proj_total:.3}: {}; rest {:.3}) + LM head/CE fwd {head:.3} + backward {bwd:.3}",
            fwd + head + bwd,
            Proj::ALL.iter().map(|p| format!("{} {:.3}", p.short_name(), proj[*p as usize])).collect::<Vec<_>>().join(", "),
            fwd - proj_total
        );
    }
    // Echo-LoRA's extra work is about a second forward + backward over the routed half: time
    // a plain LoRA step on 4 samples (the first 4 rows) and the Echo-LoRA step, same way.
    {
        let half = BATCH / 2;
        let v4 = variant(model, "lora", Method::Lora, false);
        let mut store = v4.store;
        let ctx = StepContext { model, adapters: &v4.adapters, echo: None };
        let route = vec![false; half];
        let input = StepInput {
            batch: &echo_data::Batch::from_arrays(
                &ids[..half * SEQ],
                &mask[..half * SEQ],
                &labels[..half * SEQ],
                half,
                SEQ,
                None,
            )
            .expect("batch"),
            route: &route,
        };
        let lora4 = time_it(3, || {
            store.zero_grad();
            black_box(forward_backward(&ctx, &input, &mut store, None, 1.0, false).expect("step"));
        });
        let ve = variant(model, "echo_lora", Method::Lora, true);
        let mut store = ve.store;
        let ctx = StepContext { model, adapters: &ve.adapters, echo: ve.echo.as_ref() };
        let route: Vec<bool> = (0..BATCH).map(|i| i % 2 == 0).collect();
        let input = StepInput {
            batch: &echo_data::Batch::from_arrays(ids, mask, labels, BATCH, SEQ, None).expect("batch"),
            route: &route,
        };
        let echo = time_it(3, || {
            store.zero_grad();
            black_box(forward_backward(&ctx, &input, &mut store, None, 1.0, false).expect("step"));
        });
        let v8 = variant(model, "lora", Method::Lora, false);
        let mut store = v8.store;
        let ctx = StepContext { model, adapters: &v8.adapters, echo: None };
        let route = vec![false; BATCH];
        let input = StepInput {
            batch: &echo_data::Batch::from_arrays(ids, mask, labels, BATCH, SEQ, None).expect("batch"),
            route: &route,
        };
        let lora8 = time_it(3, || {
            store.zero_grad();
            black_box(forward_backward(&ctx, &input, &mut store, None, 1.0, false).expect("step"));
        });
        eprintln!(
            "profile echo: LoRA step 8x{SEQ} {lora8:.3} s, LoRA step 4x{SEQ} {lora4:.3} s ({:.2} of it), Echo-LoRA step {echo:.3} s ({:.2}x LoRA; LoRA(8) + LoRA(4) would be {:.2}x; the rest, {:.3} s, is the echo path, the extra LM-head rows and KL)",
            lora4 / lora8,
            echo / lora8,
            (lora8 + lora4) / lora8,
            echo - lora8 - lora4
        );
    }
    // Fused ops alone, forward + backward, x `l` layers.
    let mut rng = Rng::new(1);
    let n = 20;
    let x = |shape: &[usize], rng: &mut Rng| Tensor::randn(shape.to_vec(), 1.0, rng);
    let mut parts: Vec<(String, f64)> = Vec::new();
    let scale = ALPHA / RANK as f32;
    for (p, (o, i)) in [
        (Proj::Q, (hq * hd, d)),
        (Proj::K, (hkv * hd, d)),
        (Proj::V, (hkv * hd, d)),
        (Proj::O, (d, hq * hd)),
        (Proj::Gate, (ff, d)),
        (Proj::Up, (ff, d)),
        (Proj::Down, (d, ff)),
    ] {
        let w = model.blocks[0].weight(p).clone();
        let frozen = op_fwd_bwd(n, &[x(&[n_tok, i], &mut rng)], |v| {
            ops::linear(&v[0], &v[0].tape().constant(w.clone())).expect("linear")
        });
        parts.push((format!("{} frozen linear (dx only)", p.short_name()), frozen));
        if matches!(p, Proj::O | Proj::Gate) {
            continue;
        }
        let leaves = [x(&[n_tok, i], &mut rng), x(&[RANK, i], &mut rng), x(&[o, RANK], &mut rng), Tensor::ones([o])];
        let lora = op_fwd_bwd(n, &leaves[..3], |v| {
            ops::lora_linear(&v[0], &w, &v[1], &v[2], scale, None, None).expect("lora")
        });
        let dora = op_fwd_bwd(n, &leaves, |v| {
            ops::dora_linear(&v[0], &w, &v[1], &v[2], &v[3], scale, None, None).expect("dora")
        });
        parts.push((format!("{} lora_linear", p.short_name()), lora));
        parts.push((format!("{} dora_linear", p.short_name()), dora));
    }
    let valid = std::sync::Arc::new(echo_tensor::nn::AttnMask::padding(vec![true; n_tok]));
    let qkv =
        [x(&[BATCH, SEQ, hq, hd], &mut rng), x(&[BATCH, SEQ, hkv, hd], &mut rng), x(&[BATCH, SEQ, hkv, hd], &mut rng)];
    parts.push((
        "attention".into(),
        op_fwd_bwd(n, &qkv, |v| ops::attention(&v[0], &v[1], &v[2], &valid).expect("attention")),
    ));
    let rope_q = op_fwd_bwd(n, &qkv[..1], |v| ops::rope(&v[0], &batch.positions, &model.rope).expect("rope"));
    let rope_k = op_fwd_bwd(n, &qkv[1..2], |v| ops::rope(&v[0], &batch.positions, &model.rope).expect("rope"));
    parts.push(("rope q+k".into(), rope_q + rope_k));
    let norm_w = model.blocks[0].attn_norm.clone();
    parts.push((
        "rmsnorm x2".into(),
        2.0 * op_fwd_bwd(n, &[x(&[BATCH, SEQ, d], &mut rng)], |v| {
            ops::rmsnorm(&v[0], Some(&v[0].tape().constant(norm_w.clone())), c.rms_norm_eps).expect("rmsnorm")
        }),
    ));
    let gu = [x(&[BATCH, SEQ, ff], &mut rng), x(&[BATCH, SEQ, ff], &mut rng)];
    parts.push(("swiglu".into(), op_fwd_bwd(n, &gu, |v| ops::swiglu(&v[0], &v[1]).expect("swiglu"))));
    let res = [x(&[BATCH, SEQ, d], &mut rng), x(&[BATCH, SEQ, d], &mut rng)];
    parts.push(("residual add x2".into(), 2.0 * op_fwd_bwd(n, &res, |v| ops::add(&v[0], &v[1]).expect("add"))));
    eprintln!("profile: fused ops alone, forward + backward, per layer and x {l} layers:");
    for (name, s) in &parts {
        eprintln!("  {name:<34} {:>8.2} ms  x{l} = {:>6.3} s", s * 1e3, s * l as f64);
    }
    let lm_w = model.lm_head.clone();
    let hidden = x(&[n_tok, d], &mut rng);
    let head = op_fwd_bwd(n, &[hidden], |v| {
        let picked = ops::index_select(&v[0], &rows).expect("rows");
        let logits = ops::linear(&picked, &v[0].tape().constant(lm_w.clone())).expect("lm head");
        ops::cross_entropy(&logits, &targets, rows.len() as f32).expect("ce")
    });
    eprintln!("  LM head + CE on {} rows (once)     {:>8.2} ms", rows.len(), head * 1e3);
    let sum = |names: &[&str]| {
        parts.iter().filter(|(n, _)| names.iter().any(|k| n == k)).map(|(_, s)| s).sum::<f64>() * l as f64
    };
    let common = [
        "o_proj frozen linear (dx only)",
        "gate_proj frozen linear (dx only)",
        "attention",
        "rope q+k",
        "rmsnorm x2",
        "swiglu",
        "residual add x2",
    ];
    let lora_sites = [
        "q_proj lora_linear",
        "k_proj lora_linear",
        "v_proj lora_linear",
        "up_proj lora_linear",
        "down_proj lora_linear",
    ];
    let dora_sites = lora_sites.map(|s| s.replace("lora_linear", "dora_linear"));
    let frozen_sites = lora_sites.map(|s| s.replace("lora_linear", "frozen linear (dx only)"));
    let dora_refs: Vec<&str> = dora_sites.iter().map(String::as_str).collect();
    let frozen_refs: Vec<&str> = frozen_sites.iter().map(String::as_str).collect();
    eprintln!(
        "profile: sum of parts: LoRA {:.3} s (adapted sites {:.3}, of which their frozen GEMMs alone {:.3}; attention {:.3}; o+gate {:.3}; norms/rope/swiglu/adds {:.3}; LM head {:.3}), DoRA {:.3} s (adapted sites {:.3})",
        sum(&common) + sum(&lora_sites) + head,
        sum(&lora_sites),
        sum(&frozen_refs),
        sum(&["attention"]),
        sum(&["o_proj frozen linear (dx only)", "gate_proj frozen linear (dx only)"]),
        sum(&["rope q+k", "rmsnorm x2", "swiglu", "residual add x2"]),
        head,
        sum(&common) + sum(&dora_refs) + head,
        sum(&dora_refs),
    );
}

// A step takes seconds: criterion's minimum of 10 samples (one iteration each) is the
// measurement; the warm-up is one step. Command-line flags override these.
criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(10)).without_plots();
    targets = bench_train_step
}
criterion_main!(benches);

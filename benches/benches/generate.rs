//! SmolLM2-135M-Instruct on the CPU: model load time (config + memory-mapped safetensors to f32
//! weights) and greedy generation throughput with the KV cache (prefill of a 32-token prompt,
//! then 32 decode steps, EOS ignored so every run does the same work). Skips with a message when
//! the model has not been fetched (`cargo xtask fetch-model smollm2`).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use echo_model::{generate, GenerateOptions, Llama, PlainInfer};
use std::path::PathBuf;

fn model_dir() -> Option<PathBuf> {
    let root = std::env::var_os("ECHO_LORA_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/echo-lora")))?;
    let dir = root.join("models/smollm2-135m-instruct");
    dir.join("model.safetensors").exists().then_some(dir)
}

fn bench(c: &mut Criterion) {
    let Some(dir) = model_dir() else {
        eprintln!("generate bench skipped: SmolLM2 not found; run `cargo xtask fetch-model smollm2` first");
        return;
    };
    let mut g = c.benchmark_group("smollm2");
    g.sample_size(10);
    g.bench_function("load", |b| b.iter(|| Llama::load(&dir).unwrap()));
    let model = Llama::load(&dir).unwrap();
    let prompt: Vec<u32> = (0..32).map(|i| 100 + 37 * i).collect();
    let new_tokens = 32;
    let opts = GenerateOptions {
        max_new_tokens: new_tokens,
        eos_token_ids: vec![],
        pad_token_id: model.config.pad_token_id,
        sampling: None,
    };
    g.throughput(Throughput::Elements(new_tokens as u64));
    g.bench_function("generate_32_new_tokens_greedy", |b| {
        b.iter(|| generate(&model, std::slice::from_ref(&prompt), &opts, &mut PlainInfer).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

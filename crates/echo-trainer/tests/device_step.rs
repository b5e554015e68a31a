//! The whole training step on a device against the CPU (`echo_trainer::device_check`), and
//! the headline LoRA step benchmark's code path. The CUDA test is `#[ignore]`d (it needs a GPU;
//! `--include-ignored` runs it, failing with the reason where none is usable); the CPU ones
//! run everywhere and check the harness itself (a CPU-vs-CPU comparison must be exact).

use echo_model::{LlamaConfig, Proj};
use echo_tensor::Device;
use echo_trainer::device_check::step_checks;
use echo_trainer::step_bench::{self, StepBench};
use std::path::PathBuf;

fn fixture() -> PathBuf {
    echo_testdata::tiny_llama_a()
}

#[test]
fn the_check_against_itself_on_the_cpu_is_exact() {
    let checks = step_checks(&fixture(), Device::Cpu).unwrap();
    assert_eq!(checks.len(), 18, "six cases x three batches (fixture, padded, packed)");
    assert_eq!(checks.iter().filter(|c| c.case.contains("packed batch")).count(), 6);
    for c in &checks {
        assert!(c.ok(), "{c}");
        assert_eq!(c.loss.0.to_bits(), c.loss.1.to_bits(), "{c}");
        assert_eq!(c.loss_after.0.to_bits(), c.loss_after.1.to_bits(), "{c}");
        assert!(c.grads.iter().all(|g| g.max_abs == 0.0 && g.cos == 1.0 && g.norm_ratio == 1.0), "{c}");
        assert_eq!(c.update.0, 0.0, "{c}");
        // The step moved the parameters: the second loss is another number.
        assert_ne!(c.loss.0, c.loss_after.0, "{c}");
    }
    // Adapters (A, B, and the DoRA magnitude) and, with the echo path, its parameters.
    let echo_dora = checks.iter().find(|c| c.case.starts_with("echo-dora")).unwrap();
    assert!(echo_dora.grads.iter().any(|g| g.name.ends_with("lora_magnitude_vector")));
    assert!(echo_dora.grads.iter().any(|g| g.name == "echo.layer_logits"));
    // The output site's cases ran, and their echo parameters have gradients.
    let output = checks.iter().find(|c| c.case.starts_with("echo-dora at the output")).unwrap();
    assert!(output.grads.iter().any(|g| g.name == "echo.gate.model.layers.0.mlp.gate_proj.bias"));
    // Each gradient's noise floor was measured from the jittered CPU runs.
    assert!(checks.iter().all(|c| c.grads.iter().any(|g| g.noise.1 > 0.0)));
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn whole_step_on_cuda_matches_the_cpu() {
    if let Some(why) = echo_kernels::cuda::probe().unusable() {
        panic!("this test needs a usable CUDA device: {why}");
    }
    let checks = step_checks(&fixture(), Device::Cuda(0)).unwrap();
    for c in &checks {
        println!("{c}");
    }
    for c in &checks {
        assert!(c.ok(), "{c}");
    }
}

fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        vocab_size: 64,
        max_position_embeddings: 64,
        ..step_bench::llama_7b_config()
    }
}

#[test]
fn the_step_benchmark_runs_at_a_tiny_shape() {
    let bench = StepBench {
        config: tiny_config(),
        batch: 2,
        seq: 16,
        r: 4,
        warmup: 1,
        steps: 2,
        targets: vec![Proj::Q, Proj::V, Proj::Down],
        ..StepBench::llama_7b()
    };
    let r = step_bench::run(&bench, Device::Cpu).unwrap();
    assert_eq!((r.layers, r.tokens_per_step, r.step_seconds.len()), (2, 32, 2));
    assert!(r.tokens_per_s > 0.0);
    // Random weights of std 0.02 give near-uniform predictions: the loss starts at about ln V.
    assert!((r.first_loss - (64f32).ln()).abs() < 0.1, "first loss {}", r.first_loss);
    assert!(r.last_loss.is_finite());
    assert_eq!(StepBench::llama_7b().with_layers(3).config.num_hidden_layers, 3);
}

#[test]
fn the_benchmark_batch_is_the_python_one() {
    // The first ids of benches/peft_step_7b.py's batch (splitmix64 from 0, in [16, 32000)),
    // as that script's `batch()` computes them.
    assert_eq!(step_bench::bench_batch(1, 4, 32000), vec![3967, 25012, 22943, 14252]);
}

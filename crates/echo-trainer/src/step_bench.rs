//! The headline GPU benchmark of issue 7: LoRA training steps on a LLaMA-7B-shaped decoder
//! with random weights (bf16 on a GPU), batch 16 x 256, r = 32, alpha 64 on q, k, v, up and
//! down of every layer, each step = `forward_backward` + global-norm clipping + AdamW, in
//! tokens/s after warm-up. `benches/peft_step_7b.py` times the same step with
//! transformers + PEFT; `cargo xtask gpu-check` runs both and prints the ratio.
//!
//! The batch is the Python script's: token ids from splitmix64 (seed 0) in `[16, V)`, mask
//! all ones, labels = the ids (every shifted position counts).
//!
//! The run is also a check at the real size, which the kernel checks (small shapes) and the
//! whole-step check (tiny-llama-a) do not reach: it fails unless the first loss is within
//! [`FIRST_LOSS_TOL`] of `ln V` (random weights of std 0.02 predict near-uniformly) and every
//! loss and gradient norm is finite, so a NaN or a wrong result that appears only at large
//! sizes gives an error, not a tokens/s figure.

use crate::error::{Result, TrainError};
use crate::optim::{clip_factor, global_grad_norm, AdamW, AdamWConfig};
use crate::step::{forward_backward, StepContext, StepInput};
use echo_adapters::{AdapterConfig, Adapters, Method};
use echo_autograd::{ParamId, ParamStore};
use echo_model::{Llama, LlamaConfig, Proj};
use echo_tensor::{Device, Rng};
use std::time::Instant;

/// What to run.
#[derive(Clone, Debug)]
pub struct StepBench {
    pub config: LlamaConfig,
    pub batch: usize,
    pub seq: usize,
    pub r: usize,
    pub alpha: f32,
    pub targets: Vec<Proj>,
    pub warmup: usize,
    pub steps: usize,
    pub lr: f32,
    pub max_grad_norm: f32,
}

/// transformers' `LlamaConfig()` defaults, which are LLaMA-7B's shape.
pub fn llama_7b_config() -> LlamaConfig {
    LlamaConfig {
        hidden_size: 4096,
        intermediate_size: 11008,
        num_hidden_layers: 32,
        num_attention_heads: 32,
        num_key_value_heads: 32,
        head_dim: 128,
        vocab_size: 32000,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 2048,
        tie_word_embeddings: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        pad_token_id: None,
    }
}

impl StepBench {
    /// The headline setup: LLaMA-7B shape, 16 x 256 tokens, r = 32 on q, k, v, up, down.
    pub fn llama_7b() -> Self {
        StepBench {
            config: llama_7b_config(),
            batch: 16,
            seq: 256,
            r: 32,
            alpha: 64.0,
            targets: vec![Proj::Q, Proj::K, Proj::V, Proj::Up, Proj::Down],
            warmup: 2,
            steps: 5,
            lr: 1e-4,
            max_grad_norm: 1.0,
        }
    }

    /// The same with `n` decoder layers (to fit a smaller device or time budget).
    pub fn with_layers(mut self, n: usize) -> Self {
        self.config.num_hidden_layers = n;
        self
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct StepBenchResult {
    pub device: String,
    pub layers: usize,
    pub tokens_per_step: usize,
    /// Seconds of each timed step (after warm-up), each ended by a device synchronisation.
    pub step_seconds: Vec<f64>,
    pub tokens_per_s: f64,
    /// Building the random model and the adapters (generation and upload).
    pub setup_seconds: f64,
    pub first_loss: f32,
    pub last_loss: f32,
    /// On a GPU: the caching allocator's peak of bytes in use (size classes) in this process,
    /// read before the cache was freed; the step is by far the largest user.
    pub device_peak_bytes: Option<usize>,
}

/// The first loss must be within this of `ln(vocab)`: with random weights of std 0.02 the
/// logits are near zero and the loss starts at `ln V` to within a few hundredths (the tiny
/// CPU run of `tests/device_step.rs`: 0.1); a wrong forward (a dropped norm, a wrong scale, a
/// garbled row) moves it by far more.
pub const FIRST_LOSS_TOL: f32 = 1.0;

/// `Err` unless `loss` (the first step's) is finite and within [`FIRST_LOSS_TOL`] of `ln vocab`.
pub fn check_first_loss(loss: f32, vocab: usize) -> Result<()> {
    let want = (vocab as f32).ln();
    match loss.is_finite() && (loss - want).abs() <= FIRST_LOSS_TOL {
        true => Ok(()),
        false => Err(TrainError::Other(format!(
            "first loss {loss} is not within {FIRST_LOSS_TOL} of ln({vocab}) = {want:.4} (random weights predict near-uniformly): the forward is wrong at this size"
        ))),
    }
}

/// splitmix64 from `state`: `(next state, output)`, as `peft_step_7b.py`.
fn splitmix64(state: u64) -> (u64, u64) {
    let s = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (s, z ^ (z >> 31))
}

/// The benchmark's token ids, `[batch, seq]` row-major (the labels are the same ids).
pub fn bench_batch(batch: usize, seq: usize, vocab: usize) -> Vec<i64> {
    let mut s = 0u64;
    (0..batch * seq)
        .map(|_| {
            let (next, z) = splitmix64(s);
            s = next;
            16 + (z % (vocab as u64 - 16)) as i64
        })
        .collect()
}

/// Runs the benchmark on `device`; an error when a step fails or its losses say the step is
/// wrong ([`check_first_loss`], every loss and gradient norm finite). On a GPU everything it
/// allocated is returned to the driver afterwards: the caching allocator's free blocks are
/// freed (stream-ordered frees) and the device is synchronised, which is when the driver takes
/// them back, so another process, such as the PyTorch side, has the memory.
pub fn run(bench: &StepBench, device: Device) -> Result<StepBenchResult> {
    let result = run_inner(bench, device);
    let freed = device.release_cached_memory();
    match (result, freed) {
        (Ok(_), Err(e)) => {
            Err(TrainError::In { what: "freeing the device memory after the run".into(), source: Box::new(e.into()) })
        }
        (result, _) => result,
    }
}

fn run_inner(bench: &StepBench, device: Device) -> Result<StepBenchResult> {
    let started = Instant::now();
    let model = Llama::random_on(bench.config.clone(), device, 7)?;
    let mut store = ParamStore::new();
    let cfg = AdapterConfig {
        method: Method::Lora,
        r: bench.r,
        alpha: bench.alpha,
        use_rslora: false,
        dropout: 0.0,
        targets: bench.targets.clone(),
        layers: None,
    };
    let adapters = Adapters::init(cfg, &model, &mut store, &mut Rng::new(1))?;
    let mut store = store.to_device(device)?;
    let ids: Vec<ParamId> = adapters.tensors().into_iter().map(|(id, _)| id).collect();
    device.synchronize()?;
    let setup_seconds = started.elapsed().as_secs_f64();

    let (b, t) = (bench.batch, bench.seq);
    let tokens = bench_batch(b, t, bench.config.vocab_size);
    let mask = vec![1i64; b * t];
    let route = vec![false; b];
    let batch = echo_data::Batch::from_arrays(&tokens, &mask, &tokens, b, t, None)?;
    let input = StepInput { batch: &batch, route: &route };
    let ctx = StepContext { model: &model, adapters: &adapters, echo: None };
    let mut adam = AdamW::new(AdamWConfig::default());
    let (mut first_loss, mut last_loss) = (None, 0f32);
    let mut step_seconds = Vec::with_capacity(bench.steps);
    for i in 0..bench.warmup + bench.steps {
        let t0 = Instant::now();
        let (stats, _) = forward_backward(&ctx, &input, &mut store, None, 1.0, false)?;
        if i == 0 {
            check_first_loss(stats.loss, bench.config.vocab_size)?;
        } else if !stats.loss.is_finite() {
            return Err(TrainError::Other(format!("step {}: loss {} is not finite", i + 1, stats.loss)));
        }
        let norm = global_grad_norm(&store, &ids)?;
        if !norm.is_finite() {
            return Err(TrainError::Other(format!(
                "step {}: gradient norm {norm} is not finite (loss {})",
                i + 1,
                stats.loss
            )));
        }
        adam.step(&mut store, &ids, bench.lr, clip_factor(norm, bench.max_grad_norm))?;
        store.zero_grad();
        device.synchronize()?;
        if i >= bench.warmup {
            step_seconds.push(t0.elapsed().as_secs_f64());
        }
        first_loss.get_or_insert(stats.loss);
        last_loss = stats.loss;
    }
    let total: f64 = step_seconds.iter().sum();
    let device_peak_bytes = device.peak_memory_in_use().map(|b| b as usize);
    Ok(StepBenchResult {
        device: device.to_string(),
        layers: bench.config.num_hidden_layers,
        tokens_per_step: b * t,
        tokens_per_s: if total > 0.0 { (b * t * step_seconds.len()) as f64 / total } else { 0.0 },
        step_seconds,
        setup_seconds,
        first_loss: first_loss.unwrap_or(f32::NAN),
        last_loss,
        device_peak_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_loss_must_be_near_ln_vocab() {
        let ln = (32000f32).ln();
        assert!(check_first_loss(ln + 0.05, 32000).is_ok());
        assert!(check_first_loss(ln - 0.99, 32000).is_ok());
        for bad in [ln + 1.5, ln - 2.0, 0.0, f32::NAN, f32::INFINITY] {
            let e = check_first_loss(bad, 32000).unwrap_err().to_string();
            assert!(e.contains("ln(32000) = 10.3735"), "{e}");
        }
    }
}

//! Shapes, FLOP counts and inputs shared by the criterion benchmarks in `benches/benches/`.
//!
//! The benchmark ids built here (`gemm/1024x576x1536`, `lora_fwd_bwd/...`) are the names the
//! numpy reference (`benches/numpy_reference.py`) prints too: `cargo xtask bench` matches the
//! two by name, so keep them in step.

use echo_tensor::{Rng, Tensor};

pub mod paired;

/// Rows of the activations: a batch of 1024 tokens.
pub const TOKENS: usize = 1024;
/// LoRA rank of the adapter benchmark.
pub const RANK: usize = 32;
/// LoRA scale (`alpha / r`) of the adapter benchmark.
pub const SCALE: f32 = 2.0;

/// A GEMM `C[m, n] = X[m, k] · W[n, k]^T`: the layout of a linear layer (`x W^T`, PyTorch's
/// `[out, in]` weight).
#[derive(Clone, Copy, Debug)]
pub struct GemmShape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

/// The two projections of a 576-wide model with a 1536-wide MLP (SmolLM-135M-like), over
/// 1024 tokens: up (`k=576 -> n=1536`) and down (`k=1536 -> n=576`).
pub const GEMM_SHAPES: [GemmShape; 2] =
    [GemmShape { m: TOKENS, k: 576, n: 1536 }, GemmShape { m: TOKENS, k: 1536, n: 576 }];

impl GemmShape {
    /// `2 m n k`: one multiply and one add per inner-product term.
    pub fn flops(&self) -> u64 {
        2 * (self.m * self.n * self.k) as u64
    }
    /// Criterion id within the `gemm` group.
    pub fn id(&self) -> String {
        format!("{}x{}x{}", self.m, self.k, self.n)
    }
}

/// A LoRA linear: `x` `[rows, d_in]`, frozen `W` `[d_out, d_in]`, `A` `[rank, d_in]`,
/// `B` `[d_out, rank]`.
#[derive(Clone, Copy, Debug)]
pub struct LoraShape {
    pub rows: usize,
    pub d_in: usize,
    pub d_out: usize,
    pub rank: usize,
}

/// The LoRA linear at the same two shapes as [`GEMM_SHAPES`].
pub const LORA_SHAPES: [LoraShape; 2] = [
    LoraShape { rows: TOKENS, d_in: 576, d_out: 1536, rank: RANK },
    LoraShape { rows: TOKENS, d_in: 1536, d_out: 576, rank: RANK },
];

impl LoraShape {
    /// FLOPs of one forward plus backward with `x`, `A`, `B` trainable and `W` frozen
    /// (no `dW`), counting `2 m n k` per GEMM:
    ///
    /// - forward: `x W^T` (2·N·in·out), `z = x A^T` (2·N·in·r), `z B^T` (2·N·r·out);
    /// - backward: `dx = dy W` (2·N·out·in), `dB = dy^T z` (2·out·N·r), `dz = dy B`
    ///   (2·N·out·r), `dA = dz^T x` (2·r·N·in), `dx += dz A` (2·N·r·in).
    pub fn flops(&self) -> u64 {
        let (n, i, o, r) = (self.rows as u64, self.d_in as u64, self.d_out as u64, self.rank as u64);
        let forward = 2 * n * i * o + 2 * n * i * r + 2 * n * r * o;
        let backward = 2 * n * o * i + 2 * o * n * r + 2 * n * o * r + 2 * r * n * i + 2 * n * r * i;
        forward + backward
    }
    /// Criterion id within the `lora_fwd_bwd` group.
    pub fn id(&self) -> String {
        format!("{}x{}x{}_r{}", self.rows, self.d_in, self.d_out, self.rank)
    }
}

/// Inputs of a LoRA benchmark: `x`, frozen `w`, adapter `a`, `b` and the output gradient `dy`.
pub struct LoraInputs {
    pub x: Tensor,
    pub w: Tensor,
    pub a: Tensor,
    pub b: Tensor,
    pub dy: Tensor,
}

impl LoraShape {
    /// Seeded random inputs. `B` is random rather than PEFT's zero init, so that no GEMM
    /// multiplies zeros (the timing would not change, but the values stay meaningful).
    pub fn inputs(&self, seed: u64) -> LoraInputs {
        let mut rng = Rng::new(seed);
        let std_in = 1.0 / (self.d_in as f32).sqrt();
        LoraInputs {
            x: Tensor::randn([self.rows, self.d_in], 1.0, &mut rng),
            w: Tensor::randn([self.d_out, self.d_in], std_in, &mut rng),
            a: Tensor::randn([self.rank, self.d_in], std_in, &mut rng),
            b: Tensor::randn([self.d_out, self.rank], 1.0 / (self.rank as f32).sqrt(), &mut rng),
            dy: Tensor::randn([self.rows, self.d_out], 1.0, &mut rng),
        }
    }
}

/// Seeded random row-major `f32` data of `len` elements.
pub fn random_f32(len: usize, std: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.normal() * std).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flop_counts() {
        let g = GEMM_SHAPES[0];
        assert_eq!(g.flops(), 2 * 1024 * 576 * 1536);
        assert_eq!(g.id(), "1024x576x1536");
        let l = LORA_SHAPES[0];
        // Two base GEMMs (forward, dx) plus six rank-32 GEMMs.
        let base = 2 * 2 * 1024 * 576 * 1536u64;
        let low = 2 * 1024 * 32 * (576 * 3 + 1536 * 3) as u64;
        assert_eq!(l.flops(), base + low);
        assert_eq!(l.id(), "1024x576x1536_r32");
    }
}

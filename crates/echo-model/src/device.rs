//! Where a model's weights live. On a GPU the frozen matrices (the embedding, the seven
//! projections of every block, the LM head) are bf16, which cuBLAS multiplies with fp32
//! accumulation (the embedding is widened to f32 by the gather), and the RMSNorm weights are
//! f32 (the norm kernels read f32): the mixed precision of the CUDA backend, uploaded once.
//! On the CPU weights keep their dtype: f32 as loaded from files, bf16 when they come back
//! from a GPU (the CPU computes with bf16 frozen matrices exactly as the GPU does, see
//! echo-tensor's `mixed`). Adapters and everything computed stay f32.

use crate::llama::{Block, Llama};
use crate::{LlamaConfig, Result};
use echo_tensor::{Buffer, DType, Device, Tensor};
use half::bf16;
use rayon::prelude::*;

/// What a weight is, which decides its dtype on a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// A frozen matrix: bf16 on a GPU.
    Matrix,
    /// A norm weight: f32 everywhere.
    Vector,
}

/// `t` on `device` in the dtype its role has there. On the CPU the dtype is kept (a host
/// tensor is returned as it is, so a CPU model is exactly what was loaded).
pub(crate) fn place(t: Tensor, role: Role, device: Device) -> Result<Tensor> {
    Ok(match (device, role) {
        (Device::Cpu, _) => t.to_device(Device::Cpu)?,
        (Device::Cuda(_), Role::Matrix) => t.try_to_dtype(DType::BF16)?.to_device(device)?,
        (Device::Cuda(_), Role::Vector) => t.try_to_dtype(DType::F32)?.to_device(device)?,
    })
}

impl Llama {
    /// The device the weights are on.
    pub fn device(&self) -> Device {
        self.embed.device()
    }

    /// A copy of the model on `device` (bf16 frozen matrices on a GPU; dtypes kept on the
    /// CPU). A tied LM head stays one tensor with the embedding.
    pub fn to_device(&self, device: Device) -> Result<Llama> {
        let m = |t: &Tensor| place(t.clone(), Role::Matrix, device);
        let v = |t: &Tensor| place(t.clone(), Role::Vector, device);
        let embed = m(&self.embed)?;
        let lm_head = if self.lm_head.shares_data(&self.embed) { embed.clone() } else { m(&self.lm_head)? };
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let proj: Vec<Tensor> = b.proj.iter().map(m).collect::<Result<_>>()?;
            let proj: [Tensor; 7] = proj.try_into().unwrap_or_else(|_| unreachable!("seven projections in, seven out"));
            blocks.push(Block { attn_norm: v(&b.attn_norm)?, mlp_norm: v(&b.mlp_norm)?, proj });
        }
        Ok(Llama { config: self.config.clone(), embed, blocks, norm: v(&self.norm)?, lm_head, rope: self.rope.clone() })
    }

    /// A model of `config`'s shape with random weights, made for `device` without any file
    /// (benchmarks of large shapes). Matrices are uniform with std 0.02 (HF's
    /// `initializer_range`), norm weights one. Each tensor is generated on the host in
    /// parallel (directly as bf16 for a GPU) and uploaded before the next is made, so the host
    /// never holds more than one tensor. Deterministic in `seed`.
    pub fn random_on(config: LlamaConfig, device: Device, seed: u64) -> Result<Llama> {
        let c = &config;
        let (d, q_out, kv_out, ff) = (
            c.hidden_size,
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
            c.intermediate_size,
        );
        let mut next = 0u64;
        let mut matrix = |rows: usize, cols: usize| {
            next += 1;
            random_matrix([rows, cols], seed ^ next.wrapping_mul(0xD1B5_4A32_D192_ED03), device)
        };
        let ones = |n: usize| place(Tensor::ones([n]), Role::Vector, device);
        let embed = matrix(c.vocab_size, d)?;
        let mut blocks = Vec::with_capacity(c.num_hidden_layers);
        for _ in 0..c.num_hidden_layers {
            let proj = [
                matrix(q_out, d)?,
                matrix(kv_out, d)?,
                matrix(kv_out, d)?,
                matrix(d, q_out)?,
                matrix(ff, d)?,
                matrix(ff, d)?,
                matrix(d, ff)?,
            ];
            blocks.push(Block { attn_norm: ones(d)?, mlp_norm: ones(d)?, proj });
        }
        let lm_head = if c.tie_word_embeddings { embed.clone() } else { matrix(c.vocab_size, d)? };
        let rope = crate::llama::initial_rope(c);
        Ok(Llama { norm: ones(d)?, config, embed, blocks, lm_head, rope })
    }
}

/// Uniform in `[-0.02 sqrt 3, 0.02 sqrt 3)` (std 0.02); element `i` is a function of
/// `(seed, i)` alone (splitmix64's finaliser), so generation is parallel and reproducible.
fn random_matrix(shape: [usize; 2], seed: u64, device: Device) -> Result<Tensor> {
    let bound = 0.02 * 3f32.sqrt();
    let value = move |i: usize| {
        let mut z = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
    };
    let n = shape[0] * shape[1];
    let buffer = match device {
        Device::Cpu => Buffer::F32((0..n).into_par_iter().map(value).collect()),
        Device::Cuda(_) => Buffer::BF16((0..n).into_par_iter().map(|i| bf16::from_f32(value(i))).collect()),
    };
    Ok(Tensor::from_buffer(buffer, shape)?.to_device(device)?)
}

//! The CPU twin of the CUDA backend's mixed precision. On a GPU a frozen base weight is bf16
//! and the activation it multiplies is rounded to bf16 for cuBLAS, which forms the products
//! exactly and accumulates in f32. The CPU accepts a bf16 host weight in the same ops
//! (`linear` / a shared `matmul_t` right operand, the LoRA and DoRA pairs, `index_select`)
//! and computes the same thing: the activation rounded to bf16 (round to nearest even, as the
//! cast kernel), the weight widened exactly, an f32 GEMM. So a CPU run with bf16 weights is a
//! reference for a GPU run up to summation order, and it halves the weights' memory. f32
//! weights take the f32 path exactly as before.

use crate::{Buffer, DType, Error, Result, Tensor};
use half::bf16;
use rayon::prelude::*;
use std::borrow::Cow;

const PAR_MIN: usize = 1 << 15;

/// Whether `w` is a frozen bf16 weight held on the host.
pub(crate) fn is_bf16_host(w: &Tensor) -> bool {
    w.dtype() == DType::BF16 && w.device() == crate::Device::Cpu
}

/// `x` with every element rounded to the nearest bf16 (kept in f32).
pub(crate) fn round_bf16(x: &[f32]) -> Vec<f32> {
    let r = |v: &f32| bf16::from_f32(*v).to_f32();
    if x.len() >= PAR_MIN {
        x.par_iter().map(r).collect()
    } else {
        x.iter().map(r).collect()
    }
}

/// The weight as f32: borrowed when it is f32, widened (exactly) when bf16; any other dtype
/// is the f32 ops' `UnsupportedDType`.
pub(crate) fn weight_f32<'a>(w: &'a Tensor, op: &'static str) -> Result<Cow<'a, [f32]>> {
    match w.buffer() {
        Buffer::F32(v) => Ok(Cow::Borrowed(v)),
        Buffer::BF16(v) => Ok(Cow::Owned(v.iter().map(|h| h.to_f32()).collect())),
        other => Err(Error::UnsupportedDType { op, expected: DType::F32, got: other.dtype() }),
    }
}

//! The device seam: every op that computes, as one trait that each device implements, and the
//! one place where an op picks the implementation ([`of`]).
//!
//! An op file (`ops/*.rs`, `nn/*.rs`) validates shapes and values, then calls
//! `backend::of(operands).the_op(..)`. The CPU implementation is [`crate::cpu::Cpu`] (the
//! routines of `echo_kernels::cpu`), the CUDA one [`crate::cuda::Cuda`] (the kernels, cuBLAS).
//! A device that lacks an op does not compile. What an implementation may assume: the
//! shapes passed the op file's checks; it checks devices and dtypes itself (the CUDA side
//! also that all operands share one device, [`crate::cuda::Cx::of`]).
//!
//! Each CUDA kernel is checked against the CPU routine that the CPU backend runs, so the two
//! sides compute the same function; they differ only in summation order and in the
//! precision the GPU's libraries use (see `crate::cpu::mixed`).

use crate::nn::{AttnMask, DoraSaved, Injection, LoraGradsOut, LoraParams, Want};
use crate::{cpu, cuda, Device, Result, RopeTable, Shape, Tensor};
use echo_kernels::cpu::attention::AttnDims;
use echo_kernels::cpu::lowrank::LoraDims;
use echo_kernels::cpu::optim::AdamWStep;

pub(crate) use echo_kernels::cpu::tensor_ref::{BinaryOp, ReduceOp, UnaryOp};

/// The backend of the device the operands are on: the CPU when all are in host memory, CUDA
/// when any is on a GPU (that backend then reports operands on different devices).
pub(crate) fn of<'a>(operands: impl IntoIterator<Item = &'a Tensor>) -> &'static dyn Backend {
    if operands.into_iter().any(|t| t.device() != Device::Cpu) {
        &cuda::Cuda
    } else {
        &cpu::Cpu
    }
}

/// Every computing op, for one device. Arguments are as the op files validated them.
pub(crate) trait Backend: Sync {
    // ------------------------------------------------------------ elementwise (`ops/elementwise.rs`)
    /// `a (kind) b` with numpy broadcasting.
    fn binary(&self, a: &Tensor, b: &Tensor, op: &'static str, kind: BinaryOp) -> Result<Tensor>;
    fn unary(&self, x: &Tensor, op: &'static str, kind: UnaryOp) -> Result<Tensor>;
    /// `a += b` in place, same shape.
    fn add_assign(&self, a: &mut Tensor, b: &Tensor) -> Result<()>;
    fn broadcast_to(&self, x: &Tensor, shape: Shape) -> Result<Tensor>;
    fn sum_to(&self, x: &Tensor, shape: &Shape) -> Result<Tensor>;

    // ------------------------------------------------------------ reductions (`ops/reduce.rs`)
    fn reduce_dim(&self, x: &Tensor, op: &'static str, dim: usize, keepdim: bool, kind: ReduceOp) -> Result<Tensor>;
    /// `sum(x) / denom` as a scalar; on the CPU summed and divided in f64, rounded once.
    fn sum_all_div(&self, x: &Tensor, denom: f32) -> Result<Tensor>;
    fn mean_all(&self, x: &Tensor) -> Result<Tensor>;
    fn softmax_last(&self, x: &Tensor) -> Result<Tensor>;
    /// `sum_t sum_i t[i]^2` over several tensors (the global gradient norm's square), read back.
    fn sum_squares(&self, ts: &[&Tensor]) -> Result<f64>;

    // ------------------------------------------------------------ layout (`ops/layout.rs`)
    fn permute(&self, x: &Tensor, perm: &[usize]) -> Result<Tensor>;
    fn narrow(&self, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor>;
    fn concat(&self, parts: &[&Tensor], dim: usize) -> Result<Tensor>;
    fn index_select(&self, x: &Tensor, idx: &[usize]) -> Result<Tensor>;
    fn scatter_add_rows(&self, x: &Tensor, idx: &[usize], rows: usize) -> Result<Tensor>;

    // ------------------------------------------------------------ matmul (`ops/matmul.rs`)
    /// `op(a) @ op(b)` for `[..., m, k] x [..., k, n]` (batch dims checked by the caller).
    #[allow(clippy::too_many_arguments)]
    fn matmul_t(&self, a: &Tensor, b: &Tensor, ta: bool, tb: bool, m: usize, k: usize, n: usize) -> Result<Tensor>;

    // ------------------------------------------------------------ transformer (`nn/transformer.rs`)
    fn rmsnorm_forward(&self, x: &Tensor, w: Option<&Tensor>, eps: f32) -> Result<(Tensor, Tensor)>;
    fn rmsnorm_backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        w: Option<&Tensor>,
        rstd: &Tensor,
        want_dw: bool,
    ) -> Result<(Tensor, Option<Tensor>)>;
    fn rope(&self, x: &Tensor, positions: &[usize], table: &RopeTable, inverse: bool) -> Result<Tensor>;
    fn attention_forward(
        &self,
        dims: &AttnDims,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &AttnMask,
    ) -> Result<(Tensor, Tensor)>;
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dims: &AttnDims,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &AttnMask,
        out: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)>;
    fn swiglu_forward(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor>;
    fn swiglu_backward(&self, dout: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)>;

    // ------------------------------------------------------------ adapters (`nn/adapter.rs`)
    fn lora_forward(
        &self,
        d: &LoraDims,
        x: &Tensor,
        xd: Option<&Tensor>,
        p: &LoraParams<'_>,
        inj: Option<&Injection<'_>>,
    ) -> Result<(Tensor, Tensor)>;
    #[allow(clippy::too_many_arguments)]
    fn lora_backward(
        &self,
        d: &LoraDims,
        dy: &Tensor,
        x: &Tensor,
        xd: Option<&Tensor>,
        keep: Option<&Tensor>,
        p: &LoraParams<'_>,
        z: &Tensor,
        want: Want,
    ) -> Result<LoraGradsOut>;
    fn gated_inject_forward(&self, z: &Tensor, inj: &Injection<'_>, d: &LoraDims) -> Result<Tensor>;
    fn gated_inject_backward(&self, dz: &Tensor, inj: &Injection<'_>, d: &LoraDims) -> Result<(Tensor, Tensor)>;
    fn dora_weight_norm(&self, d: &LoraDims, p: &LoraParams<'_>) -> Result<Tensor>;
    /// DoRA's `(m / n) ⊙ pre`, returned with what the backward keeps.
    fn dora_scale_forward(
        &self,
        pre: Tensor,
        z: Tensor,
        norm: Tensor,
        magnitude: &Tensor,
    ) -> Result<(Tensor, DoraSaved)>;
    /// `(dpre, dm)` of [`Backend::dora_scale_forward`]; `dm` only when `want_dm`.
    fn dora_scale_backward(
        &self,
        dy: &Tensor,
        magnitude: &Tensor,
        saved: &DoraSaved,
        want_dm: bool,
    ) -> Result<(Tensor, Option<Tensor>)>;

    // ------------------------------------------------------------ losses (`nn/loss.rs`)
    fn cross_entropy_forward(&self, logits: &Tensor, targets: &[i64]) -> Result<(Tensor, Tensor)>;
    fn cross_entropy_backward(
        &self,
        logits: &Tensor,
        targets: &[i64],
        lse: &Tensor,
        row_scale: &[f32],
    ) -> Result<Tensor>;
    fn kl_forward(&self, teacher: &Tensor, student: &Tensor, tau: f32) -> Result<Tensor>;
    fn kl_backward_student(&self, teacher: &Tensor, student: &Tensor, tau: f32, row_scale: &[f32]) -> Result<Tensor>;
    fn masked_mean_forward(&self, x: &Tensor, mask: &Tensor, b: usize, t: usize, d: usize) -> Result<Tensor>;
    fn masked_mean_backward(&self, dout: &Tensor, x_shape: &Shape, mask: &Tensor) -> Result<Tensor>;

    // ------------------------------------------------------------ optimizer (`nn/optim.rs`)
    fn adamw_step(&self, w: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, s: &AdamWStep) -> Result<()>;
}

/// For the one op that exists on the host only (`Tensor::map`, whose closure cannot run on a
/// GPU): an [`crate::Error::DeviceUnavailable`] with `reason` for a device tensor.
pub(crate) fn host_only(x: &Tensor, op: &'static str, reason: &str) -> Result<()> {
    match x.device() {
        Device::Cpu => Ok(()),
        device => Err(crate::Error::DeviceUnavailable { op, device, reason: reason.into() }),
    }
}

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

/// Declares [`Backend`] from the op list below and implements it for both devices, each
/// method calling the function of the same name in that device's `ops` or `nn` module
/// (`cpu::ops::binary`, `cuda::ops::binary`, ...). One list, so the trait and the two
/// implementations cannot drift apart, and a device missing an op does not compile.
macro_rules! backends {
    ($($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty => $module:ident;)*) => {
        /// Every computing op, for one device. Arguments are as the op files validated them.
        #[allow(clippy::too_many_arguments)]
        pub(crate) trait Backend: Sync {
            $($(#[$meta])* fn $name(&self, $($arg: $ty),*) -> $ret;)*
        }

        #[allow(clippy::too_many_arguments)]
        impl Backend for cpu::Cpu {
            $(fn $name(&self, $($arg: $ty),*) -> $ret {
                cpu::$module::$name($($arg),*)
            })*
        }

        #[allow(clippy::too_many_arguments)]
        impl Backend for cuda::Cuda {
            $(fn $name(&self, $($arg: $ty),*) -> $ret {
                cuda::$module::$name($($arg),*)
            })*
        }
    };
}

backends! {
    // elementwise (`ops/elementwise.rs`)
    /// `a (kind) b` with numpy broadcasting.
    fn binary(a: &Tensor, b: &Tensor, op: &'static str, kind: BinaryOp) -> Result<Tensor> => ops;
    fn unary(x: &Tensor, op: &'static str, kind: UnaryOp) -> Result<Tensor> => ops;
    /// `a += b` in place, same shape.
    fn add_assign(a: &mut Tensor, b: &Tensor) -> Result<()> => ops;
    fn broadcast_to(x: &Tensor, shape: Shape) -> Result<Tensor> => ops;
    fn sum_to(x: &Tensor, shape: &Shape) -> Result<Tensor> => ops;

    // reductions (`ops/reduce.rs`)
    fn reduce_dim(x: &Tensor, op: &'static str, dim: usize, keepdim: bool, kind: ReduceOp) -> Result<Tensor> => ops;
    /// `sum(x) / denom` as a scalar; on the CPU summed and divided in f64, rounded once.
    fn sum_all_div(x: &Tensor, denom: f32) -> Result<Tensor> => ops;
    fn mean_all(x: &Tensor) -> Result<Tensor> => ops;
    fn softmax_last(x: &Tensor) -> Result<Tensor> => ops;
    /// `sum_t sum_i t[i]^2` over several tensors (the global gradient norm's square), read back.
    fn sum_squares(ts: &[&Tensor]) -> Result<f64> => ops;

    // layout (`ops/layout.rs`)
    fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> => ops;
    fn narrow(x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> => ops;
    fn concat(parts: &[&Tensor], dim: usize) -> Result<Tensor> => ops;
    fn index_select(x: &Tensor, idx: &[usize]) -> Result<Tensor> => ops;
    fn scatter_add_rows(x: &Tensor, idx: &[usize], rows: usize) -> Result<Tensor> => ops;

    // matmul (`ops/matmul.rs`)
    /// `op(a) @ op(b)` for `[..., m, k] x [..., k, n]` (batch dims checked by the caller).
    fn matmul_t(a: &Tensor, b: &Tensor, ta: bool, tb: bool, m: usize, k: usize, n: usize) -> Result<Tensor> => ops;

    // transformer (`nn/transformer.rs`)
    fn rmsnorm_forward(x: &Tensor, w: Option<&Tensor>, eps: f32) -> Result<(Tensor, Tensor)> => nn;
    fn rmsnorm_backward(
        dy: &Tensor,
        x: &Tensor,
        w: Option<&Tensor>,
        rstd: &Tensor,
        want_dw: bool,
    ) -> Result<(Tensor, Option<Tensor>)> => nn;
    fn rope(x: &Tensor, positions: &[usize], table: &RopeTable, inverse: bool) -> Result<Tensor> => nn;
    fn attention_forward(
        dims: &AttnDims,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &AttnMask,
    ) -> Result<(Tensor, Tensor)> => nn;
    fn attention_backward(
        dims: &AttnDims,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &AttnMask,
        out: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> => nn;
    fn swiglu_forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> => nn;
    fn swiglu_backward(dout: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> => nn;

    // adapters (`nn/adapter.rs`)
    fn lora_forward(
        d: &LoraDims,
        x: &Tensor,
        xd: Option<&Tensor>,
        p: &LoraParams<'_>,
        inj: Option<&Injection<'_>>,
    ) -> Result<(Tensor, Tensor)> => nn;
    fn lora_backward(
        d: &LoraDims,
        dy: &Tensor,
        x: &Tensor,
        xd: Option<&Tensor>,
        keep: Option<&Tensor>,
        p: &LoraParams<'_>,
        z: &Tensor,
        want: Want,
    ) -> Result<LoraGradsOut> => nn;
    fn gated_inject_forward(z: &Tensor, inj: &Injection<'_>, d: &LoraDims) -> Result<Tensor> => nn;
    fn gated_inject_backward(dz: &Tensor, inj: &Injection<'_>, d: &LoraDims) -> Result<(Tensor, Tensor)> => nn;
    fn dora_weight_norm(d: &LoraDims, p: &LoraParams<'_>) -> Result<Tensor> => nn;
    /// DoRA's `(m / n) ⊙ pre`, returned with what the backward keeps.
    fn dora_scale_forward(
        pre: Tensor,
        z: Tensor,
        norm: Tensor,
        magnitude: &Tensor,
    ) -> Result<(Tensor, DoraSaved)> => nn;
    /// `(dpre, dm)` of [`Backend::dora_scale_forward`]; `dm` only when `want_dm`.
    fn dora_scale_backward(
        dy: &Tensor,
        magnitude: &Tensor,
        saved: &DoraSaved,
        want_dm: bool,
    ) -> Result<(Tensor, Option<Tensor>)> => nn;

    // losses (`nn/loss.rs`)
    fn cross_entropy_forward(logits: &Tensor, targets: &[i64]) -> Result<(Tensor, Tensor)> => nn;
    fn cross_entropy_backward(
        logits: &Tensor,
        targets: &[i64],
        lse: &Tensor,
        row_scale: &[f32],
    ) -> Result<Tensor> => nn;
    fn kl_forward(teacher: &Tensor, student: &Tensor, tau: f32) -> Result<Tensor> => nn;
    fn kl_backward_student(teacher: &Tensor, student: &Tensor, tau: f32, row_scale: &[f32]) -> Result<Tensor> => nn;
    fn masked_mean_forward(x: &Tensor, mask: &Tensor, b: usize, t: usize, d: usize) -> Result<Tensor> => nn;
    fn masked_mean_backward(dout: &Tensor, x_shape: &Shape, mask: &Tensor) -> Result<Tensor> => nn;

    // optimizer (`nn/optim.rs`)
    fn adamw_step(w: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, s: &AdamWStep) -> Result<()> => nn;
}

/// For the one op that exists on the host only (`Tensor::map`, whose closure cannot run on a
/// GPU): an [`crate::Error::DeviceUnavailable`] with `reason` for a device tensor.
pub(crate) fn host_only(x: &Tensor, op: &'static str, reason: &str) -> Result<()> {
    match x.device() {
        Device::Cpu => Ok(()),
        device => Err(crate::Error::DeviceUnavailable { op, device, reason: reason.into() }),
    }
}

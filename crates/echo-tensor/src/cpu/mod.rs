//! The CPU side of echo-tensor: the host form of every op ([`Cpu`], the [`Backend`] of host
//! tensors), on the routines of `echo_kernels::cpu` (`ops`: generic ops, `nn`: the fused
//! pairs), and the twin of the GPU's mixed precision (`mixed`).

pub(crate) mod mixed;
pub(crate) mod nn;
pub(crate) mod ops;

use crate::backend::{Backend, BinaryOp, ReduceOp, UnaryOp};
use crate::nn::{AttnMask, DoraSaved, Injection, LoraGradsOut, LoraParams, Want};
use crate::{Result, RopeTable, Shape, Tensor};
use echo_kernels::cpu::attention::AttnDims;
use echo_kernels::cpu::lowrank::LoraDims;
use echo_kernels::cpu::optim::AdamWStep;

/// Host memory, computed on the rayon pool.
pub(crate) struct Cpu;

impl Backend for Cpu {
    fn binary(&self, a: &Tensor, b: &Tensor, op: &'static str, kind: BinaryOp) -> Result<Tensor> {
        ops::binary(a, b, op, kind)
    }
    fn unary(&self, x: &Tensor, op: &'static str, kind: UnaryOp) -> Result<Tensor> {
        ops::unary(x, op, kind)
    }
    fn add_assign(&self, a: &mut Tensor, b: &Tensor) -> Result<()> {
        ops::add_assign(a, b)
    }
    fn broadcast_to(&self, x: &Tensor, shape: Shape) -> Result<Tensor> {
        ops::broadcast_to(x, shape)
    }
    fn sum_to(&self, x: &Tensor, shape: &Shape) -> Result<Tensor> {
        ops::sum_to(x, shape)
    }

    fn reduce_dim(&self, x: &Tensor, op: &'static str, dim: usize, keepdim: bool, kind: ReduceOp) -> Result<Tensor> {
        ops::reduce_dim(x, op, dim, keepdim, kind)
    }
    fn sum_all_div(&self, x: &Tensor, denom: f32) -> Result<Tensor> {
        ops::sum_all_div(x, denom)
    }
    fn mean_all(&self, x: &Tensor) -> Result<Tensor> {
        ops::mean_all(x)
    }
    fn softmax_last(&self, x: &Tensor) -> Result<Tensor> {
        ops::softmax_last(x)
    }
    fn sum_squares(&self, ts: &[&Tensor]) -> Result<f64> {
        ops::sum_squares(ts)
    }

    fn permute(&self, x: &Tensor, perm: &[usize]) -> Result<Tensor> {
        ops::permute(x, perm)
    }
    fn narrow(&self, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        ops::narrow(x, dim, start, len)
    }
    fn concat(&self, parts: &[&Tensor], dim: usize) -> Result<Tensor> {
        ops::concat(parts, dim)
    }
    fn index_select(&self, x: &Tensor, idx: &[usize]) -> Result<Tensor> {
        ops::index_select(x, idx)
    }
    fn scatter_add_rows(&self, x: &Tensor, idx: &[usize], rows: usize) -> Result<Tensor> {
        ops::scatter_add_rows(x, idx, rows)
    }

    fn matmul_t(&self, a: &Tensor, b: &Tensor, ta: bool, tb: bool, m: usize, k: usize, n: usize) -> Result<Tensor> {
        ops::matmul_t(a, b, ta, tb, m, k, n)
    }

    fn rmsnorm_forward(&self, x: &Tensor, w: Option<&Tensor>, eps: f32) -> Result<(Tensor, Tensor)> {
        nn::rmsnorm_forward(x, w, eps)
    }
    fn rmsnorm_backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        w: Option<&Tensor>,
        rstd: &Tensor,
        want_dw: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        nn::rmsnorm_backward(dy, x, w, rstd, want_dw)
    }
    fn rope(&self, x: &Tensor, positions: &[usize], table: &RopeTable, inverse: bool) -> Result<Tensor> {
        nn::rope(x, positions, table, inverse)
    }
    fn attention_forward(
        &self,
        dims: &AttnDims,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &AttnMask,
    ) -> Result<(Tensor, Tensor)> {
        nn::attention_forward(dims, q, k, v, mask)
    }
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
    ) -> Result<(Tensor, Tensor, Tensor)> {
        nn::attention_backward(dims, q, k, v, mask, out, lse, dout)
    }
    fn swiglu_forward(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        nn::swiglu_forward(gate, up)
    }
    fn swiglu_backward(&self, dout: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
        nn::swiglu_backward(dout, gate, up)
    }

    fn lora_forward(
        &self,
        d: &LoraDims,
        x: &Tensor,
        xd: Option<&Tensor>,
        p: &LoraParams<'_>,
        inj: Option<&Injection<'_>>,
    ) -> Result<(Tensor, Tensor)> {
        nn::lora_forward(d, x, xd, p, inj)
    }
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
    ) -> Result<LoraGradsOut> {
        nn::lora_backward(d, dy, x, xd, keep, p, z, want)
    }
    fn gated_inject_forward(&self, z: &Tensor, inj: &Injection<'_>, d: &LoraDims) -> Result<Tensor> {
        nn::gated_inject_forward(z, inj, d)
    }
    fn gated_inject_backward(&self, dz: &Tensor, inj: &Injection<'_>, d: &LoraDims) -> Result<(Tensor, Tensor)> {
        nn::gated_inject_backward(dz, inj, d)
    }
    fn dora_weight_norm(&self, d: &LoraDims, p: &LoraParams<'_>) -> Result<Tensor> {
        nn::dora_weight_norm(d, p)
    }
    fn dora_scale_forward(
        &self,
        pre: Tensor,
        z: Tensor,
        norm: Tensor,
        magnitude: &Tensor,
    ) -> Result<(Tensor, DoraSaved)> {
        nn::dora_scale_forward(pre, z, norm, magnitude)
    }
    fn dora_scale_backward(
        &self,
        dy: &Tensor,
        magnitude: &Tensor,
        saved: &DoraSaved,
        want_dm: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        nn::dora_scale_backward(dy, magnitude, saved, want_dm)
    }

    fn cross_entropy_forward(&self, logits: &Tensor, targets: &[i64]) -> Result<(Tensor, Tensor)> {
        nn::cross_entropy_forward(logits, targets)
    }
    fn cross_entropy_backward(
        &self,
        logits: &Tensor,
        targets: &[i64],
        lse: &Tensor,
        row_scale: &[f32],
    ) -> Result<Tensor> {
        nn::cross_entropy_backward(logits, targets, lse, row_scale)
    }
    fn kl_forward(&self, teacher: &Tensor, student: &Tensor, tau: f32) -> Result<Tensor> {
        nn::kl_forward(teacher, student, tau)
    }
    fn kl_backward_student(&self, teacher: &Tensor, student: &Tensor, tau: f32, row_scale: &[f32]) -> Result<Tensor> {
        nn::kl_backward_student(teacher, student, tau, row_scale)
    }
    fn masked_mean_forward(&self, x: &Tensor, mask: &Tensor, b: usize, t: usize, d: usize) -> Result<Tensor> {
        nn::masked_mean_forward(x, mask, b, t, d)
    }
    fn masked_mean_backward(&self, dout: &Tensor, x_shape: &Shape, mask: &Tensor) -> Result<Tensor> {
        nn::masked_mean_backward(dout, x_shape, mask)
    }

    fn adamw_step(&self, w: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, s: &AdamWStep) -> Result<()> {
        nn::adamw_step(w, grad, m, v, s)
    }
}

//! The fused AdamW update of one parameter tensor, where the parameter is: the CPU twin
//! (`echo_kernels::cpu::optim::adamw_step`, the exact update the trainer always performed) on
//! the host, the `adamw_step` kernel on a GPU. `w`, `m` and `v` are updated in place (a
//! shared buffer is copied first: immutable while shared).

use crate::cuda::{self, nn as gpu};
use crate::{Error, Result, Tensor};
pub use echo_kernels::cpu::optim::AdamWStep;

/// One AdamW step of `w` from `grad` with moments `m`, `v` (all the same shape, f32, one
/// device).
pub fn adamw_step(w: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, s: &AdamWStep) -> Result<()> {
    let op = "adamw_step";
    for t in [grad, &*m, &*v] {
        if t.shape() != w.shape() {
            return Err(Error::ShapeMismatch { op, lhs: w.shape().clone(), rhs: t.shape().clone() });
        }
    }
    if cuda::on_gpu([&*w, grad, &*m, &*v]) {
        return gpu::adamw_step(w, grad, m, v, s);
    }
    let g = grad.f32s(op)?;
    // The three outputs are distinct tensors, so their buffers can be borrowed together
    // once each holds its data alone (f32_mut copies a shared buffer first).
    let (wd, md, vd) = (w.f32_mut(op)?, m.f32_mut(op)?, v.f32_mut(op)?);
    echo_kernels::cpu::optim::adamw_step(wd, g, md, vd, s);
    Ok(())
}

//! The fused AdamW update of one parameter tensor, where the parameter is: the CPU routine
//! (`echo_kernels::cpu::optim::adamw_step`, the exact update the trainer always performed) on
//! the host, the `adamw_step` kernel (checked against it) on a GPU. `w`, `m` and `v` are updated in place (a
//! shared buffer is copied first: immutable while shared).

use crate::backend;
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
    backend::of([&*w, grad, &*m, &*v]).adamw_step(w, grad, m, v, s)
}

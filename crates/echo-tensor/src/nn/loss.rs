//! Cross-entropy, KL divergence with temperature, and masked mean pooling.

use super::{expect_dims, expect_rank};
use crate::backend;
use crate::{Error, Result, Shape, Tensor, IGNORE_INDEX};

fn check_targets(op: &'static str, targets: &[i64], rows: usize, vocab: usize) -> Result<()> {
    if targets.len() != rows {
        return Err(Error::BadShape { op, msg: format!("{} targets for {rows} rows of logits", targets.len()) });
    }
    if let Some(&t) = targets.iter().find(|&&t| t != IGNORE_INDEX && (t < 0 || t as usize >= vocab)) {
        return Err(Error::IndexOutOfRange { op, index: t, size: vocab });
    }
    Ok(())
}

fn check_row_scale(op: &'static str, row_scale: &[f32], rows: usize) -> Result<()> {
    if row_scale.len() != rows {
        return Err(Error::BadShape { op, msg: format!("{} row weights for {rows} rows", row_scale.len()) });
    }
    Ok(())
}

/// Per-row cross-entropy of `logits` `[n, V]` against `targets` (`IGNORE_INDEX` rows give 0).
/// Returns `(loss [n], lse [n])`.
pub fn cross_entropy_forward(logits: &Tensor, targets: &[i64]) -> Result<(Tensor, Tensor)> {
    let op = "cross_entropy";
    expect_rank(op, "logits", logits, 2)?;
    let (n, v) = (logits.dims()[0], logits.dims()[1]);
    check_targets(op, targets, n, v)?;
    backend::of([logits]).cross_entropy_forward(logits, targets)
}

/// Gradient of `sum_r row_scale[r] * loss[r]` with respect to the logits.
pub fn cross_entropy_backward(logits: &Tensor, targets: &[i64], lse: &Tensor, row_scale: &[f32]) -> Result<Tensor> {
    let op = "cross_entropy_backward";
    expect_rank(op, "logits", logits, 2)?;
    let (n, v) = (logits.dims()[0], logits.dims()[1]);
    check_targets(op, targets, n, v)?;
    check_row_scale(op, row_scale, n)?;
    expect_dims(op, "lse", lse, &[n])?;
    backend::of([logits, lse]).cross_entropy_backward(logits, targets, lse, row_scale)
}

fn check_kl(op: &'static str, teacher: &Tensor, student: &Tensor, tau: f32) -> Result<()> {
    expect_rank(op, "student logits", student, 2)?;
    if teacher.shape() != student.shape() {
        return Err(Error::ShapeMismatch { op, lhs: teacher.shape().clone(), rhs: student.shape().clone() });
    }
    if !(tau > 0.0 && tau.is_finite()) {
        return Err(Error::BadValue { op, what: "tau", expected: "a finite value > 0".into(), got: tau.to_string() });
    }
    Ok(())
}

/// Per-row `KL(softmax(teacher/tau) || softmax(student/tau))`, `[n]`.
pub fn kl_forward(teacher: &Tensor, student: &Tensor, tau: f32) -> Result<Tensor> {
    let op = "kl_div";
    check_kl(op, teacher, student, tau)?;
    backend::of([teacher, student]).kl_forward(teacher, student, tau)
}

/// Gradient of `sum_r row_scale[r] * kl[r]` with respect to the student logits.
pub fn kl_backward_student(teacher: &Tensor, student: &Tensor, tau: f32, row_scale: &[f32]) -> Result<Tensor> {
    let op = "kl_div_backward";
    check_kl(op, teacher, student, tau)?;
    check_row_scale(op, row_scale, student.dims()[0])?;
    backend::of([teacher, student]).kl_backward_student(teacher, student, tau, row_scale)
}

fn check_pool(op: &'static str, x: &Tensor, mask: &Tensor) -> Result<(usize, usize, usize)> {
    expect_rank(op, "x", x, 3)?;
    let (b, t, d) = (x.dims()[0], x.dims()[1], x.dims()[2]);
    if mask.dims() != [b, t] {
        return Err(Error::ShapeMismatch { op, lhs: x.shape().clone(), rhs: mask.shape().clone() });
    }
    Ok((b, t, d))
}

/// Masked mean over tokens: `x` `[B, T, d]`, `mask` `[B, T]` (weights, usually 0/1) -> `[B, d]`.
pub fn masked_mean_forward(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let op = "masked_mean";
    let (b, t, d) = check_pool(op, x, mask)?;
    backend::of([x, mask]).masked_mean_forward(x, mask, b, t, d)
}

/// Gradient of [`masked_mean_forward`] with respect to `x`.
pub fn masked_mean_backward(dout: &Tensor, x_shape: &Shape, mask: &Tensor) -> Result<Tensor> {
    let op = "masked_mean_backward";
    let dims = x_shape.dims();
    if dims.len() != 3 || mask.dims() != [dims[0], dims[1]] || dout.dims() != [dims[0], dims[2]] {
        return Err(Error::ShapeMismatch { op, lhs: x_shape.clone(), rhs: dout.shape().clone() });
    }
    backend::of([dout, mask]).masked_mean_backward(dout, x_shape, mask)
}

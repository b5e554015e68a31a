//! Cross-entropy, KL divergence with temperature, and masked mean pooling.

use super::{expect_dims, expect_rank};
use crate::cuda::{self, nn as gpu};
use crate::{Error, Result, Shape, Tensor, IGNORE_INDEX};
use echo_kernels::cpu::{loss, pool};

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
    if cuda::on_gpu([logits]) {
        return gpu::cross_entropy_forward(logits, targets);
    }
    let (mut l, mut z) = (vec![0.0f32; n], vec![0.0f32; n]);
    loss::cross_entropy_forward(logits.f32s(op)?, targets, v, &mut l, &mut z);
    Ok((logits.with_data(l, Shape::new(vec![n])), logits.with_data(z, Shape::new(vec![n]))))
}

/// Gradient of `sum_r row_scale[r] * loss[r]` with respect to the logits.
pub fn cross_entropy_backward(logits: &Tensor, targets: &[i64], lse: &Tensor, row_scale: &[f32]) -> Result<Tensor> {
    let op = "cross_entropy_backward";
    expect_rank(op, "logits", logits, 2)?;
    let (n, v) = (logits.dims()[0], logits.dims()[1]);
    check_targets(op, targets, n, v)?;
    check_row_scale(op, row_scale, n)?;
    expect_dims(op, "lse", lse, &[n])?;
    if cuda::on_gpu([logits, lse]) {
        return gpu::cross_entropy_backward(logits, targets, lse, row_scale);
    }
    let mut d = vec![0.0f32; n * v];
    loss::cross_entropy_backward(logits.f32s(op)?, targets, lse.f32s(op)?, row_scale, v, &mut d);
    Ok(logits.with_data(d, logits.shape().clone()))
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
    if cuda::on_gpu([teacher, student]) {
        return gpu::kl_forward(teacher, student, tau);
    }
    let (n, v) = (student.dims()[0], student.dims()[1]);
    let mut k = vec![0.0f32; n];
    loss::kl_forward(teacher.f32s(op)?, student.f32s(op)?, v, tau, &mut k);
    Ok(student.with_data(k, Shape::new(vec![n])))
}

/// Gradient of `sum_r row_scale[r] * kl[r]` with respect to the student logits.
pub fn kl_backward_student(teacher: &Tensor, student: &Tensor, tau: f32, row_scale: &[f32]) -> Result<Tensor> {
    let op = "kl_div_backward";
    check_kl(op, teacher, student, tau)?;
    let (n, v) = (student.dims()[0], student.dims()[1]);
    check_row_scale(op, row_scale, n)?;
    if cuda::on_gpu([teacher, student]) {
        return gpu::kl_backward_student(teacher, student, tau, row_scale);
    }
    let mut d = vec![0.0f32; n * v];
    loss::kl_backward_student(teacher.f32s(op)?, student.f32s(op)?, row_scale, v, tau, &mut d);
    Ok(student.with_data(d, student.shape().clone()))
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
    if cuda::on_gpu([x, mask]) {
        return gpu::masked_mean_forward(x, mask, b, t, d);
    }
    let mut out = vec![0.0f32; b * d];
    pool::masked_mean_forward(x.f32s(op)?, mask.f32s(op)?, t, d, &mut out);
    Ok(x.with_data(out, Shape::new(vec![b, d])))
}

/// Gradient of [`masked_mean_forward`] with respect to `x`.
pub fn masked_mean_backward(dout: &Tensor, x_shape: &Shape, mask: &Tensor) -> Result<Tensor> {
    let op = "masked_mean_backward";
    let dims = x_shape.dims();
    if dims.len() != 3 || mask.dims() != [dims[0], dims[1]] || dout.dims() != [dims[0], dims[2]] {
        return Err(Error::ShapeMismatch { op, lhs: x_shape.clone(), rhs: dout.shape().clone() });
    }
    if cuda::on_gpu([dout, mask]) {
        return gpu::masked_mean_backward(dout, x_shape, mask);
    }
    let mut dx = vec![0.0f32; x_shape.numel()];
    pool::masked_mean_backward(dout.f32s(op)?, mask.f32s(op)?, dims[1], dims[2], &mut dx);
    Ok(dout.with_data(dx, x_shape.clone()))
}

//! Losses and pooling.

use crate::{Error, Result, Var};
use echo_tensor::{nn, Tensor};

/// `sum_r w[r] rows[r] / denom` as a scalar tensor where `rows` is: the products in f32, the
/// sum and the division before the one rounding (in f64 on the CPU). The value is read once
/// per step, by the caller, so the forward does not wait for a GPU.
fn mean_of_rows(rows: &Tensor, weight: Option<&[f32]>, denom: f32) -> Result<Tensor> {
    let weighted = match weight {
        None => rows.clone(),
        Some(w) => rows.mul(&Tensor::from_slice(w, [w.len()])?.to_device(rows.device())?)?,
    };
    Ok(weighted.sum_all_div(denom)?)
}

/// `sum_r CE(logits[r], targets[r]) / denom` over rows whose target is not `IGNORE_INDEX`.
/// Callers pass only the rows that carry a label (the LM head never runs on the others) and
/// choose `denom` (the number of counted tokens in the whole batch, as HF's mean).
pub fn cross_entropy(logits: &Var, targets: &[i64], denom: f32) -> Result<Var> {
    if !(denom > 0.0) {
        return Err(Error::Invalid(format!("cross_entropy: denominator must be > 0, got {denom}")));
    }
    let (rows, lse) = nn::cross_entropy_forward(logits.value(), targets)?;
    let value = mean_of_rows(&rows, None, denom)?;
    let lv = logits.value().clone();
    let targets = targets.to_vec();
    logits.tape().record(value, &[logits], move |g, _| {
        let s = g.item()? / denom;
        let row_scale = vec![s; targets.len()];
        Ok(vec![Some(nn::cross_entropy_backward(&lv, &targets, &lse, &row_scale)?)])
    })
}

/// `sum_r w[r] KL(softmax(teacher[r]/tau) || softmax(student[r]/tau)) / denom`. The teacher
/// is a constant (the echo route's prediction, detached); gradients reach the student only.
pub fn kl_div(teacher: &Tensor, student: &Var, tau: f32, row_weight: &[f32], denom: f32) -> Result<Var> {
    if !(denom > 0.0) {
        return Err(Error::Invalid(format!("kl_div: denominator must be > 0, got {denom}")));
    }
    if row_weight.len() != student.dims().first().copied().unwrap_or(0) {
        return Err(Error::Invalid(format!(
            "kl_div: {} row weights for student logits {}",
            row_weight.len(),
            student.shape()
        )));
    }
    let rows = nn::kl_forward(teacher, student.value(), tau)?;
    let value = mean_of_rows(&rows, Some(row_weight), denom)?;
    let (tv, sv, w) = (teacher.clone(), student.value().clone(), row_weight.to_vec());
    student.tape().record(value, &[student], move |g, _| {
        let s = g.item()? / denom;
        let row_scale: Vec<f32> = w.iter().map(|w| w * s).collect();
        Ok(vec![Some(nn::kl_backward_student(&tv, &sv, tau, &row_scale)?)])
    })
}

/// Masked mean over tokens, `x` `[B, T, d]`, `mask` `[B, T]` -> `[B, d]`.
pub fn masked_mean_pool(x: &Var, mask: &Tensor) -> Result<Var> {
    let y = nn::masked_mean_forward(x.value(), mask)?;
    let (shape, mask) = (x.shape().clone(), mask.clone());
    x.tape().record(y, &[x], move |g, _| Ok(vec![Some(nn::masked_mean_backward(g, &shape, &mask)?)]))
}

//! Row-wise losses over logits: cross-entropy with an ignore index, and the KL divergence
//! with temperature used by the echo path's distillation. The sums over the vocabulary are
//! accumulated in f64.

use rayon::prelude::*;

/// Label value that marks a position without a target (HF / PyTorch convention).
pub const IGNORE_INDEX: i64 = -100;

/// `log sum exp(row * inv_tau)`, max-shifted, summed in f64.
pub fn log_sum_exp(row: &[f32], inv_tau: f32) -> f32 {
    let m = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * inv_tau));
    let s: f64 = row.iter().map(|&x| ((x * inv_tau - m) as f64).exp()).sum();
    m + s.ln() as f32
}

/// `loss[r] = lse(logits[r]) - logits[r, target[r]]`, 0 for ignored rows. Also writes `lse`.
pub fn cross_entropy_forward(logits: &[f32], targets: &[i64], vocab: usize, loss: &mut [f32], lse: &mut [f32]) {
    loss.par_iter_mut().zip(lse.par_iter_mut()).zip(logits.par_chunks(vocab)).zip(targets.par_iter()).for_each(
        |(((l, z), row), &t)| {
            if t == IGNORE_INDEX {
                *l = 0.0;
                *z = 0.0;
            } else {
                *z = log_sum_exp(row, 1.0);
                *l = *z - row[t as usize];
            }
        },
    );
}

/// `dlogits[r] = scale[r] * (softmax(logits[r]) - onehot(target[r]))`, 0 for ignored rows.
pub fn cross_entropy_backward(
    logits: &[f32],
    targets: &[i64],
    lse: &[f32],
    row_scale: &[f32],
    vocab: usize,
    dlogits: &mut [f32],
) {
    dlogits
        .par_chunks_mut(vocab)
        .zip(logits.par_chunks(vocab))
        .zip(targets.par_iter().zip(lse.par_iter()))
        .zip(row_scale.par_iter())
        .for_each(|(((d, row), (&t, &z)), &s)| {
            if t == IGNORE_INDEX {
                d.fill(0.0);
                return;
            }
            for (d, &x) in d.iter_mut().zip(row) {
                *d = s * (x - z).exp();
            }
            d[t as usize] -= s;
        });
}

/// `kl[r] = sum_v pT (log pT - log pS)` with `pT = softmax(teacher/tau)`,
/// `pS = softmax(student/tau)`.
pub fn kl_forward(teacher: &[f32], student: &[f32], vocab: usize, tau: f32, kl: &mut [f32]) {
    let inv = 1.0 / tau;
    kl.par_iter_mut().zip(teacher.par_chunks(vocab).zip(student.par_chunks(vocab))).for_each(|(k, (t, s))| {
        let (zt, zs) = (log_sum_exp(t, inv), log_sum_exp(s, inv));
        let mut acc = 0.0f64;
        for (&a, &b) in t.iter().zip(s) {
            let log_pt = a * inv - zt;
            let log_ps = b * inv - zs;
            acc += (log_pt.exp() * (log_pt - log_ps)) as f64;
        }
        *k = acc as f32;
    });
}

/// Gradient of `sum_r scale[r] * kl[r]` with respect to the student logits:
/// `scale[r] * (pS - pT) / tau`. The teacher is treated as a constant.
pub fn kl_backward_student(
    teacher: &[f32],
    student: &[f32],
    row_scale: &[f32],
    vocab: usize,
    tau: f32,
    dstudent: &mut [f32],
) {
    let inv = 1.0 / tau;
    dstudent
        .par_chunks_mut(vocab)
        .zip(teacher.par_chunks(vocab).zip(student.par_chunks(vocab)))
        .zip(row_scale.par_iter())
        .for_each(|((d, (t, s)), &sc)| {
            if sc == 0.0 {
                d.fill(0.0);
                return;
            }
            let (zt, zs) = (log_sum_exp(t, inv), log_sum_exp(s, inv));
            for ((d, &a), &b) in d.iter_mut().zip(t).zip(s) {
                *d = sc * inv * ((b * inv - zs).exp() - (a * inv - zt).exp());
            }
        });
}

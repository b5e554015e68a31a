//! AdamW, one parameter tensor at a time: the CPU twin of `kernels/adamw.cu`, and exactly the
//! update `echo_trainer::optim::AdamW::step` performs per element (decoupled weight decay as
//! `torch.optim.AdamW`; bias corrections and the step itself formed in f64).

/// Hyper-parameters of one step. `bc1 = 1 - beta1^t`, `bc2 = 1 - beta2^t` for step `t` (1-based).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Gradients are multiplied by this first (global-norm clipping).
    pub grad_scale: f32,
    pub bc1: f64,
    pub bc2: f64,
}

impl AdamWStep {
    /// Bias corrections for optimizer step `t` (1-based), as the trainer computes them.
    pub fn bias_corrections(beta1: f32, beta2: f32, t: u64) -> (f64, f64) {
        let t = t as i32;
        (1.0 - (beta1 as f64).powi(t), 1.0 - (beta2 as f64).powi(t))
    }
}

/// Updates `w`, `m`, `v` in place from `grad`.
pub fn adamw_step(w: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamWStep) {
    assert!(grad.len() == w.len() && m.len() == w.len() && v.len() == w.len(), "adamw_step: lengths differ");
    for i in 0..w.len() {
        let gi = grad[i] * s.grad_scale;
        m[i] = s.beta1 * m[i] + (1.0 - s.beta1) * gi;
        v[i] = s.beta2 * v[i] + (1.0 - s.beta2) * gi * gi;
        let m_hat = m[i] as f64 / s.bc1;
        let v_hat = v[i] as f64 / s.bc2;
        w[i] -= s.lr * s.weight_decay * w[i];
        w[i] -= (s.lr as f64 * m_hat / (v_hat.sqrt() + s.eps as f64)) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_by_lr_against_the_gradient_sign() {
        let (bc1, bc2) = AdamWStep::bias_corrections(0.9, 0.999, 1);
        let s =
            AdamWStep { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, grad_scale: 1.0, bc1, bc2 };
        let (mut w, mut m, mut v) = (vec![1.0f32, -2.0], vec![0.0f32; 2], vec![0.0f32; 2]);
        adamw_step(&mut w, &[3.0, -0.5], &mut m, &mut v, &s);
        // m_hat = g, v_hat = g^2: the step is lr * sign(g).
        assert!((w[0] - 0.9).abs() < 1e-6 && (w[1] + 1.9).abs() < 1e-6, "{w:?}");
    }
}

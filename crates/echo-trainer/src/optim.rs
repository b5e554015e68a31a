//! AdamW with decoupled weight decay (as `torch.optim.AdamW`), learning-rate schedules with
//! warm-up (as transformers' `get_*_schedule_with_warmup`), and global-norm clipping.

use echo_autograd::{ParamId, ParamStore};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

/// Learning rate at optimizer step `step` (0-based) of `total`.
pub fn lr_at(schedule: Schedule, base: f32, step: usize, warmup: usize, total: usize) -> f32 {
    if step < warmup {
        return base * step as f32 / warmup.max(1) as f32;
    }
    let progress = (step - warmup) as f32 / (total.saturating_sub(warmup)).max(1) as f32;
    match schedule {
        Schedule::Constant => base,
        Schedule::Linear => base * (1.0 - progress).max(0.0),
        Schedule::Cosine => base * 0.5 * (1.0 + (std::f32::consts::PI * progress.min(1.0)).cos()),
    }
}

/// L2 norm over every gradient of `ids` (f64 accumulation); params without a gradient count 0.
pub fn global_grad_norm(store: &ParamStore, ids: &[ParamId]) -> f32 {
    let s: f64 = ids
        .iter()
        .filter_map(|&id| store.grad(id))
        .map(|g| g.as_f32().iter().map(|&x| x as f64 * x as f64).sum::<f64>())
        .sum();
    s.sqrt() as f32
}

#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// Per-parameter moments, keyed by parameter name so a checkpoint can restore them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdamWState {
    pub step: u64,
    pub m: BTreeMap<String, Vec<f32>>,
    pub v: BTreeMap<String, Vec<f32>>,
}

pub struct AdamW {
    pub config: AdamWConfig,
    pub state: AdamWState,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW { config, state: AdamWState::default() }
    }

    /// One update of every parameter in `ids` that has a gradient, with gradients multiplied
    /// by `grad_scale` first (clipping). Parameters without a gradient are left untouched,
    /// their moments too (as PyTorch skips params whose `.grad` is None).
    pub fn step(&mut self, store: &mut ParamStore, ids: &[ParamId], lr: f32, grad_scale: f32) {
        self.state.step += 1;
        let c = &self.config;
        let t = self.state.step as i32;
        let (bc1, bc2) = (1.0 - (c.beta1 as f64).powi(t), 1.0 - (c.beta2 as f64).powi(t));
        for &id in ids {
            let p = store.get_mut(id);
            let Some(grad) = p.grad.as_ref() else { continue };
            let g = grad.as_f32().to_vec();
            let n = g.len();
            let m = self.state.m.entry(p.name.clone()).or_insert_with(|| vec![0.0; n]);
            let v = self.state.v.entry(p.name.clone()).or_insert_with(|| vec![0.0; n]);
            let w = p.value.f32_mut("adamw").expect("parameters are f32");
            for i in 0..n {
                let gi = g[i] * grad_scale;
                m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * gi;
                v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * gi * gi;
                let m_hat = m[i] as f64 / bc1;
                let v_hat = v[i] as f64 / bc2;
                w[i] -= lr * c.weight_decay * w[i];
                w[i] -= (lr as f64 * m_hat / (v_hat.sqrt() + c.eps as f64)) as f32;
            }
        }
    }
}

//! AdamW with decoupled weight decay (as `torch.optim.AdamW`), learning-rate schedules with
//! warm-up (as transformers' `get_*_schedule_with_warmup`), and global-norm clipping.

use crate::error::{Context, Result};
use echo_autograd::{ParamId, ParamStore};
use echo_tensor::nn::{self, AdamWStep};
use echo_tensor::Tensor;
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

/// L2 norm over every gradient of `ids` (f64 accumulation on the CPU); params without a
/// gradient count 0. On a GPU the gradients are reduced there and one scalar is read back:
/// the single wait for the GPU of an optimizer step.
pub fn global_grad_norm(store: &ParamStore, ids: &[ParamId]) -> Result<f32> {
    let grads: Vec<&Tensor> = ids.iter().filter_map(|&id| store.grad(id)).collect();
    let s = Tensor::sum_squares(&grads).context("gradient norm")?;
    Ok(s.sqrt() as f32)
}

/// The factor global-norm clipping multiplies gradients by (1 when under `max_norm` or
/// clipping is off), as `torch.nn.utils.clip_grad_norm_`.
pub fn clip_factor(grad_norm: f32, max_norm: f32) -> f32 {
    if max_norm > 0.0 && grad_norm > max_norm {
        max_norm / (grad_norm + 1e-6)
    } else {
        1.0
    }
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

/// Per-parameter moments (f32, on the parameter's device), keyed by parameter name so a
/// checkpoint can restore them.
#[derive(Clone, Debug, Default)]
pub struct AdamWState {
    pub step: u64,
    pub m: BTreeMap<String, Tensor>,
    pub v: BTreeMap<String, Tensor>,
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
    /// their moments too (as PyTorch skips params whose `.grad` is None). Each tensor is one
    /// fused update where the parameter lives (`echo_tensor::nn::adamw_step`: the CPU twin on
    /// the host, the `adamw_step` kernel on a GPU); moments start at zero on the parameter's
    /// device, and moments restored from a checkpoint (host) move there on first use.
    pub fn step(&mut self, store: &mut ParamStore, ids: &[ParamId], lr: f32, grad_scale: f32) -> Result<()> {
        self.state.step += 1;
        let c = &self.config;
        let (bc1, bc2) = AdamWStep::bias_corrections(c.beta1, c.beta2, self.state.step);
        let hyper = AdamWStep {
            lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            grad_scale,
            bc1,
            bc2,
        };
        for &id in ids {
            let p = store.get_mut(id);
            let Some(grad) = p.grad.as_ref() else { continue };
            let device = p.value.device();
            let moment = |map: &mut BTreeMap<String, Tensor>| -> echo_tensor::Result<Tensor> {
                match map.remove(&p.name) {
                    // Restored moments are flat (`[numel]`, the checkpoint layout).
                    Some(t) => t.reshape(p.value.shape().clone())?.to_device(device),
                    None => Tensor::full_on(0.0, p.value.shape().clone(), device),
                }
            };
            let what = || format!("adamw on `{}`", p.name);
            let (mut m, mut v) =
                (moment(&mut self.state.m).context(what())?, moment(&mut self.state.v).context(what())?);
            nn::adamw_step(&mut p.value, grad, &mut m, &mut v, &hyper).context(what())?;
            self.state.m.insert(p.name.clone(), m);
            self.state.v.insert(p.name.clone(), v);
        }
        Ok(())
    }
}

//! The echo path (docs/method.md sections 2 and 2b): deep boundary hidden states, pooled over
//! prompt tokens only, mixed by learnable layer weights, RMS-normalised, sent through a shared
//! SiLU trunk into a per-module projection `p` and gate `g`, which the adapters of the target
//! modules add into their low-rank bottleneck or onto their output (`injection`, section 2a).
//! Training only: nothing here is exported.

use crate::error::{Result, TrainError};
pub use echo_adapters::InjectionSite;
use echo_adapters::{Adapters, Injections};
use echo_autograd::{ops, ParamId, ParamStore, Tape, Var};
use echo_model::Proj;
use echo_tensor::{Device, Rng, Tensor};
use std::collections::HashMap;

/// How the source layers' states become one vector per sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Mean over the sample's prompt tokens (answer-only masking), softmax-mixed over layers.
    MaskedMean,
    /// The last prompt token's state, softmax-mixed over layers.
    LastPromptToken,
    /// Masked mean of the first listed source layer only (no layer mixing).
    SingleLayer,
}

/// The echo path's settings, read as the run config's `[echo]` section. Keys map one-to-one
/// to the parity fixture's `echo-config.json` (see ARCHITECTURE.md), plus `enabled`, `p_route`
/// (the fixture gives `route` per sample instead), `gate` and `init_std`. Layer indices may be
/// negative (counted from the end).
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EchoConfig {
    /// `false`: the run trains plain LoRA/DoRA and no echo path is built (the run config's
    /// switch; [`EchoPath`] itself never reads it).
    pub enabled: bool,
    pub source_layers: Vec<i64>,
    /// Empty in a run config: the first quarter of the blocks (`RunConfig::echo_config`).
    pub target_layers: Vec<i64>,
    pub target_modules: Vec<Proj>,
    pub d_echo: usize,
    pub tau: f32,
    pub lambda_kd: f32,
    pub detach_echo: bool,
    pub aggregation: Aggregation,
    /// Probability that a sample takes the echo route.
    pub p_route: f32,
    /// `false` fixes the gate at 1 (ablation "gate off").
    pub gate: bool,
    /// Std of the normal init of the projection and gate weights ("small random").
    pub init_std: f32,
    /// The echo RMSNorm's eps; `None` uses the model's `rms_norm_eps`.
    pub rms_norm_eps: Option<f32>,
    /// Where `g ⊙ p` goes: the bottleneck (`[r]`, the default; method.md section 2) or the
    /// module's output (`[out]`, section 2a). A checkpoint written before the key existed
    /// reads as `bottleneck`, which is what it trained with.
    pub injection: InjectionSite,
}

impl Default for EchoConfig {
    fn default() -> Self {
        EchoConfig {
            enabled: true,
            source_layers: vec![-4, -3, -2, -1],
            target_layers: vec![],
            target_modules: vec![Proj::Q, Proj::K, Proj::V, Proj::Up, Proj::Down],
            d_echo: 64,
            tau: 1.0,
            lambda_kd: 1.0,
            detach_echo: true,
            aggregation: Aggregation::MaskedMean,
            p_route: 0.5,
            gate: true,
            init_std: 0.02,
            rms_norm_eps: None,
            injection: InjectionSite::Bottleneck,
        }
    }
}

/// Resolves possibly negative layer indices against `n` layers; `what` names the key in errors.
pub fn resolve_layers(what: &str, layers: &[i64], n: usize) -> Result<Vec<usize>> {
    layers
        .iter()
        .map(|&l| {
            let r = if l < 0 { n as i64 + l } else { l };
            if r < 0 || r >= n as i64 {
                Err(TrainError::config(format!(
                    "{what}: layer {l} does not exist in a model with {n} layers (valid: -{n}..{})",
                    n - 1
                )))
            } else {
                Ok(r as usize)
            }
        })
        .collect()
}

/// The echo bottleneck's largest width: the trunk is `[d_echo, hidden]` and every target module
/// holds two `[r, d_echo]` (output site: `[out, d_echo]`) matrices, so `d_echo` sizes
/// allocations. 65536 is the widest model width `echo_model::bounds` accepts; the echo is a
/// compression of the hidden state (the paper uses 64..256), so anything wider is a typo, and
/// 1e9 would be an allocation abort.
pub const MAX_D_ECHO: usize = echo_model::bounds::MAX_HIDDEN;

/// The echo path's layer layout, resolved (`sources`, `targets`) from what the config wrote
/// (`source_cfg`, `target_cfg`, for the messages): no source or target listed twice (a negative
/// and a positive index may name the same block), and every target shallower than every
/// source, since the echo carries deep states back to shallow adapters (a target at or below a
/// source would feed a block's own output, or a deeper one's, into itself).
pub fn check_layout(source_cfg: &[i64], sources: &[usize], target_cfg: &[i64], targets: &[usize]) -> Result<()> {
    for (key, cfg, resolved) in
        [("echo.source_layers", source_cfg, sources), ("echo.target_layers", target_cfg, targets)]
    {
        for (i, l) in resolved.iter().enumerate() {
            if let Some(j) = resolved[..i].iter().position(|x| x == l) {
                return Err(TrainError::config(format!(
                    "{key}: layer {l} is listed twice (as {} and {}); each block may appear once",
                    cfg[j], cfg[i]
                )));
            }
        }
    }
    if let (Some(&shallowest), Some((i, &deepest))) =
        (sources.iter().min(), targets.iter().enumerate().max_by_key(|&(_, t)| *t))
    {
        if deepest >= shallowest {
            return Err(TrainError::config(format!(
                "echo.target_layers: target layer {deepest} (written {}) is not shallower than source layer \
                 {shallowest} (echo.source_layers = {source_cfg:?}); every target must come before every \
                 source, since the echo carries deep states back to shallow adapters",
                target_cfg[i]
            )));
        }
    }
    Ok(())
}

/// One echo target module's parameters.
#[derive(Clone, Debug)]
pub struct EchoModule {
    pub layer: usize,
    pub proj: Proj,
    pub proj_w: ParamId,
    pub gate_w: ParamId,
    pub gate_b: ParamId,
}

/// The echo path's parameters and resolved layout.
pub struct EchoPath {
    pub config: EchoConfig,
    pub sources: Vec<usize>,
    pub layer_logits: ParamId,
    pub trunk: ParamId,
    pub modules: Vec<EchoModule>,
    pub eps: f32,
}

/// Per-sample intermediate values of the echo path, for parity checks and debugging.
pub struct EchoValues {
    pub pooled: Vec<Var>,
    pub layer_weights: Var,
    pub echo: Var,
    pub trunk_u: Var,
}

/// One-hot mask of each sample's last prompt token (all zero for a sample without one).
fn last_token_mask(mask: &[f32], seq: usize) -> Vec<f32> {
    let mut out = vec![0.0; mask.len()];
    for (row, m) in mask.chunks(seq).enumerate() {
        if let Some(t) = m.iter().rposition(|&x| x > 0.0) {
            out[row * seq + t] = 1.0;
        }
    }
    out
}

pub fn echo_param_names(layer: usize, proj: Proj) -> [String; 3] {
    let m = proj.module_path(layer);
    [format!("echo.proj.{m}.weight"), format!("echo.gate.{m}.weight"), format!("echo.gate.{m}.bias")]
}

impl EchoPath {
    /// Registers the echo parameters in `store` (trainable) under the spec's names, taking
    /// each tensor from `make(name, shape)`.
    pub fn register(
        config: EchoConfig,
        adapters: &Adapters,
        n_layers: usize,
        hidden: usize,
        model_eps: f32,
        store: &mut ParamStore,
        mut make: impl FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<Self> {
        let sources = resolve_layers("echo.source_layers", &config.source_layers, n_layers)?;
        if sources.is_empty() {
            return Err(TrainError::config("echo.source_layers: at least one source layer is needed"));
        }
        let targets = resolve_layers("echo.target_layers", &config.target_layers, n_layers)?;
        check_layout(&config.source_layers, &sources, &config.target_layers, &targets)?;
        if config.d_echo == 0 || config.d_echo > MAX_D_ECHO {
            return Err(TrainError::config(format!("echo.d_echo must be in 1..={MAX_D_ECHO}, got {}", config.d_echo)));
        }
        let mut add = |store: &mut ParamStore, name: &str, shape: &[usize]| -> Result<ParamId> {
            let t = make(name, shape)?;
            if t.dims() != shape {
                return Err(TrainError::Other(format!(
                    "echo parameter `{name}` has shape {}, expected {shape:?}",
                    t.shape()
                )));
            }
            Ok(store.add(name, t, true)?)
        };
        let layer_logits = add(store, "echo.layer_logits", &[sources.len()])?;
        let trunk = add(store, "echo.trunk.weight", &[config.d_echo, hidden])?;
        let mut modules = Vec::new();
        for &layer in &targets {
            for &proj in &config.target_modules {
                let Some(site) = adapters.site(layer, proj) else {
                    return Err(TrainError::config(format!(
                        "echo target `{}` has no adapter (add `{}` to the adapter's target modules or layers)",
                        proj.module_path(layer),
                        proj.short_name()
                    )));
                };
                let width = match config.injection {
                    InjectionSite::Bottleneck => adapters.config.r,
                    // The module's output features: the rows of its `B` (`[out, r]`).
                    InjectionSite::Output => store.value(site.b).dims()[0],
                };
                let [pw, gw, gb] = echo_param_names(layer, proj);
                modules.push(EchoModule {
                    layer,
                    proj,
                    proj_w: add(store, &pw, &[width, config.d_echo])?,
                    gate_w: add(store, &gw, &[width, config.d_echo])?,
                    gate_b: add(store, &gb, &[width])?,
                });
            }
        }
        let eps = config.rms_norm_eps.unwrap_or(model_eps);
        Ok(EchoPath { config, sources, layer_logits, trunk, modules, eps })
    }

    /// The spec's training init: layer logits 0 (uniform mix), trunk uniform `±1/sqrt(d)`
    /// (PyTorch's Linear default), projection and gate weights `N(0, init_std)`, gate bias -2.
    pub fn init(
        config: EchoConfig,
        adapters: &Adapters,
        n_layers: usize,
        hidden: usize,
        model_eps: f32,
        store: &mut ParamStore,
        rng: &mut Rng,
    ) -> Result<Self> {
        let std = config.init_std;
        Self::register(config, adapters, n_layers, hidden, model_eps, store, |name, shape| {
            Ok(if name == "echo.layer_logits" {
                Tensor::zeros(shape.to_vec())
            } else if name == "echo.trunk.weight" {
                let b = 1.0 / (shape[1] as f32).sqrt();
                Tensor::rand_uniform(shape.to_vec(), -b, b, rng)
            } else if name.ends_with(".bias") {
                Tensor::full(-2.0, shape.to_vec())
            } else {
                Tensor::randn(shape.to_vec(), std, rng)
            })
        })
    }

    /// Names of every echo parameter in the store.
    pub fn param_ids(&self) -> Vec<ParamId> {
        let mut v = vec![self.layer_logits, self.trunk];
        for m in &self.modules {
            v.extend([m.proj_w, m.gate_w, m.gate_b]);
        }
        v
    }

    /// Builds the echo vectors `e` `[B, d]` from the plain forward's boundary states
    /// (`boundary[i]` belongs to `sources[i]`), pooling over `prompt_mask` `[B, T]`.
    pub fn aggregate(
        &self,
        tape: &Tape,
        store: &ParamStore,
        boundary: &[Var],
        prompt_mask: &[f32],
        batch: usize,
        seq: usize,
    ) -> echo_autograd::Result<EchoValues> {
        let mask = match self.config.aggregation {
            Aggregation::LastPromptToken => last_token_mask(prompt_mask, seq),
            _ => prompt_mask.to_vec(),
        };
        // Built on the host from the batch, used where the boundary states are.
        let device = boundary.first().map_or(Device::Cpu, |h| h.value().device());
        let mask = Tensor::new(mask, [batch, seq])?.to_device(device)?;
        let n_src = if self.config.aggregation == Aggregation::SingleLayer { 1 } else { self.sources.len() };
        let mut pooled = Vec::with_capacity(n_src);
        for h in &boundary[..n_src] {
            let h = if self.config.detach_echo { h.detach() } else { h.clone() };
            pooled.push(ops::masked_mean_pool(&h, &mask)?);
        }
        let d = pooled[0].dims()[1];
        let w = tape.param(store, self.layer_logits);
        let layer_weights = ops::softmax_last(&ops::reshape(&w, [1, self.sources.len()])?)?;
        let y = if n_src == 1 {
            pooled[0].clone()
        } else {
            let stacked: Vec<Var> = pooled.iter().map(|p| ops::reshape(p, [1, batch, d])).collect::<Result<_, _>>()?;
            let stacked = ops::concat(&stacked.iter().collect::<Vec<_>>(), 0)?;
            let weights = ops::reshape(&layer_weights, [n_src, 1, 1])?;
            ops::sum_dim(&ops::mul(&stacked, &weights)?, 0, false)?
        };
        let echo = ops::rms_normalize(&y, self.eps)?;
        let trunk_u = ops::silu(&ops::linear(&echo, &tape.param(store, self.trunk))?)?;
        Ok(EchoValues { pooled, layer_weights: ops::reshape(&layer_weights, [self.sources.len()])?, echo, trunk_u })
    }

    /// Per target module, `(g, p)` for the samples in `rows` of the trunk output, with the
    /// configured site.
    pub fn injections(
        &self,
        tape: &Tape,
        store: &ParamStore,
        trunk_u: &Var,
        rows: &[usize],
    ) -> echo_autograd::Result<Injections> {
        let u = if rows.len() == trunk_u.dims()[0] { trunk_u.clone() } else { ops::index_select(trunk_u, rows)? };
        let mut out = HashMap::new();
        for m in &self.modules {
            let p = ops::linear(&u, &tape.param(store, m.proj_w))?;
            let g = if self.config.gate {
                let logits = ops::add(&ops::linear(&u, &tape.param(store, m.gate_w))?, &tape.param(store, m.gate_b))?;
                ops::sigmoid(&logits)?
            } else {
                tape.constant(Tensor::full_on(1.0, p.shape().clone(), p.value().device())?)
            };
            out.insert((m.layer, m.proj), (g, p));
        }
        Ok(Injections { site: self.config.injection, modules: out })
    }
}

//! Adapter sites, their parameters, and the projector that applies them.

use crate::PeftError;
use echo_autograd::ops::{self, Dropout, Inject};
use echo_autograd::{ParamId, ParamStore, Var};
use echo_model::{Llama, Proj, Projector};
use echo_tensor::{Rng, Tensor};
use std::collections::{BTreeMap, HashMap};

/// The adapter method, as `[adapter] method` spells it (`lora`, `dora`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Lora,
    Dora,
}

impl Method {
    /// The config's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Method::Lora => "lora",
            Method::Dora => "dora",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What to adapt and how. `layers: None` means every layer.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterConfig {
    pub method: Method,
    pub r: usize,
    pub alpha: f32,
    pub use_rslora: bool,
    pub dropout: f32,
    pub targets: Vec<Proj>,
    pub layers: Option<Vec<usize>>,
}

impl AdapterConfig {
    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scale(&self) -> f32 {
        if self.use_rslora {
            self.alpha / (self.r as f32).sqrt()
        } else {
            self.alpha / self.r as f32
        }
    }

    fn covers(&self, layer: usize, proj: Proj) -> bool {
        self.targets.contains(&proj) && self.layers.as_ref().is_none_or(|ls| ls.contains(&layer))
    }
}

/// One adapted projection and its parameters in the store.
#[derive(Clone, Debug)]
pub struct Site {
    pub layer: usize,
    pub proj: Proj,
    pub a: ParamId,
    pub b: ParamId,
    pub magnitude: Option<ParamId>,
}

/// The kinds of tensor an adapter site has, with PEFT's key suffixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    A,
    B,
    Magnitude,
}

impl Kind {
    fn suffix(self) -> &'static str {
        match self {
            Kind::A => "lora_A.weight",
            Kind::B => "lora_B.weight",
            Kind::Magnitude => "lora_magnitude_vector",
        }
    }
}

/// PEFT's key for one adapter tensor, e.g.
/// `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.
pub fn peft_key(layer: usize, proj: Proj, kind: Kind) -> String {
    format!("base_model.model.{}.{}", proj.module_path(layer), kind.suffix())
}

/// Where the echo path adds its gated term `g ⊙ p` in an adapted projection
/// (docs/method.md sections 2 and 2a). `[echo] injection` in a run config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InjectionSite {
    /// Into the low-rank bottleneck before `B`: `z = A drop(x) + g ⊙ p`, `g, p` of size `r`.
    /// It reaches the output only through `B`, which starts at zero.
    #[default]
    Bottleneck,
    /// After the whole adapter (DoRA's `m / n` scaling included): `y + g ⊙ p`, `g, p` of the
    /// module's output size, so the echo has a gradient from the first step.
    Output,
}

impl InjectionSite {
    /// The config value (`bottleneck`, `output`).
    pub fn name(self) -> &'static str {
        match self {
            InjectionSite::Bottleneck => "bottleneck",
            InjectionSite::Output => "output",
        }
    }
}

/// The echo path's injection for one forward: where it goes, and per echo-target module the
/// gate and projection, `[S, r]` each at the bottleneck, `[S, out]` at the output.
pub struct Injections {
    pub site: InjectionSite,
    pub modules: HashMap<(usize, Proj), (Var, Var)>,
}

/// All adapter sites of a model.
pub struct Adapters {
    pub config: AdapterConfig,
    sites: BTreeMap<(usize, Proj), Site>,
}

impl Adapters {
    /// Registers the sites' tensors (obtained from `make`) in `store` as trainable parameters
    /// under their PEFT keys, checking each shape against the model.
    pub(crate) fn register(
        config: AdapterConfig,
        model: &Llama,
        store: &mut ParamStore,
        mut make: impl FnMut(usize, Proj, Kind, &[usize]) -> Result<Tensor, PeftError>,
    ) -> Result<Self, PeftError> {
        if config.r == 0 {
            return Err(PeftError::Invalid("adapter rank r must be > 0".into()));
        }
        let n_layers = model.blocks.len();
        if let Some(&l) = config.layers.iter().flatten().find(|&&l| l >= n_layers) {
            return Err(PeftError::Invalid(format!(
                "adapter layer {l} does not exist: the model has {n_layers} layers"
            )));
        }
        let mut sites = BTreeMap::new();
        for layer in 0..n_layers {
            for proj in Proj::ALL {
                if !config.covers(layer, proj) {
                    continue;
                }
                let w = model.blocks[layer].weight(proj);
                let (d_out, d_in) = (w.dims()[0], w.dims()[1]);
                let mut add = |kind: Kind, shape: &[usize]| -> Result<ParamId, PeftError> {
                    let t = make(layer, proj, kind, shape)?;
                    if t.dims() != shape {
                        return Err(PeftError::Invalid(format!(
                            "`{}` has shape {}, the model needs {shape:?}",
                            peft_key(layer, proj, kind),
                            t.shape()
                        )));
                    }
                    Ok(store.add(peft_key(layer, proj, kind), t, true)?)
                };
                let a = add(Kind::A, &[config.r, d_in])?;
                let b = add(Kind::B, &[d_out, config.r])?;
                let magnitude = match config.method {
                    Method::Dora => Some(add(Kind::Magnitude, &[d_out])?),
                    Method::Lora => None,
                };
                sites.insert((layer, proj), Site { layer, proj, a, b, magnitude });
            }
        }
        Ok(Adapters { config, sites })
    }

    /// Fresh adapters: A kaiming-uniform (PEFT's default, `a = sqrt(5)`, i.e. uniform in
    /// `±1/sqrt(in)`), B zero, DoRA magnitude = the weight's row norms.
    pub fn init(
        config: AdapterConfig,
        model: &Llama,
        store: &mut ParamStore,
        rng: &mut Rng,
    ) -> Result<Self, PeftError> {
        Self::register(config, model, store, |layer, proj, kind, shape| {
            Ok(match kind {
                Kind::A => {
                    let bound = 1.0 / (shape[1] as f32).sqrt();
                    Tensor::rand_uniform(shape.to_vec(), -bound, bound, rng)
                }
                Kind::B => Tensor::zeros(shape.to_vec()),
                Kind::Magnitude => row_norms(model.blocks[layer].weight(proj)),
            })
        })
    }

    pub fn site(&self, layer: usize, proj: Proj) -> Option<&Site> {
        self.sites.get(&(layer, proj))
    }

    pub fn sites(&self) -> impl Iterator<Item = &Site> {
        self.sites.values()
    }

    /// Every adapter parameter with its PEFT key, in a stable order.
    pub fn tensors(&self) -> Vec<(ParamId, String)> {
        let mut v = Vec::new();
        for s in self.sites.values() {
            v.push((s.a, peft_key(s.layer, s.proj, Kind::A)));
            v.push((s.b, peft_key(s.layer, s.proj, Kind::B)));
            if let Some(m) = s.magnitude {
                v.push((m, peft_key(s.layer, s.proj, Kind::Magnitude)));
            }
        }
        v
    }

    /// A projector for one forward pass. Dropout applies only when `dropout_rng` is given
    /// (training); `inject` adds the echo path's gated injection where it has an entry.
    pub fn projector<'a>(
        &'a self,
        store: &'a ParamStore,
        dropout_rng: Option<&'a mut Rng>,
        inject: Option<&'a Injections>,
    ) -> AdapterProjector<'a> {
        AdapterProjector { adapters: self, store, rng: dropout_rng, inject }
    }
}

/// L2 norm of each row of `w` (`[out, in]` -> `[out]`), on the host. A weight on a device
/// (bf16 there) is read back once, so the norms are those of the weight the model computes
/// with; this runs once per site at init.
pub fn row_norms(w: &Tensor) -> Tensor {
    let d_in = w.dims()[1];
    let host;
    let data = match w.f32s("row_norms") {
        Ok(d) => d,
        Err(_) => {
            host = w.to_vec_f32();
            &host[..]
        }
    };
    let n: Vec<f32> =
        data.chunks(d_in).map(|r| r.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt() as f32).collect();
    Tensor::new(n, [w.dims()[0]]).expect("one norm per row")
}

/// Applies the adapters (and injections) inside the model's forward.
pub struct AdapterProjector<'a> {
    adapters: &'a Adapters,
    store: &'a ParamStore,
    rng: Option<&'a mut Rng>,
    inject: Option<&'a Injections>,
}

impl Projector for AdapterProjector<'_> {
    fn project(&mut self, layer: usize, proj: Proj, x: &Var, w: &Tensor) -> echo_autograd::Result<Var> {
        let tape = x.tape().clone();
        let Some(site) = self.adapters.site(layer, proj) else {
            return ops::linear(x, &tape.constant(w.clone()));
        };
        let cfg = &self.adapters.config;
        let (a, b) = (tape.param(self.store, site.a), tape.param(self.store, site.b));
        let dropout = match (&mut self.rng, cfg.dropout > 0.0) {
            (Some(rng), true) => Some(Dropout { p: cfg.dropout, rng }),
            _ => None,
        };
        let inj = self.inject.and_then(|i| i.modules.get(&(layer, proj)).map(|(g, p)| (i.site, g, p)));
        let bottleneck = match inj {
            Some((InjectionSite::Bottleneck, g, p)) => Some(Inject { gate: g, proj: p }),
            _ => None,
        };
        let y = match site.magnitude {
            None => ops::lora_linear(x, w, &a, &b, cfg.scale(), dropout, bottleneck),
            Some(m) => ops::dora_linear(x, w, &a, &b, &tape.param(self.store, m), cfg.scale(), dropout, bottleneck),
        }?;
        match inj {
            Some((InjectionSite::Output, g, p)) => add_per_sample(&y, g, p),
            _ => Ok(y),
        }
    }
}

/// The output site: `y + g ⊙ p` with `g, p` `[S, out]`, one row per sample, added to every
/// token of that sample (`y`'s rows are the samples' tokens in order). The same node as the
/// bottleneck injection (`gated_injection`, which has a device form), only on the module's
/// output instead of inside the adapter, so both sites share one row-to-sample rule.
fn add_per_sample(y: &Var, gate: &Var, proj: &Var) -> echo_autograd::Result<Var> {
    let shape = y.shape().clone();
    let flat = ops::reshape(y, [shape.rows(), shape.last()])?;
    ops::reshape(&ops::gated_injection(&flat, gate, proj)?, shape)
}

//! The whole training step on a device against the same step on the CPU (the GPU check of
//! issue 7): tiny-llama-a with its PEFT LoRA and DoRA adapters, with and without an echo
//! path (at either injection site), on the fixture's batch and on a longer padded one; one
//! `forward_backward` on each side from the same parameters, then clipping and one AdamW
//! step, then a second forward.
//! Compared: the loss, every parameter gradient, the gradient norm, the AdamW update and the
//! loss after the update. The device side runs twice and must give the same bits (every op
//! is deterministic by design), so a race that lands near the right numbers still fails.
//! Run by `cargo xtask gpu-check` and `tests/device_step.rs`.
//!
//! The CPU reference holds the base weights in bf16 too, so it computes what the GPU does
//! (activations rounded to bf16 where they meet a base weight, f32 everywhere else;
//! echo-tensor's `mixed`) and only the summation order differs. Even so, bf16 rounding is
//! discontinuous: an f32 difference of 1e-6 flips the rounding of some activations, and
//! gradients formed by cancellation (the echo's gate biases summed over tokens, A of the
//! last layers) move by several percent of their largest element. The tolerances were set by
//! emulating this on the CPU (the bf16 rounding of the device side fed inputs jittered by
//! 1e-6 to 1e-4 relative, two seeds each): each gradient must point the same way (cosine) with
//! the same norm, which a wrong index, stride, scale or missing term breaks by far more; the
//! largest elementwise error is reported, not judged. Against an all-f32 CPU step the same
//! gradients move by 10-20% of their largest element (and the layer mix's, at the echo
//! fixture's own small init, by 50%).
//!
//! A few gradients are formed by so much cancellation that even those tolerances do not fit
//! them (the layer mix of echo-dora at the output on the padded batch moves by 30% on the CPU
//! alone when the parameters are jittered by 1e-6). So each case also runs the CPU side from
//! [`JITTER_SEEDS`] jittered copies of its parameters, and a gradient whose own noise floor
//! is above the fixed tolerances may differ by [`NOISE_FACTOR`] times that floor, and its AdamW
//! update (about `lr * sign(g)` on a first step) is not judged; the report says so where it
//! does. Where such a gradient is well conditioned (the fixture batch), the same parameter is
//! held to the fixed tolerances.

use crate::echo::{EchoConfig, EchoPath, InjectionSite};
use crate::error::{Context, Result, TrainError};
use crate::optim::{clip_factor, global_grad_norm, AdamW, AdamWConfig};
use crate::step::{forward_backward, StepContext, StepInput};
use echo_adapters::{load_peft, Adapters};
use echo_autograd::{ParamId, ParamStore};
use echo_model::weights::WeightFiles;
use echo_model::{Block, Llama, Proj};
use echo_tensor::{DType, Device, Rng, Tensor, IGNORE_INDEX};
use std::fmt;
use std::path::Path;

/// Loss (before and after the update) and gradient norm: relative error at most this
/// (emulated: below 1e-3).
pub const LOSS_TOL: f32 = 1e-2;
/// Each gradient: cosine with the CPU's at least `1 - COS_TOL` (emulated: 0.9977 at worst).
pub const COS_TOL: f32 = 1e-2;
/// Each gradient: `| |device| / |cpu| - 1 |` at most this (emulated: 0.05 at worst with
/// jitter up to 3e-5, 0.072 with 1e-4).
pub const NORM_TOL: f32 = 0.1;
/// The AdamW update, in units of the learning rate, where the CPU gradient is at least
/// [`SIGNIFICANT`] of its tensor's largest (and the tensor's gradient is not at its noise
/// floor, [`TensorDiff::noise_limited`]): smaller gradients sit in the bf16 noise (up to
/// ~12% of the largest), and the first AdamW step moves each element by about `lr` whatever
/// its gradient's size, so their update may legitimately differ in sign.
pub const UPDATE_TOL: f32 = 1e-2;
pub const SIGNIFICANT: f32 = 0.25;
/// The relative jitter of every parameter with which the CPU measures each gradient's own bf16
/// noise floor, and the seeds of the jittered runs. A gradient formed by cancellation can move
/// by 30% under a 1e-6 jitter (the layer mix of echo-dora at the output on the padded batch;
/// the first GPU run found the device 20% off there, every other gradient within 4%), so no
/// fixed tolerance fits both it and the rest.
pub const JITTER: f32 = 1e-6;
pub const JITTER_SEEDS: [u64; 3] = [1, 2, 3];
/// A gradient may differ from the CPU by this many times its own noise floor when that floor
/// is above the fixed tolerances.
pub const NOISE_FACTOR: f32 = 2.0;
const LR: f32 = 1e-3;
const MAX_GRAD_NORM: f32 = 1.0;

/// How far one tensor is from its CPU reference.
#[derive(Clone, Debug)]
pub struct TensorDiff {
    pub name: String,
    pub max_abs: f32,
    /// `max_abs / max |cpu|` (0 when both are all zero, infinite when only the cpu one is).
    pub rel: f32,
    /// Cosine of the angle between the two (1 when both are all zero).
    pub cos: f32,
    /// `|device| / |cpu|` (Euclidean norms; 1 when both are zero).
    pub norm_ratio: f32,
    /// How far this gradient moves on the CPU alone when every parameter is jittered by
    /// [`JITTER`] relative (worst of [`JITTER_SEEDS`]): `(1 - cos, |norm ratio - 1|)`. Its bf16
    /// noise floor, measured in the same run (see [`TensorDiff::ok`]).
    pub noise: (f32, f32),
}

/// One case: adapter kind, echo on or off, one batch.
#[derive(Clone, Debug)]
pub struct StepCheck {
    pub case: String,
    /// `(cpu, device)`.
    pub loss: (f32, f32),
    pub grads: Vec<TensorDiff>,
    pub grad_norm: (f32, f32),
    /// Worst `|update_device - update_cpu| / lr` over the significant elements, and the
    /// parameter it was in.
    pub update: (f32, String),
    pub loss_after: (f32, f32),
    /// The first difference between the device side's two runs (None: bit-identical).
    pub repeat: Option<String>,
}

fn rel(cpu: f32, dev: f32) -> f32 {
    if cpu == dev {
        return 0.0;
    }
    (dev - cpu).abs() / cpu.abs().max(1e-6)
}

impl TensorDiff {
    /// The `(cosine, norm)` tolerances for this gradient: [`COS_TOL`] and [`NORM_TOL`], or
    /// [`NOISE_FACTOR`] times its measured noise floor where that is larger.
    pub fn tolerances(&self) -> (f32, f32) {
        (COS_TOL.max(NOISE_FACTOR * self.noise.0), NORM_TOL.max(NOISE_FACTOR * self.noise.1))
    }

    /// Same direction and size within [`TensorDiff::tolerances`].
    pub fn ok(&self) -> bool {
        let (cos_tol, norm_tol) = self.tolerances();
        self.cos >= 1.0 - cos_tol && (self.norm_ratio - 1.0).abs() <= norm_tol
    }

    /// How far from failing, as a fraction of the tolerances (above 1: fails).
    fn badness(&self) -> f32 {
        let (cos_tol, norm_tol) = self.tolerances();
        ((1.0 - self.cos) / cos_tol).max((self.norm_ratio - 1.0).abs() / norm_tol)
    }

    /// Whether its noise floor, not the fixed tolerances, set this gradient's tolerance.
    pub fn noise_limited(&self) -> bool {
        self.tolerances() != (COS_TOL, NORM_TOL)
    }
}

impl StepCheck {
    /// The gradient closest to (or furthest past) its tolerances.
    pub fn worst_grad(&self) -> Option<&TensorDiff> {
        self.grads.iter().max_by(|a, b| a.badness().total_cmp(&b.badness()))
    }

    pub fn ok(&self) -> bool {
        let finite = [self.loss.0, self.loss.1, self.loss_after.0, self.loss_after.1].iter().all(|v| v.is_finite());
        finite
            && rel(self.loss.0, self.loss.1) <= LOSS_TOL
            && rel(self.grad_norm.0, self.grad_norm.1) <= LOSS_TOL
            && rel(self.loss_after.0, self.loss_after.1) <= LOSS_TOL
            && self.grads.iter().all(TensorDiff::ok)
            && self.update.0 <= UPDATE_TOL
            && self.repeat.is_none()
    }
}

impl fmt::Display for StepCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let worst = match self.worst_grad() {
            Some(g) => {
                let noise = if g.noise_limited() {
                    format!(
                        " (judged against {NOISE_FACTOR}x its cpu noise floor: 1 - cos {:.1e}, norm ±{:.3} under {JITTER:.0e} jitter)",
                        g.noise.0, g.noise.1
                    )
                } else {
                    String::new()
                };
                format!(
                    "{}: cos {:.5}, norm x{:.4}{noise}, max abs err {:.1e} = {:.1e} of its largest",
                    g.name, g.cos, g.norm_ratio, g.max_abs, g.rel
                )
            }
            None => "-".into(),
        };
        write!(
            f,
            "{} {}: loss {:.5} vs {:.5} (rel {:.1e}); {} grads, worst {worst}; grad norm rel {:.1e}; AdamW update worst {:.1e} lr ({}); loss after the step rel {:.1e}; {}",
            if self.ok() { "ok  " } else { "FAIL" },
            self.case,
            self.loss.0,
            self.loss.1,
            rel(self.loss.0, self.loss.1),
            self.grads.len(),
            rel(self.grad_norm.0, self.grad_norm.1),
            self.update.0,
            self.update.1,
            rel(self.loss_after.0, self.loss_after.1),
            match &self.repeat {
                None => "two device runs bit-identical".to_string(),
                Some(d) => format!("the two device runs DIFFER: {d}"),
            }
        )
    }
}

struct Case {
    name: &'static str,
    adapter: &'static str,
    /// The echo path's injection site; `None`: no echo path.
    echo: Option<InjectionSite>,
    dropout: f32,
}

const CASES: [Case; 6] = [
    Case { name: "lora", adapter: "peft-lora", echo: None, dropout: 0.0 },
    Case { name: "dora", adapter: "peft-dora", echo: None, dropout: 0.0 },
    // Dropout masks are drawn on the host from the same seed on both sides.
    Case { name: "echo-lora, dropout 0.1", adapter: "peft-lora", echo: Some(InjectionSite::Bottleneck), dropout: 0.1 },
    Case { name: "echo-dora", adapter: "peft-dora", echo: Some(InjectionSite::Bottleneck), dropout: 0.0 },
    // The output site: the echo term added after the adapter (after DoRA's scaling).
    Case {
        name: "echo-lora at the output, dropout 0.1",
        adapter: "peft-lora",
        echo: Some(InjectionSite::Output),
        dropout: 0.1,
    },
    Case { name: "echo-dora at the output", adapter: "peft-dora", echo: Some(InjectionSite::Output), dropout: 0.0 },
];

/// The echo path of the checks: the fixture's settings (layers 2, 3 into 0, 1, every module,
/// d_echo 8, tau 2, lambda_kd 0.5) with projection and gate weights of std 0.5, so the
/// injection changes the echo route's logits clearly and every echo gradient is well above
/// the bf16 noise (the fixture's own small init leaves the layer mix's gradient at 1e-5,
/// formed by cancellation and 25% noisy in bf16).
fn echo_config(injection: InjectionSite) -> EchoConfig {
    EchoConfig {
        injection,
        source_layers: vec![2, 3],
        target_layers: vec![0, 1],
        target_modules: Proj::ALL.to_vec(),
        d_echo: 8,
        tau: 2.0,
        lambda_kd: 0.5,
        init_std: 0.5,
        ..Default::default()
    }
}

struct CheckBatch {
    name: String,
    /// Built once, from arrays, as the step takes it.
    data: echo_data::Batch,
    route: Vec<bool>,
}

/// The echo fixture's batch (2 x 12, one sample padded, one routed).
fn fixture_batch(fixture: &Path) -> Result<CheckBatch> {
    let path = fixture.join("echo").join("reference-echo-lora.safetensors");
    let f = WeightFiles::open_files(std::slice::from_ref(&path))?;
    let get = |k: &str| -> Result<_> { Ok(f.i64_tensor(k)?) };
    let (ids, shape) = get("input_ids")?;
    let route = get("route")?.0.iter().map(|&r| r != 0).collect();
    let (mask, labels) = (get("attention_mask")?.0, get("labels")?.0);
    Ok(CheckBatch {
        name: format!("fixture batch {}x{}", shape[0], shape[1]),
        data: echo_data::Batch::from_arrays(&ids, &mask, &labels, shape[0], shape[1], None)?,
        route,
    })
}

/// Samples and positions of [`long_batch`].
const LONG_SAMPLES: usize = 3;
const LONG_SEQ: usize = 70;

/// The samples of [`long_batch`] as `(ids, mask, labels)` arrays, `[LONG_SAMPLES, LONG_SEQ]`.
fn long_arrays(vocab: usize) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let prompt = 30;
    let mut rng = Rng::new(2024);
    let (mut ids, mut mask, mut labels) = (vec![], vec![], vec![]);
    for b in 0..LONG_SAMPLES {
        for t in 0..LONG_SEQ {
            let real = b != 1 || t < 50;
            let id = if real { 16 + rng.below(vocab - 16) as i64 } else { 0 };
            ids.push(id);
            mask.push(real as i64);
            labels.push(if real && t >= prompt { id } else { IGNORE_INDEX });
        }
    }
    (ids, mask, labels)
}

/// Samples 0 and 2 routed, in both layouts of [`long_arrays`].
const LONG_ROUTE: [bool; LONG_SAMPLES] = [true, false, true];

/// 3 x 70 random tokens (longer than the attention kernels' 16-query and 32-key tiles), the
/// middle sample right-padded after 50 tokens, the first 30 positions of each sample a prompt
/// (label -100), samples 0 and 2 routed.
fn long_batch(vocab: usize) -> Result<CheckBatch> {
    let (ids, mask, labels) = long_arrays(vocab);
    Ok(CheckBatch {
        name: format!("padded batch {LONG_SAMPLES}x{LONG_SEQ}"),
        data: echo_data::Batch::from_arrays(&ids, &mask, &labels, LONG_SAMPLES, LONG_SEQ, None)?,
        route: LONG_ROUTE.to_vec(),
    })
}

/// The same three samples packed (70 + 50 tokens in the first row of 128, 70 in the second,
/// the rest padding): block-diagonal attention, positions restarting per example, and the
/// echo's pooling, routing and KD per example, on the device as on the CPU.
fn packed_batch(vocab: usize) -> Result<CheckBatch> {
    let (long_ids, long_mask, long_labels) = long_arrays(vocab);
    let (seq, rows) = (128, vec![vec![70, 50], vec![70]]);
    let (mut ids, mut mask, mut labels) = (vec![], vec![], vec![]);
    let mut sample = 0;
    for lens in &rows {
        let start = ids.len();
        for &n in lens {
            let from = sample * LONG_SEQ;
            ids.extend_from_slice(&long_ids[from..from + n]);
            mask.extend_from_slice(&long_mask[from..from + n]);
            labels.extend_from_slice(&long_labels[from..from + n]);
            sample += 1;
        }
        let pad = seq - (ids.len() - start);
        ids.extend(std::iter::repeat_n(0, pad));
        mask.extend(std::iter::repeat_n(0, pad));
        labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
    }
    Ok(CheckBatch {
        name: format!("packed batch {}x{seq} (3 examples)", rows.len()),
        data: echo_data::Batch::from_arrays(&ids, &mask, &labels, rows.len(), seq, Some(rows))?,
        route: LONG_ROUTE.to_vec(),
    })
}

/// The model with every base weight the device stores as bf16 in bf16 on the host.
fn with_bf16_weights(m: &Llama) -> Result<Llama> {
    let r = |t: &Tensor| -> Result<Tensor> { Ok(t.try_to_dtype(DType::BF16)?) };
    let mut blocks = Vec::with_capacity(m.blocks.len());
    for b in &m.blocks {
        let proj: Vec<Tensor> = b.proj.iter().map(r).collect::<Result<_, _>>()?;
        let proj: [Tensor; 7] = proj.try_into().unwrap_or_else(|_| unreachable!("seven projections"));
        blocks.push(Block { attn_norm: b.attn_norm.clone(), mlp_norm: b.mlp_norm.clone(), proj });
    }
    Ok(Llama {
        config: m.config.clone(),
        embed: r(&m.embed)?,
        blocks,
        norm: m.norm.clone(),
        lm_head: r(&m.lm_head)?,
        rope: m.rope.clone(),
    })
}

/// What one side measured, everything on the host.
struct Side {
    loss: f32,
    grads: Vec<Tensor>,
    grad_norm: f32,
    update: Vec<Tensor>,
    loss_after: f32,
}

fn host(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_device(Device::Cpu)?)
}

struct Setup<'a> {
    adapters: &'a Adapters,
    echo: Option<&'a EchoPath>,
    ids: &'a [ParamId],
    batch: &'a CheckBatch,
}

/// Step, clip, AdamW, step again: on the device of `model`, from a copy of `start` there.
fn run_side(model: &Llama, start: &ParamStore, s: &Setup<'_>) -> Result<Side> {
    let mut store = start.to_device(model.device())?;
    let ctx = StepContext { model, adapters: s.adapters, echo: s.echo };
    let input = StepInput { batch: &s.batch.data, route: &s.batch.route };
    let mut dropout = Rng::new(11);
    let (first, _) = forward_backward(&ctx, &input, &mut store, Some(&mut dropout), 1.0, false)?;
    let mut grads = Vec::with_capacity(s.ids.len());
    for &id in s.ids {
        let g = store.grad(id).ok_or_else(|| TrainError::Other(format!("no gradient for `{}`", store.get(id).name)))?;
        if g.device() != model.device() {
            return Err(TrainError::Device(format!(
                "the gradient of `{}` is on {}, the step ran on {}",
                store.get(id).name,
                g.device(),
                model.device()
            )));
        }
        grads.push(host(g)?);
    }
    let before: Vec<Tensor> = s.ids.iter().map(|&id| host(store.value(id))).collect::<Result<_, _>>()?;
    let grad_norm = global_grad_norm(&store, s.ids)?;
    let mut adam = AdamW::new(AdamWConfig { weight_decay: 0.01, ..Default::default() });
    adam.step(&mut store, s.ids, LR, clip_factor(grad_norm, MAX_GRAD_NORM))?;
    store.zero_grad();
    let mut update = Vec::with_capacity(s.ids.len());
    for (&id, b) in s.ids.iter().zip(&before) {
        let v = store.value(id);
        if v.device() != model.device() || v.dtype() != DType::F32 {
            return Err(TrainError::Device(format!(
                "after AdamW `{}` is {} on {}, expected f32 on {}",
                store.get(id).name,
                v.dtype(),
                v.device(),
                model.device()
            )));
        }
        update.push(host(v)?.sub(b)?);
    }
    let (after, _) = forward_backward(&ctx, &input, &mut store, Some(&mut dropout), 1.0, false)?;
    Ok(Side { loss: first.loss, grads, grad_norm, update, loss_after: after.loss })
}

fn host_f32(t: &Tensor) -> Result<&[f32]> {
    Ok(t.f32s("device_check")?)
}

/// The first difference in any bit between two runs of one side, in words.
fn side_difference(names: &[String], a: &Side, b: &Side) -> Result<Option<String>> {
    let scalars = [("loss", a.loss, b.loss), ("gradient norm", a.grad_norm, b.grad_norm)];
    let more = [("loss after the step", a.loss_after, b.loss_after)];
    for (what, x, y) in scalars.into_iter().chain(more) {
        if x.to_bits() != y.to_bits() {
            return Ok(Some(format!("{what}: {x:e} vs {y:e}")));
        }
    }
    let tensors = [("gradient", &a.grads, &b.grads), ("AdamW update", &a.update, &b.update)];
    for (what, xs, ys) in tensors {
        for ((name, x), y) in names.iter().zip(xs).zip(ys) {
            let (x, y) = (host_f32(x)?, host_f32(y)?);
            if let Some(i) = x.iter().zip(y).position(|(p, q)| p.to_bits() != q.to_bits()) {
                return Ok(Some(format!("{what} of `{name}` at [{i}]: {:e} vs {:e}", x[i], y[i])));
            }
            if x.len() != y.len() {
                return Ok(Some(format!("{what} of `{name}`: {} vs {} elements", x.len(), y.len())));
            }
        }
    }
    Ok(None)
}

/// `max |dev - cpu|` and that over `max |cpu|`; a non-finite value on either side that the
/// other does not share counts as infinitely far.
fn diff(name: &str, cpu: &Tensor, dev: &Tensor) -> Result<TensorDiff> {
    if cpu.shape() != dev.shape() {
        return Err(TrainError::Other(format!(
            "`{name}`: shape {} on the cpu, {} on the device",
            cpu.shape(),
            dev.shape()
        )));
    }
    let (c, d) = (cpu.as_f32(), dev.as_f32());
    let mut max_abs = 0f32;
    for (a, b) in c.iter().zip(d) {
        let e = if a.is_finite() && b.is_finite() {
            (a - b).abs()
        } else if a.to_bits() == b.to_bits() {
            0.0
        } else {
            f32::INFINITY
        };
        max_abs = max_abs.max(e);
    }
    let scale = c.iter().filter(|v| v.is_finite()).fold(0f32, |m, v| m.max(v.abs()));
    let rel = if max_abs == 0.0 {
        0.0
    } else if scale == 0.0 {
        f32::INFINITY
    } else {
        max_abs / scale
    };
    let (mut dot, mut nc, mut nd) = (0f64, 0f64, 0f64);
    for (&a, &b) in c.iter().zip(d) {
        dot += a as f64 * b as f64;
        nc += a as f64 * a as f64;
        nd += b as f64 * b as f64;
    }
    let (cos, norm_ratio) = match (nc > 0.0, nd > 0.0) {
        (false, false) => (1.0, 1.0),
        (true, true) => (dot / (nc.sqrt() * nd.sqrt()), (nd / nc).sqrt()),
        _ => (0.0, f64::INFINITY),
    };
    let finite = |v: f64| if v.is_nan() { f32::INFINITY } else { v as f32 };
    Ok(TensorDiff {
        name: name.to_string(),
        max_abs,
        rel,
        cos: if cos.is_nan() { 0.0 } else { cos as f32 },
        norm_ratio: finite(norm_ratio),
        noise: (0.0, 0.0),
    })
}

/// Worst `|u_dev - u_cpu| / lr` where `|g_cpu| >= SIGNIFICANT * max |g_cpu|`.
fn update_diff(grad: &Tensor, cpu: &Tensor, dev: &Tensor) -> f32 {
    let g = grad.as_f32();
    let floor = SIGNIFICANT * g.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut worst = 0f32;
    for ((g, c), d) in g.iter().zip(cpu.as_f32()).zip(dev.as_f32()) {
        if floor > 0.0 && g.abs() >= floor {
            let e = (d - c).abs() / LR;
            worst = if e.is_nan() { f32::INFINITY } else { worst.max(e) };
        }
    }
    worst
}

/// A copy of `store` with every value multiplied by `1 + JITTER * u`, `u` uniform in [-1, 1).
fn jitter(store: &ParamStore, seed: u64) -> Result<ParamStore> {
    let mut rng = Rng::new(seed);
    let mut out = ParamStore::new();
    for (_, p) in store.iter() {
        let v: Vec<f32> =
            host_f32(&p.value)?.iter().map(|&x| x * (1.0 + JITTER * (2.0 * rng.uniform() - 1.0))).collect();
        let t = Tensor::new(v, p.value.shape().clone())?;
        out.add(p.name.clone(), t, p.trainable)?;
    }
    Ok(out)
}

fn check_case(
    fixture: &Path,
    cpu_model: &Llama,
    dev_model: &Llama,
    case: &Case,
    batch: &CheckBatch,
) -> Result<StepCheck> {
    let mut store = ParamStore::new();
    let mut adapters = load_peft(&fixture.join(case.adapter), cpu_model, &mut store)?;
    adapters.config.dropout = case.dropout;
    let echo = match case.echo {
        Some(site) => {
            let c = &cpu_model.config;
            Some(EchoPath::init(
                echo_config(site),
                &adapters,
                c.num_hidden_layers,
                c.hidden_size,
                c.rms_norm_eps,
                &mut store,
                &mut Rng::new(5),
            )?)
        }
        None => None,
    };
    let mut ids: Vec<ParamId> = adapters.tensors().into_iter().map(|(id, _)| id).collect();
    ids.extend(echo.as_ref().map(|e| e.param_ids()).unwrap_or_default());
    let setup = Setup { adapters: &adapters, echo: echo.as_ref(), ids: &ids, batch };
    let cpu = run_side(cpu_model, &store, &setup).context(format!("{} on the cpu", case.name))?;
    let mut jittered = Vec::with_capacity(JITTER_SEEDS.len());
    for seed in JITTER_SEEDS {
        let side = run_side(cpu_model, &jitter(&store, seed)?, &setup)
            .context(format!("{} on the cpu, jitter seed {seed}", case.name))?;
        jittered.push(side);
    }
    let on_dev = |run: &str| {
        run_side(dev_model, &store, &setup).context(format!("{} on {}{run}", case.name, dev_model.device()))
    };
    let dev = on_dev("")?;
    let again = on_dev(", second run")?;
    let names: Vec<String> = ids.iter().map(|&id| store.get(id).name.clone()).collect();
    let repeat = side_difference(&names, &dev, &again)?;
    let mut grads = Vec::with_capacity(ids.len());
    let mut update = (0f32, String::new());
    for (i, &id) in ids.iter().enumerate() {
        let name = &store.get(id).name;
        let mut d = diff(name, &cpu.grads[i], &dev.grads[i])?;
        for side in &jittered {
            let j = diff(name, &cpu.grads[i], &side.grads[i])?;
            d.noise = (d.noise.0.max(1.0 - j.cos), d.noise.1.max((j.norm_ratio - 1.0).abs()));
        }
        // A gradient at its noise floor has no sign to compare, nor has the AdamW step it
        // drives (about lr * sign(g) on the first step): its update is not judged.
        let judged = !d.noise_limited();
        grads.push(d);
        let u = if judged { update_diff(&cpu.grads[i], &cpu.update[i], &dev.update[i]) } else { 0.0 };
        if u > update.0 || update.1.is_empty() {
            update = (u, name.clone());
        }
    }
    Ok(StepCheck {
        case: format!("{}, {}", case.name, batch.name),
        loss: (cpu.loss, dev.loss),
        grads,
        grad_norm: (cpu.grad_norm, dev.grad_norm),
        update,
        loss_after: (cpu.loss_after, dev.loss_after),
        repeat,
    })
}

/// Every case on `device` against the CPU, with the tiny-llama-a fixture folder `fixture`.
/// `device` may be the CPU itself (the comparison is then exact, which checks this harness).
pub fn step_checks(fixture: &Path, device: Device) -> Result<Vec<StepCheck>> {
    let loaded = Llama::load(fixture)?;
    let cpu_model = with_bf16_weights(&loaded)?;
    let dev_model = cpu_model.to_device(device)?;
    let vocab = cpu_model.config.vocab_size;
    let batches = [fixture_batch(fixture)?, long_batch(vocab)?, packed_batch(vocab)?];
    let mut out = Vec::new();
    for case in &CASES {
        for b in &batches {
            out.push(check_case(fixture, &cpu_model, &dev_model, case, b)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grad(norm_ratio: f32, noise: (f32, f32)) -> TensorDiff {
        TensorDiff { name: "g".into(), max_abs: 0.0, rel: 0.0, cos: 1.0, norm_ratio, noise }
    }

    #[test]
    fn a_noisy_gradient_is_judged_against_its_own_noise_floor() {
        // 20% off with no measured noise: out of the fixed 10%.
        assert!(!grad(0.8, (0.0, 0.0)).ok());
        // The same with a floor of 15%: within twice the floor, and said to be noise-limited.
        let g = grad(0.8, (0.0, 0.15));
        assert!(g.ok() && g.noise_limited());
        // A floor of 4% (twice that below the fixed 10%) leaves the fixed tolerance.
        let g = grad(0.8, (0.0, 0.04));
        assert!(!g.ok() && !g.noise_limited());
        // A floor of 8% widens it to 16%: 20% still fails.
        let g = grad(0.8, (0.0, 0.08));
        assert!(!g.ok() && g.noise_limited());
        // The cosine's floor widens the cosine's tolerance only.
        let mut g = grad(1.0, (0.02, 0.0));
        g.cos = 0.97;
        assert!(g.ok());
        g.cos = 0.95;
        assert!(!g.ok());
    }
}

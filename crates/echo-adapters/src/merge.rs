//! Merging an adapter into the base weights: LoRA `W' = W + s B A`; DoRA
//! `W' = (m / ||W + s B A||_row) ⊙ (W + s B A)`. The merged model computes exactly what the
//! model plus adapter computes (without dropout), with no adapter at all.
//!
//! Merging is an export step and runs on the host in f32: weights and parameters on a device
//! are read back first (a bf16 base weight is widened exactly), and the merged weights are
//! host tensors.

use crate::{Adapters, Method};
use echo_autograd::ParamStore;
use echo_model::Llama;
use echo_tensor::{DType, Device, Tensor};

/// The merged weight of every adapted projection, by HF tensor name.
pub fn merged_weights(
    model: &Llama,
    adapters: &Adapters,
    store: &ParamStore,
) -> echo_tensor::Result<Vec<(String, Tensor)>> {
    let s = adapters.config.scale();
    if !(s.is_finite() && adapters.config.alpha > 0.0) {
        return Err(echo_tensor::Error::BadValue {
            op: "merge",
            what: "lora_alpha",
            expected: "a positive number".into(),
            got: adapters.config.alpha.to_string(),
        });
    }
    // Adapter parameters are checked before merging and every merged weight after: a NaN
    // adapter (or an overflow) must not become a model that computes NaN without a word.
    for (id, key) in adapters.tensors() {
        finite(&host_f32(store.value(id))?, &key)?;
    }
    let mut out = Vec::new();
    for site in adapters.sites() {
        let w = host_f32(model.blocks[site.layer].weight(site.proj))?;
        let ba = host_f32(store.value(site.b))?.matmul(&host_f32(store.value(site.a))?)?;
        let mut merged = w.add(&ba.scale(s)?)?;
        if let (Method::Dora, Some(m)) = (adapters.config.method, site.magnitude) {
            let d_in = merged.dims()[1];
            let mag = host_f32(store.value(m))?.as_f32().to_vec();
            let data = merged.f32_mut("merge")?;
            for (row, m) in data.chunks_mut(d_in).zip(&mag) {
                let n = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt() as f32;
                row.iter_mut().for_each(|v| *v *= m / n);
            }
        }
        let name = format!("{}.weight", site.proj.module_path(site.layer));
        finite(&merged, &name)?;
        out.push((name, merged));
    }
    Ok(out)
}

/// `t` as an f32 host tensor (itself when it already is one).
fn host_f32(t: &Tensor) -> echo_tensor::Result<Tensor> {
    t.to_device(Device::Cpu)?.try_to_dtype(DType::F32)
}

/// Errors with the first non-finite value of host f32 tensor `t` (named `name`) and its index.
fn finite(t: &Tensor, name: &str) -> echo_tensor::Result<()> {
    let data = t.as_f32();
    let Some(i) = data.iter().position(|x| !x.is_finite()) else { return Ok(()) };
    let cols = t.dims().last().copied().unwrap_or(1).max(1);
    let at = if t.dims().len() == 2 { format!("[{}, {}]", i / cols, i % cols) } else { format!("{i} (flat)") };
    Err(echo_tensor::Error::BadValue {
        op: "merge",
        what: "every adapter and merged weight",
        expected: "finite".into(),
        got: format!("{} at index {at} of `{name}` (shape {:?})", data[i], t.dims()),
    })
}

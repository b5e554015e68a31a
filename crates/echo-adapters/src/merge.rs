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
        out.push((format!("{}.weight", site.proj.module_path(site.layer)), merged));
    }
    Ok(out)
}

/// `t` as an f32 host tensor (itself when it already is one).
fn host_f32(t: &Tensor) -> echo_tensor::Result<Tensor> {
    t.to_device(Device::Cpu)?.try_to_dtype(DType::F32)
}

//! `cargo xtask export`: an adapter as a PEFT folder, or (`--merge`) a merged HF model folder
//! that transformers loads like any LLaMA checkpoint.

use anyhow::{bail, Context, Result};
use echo_adapters::{load_peft, merged_weights, save_peft};
use echo_autograd::ParamStore;
use echo_model::weights::{save_safetensors, SaveTensor, WeightFiles};
use echo_model::Llama;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The base model's HF folder (or `smollm2`).
    #[arg(long)]
    model: String,
    /// The adapter (a PEFT folder, e.g. a run's `adapter/` or `best-adapter/`).
    #[arg(long)]
    adapter: PathBuf,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Merge the adapter into the base weights and write a full model folder.
    #[arg(long)]
    merge: bool,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let model_dir = crate::model::resolve_model(&a.model)?;
    let model = Llama::load(&model_dir)?;
    let mut store = ParamStore::new();
    let adapters = load_peft(&a.adapter, &model, &mut store)?;
    if a.out.canonicalize().ok() == model_dir.canonicalize().ok() {
        bail!("--out must not be the base model's folder");
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    if !a.merge {
        save_peft(&a.out, &adapters, &store, &model_dir.to_string_lossy())?;
        println!("wrote the PEFT adapter to {}", a.out.display());
        return Ok(());
    }
    let merged: HashMap<String, echo_tensor::Tensor> = merged_weights(&model, &adapters, &store)?.into_iter().collect();
    let files = WeightFiles::open_dir(&model_dir)?;
    let mut tensors = Vec::new();
    for name in files.names() {
        let t = match merged.get(name) {
            Some(m) => m.clone(),
            None => files.f32_tensor(name, None)?,
        };
        tensors.push((name.to_string(), SaveTensor::from_tensor(&t)));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    save_safetensors(&a.out.join("model.safetensors"), tensors, Some(meta))?;
    for f in
        ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"]
    {
        let src = model_dir.join(f);
        if src.exists() {
            std::fs::copy(&src, a.out.join(f)).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    println!("wrote the merged model ({} adapted projections) to {}", merged.len(), a.out.display());
    Ok(())
}

//! `cargo xtask export`: an adapter as a PEFT folder, (`--merge --out`) a merged HF model
//! folder that transformers loads like any LLaMA checkpoint, (`--merge --gguf`) the merged
//! model as one GGUF file for llama.cpp / Ollama / LM Studio, or (`--lora-gguf`) the adapter
//! alone as a llama.cpp LoRA GGUF. The GGUF writing lives in `echo_model::gguf::export`.

use anyhow::{bail, Context, Result};
use echo_adapters::{load_peft, merged_weights, save_peft_as, Adapters, Method};
use echo_autograd::ParamStore;
use echo_model::gguf::{export_gguf, export_lora_gguf, ExportType};
use echo_model::weights::{save_safetensors, SaveDtype, SaveTensor, WeightFiles};
use echo_model::Llama;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The base model's HF folder (or `smollm2`).
    #[arg(long)]
    model: String,
    /// The adapter (a PEFT folder, e.g. a run's `adapter/` or `best-adapter/`). Without it,
    /// `--gguf` exports the base model as it is.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Output folder (a PEFT folder, or with --merge a merged HF model folder).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Merge the adapter into the base weights (for --out: a full model folder; required
    /// with --gguf and an adapter).
    #[arg(long)]
    merge: bool,
    /// Write the merged model as this GGUF file (llama.cpp's format, tokenizer included).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// The GGUF's matrix type: f32, f16, q8_0 or q4_0 (norms always stay f32).
    #[arg(long, default_value = "f16")]
    quant: String,
    /// Write the adapter alone as a llama.cpp LoRA GGUF (`llama-cli -m base.gguf --lora FILE`;
    /// LoRA only: llama.cpp has no DoRA).
    #[arg(long)]
    lora_gguf: Option<PathBuf>,
    /// The floating-point type of what --out writes (the PEFT adapter, or the merged model):
    /// f32 (exact) or bf16 (half the size, rounded to nearest even).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: OutDtype,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum OutDtype {
    F32,
    Bf16,
}

impl From<OutDtype> for SaveDtype {
    fn from(d: OutDtype) -> Self {
        match d {
            OutDtype::F32 => SaveDtype::F32,
            OutDtype::Bf16 => SaveDtype::Bf16,
        }
    }
}

/// `Err` when `out` names an existing file inside `dir` (the base model's or the adapter's
/// folder): an export never replaces its own inputs.
fn refuse_inside(out: &Path, dir: &Path, what: &str) -> Result<()> {
    if let (Ok(o), Ok(d)) = (out.canonicalize(), dir.canonicalize()) {
        if o == d || o.parent() == Some(d.as_path()) {
            bail!("{}: is (in) the {what}'s folder {}; refusing to overwrite it", out.display(), dir.display());
        }
    }
    Ok(())
}

pub fn run(a: ExportArgs) -> Result<()> {
    let model_dir = crate::model::resolve_model(&a.model)?;
    if a.out.is_none() && a.gguf.is_none() && a.lora_gguf.is_none() {
        bail!("nothing to write: give --out DIR, --gguf FILE or --lora-gguf FILE");
    }
    let quant = ExportType::parse(&a.quant)
        .with_context(|| format!("--quant `{}`: unknown (known: {})", a.quant, ExportType::NAMES))?;
    if a.gguf.is_none() && a.quant != "f16" {
        bail!("--quant applies to --gguf only");
    }
    if a.out.is_none() && matches!(a.dtype, OutDtype::Bf16) {
        bail!("--dtype applies to --out only (a GGUF's type is --quant)");
    }
    if a.adapter.is_none() && (a.out.is_some() || a.lora_gguf.is_some()) {
        bail!("--out and --lora-gguf need --adapter");
    }
    if a.adapter.is_some() && a.gguf.is_some() && !a.merge {
        bail!("--gguf writes the merged model: add --merge (or use --lora-gguf for the adapter alone)");
    }
    for out in [&a.gguf, &a.lora_gguf].into_iter().flatten() {
        refuse_inside(out, &model_dir, "base model")?;
        if let Some(adapter) = &a.adapter {
            refuse_inside(out, adapter, "adapter")?;
        }
    }

    let Some(adapter_dir) = &a.adapter else {
        // The base model alone, straight from its files.
        let gguf = a.gguf.as_ref().expect("checked above: --gguf is the only output without an adapter");
        let s = export_gguf(&model_dir, &HashMap::new(), gguf, quant, None)?;
        report_gguf(&s, "the base model");
        return Ok(());
    };
    let model = Llama::load(&model_dir)?;
    let mut store = ParamStore::new();
    let adapters = load_peft(adapter_dir, &model, &mut store)?;
    if let Some(lora) = &a.lora_gguf {
        write_lora_gguf(&model, &adapters, &store, adapter_dir, lora)?;
    }
    let merged: HashMap<String, echo_tensor::Tensor> =
        if a.merge { merged_weights(&model, &adapters, &store)?.into_iter().collect() } else { HashMap::new() };
    if let Some(gguf) = &a.gguf {
        let name = format!(
            "{} + {}",
            model_dir.file_name().unwrap_or_default().to_string_lossy(),
            adapter_dir.canonicalize().unwrap_or(adapter_dir.clone()).file_name().unwrap_or_default().to_string_lossy()
        );
        let s = export_gguf(&model_dir, &merged, gguf, quant, Some(&name))?;
        report_gguf(&s, &format!("the merged model ({} adapted projections)", merged.len()));
    }
    let Some(out) = &a.out else { return Ok(()) };
    if out.canonicalize().ok() == model_dir.canonicalize().ok() {
        bail!("--out must not be the base model's folder");
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    if !a.merge {
        save_peft_as(out, &adapters, &store, &model_dir.to_string_lossy(), a.dtype.into())?;
        println!("wrote the PEFT adapter ({:?}) to {}", a.dtype, out.display());
        return Ok(());
    }
    let files = WeightFiles::open_dir(&model_dir)?;
    let mut tensors = Vec::new();
    for name in files.names() {
        let t = match merged.get(name) {
            Some(m) => m.clone(),
            None => files.f32_tensor(name, None)?,
        };
        tensors.push((name.to_string(), SaveTensor::from_tensor(&t).into_dtype(a.dtype.into())));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    save_safetensors(&out.join("model.safetensors"), tensors, Some(meta))?;
    for f in
        ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"]
    {
        let src = model_dir.join(f);
        if src.exists() {
            std::fs::copy(&src, out.join(f)).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    println!("wrote the merged model ({} adapted projections) to {}", merged.len(), out.display());
    Ok(())
}

fn report_gguf(s: &echo_model::gguf::ExportSummary, what: &str) {
    let types: Vec<String> = s.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    println!(
        "wrote {what} as GGUF to {} ({:.1} MB; {} tensors: {}; tokenizer: gpt2 BPE, pre `{}`{}{})",
        s.path.display(),
        s.bytes as f64 / 1e6,
        s.tensors,
        types.join(", "),
        s.tokenizer_pre,
        if s.tied { ", tied embeddings" } else { "" },
        if s.padded_tokens > 0 { format!(", {} unused ids padded", s.padded_tokens) } else { String::new() },
    );
}

fn write_lora_gguf(model: &Llama, adapters: &Adapters, store: &ParamStore, dir: &Path, out: &Path) -> Result<()> {
    if adapters.config.method == Method::Dora {
        bail!(
            "{}: a DoRA adapter cannot be a llama.cpp LoRA (llama.cpp has no DoRA); export it merged with --merge --gguf",
            dir.display()
        );
    }
    let host = |id| -> Result<echo_tensor::Tensor> {
        Ok(store.value(id).to_device(echo_tensor::Device::Cpu)?.try_to_dtype(echo_tensor::DType::F32)?)
    };
    let mut pairs = Vec::new();
    for site in adapters.sites() {
        pairs.push((format!("{}.weight", site.proj.module_path(site.layer)), host(site.a)?, host(site.b)?));
    }
    let name = dir.canonicalize().unwrap_or(dir.to_path_buf());
    let name = name.file_name().unwrap_or_default().to_string_lossy();
    let bytes = export_lora_gguf(&model.config, &pairs, adapters.config.scale() as f64, out, &name)?;
    println!(
        "wrote the LoRA adapter ({} projections, rank {}) as a llama.cpp LoRA GGUF to {} ({:.1} MB)",
        pairs.len(),
        adapters.config.r,
        out.display(),
        bytes as f64 / 1e6
    );
    Ok(())
}

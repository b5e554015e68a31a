//! HF model folder (optionally with some weights replaced, e.g. by an adapter merged into
//! them) → one GGUF file that llama.cpp (and Ollama, LM Studio) loads: the reverse of
//! [`import`](super::import), so `import_gguf(export_gguf(m))` gives `m` back (exactly at f32,
//! within each format's rounding otherwise; `tests/gguf_export.rs`).
//!
//! What llama.cpp's `convert_hf_to_gguf.py` does for a `LlamaForCausalLM`, and so we do:
//!
//! * names: `token_embd`, `blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm,
//!   ffn_gate, ffn_up, ffn_down}`, `output_norm`, `output` (omitted when the embeddings are
//!   tied: llama.cpp then uses `token_embd` as the LM head);
//! * `q_proj` / `k_proj` rows permuted from HF's rotate-half RoPE layout to ggml's
//!   adjacent-pairs one ([`permute_qk`], `k_proj` with the KV head count);
//! * shapes in ggml order (innermost first; the bytes of a row-major `[out, in]` matrix are
//!   those of ggml's `ne = [in, out]`, so nothing is transposed);
//! * 1-D tensors (the norms) stay f32, as llama.cpp keeps them; a matrix whose rows are not
//!   whole blocks of the chosen quantisation falls back to f16, as the converter does;
//! * LLaMA-3 RoPE scaling becomes the `rope_freqs.weight` tensor of per-frequency divisors
//!   (llama.cpp's `rope_freqs`), not metadata;
//! * the tokenizer as `tokenizer.ggml.*` arrays ([`tokenizer::from_hf`]).
//!
//! With [`ExportType::Q4_0`], the LM head (`output`, or `token_embd` when tied) is stored as
//! Q8_0: llama.cpp's own quantiser gives it more bits too (Q6_K, which we cannot write), as
//! 4 bits there costs the most quality.
//!
//! The file is built in memory and written with one atomic write: a model of N parameters
//! needs about twice its exported size in memory while writing.

use super::dequant::GgmlType;
use super::import::permute_qk;
use super::tokenizer::{self, SpecialIds};
use super::writer::GgufWriter;
use crate::weights::{check_finite, WeightFiles};
use crate::{Error, LlamaConfig, Result};
use echo_tensor::Tensor;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The storage type of the exported matrices (`--quant`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportType {
    F32,
    F16,
    Q8_0,
    Q4_0,
}

impl ExportType {
    /// The names [`ExportType::parse`] accepts.
    pub const NAMES: &'static str = "f32, f16, q8_0, q4_0";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" => ExportType::F32,
            "f16" => ExportType::F16,
            "q8_0" => ExportType::Q8_0,
            "q4_0" => ExportType::Q4_0,
            _ => return None,
        })
    }

    pub fn ggml(self) -> GgmlType {
        match self {
            ExportType::F32 => GgmlType::F32,
            ExportType::F16 => GgmlType::F16,
            ExportType::Q8_0 => GgmlType::Q8_0,
            ExportType::Q4_0 => GgmlType::Q4_0,
        }
    }

    /// llama.cpp's `general.file_type` (`enum llama_ftype`): what tools show as the file's type.
    fn file_type(self) -> u32 {
        match self {
            ExportType::F32 => 0,
            ExportType::F16 => 1,
            ExportType::Q4_0 => 2,
            ExportType::Q8_0 => 7,
        }
    }
}

/// What an export wrote.
#[derive(Debug)]
pub struct ExportSummary {
    pub path: PathBuf,
    pub tensors: usize,
    /// How many tensors of each ggml type were written.
    pub types: BTreeMap<&'static str, usize>,
    pub bytes: u64,
    /// The llama.cpp pre-tokenizer named in the file.
    pub tokenizer_pre: &'static str,
    /// Ids below the vocabulary size the tokenizer does not assign (written as unused tokens).
    pub padded_tokens: usize,
    pub tied: bool,
}

/// The GGUF name of a HF LLaMA tensor (the inverse of [`super::import::hf_name`]).
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.into());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let name = match part {
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        "input_layernorm.weight" => "attn_norm",
        "post_attention_layernorm.weight" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{name}.weight"))
}

/// The HF tensors a LLaMA of `cfg` consists of, in the order llama.cpp's converter writes
/// them, with their PyTorch shapes.
fn expected_tensors(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (h, v, f) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
    let (q, kv) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for l in 0..cfg.num_hidden_layers {
        let p = |m: &str| format!("model.layers.{l}.{m}.weight");
        out.extend([
            (p("input_layernorm"), vec![h]),
            (p("self_attn.q_proj"), vec![q, h]),
            (p("self_attn.k_proj"), vec![kv, h]),
            (p("self_attn.v_proj"), vec![kv, h]),
            (p("self_attn.o_proj"), vec![h, q]),
            (p("post_attention_layernorm"), vec![h]),
            (p("mlp.gate_proj"), vec![f, h]),
            (p("mlp.up_proj"), vec![f, h]),
            (p("mlp.down_proj"), vec![h, f]),
        ]);
    }
    out.push(("model.norm.weight".into(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".into(), vec![v, h]));
    }
    out
}

/// The ggml type tensor `gguf` of `shape` is stored in.
fn storage(ty: ExportType, gguf: &str, shape: &[usize], tied: bool) -> GgmlType {
    if shape.len() == 1 {
        return GgmlType::F32;
    }
    let lm_head = gguf == "output.weight" || (tied && gguf == "token_embd.weight");
    let want = if ty == ExportType::Q4_0 && lm_head { GgmlType::Q8_0 } else { ty.ggml() };
    let (block, _) = want.block();
    if shape[shape.len() - 1].is_multiple_of(block) {
        want
    } else {
        GgmlType::F16
    }
}

/// `Err` when writing `out` would replace a file of the model folder `model_dir`.
fn refuse_overwriting(out: &Path, model_dir: &Path) -> Result<()> {
    if out.is_dir() {
        return Err(Error::Input(format!("{}: is a folder; the GGUF output must be a file path", out.display())));
    }
    if let (Ok(file), Ok(dir)) = (out.canonicalize(), model_dir.canonicalize()) {
        if file.parent() == Some(dir.as_path()) {
            return Err(Error::Input(format!(
                "{}: exists in the base model's folder {}; refusing to overwrite the model's own files (write the GGUF elsewhere)",
                out.display(),
                model_dir.display()
            )));
        }
    }
    Ok(())
}

/// Exports the LLaMA in `model_dir` (config.json, safetensors, tokenizer.json) to the GGUF
/// file `out`, taking the tensors named in `replaced` (HF names, e.g. merged adapter weights
/// from `echo_adapters::merged_weights`) instead of the folder's. `name` is the file's
/// `general.name` (default: the folder's name).
pub fn export_gguf(
    model_dir: &Path,
    replaced: &HashMap<String, Tensor>,
    out: &Path,
    ty: ExportType,
    name: Option<&str>,
) -> Result<ExportSummary> {
    refuse_overwriting(out, model_dir)?;
    let cfg = LlamaConfig::from_dir(model_dir)?;
    let cfg_path = model_dir.join("config.json");
    if cfg.head_dim % 2 != 0 {
        return Err(Error::Unsupported { path: cfg_path, what: format!("odd head_dim {}", cfg.head_dim) });
    }
    let files = WeightFiles::open_dir(model_dir)?;
    let tied = cfg.tie_word_embeddings;
    let expected = expected_tensors(&cfg);
    if let Some(stray) = replaced.keys().find(|k| !expected.iter().any(|(n, _)| n == *k)) {
        return Err(Error::Input(format!(
            "replacement tensor `{stray}` is not part of the {}-layer LLaMA in {}",
            cfg.num_hidden_layers,
            model_dir.display()
        )));
    }

    let fallback =
        SpecialIds { bos: cfg.bos_token_id, eos: cfg.eos_token_ids.first().copied(), pad: cfg.pad_token_id, unk: None };
    let vocab = tokenizer::from_hf(model_dir, cfg.vocab_size, &fallback)?;

    let mut g = GgufWriter::new();
    let folder_name = model_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    g.str("general.architecture", "llama")
        .str("general.name", name.unwrap_or(&folder_name))
        .u32("general.file_type", ty.file_type())
        .u32("general.quantization_version", 2);
    let u32_of = |key: &str, v: usize| -> Result<u32> {
        u32::try_from(v).map_err(|_| Error::Config {
            path: model_dir.join("config.json"),
            key: key.into(),
            msg: format!("{v} does not fit GGUF's u32"),
        })
    };
    g.u32("llama.vocab_size", u32_of("vocab_size", cfg.vocab_size)?)
        .u32("llama.context_length", u32_of("max_position_embeddings", cfg.max_position_embeddings)?)
        .u32("llama.embedding_length", u32_of("hidden_size", cfg.hidden_size)?)
        .u32("llama.block_count", u32_of("num_hidden_layers", cfg.num_hidden_layers)?)
        .u32("llama.feed_forward_length", u32_of("intermediate_size", cfg.intermediate_size)?)
        .u32("llama.rope.dimension_count", u32_of("head_dim", cfg.head_dim)?)
        .u32("llama.attention.head_count", u32_of("num_attention_heads", cfg.num_attention_heads)?)
        .u32("llama.attention.head_count_kv", u32_of("num_key_value_heads", cfg.num_key_value_heads)?)
        .f32("llama.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
        .f32("llama.rope.freq_base", cfg.rope_theta as f32);
    // llama.cpp assumes head_dim = hidden / heads unless told otherwise.
    if cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size {
        g.u32("llama.attention.key_length", cfg.head_dim as u32)
            .u32("llama.attention.value_length", cfg.head_dim as u32);
    }
    for (k, v) in vocab.entries {
        g.kv(&k, v);
    }

    let mut types: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut count = |t: GgmlType| *types.entry(t.name()).or_insert(0) += 1;
    if let Some(s) = cfg.rope_scaling {
        // Each frequency's divisor: ggml's RoPE divides the base frequency by it, which gives
        // exactly transformers' llama3 frequencies (the converter's `rope_factors`).
        let base = echo_kernels::cpu::rope::inv_freq(cfg.head_dim, cfg.rope_theta, None);
        let scaled = echo_kernels::cpu::rope::inv_freq(cfg.head_dim, cfg.rope_theta, Some(s));
        let factors: Vec<f32> = base.iter().zip(&scaled).map(|(b, s)| (b / s) as f32).collect();
        g.tensor("rope_freqs.weight", &[factors.len()], &factors, GgmlType::F32);
        count(GgmlType::F32);
    }
    for (hf, shape) in &expected {
        let gguf = gguf_name(hf).expect("every expected tensor has a GGUF name");
        let mut data = match replaced.get(hf) {
            Some(t) => {
                if t.dims() != shape.as_slice() {
                    return Err(Error::TensorShape {
                        path: out.to_path_buf(),
                        name: format!("{hf} (replacement)"),
                        expected: shape.clone(),
                        got: t.dims().to_vec(),
                    });
                }
                let data = t.to_vec_f32();
                check_finite(out, &format!("{hf} (replacement)"), shape, &data)?;
                data
            }
            None => files.finite_f32_tensor(hf, Some(shape))?.to_vec_f32(),
        };
        if hf.ends_with("q_proj.weight") {
            data = permute_qk(&data, shape[0], shape[1], cfg.num_attention_heads);
        } else if hf.ends_with("k_proj.weight") {
            data = permute_qk(&data, shape[0], shape[1], cfg.num_key_value_heads);
        }
        let t = storage(ty, &gguf, shape, tied);
        g.tensor(&gguf, shape, &data, t);
        count(t);
    }
    let tensors = types.values().sum();
    let bytes = g.write(out)?;
    Ok(ExportSummary {
        path: out.to_path_buf(),
        tensors,
        types,
        bytes,
        tokenizer_pre: vocab.pre,
        padded_tokens: vocab.padded,
        tied,
    })
}

/// Writes a PEFT LoRA adapter as a llama.cpp LoRA GGUF (`llama-cli --lora`): for each adapted
/// projection, `blk.N.<name>.weight.lora_a` (`[r, in]`) and `.lora_b` (`[out, r]`), f32, with
/// `adapter.lora.alpha` set so that llama.cpp's scale `alpha / r` is the adapter's own scale
/// (`lora_alpha / r`, or `/ sqrt(r)` under rsLoRA). `lora_b` of `q_proj` / `k_proj` gets the
/// rows of the base weight's permutation, so `B A` lines up with the exported base.
/// `pairs` are `(HF weight name of the projection, A, B)`. Returns the bytes written.
pub fn export_lora_gguf(
    cfg: &LlamaConfig,
    pairs: &[(String, Tensor, Tensor)],
    scale: f64,
    out: &Path,
    name: &str,
) -> Result<u64> {
    if out.is_dir() {
        return Err(Error::Input(format!("{}: is a folder; the LoRA GGUF output must be a file path", out.display())));
    }
    let r = match pairs.first() {
        Some((_, a, _)) => a.dims()[0],
        None => return Err(Error::Input("the adapter has no LoRA pairs to export".into())),
    };
    let mut g = GgufWriter::new();
    g.str("general.architecture", "llama")
        .str("general.type", "adapter")
        .str("general.name", name)
        .str("adapter.type", "lora")
        .f32("adapter.lora.alpha", (scale * r as f64) as f32);
    for (hf, a, b) in pairs {
        let gguf = gguf_name(hf).ok_or_else(|| Error::Input(format!("adapter module `{hf}` has no llama.cpp name")))?;
        let (ad, bd) = (a.dims().to_vec(), b.dims().to_vec());
        if ad.len() != 2 || bd.len() != 2 || ad[0] != r || bd[1] != r {
            return Err(Error::Input(format!(
                "`{hf}`: lora_A {ad:?} and lora_B {bd:?} are not [{r}, in] and [out, {r}] (every pair must share the rank)"
            )));
        }
        let (a_data, mut b_data) = (a.to_vec_f32(), b.to_vec_f32());
        check_finite(out, &format!("{hf} lora_A"), &ad, &a_data)?;
        check_finite(out, &format!("{hf} lora_B"), &bd, &b_data)?;
        if hf.ends_with("q_proj.weight") {
            b_data = permute_qk(&b_data, bd[0], r, cfg.num_attention_heads);
        } else if hf.ends_with("k_proj.weight") {
            b_data = permute_qk(&b_data, bd[0], r, cfg.num_key_value_heads);
        }
        g.tensor(&format!("{gguf}.lora_a"), &ad, &a_data, GgmlType::F32);
        g.tensor(&format!("{gguf}.lora_b"), &bd, &b_data, GgmlType::F32);
    }
    g.write(out)
}

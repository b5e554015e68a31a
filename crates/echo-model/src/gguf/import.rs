//! GGUF (llama architecture) → HF model folder: `config.json`, `model.safetensors` (f32),
//! `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`.
//!
//! Two things differ between a llama.cpp file and the HF checkpoint it came from, beyond
//! names and quantisation:
//!
//! * **Q/K row order.** HF applies RoPE in the "rotate half" layout: in each head, dimension
//!   `i` pairs with `i + D/2`. ggml's RoPE (`GGML_ROPE_TYPE_NORM`, the original Meta layout)
//!   pairs adjacent dimensions `2i, 2i+1`. So `convert_hf_to_gguf.py` reorders the output rows
//!   of `q_proj` and `k_proj` per head (`LlamaModel.permute`: reshape `[heads, 2, D/2, in]`,
//!   swap the middle axes); the dot products `q·k` are unchanged because both sides move the
//!   same way. We apply the inverse so the weights are HF's again ([`unpermute_qk`]); `k_proj`
//!   uses the KV head count, as the converter does.
//! * **Dimension order.** ggml lists dimensions innermost first: a `[out, in]` weight has
//!   `ne = [in, out]`, with the same bytes as PyTorch's row-major layout, so no transpose is
//!   needed, only the reversed shape.

use super::reader::GgufFile;
use super::tokenizer;
use crate::weights::{check_finite, save_safetensors, write_atomic, SaveTensor};
use crate::{bounds, Error, LlamaConfig, Result};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// What an import produced.
#[derive(Debug)]
pub struct ImportSummary {
    pub out_dir: PathBuf,
    pub config: LlamaConfig,
    pub tensors: usize,
    /// How many GGUF tensors of each ggml type were dequantised.
    pub types: BTreeMap<&'static str, usize>,
    pub model_name: Option<String>,
}

/// The HF name of a GGUF llama tensor, `None` for names without a counterpart.
pub fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.into());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let module = match part {
        "attn_q.weight" => "self_attn.q_proj",
        "attn_k.weight" => "self_attn.k_proj",
        "attn_v.weight" => "self_attn.v_proj",
        "attn_output.weight" => "self_attn.o_proj",
        "ffn_gate.weight" => "mlp.gate_proj",
        "ffn_up.weight" => "mlp.up_proj",
        "ffn_down.weight" => "mlp.down_proj",
        "attn_norm.weight" => "input_layernorm",
        "ffn_norm.weight" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}.weight"))
}

/// llama.cpp's `LlamaModel.permute` on a row-major `[rows, cols]` weight with `heads` heads:
/// HF row `h*D + s*D/2 + j` moves to row `h*D + 2j + s`. Used by tests to build GGUF files.
pub fn permute_qk(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    reorder_rows(w, rows, cols, heads, false)
}

/// The inverse of [`permute_qk`]: GGUF row order back to HF's.
pub fn unpermute_qk(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    reorder_rows(w, rows, cols, heads, true)
}

fn reorder_rows(w: &[f32], rows: usize, cols: usize, heads: usize, inverse: bool) -> Vec<f32> {
    assert_eq!(w.len(), rows * cols, "reorder_rows: {} values for [{rows}, {cols}]", w.len());
    assert!(
        heads > 0 && rows.is_multiple_of(2 * heads),
        "reorder_rows: {rows} rows do not split into {heads} heads of even size"
    );
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![0.0f32; w.len()];
    for h in 0..heads {
        for s in 0..2 {
            for j in 0..half {
                let hf = h * d + s * half + j;
                let gg = h * d + 2 * j + s;
                let (from, to) = if inverse { (gg, hf) } else { (hf, gg) };
                out[to * cols..(to + 1) * cols].copy_from_slice(&w[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

/// The shortest decimal that reads back as the same f32 (GGUF stores f32; `1e-5` reads
/// better than `9.999999747378752e-6` and is what the HF config said).
fn f32_as_f64(x: f32) -> f64 {
    format!("{x}").parse().expect("f32 Display parses")
}

/// Imports `gguf` into `out_dir` (created if needed). Files are written atomically, config.json
/// last, so a folder with a config.json is a complete import.
pub fn import_gguf(gguf: &Path, out_dir: &Path) -> Result<ImportSummary> {
    let g = GgufFile::open(gguf)?;
    let unsupported = |what: String| Error::Unsupported { path: gguf.to_path_buf(), what };
    let arch = g.opt_str("general.architecture")?.ok_or_else(|| g.key_err("general.architecture", "missing"))?;
    if arch != "llama" {
        return Err(unsupported(format!(
            "general.architecture `{arch}` (only `llama` — LLaMA, SmolLM2, TinyLlama, Mistral-style — is supported)"
        )));
    }
    let key = |k: &str| format!("{arch}.{k}");
    if g.opt_u64(&key("expert_count"))?.unwrap_or(0) > 0 {
        return Err(unsupported("mixture-of-experts (llama.expert_count > 0)".into()));
    }
    let hidden = g.u64_key(&key("embedding_length"))? as usize;
    let layers = g.u64_key(&key("block_count"))? as usize;
    let heads = g.u64_key(&key("attention.head_count"))? as usize;
    let kv_heads = g.opt_u64(&key("attention.head_count_kv"))?.map_or(heads, |v| v as usize);
    let ffn = g.u64_key(&key("feed_forward_length"))? as usize;
    let ctx = g.u64_key(&key("context_length"))? as usize;
    let eps = g
        .opt_f64(&key("attention.layer_norm_rms_epsilon"))?
        .ok_or_else(|| g.key_err(&key("attention.layer_norm_rms_epsilon"), "missing"))?;
    let theta = g.opt_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0);
    // Sizes are bounded before anything is sized by them (the expected-tensor table below has
    // 9 entries per block), and the block count must be what the tensors hold: a few hundred
    // KB of metadata must not import into a folder that can never load.
    for (k, v, max) in [
        ("embedding_length", hidden, bounds::MAX_HIDDEN),
        ("block_count", layers, bounds::MAX_LAYERS),
        ("attention.head_count", heads, bounds::MAX_HEADS),
        ("attention.head_count_kv", kv_heads, bounds::MAX_HEADS),
        ("feed_forward_length", ffn, bounds::MAX_INTERMEDIATE),
        ("context_length", ctx, bounds::MAX_CONTEXT),
    ] {
        if v > max {
            return Err(g.key_err(&key(k), format!("{v} is above {max}, the largest this importer accepts")));
        }
    }
    let blocks_in_tensors =
        g.tensors.iter().filter_map(|t| t.name.strip_prefix("blk.")?.split_once('.')?.0.parse::<usize>().ok()).max();
    let blocks_in_tensors = blocks_in_tensors.map_or(0, |b| b + 1);
    if blocks_in_tensors != layers {
        return Err(g.key_err(
            &key("block_count"),
            format!("says {layers} blocks, but the file's tensors are those of {blocks_in_tensors} (blk.0..)"),
        ));
    }
    if heads == 0 || kv_heads == 0 || hidden == 0 {
        return Err(g.key_err(
            &key("attention.head_count"),
            format!("heads {heads}, kv heads {kv_heads}, hidden {hidden}: must all be > 0"),
        ));
    }
    let head_dim = match g.opt_u64(&key("attention.key_length"))? {
        Some(k) if k as usize > bounds::MAX_HEAD_DIM => {
            return Err(g.key_err(
                &key("attention.key_length"),
                format!("{k} is above {}, the largest this importer accepts", bounds::MAX_HEAD_DIM),
            ))
        }
        Some(k) => k as usize,
        None if hidden.is_multiple_of(heads) => hidden / heads,
        None => {
            return Err(g.key_err(
                &key("attention.head_count"),
                format!("{heads} heads do not divide embedding_length {hidden}"),
            ))
        }
    };
    if let Some(v) = g.opt_u64(&key("attention.value_length"))? {
        if v as usize != head_dim {
            return Err(unsupported(format!("attention.value_length {v} != key_length {head_dim}")));
        }
    }
    if let Some(r) = g.opt_u64(&key("rope.dimension_count"))? {
        if r as usize != head_dim {
            return Err(unsupported(format!(
                "partial rotary embedding (rope.dimension_count {r} of head dim {head_dim})"
            )));
        }
    }
    match g.opt_str(&key("rope.scaling.type"))? {
        None | Some("none") => {}
        Some("linear") if g.opt_f64(&key("rope.scaling.factor"))?.unwrap_or(1.0) == 1.0 => {}
        Some(t) => return Err(unsupported(format!("{arch}.rope.scaling.type `{t}` (only unscaled RoPE is imported)"))),
    }
    if g.tensor("rope_freqs.weight").is_some() {
        return Err(unsupported(
            "tensor `rope_freqs.weight` (LLaMA-3.1 style RoPE frequency factors; import the HF checkpoint instead)"
                .into(),
        ));
    }

    let tok = tokenizer::build(&g)?;
    let vocab = tok.vocab_size;
    let tied = g.tensor("output.weight").is_none();
    let cfg_json = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": ctx,
        "rms_norm_eps": f32_as_f64(eps as f32),
        "rope_theta": theta,
        "rope_scaling": null,
        "attention_bias": false,
        "mlp_bias": false,
        "tie_word_embeddings": tied,
        "vocab_size": vocab,
        "bos_token_id": tok.special.bos,
        "eos_token_id": tok.special.eos,
        "pad_token_id": tok.special.pad,
        "torch_dtype": "float32",
    });
    let cfg_text = serde_json::to_string_pretty(&cfg_json).expect("json");
    let cfg_path = out_dir.join("config.json");
    let config = LlamaConfig::parse(&cfg_text, &cfg_path)?;

    // Expected HF shapes, to check every tensor before anything is written.
    let (q_out, kv_out) = (heads * head_dim, kv_heads * head_dim);
    let mut expected: HashMap<String, Vec<usize>> = HashMap::new();
    expected.insert("model.embed_tokens.weight".into(), vec![vocab, hidden]);
    expected.insert("model.norm.weight".into(), vec![hidden]);
    if !tied {
        expected.insert("lm_head.weight".into(), vec![vocab, hidden]);
    }
    for l in 0..layers {
        let p = |m: &str| format!("model.layers.{l}.{m}.weight");
        expected.insert(p("input_layernorm"), vec![hidden]);
        expected.insert(p("post_attention_layernorm"), vec![hidden]);
        expected.insert(p("self_attn.q_proj"), vec![q_out, hidden]);
        expected.insert(p("self_attn.k_proj"), vec![kv_out, hidden]);
        expected.insert(p("self_attn.v_proj"), vec![kv_out, hidden]);
        expected.insert(p("self_attn.o_proj"), vec![hidden, q_out]);
        expected.insert(p("mlp.gate_proj"), vec![ffn, hidden]);
        expected.insert(p("mlp.up_proj"), vec![ffn, hidden]);
        expected.insert(p("mlp.down_proj"), vec![hidden, ffn]);
    }

    let mut out: Vec<(String, SaveTensor)> = Vec::with_capacity(g.tensors.len());
    let mut types = BTreeMap::new();
    for t in &g.tensors {
        let name =
            hf_name(&t.name).ok_or_else(|| unsupported(format!("tensor `{}` has no HF LLaMA counterpart", t.name)))?;
        let want = expected.remove(&name).ok_or_else(|| {
            unsupported(format!("tensor `{}` (→ `{name}`) is not part of a {layers}-layer LLaMA", t.name))
        })?;
        let shape = t.torch_shape();
        if shape != want {
            return Err(Error::TensorShape {
                path: gguf.to_path_buf(),
                name: t.name.clone(),
                expected: want,
                got: shape,
            });
        }
        let mut data = g.tensor_f32(t)?;
        // A NaN/Inf weight would import into a folder that never loads: refuse it here, naming
        // the GGUF tensor.
        check_finite(gguf, &t.name, &shape, &data)?;
        if name.ends_with("q_proj.weight") {
            data = unpermute_qk(&data, q_out, hidden, heads);
        } else if name.ends_with("k_proj.weight") {
            data = unpermute_qk(&data, kv_out, hidden, kv_heads);
        }
        *types.entry(t.ggml_type.name()).or_insert(0) += 1;
        out.push((name, SaveTensor::F32(data, shape)));
    }
    if let Some(missing) = expected.keys().min() {
        return Err(Error::MissingTensor {
            path: gguf.to_path_buf(),
            name: missing.clone(),
            hint: format!(" (no GGUF tensor maps to it; {} HF tensors missing in all)", expected.len()),
        });
    }

    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let n_tensors = out.len();
    let source = gguf.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let meta =
        HashMap::from([("format".to_string(), "pt".to_string()), ("source".to_string(), format!("gguf:{source}"))]);
    save_safetensors(&out_dir.join("model.safetensors"), out, Some(meta))?;
    let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).expect("json");
    write_atomic(&out_dir.join("tokenizer.json"), &pretty(&tok.tokenizer_json))?;
    write_atomic(&out_dir.join("tokenizer_config.json"), &pretty(&tok.tokenizer_config))?;
    let gen =
        json!({"bos_token_id": tok.special.bos, "eos_token_id": tok.special.eos, "pad_token_id": tok.special.pad});
    write_atomic(&out_dir.join("generation_config.json"), &pretty(&gen))?;
    write_atomic(&cfg_path, cfg_text.as_bytes())?;
    Ok(ImportSummary {
        out_dir: out_dir.to_path_buf(),
        config,
        tensors: n_tensors,
        types,
        model_name: g.opt_str("general.name")?.map(str::to_string),
    })
}

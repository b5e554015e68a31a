//! `config.json` of the LLaMA family: LLaMA-1/2 (MHA), LLaMA-3/3.1 (GQA, llama3 RoPE
//! scaling), SmolLM2 and TinyLlama (GQA, tied embeddings), in both the transformers-4
//! spelling (`rope_theta`, `rope_scaling` at top level) and the transformers-5 one
//! (`rope_parameters`). Anything else is refused with the key that made us refuse.

use crate::{Error, Result};
use echo_tensor::Llama3Scaling;
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The architecture hyper-parameters the forward pass needs.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3Scaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

/// Bounds on the sizes a `config.json` (or a GGUF's metadata) may declare, checked before
/// anything is sized by them. Each is far above any LLaMA-family model published (LLaMA-3.1
/// 405B: 126 layers, hidden 16384, intermediate 53248, 128 heads of 128, vocabulary 128256,
/// context 131072) and low enough that a product of two of them cannot overflow and a table
/// sized by one cannot exhaust memory: a corrupt or hostile value is an error naming the key,
/// never an allocation abort.
pub mod bounds {
    /// Blocks: per-layer tables (the block list, the KV cache's layer list) are sized by it.
    pub const MAX_LAYERS: usize = 1024;
    /// Model width: 4× the widest LLaMA (16384).
    pub const MAX_HIDDEN: usize = 65_536;
    /// MLP width: ~20× the widest LLaMA MLP (53248).
    pub const MAX_INTERMEDIATE: usize = 1 << 20;
    /// Query or key/value heads: 8× LLaMA-3.1 405B's 128.
    pub const MAX_HEADS: usize = 1024;
    /// Per-head width: LLaMA uses 64..256; RoPE tables are `positions × head_dim / 2`.
    pub const MAX_HEAD_DIM: usize = 1024;
    /// Vocabulary: 2^22, 16× the largest LLaMA-family vocabulary (Gemma's 256k, LLaMA-3's 128k).
    pub const MAX_VOCAB: usize = 1 << 22;
    /// Context: 2^24 positions, 128× LLaMA-3.1's 131072. Nothing is sized by the declared
    /// context (the RoPE table covers the positions in use), so this only refuses nonsense.
    pub const MAX_CONTEXT: usize = 1 << 24;
}

#[derive(Deserialize)]
struct Raw {
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
    pad_token_id: Option<Value>,
}

struct Ctx<'a> {
    path: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, key: &str, msg: impl Into<String>) -> Error {
        Error::Config { path: self.path.to_path_buf(), key: key.into(), msg: msg.into() }
    }
    fn required(&self, key: &str, v: Option<usize>) -> Result<usize> {
        match v {
            Some(0) => Err(self.err(key, "must be > 0")),
            Some(v) => Ok(v),
            None => Err(self.err(key, "missing (required for a LLaMA model)")),
        }
    }
    /// [`Ctx::required`] and at most `max` (see [`bounds`]).
    fn bounded(&self, key: &str, v: Option<usize>, max: usize) -> Result<usize> {
        let v = self.required(key, v)?;
        if v > max {
            return Err(
                self.err(key, format!("{v} is above {max}, the largest this loader accepts (see config::bounds)"))
            );
        }
        Ok(v)
    }
    fn unsupported(&self, what: String) -> Error {
        Error::Unsupported { path: self.path.to_path_buf(), what }
    }
    /// A token id given as an integer, a list of integers, or null.
    fn token_ids(&self, key: &str, v: &Option<Value>) -> Result<Vec<u32>> {
        let as_id = |x: &Value| x.as_u64().filter(|&i| i <= u32::MAX as u64).map(|i| i as u32);
        match v {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Array(items)) => {
                items.iter().map(|x| as_id(x).ok_or_else(|| self.err(key, format!("{x} is not a token id")))).collect()
            }
            Some(x) => as_id(x).map(|i| vec![i]).ok_or_else(|| self.err(key, format!("{x} is not a token id"))),
        }
    }
    fn f64_field(&self, obj: &Value, key: &str, parent: &str) -> Result<f64> {
        obj.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| self.err(&format!("{parent}.{key}"), "missing or not a number"))
    }
}

impl LlamaConfig {
    /// Reads `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("config.json"))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses config text; `path` is only used to name the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| Error::json(path, &e))?;
        let c = Ctx { path };
        match raw.model_type.as_deref() {
            Some("llama") => {}
            Some(other) => {
                return Err(
                    c.unsupported(format!("model_type `{other}` (supported: llama — LLaMA-1/2/3, SmolLM2, TinyLlama)"))
                )
            }
            None => return Err(c.err("model_type", "missing")),
        }
        if let Some(act) = raw.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(c.unsupported(format!("hidden_act `{act}` (LLaMA uses silu)")));
        }
        for (key, v) in [("attention_bias", raw.attention_bias), ("mlp_bias", raw.mlp_bias)] {
            if v == Some(true) {
                return Err(c.unsupported(format!("{key} = true (LLaMA projections have no bias)")));
            }
        }
        let hidden_size = c.bounded("hidden_size", raw.hidden_size, bounds::MAX_HIDDEN)?;
        let heads = c.bounded("num_attention_heads", raw.num_attention_heads, bounds::MAX_HEADS)?;
        let kv_heads = c.bounded("num_key_value_heads", raw.num_key_value_heads.or(Some(heads)), bounds::MAX_HEADS)?;
        if heads % kv_heads != 0 {
            return Err(
                c.err("num_key_value_heads", format!("{kv_heads} does not divide num_attention_heads = {heads}"))
            );
        }
        let head_dim = match raw.head_dim {
            Some(d) => c.bounded("head_dim", Some(d), bounds::MAX_HEAD_DIM)?,
            None if hidden_size % heads == 0 => {
                c.bounded("head_dim", Some(hidden_size / heads), bounds::MAX_HEAD_DIM)?
            }
            None => {
                return Err(c.err(
                    "head_dim",
                    format!("missing, and hidden_size {hidden_size} is not a multiple of {heads} heads"),
                ))
            }
        };
        if head_dim % 2 != 0 {
            return Err(c.err("head_dim", format!("{head_dim} is odd; rotary embeddings need an even head dimension")));
        }
        let eps = raw.rms_norm_eps.unwrap_or(1e-6);
        if !(eps > 0.0 && eps < 1.0) {
            return Err(c.err("rms_norm_eps", format!("{eps} is outside (0, 1)")));
        }
        let (rope_theta, rope_scaling) = parse_rope(&c, &raw)?;
        let pad = c.token_ids("pad_token_id", &raw.pad_token_id)?;
        let bos = c.token_ids("bos_token_id", &raw.bos_token_id)?;
        Ok(LlamaConfig {
            hidden_size,
            intermediate_size: c.bounded("intermediate_size", raw.intermediate_size, bounds::MAX_INTERMEDIATE)?,
            num_hidden_layers: c.bounded("num_hidden_layers", raw.num_hidden_layers, bounds::MAX_LAYERS)?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            vocab_size: c.bounded("vocab_size", raw.vocab_size, bounds::MAX_VOCAB)?,
            rms_norm_eps: eps as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings: c.bounded(
                "max_position_embeddings",
                raw.max_position_embeddings.or(Some(2048)),
                bounds::MAX_CONTEXT,
            )?,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            bos_token_id: bos.first().copied(),
            eos_token_ids: c.token_ids("eos_token_id", &raw.eos_token_id)?,
            pad_token_id: pad.first().copied(),
        })
    }

    /// Path-free parse for tests and generated configs.
    pub fn parse_str(text: &str) -> Result<Self> {
        Self::parse(text, &PathBuf::from("config.json"))
    }
}

/// `(theta, llama3 scaling)` from either spelling. transformers-5's `rope_parameters` wins when
/// both are present (transformers 5 writes both, the legacy key for old readers).
fn parse_rope(c: &Ctx<'_>, raw: &Raw) -> Result<(f64, Option<Llama3Scaling>)> {
    let (params, key) = match (&raw.rope_parameters, &raw.rope_scaling) {
        (Some(p), _) if !p.is_null() => (Some(p), "rope_parameters"),
        (_, Some(s)) if !s.is_null() => (Some(s), "rope_scaling"),
        _ => (None, ""),
    };
    let theta_from_params = params.and_then(|p| p.get("rope_theta")).and_then(Value::as_f64);
    let theta = theta_from_params.or(raw.rope_theta).unwrap_or(10_000.0);
    if !(theta > 1.0) {
        return Err(c.err("rope_theta", format!("{theta} must be > 1")));
    }
    let Some(p) = params else { return Ok((theta, None)) };
    let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
    match kind {
        "default" => Ok((theta, None)),
        "llama3" => Ok((
            theta,
            Some(Llama3Scaling {
                factor: c.f64_field(p, "factor", key)?,
                low_freq_factor: c.f64_field(p, "low_freq_factor", key)?,
                high_freq_factor: c.f64_field(p, "high_freq_factor", key)?,
                original_max_position_embeddings: c.f64_field(p, "original_max_position_embeddings", key)?,
            }),
        )),
        other => Err(c.unsupported(format!("{key}.rope_type `{other}` (supported: default, llama3)"))),
    }
}

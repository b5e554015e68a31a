//! The model's tokenizer: `tokenizer.json` through the `tokenizers` crate, plus the EOS and
//! pad ids the HF folder declares.
//!
//! EOS is looked up, in order, in `tokenizer_config.json` (`eos_token`, what
//! `AutoTokenizer(...).eos_token_id` returns and LLM-Adapters appends), `generation_config.json`
//! and `config.json` (`eos_token_id`; a list takes its first id). Pad likewise from
//! `pad_token` / `pad_token_id`; a tokenizer with no pad falls back to EOS (padding is never
//! attended to nor learned, so its id only has to exist).
//!
//! Special tokens that the tokenizer's post-processor adds (a BOS, say) are handled explicitly:
//! at load we find which ids it puts before and after a sequence. Every encoding here is
//! `prefix + tokens(text)`: the BOS stays at the start of the prompt, and a post-processor's
//! suffix (an EOS some templates add) is left out because the pipeline appends EOS itself,
//! after the answer.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    eos_id: u32,
    pad_id: u32,
    eos_source: String,
    pad_source: String,
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    json_sha256: [u8; 32],
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn tok_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Tokenizer { path: path.to_path_buf(), msg: msg.into() }
}

/// A token named in tokenizer_config.json: a plain string or an AddedToken object.
fn token_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

fn id_value(v: &serde_json::Value) -> Option<u32> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().and_then(|x| u32::try_from(x).ok()),
        serde_json::Value::Array(a) => a.first().and_then(id_value),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            line: e.line() as u64,
            column: e.column() as u64,
            record: None,
            msg: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, "cannot read", e)),
    }
}

/// Parses a `tokenizer.json` in two steps. The JSON syntax is checked first: the tokenizers
/// crate deserialises some sections with `expect`, so a syntax error inside its `decoder`
/// panics instead of returning an error (found by the `tokenizer` fuzz target). From a parsed
/// value that path cannot fail, and a panic anywhere else in the library is still turned into
/// an error naming the file rather than a crash.
fn parse_tokenizer_json(file: &Path, bytes: &[u8]) -> Result<tokenizers::Tokenizer> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| tok_err(file, format!("not valid JSON: {e}")))?;
    let parsed = std::panic::catch_unwind(|| serde_json::from_value::<tokenizers::Tokenizer>(value));
    match parsed {
        Ok(Ok(tok)) => Ok(tok),
        Ok(Err(e)) => Err(tok_err(file, format!("not a valid tokenizer.json: {e}"))),
        Err(_) => Err(tok_err(file, "not a valid tokenizer.json: the tokenizers library panicked on it")),
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` from an HF model folder (or the file itself, with the configs
    /// looked up beside it).
    pub fn from_dir(dir_or_file: impl AsRef<Path>) -> Result<Self> {
        let p = dir_or_file.as_ref();
        let (dir, file) = if p.is_dir() {
            (p.to_path_buf(), p.join("tokenizer.json"))
        } else {
            (p.parent().map(Path::to_path_buf).unwrap_or_default(), p.to_path_buf())
        };
        let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, "cannot read tokenizer", e))?;
        let mut inner = parse_tokenizer_json(&file, &bytes)?;
        // The pipeline owns truncation and padding; a tokenizer.json that enables either
        // would change lengths silently.
        inner.with_truncation(None).map_err(|e| tok_err(&file, format!("cannot disable truncation: {e}")))?;
        inner.with_padding(None);

        let tcfg = read_json(&dir.join("tokenizer_config.json"))?;
        let gcfg = read_json(&dir.join("generation_config.json"))?;
        let mcfg = read_json(&dir.join("config.json"))?;

        let lookup_token = |key: &str| -> Result<Option<(u32, String)>> {
            let Some(name) = tcfg.as_ref().and_then(|c| c.get(key)).and_then(token_string) else {
                return Ok(None);
            };
            match inner.token_to_id(&name) {
                Some(id) => Ok(Some((id, format!("tokenizer_config.json {key} {name:?}")))),
                None => Err(tok_err(
                    &dir.join("tokenizer_config.json"),
                    format!("{key} {name:?} is not in the tokenizer's vocabulary"),
                )),
            }
        };
        let lookup_id = |cfg: &Option<serde_json::Value>, file: &str, key: &str| {
            cfg.as_ref().and_then(|c| c.get(key)).and_then(id_value).map(|id| (id, format!("{file} {key}")))
        };
        let (eos_id, eos_source) = match lookup_token("eos_token")? {
            Some(x) => x,
            None => lookup_id(&gcfg, "generation_config.json", "eos_token_id")
                .or_else(|| lookup_id(&mcfg, "config.json", "eos_token_id"))
                .ok_or_else(|| {
                    tok_err(
                        &dir,
                        "no EOS token: none of tokenizer_config.json (eos_token), \
                         generation_config.json or config.json (eos_token_id) names one",
                    )
                })?,
        };
        let (pad_id, pad_source) = match lookup_token("pad_token")? {
            Some(x) => x,
            None => lookup_id(&mcfg, "config.json", "pad_token_id")
                .or_else(|| lookup_id(&gcfg, "generation_config.json", "pad_token_id"))
                .unwrap_or((eos_id, "EOS (no pad token declared)".into())),
        };
        let vocab = inner.get_vocab_size(true) as u32;
        for (what, id) in [("EOS", eos_id), ("pad", pad_id)] {
            if id >= vocab {
                return Err(tok_err(&file, format!("{what} id {id} is outside the vocabulary ({vocab})")));
            }
        }

        // Which ids does the post-processor put around a sequence?
        let probe = "a";
        let with = inner.encode_fast(probe, true).map_err(|e| tok_err(&file, e.to_string()))?;
        let without = inner.encode_fast(probe, false).map_err(|e| tok_err(&file, e.to_string()))?;
        let (w, wo) = (with.get_ids(), without.get_ids());
        let (prefix, suffix) = match (0..=w.len().saturating_sub(wo.len())).find(|&i| w[i..].starts_with(wo)) {
            Some(i) if !wo.is_empty() => (w[..i].to_vec(), w[i + wo.len()..].to_vec()),
            _ => (Vec::new(), Vec::new()),
        };

        Ok(Tokenizer {
            inner,
            path: file,
            eos_id,
            pad_id,
            eos_source,
            pad_source,
            prefix,
            suffix,
            json_sha256: Sha256::digest(&bytes).into(),
        })
    }

    /// Ids of `text` as the model sees it at the start of a sequence: the post-processor's
    /// leading special tokens (BOS), then the text's own tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.prefix.clone();
        ids.extend_from_slice(self.encode_plain(text)?.as_slice());
        Ok(ids)
    }

    /// Ids of `text` alone, no special tokens added.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(|e| tok_err(&self.path, e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| tok_err(&self.path, e.to_string()))
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Where the EOS id came from (e.g. `tokenizer_config.json eos_token "<|im_end|>"`).
    pub fn eos_source(&self) -> &str {
        &self.eos_source
    }

    pub fn pad_source(&self) -> &str {
        &self.pad_source
    }

    /// Ids the post-processor puts before every sequence (a BOS), kept at the prompt's start.
    pub fn special_prefix(&self) -> &[u32] {
        &self.prefix
    }

    /// Ids the post-processor puts after a sequence; not used (EOS is appended explicitly).
    pub fn special_suffix(&self) -> &[u32] {
        &self.suffix
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Overrides the EOS id (e.g. from a run config).
    pub fn with_eos_id(mut self, id: u32) -> Self {
        self.eos_id = id;
        self.eos_source = "set by caller".into();
        self
    }

    pub fn with_pad_id(mut self, id: u32) -> Self {
        self.pad_id = id;
        self.pad_source = "set by caller".into();
        self
    }

    /// What identifies this tokenizer's behaviour for cache keys: tokenizer.json's bytes and
    /// the ids chosen around it.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.json_sha256);
        h.update(self.eos_id.to_le_bytes());
        h.update(self.pad_id.to_le_bytes());
        for id in &self.prefix {
            h.update(id.to_le_bytes());
        }
        h.finalize().into()
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

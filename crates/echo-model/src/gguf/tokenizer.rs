//! Rebuilds a HF `tokenizer.json` (plus `tokenizer_config.json`) from a GGUF vocabulary.
//!
//! GGUF keeps a byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`) as its token
//! strings (already in GPT-2's byte-to-unicode alphabet, `Ġ` for a space), its merge list
//! (`"a b"`, highest priority first), a type per token (1 normal, 2 unknown, 3 control,
//! 4 user-defined, 5 unused, 6 byte), and the *name* of the pre-tokenizer (`tokenizer.ggml.pre`)
//! rather than its definition: llama.cpp hard-codes the split regex for each name. So the
//! pre-tokenizer is the one part we must reconstruct from a table; a name we do not know is
//! refused rather than guessed, because a wrong split silently changes every tokenisation.
//! Control and user-defined tokens become added tokens (control ones `special`), so they are
//! matched whole before BPE runs, as in the HF originals.

use super::reader::{GgufFile, Value};
use crate::{Error, Result};
use serde_json::{json, Map, Value as Json};
use std::path::Path;

/// Token ids the tokenizer marks, `None` when the GGUF does not say.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    pub unk: Option<u32>,
}

/// What `import` writes about the tokenizer.
pub struct TokenizerFiles {
    pub tokenizer_json: Json,
    pub tokenizer_config: Json,
    pub special: SpecialIds,
    pub vocab_size: usize,
}

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizers we can rebuild, keyed by `tokenizer.ggml.pre`.
pub const KNOWN_PRE: &[&str] = &["default", "gpt-2", "gpt2", "smollm", "starcoder", "refact", "llama-bpe", "llama3"];

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// HF's pre-tokenizer for a llama.cpp pre-tokenizer name.
pub(crate) fn pre_tokenizer(pre: &str) -> Option<Json> {
    Some(match pre {
        // GPT-2's regex is what ByteLevel(use_regex) applies.
        "default" | "gpt-2" | "gpt2" => byte_level(true),
        // StarCoder's tokenizer (SmolLM, Refact): digits split one by one, then GPT-2.
        "smollm" | "starcoder" | "refact" => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]
        }),
        "llama-bpe" | "llama3" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                byte_level(false)
            ]
        }),
        _ => return None,
    })
}

/// Builds the tokenizer files from the GGUF metadata.
pub fn build(g: &GgufFile) -> Result<TokenizerFiles> {
    let unsupported = |what: String| Error::Unsupported { path: g.path.clone(), what };
    match g.opt_str("tokenizer.ggml.model")? {
        Some("gpt2") => {}
        Some(other) => {
            return Err(unsupported(format!(
                "tokenizer.ggml.model `{other}` (only `gpt2`, byte-level BPE, can be rebuilt as tokenizer.json; `llama` is SentencePiece)"
            )))
        }
        None => return Err(g.key_err("tokenizer.ggml.model", "missing: the GGUF carries no tokenizer")),
    }
    let pre_name = g.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
    let pre = pre_tokenizer(pre_name)
        .ok_or_else(|| unsupported(format!("tokenizer.ggml.pre `{pre_name}` (known: {})", KNOWN_PRE.join(", "))))?;
    let tokens = g.str_array("tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        return Err(g.key_err("tokenizer.ggml.tokens", "empty vocabulary"));
    }
    let types: Vec<i128> = match g.get("tokenizer.ggml.token_type") {
        Some(_) => g.int_array("tokenizer.ggml.token_type")?,
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(
            g.key_err("tokenizer.ggml.token_type", format!("{} entries for {} tokens", types.len(), tokens.len()))
        );
    }
    let merges = match g.get("tokenizer.ggml.merges") {
        Some(_) => g.str_array("tokenizer.ggml.merges")?,
        None => vec![],
    };
    let mut vocab = Map::new();
    for (id, t) in tokens.iter().enumerate() {
        if vocab.insert((*t).to_string(), json!(id)).is_some() {
            return Err(g.key_err("tokenizer.ggml.tokens", format!("token {t:?} appears twice (second at id {id})")));
        }
    }
    for (i, m) in merges.iter().enumerate() {
        // llama.cpp splits at the first space after the first character.
        let split = m.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(i, _)| i);
        let ok = split.is_some_and(|s| {
            let (a, b) = (&m[..s], &m[s + 1..]);
            vocab.contains_key(a) && vocab.contains_key(b) && vocab.contains_key(&format!("{a}{b}"))
        });
        if !ok {
            return Err(g.key_err(
                "tokenizer.ggml.merges",
                format!("merge #{i} {m:?} is not two vocabulary tokens separated by a space whose concatenation is in the vocabulary"),
            ));
        }
    }
    let id_key = |key: &str| -> Result<Option<u32>> {
        match g.opt_u64(key)? {
            Some(id) if (id as usize) < tokens.len() => Ok(Some(id as u32)),
            Some(id) => Err(g.key_err(key, format!("token id {id} is outside the vocabulary of {}", tokens.len()))),
            None => Ok(None),
        }
    };
    let special = SpecialIds {
        bos: id_key("tokenizer.ggml.bos_token_id")?,
        eos: id_key("tokenizer.ggml.eos_token_id")?,
        pad: id_key("tokenizer.ggml.padding_token_id")?,
        unk: id_key("tokenizer.ggml.unknown_token_id")?,
    };
    let marked: Vec<u32> = [special.bos, special.eos, special.pad, special.unk].into_iter().flatten().collect();
    let mut added = Vec::new();
    for (id, (&t, &ty)) in tokens.iter().zip(&types).enumerate() {
        // 3 = control, 4 = user-defined; the marked ids are special whatever their type.
        let is_marked = marked.contains(&(id as u32));
        if ty == 3 || ty == 4 || is_marked {
            added.push(json!({
                "id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": ty == 3 || is_marked
            }));
        }
    }
    let add_bos = g.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let add_eos = g.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let post_processor = match (add_bos.then_some(special.bos).flatten(), add_eos.then_some(special.eos).flatten()) {
        (None, None) => {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        }
        (bos, eos) => {
            let tok = |id: u32| tokens[id as usize].to_string();
            let part = |seq: &str, type_id: u32| -> Vec<Json> {
                let mut out = Vec::new();
                if let Some(b) = bos {
                    out.push(json!({"SpecialToken": {"id": tok(b), "type_id": type_id}}));
                }
                out.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
                if let Some(e) = eos {
                    out.push(json!({"SpecialToken": {"id": tok(e), "type_id": type_id}}));
                }
                out
            };
            let single = part("A", 0);
            let pair: Vec<Json> = part("A", 0).into_iter().chain(part("B", 1)).collect();
            let mut specials = Map::new();
            for id in [bos, eos].into_iter().flatten() {
                specials.insert(tok(id), json!({"id": tok(id), "ids": [id], "tokens": [tok(id)]}));
            }
            json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
        }
    };
    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        }
    });

    let name = |id: Option<u32>| id.map_or(Json::Null, |i| json!(tokens[i as usize]));
    let mut decoder = Map::new();
    for a in tokenizer_json["added_tokens"].as_array().expect("built above") {
        let mut entry = a.clone();
        let id = entry.as_object_mut().and_then(|o| o.remove("id")).expect("has id");
        decoder.insert(id.to_string(), entry);
    }
    let mut config = json!({
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "add_prefix_space": false,
        "added_tokens_decoder": decoder,
        "bos_token": name(special.bos),
        "eos_token": name(special.eos),
        "pad_token": name(special.pad),
        "unk_token": name(special.unk),
        "clean_up_tokenization_spaces": false,
        "tokenizer_class": "GPT2Tokenizer",
    });
    if let Some(ctx) = g.opt_u64("llama.context_length")? {
        config["model_max_length"] = json!(ctx);
    }
    if let Some(t) = g.opt_str("tokenizer.chat_template")? {
        config["chat_template"] = json!(t);
    }
    Ok(TokenizerFiles { tokenizer_json, tokenizer_config: config, special, vocab_size: tokens.len() })
}

// ---------------------------------------------------------------------------------------------
// The other way: a HF folder's tokenizer as GGUF metadata (for `export`). What `build` reads
// back from these keys is the tokenizer we started from, which the export tests check.

/// The `tokenizer.*` metadata of a GGUF file, built from a HF folder.
#[derive(Debug)]
pub struct GgufVocab {
    /// `(key, value)` pairs, in the order they are written.
    pub entries: Vec<(String, Value)>,
    /// The llama.cpp pre-tokenizer name chosen (`tokenizer.ggml.pre`).
    pub pre: &'static str,
    /// Ids the tokenizer leaves unassigned below the model's vocabulary size (written as
    /// unused `[PAD<id>]` tokens, as llama.cpp's converter does).
    pub padded: usize,
    pub special: SpecialIds,
}

/// The pre-tokenizers we can name for llama.cpp, canonical names first: each must rebuild,
/// through [`pre_tokenizer`], exactly the HF pre-tokenizer it was recognised from.
const EXPORT_PRE: &[&str] = &["gpt-2", "smollm", "llama-bpe"];

/// `v` without the `trim_offsets` keys: they only change the character offsets HF reports,
/// never the token ids, and checkpoints differ in them.
fn without_offsets(v: &Json) -> Json {
    match v {
        Json::Object(m) => Json::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != "trim_offsets")
                .map(|(k, v)| (k.clone(), without_offsets(v)))
                .collect(),
        ),
        Json::Array(a) => Json::Array(a.iter().map(without_offsets).collect()),
        other => other.clone(),
    }
}

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::json(path, &e))
}

/// Whether HF's post-processor adds `(bos, eos)`: a `TemplateProcessing` (alone or inside a
/// `Sequence`) whose single-sequence template starts / ends with a special token.
fn post_processor_adds(pp: &Json) -> (bool, bool) {
    match pp["type"].as_str() {
        Some("TemplateProcessing") => {
            let single = pp["single"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let special = |x: Option<&Json>| x.is_some_and(|x| x.get("SpecialToken").is_some());
            (special(single.first()), special(single.last()))
        }
        Some("Sequence") => pp["processors"]
            .as_array()
            .map(|ps| ps.iter().map(post_processor_adds).fold((false, false), |a, b| (a.0 || b.0, a.1 || b.1)))
            .unwrap_or((false, false)),
        _ => (false, false),
    }
}

/// Builds the GGUF tokenizer metadata from `dir`'s `tokenizer.json` (and
/// `tokenizer_config.json` when present) for a model whose embedding has `vocab_size` rows.
/// `fallback` holds config.json's special ids, used where tokenizer_config.json names none
/// (llama.cpp's converter reads the same two places in the same order).
///
/// Only byte-level BPE is exported (`tokenizer.ggml.model = "gpt2"`: SmolLM, LLaMA-3, GPT-2
/// style). A SentencePiece-style tokenizer (LLaMA-1/2, TinyLlama: `byte_fallback`, Metaspace)
/// is refused: llama.cpp's `llama` vocabulary wants SentencePiece scores, which tokenizer.json
/// does not carry.
pub fn from_hf(dir: &Path, vocab_size: usize, fallback: &SpecialIds) -> Result<GgufVocab> {
    let tok_path = dir.join("tokenizer.json");
    let tok = read_json(&tok_path)?;
    let unsupported = |what: String| Error::Unsupported { path: tok_path.clone(), what };
    let bad = |key: &str, msg: String| Error::Config { path: tok_path.clone(), key: key.into(), msg };
    let model = &tok["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(unsupported(format!(
            "tokenizer model type {} (only byte-level BPE tokenizers are exported to GGUF)",
            model["type"]
        )));
    }
    let metaspace = [&tok["pre_tokenizer"], &tok["decoder"]].iter().any(|v| v.to_string().contains("\"Metaspace\""));
    if model["byte_fallback"].as_bool() == Some(true) || metaspace {
        return Err(unsupported(
            "a SentencePiece-style tokenizer (byte_fallback / Metaspace, as LLaMA-1/2 and TinyLlama): GGUF export \
             supports byte-level BPE tokenizers (SmolLM2, LLaMA-3) only"
                .into(),
        ));
    }
    if !tok["normalizer"].is_null() {
        return Err(unsupported(format!(
            "a normalizer ({}): llama.cpp's BPE tokenizer applies none, so the ids would differ",
            tok["normalizer"]["type"]
        )));
    }
    let want = without_offsets(&tok["pre_tokenizer"]);
    let pre = EXPORT_PRE
        .iter()
        .copied()
        .find(|name| pre_tokenizer(name).map(|p| without_offsets(&p)) == Some(want.clone()))
        .ok_or_else(|| {
            let mut shown = tok["pre_tokenizer"].to_string();
            if shown.len() > 300 {
                shown = format!("{}...", &shown[..shown.char_indices().nth(300).map_or(shown.len(), |(i, _)| i)]);
            }
            unsupported(format!(
                "pre_tokenizer {shown}: not one llama.cpp can be told by name (GPT-2's ByteLevel, SmolLM's \
                 Digits + ByteLevel, LLaMA-3's Split + ByteLevel); a wrong name would change every tokenisation"
            ))
        })?;

    // Tokens by id: the BPE vocabulary, then the added tokens (which may extend it).
    let vocab = model["vocab"].as_object().ok_or_else(|| bad("model.vocab", "missing or not an object".into()))?;
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![1i32; vocab_size];
    let place = |t: &str, id: Option<u64>, key: &str, tokens: &mut Vec<Option<String>>| -> Result<usize> {
        let id = id.ok_or_else(|| bad(key, format!("token {t:?} has no integer id")))? as usize;
        if id >= vocab_size {
            return Err(bad(
                key,
                format!(
                    "token {t:?} has id {id}, outside the model's vocabulary of {vocab_size} (config.json vocab_size)"
                ),
            ));
        }
        match &tokens[id] {
            Some(other) if other != t => Err(bad(key, format!("id {id} is both {other:?} and {t:?}"))),
            _ => {
                tokens[id] = Some(t.to_string());
                Ok(id)
            }
        }
    };
    for (t, id) in vocab {
        place(t, id.as_u64(), "model.vocab", &mut tokens)?;
    }
    for a in tok["added_tokens"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let t = a["content"].as_str().ok_or_else(|| bad("added_tokens", format!("entry {a} has no content")))?;
        let id = place(t, a["id"].as_u64(), "added_tokens", &mut tokens)?;
        // Special added tokens are control tokens (matched whole, never printed); the others
        // user-defined (matched whole, printed).
        types[id] = if a["special"].as_bool() == Some(true) { 3 } else { 4 };
    }
    let mut padded = 0;
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| {
            t.unwrap_or_else(|| {
                padded += 1;
                types[id] = 5;
                format!("[PAD{id}]")
            })
        })
        .collect();
    let mut ids = std::collections::HashMap::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        if let Some(first) = ids.insert(t.as_str(), id as u32) {
            return Err(bad("model.vocab", format!("token {t:?} appears twice (ids {first} and {id})")));
        }
    }

    let merges: Vec<Value> = model["merges"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .enumerate()
        .map(|(i, m)| {
            // tokenizers writes merges as "a b" (older) or ["a", "b"] (newer); GGUF wants "a b".
            let pair = match m {
                Json::String(s) => Some(s.clone()),
                Json::Array(p) if p.len() == 2 => p[0].as_str().zip(p[1].as_str()).map(|(a, b)| format!("{a} {b}")),
                _ => None,
            };
            pair.map(Value::String).ok_or_else(|| bad("model.merges", format!("merge #{i} {m} is not a pair")))
        })
        .collect::<Result<_>>()?;

    let cfg_path = dir.join("tokenizer_config.json");
    let tcfg = if cfg_path.exists() { read_json(&cfg_path)? } else { Json::Null };
    let named = |key: &str| -> Result<Option<u32>> {
        let v = &tcfg[key];
        match v.as_str().or_else(|| v["content"].as_str()) {
            None => Ok(None),
            Some(name) => ids.get(name).map(|&id| Some(id)).ok_or_else(|| Error::Config {
                path: cfg_path.clone(),
                key: key.into(),
                msg: format!("{name:?} is not a token of tokenizer.json"),
            }),
        }
    };
    let check = |id: Option<u32>, what: &str| -> Result<Option<u32>> {
        match id {
            Some(i) if i as usize >= vocab_size => Err(Error::Config {
                path: dir.join("config.json"),
                key: what.into(),
                msg: format!("token id {i} is outside the vocabulary of {vocab_size}"),
            }),
            _ => Ok(id),
        }
    };
    let special = SpecialIds {
        bos: named("bos_token")?.map_or_else(|| check(fallback.bos, "bos_token_id"), |i| Ok(Some(i)))?,
        eos: named("eos_token")?.map_or_else(|| check(fallback.eos, "eos_token_id"), |i| Ok(Some(i)))?,
        pad: named("pad_token")?.map_or_else(|| check(fallback.pad, "pad_token_id"), |i| Ok(Some(i)))?,
        unk: named("unk_token")?,
    };
    let (pp_bos, pp_eos) = post_processor_adds(&tok["post_processor"]);
    let add_bos = tcfg["add_bos_token"].as_bool().unwrap_or(pp_bos);
    let add_eos = tcfg["add_eos_token"].as_bool().unwrap_or(pp_eos);
    let chat_template = match &tcfg["chat_template"] {
        Json::String(s) => Some(s.clone()),
        // A list of named templates (transformers 4.4x): llama.cpp uses the default one.
        Json::Array(list) => {
            list.iter().find(|t| t["name"] == "default").and_then(|t| t["template"].as_str()).map(str::to_string)
        }
        _ => {
            // transformers 5 keeps it beside the config.
            let jinja = dir.join("chat_template.jinja");
            if jinja.exists() {
                Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?)
            } else {
                None
            }
        }
    };

    let mut entries: Vec<(String, Value)> = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(8, tokens.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.token_type".into(), Value::Array(5, types.into_iter().map(Value::I32).collect())),
        ("tokenizer.ggml.merges".into(), Value::Array(8, merges)),
    ];
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", special.bos),
        ("tokenizer.ggml.eos_token_id", special.eos),
        ("tokenizer.ggml.padding_token_id", special.pad),
        ("tokenizer.ggml.unknown_token_id", special.unk),
    ] {
        if let Some(id) = id {
            entries.push((key.into(), Value::U32(id)));
        }
    }
    // Written even when false: llama.cpp's default for a BPE vocabulary depends on its version.
    entries.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)));
    entries.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(add_eos)));
    if let Some(t) = chat_template {
        entries.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    Ok(GgufVocab { entries, pre, padded, special })
}

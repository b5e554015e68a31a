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

use super::reader::GgufFile;
use crate::{Error, Result};
use serde_json::{json, Map, Value as Json};

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
fn pre_tokenizer(pre: &str) -> Option<Json> {
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

//! Tokenizer loading (EOS/pad lookup, post-processor specials) and the boundary rule.

mod common;

use common::{fixture_dir, tokenizer};
use echo_data::{encode_example, EncodeConfig, Encoded, Record, Template, Tokenizer};
use serde_json::json;

fn record() -> Record {
    Record {
        instruction: "Please answer the following question with true or false, question: is the sky blue?\n\nAnswer format: true/false".into(),
        input: String::new(),
        output: "the correct answer is true".into(),
        answer: Some("true".into()),
    }
}

fn kept(e: Encoded) -> echo_data::Example {
    match e {
        Encoded::Kept(x) => x,
        Encoded::Dropped(d) => panic!("dropped {d:?}"),
    }
}

/// A folder with the fixture's tokenizer.json (optionally edited) and the given configs.
fn folder(edit: impl FnOnce(&mut serde_json::Value), configs: &[(&str, serde_json::Value)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let mut tj: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture_dir().join("tokenizer.json")).unwrap()).unwrap();
    edit(&mut tj);
    std::fs::write(d.path().join("tokenizer.json"), serde_json::to_vec(&tj).unwrap()).unwrap();
    for (name, v) in configs {
        std::fs::write(d.path().join(name), serde_json::to_vec(v).unwrap()).unwrap();
    }
    d
}

#[test]
fn fixture_eos_and_pad_come_from_tokenizer_config() {
    let tok = tokenizer();
    assert_eq!(Some(tok.eos_id()), tok.token_to_id("<|im_end|>"));
    assert_eq!(Some(tok.pad_id()), tok.token_to_id("<|endoftext|>"));
    assert_ne!(tok.eos_id(), tok.pad_id());
    assert!(tok.eos_source().contains("tokenizer_config.json"), "{}", tok.eos_source());
    assert!(tok.special_prefix().is_empty(), "the fixture adds no BOS");
    // A file path works as well as the folder.
    let t2 = Tokenizer::from_dir(fixture_dir().join("tokenizer.json")).unwrap();
    assert_eq!((t2.eos_id(), t2.pad_id()), (tok.eos_id(), tok.pad_id()));
}

#[test]
fn eos_falls_back_to_generation_config_then_config() {
    let d = folder(|_| {}, &[("config.json", json!({"eos_token_id": 2, "pad_token_id": 0}))]);
    let t = Tokenizer::from_dir(d.path()).unwrap();
    assert_eq!((t.eos_id(), t.pad_id()), (2, 0));
    assert!(t.eos_source().starts_with("config.json"));
    let d = folder(
        |_| {},
        &[("config.json", json!({"eos_token_id": 2})), ("generation_config.json", json!({"eos_token_id": [1, 2]}))],
    );
    let t = Tokenizer::from_dir(d.path()).unwrap();
    assert_eq!(t.eos_id(), 1, "generation_config.json wins over config.json; a list gives its first id");
    assert_eq!(t.pad_id(), 1, "no pad declared: pad = EOS");
    let d = folder(|_| {}, &[]);
    let msg = Tokenizer::from_dir(d.path()).unwrap_err().to_string();
    assert!(msg.contains("no EOS token"), "{msg}");
    let d = folder(|_| {}, &[("tokenizer_config.json", json!({"eos_token": "</s>"}))]);
    let msg = Tokenizer::from_dir(d.path()).unwrap_err().to_string();
    assert!(msg.contains("\"</s>\" is not in the tokenizer's vocabulary"), "{msg}");
    let d = folder(|_| {}, &[("config.json", json!({"eos_token_id": 100000}))]);
    assert!(Tokenizer::from_dir(d.path()).is_err());
    let d = folder(|t| t["model"] = json!(5), &[("config.json", json!({"eos_token_id": 2}))]);
    let msg = Tokenizer::from_dir(d.path()).unwrap_err().to_string();
    assert!(msg.contains("tokenizer.json") && msg.contains("not a valid tokenizer.json"), "{msg}");
}

fn template_processing(single: serde_json::Value) -> impl FnOnce(&mut serde_json::Value) {
    move |t| {
        t["post_processor"] = json!({
            "type": "TemplateProcessing",
            "single": single,
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {
                "<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]},
                "<|im_end|>": {"id": "<|im_end|>", "ids": [2], "tokens": ["<|im_end|>"]}
            }
        });
    }
}

#[test]
fn a_bos_added_by_the_post_processor_stays_at_the_start_of_the_prompt() {
    let cfg_files = [("tokenizer_config.json", json!({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}))];
    let plain = tokenizer();
    let d = folder(
        template_processing(
            json!([{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]),
        ),
        &cfg_files,
    );
    let tok = Tokenizer::from_dir(d.path()).unwrap();
    assert_eq!(tok.special_prefix(), &[1]);
    let tpl = Template::alpaca();
    let cfg = EncodeConfig::default();
    let e = kept(encode_example(&tok, &tpl, &record(), &cfg).unwrap());
    let p = kept(encode_example(&plain, &tpl, &record(), &cfg).unwrap());
    assert_eq!(e.input_ids[0], 1);
    assert_eq!(e.input_ids[1..], p.input_ids[..], "BOS once, then exactly the plain tokens");
    assert_eq!(e.prompt_len, p.prompt_len + 1, "BOS counts as prompt");
    assert_eq!(e.labels()[0], -100);
    assert_eq!(e.prompt_mask()[0], 1);
    assert!(!e.boundary_merge);

    // A post-processor that also appends EOS: the pipeline still ends with exactly one EOS.
    let d = folder(
        template_processing(json!([
            {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "<|im_end|>", "type_id": 0}}
        ])),
        &cfg_files,
    );
    let tok = Tokenizer::from_dir(d.path()).unwrap();
    assert_eq!((tok.special_prefix(), tok.special_suffix()), (&[1u32][..], &[2u32][..]));
    let e2 = kept(encode_example(&tok, &tpl, &record(), &cfg).unwrap());
    assert_eq!(e2, e);
    assert_eq!(e2.input_ids.iter().filter(|&&t| t == 2).count(), 1);
}

#[test]
fn a_merge_across_the_boundary_keeps_the_prompt_tokenisation() {
    let tok = tokenizer();
    // A prompt ending in a space: byte-level BPE attaches the space to the next word, so
    // tokens(prompt) ends with a lone " " that tokens(prompt + output) does not have.
    let tpl = Template::new("colon-space", "{instruction} {input}\nAnswer: ", "{instruction}\nAnswer: ").unwrap();
    let r = record();
    let prompt = tpl.prompt(&r);
    let prompt_ids = tok.encode(&prompt).unwrap();
    let full_ids = tok.encode(&tpl.full_text(&r)).unwrap();
    assert!(!full_ids.starts_with(&prompt_ids), "premise: the merge crosses the boundary");

    let e = kept(encode_example(&tok, &tpl, &r, &EncodeConfig::default()).unwrap());
    assert!(e.boundary_merge);
    assert_eq!(e.input_ids[..e.prompt_len], prompt_ids[..]);
    let mut answer = tok.encode_plain(&r.output).unwrap();
    answer.push(tok.eos_id());
    assert_eq!(e.input_ids[e.prompt_len..], answer[..]);
    assert_eq!(tok.decode(&e.input_ids, false).unwrap(), format!("{}{}<|im_end|>", prompt, r.output));

    // The Alpaca template ends in a newline: no merge.
    let a = kept(encode_example(&tok, &Template::alpaca(), &r, &EncodeConfig::default()).unwrap());
    assert!(!a.boundary_merge);
}

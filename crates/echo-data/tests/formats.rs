//! The data formats besides LLM-Adapters records: chat (the model's chat template),
//! prompt/completion and plain text; format mismatches; custom format strings; the size limit
//! checked before tokenising.

mod common;

use std::path::{Path, PathBuf};

use common::{file_with, fixture_dir};
use echo_data::{
    encode_file, load_dataset, Batch, Cache, CacheStatus, ChatTemplate, DropReason, EncodeConfig, Example, Message,
    Progress, Template, Tokenizer, IGNORE_INDEX,
};

/// SmolLM2-135M-Instruct's chat template (see tests/data/README.md).
fn smollm2_template() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/smollm2_chat_template.jinja"))
        .unwrap()
}

/// A model folder: the fixture's tokenizer with a tokenizer_config.json that carries
/// `chat_template` (the fixture's own has none).
fn chat_folder(template: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(fixture_dir().join("tokenizer.json"), d.path().join("tokenizer.json")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture_dir().join("tokenizer_config.json")).unwrap()).unwrap();
    assert!(cfg.get("chat_template").is_none(), "the fixture has no chat template of its own");
    cfg["chat_template"] = template.into();
    std::fs::write(d.path().join("tokenizer_config.json"), serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    d
}

fn no_cutoff() -> EncodeConfig {
    EncodeConfig { cutoff: None, ..Default::default() }
}

/// The learned tokens, as decoded runs of consecutive learned positions.
fn learned_runs(tok: &Tokenizer, e: &Example) -> Vec<String> {
    let labels = e.labels();
    let mut runs = Vec::new();
    let mut i = 0;
    while i < e.len() {
        if labels[i] == IGNORE_INDEX {
            i += 1;
            continue;
        }
        let s = i;
        while i < e.len() && labels[i] != IGNORE_INDEX {
            i += 1;
        }
        runs.push(tok.decode(&e.input_ids[s..i], false).unwrap());
    }
    runs
}

/// Labels and prompt mask agree: the echo pools exactly the unlearned tokens before the first
/// learned one (a chat's later user turns are unlearned but not pooled: the sample-level echo
/// would carry them back to the earlier answers).
fn assert_mask_is_complement(e: &Example) {
    let labels = e.labels();
    let first_learned = labels.iter().position(|&l| l != IGNORE_INDEX).unwrap_or(labels.len());
    for (t, (&l, &m)) in labels.iter().zip(&e.prompt_mask()).enumerate() {
        assert_eq!(m == 1, l == IGNORE_INDEX && t < first_learned, "position {t}");
    }
}

#[test]
fn smollm2_template_renders_as_the_model_does() {
    let dir = chat_folder(&smollm2_template());
    let chat = ChatTemplate::from_dir(dir.path()).unwrap();
    // What the model's template gives for one user turn with the generation prompt (as
    // `apply_chat_template(..., add_generation_prompt=True)` and llama.cpp's /apply-template
    // print it): the default system prompt is injected.
    assert_eq!(
        chat.render(&[Message::new("user", "Hello")], true).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        chat.render(&[Message::new("system", "Be brief."), Message::new("user", "Hi"), Message::new("assistant", "Yo")], false)
            .unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n"
    );
}

#[test]
fn chat_learns_every_assistant_turn_and_its_end_of_turn_only() {
    let dir = chat_folder(&smollm2_template());
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let t = Template::from_config("chat", None, None, dir.path()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let rec = serde_json::json!({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "It is 6."},
    ]});
    let no_system = serde_json::json!({"messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there"},
        {"role": "user", "content": "Bye"},
    ]});
    let path = file_with(&data, "chat.jsonl", format!("{rec}\n{no_system}\n").as_bytes());
    let ds = encode_file(&path, &tok, &t, &no_cutoff(), Progress::Hidden).unwrap();
    assert_eq!(ds.examples.len(), 2);

    let e = &ds.examples[0];
    // The sequence is the conversation as the template writes it, up to the last learned token.
    let text = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n\
                <|im_start|>assistant\n4.<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n\
                <|im_start|>assistant\nIt is 6.<|im_end|>";
    assert_eq!(e.input_ids, tok.encode_plain(text).unwrap());
    assert_eq!(learned_runs(&tok, e), ["4.<|im_end|>", "It is 6.<|im_end|>"]);
    assert_eq!(*e.input_ids.last().unwrap(), tok.eos_id());
    assert_eq!(e.masked.len(), 1, "one unlearned stretch between the two turns");
    assert_eq!(tok.decode(&e.input_ids[..e.prompt_len], false).unwrap().len(), text.find("4.").unwrap());
    assert_mask_is_complement(e);
    // The second user turn is unlearned but not pooled by the echo.
    let (a, b) = e.masked[0];
    assert!(e.prompt_mask()[a as usize..b as usize].iter().all(|&m| m == 0), "a later user turn is not pooled");
    assert_eq!(e.prompt_mask().iter().filter(|&&m| m == 1).count(), e.prompt_len);
    assert_eq!(e.answer_len(), e.labels().iter().filter(|&&l| l != IGNORE_INDEX).count());

    // Without a system message the template's default one is part of the (masked) prompt;
    // the trailing user turn is not learned and is left out.
    let e = &ds.examples[1];
    let head = tok.decode(&e.input_ids[..e.prompt_len], false).unwrap();
    assert!(head.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"), "{head}");
    assert_eq!(learned_runs(&tok, e), ["Hello there<|im_end|>"]);
    assert_eq!(*e.input_ids.last().unwrap(), tok.eos_id());
    assert_mask_is_complement(e);

    // A batch carries the same masks.
    let b = Batch::from_examples(&[&ds.examples[0], &ds.examples[1]], tok.pad_id());
    for (row, e) in ds.examples.iter().enumerate() {
        let o = row * b.seq_len;
        assert_eq!(b.labels[o..o + e.len()], e.labels()[..]);
        assert_eq!(b.prompt_mask[o..o + e.len()], e.prompt_mask()[..]);
        assert_eq!(b.prompt_lengths[row], e.prompt_mask().iter().filter(|&&m| m == 1).count());
    }
    assert_eq!(ds.report.answer_tokens, ds.examples.iter().map(Example::answer_len).sum::<usize>());
    assert_eq!(ds.report.prompt_tokens + ds.report.answer_tokens, ds.report.tokens);
}

#[test]
fn chat_truncation_keeps_masks_inside_the_cutoff() {
    let dir = chat_folder(&smollm2_template());
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let t = Template::from_config("chat", None, None, dir.path()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let rec = serde_json::json!({"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d d d d d d d d d d"},
    ]});
    let path = file_with(&data, "c.jsonl", rec.to_string().as_bytes());
    let full = encode_file(&path, &tok, &t, &no_cutoff(), Progress::Hidden).unwrap().examples.remove(0);
    let cutoff = full.masked[0].1 as usize + 2;
    let cfg = EncodeConfig { cutoff: Some(cutoff), ..Default::default() };
    let cut = encode_file(&path, &tok, &t, &cfg, Progress::Hidden).unwrap().examples.remove(0);
    assert!(cut.truncated);
    assert_eq!(cut.input_ids[..], full.input_ids[..cutoff]);
    assert_eq!(cut.labels()[..], full.labels()[..cutoff]);
    assert_eq!(cut.prompt_mask()[..], full.prompt_mask()[..cutoff]);
}

#[test]
fn a_template_that_is_not_prefix_stable_is_an_error_naming_the_record() {
    // Writes the number of messages first: a conversation's head renders differently alone.
    let dir = chat_folder(
        "{{ messages|length }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
    );
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let t = Template::from_config("chat", None, None, dir.path()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let rec =
        serde_json::json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]});
    let path = file_with(&data, "c.jsonl", rec.to_string().as_bytes());
    let err = encode_file(&path, &tok, &t, &no_cutoff(), Progress::Hidden).unwrap_err().to_string();
    assert!(err.contains("c.jsonl") && err.contains("record [0]"), "{err}");
    assert!(err.contains("not prefix-stable at messages[1]"), "{err}");
}

#[test]
fn chat_needs_a_chat_template() {
    let err = Template::from_config("chat", None, None, &fixture_dir()).unwrap_err().to_string();
    assert!(err.contains("tokenizer_config.json") && err.contains("no chat_template"), "{err}");
}

#[test]
fn completion_learns_the_completion_and_eos() {
    let tok = common::tokenizer();
    let data = tempfile::tempdir().unwrap();
    let path = file_with(&data, "pc.jsonl", b"{\"prompt\": \"Q: 2+2?\\nA:\", \"completion\": \" 4\"}\n");
    let ds = encode_file(&path, &tok, &Template::completion(), &no_cutoff(), Progress::Hidden).unwrap();
    let e = &ds.examples[0];
    assert_eq!(e.input_ids[..e.prompt_len], tok.encode("Q: 2+2?\nA:").unwrap()[..]);
    let mut answer = tok.decode(&e.input_ids[e.prompt_len..], false).unwrap();
    assert!(answer.ends_with("<|im_end|>"), "{answer}");
    answer.truncate(answer.len() - "<|im_end|>".len());
    assert_eq!(answer, " 4");
    assert!(e.labels()[..e.prompt_len].iter().all(|&l| l == IGNORE_INDEX));
    assert!(e.labels()[e.prompt_len..].iter().all(|&l| l != IGNORE_INDEX));
    assert_mask_is_complement(e);
}

#[test]
fn plain_text_learns_every_token() {
    let tok = common::tokenizer();
    let data = tempfile::tempdir().unwrap();
    let path = file_with(&data, "t.jsonl", b"{\"text\": \"The cat sat on the mat.\"}\n{\"text\": \"Dogs bark.\"}\n");
    let ds = encode_file(&path, &tok, &Template::plain(), &no_cutoff(), Progress::Hidden).unwrap();
    assert_eq!(ds.examples.len(), 2);
    let e = &ds.examples[0];
    let mut want = tok.encode("The cat sat on the mat.").unwrap();
    want.push(tok.eos_id());
    assert_eq!(e.input_ids, want);
    assert_eq!(e.labels(), want.iter().map(|&t| t as i64).collect::<Vec<_>>());
    assert!(e.prompt_mask().iter().all(|&m| m == 0), "nothing unlearned to pool over");
    assert_eq!(ds.report.prompt_tokens, 0);
    assert_eq!(ds.report.answer_tokens, ds.report.tokens);
}

#[test]
fn a_record_of_another_shape_is_refused_naming_the_fields() {
    let dir = chat_folder(&smollm2_template());
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let chat_file = file_with(
        &data,
        "chat.jsonl",
        b"{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}\n",
    );
    let alpaca_file = file_with(&data, "a.json", b"[{\"instruction\": \"x\", \"output\": \"y\"}]");

    // Chat records under the Alpaca template.
    let err =
        encode_file(&chat_file, &tok, &Template::alpaca(), &no_cutoff(), Progress::Hidden).unwrap_err().to_string();
    assert!(err.contains("chat.jsonl") && err.contains("record [0]"), "{err}");
    assert!(err.contains("fields `messages`") && err.contains("template = \"chat\""), "{err}");

    // Alpaca records under each other template.
    let chat = Template::from_config("chat", None, None, dir.path()).unwrap();
    for t in [chat, Template::completion(), Template::plain()] {
        let err = encode_file(&alpaca_file, &tok, &t, &no_cutoff(), Progress::Hidden).unwrap_err().to_string();
        assert!(err.contains("a.json") && err.contains("record [0]"), "{err}");
        assert!(err.contains(&format!("template `{}` expects", t.name)), "{err}");
        assert!(err.contains("fields `instruction`, `output`") && err.contains("template = \"alpaca\""), "{err}");
    }

    // A bad message.
    let bad = file_with(&data, "bad.jsonl", b"{\"messages\": [{\"role\": \"robot\", \"content\": \"a\"}]}\n");
    let t = Template::from_config("chat", None, None, dir.path()).unwrap();
    let err = encode_file(&bad, &tok, &t, &no_cutoff(), Progress::Hidden).unwrap_err().to_string();
    assert!(err.contains("bad.jsonl") && err.contains("record [0]") && err.contains("messages[0]"), "{err}");
    // No assistant turn: nothing to learn.
    let none = file_with(&data, "none.jsonl", b"{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n");
    let err = encode_file(&none, &tok, &t, &no_cutoff(), Progress::Hidden).unwrap_err().to_string();
    assert!(err.contains("record [0]") && err.contains("no assistant message"), "{err}");
}

#[test]
fn custom_format_strings() {
    let tok = common::tokenizer();
    let fx = fixture_dir();
    let t = Template::from_config("custom", Some("Q: {instruction}\nA: "), None, &fx).unwrap();
    let data = tempfile::tempdir().unwrap();
    let path = file_with(&data, "a.json", b"[{\"instruction\": \"Hi?\", \"output\": \"yes\"}]");
    let e = encode_file(&path, &tok, &t, &no_cutoff(), Progress::Hidden).unwrap().examples.remove(0);
    assert_eq!(tok.decode(&e.input_ids[..e.prompt_len], false).unwrap(), "Q: Hi?\nA: ");
    // A record with an input needs the with-input form.
    let with = file_with(&data, "b.json", b"[{\"instruction\": \"Hi?\", \"input\": \"ctx\", \"output\": \"yes\"}]");
    let err = encode_file(&with, &tok, &t, &no_cutoff(), Progress::Hidden).unwrap_err().to_string();
    assert!(err.contains("b.json") && err.contains("record [0]") && err.contains("prompt_format_with_input"), "{err}");
    let t2 =
        Template::from_config("custom", Some("Q: {instruction}\nA: "), Some("Q: {instruction}\n{input}\nA: "), &fx)
            .unwrap();
    let e = encode_file(&with, &tok, &t2, &no_cutoff(), Progress::Hidden).unwrap().examples.remove(0);
    assert_eq!(tok.decode(&e.input_ids[..e.prompt_len], false).unwrap(), "Q: Hi?\nctx\nA: ");
    // Validation.
    for (f, fi) in [("no placeholder", None), ("{instruction}", Some("{instruction} only")), ("{input}", None)] {
        let err = Template::from_config("custom", Some(f), fi, &fx).unwrap_err().to_string();
        assert!(err.contains("{instruction}"), "{err}");
    }
    let err = Template::from_config("custom", None, None, &fx).unwrap_err().to_string();
    assert!(err.contains("prompt_format"), "{err}");
    let err = Template::from_config("alpaca", Some("{instruction}"), None, &fx).unwrap_err().to_string();
    assert!(err.contains("custom"), "{err}");
    let err = Template::from_config("vicuna", None, None, &fx).unwrap_err().to_string();
    assert!(err.contains("alpaca, chat, completion, plain, custom"), "{err}");
}

#[test]
fn a_huge_record_is_dropped_before_tokenising() {
    let tok = common::tokenizer();
    let data = tempfile::tempdir().unwrap();
    let path: PathBuf = data.path().join("huge.jsonl");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        writeln!(f, "{{\"instruction\": \"short\", \"output\": \"fine\"}}").unwrap();
        write!(f, "{{\"instruction\": \"long\", \"output\": \"").unwrap();
        let chunk = "abc def ".repeat(1024);
        for _ in 0..(20 << 20) / chunk.len() {
            f.write_all(chunk.as_bytes()).unwrap();
        }
        writeln!(f, "\"}}").unwrap();
        writeln!(f, "{{\"instruction\": \"after\", \"output\": \"ok\"}}").unwrap();
    }
    let cfg = EncodeConfig { cutoff: Some(256), ..Default::default() };
    assert_eq!(cfg.max_record_bytes(), 256 * 64);
    let t0 = std::time::Instant::now();
    let ds = encode_file(&path, &tok, &Template::alpaca(), &cfg, Progress::Hidden).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(ds.report.records, 3);
    assert_eq!(ds.report.examples, 2);
    assert_eq!((ds.report.dropped, ds.report.dropped_too_large), (1, 1));
    assert_eq!(ds.dropped[0].record, 1);
    assert_eq!(ds.dropped[0].reason, DropReason::TooLarge);
    assert!(ds.dropped[0].tokens > 20 << 19, "the dropped record's size in bytes: {:?}", ds.dropped[0]);
    assert_eq!(ds.report.answers_cut(), 1, "its answer is lost: counted against max_truncated_fraction");
    assert!(secs < 30.0, "reading past it took {secs:.1} s");
    // The same for the other formats (here: plain text), and with no cutoff the fixed cap holds.
    assert_eq!(EncodeConfig { cutoff: None, ..Default::default() }.max_record_bytes(), echo_data::MAX_RECORD_BYTES);
    let txt = file_with(
        &data,
        "t.jsonl",
        format!("{{\"text\": \"{}\"}}\n{{\"text\": \"ok\"}}\n", "x".repeat(5 << 20)).as_bytes(),
    );
    let ds = encode_file(&txt, &tok, &Template::plain(), &no_cutoff(), Progress::Hidden).unwrap();
    assert_eq!((ds.report.examples, ds.report.dropped_too_large), (1, 1));
}

#[test]
fn chat_examples_round_trip_through_the_cache() {
    let dir = chat_folder(&smollm2_template());
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let t = Template::from_config("chat", None, None, dir.path()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let rec = serde_json::json!({"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"},
    ]});
    let path = file_with(&data, "c.jsonl", format!("{rec}\n{rec}\n").as_bytes());
    let cache = Cache::new(data.path().join("cache"));
    let cfg = EncodeConfig::default();
    let (a, s1) = load_dataset(&path, &tok, &t, &cfg, Some(&cache), Progress::Hidden).unwrap();
    let (b, s2) = load_dataset(&path, &tok, &t, &cfg, Some(&cache), Progress::Hidden).unwrap();
    assert!(matches!(s1, CacheStatus::Miss(_)) && matches!(s2, CacheStatus::Hit(_)), "{s1:?} {s2:?}");
    assert_eq!(a, b);
    assert!(!b.examples[0].masked.is_empty());
    // Another chat template is another cache entry.
    let other = chat_folder(&smollm2_template().replace("helpful", "useful"));
    let t2 = Template::from_config("chat", None, None, other.path()).unwrap();
    assert_ne!(Cache::key(&[0; 32], &tok, &t, &cfg), Cache::key(&[0; 32], &tok, &t2, &cfg));
}

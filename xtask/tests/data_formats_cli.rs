//! The data formats as a user meets them, through the real binary: `data --template ... --show`
//! marks exactly the learned tokens of each format, a record of another shape is refused,
//! `train` runs end to end on a chat (messages) file, and `generate --chat` prompts with the
//! model's own chat template.

use assert_cmd::Command;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    echo_testdata::tiny_llama_a()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// SmolLM2-135M-Instruct's chat template (crates/echo-data/tests/data/README.md).
fn smollm2_template() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/echo-data/tests/data/smollm2_chat_template.jinja");
    std::fs::read_to_string(p).unwrap()
}

/// The tiny model in `dir/model`, its tokenizer_config.json given SmolLM2's chat template
/// (the fixture's own has none).
fn chat_model(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    std::fs::create_dir_all(&m).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture().join(f), m.join(f)).unwrap();
    }
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(fixture().join("tokenizer_config.json")).unwrap()).unwrap();
    cfg["chat_template"] = smollm2_template().into();
    std::fs::write(m.join("tokenizer_config.json"), serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    m
}

fn xtask(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("xtask").unwrap();
    c.current_dir(dir).env("ECHO_LORA_CACHE", dir.join("cache")).env_remove("RUST_BACKTRACE");
    c
}

fn write_jsonl(dir: &Path, name: &str, records: &[Value]) -> PathBuf {
    let p = dir.join(name);
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&p, text).unwrap();
    p
}

fn conversation(k: usize) -> Value {
    json!({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": format!("What is {k}+{k}?")},
        {"role": "assistant", "content": format!("{}.", 2 * k)},
        {"role": "user", "content": "And doubled?"},
        {"role": "assistant", "content": format!("It is {}.", 4 * k)},
    ]})
}

/// `data --json --show N` with `args`: the shown examples' learned texts (the unmasked
/// segments joined) and masked texts, per example.
fn shown(dir: &Path, args: &[&str]) -> Vec<(String, String)> {
    let out = xtask(dir).arg("data").args(args).args(["--json", "--show", "9", "--no-cache"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["shown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let segs = e["segments"].as_array().unwrap();
            let join = |masked: bool| -> String {
                segs.iter().filter(|s| s["masked"] == masked).map(|s| s["text"].as_str().unwrap()).collect()
            };
            (join(false), join(true))
        })
        .collect()
}

#[test]
fn data_show_marks_the_learned_tokens_of_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = chat_model(dir);
    let m = path(&model);

    // chat: both assistant turns and their <|im_end|>, nothing else.
    let chat = write_jsonl(dir, "chat.jsonl", &[conversation(2)]);
    let s = shown(dir, &["--tokenizer", m, "--data", path(&chat), "--template", "chat", "--cutoff", "0"]);
    assert_eq!(s[0].0, "4.<|im_end|>It is 8.<|im_end|>");
    assert_eq!(
        s[0].1,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n\
         \n<|im_start|>user\nAnd doubled?<|im_end|>\n<|im_start|>assistant\n"
    );
    let out = xtask(dir)
        .args(["data", "--tokenizer", m, "--data", path(&chat), "--template", "chat", "--show", "1", "--no-cache"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("loss on every assistant turn + its end-of-turn token only"), "{text}");
    assert!(text.contains("‹<|im_end|>›⟦\n<|im_start|>user\nAnd doubled?"), "{text}");

    // completion: the completion and EOS.
    let pc = write_jsonl(dir, "pc.jsonl", &[json!({"prompt": "Q: 1+1?\nA:", "completion": " 2"})]);
    let s = shown(dir, &["--tokenizer", m, "--data", path(&pc), "--template", "completion"]);
    assert_eq!(s[0], (" 2<|im_end|>".to_string(), "Q: 1+1?\nA:".to_string()));

    // plain: every token (and EOS).
    let pt = write_jsonl(dir, "pt.jsonl", &[json!({"text": "Cats sleep."})]);
    let s = shown(dir, &["--tokenizer", m, "--data", path(&pt), "--template", "plain"]);
    assert_eq!(s[0], ("Cats sleep.<|im_end|>".to_string(), String::new()));

    // LLM-Adapters records, Alpaca and a custom format.
    let al = write_jsonl(dir, "al.jsonl", &[json!({"instruction": "Say hi.", "output": "hi"})]);
    let s = shown(dir, &["--tokenizer", m, "--data", path(&al)]);
    assert_eq!(s[0].0, "hi<|im_end|>");
    assert!(s[0].1.ends_with("### Instruction:\nSay hi.\n\n### Response:\n"), "{:?}", s[0].1);
    let s = shown(
        dir,
        &["--tokenizer", m, "--data", path(&al), "--template", "custom", "--prompt-format", "Q: {instruction}\nA: "],
    );
    assert_eq!(s[0], ("hi<|im_end|>".to_string(), "Q: Say hi.\nA: ".to_string()));
}

#[test]
fn a_record_of_another_shape_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = chat_model(dir);
    let chat = write_jsonl(dir, "chat.jsonl", &[conversation(1)]);
    let out =
        xtask(dir).args(["data", "--tokenizer", path(&model), "--data", path(&chat), "--no-cache"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("chat.jsonl") && err.contains("record [0]") && err.contains("fields `messages`"), "{err}");
    assert!(err.contains("template = \"chat\""), "{err}");
    // A chat template missing from the tokenizer folder.
    let out = xtask(dir)
        .args(["data", "--tokenizer", path(&fixture()), "--data", path(&chat), "--template", "chat", "--no-cache"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no chat_template"), "{err}");
}

#[test]
fn train_runs_on_a_messages_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = chat_model(dir);
    let records: Vec<Value> = (1..=12).map(conversation).collect();
    let data = write_jsonl(dir, "chat.jsonl", &records);
    let out = dir.join("out");
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let cfg = format!(
        "[model]\npath = {}\n\n[data]\ntrain = [{}]\ntemplate = \"chat\"\nval_count = 2\ncutoff = 128\n\n\
         [adapter]\nr = 4\nalpha = 8\ntargets = [\"q_proj\", \"v_proj\"]\n\n\
         [echo]\nsource_layers = [-1]\ntarget_layers = [0]\ntarget_modules = [\"q_proj\"]\nd_echo = 8\np_route = 0.5\n\n\
         [train]\nseed = 1\nmax_steps = 3\nbatch_size = 4\nmicro_batch_size = 2\nlr = 1e-2\nwarmup_steps = 1\n\
         eval_every = 3\nsave_every = 0\ndevice = \"cpu\"\n\n[output]\ndir = {}\n",
        q(&model),
        q(&data),
        q(&out)
    );
    let cfg_path = dir.join("chat.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let res = xtask(dir).arg("train").arg(&cfg_path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&res.stdout), String::from_utf8_lossy(&res.stderr));
    assert!(res.status.success(), "{text}");
    assert!(text.contains("12 records"), "{text}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some() && v.get("step").is_some())
        .map(|v| v["loss"].as_f64().unwrap())
        .collect();
    assert!(!losses.is_empty() && losses.iter().all(|l| l.is_finite() && *l > 0.0), "{metrics}");
    assert!(out.join("adapter").join("adapter_model.safetensors").is_file());

    // A bad custom format is refused when the config is read, naming the key.
    let bad = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("template = \"chat\"", "template = \"custom\"\nprompt_format = \"no placeholder\"");
    std::fs::write(&cfg_path, bad).unwrap();
    let res = xtask(dir).arg("train").arg(&cfg_path).arg("--overwrite").output().unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success() && err.contains("data.prompt_format") && err.contains("{instruction}"), "{err}");
}

#[test]
fn generate_chat_prompts_with_the_models_template() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = chat_model(dir);
    let tok = echo_data::Tokenizer::from_dir(&model).unwrap();
    assert!(tok.special_prefix().is_empty(), "the fixture adds no BOS, so typed text tokenises the same");
    let run = |args: &[&str]| {
        let out = xtask(dir)
            .arg("generate")
            .args(["--model", path(&model), "--max-new-tokens", "8"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // The template's own output for one user turn (as transformers' apply_chat_template with
    // add_generation_prompt=True gives it for SmolLM2: the default system prompt injected).
    let expected =
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
                    <|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n";
    let n = tok.encode_plain(expected).unwrap().len();
    let (chat, log) = run(&["--chat", "--prompt", "Hello"]);
    assert!(log.contains(&format!("prefill {n} prompt tokens")), "the chat prompt is {n} tokens: {log}");
    let (typed, _) = run(&["--prompt", expected]);
    assert_eq!(chat, typed, "--chat equals typing the template's output");
    // --system replaces the default system prompt.
    let with_system =
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n";
    let (chat, _) = run(&["--chat", "--system", "Be brief.", "--prompt", "Hello"]);
    let (typed, _) = run(&["--prompt", with_system]);
    assert_eq!(chat, typed);
}

//! `cargo xtask eval` and `cargo xtask generate` run as the user runs them (the real binary) on
//! the tiny-llama-a fixture: an over-long record is skipped and counted instead of aborting
//! the evaluation, `generate --adapter` equals generating from the merged export,
//! `--template alpaca` wraps the prompt as training did, and the `smollm2` alias goes through
//! the cache in `generate` and `data`.

use assert_cmd::Command;
use echo_data::{Record, Template, Tokenizer};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    echo_testdata::tiny_llama_a()
}

fn xtask() -> Command {
    let mut c = Command::cargo_bin("xtask").unwrap();
    // Never reach the user's cache (or, through the `smollm2` alias, the network).
    c.env("ECHO_LORA_CACHE", std::env::temp_dir().join("echo-lora-cli-tests-no-cache"));
    c
}

/// Runs `xtask ARGS`, expecting success; returns (stdout, stderr).
fn run(args: &[&str], env: &[(&str, &Path)]) -> (String, String) {
    let mut c = xtask();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "xtask {args:?} failed ({}):\n{stdout}\n{stderr}", out.status);
    (stdout, stderr)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

fn boolq(instruction: String, answer: &str) -> Record {
    Record {
        instruction: format!("{instruction}\n\nAnswer format: true/false"),
        input: String::new(),
        output: format!("the correct answer is {answer}"),
        answer: Some(answer.into()),
    }
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn eval_skips_an_over_long_record_and_still_writes_results() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("boolq")).unwrap();
    // Record 1's passage alone is longer than the fixture's 256 positions.
    let long = format!("Is the passage long? {}", "the river runs past the old mill and on to the sea. ".repeat(12));
    let tok = Tokenizer::from_dir(fixture()).unwrap();
    let long_len = tok.encode(&Template::alpaca().prompt(&boolq(long.clone(), "true"))).unwrap().len();
    assert!(long_len > 256, "the long record must not fit: {long_len} tokens");
    let records = [boolq("Is water wet?".into(), "true"), boolq(long, "true"), boolq("Is fire cold?".into(), "false")];
    echo_data::write_records_json(data.join("boolq/test.json"), &records).unwrap();
    let model = fixture();

    for mode in ["generate", "loglik"] {
        let out = tmp.path().join(format!("eval-{mode}.json"));
        let args = [
            "eval",
            "--model",
            path(&model),
            "--data",
            path(&data),
            "--mode",
            mode,
            "--max-new-tokens",
            "8",
            "--out",
            path(&out),
            "--quiet",
        ];
        let (stdout, _) = run(&args, &[]);
        assert!(stdout.contains("| dataset | records | accuracy | no answer | skipped (too long) |"), "{stdout}");
        let row =
            stdout.lines().find(|l| l.starts_with("| boolq |")).unwrap_or_else(|| panic!("no boolq row: {stdout}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!((cells[2], cells[5]), ("2", "1"), "2 scored, 1 skipped: {row}");
        assert!(stdout.contains("1 records skipped") && stdout.contains("boolq record 1"), "{stdout}");

        let report = read_json(&out);
        let ds = &report["datasets"][0];
        assert_eq!(
            (ds["name"].as_str(), ds["total"].as_u64(), ds["skipped"].as_u64()),
            (Some("boolq"), Some(2), Some(1))
        );
        let skipped = report["skipped"].as_array().unwrap();
        assert_eq!(skipped.len(), 1);
        assert_eq!((skipped[0]["index"].as_u64(), skipped[0]["limit"].as_u64()), (Some(1), Some(256)));
        let needed = skipped[0]["positions"].as_u64().unwrap() as usize;
        assert!(needed > 256 && needed >= long_len, "{mode}: {needed} positions for a {long_len}-token prompt");
        let scored: Vec<u64> =
            report["predictions"].as_array().unwrap().iter().map(|p| p["index"].as_u64().unwrap()).collect();
        assert_eq!(scored, [0, 2], "{mode}: the records that fit are scored");
    }

    // The repository's ARC-Challenge, whose first questions are longer than the fixture's
    // context (the run that used to abort), in loglik mode.
    let out = tmp.path().join("arc.json");
    let commonsense = echo_testdata::commonsense();
    let args = [
        "eval",
        "--model",
        path(&model),
        "--data",
        path(&commonsense),
        "--datasets",
        "ARC-Challenge",
        "--limit",
        "6",
        "--mode",
        "loglik",
        "--out",
        path(&out),
        "--quiet",
    ];
    run(&args, &[]);
    let ds = &read_json(&out)["datasets"][0];
    let (total, skipped) = (ds["total"].as_u64().unwrap(), ds["skipped"].as_u64().unwrap());
    assert!(skipped > 0 && total + skipped == 6, "ARC-Challenge: {ds}");
}

#[test]
fn generate_with_an_adapter_equals_the_merged_model() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, adapter, merged) = (fixture(), fixture().join("peft-lora"), tmp.path().join("merged"));
    let args = ["export", "--model", path(&model), "--adapter", path(&adapter), "--out", path(&merged), "--merge"];
    run(&args, &[]);
    // One prompt streams its text; two are generated as one batch and printed at the end.
    for prompts in [&["The sky is"][..], &["The sky is", "Once upon a time, far away"][..]] {
        let gen = |model: &Path, adapter: Option<&Path>| {
            let mut args = vec!["generate", "--model", path(model), "--max-new-tokens", "24"];
            if let Some(a) = adapter {
                args.extend(["--adapter", path(a)]);
            }
            for p in prompts {
                args.extend(["--prompt", p]);
            }
            run(&args, &[])
        };
        let (with_adapter, log) = gen(&model, Some(&adapter));
        assert!(log.contains("merged 28 adapted projections"), "{log}");
        let (from_merged, _) = gen(&merged, None);
        let (base, _) = gen(&model, None);
        assert!(!with_adapter.trim().is_empty());
        assert_eq!(with_adapter, from_merged, "--adapter vs the merged export, {} prompt(s)", prompts.len());
        assert_ne!(with_adapter, base, "the adapter changes what the model writes");
    }
    // An adapter for another model is refused by name.
    let out = xtask()
        .args(["generate", "--model", path(&model), "--adapter", path(tmp.path()), "--prompt", "x"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(path(tmp.path())), "{err}");
}

#[test]
fn template_alpaca_wraps_the_prompt_as_training_did() {
    let model = fixture();
    let tok = Tokenizer::from_dir(&model).unwrap();
    let t = Template::alpaca();
    let rec = |instruction: &str, input: &str| Record {
        instruction: instruction.into(),
        input: input.into(),
        output: String::new(),
        answer: None,
    };
    for input in [None, Some("two apples and a pear")] {
        let wrapped = t.prompt(&rec("Count the fruit.", input.unwrap_or("")));
        let n = tok.encode(&wrapped).unwrap().len();
        let mut args = vec![
            "generate",
            "--model",
            path(&model),
            "--template",
            "alpaca",
            "--prompt",
            "Count the fruit.",
            "--max-new-tokens",
            "16",
        ];
        if let Some(i) = input {
            args.extend(["--input", i]);
        }
        let (templated, log) = run(&args, &[]);
        assert!(log.contains(&format!("prefill {n} prompt tokens")), "the Alpaca prompt is {n} tokens: {log}");
        // The same text typed out in full generates the same continuation.
        let args = ["generate", "--model", path(&model), "--prompt", &wrapped, "--max-new-tokens", "16"];
        let (typed, _) = run(&args, &[]);
        assert_eq!(templated, typed, "input {input:?}");
        let args = ["generate", "--model", path(&model), "--prompt", "Count the fruit.", "--max-new-tokens", "16"];
        let (bare, log) = run(&args, &[]);
        assert!(!log.contains(&format!("prefill {n} prompt tokens")), "{log}");
        assert_ne!(templated, bare);
    }
    let out =
        xtask().args(["generate", "--model", path(&model), "--template", "vicuna", "--prompt", "x"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("vicuna") && err.contains("alpaca"), "{err}");
    let out = xtask()
        .args(["generate", "--model", path(&model), "--template", "alpaca", "--chat", "--prompt", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "--template and --chat are exclusive");
}

#[test]
fn the_smollm2_alias_goes_through_the_cache_in_generate_and_data() {
    // A cache holding an imported "smollm2" (the fixture, under the folder fetch-model fills).
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("models").join("smollm2-135m-instruct");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture().join(f), dir.join(f)).unwrap();
    }
    let env = [("ECHO_LORA_CACHE", cache.path())];
    let gen = |model: &str| run(&["generate", "--model", model, "--prompt", "Hello", "--max-new-tokens", "12"], &env).0;
    assert_eq!(gen("smollm2"), gen(path(&fixture())), "generate --model smollm2 is the cached model");

    let data = cache.path().join("records.json");
    echo_data::write_records_json(&data, &[boolq("Is water wet?".into(), "true")]).unwrap();
    let counts = |tokenizer: &str| {
        let args = ["data", "--tokenizer", tokenizer, "--data", path(&data), "--json", "--show", "1", "--no-cache"];
        let mut v: serde_json::Value = serde_json::from_str(&run(&args, &env).0).unwrap();
        v.as_object_mut().unwrap().remove("tokenizer").unwrap().as_str().map(PathBuf::from).map(|t| (t, v)).unwrap()
    };
    let (alias_tok, alias) = counts("smollm2");
    let (fixture_tok, direct) = counts(path(&fixture()));
    assert_eq!(alias_tok, dir.join("tokenizer.json"), "data --tokenizer smollm2 reads the cached tokenizer");
    assert_eq!(fixture_tok, fixture().join("tokenizer.json"));
    assert_eq!(alias, direct, "the same tokenizer, the same counts and tokens");
    assert!(alias["shown"][0]["input_ids"].as_array().is_some_and(|a| !a.is_empty()));
}

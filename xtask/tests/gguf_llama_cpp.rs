//! `cargo xtask export --merge --gguf` as the user runs it, checked two ways:
//!
//! * always: `import-gguf` of the exported file gives back the merged model (the tiny-llama-a
//!   fixture with its PEFT LoRA adapter): bit for bit at f32, within f16 rounding at f16, and
//!   the tokenizer encodes sample text as the original does; and flags that cannot work (an
//!   unmerged --gguf, a DoRA --lora-gguf, an output inside the model's or adapter's folder)
//!   are user errors;
//! * against llama.cpp itself (ignored unless asked: it needs the venv that
//!   `scripts/llama_cpp_venv.sh` builds, with llama-cpp-python compiled from PyPI): llama.cpp's
//!   logits for the exported f16 file on a fixed token sequence against ours for the merged
//!   model, the same argmax on at least 95% of positions and the max |difference| under a
//!   stated bound; llama.cpp's tokenisation of sample text against ours; and the adapter alone
//!   (`--lora-gguf`) on the f32 base in llama.cpp against the merged model. Without the venv
//!   these tests print that they are skipped and why, and return.

use assert_cmd::Command;
use echo_autograd::Tape;
use echo_model::weights::WeightFiles;
use echo_model::{Batch, Llama, Plain};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    echo_testdata::tiny_llama_a()
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("gguf-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// Runs `xtask ARGS`, expecting success; returns stdout.
fn xtask(args: &[&str]) -> String {
    let mut c = Command::cargo_bin("xtask").unwrap();
    // Never reach the user's cache (every model here is given as a folder).
    c.env("ECHO_LORA_CACHE", std::env::temp_dir().join("echo-lora-cli-tests-no-cache"));
    let out = c.args(args).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "xtask {args:?} failed ({}):\n{stdout}\n{stderr}", out.status);
    stdout.into_owned()
}

/// Our logits (f32, the plain model) at every position of `ids`, row-major `[T, vocab]`.
fn our_logits(model_dir: &Path, ids: &[u32]) -> (Vec<f32>, usize) {
    let model = Llama::load(model_dir).unwrap();
    let v = model.config.vocab_size;
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let mask = vec![1i64; ids.len()];
    let batch = Batch::new(&ids, &mask, 1, ids.len(), v).unwrap();
    let out = model.forward(&Tape::inference(), &batch, &mut Plain, &[]).unwrap();
    let rows: Vec<usize> = (0..ids.len()).collect();
    (model.logits_at(&out.hidden, &rows).unwrap().value().to_vec_f32(), v)
}

fn tokenizer(dir: &Path) -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap()
}

const SAMPLES: &[&str] = &[
    "Please answer the following question with true or false, question: is the sky blue on a clear day?",
    "<|im_start|>user\nIs water wet?<|im_end|>\n<|im_start|>assistant\nYes, it is.<|im_end|>\n",
    "  spaces   and\ttabs, numbers 12345 and ünïcödé ✓ -- the end.",
];

/// The merged HF folder and the merged GGUF at `quant`, both through the CLI.
fn export_merged(model: &Path, adapter: &Path, dir: &Path, quant: &str) -> (PathBuf, PathBuf) {
    let merged = dir.join("merged");
    if !merged.join("config.json").exists() {
        xtask(&["export", "--model", path(model), "--adapter", path(adapter), "--merge", "--out", path(&merged)]);
    }
    let gguf = dir.join(format!("merged-{quant}.gguf"));
    let said = xtask(&[
        "export",
        "--model",
        path(model),
        "--adapter",
        path(adapter),
        "--merge",
        "--gguf",
        path(&gguf),
        "--quant",
        quant,
    ]);
    assert!(said.contains("as GGUF to"), "{said}");
    (merged, gguf)
}

#[test]
fn merged_gguf_imports_back_to_the_merged_model() {
    let dir = scratch("roundtrip");
    let (model, adapter) = (fixture(), fixture().join("peft-lora"));
    let ids: Vec<u32> = tokenizer(&model).encode(SAMPLES[0], false).unwrap().get_ids().to_vec();
    for quant in ["f32", "f16"] {
        let (merged, gguf) = export_merged(&model, &adapter, &dir, quant);
        let back = dir.join(format!("imported-{quant}"));
        xtask(&["import-gguf", path(&gguf), path(&back)]);
        let (a, b) = (WeightFiles::open_dir(&merged).unwrap(), WeightFiles::open_dir(&back).unwrap());
        assert_eq!(a.names(), b.names());
        for name in a.names() {
            let (x, y) =
                (a.f32_tensor(name, None).unwrap().to_vec_f32(), b.f32_tensor(name, None).unwrap().to_vec_f32());
            if quant == "f32" {
                assert_eq!(x, y, "{name}: the f32 round trip must be exact");
            } else {
                for (i, (x, y)) in x.iter().zip(&y).enumerate() {
                    // f16: 11 significant bits, or half the subnormal step below 2^-14.
                    assert!((x - y).abs() <= (x.abs() * 2f32.powi(-11)).max(2f32.powi(-25)), "{name}[{i}]: {x} -> {y}");
                }
            }
        }
        let (want, _) = our_logits(&merged, &ids);
        let (got, _) = our_logits(&back, &ids);
        let d = want.iter().zip(&got).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        eprintln!("{quant}: merged vs imported export, max |logit diff| {d}");
        if quant == "f32" {
            assert_eq!(d, 0.0);
        } else {
            // Measured 0.0115 on this fixture's 22 positions.
            assert!(d > 0.0 && d < 0.03, "{quant}: logits moved by {d}");
        }
        let (orig, mine) = (tokenizer(&model), tokenizer(&back));
        for text in SAMPLES {
            assert_eq!(
                orig.encode(*text, false).unwrap().get_ids(),
                mine.encode(*text, false).unwrap().get_ids(),
                "{text:?}"
            );
        }
    }
}

/// Where scripts/llama_cpp_venv.sh builds the venv (the same rule as the script's).
fn llama_cpp_python() -> Result<PathBuf, String> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let venv = env("ECHO_LLAMA_CPP_VENV")
        .or_else(|| env("ECHO_LORA_CACHE").map(|c| c.join("llama-cpp-venv")))
        .or_else(|| env("XDG_CACHE_HOME").map(|c| c.join("echo-lora").join("llama-cpp-venv")))
        .or_else(|| env("HOME").map(|h| h.join(".cache").join("echo-lora").join("llama-cpp-venv")))
        .ok_or("no venv location: set ECHO_LLAMA_CPP_VENV (or HOME)")?;
    let python = venv.join("bin").join("python");
    if python.exists() {
        Ok(python)
    } else {
        Err(format!("no llama.cpp venv at {} (build it with scripts/llama_cpp_venv.sh)", venv.display()))
    }
}

/// What scripts/llama_cpp_check.py wrote.
struct LlamaCpp {
    logits: Vec<f32>,
    tokenized: Vec<Vec<u32>>,
}

fn run_llama_cpp(python: &Path, gguf: &Path, ids: &[u32], lora: Option<&Path>, dir: &Path) -> LlamaCpp {
    let texts = dir.join("texts.json");
    std::fs::write(&texts, serde_json::to_string(SAMPLES).unwrap()).unwrap();
    let out = dir.join("llama_cpp.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/llama_cpp_check.py");
    let tokens: Vec<String> = ids.iter().map(u32::to_string).collect();
    let mut c = std::process::Command::new(python);
    c.arg(&script).arg(gguf).arg("--out").arg(&out).arg("--tokens").arg(tokens.join(",")).arg("--texts").arg(&texts);
    if let Some(l) = lora {
        c.arg("--lora").arg(l);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "llama_cpp_check.py failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let logits = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
        .collect();
    let tokenized = v["tokenized"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect())
        .collect();
    LlamaCpp { logits, tokenized }
}

/// `(max |diff|, fraction of positions with the same argmax)` of two `[T, v]` logit tables.
fn compare(ours: &[f32], theirs: &[f32], v: usize) -> (f32, f64) {
    assert_eq!(ours.len(), theirs.len(), "llama.cpp returned {} logits for our {}", theirs.len(), ours.len());
    let argmax = |r: &[f32]| r.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0;
    let rows = ours.len() / v;
    let same = ours.chunks(v).zip(theirs.chunks(v)).filter(|(a, b)| argmax(a) == argmax(b)).count();
    let d = ours.iter().zip(theirs).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    (d, same as f64 / rows as f64)
}

/// The whole check for one model + adapter; returns (max |diff|, argmax agreement) of the f16
/// export and asserts the tokenisation matches. `bound` is the stated max |diff|.
fn check_against_llama_cpp(name: &str, model: &Path, adapter: &Path, bound: f32) {
    let python = match llama_cpp_python() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED {name}: {why}");
            return;
        }
    };
    let dir = scratch(name);
    let (merged, gguf) = export_merged(model, adapter, &dir, "f16");
    // A fixed sequence: our tokenisation of the sample texts, one after the other.
    let tok = tokenizer(model);
    let ids: Vec<u32> = SAMPLES.iter().flat_map(|t| tok.encode(*t, false).unwrap().get_ids().to_vec()).collect();
    let (ours, v) = our_logits(&merged, &ids);
    let cpp = run_llama_cpp(&python, &gguf, &ids, None, &dir);
    let (d, agree) = compare(&ours, &cpp.logits, v);
    eprintln!(
        "{name}: llama.cpp on the f16 export vs our merged model: {} positions, max |logit diff| {d:.5}, argmax agreement {:.1}%",
        ids.len(),
        agree * 100.0
    );
    for (text, theirs) in SAMPLES.iter().zip(&cpp.tokenized) {
        assert_eq!(tok.encode(*text, false).unwrap().get_ids(), theirs.as_slice(), "{name}: tokenisation of {text:?}");
    }
    assert!(agree >= 0.95, "{name}: argmax agrees on {:.1}% of positions only", agree * 100.0);
    assert!(d < bound, "{name}: max |logit diff| {d} is over the stated {bound}");

    // The adapter alone, applied by llama.cpp on the f32 base model.
    let base = dir.join("base-f32.gguf");
    xtask(&["export", "--model", path(model), "--gguf", path(&base), "--quant", "f32"]);
    let lora = dir.join("lora.gguf");
    xtask(&["export", "--model", path(model), "--adapter", path(adapter), "--lora-gguf", path(&lora)]);
    let cpp = run_llama_cpp(&python, &base, &ids, Some(&lora), &dir);
    let (d_lora, agree_lora) = compare(&ours, &cpp.logits, v);
    eprintln!(
        "{name}: llama.cpp f32 base + --lora-gguf vs our merged model: max |logit diff| {d_lora:.5}, argmax agreement {:.1}%",
        agree_lora * 100.0
    );
    assert!(agree_lora >= 0.95 && d_lora < bound, "{name}: the LoRA GGUF: {d_lora}, {agree_lora}");
}

#[test]
#[ignore = "needs the llama.cpp venv: scripts/llama_cpp_venv.sh"]
fn llama_cpp_agrees_with_the_merged_tiny_fixture() {
    // Measured 0.031 over 104 positions (f16 weights, and llama.cpp's f16 KV cache; the
    // fixture's logits reach about ±5): bound 0.1.
    check_against_llama_cpp("tiny-llama-a", &fixture(), &fixture().join("peft-lora"), 0.1);
}

#[test]
#[ignore = "needs the llama.cpp venv (scripts/llama_cpp_venv.sh), SmolLM2 in the cache and ECHO_SMOLLM2_ADAPTER"]
fn llama_cpp_agrees_with_merged_smollm2() {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let Some(adapter) = env("ECHO_SMOLLM2_ADAPTER") else {
        eprintln!("SKIPPED smollm2: set ECHO_SMOLLM2_ADAPTER to a PEFT adapter of SmolLM2-135M (a run's adapter/)");
        return;
    };
    let cache = env("ECHO_LORA_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|c| c.join("echo-lora")))
        .or_else(|| env("HOME").map(|h| h.join(".cache").join("echo-lora")));
    let model = cache.map(|c| c.join("models").join("smollm2-135m-instruct"));
    let Some(model) = model.filter(|m| m.join("config.json").exists()) else {
        eprintln!("SKIPPED smollm2: SmolLM2-135M-Instruct is not in the cache (cargo xtask fetch-model smollm2)");
        return;
    };
    // Measured 0.053 over 72 positions with a 3-step default-config adapter: bound 0.2.
    check_against_llama_cpp("smollm2", &model, &adapter, 0.2);
}

/// Runs `xtask ARGS`, expecting failure; returns stderr.
fn xtask_fails(args: &[&str]) -> String {
    let mut c = Command::cargo_bin("xtask").unwrap();
    c.env("ECHO_LORA_CACHE", std::env::temp_dir().join("echo-lora-cli-tests-no-cache"));
    let out = c.args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "xtask {args:?} should fail as a user error");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn export_flags_that_cannot_work_are_user_errors() {
    let dir = scratch("flags");
    let m = fixture();
    let (lora, dora) = (m.join("peft-lora"), m.join("peft-dora"));
    let out = dir.join("x.gguf");
    let (model_file, adapter_file) = (m.join("config.json"), lora.join("adapter_model.safetensors"));
    let cases: [(Vec<&str>, &str); 6] = [
        (vec!["--adapter", path(&lora), "--gguf", path(&out)], "add --merge"),
        (vec!["--adapter", path(&dora), "--lora-gguf", path(&out)], "llama.cpp has no DoRA"),
        (vec!["--gguf", path(&out), "--quant", "q3_k"], "--quant `q3_k`: unknown"),
        (vec!["--adapter", path(&lora), "--merge", "--gguf", path(&model_file)], "refusing to overwrite"),
        (vec!["--adapter", path(&lora), "--lora-gguf", path(&adapter_file)], "adapter's folder"),
        (vec!["--adapter", path(&lora)], "nothing to write"),
    ];
    for (args, needle) in cases {
        let mut full = vec!["export", "--model", path(&m)];
        full.extend(args.iter().copied());
        let err = xtask_fails(&full);
        assert!(err.contains(needle), "{full:?}: {err:?} lacks {needle:?}");
    }
    assert!(!out.exists());
}

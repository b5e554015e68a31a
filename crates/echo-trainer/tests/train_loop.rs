//! The training loop on tiny-llama-a with the synthetic task: exact resume, seeded
//! reproducibility, NaN handling, and an export that is a plain PEFT adapter.

use echo_model::weights::WeightFiles;
use echo_trainer::{train, RunConfig, RunOptions};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    echo_testdata::tiny_llama_a()
}

fn config(extra: &str) -> RunConfig {
    let text = format!(
        r#"
[model]
path = "unused"
[data]
train = ["synthetic"]
synthetic_records = 48
val_count = 8
cutoff = 200
[adapter]
method = "lora"
r = 4
alpha = 8
dropout = 0.1
targets = ["q_proj", "v_proj", "up_proj", "down_proj"]
[echo]
source_layers = [-2, -1]
target_layers = [0]
target_modules = ["q_proj", "up_proj"]
d_echo = 8
p_route = 0.5
[train]
seed = 3
epochs = 2
batch_size = 4
micro_batch_size = 2
lr = 1e-2
warmup_steps = 2
eval_every = 5
save_every = 0
{extra}
"#
    );
    RunConfig::parse(&text).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("echo-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Every tensor of the adapter and the echo state of a run's final checkpoint.
fn weights(out: &Path) -> Vec<(String, Vec<f32>)> {
    let mut v = Vec::new();
    for f in ["checkpoint/adapter/adapter_model.safetensors", "checkpoint/state.safetensors"] {
        let w = WeightFiles::open_files(&[out.join(f)]).unwrap();
        for n in w.names() {
            v.push((n.to_string(), w.f32_tensor(n, None).unwrap().as_f32().to_vec()));
        }
    }
    v
}

#[test]
fn straight_and_resumed_runs_are_bit_identical() {
    // 20 steps straight vs 10 + resume + 10 (the run crosses an epoch boundary at step 10).
    let cfg = config("max_steps = 20");
    let (a, b) = (tmp("straight"), tmp("resumed"));
    let s = train(&cfg, &fixture(), &a, &RunOptions::default()).unwrap();
    assert_eq!(s.steps, 20);
    train(&cfg, &fixture(), &b, &RunOptions { stop_after: Some(10), ..Default::default() }).unwrap();
    let r = train(&cfg, &fixture(), &b, &RunOptions { resume: true, ..Default::default() }).unwrap();
    assert_eq!(r.steps, 20);
    let (wa, wb) = (weights(&a), weights(&b));
    assert_eq!(wa.len(), wb.len());
    for ((na, va), (nb, vb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert!(va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()), "{na} differs after resume");
    }
    // The run trained: the echo's layer logits left zero and B left zero.
    assert!(wa.iter().any(|(n, v)| n.ends_with("lora_B.weight") && v.iter().any(|x| *x != 0.0)));
    // A second straight run with the same seed reproduces the first exactly.
    let c = tmp("again");
    train(&cfg, &fixture(), &c, &RunOptions::default()).unwrap();
    assert_eq!(weights(&a), weights(&c), "same seed, different weights");
    for d in [a, b, c] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn exported_adapter_is_plain_peft() {
    let cfg = config("max_steps = 2");
    let out = tmp("export");
    let s = train(&cfg, &fixture(), &out, &RunOptions::default()).unwrap();
    let w = WeightFiles::open_files(&[s.adapter_dir.join("adapter_model.safetensors")]).unwrap();
    let names = w.names();
    assert!(!names.is_empty());
    assert!(
        names.iter().all(|n| n.starts_with("base_model.model.model.layers.")
            && (n.ends_with("lora_A.weight") || n.ends_with("lora_B.weight"))),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("echo")));
    assert_eq!(names.len(), 4 * 4 * 2, "4 layers x 4 targets x (A, B)");
    assert!(out.join("metrics.jsonl").exists() && out.join("loss.svg").exists() && out.join("summary.json").exists());
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn non_finite_loss_stops_and_leaves_the_checkpoint_untouched() {
    let cfg = config("max_steps = 6");
    let out = tmp("nan");
    train(&cfg, &fixture(), &out, &RunOptions { stop_after: Some(2), ..Default::default() }).unwrap();
    // Poison the checkpoint's adapter with finite values so large that the next step's loss
    // overflows (a NaN written there would be refused at load, before any step runs).
    let adapter = out.join("checkpoint/adapter/adapter_model.safetensors");
    let w = WeightFiles::open_files(std::slice::from_ref(&adapter)).unwrap();
    let mut tensors = Vec::new();
    for n in w.names() {
        let mut v = w.f32_tensor(n, None).unwrap().as_f32().to_vec();
        if n.ends_with("lora_B.weight") {
            v.iter_mut().for_each(|x| *x = 3e38);
        }
        tensors.push((n.to_string(), echo_model::weights::SaveTensor::F32(v, w.info(n).unwrap().1)));
    }
    drop(w);
    echo_model::weights::save_safetensors(&adapter, tensors, None).unwrap();
    let before: Vec<Vec<u8>> = ["adapter/adapter_model.safetensors", "state.safetensors", "state.json"]
        .iter()
        .map(|f| std::fs::read(out.join("checkpoint").join(f)).unwrap())
        .collect();
    let err = train(&cfg, &fixture(), &out, &RunOptions { resume: true, ..Default::default() }).unwrap_err();
    // A typed error a caller can match, with the message a user reads.
    assert!(matches!(err, echo_trainer::TrainError::NonFinite { step: 3, .. }), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("step 3") && err.contains("non-finite") && err.contains("untouched"), "{err}");
    let after: Vec<Vec<u8>> = ["adapter/adapter_model.safetensors", "state.safetensors", "state.json"]
        .iter()
        .map(|f| std::fs::read(out.join("checkpoint").join(f)).unwrap())
        .collect();
    assert!(before == after, "the checkpoint changed");
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn config_errors_name_the_key() {
    let e = RunConfig::parse("[model]\npath = \"x\"\n[train]\nlr = 2.0\n").unwrap_err();
    assert!(matches!(e, echo_trainer::TrainError::Config { file: None, .. }), "{e:?}");
    let e = RunConfig::parse("[model]\npath = \"x\"\n[train]\nlrr = 1e-3\n").unwrap_err().to_string();
    assert!(e.contains("lrr") && e.contains("`lr`"), "{e}");
    let e = RunConfig::parse("[model]\npath = \"x\"\n[train]\nlr = 2.0\n").unwrap_err().to_string();
    assert!(e.contains("train.lr") && e.contains("(0, 1)"), "{e}");
    let e = RunConfig::parse("[model]\npath = \"x\"\n[echo]\np_route = 1.5\n").unwrap_err().to_string();
    assert!(e.contains("echo.p_route"), "{e}");
    let e = RunConfig::parse("[model]\npath = \"x\"\n[adapter]\ntargets = [\"qkv\"]\n").unwrap_err().to_string();
    assert!(e.contains("adapter.targets") && e.contains("q_proj"), "{e}");
    let e = RunConfig::parse("[model]\npath = \"x\"\n[echo]\naggregation = \"max\"\n").unwrap_err().to_string();
    assert!(e.contains("masked_mean"), "{e}");
}

#[test]
fn every_shipped_config_parses() {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs"));
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        // Study configs (`study-*.toml`) are checked by xtask's study tests.
        let study = p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("study-"));
        if p.extension().is_some_and(|e| e == "toml") && !study {
            let c = RunConfig::from_file(&p).unwrap_or_else(|e| panic!("{e}"));
            // A model with 32 layers (the paper's) resolves every layer list.
            c.adapter_config(32).unwrap();
            c.echo_config(32).unwrap();
            n += 1;
        }
    }
    assert!(n >= 17, "expected the default and the paper's setups, found {n} configs");
}

#[test]
fn training_continues_from_a_peft_adapter() {
    let text = format!(
        "[model]\npath = \"x\"\n[data]\nsynthetic_records = 24\nval_count = 4\ncutoff = 200\n[adapter]\nfrom = \"{}\"\n[echo]\nenabled = false\n[train]\nmax_steps = 1\nbatch_size = 2\nmicro_batch_size = 2\nlr = 1e-3\nwarmup_steps = 0\n",
        fixture().join("peft-dora").display()
    );
    let cfg = RunConfig::parse(&text).unwrap();
    let out = tmp("from");
    let s = train(&cfg, &fixture(), &out, &RunOptions::default()).unwrap();
    // Started from the fixture's DoRA adapter: same key set (magnitudes included), moved by one step.
    let ours = WeightFiles::open_files(&[s.adapter_dir.join("adapter_model.safetensors")]).unwrap();
    let theirs = WeightFiles::open_files(&[fixture().join("peft-dora/adapter_model.safetensors")]).unwrap();
    assert_eq!(ours.names(), theirs.names());
    let key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    let d = ours.f32_tensor(key, None).unwrap().max_abs_diff(&theirs.f32_tensor(key, None).unwrap()).unwrap();
    assert!(d > 0.0 && d < 0.01, "one step of lr 1e-3 should move B a little, moved {d}");
    std::fs::remove_dir_all(out).ok();
}

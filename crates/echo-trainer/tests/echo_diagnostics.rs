//! The echo diagnostics of a training run (docs/method.md, "Diagnostics") on tiny-llama-a
//! with the synthetic task: lines at the scheduled steps at both injection sites, their
//! values at the start (the gate's init, KL 0 while B = 0 at the bottleneck), once each
//! across a resume, the plot, and a training that does not change when they are measured.

use echo_model::weights::WeightFiles;
use echo_trainer::diagnostics::{EchoDiagnostics, EchoLine};
use echo_trainer::{train, RunConfig, RunOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A 12-step run (18 training records in batches of 4), echo from the last two blocks (of 4)
/// into block 0; checkpoints only where the run stops (`save_every` defaults to 200).
fn config(extra_echo: &str, extra_train: &str) -> RunConfig {
    let text = format!(
        r#"
[model]
path = "unused"
[data]
train = ["synthetic"]
synthetic_records = 24
val_count = 6
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
{extra_echo}
[train]
seed = 5
max_steps = 12
batch_size = 4
micro_batch_size = 2
lr = 1e-2
warmup_steps = 2
eval_every = 5
device = "cpu"
{extra_train}
"#
    );
    RunConfig::parse(&text).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("echo-diag-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn fixture() -> PathBuf {
    echo_testdata::tiny_llama_a()
}

/// Every line of the run's metrics, parsed.
fn lines(out: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

/// The diagnostics lines, in file order.
fn echo_lines(out: &Path) -> Vec<(usize, EchoDiagnostics)> {
    lines(out)
        .into_iter()
        .filter(|v| v.get("echo").is_some())
        .map(|v| {
            let l: EchoLine = serde_json::from_value(v).unwrap();
            (l.step, l.echo)
        })
        .collect()
}

/// `(step, loss bits)` of the step lines.
fn step_losses(out: &Path) -> Vec<(u64, u32)> {
    lines(out)
        .into_iter()
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), (v["loss"].as_f64().unwrap() as f32).to_bits()))
        .collect()
}

/// Every tensor of the final checkpoint's adapter and echo state.
fn weights(out: &Path) -> Vec<(String, Vec<u32>)> {
    let mut v = Vec::new();
    for f in ["checkpoint/adapter/adapter_model.safetensors", "checkpoint/state.safetensors"] {
        let w = WeightFiles::open_files(&[out.join(f)]).unwrap();
        for n in w.names() {
            v.push((n.to_string(), w.f32_tensor(n, None).unwrap().as_f32().iter().map(|x| x.to_bits()).collect()));
        }
    }
    v
}

/// Lengths (one per target layer, one per source layer) and finiteness of every value but
/// the rms ratio, which the caller checks.
fn check_shape(d: &EchoDiagnostics) {
    assert_eq!(d.target_layers, [0]);
    assert_eq!(d.source_layers, [2, 3], "-2, -1 of 4 blocks");
    assert_eq!(d.probe_samples, 6, "min(8, val_count)");
    assert!(d.probe_positions > 0);
    for v in [&d.gate_mean, &d.inject_rms, &d.adapter_rms, &d.proj_norm, &d.gate_weight_norm, &d.gate_bias_mean] {
        assert_eq!(v.len(), 1, "{d:?}");
        assert!(v.iter().all(|x| x.is_finite()), "{d:?}");
    }
    assert_eq!(d.rms_ratio.len(), 1);
    assert_eq!(d.layer_mix.len(), 2);
    assert!((d.layer_mix.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{d:?}");
    assert!(d.trunk_norm.is_finite() && d.trunk_norm > 0.0);
    assert!(d.kl.is_some_and(|k| k.is_finite() && k >= 0.0), "{d:?}");
    assert!(d.gate_mean[0] > 0.0 && d.gate_mean[0] < 1.0);
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn bottleneck_site_lines_at_the_validation_steps_starting_shut_with_kl_zero() {
    // A tiny init: the gate is sigmoid(-2) up to ~1e-6, the injection tiny but non-zero.
    let cfg = config("init_std = 1e-6", "");
    let out = tmp("bottleneck");
    train(&cfg, &fixture(), &out, &RunOptions::default()).unwrap();
    let d = echo_lines(&out);
    let steps: Vec<usize> = d.iter().map(|l| l.0).collect();
    assert_eq!(steps, [0, 5, 10, 12], "unset: the validation steps (eval_every = 5), before training and at the end");
    for (_, e) in &d {
        check_shape(e);
        assert_eq!(e.site, echo_trainer::InjectionSite::Bottleneck);
        // A x is never zero, so the ratio always has a value.
        assert!(e.rms_ratio[0].is_some_and(|r| r.is_finite() && r > 0.0), "{e:?}");
    }
    let start = &d[0].1;
    assert!((start.gate_mean[0] - sigmoid(-2.0)).abs() < 1e-5, "gate mean {} at init", start.gate_mean[0]);
    assert!((start.gate_mean[0] - 0.1192).abs() < 1e-4);
    assert_eq!(start.gate_bias_mean, [-2.0]);
    assert_eq!(start.layer_mix, [0.5, 0.5], "layer logits start at zero");
    // B = 0: the injection cannot reach the output, both routes' logits are the same bits.
    assert_eq!(start.kl, Some(0.0), "{start:?}");
    assert!(start.rms_ratio[0].unwrap() < 1e-3, "tiny p against A x: {start:?}");
    // Trained: B moved, so the echo route differs from the plain one.
    let end = &d.last().unwrap().1;
    assert!(end.kl.unwrap() > 0.0, "{end:?}");
    assert!(end.gate_bias_mean[0] != -2.0 || end.layer_mix != [0.5, 0.5], "the echo parameters never moved: {end:?}");
    // The plot: one SVG with the panels.
    let svg = std::fs::read_to_string(out.join("echo.svg")).expect("echo.svg next to loss.svg");
    assert!(out.join("loss.svg").is_file());
    for want in ["echo gate: mean g per target layer", "rms(g⊙p) / rms(A x), bottleneck site", "layer 0"] {
        assert!(svg.contains(want), "echo.svg has no {want:?}");
    }
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn output_site_lines_every_n_steps_with_no_ratio_while_b_is_zero() {
    let cfg = config("injection = \"output\"", "diagnostics_every = 4");
    let out = tmp("output");
    train(&cfg, &fixture(), &out, &RunOptions::default()).unwrap();
    let d = echo_lines(&out);
    assert_eq!(d.iter().map(|l| l.0).collect::<Vec<_>>(), [0, 4, 8, 12]);
    for (_, e) in &d {
        check_shape(e);
        assert_eq!(e.site, echo_trainer::InjectionSite::Output);
    }
    let start = &d[0].1;
    // The adapter's output delta s B A x is exactly zero with a fresh B: no ratio.
    assert_eq!(start.adapter_rms, [0.0]);
    assert_eq!(start.rms_ratio, [None]);
    assert!(start.inject_rms[0] > 0.0);
    // The echo reaches the output from the start at this site (init_std 0.02).
    assert!(start.kl.unwrap() > 0.0, "{start:?}");
    for (step, e) in &d[1..] {
        assert!(e.rms_ratio[0].is_some_and(|r| r.is_finite() && r > 0.0), "step {step}: {e:?}");
    }
    let svg = std::fs::read_to_string(out.join("echo.svg")).unwrap();
    assert!(svg.contains("rms(g⊙p) / rms(adapter delta), output site"));
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn measuring_changes_nothing_of_the_training_and_zero_turns_it_off() {
    let (on, off) = (tmp("on"), tmp("off"));
    train(&config("", "diagnostics_every = 1"), &fixture(), &on, &RunOptions::default()).unwrap();
    train(&config("", "diagnostics_every = 0"), &fixture(), &off, &RunOptions::default()).unwrap();
    assert_eq!(echo_lines(&on).len(), 13, "steps 0..=12");
    assert!(echo_lines(&off).is_empty() && !off.join("echo.svg").exists());
    assert_eq!(step_losses(&on), step_losses(&off), "the step lines differ");
    assert!(weights(&on) == weights(&off), "the trained weights differ");
    // A run without the echo path has no diagnostics whatever the key says.
    let plain = tmp("plain");
    train(&config("enabled = false", "diagnostics_every = 2"), &fixture(), &plain, &RunOptions::default()).unwrap();
    assert!(echo_lines(&plain).is_empty() && !plain.join("echo.svg").exists());
    for d in [on, off, plain] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn a_resume_keeps_each_line_once_and_measures_the_same() {
    let cfg = config("", "diagnostics_every = 3\nsave_every = 4");
    let (straight, resumed) = (tmp("straight"), tmp("resumed"));
    train(&cfg, &fixture(), &straight, &RunOptions::default()).unwrap();
    // Stopped at 10 (checkpoints 8 and 10, lines 0, 3, 6, 9); the checkpoint at 10 then lost,
    // as if the process had died before writing it: the resume starts from 8, drops the line
    // of step 9 and measures it again.
    train(&cfg, &fixture(), &resumed, &RunOptions { stop_after: Some(10), ..Default::default() }).unwrap();
    assert_eq!(echo_lines(&resumed).iter().map(|l| l.0).collect::<Vec<_>>(), [0, 3, 6, 9]);
    std::fs::remove_dir_all(resumed.join("checkpoint-10")).unwrap();
    let r = train(&cfg, &fixture(), &resumed, &RunOptions { resume: true, ..Default::default() }).unwrap();
    assert_eq!(r.resumed_from, Some(8));
    let (a, b) = (echo_lines(&straight), echo_lines(&resumed));
    assert_eq!(b.iter().map(|l| l.0).collect::<Vec<_>>(), [0, 3, 6, 9, 12], "each line once");
    for ((sa, da), (sb, db)) in a.iter().zip(&b) {
        assert_eq!(sa, sb);
        let strip = |d: &EchoDiagnostics| EchoDiagnostics { seconds: 0.0, ..d.clone() };
        assert_eq!(strip(da), strip(db), "step {sa}: an exact resume measures the same");
    }
    assert_eq!(step_losses(&straight), step_losses(&resumed));
    for d in [straight, resumed] {
        std::fs::remove_dir_all(d).ok();
    }
}

/// The schedule is not part of the run's identity: a resume may change it.
#[test]
fn a_resume_may_change_the_schedule() {
    let out = tmp("reschedule");
    train(
        &config("", "diagnostics_every = 3"),
        &fixture(),
        &out,
        &RunOptions { stop_after: Some(6), ..Default::default() },
    )
    .unwrap();
    train(&config("", "diagnostics_every = 4"), &fixture(), &out, &RunOptions { resume: true, ..Default::default() })
        .unwrap();
    assert_eq!(echo_lines(&out).iter().map(|l| l.0).collect::<Vec<_>>(), [0, 3, 6, 8, 12]);
    std::fs::remove_dir_all(out).ok();
}

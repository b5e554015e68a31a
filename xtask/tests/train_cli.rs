//! `cargo xtask train` as a user runs it: the real binary, on the tiny-llama-a fixture, with
//! its output piped (as to a file). Each run takes a few steps of a few records.

mod common;

use assert_cmd::Command;
use common::{copy_dir, summary};
use predicates::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A run config in `dir` (absolute paths throughout) training into `dir/out`: a small
/// Echo-LoRA run on the synthetic task, with `set` (`("section.key", "TOML value")`) adding
/// or replacing keys.
fn write_config(dir: &Path, name: &str, set: &[(&str, &str)]) -> PathBuf {
    let model = format!("{:?}", echo_testdata::tiny_llama_a().display().to_string());
    let out = format!("{:?}", dir.join("out").display().to_string());
    let mut keys: Vec<(String, String)> = [
        ("model.path", model.as_str()),
        ("data.synthetic_records", "24"),
        ("data.val_count", "4"),
        ("data.cutoff", "200"),
        ("adapter.method", "\"lora\""),
        ("adapter.r", "4"),
        ("adapter.alpha", "8"),
        ("adapter.dropout", "0.1"),
        ("adapter.targets", "[\"q_proj\", \"v_proj\"]"),
        ("echo.source_layers", "[-1]"),
        ("echo.target_layers", "[0]"),
        ("echo.target_modules", "[\"q_proj\"]"),
        ("echo.d_echo", "8"),
        ("echo.p_route", "0.5"),
        ("train.seed", "3"),
        ("train.batch_size", "4"),
        ("train.micro_batch_size", "2"),
        ("train.lr", "1e-2"),
        ("train.warmup_steps", "1"),
        ("train.eval_every", "2"),
        ("train.save_every", "0"),
        ("train.device", "\"cpu\""),
        ("output.dir", out.as_str()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in set {
        match keys.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => keys.push((k.to_string(), v.to_string())),
        }
    }
    let mut text = String::new();
    for section in ["model", "data", "adapter", "echo", "train", "output"] {
        text += &format!("[{section}]\n");
        for (k, v) in &keys {
            if let Some(key) = k.strip_prefix(section).and_then(|k| k.strip_prefix('.')) {
                text += &format!("{key} = {v}\n");
            }
        }
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The binary, run from `dir` with its caches there and no backtrace asked for.
fn xtask(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("xtask").unwrap();
    c.current_dir(dir).env("ECHO_LORA_CACHE", dir.join("cache")).env_remove("RUST_BACKTRACE");
    c
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `(step, loss bits, lr bits)` of every step line of a run's `metrics.jsonl`, and the steps
/// of its validation lines, in file order.
fn metrics(out: &Path) -> (Vec<(u64, u32, u32)>, Vec<u64>) {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let (mut steps, mut evals) = (vec![], vec![]);
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let step = v["step"].as_u64().unwrap();
        if v.get("val_loss").is_some() {
            evals.push(step);
        } else if v.get("echo").is_none() {
            let f = |k: &str| (v[k].as_f64().unwrap() as f32).to_bits();
            steps.push((step, f("loss"), f("lr")));
        }
    }
    (steps, evals)
}

fn bytes(out: &Path, file: &str) -> Vec<u8> {
    std::fs::read(out.join(file)).unwrap_or_else(|e| panic!("{}: {e}", out.join(file).display()))
}

/// The step numbers of `step k/N` progress lines.
fn step_lines(text: &str) -> Vec<usize> {
    text.lines()
        .filter_map(|l| l.strip_prefix("step "))
        .map(|l| l.split('/').next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn a_piped_run_prints_progress_lines_and_every_validation() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "run.toml", &[("train.max_steps", "7"), ("train.log_every", "3")]);
    let out = xtask(dir.path()).arg("train").arg(&cfg).output().unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    // The first step of the process, every 3rd, and the last.
    assert_eq!(step_lines(&text), [1, 3, 6, 7], "{text}");
    let line = text.lines().find(|l| l.starts_with("step 3/7")).unwrap();
    // Step 3 trains at the linear schedule's 1e-2 * (1 - (2 - 1) / (7 - 1)) (warm-up 1).
    for part in ["loss ", "lr 8.33e-3", "tok/s", "elapsed 0:", "ETA 0:"] {
        assert!(line.contains(part), "`{part}` missing from {line:?}");
    }
    assert!(text.contains("validation before training: loss "), "{text}");
    for s in [2, 4, 6, 7] {
        assert!(text.contains(&format!("validation at step {s}/7: loss ")), "step {s}: {text}");
    }
    // What the cutoff did, before the first step.
    let data = text.find("data: 24 records, 24 examples (20 train, 4 validation)").expect(&text);
    assert!(data < text.find("step 1/7").unwrap());
    assert!(text.contains("0 truncated, 0 dropped"), "{text}");
}

#[test]
fn a_resume_under_a_changed_config_is_refused_naming_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "run.toml", &[("train.max_steps", "2")]);
    xtask(dir.path()).arg("train").arg(&cfg).assert().success();
    let changed =
        write_config(dir.path(), "run.toml", &[("adapter.r", "8"), ("train.max_steps", "2"), ("train.lr", "1e-3")]);
    xtask(dir.path())
        .arg("train")
        .arg(&changed)
        .arg("--resume")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("adapter.r: 4 -> 8"))
        .stderr(predicate::str::contains("train.lr: 0.01 -> 0.001"))
        .stderr(predicate::str::contains("different config"));
    // What only says how the run reports, or where it computes, may change.
    let cosmetic = write_config(
        dir.path(),
        "run.toml",
        &[("train.max_steps", "2"), ("train.log_every", "5"), ("data.max_truncated_fraction", "0.5")],
    );
    xtask(dir.path()).arg("train").arg(&cosmetic).arg("--resume").assert().success();
}

#[test]
fn extending_a_finished_run_matches_an_uninterrupted_one() {
    // A constant schedule does not depend on the run's length, so 3 steps then 3 more must
    // be the same run as 6 straight (linear and cosine stretch to the new length instead:
    // the README's Commands section says how).
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir_all(d).unwrap();
    }
    let straight = write_config(&a, "run.toml", &[("train.max_steps", "6"), ("train.schedule", "\"constant\"")]);
    let out = xtask(&a).arg("train").arg(&straight).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // log_every = 0 (automatic): a 6-step run logs every step.
    assert_eq!(step_lines(&stdout(&out)), [1, 2, 3, 4, 5, 6]);

    let short = write_config(&b, "run.toml", &[("train.max_steps", "3"), ("train.schedule", "\"constant\"")]);
    xtask(&b).arg("train").arg(&short).assert().success();
    let out = xtask(&b).arg("train").arg(&short).args(["--resume", "--max-steps", "6"]).output().unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("length changes from 3 to 6 steps (train.max_steps: 3 -> 6)"), "{text}");
    assert!(text.contains("constant lr schedule is unaffected"), "{text}");
    assert_eq!(step_lines(&text), [4, 5, 6], "only this process's steps: {text}");

    let (a, b) = (a.join("out"), b.join("out"));
    for f in ["adapter/adapter_model.safetensors", "checkpoint/state.safetensors"] {
        assert!(bytes(&a, f) == bytes(&b, f), "{f} differs from the uninterrupted run's");
    }
    let ((sa, _), (sb, eb)) = (metrics(&a), metrics(&b));
    assert_eq!(sa.len(), 6);
    assert_eq!(sa, sb, "step, loss and lr of every step, each step once");
    assert_eq!(eb, [0, 2, 3, 4, 6], "validations: every 2 steps and at each process's end");
    let (ja, jb) = (summary(&a), summary(&b));
    for k in ["steps", "total_steps", "first_loss", "last_loss", "first_val_loss"] {
        assert_eq!(ja[k], jb[k], "summary.json `{k}`");
    }
    assert_eq!(jb["resumed_from"], 3);
    assert!(ja["resumed_from"].is_null());
}

#[test]
fn more_epochs_on_resume_extend_the_run_exactly() {
    // 20 training records in batches of 4: 5 steps an epoch. One epoch, then a second by
    // raising train.epochs, against two epochs straight.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir_all(d).unwrap();
    }
    let two = |d: &Path| write_config(d, "run.toml", &[("train.epochs", "2"), ("train.schedule", "\"constant\"")]);
    xtask(&a).arg("train").arg(two(&a)).assert().success();
    let one = write_config(&b, "run.toml", &[("train.epochs", "1"), ("train.schedule", "\"constant\"")]);
    xtask(&b).arg("train").arg(&one).assert().success();
    xtask(&b)
        .arg("train")
        .arg(two(&b))
        .arg("--resume")
        .assert()
        .success()
        .stdout(predicate::str::contains("length changes from 5 to 10 steps (train.epochs: 1 -> 2)"));
    let (a, b) = (a.join("out"), b.join("out"));
    assert!(bytes(&a, "adapter/adapter_model.safetensors") == bytes(&b, "adapter/adapter_model.safetensors"));
    assert_eq!(metrics(&a).0, metrics(&b).0);
    assert_eq!(summary(&b)["steps"], 10);
}

#[test]
fn a_resume_after_an_interruption_keeps_each_step_once_and_summarises_the_whole_run() {
    // A run that was stopped after writing steps 1-4 to metrics.jsonl but whose last
    // checkpoint is at step 2: the checkpoint of a 2-step run of the same config put in
    // place of its own (a constant schedule makes the two runs agree up to step 2).
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir_all(d).unwrap();
    }
    let cfg = |d: &Path| write_config(d, "run.toml", &[("train.max_steps", "4"), ("train.schedule", "\"constant\"")]);
    xtask(&a).arg("train").arg(cfg(&a)).assert().success();
    xtask(&b).arg("train").arg(cfg(&b)).args(["--max-steps", "2"]).assert().success();
    let (a, b) = (a.join("out"), b.join("out"));
    let (straight, straight_summary) = (metrics(&a), summary(&a));
    std::fs::remove_dir_all(a.join("checkpoint")).unwrap();
    copy_dir(&b.join("checkpoint"), &a.join("checkpoint"));

    let run_dir = a.parent().unwrap();
    xtask(run_dir).arg("train").arg(cfg(run_dir)).arg("--resume").assert().success();
    let (steps, evals) = metrics(&a);
    assert_eq!(steps.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2, 3, 4], "each step once");
    assert_eq!(evals, [0, 2, 4]);
    assert_eq!(steps, straight.0, "steps 3 and 4 trained again, to the same losses");
    let s = summary(&a);
    assert_eq!(s["resumed_from"], 2);
    assert_eq!(s["steps"], 4);
    // The whole run: its first step and the validation before it happened in the first process.
    assert_eq!(s["first_loss"], straight_summary["first_loss"]);
    assert_eq!(s["first_val_loss"], straight_summary["first_val_loss"]);
    assert!(s["first_val_loss"].is_number() && s["first_loss"].is_number());
}

/// `n` real records (ARC-Easy's first) as a JSON file in `dir`.
fn arc_records(dir: &Path, n: usize) -> (PathBuf, Vec<echo_data::Record>) {
    let all = echo_data::read_records(echo_testdata::commonsense().join("ARC-Easy/train.json")).unwrap();
    let recs = all[..n].to_vec();
    let path = dir.join("arc.json");
    echo_data::write_records_json(&path, &recs).unwrap();
    (path, recs)
}

#[test]
fn a_cutoff_that_cuts_answers_from_too_many_records_is_refused_with_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (data, recs) = arc_records(dir.path(), 40);
    // Full lengths (prompt, answer, EOS) under the fixture's tokenizer; a cutoff at the
    // median cuts about half of the samples.
    let tok = echo_data::Tokenizer::from_dir(echo_testdata::tiny_llama_a()).unwrap();
    let tpl = echo_data::Template::alpaca();
    let enc = echo_data::EncodeConfig { cutoff: None, ..Default::default() };
    let ex: Vec<echo_data::Example> = recs
        .iter()
        .map(|r| match echo_data::encode_example(&tok, &tpl, r, &enc).unwrap() {
            echo_data::Encoded::Kept(e) => e,
            echo_data::Encoded::Dropped(_) => unreachable!("no cutoff"),
        })
        .collect();
    let mut lens: Vec<usize> = ex.iter().map(|e| e.len()).collect();
    lens.sort_unstable();
    let cutoff = lens[lens.len() / 2];
    let truncated = ex.iter().filter(|e| e.len() > cutoff && e.prompt_len < cutoff).count();
    let no_room = ex.iter().filter(|e| e.prompt_len >= cutoff).count();
    assert!(truncated + no_room > 2, "the cutoff must cut more than 5% of 40");

    let (train, cutoff) = (format!("[{:?}]", data.display().to_string()), cutoff.to_string());
    let config = |fraction: &str| {
        let keys = [
            ("data.train", train.as_str()),
            ("data.cutoff", cutoff.as_str()),
            ("data.max_truncated_fraction", fraction),
            ("train.max_steps", "1"),
        ];
        write_config(dir.path(), "run.toml", &keys)
    };
    let cfg = config("0.05");
    let out = xtask(dir.path()).arg("train").arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let want =
        format!("data.cutoff = {cutoff} takes learned (answer) tokens from {} of 40 records", truncated + no_room);
    assert!(err.contains(&want), "want {want:?} in {err}");
    assert!(err.contains(&format!("{truncated} truncated, {no_room} dropped")), "{err}");
    assert!(err.contains("data.max_truncated_fraction = 0.05"), "{err}");
    assert!(err.contains(&format!("longest sample has {} tokens", lens[lens.len() - 1])), "{err}");
    assert!(!stdout(&out).contains("step 1/"), "refused before the first step");

    // Accepting the loss trains, and says what was lost.
    let cfg = config("1.0");
    let out = xtask(dir.path()).arg("train").arg(&cfg).output().unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let kept = 40 - no_room;
    assert!(
        text.contains(&format!(
            "data: 40 records, {kept} examples ({} train, 4 validation); cutoff {cutoff} tokens (data.cutoff): \
             {truncated} truncated, {no_room} dropped",
            kept - 4
        )),
        "{text}"
    );
}

#[test]
fn a_user_error_prints_its_message_and_exits_1_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let no_backtrace = || predicate::str::contains("backtrace").not().and(predicate::str::contains("Backtrace").not());
    xtask(dir.path())
        .env("RUST_BACKTRACE", "1")
        .arg("train")
        .arg(&missing)
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with("error: "))
        .stderr(predicate::str::contains("missing.toml"))
        .stderr(no_backtrace());
    let bad = write_config(dir.path(), "bad.toml", &[("train.lrr", "1e-3")]);
    xtask(dir.path())
        .env("RUST_BACKTRACE", "full")
        .arg("train")
        .arg(&bad)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("bad.toml").and(predicate::str::contains("lrr")))
        .stderr(no_backtrace());
    // Resuming where there is nothing to resume.
    let cfg = write_config(dir.path(), "run.toml", &[("train.max_steps", "1")]);
    xtask(dir.path())
        .env("RUST_BACKTRACE", "1")
        .arg("train")
        .arg(&cfg)
        .arg("--resume")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no checkpoint to resume from"))
        .stderr(no_backtrace());
}

/// Ctrl-C (SIGINT) during training: the step in progress finishes, a checkpoint is written and
/// the command exits with 130; `--resume` then ends where an uninterrupted run ends, bit for
/// bit, every step logged once.
#[cfg(unix)]
#[test]
fn an_interrupted_run_stops_cleanly_and_resumes_to_the_uninterrupted_end() {
    use std::time::{Duration, Instant};
    let set = [("train.max_steps", "300"), ("train.eval_every", "0"), ("train.log_every", "50")];
    let whole = tempfile::tempdir().unwrap();
    let cfg = write_config(whole.path(), "run.toml", &set);
    let out = xtask(whole.path()).arg("train").arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "run.toml", &set);
    let run = dir.path().join("out");
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("xtask"))
        .current_dir(dir.path())
        .env("ECHO_LORA_CACHE", dir.path().join("cache"))
        .arg("train")
        .arg(&cfg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Two steps done, then the signal: most of the run is still ahead.
    let give_up = Instant::now() + Duration::from_secs(300);
    let steps_logged = || {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .map(|t| t.lines().filter(|l| l.contains("\"loss\"")).count())
            .unwrap_or(0)
    };
    while steps_logged() < 2 {
        assert!(Instant::now() < give_up, "no training step within 300 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill(2) on the pid of our own child, which has not been waited for yet.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let text = stdout(&out) + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{text}");
    assert!(text.contains("interrupted (resume to continue)"), "{text}");
    let summary: Value = serde_json::from_str(&String::from_utf8(bytes(&run, "summary.json")).unwrap()).unwrap();
    let stopped = summary["steps"].as_u64().unwrap();
    assert!((2..300).contains(&stopped), "stopped at step {stopped}");
    let state: Value = serde_json::from_str(&String::from_utf8(bytes(&run, "checkpoint/state.json")).unwrap()).unwrap();
    assert_eq!(state["step"].as_u64(), Some(stopped), "the checkpoint is the step it stopped at");

    let out = xtask(dir.path()).arg("train").arg(&cfg).arg("--resume").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(metrics(&run).0, metrics(&whole.path().join("out")).0, "every step once, the same losses");
    let weights = "adapter/adapter_model.safetensors";
    assert!(bytes(&run, weights) == bytes(&whole.path().join("out"), weights), "the uninterrupted run's adapter");
}

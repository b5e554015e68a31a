//! The run folder as `cargo xtask train` guards it, with the real binary on the tiny-llama-a
//! fixture: a new run never replaces an old one unasked, two runs never share a folder, and a
//! kill at any moment of a checkpoint save leaves one to resume from.

mod common;

use assert_cmd::Command;
use common::{copy_dir, summary};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A small Echo-LoRA run config in `dir` training into `dir/out` (absolute paths), with
/// `extra` lines added to `[train]`.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "[model]\npath = {:?}\n[data]\nsynthetic_records = 24\nval_count = 4\ncutoff = 200\n[adapter]\nmethod = \
         \"lora\"\nr = 4\nalpha = 8\ndropout = 0.1\ntargets = [\"q_proj\", \"v_proj\"]\n[echo]\nsource_layers = \
         [-1]\ntarget_layers = [0]\ntarget_modules = [\"q_proj\"]\nd_echo = 8\np_route = 0.5\n[train]\nseed = \
         3\nbatch_size = 4\nmicro_batch_size = 2\nlr = 1e-2\nwarmup_steps = 1\neval_every = 2\ndevice = \
         \"cpu\"\n{extra}\n[output]\ndir = {:?}\n",
        echo_testdata::tiny_llama_a().display().to_string(),
        dir.join("out").display().to_string()
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The binary, run from `dir` with its caches there.
fn xtask(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("xtask").unwrap();
    c.current_dir(dir).env("ECHO_LORA_CACHE", dir.join("cache")).env_remove("RUST_BACKTRACE");
    c
}

/// Runs `cmd`, expecting success, and returns its stdout.
fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// Every file and link under `dir` by relative path: a file's bytes, a link's target.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let (path, t) = (e.path(), e.file_type().unwrap());
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if t.is_symlink() {
                out.insert(rel + " ->", std::fs::read_link(&path).unwrap().display().to_string().into_bytes());
            } else if t.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// `(step, loss bits, lr bits)` of every step line of `metrics.jsonl`.
fn steps(out: &Path) -> Vec<(u64, u32, u32)> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        // Step lines only: not validation lines, nor echo diagnostics lines.
        .filter(|v| v.get("val_loss").is_none() && v.get("echo").is_none())
        .map(|v| {
            let f = |k: &str| (v[k].as_f64().unwrap() as f32).to_bits();
            (v["step"].as_u64().unwrap(), f("loss"), f("lr"))
        })
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// The outputs of two runs that must be the same run, bit for bit.
fn assert_same_run(a: &Path, b: &Path) {
    for f in [
        "adapter/adapter_model.safetensors",
        "best-adapter/adapter_model.safetensors",
        "checkpoint/state.safetensors",
        "checkpoint/adapter/adapter_model.safetensors",
    ] {
        let read = |d: &Path| std::fs::read(d.join(f)).unwrap_or_else(|e| panic!("{}: {e}", d.join(f).display()));
        assert!(read(a) == read(b), "{f} differs from the uninterrupted run's");
    }
    // The checkpoint's state but the clocks.
    let state = |d: &Path| {
        let mut v: Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("checkpoint/state.json")).unwrap()).unwrap();
        for k in ["train_seconds", "wall_seconds"] {
            v.as_object_mut().unwrap().remove(k).expect(k);
        }
        v
    };
    assert_eq!(state(a), state(b), "checkpoint/state.json");
    assert_eq!(steps(a), steps(b), "step, loss and lr of every step, each step once");
    for k in ["steps", "first_loss", "last_loss", "first_val_loss", "best_val_loss"] {
        assert_eq!(summary(a)[k], summary(b)[k], "summary.json `{k}`");
    }
}

#[test]
fn a_new_run_into_a_finished_runs_folder_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "max_steps = 2");
    ok(xtask(dir.path()).arg("train").arg(&cfg));
    let out_dir = dir.path().join("out");
    let before = snapshot(&out_dir);
    assert!(
        before.contains_key("metrics.jsonl") && before.keys().any(|k| k.starts_with("checkpoint")),
        "{:?}",
        before.keys()
    );
    let out = xtask(dir.path()).arg("train").arg(&cfg).args(["--max-steps", "3"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("{}: this folder holds a run", out_dir.display())), "{err}");
    assert!(err.contains("--resume") && err.contains("--overwrite"), "{err}");
    assert!(snapshot(&out_dir) == before, "the run folder changed");
    assert_eq!(names(dir.path()), ["out", "run.toml"], "nothing moved aside");
}

#[test]
fn overwrite_moves_the_old_run_aside_whole_and_trains_anew() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "max_steps = 2");
    ok(xtask(dir.path()).arg("train").arg(&cfg));
    let out_dir = dir.path().join("out");
    let before = snapshot(&out_dir);
    let text = ok(xtask(dir.path()).arg("train").arg(&cfg).args(["--overwrite", "--max-steps", "3"]));
    let aside: Vec<String> = names(dir.path()).into_iter().filter(|n| n.starts_with("out.old-")).collect();
    assert_eq!(aside.len(), 1, "{:?}", names(dir.path()));
    let aside = dir.path().join(&aside[0]);
    assert!(text.contains(&format!("is now in {}", aside.display())), "{text}");
    assert!(snapshot(&aside) == before, "the old run is intact at its new place");
    assert_eq!(summary(&out_dir)["steps"], 3);
    assert!(summary(&out_dir)["resumed_from"].is_null());
    assert_eq!(summary(&aside)["steps"], 2);
    // --overwrite and --resume contradict each other.
    let out = xtask(dir.path()).arg("train").arg(&cfg).args(["--overwrite", "--resume"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_folder_locked_by_another_run_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "max_steps = 1");
    let out_dir = dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let lock = std::fs::File::create(out_dir.join(".lock")).unwrap();
    lock.try_lock().unwrap();
    for resume in [false, true] {
        let mut cmd = xtask(dir.path());
        cmd.arg("train").arg(&cfg);
        if resume {
            cmd.arg("--resume");
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(&format!("{}: another run is using this folder", out_dir.display())), "{err}");
    }
    assert_eq!(names(&out_dir), [".lock"], "nothing written");
    // Released (as the OS does when the holder dies), the folder is free.
    drop(lock);
    ok(xtask(dir.path()).arg("train").arg(&cfg));
}

/// A reference run of 6 steps with a checkpoint every 2, in `dir/out`.
fn straight(dir: &Path) -> PathBuf {
    let cfg = write_config(dir, "max_steps = 6\nsave_every = 2");
    ok(xtask(dir).arg("train").arg(&cfg));
    dir.join("out")
}

#[test]
fn a_kill_at_any_moment_of_a_save_resumes_to_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let a = straight(&dir.path().join("a").tap_mkdir());
    // `written`: the step-4 checkpoint complete under its temporary name; `renamed`: in
    // place, the pointer still naming step 2's.
    for point in ["written", "renamed"] {
        let d = dir.path().join(point).tap_mkdir();
        let cfg = write_config(&d, "max_steps = 6\nsave_every = 2");
        let out = xtask(&d).arg("train").arg(&cfg).env("ECHO_TRAIN_KILL_SAVE", format!("4:{point}")).output().unwrap();
        assert_eq!(out.status.code(), Some(137), "{point}: {}", String::from_utf8_lossy(&out.stderr));
        let b = d.join("out");
        assert_eq!(std::fs::read_link(b.join("checkpoint")).unwrap(), Path::new("checkpoint-2"), "{point}");
        ok(xtask(&d).arg("train").arg(&cfg).arg("--resume"));
        assert_eq!(summary(&b)["resumed_from"], 2, "{point}");
        assert_same_run(&a, &b);
        // The last two checkpoints, no leftovers.
        assert_eq!(
            names(&b).into_iter().filter(|n| n.contains("checkpoint")).collect::<Vec<_>>(),
            ["checkpoint", "checkpoint-4", "checkpoint-6"],
            "{point}"
        );
    }
}

#[test]
fn the_state_a_kill_between_the_old_swaps_renames_left_still_resumes() {
    // The old save renamed `checkpoint/` to `.checkpoint.old-PID`, then the complete new one
    // from `.checkpoint.tmp-PID` to `checkpoint/`: killed in between, only those two remain.
    // Built here from the checkpoints of a 2-step and a 4-step run of one config (a constant
    // schedule makes them the first steps of the 6-step run).
    let dir = tempfile::tempdir().unwrap();
    let [a, b, b2] = ["a", "b", "b2"].map(|n| dir.path().join(n).tap_mkdir());
    let cfg = |d: &Path| write_config(d, "max_steps = 6\nschedule = \"constant\"");
    ok(xtask(&a).arg("train").arg(cfg(&a)));
    ok(xtask(&b2).arg("train").arg(cfg(&b2)).args(["--max-steps", "2"]));
    ok(xtask(&b).arg("train").arg(cfg(&b)).args(["--max-steps", "4"]));
    let out = b.join("out");
    copy_dir(&b2.join("out/checkpoint"), &out.join(".checkpoint.old-4242"));
    copy_dir(&out.join("checkpoint"), &out.join(".checkpoint.tmp-4242"));
    for n in names(&out) {
        let p = out.join(&n);
        if n == "checkpoint" || n.starts_with("checkpoint-") {
            if p.symlink_metadata().unwrap().is_symlink() {
                std::fs::remove_file(p).unwrap();
            } else {
                std::fs::remove_dir_all(p).unwrap();
            }
        }
    }
    let text = ok(xtask(&b).arg("train").arg(cfg(&b)).arg("--resume"));
    assert!(text.contains("resuming from the newest complete checkpoint"), "{text}");
    assert_eq!(summary(&out)["resumed_from"], 4);
    assert_same_run(&a.join("out"), &out);
    assert_eq!(
        names(&out).into_iter().filter(|n| n.contains("checkpoint")).collect::<Vec<_>>(),
        ["checkpoint", "checkpoint-4", "checkpoint-6"],
        "the old leftovers are gone once a new checkpoint stands"
    );
}

trait Mkdir {
    fn tap_mkdir(self) -> Self;
}

impl Mkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

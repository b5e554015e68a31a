//! `cargo xtask study --steps N` / `--minutes M`: a study in pieces. Each invocation trains at
//! most its budget, checkpoints and stops; the same command continues where it stopped, a
//! stopped arm is not taken for finished, and the pieces end where one uninterrupted study
//! ends (the same adapter, bit for bit).

use assert_cmd::Command;
use std::path::Path;

fn write_study(dir: &Path) -> std::path::PathBuf {
    write_study_with(dir, "")
}

/// The study, with `eval_extra` added to its `[eval]` section.
fn write_study_with(dir: &Path, eval_extra: &str) -> std::path::PathBuf {
    let model = format!("{:?}", echo_testdata::tiny_llama_a().display().to_string());
    let base = format!(
        "[model]\npath = {model}\n\
         [data]\nsynthetic_records = 24\nval_count = 4\ncutoff = 200\n\
         [adapter]\nmethod = \"lora\"\nr = 4\nalpha = 8\ndropout = 0.1\ntargets = [\"q_proj\", \"v_proj\"]\n\
         [echo]\nsource_layers = [-1]\ntarget_layers = [0]\ntarget_modules = [\"q_proj\"]\nd_echo = 8\n\
         [train]\nseed = 3\nepochs = 1\nbatch_size = 4\nmicro_batch_size = 2\nlr = 1e-2\nwarmup_steps = 1\n\
         eval_every = 0\nsave_every = 0\ndevice = \"cpu\"\n\
         [output]\ndir = \"unused\"\n"
    );
    std::fs::write(dir.join("base.toml"), base).unwrap();
    let data = format!("{:?}", echo_testdata::commonsense().display().to_string());
    let study = format!(
        "base = \"base.toml\"\nout = \"study\"\neval_base = false\n\
         [eval]\ndata = {data}\ndatasets = [\"ARC-Easy\"]\nmode = \"loglik\"\nlimit = 4\nbatch = 4\n{eval_extra}\n\
         [[arm]]\nname = \"LoRA\"\nset = {{ \"echo.enabled\" = false }}\n\
         [[arm]]\nname = \"Echo-LoRA\"\nset = {{ \"echo.enabled\" = true }}\n"
    );
    let path = dir.join("study.toml");
    std::fs::write(&path, study).unwrap();
    path
}

fn study(config: &Path, args: &[&str]) -> String {
    let dir = config.parent().unwrap();
    let out = Command::cargo_bin("xtask")
        .unwrap()
        .current_dir(dir)
        .env("ECHO_LORA_CACHE", dir.join("cache"))
        .arg("study")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "study {args:?} failed:\n{text}");
    text
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn a_study_in_pieces_ends_where_one_run_ends() {
    let whole = tempfile::tempdir().unwrap();
    let cfg = write_study(whole.path());
    study(&cfg, &[]);

    let pieces = tempfile::tempdir().unwrap();
    let cfg = write_study(pieces.path());
    // 20 training records at batch 4: 5 steps per arm. Piece 1: 3 steps of LoRA.
    let text = study(&cfg, &["--steps", "3"]);
    assert!(text.contains("stopped at step 3/5"), "{text}");
    assert!(text.contains("Echo-LoRA, seed 42: not started in this piece"), "{text}");
    let lora = pieces.path().join("study/lora-seed42");
    assert_eq!(summary(&lora)["steps"], 3);
    assert!(!lora.join("eval-loglik.json").exists(), "a stopped arm is not evaluated");
    // Piece 2: the last 2 steps of LoRA, 2 of Echo-LoRA, then the evaluation of LoRA.
    let text = study(&cfg, &["--steps", "4"]);
    assert!(text.contains("LoRA, seed 42: resuming"), "{text}");
    assert!(lora.join("eval-loglik.json").exists());
    assert!(text.contains("stopped at step 2/5"), "{text}");
    // Piece 3: no budget given: the rest.
    study(&cfg, &[]);
    for arm in ["lora-seed42", "echo-lora-seed42"] {
        let (a, b) = (whole.path().join("study").join(arm), pieces.path().join("study").join(arm));
        assert_eq!(summary(&b)["steps"], 5);
        let weights = |d: &Path| std::fs::read(d.join("adapter/adapter_model.safetensors")).unwrap();
        assert_eq!(weights(&a), weights(&b), "{arm}: the pieces end with the uninterrupted run's adapter");
    }
    // A piece with an expired time slot trains nothing and says so.
    let text = study(&cfg, &["--minutes", "0"]);
    assert!(!text.contains("training"), "{text}");
}

#[test]
fn all_arms_train_before_any_evaluation_and_an_evaluation_starts_only_if_it_fits() {
    let dir = tempfile::tempdir().unwrap();
    // One evaluation is expected to take far longer than the piece: both arms train in it,
    // neither is evaluated.
    let cfg = write_study_with(dir.path(), "expected_minutes = 100000");
    let text = study(&cfg, &["--minutes", "600"]);
    for arm in ["lora-seed42", "echo-lora-seed42"] {
        let run = dir.path().join("study").join(arm);
        assert_eq!(summary(&run)["steps"], 5, "{arm} trained to its end");
        assert!(!run.join("eval-loglik.json").exists(), "{arm}: an evaluation that does not fit is not started");
    }
    assert!(text.contains("LoRA, seed 42: the loglik evaluation is left to the next piece"), "{text}");
    let (train_echo, eval_lora) = (text.find("Echo-LoRA, seed 42: training"), text.find("evaluating"));
    assert!(train_echo.is_some() && eval_lora.is_none(), "{text}");
    // Without a time slot, every evaluation runs.
    let text = study(&cfg, &[]);
    assert!(!text.contains("training"), "{text}");
    for arm in ["lora-seed42", "echo-lora-seed42"] {
        assert!(dir.path().join("study").join(arm).join("eval-loglik.json").exists(), "{arm}");
    }
}

#[test]
fn a_negative_expected_evaluation_length_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_study_with(dir.path(), "expected_minutes = -1");
    let out = Command::cargo_bin("xtask").unwrap().current_dir(dir.path()).arg("study").arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("expected_minutes = -1"), "{err}");
}

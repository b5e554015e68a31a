//! Paths inside a run config mean the same files whatever the working directory: they are
//! relative to the config file. The tokenisation cache goes to the user's cache folder, not
//! into the working directory or the source tree. The real binary, on a copy of the
//! tiny-llama-a fixture laid out as a user's project folder.

use assert_cmd::Command;
use std::path::Path;

fn copy_model(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(echo_testdata::tiny_llama_a().join(f), to.join(f)).unwrap();
    }
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[test]
fn config_paths_are_relative_to_the_config_file_and_the_cache_is_the_users() {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    copy_model(&project.join("models/tiny"));
    // 24 real boolq records as the project's own data file.
    let records: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(echo_testdata::commonsense().join("boolq/train.json")).unwrap())
            .unwrap();
    std::fs::create_dir_all(project.join("data")).unwrap();
    std::fs::write(project.join("data/train.json"), serde_json::to_string(&records[..24]).unwrap()).unwrap();
    std::fs::create_dir_all(project.join("configs")).unwrap();
    let config = project.join("configs/run.toml");
    std::fs::write(
        &config,
        "[model]\npath = \"../models/tiny\"\n\
         [data]\ntrain = [\"../data/train.json\"]\nval_count = 4\ncutoff = 256\n\
         [adapter]\nr = 4\nalpha = 8\ntargets = [\"q_proj\", \"v_proj\"]\n\
         [echo]\nenabled = false\n\
         [train]\nmax_steps = 2\nbatch_size = 4\nmicro_batch_size = 4\nlr = 1e-3\nwarmup_steps = 0\n\
         eval_every = 0\nsave_every = 0\ndevice = \"cpu\"\n\
         [output]\ndir = \"../runs/first\"\n",
    )
    .unwrap();
    // Run from an unrelated, empty working directory.
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let cache = tmp.path().join("cache");
    let out = Command::cargo_bin("xtask")
        .unwrap()
        .current_dir(&elsewhere)
        .env("ECHO_LORA_CACHE", &cache)
        .env_remove("XDG_CACHE_HOME")
        .args(["train", config.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    // The run went where the config says, relative to the config file.
    let run = project.join("runs/first");
    for f in ["adapter/adapter_model.safetensors", "metrics.jsonl", "summary.json"] {
        assert!(run.join(f).is_file(), "{} missing; output:\n{text}", run.join(f).display());
    }
    // Nothing was written into the working directory; the tokenised data is in the cache.
    assert_eq!(files_under(&elsewhere), Vec::<String>::new(), "the working directory stays empty");
    let cached = files_under(&cache.join("data"));
    assert!(cached.iter().any(|f| f.ends_with(".bin")), "tokenisation cache in {}: {cached:?}", cache.display());
    // A relative path that does not exist next to the config is an error naming it, even
    // though it exists relative to the working directory.
    std::fs::create_dir_all(elsewhere.join("data")).unwrap();
    std::fs::copy(project.join("data/train.json"), elsewhere.join("data/missing.json")).unwrap();
    let bad = project.join("configs/bad.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace("../data/train.json", "data/missing.json");
    std::fs::write(&bad, text.replace("../runs/first", "../runs/bad")).unwrap();
    let out = Command::cargo_bin("xtask")
        .unwrap()
        .current_dir(&elsewhere)
        .env("ECHO_LORA_CACHE", &cache)
        .env_remove("RUST_BACKTRACE")
        .args(["train", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let expected = project.join("configs/data/missing.json").display().to_string();
    assert!(err.contains(&expected), "the error names {expected}: {err}");
}

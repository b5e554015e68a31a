//! `cargo xtask study` with `[eval] modes = ["generate", "loglik"]`: every arm (and the base
//! model) is evaluated once per mode into `eval-<mode>.json`, and the table compares the
//! second arm with the first (the reference) per mode, per dataset and on the average, with
//! numbers this test recomputes from the two reports' per-record predictions. `--report-only`
//! rewrites the same table; an older study's `eval.json` is read as its mode's report, never
//! replaced.

use assert_cmd::Command;
use std::path::Path;

fn write_study(dir: &Path, eval_extra: &str) -> std::path::PathBuf {
    let model = format!("{:?}", echo_testdata::tiny_llama_a().display().to_string());
    let base = format!(
        "[model]\npath = {model}\n\
         [data]\nsynthetic_records = 24\nval_count = 4\ncutoff = 200\n\
         [adapter]\nmethod = \"lora\"\nr = 4\nalpha = 8\ndropout = 0.1\ntargets = [\"q_proj\", \"v_proj\"]\n\
         [echo]\nsource_layers = [-1]\ntarget_layers = [0]\ntarget_modules = [\"q_proj\"]\nd_echo = 8\n\
         [train]\nseed = 3\nepochs = 1\nbatch_size = 4\nmicro_batch_size = 2\nlr = 5e-2\nwarmup_steps = 1\n\
         eval_every = 0\nsave_every = 0\ndevice = \"cpu\"\n\
         [output]\ndir = \"unused\"\n"
    );
    std::fs::write(dir.join("base.toml"), base).unwrap();
    let data = format!("{:?}", echo_testdata::commonsense().display().to_string());
    let study = format!(
        "base = \"base.toml\"\nout = \"study\"\neval_base = true\n\
         [eval]\ndata = {data}\ndatasets = [\"ARC-Easy\", \"boolq\"]\nmodes = [\"generate\", \"loglik\"]\n\
         limit = 8\nbatch = 4\nmax_new_tokens = 4\n{eval_extra}\
         [[arm]]\nname = \"LoRA\"\nset = {{ \"echo.enabled\" = false }}\n\
         [[arm]]\nname = \"Echo-LoRA\"\nset = {{ \"echo.enabled\" = true }}\n"
    );
    let path = dir.join("study.toml");
    std::fs::write(&path, study).unwrap();
    path
}

fn study(config: &Path, args: &[&str]) -> (bool, String) {
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
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// McNemar's exact two-sided p from integer binomial coefficients (b + c is small here).
fn mcnemar(b: u64, c: u64) -> f64 {
    let n = b + c;
    let choose = |k: u64| (0..k).fold(1u128, |acc, i| acc * (n - i) as u128 / (i + 1) as u128);
    let tail: u128 = (0..=b.min(c)).map(choose).sum();
    (2.0 * tail as f64 / 2f64.powi(n as i32)).min(1.0)
}

/// Per dataset of the reference's report, in its order: (name, records, reference accuracy,
/// arm accuracy, b, c), matching records by (dataset, index).
fn recount(reference: &serde_json::Value, arm: &serde_json::Value) -> Vec<(String, u64, f64, f64, u64, u64)> {
    let outcomes = |r: &serde_json::Value| -> std::collections::BTreeMap<(String, u64), bool> {
        r["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    (p["dataset"].as_str().unwrap().to_string(), p["index"].as_u64().unwrap()),
                    p["correct"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let (r, a) = (outcomes(reference), outcomes(arm));
    assert_eq!(r.keys().collect::<Vec<_>>(), a.keys().collect::<Vec<_>>(), "the two reports score the same records");
    let mut rows = Vec::new();
    for d in reference["datasets"].as_array().unwrap() {
        let name = d["name"].as_str().unwrap();
        let keys: Vec<_> = r.keys().filter(|k| k.0 == name).collect();
        let n = keys.len() as u64;
        let count = |f: &dyn Fn(bool, bool) -> bool| keys.iter().filter(|k| f(r[*k], a[*k])).count() as u64;
        let (rc, ac) = (count(&|x, _| x), count(&|_, y| y));
        rows.push((
            name.to_string(),
            n,
            rc as f64 / n as f64,
            ac as f64 / n as f64,
            count(&|x, y| x && !y),
            count(&|x, y| !x && y),
        ));
    }
    rows
}

#[test]
fn a_study_in_both_modes_compares_each_arm_with_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_study(tmp.path(), "");
    let (ok, text) = study(&cfg, &[]);
    assert!(ok, "{text}");
    let out = tmp.path().join("study");
    for dir in ["base", "lora-seed42", "echo-lora-seed42"] {
        for mode in ["generate", "loglik"] {
            let report = json(&out.join(dir).join(format!("eval-{mode}.json")));
            assert_eq!(report["mode"], mode, "{dir}");
            // 8 records of 2 sets, less those that do not fit the tiny model's context.
            let (scored, skipped) =
                (report["predictions"].as_array().unwrap().len(), report["skipped"].as_array().unwrap().len());
            assert!(scored > 8 && scored + skipped == 16, "{dir} {mode}: {scored} scored, {skipped} skipped");
        }
        assert!(!out.join(dir).join("eval.json").exists());
    }

    let results = json(&out.join("results.json"));
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert_eq!(results["reference"], "LoRA");
    assert!(md.contains("Paired with the reference arm `LoRA`"), "{md}");
    let modes = results["modes"].as_array().unwrap();
    assert_eq!(modes.iter().map(|m| m["mode"].as_str().unwrap()).collect::<Vec<_>>(), ["generate", "loglik"]);
    for m in modes {
        let mode = m["mode"].as_str().unwrap();
        assert!(md.contains(&format!("### Mode `{mode}`")), "{md}");
        assert!(m["base"]["accuracy"].as_array().unwrap().len() == 2, "{mode}: the base row");
        assert_eq!(m["runs"].as_array().unwrap().len(), 2);
        let paired = m["paired"].as_array().unwrap();
        assert_eq!(paired.len(), 1, "{mode}: one arm against the reference");
        let p = &paired[0];
        assert_eq!(
            (p["arm"].as_str(), p["reference"].as_str(), p["seed"].as_u64()),
            (Some("Echo-LoRA"), Some("LoRA"), Some(42))
        );
        assert!(p["bootstrap_resamples"].as_u64().unwrap() >= 10_000);

        // The statistics, recomputed from the two reports.
        let reference = json(&out.join("lora-seed42").join(format!("eval-{mode}.json")));
        let arm = json(&out.join("echo-lora-seed42").join(format!("eval-{mode}.json")));
        let rows = recount(&reference, &arm);
        let stats: Vec<&serde_json::Value> =
            p["datasets"].as_array().unwrap().iter().chain(std::iter::once(&p["average"])).collect();
        assert_eq!(stats.len(), 3);
        let k = rows.len() as f64;
        let average = (
            "average".to_string(),
            rows.iter().map(|r| r.1).sum::<u64>(),
            rows.iter().map(|r| r.2).sum::<f64>() / k,
            rows.iter().map(|r| r.3).sum::<f64>() / k,
            rows.iter().map(|r| r.4).sum::<u64>(),
            rows.iter().map(|r| r.5).sum::<u64>(),
        );
        for ((name, n, ra, aa, b, c), st) in rows.iter().chain(std::iter::once(&average)).zip(stats) {
            let ctx = format!("{mode} {name}: {st}");
            assert_eq!(st["dataset"].as_str(), Some(name.as_str()), "{ctx}");
            assert_eq!(st["records"].as_u64(), Some(*n), "{ctx}");
            assert!((st["reference_accuracy"].as_f64().unwrap() - ra).abs() < 1e-12, "{ctx}");
            assert!((st["arm_accuracy"].as_f64().unwrap() - aa).abs() < 1e-12, "{ctx}");
            let diff = 100.0 * (aa - ra);
            assert!((st["difference_pp"].as_f64().unwrap() - diff).abs() < 1e-9, "{ctx}");
            assert_eq!((st["b"].as_u64(), st["c"].as_u64()), (Some(*b), Some(*c)), "{ctx}");
            assert!((st["mcnemar_p"].as_f64().unwrap() - mcnemar(*b, *c)).abs() < 1e-12, "{ctx}");
            let (lo, hi) = (st["interval_pp"][0].as_f64().unwrap(), st["interval_pp"][1].as_f64().unwrap());
            assert!(lo <= diff + 1e-9 && diff <= hi + 1e-9, "{ctx}");
            if b + c == 0 {
                assert_eq!((lo, hi), (0.0, 0.0), "{ctx}: no discordant record, no spread");
            }
            let reading = if lo <= 0.0 && 0.0 <= hi {
                "no difference"
            } else if diff > 0.0 {
                "higher"
            } else {
                "lower"
            };
            let shown = if name == "average" { "**average**".to_string() } else { name.clone() };
            let row = format!(
                "| Echo-LoRA | 42 | {shown} | {n} | {:.1} | {:.1} | {diff:+.1} | [{lo:+.1}, {hi:+.1}] | {b} | {c} |",
                100.0 * ra,
                100.0 * aa
            );
            let line =
                md.lines().find(|l| l.starts_with(&row)).unwrap_or_else(|| panic!("{ctx}: no row {row} in\n{md}"));
            assert!(line.ends_with(&format!("| {reading} |")), "{line}");
        }
    }

    // --report-only rewrites the same table (the bootstrap is seeded), without the model.
    for f in ["results.md", "results.json", "results.svg"] {
        std::fs::remove_file(out.join(f)).unwrap();
    }
    let (ok, text) = study(&cfg, &["--report-only"]);
    assert!(ok && !text.contains("evaluating") && !text.contains("training"), "{text}");
    assert_eq!(std::fs::read_to_string(out.join("results.md")).unwrap(), md);
    assert_eq!(json(&out.join("results.json")), results);
    let svg = std::fs::read_to_string(out.join("results.svg")).unwrap();
    assert!(svg.contains("mode generate") && svg.contains("mode loglik"));

    // An older study's eval.json is the report of its mode: read, not re-evaluated nor replaced.
    let lora = out.join("lora-seed42");
    std::fs::rename(lora.join("eval-loglik.json"), lora.join("eval.json")).unwrap();
    let before = std::fs::read(lora.join("eval.json")).unwrap();
    let (ok, text) = study(&cfg, &[]);
    assert!(ok && !text.contains("evaluating"), "{text}");
    assert!(!lora.join("eval-loglik.json").exists());
    assert_eq!(std::fs::read(lora.join("eval.json")).unwrap(), before);
    assert_eq!(std::fs::read_to_string(out.join("results.md")).unwrap(), md);

    // Another reference arm: the first arm is compared with it.
    let cfg = write_study(tmp.path(), "reference = \"Echo-LoRA\"\n");
    let (ok, text) = study(&cfg, &["--report-only"]);
    assert!(ok, "{text}");
    let results = json(&out.join("results.json"));
    assert_eq!(results["modes"][1]["paired"][0]["arm"], "LoRA");
    assert_eq!(results["modes"][1]["paired"][0]["reference"], "Echo-LoRA");

    // Both spellings of the modes at once: refused, naming the file.
    let cfg = write_study(tmp.path(), "mode = \"loglik\"\n");
    let (ok, text) = study(&cfg, &["--report-only"]);
    assert!(!ok && text.contains("study.toml") && text.contains("not both"), "{text}");
}

#[test]
fn reports_over_different_records_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_study(tmp.path(), "");
    let out = tmp.path().join("study");
    // Two finished arms whose loglik reports differ in one record (as with another limit).
    let report = |records: &[(u64, bool)]| {
        let preds: Vec<serde_json::Value> = records
            .iter()
            .map(|(i, ok)| serde_json::json!({"dataset": "ARC-Easy", "index": i, "answer": "answer1", "prediction": "answer1", "correct": ok}))
            .collect();
        let correct = records.iter().filter(|r| r.1).count();
        serde_json::json!({
            "model": "m", "adapter": null, "mode": "loglik", "decoding": "greedy", "max_new_tokens": 4, "limit": 8,
            "datasets": [{"name": "ARC-Easy", "total": records.len(), "correct": correct, "no_answer": 0,
                          "accuracy": correct as f64 / records.len() as f64}],
            "average": correct as f64 / records.len() as f64, "seconds": 1.0, "predictions": preds
        })
    };
    for (dir, records) in
        [("lora-seed42", vec![(0, true), (1, false)]), ("echo-lora-seed42", vec![(0, true), (2, true)])]
    {
        let d = out.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("summary.json"), r#"{"steps": 5, "total_steps": 5}"#).unwrap();
        std::fs::write(d.join("eval-loglik.json"), report(&records).to_string()).unwrap();
    }
    let (ok, text) = study(&cfg, &["--report-only"]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("echo-lora-seed42/eval-loglik.json") && text.contains("lora-seed42/eval-loglik.json"),
        "{text}"
    );
    assert!(text.contains("do not cover the same test records"), "{text}");
    assert!(text.contains("only the reference has 1 record(s) (ARC-Easy 1)"), "{text}");
    assert!(text.contains("only the arm has 1 record(s) (ARC-Easy 2)"), "{text}");
}

//! `cargo xtask compare-adapters`: an adapter against itself is the same update everywhere;
//! against the DoRA fixture (the same factors, so the same direction) each adapted module is
//! compared, the DoRA note printed, and the JSON holds every row.

use assert_cmd::Command;

fn compare(a: &std::path::Path, b: &std::path::Path, json: &std::path::Path) -> String {
    let out = Command::cargo_bin("xtask")
        .unwrap()
        .arg("compare-adapters")
        .arg(a)
        .arg(b)
        .arg("--json")
        .arg(json)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

#[test]
fn an_adapter_against_itself_and_against_another() {
    let tiny = echo_testdata::tiny_llama_a();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("c.json");
    let lora = tiny.join("peft-lora");
    let text = compare(&lora, &lora, &json);
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    assert!(!rows.is_empty(), "{text}");
    for r in rows {
        assert!((r["cosine"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{r}");
        assert!((r["subspace_overlap"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{r}");
    }
    assert!(text.contains("cosine 1.000"), "{text}");

    let text = compare(&lora, &tiny.join("peft-dora"), &json);
    assert!(text.contains("DoRA: the update compared is the direction part"), "{text}");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for r in doc["rows"].as_array().unwrap() {
        let c = r["cosine"].as_f64().unwrap();
        assert!((-1.0 - 1e-9..=1.0 + 1e-9).contains(&c), "{r}");
    }
}

#[test]
fn a_folder_without_an_adapter_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let lora = echo_testdata::tiny_llama_a().join("peft-lora");
    let out = Command::cargo_bin("xtask").unwrap().arg("compare-adapters").arg(&lora).arg(dir.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&dir.path().display().to_string()), "{err}");
}

//! Run configs that do not fit the model are refused before anything is made or allocated:
//! an echo target at or below a source layer, a source listed twice, a cutoff above the
//! model's context, a `d_echo` that would size a billion-element trunk. Each error names the key.

use echo_model::LlamaConfig;
use echo_trainer::{train, RunConfig, RunOptions};
use std::path::PathBuf;

fn fixture() -> PathBuf {
    echo_testdata::tiny_llama_a()
}

fn text(cutoff: usize, echo: &str) -> String {
    format!(
        r#"
[model]
path = "unused"
[data]
train = ["synthetic"]
synthetic_records = 16
val_count = 4
cutoff = {cutoff}
[adapter]
method = "lora"
r = 4
alpha = 8
targets = ["q_proj", "v_proj"]
[echo]
target_modules = ["q_proj"]
{echo}
[train]
seed = 3
epochs = 1
batch_size = 2
micro_batch_size = 2
lr = 1e-2
"#
    )
}

fn model() -> LlamaConfig {
    LlamaConfig::from_dir(&fixture()).unwrap()
}

fn check(cutoff: usize, echo: &str) -> Result<(), String> {
    Ok(RunConfig::parse(&text(cutoff, echo))?.check_against_model(&model())?)
}

#[test]
fn a_good_layout_passes() {
    check(200, "source_layers = [-2, -1]\ntarget_layers = [0, 1]\nd_echo = 8").unwrap();
    // The echo disabled: its layers are not looked at.
    check(200, "enabled = false\nsource_layers = [0]\ntarget_layers = [0]\nd_echo = 8").unwrap();
}

#[test]
fn an_echo_target_at_or_below_a_source_is_refused() {
    // The fixture has 4 layers: -2 is layer 2.
    for targets in ["[0, 2]", "[3]", "[-1]"] {
        let e = check(200, &format!("source_layers = [-2, -1]\ntarget_layers = {targets}\nd_echo = 8")).unwrap_err();
        assert!(e.contains("echo.target_layers") && e.contains("not shallower than source layer 2"), "{targets}: {e}");
    }
    // The default targets (the first quarter: layer 0) against sources that include layer 0.
    let e = check(200, "source_layers = [0, 3]\nd_echo = 8").unwrap_err();
    assert!(e.contains("target layer 0") && e.contains("source layer 0"), "{e}");
}

#[test]
fn a_source_or_target_listed_twice_is_refused() {
    // -1 and 3 are the same block of a 4-layer model.
    let e = check(200, "source_layers = [-1, 3]\ntarget_layers = [0]\nd_echo = 8").unwrap_err();
    assert!(e.contains("echo.source_layers") && e.contains("layer 3 is listed twice (as -1 and 3)"), "{e}");
    let e = check(200, "source_layers = [2, 3]\ntarget_layers = [0, 0]\nd_echo = 8").unwrap_err();
    assert!(e.contains("echo.target_layers") && e.contains("listed twice"), "{e}");
}

#[test]
fn a_cutoff_above_the_models_context_is_refused() {
    // The fixture's max_position_embeddings is 256.
    check(256, "source_layers = [-1]\ntarget_layers = [0]\nd_echo = 8").unwrap();
    let e = check(257, "source_layers = [-1]\ntarget_layers = [0]\nd_echo = 8").unwrap_err();
    assert!(e.contains("data.cutoff") && e.contains("max_position_embeddings = 256") && e.contains("257"), "{e}");
}

#[test]
fn a_huge_d_echo_is_a_config_error_not_an_allocation_abort() {
    let e = RunConfig::parse(&text(200, "source_layers = [-1]\ntarget_layers = [0]\nd_echo = 1000000000"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("echo.d_echo") && e.contains("1000000000"), "{e}");
}

#[test]
fn train_refuses_before_making_anything() {
    let out = std::env::temp_dir().join(format!("echo-bad-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    for (cutoff, echo, key) in [
        (300, "source_layers = [-1]\ntarget_layers = [0]\nd_echo = 8", "data.cutoff"),
        (200, "source_layers = [-2, -1]\ntarget_layers = [2]\nd_echo = 8", "echo.target_layers"),
    ] {
        let cfg = RunConfig::parse(&text(cutoff, echo)).unwrap();
        let e = train(&cfg, &fixture(), &out, &RunOptions::default()).expect_err("trained").to_string();
        assert!(e.contains(key), "{key}: {e}");
    }
}

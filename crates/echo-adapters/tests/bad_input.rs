//! Bad adapters: a NaN or infinite adapter is refused at load, export and merge, and a
//! non-positive `lora_alpha` at load and export; each error names the file or tensor.

use echo_adapters::{load_peft, merged_weights, save_peft, Adapters};
use echo_autograd::ParamStore;
use echo_model::weights::{save_safetensors, SaveTensor, WeightFiles};
use echo_model::Llama;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    echo_testdata::tiny_llama_a()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("echo-adapter-bad-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of the fixture's `peft-lora` with `edit` applied to each tensor's values.
fn lora_copy(name: &str, mut edit: impl FnMut(&str, &mut Vec<f32>)) -> PathBuf {
    let src = fixture().join("peft-lora");
    let d = scratch(name);
    std::fs::copy(src.join("adapter_config.json"), d.join("adapter_config.json")).unwrap();
    let w = WeightFiles::open_files(&[src.join("adapter_model.safetensors")]).unwrap();
    let mut out = Vec::new();
    for n in w.names() {
        let t = w.f32_tensor(n, None).unwrap();
        let mut v = t.as_f32().to_vec();
        edit(n, &mut v);
        out.push((n.to_string(), SaveTensor::F32(v, t.dims().to_vec())));
    }
    save_safetensors(&d.join("adapter_model.safetensors"), out, None).unwrap();
    d
}

const A_KEY: &str = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight";

fn loaded(model: &Llama) -> (Adapters, ParamStore) {
    let mut store = ParamStore::new();
    let adapters = load_peft(&fixture().join("peft-lora"), model, &mut store).unwrap();
    (adapters, store)
}

/// `store`'s parameter `key` with element `i` set to `x`.
fn poison(store: &mut ParamStore, key: &str, i: usize, x: f32) {
    let id = store.id(key).unwrap_or_else(|| panic!("no parameter {key}"));
    let t = store.value(id);
    let mut v = t.as_f32().to_vec();
    v[i] = x;
    store.get_mut(id).value = echo_tensor::Tensor::new(v, t.dims().to_vec()).unwrap();
}

#[test]
fn a_nan_adapter_file_is_refused_at_load() {
    let d = lora_copy("nan-load", |n, v| {
        if n == A_KEY {
            v[64 + 7] = f32::NAN; // row 1, column 7 of [r, 64]
        }
    });
    let model = Llama::load(&fixture()).unwrap();
    let e = load_peft(&d, &model, &mut ParamStore::new()).err().expect("a NaN adapter loaded").to_string();
    assert!(
        e.contains("adapter_model.safetensors") && e.contains(&format!("`{A_KEY}` holds NaN at index [1, 7]")),
        "{e}"
    );
}

#[test]
fn a_nan_adapter_is_never_exported() {
    let model = Llama::load(&fixture()).unwrap();
    let (adapters, mut store) = loaded(&model);
    poison(&mut store, A_KEY, 3, f32::INFINITY);
    let out = scratch("nan-export");
    let e = save_peft(&out, &adapters, &store, "tiny").unwrap_err().to_string();
    assert!(e.contains("adapter_model.safetensors") && e.contains(&format!("`{A_KEY}` holds inf")), "{e}");
    assert!(!out.join("adapter_model.safetensors").exists() && !out.join("adapter_config.json").exists());
}

#[test]
fn a_nan_adapter_is_never_merged() {
    let model = Llama::load(&fixture()).unwrap();
    let (adapters, mut store) = loaded(&model);
    poison(&mut store, A_KEY, 0, f32::NAN);
    let e = merged_weights(&model, &adapters, &store).unwrap_err().to_string();
    assert!(e.contains("merge") && e.contains("finite") && e.contains(A_KEY), "{e}");
}

fn with_alpha(name: &str, alpha: &str) -> PathBuf {
    let d = lora_copy(name, |_, _| {});
    let cfg = std::fs::read_to_string(d.join("adapter_config.json")).unwrap();
    assert!(cfg.contains("\"lora_alpha\": 8,"));
    std::fs::write(
        d.join("adapter_config.json"),
        cfg.replace("\"lora_alpha\": 8,", &format!("\"lora_alpha\": {alpha},")),
    )
    .unwrap();
    d
}

fn load_err(d: &Path, model: &Llama) -> String {
    load_peft(d, model, &mut ParamStore::new()).err().expect("loaded").to_string()
}

#[test]
fn a_non_positive_lora_alpha_is_refused_at_load_and_export() {
    let model = Llama::load(&fixture()).unwrap();
    for alpha in ["-16", "0"] {
        let d = with_alpha(&format!("alpha{alpha}"), alpha);
        let e = load_err(&d, &model);
        assert!(
            e.contains("adapter_config.json") && e.contains("key `lora_alpha`") && e.contains("positive"),
            "{alpha}: {e}"
        );
    }
    // Adapters built in memory with a negative alpha are not written either.
    let (mut adapters, store) = loaded(&model);
    adapters.config.alpha = -16.0;
    let out = scratch("alpha-export");
    let e = save_peft(&out, &adapters, &store, "tiny").unwrap_err().to_string();
    assert!(e.contains("adapter_config.json") && e.contains("lora_alpha"), "{e}");
    let e = merged_weights(&model, &adapters, &store).unwrap_err().to_string();
    assert!(e.contains("lora_alpha"), "{e}");
}

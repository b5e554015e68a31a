//! The HF PEFT on-disk format: `adapter_config.json` + `adapter_model.safetensors`.
//! What we read we check (unsupported PEFT features are refused by name); what we write
//! carries the fields PEFT writes and exactly PEFT's key set, so PEFT, vLLM and others load it.

use crate::adapters::{peft_key, Adapters};
use crate::{AdapterConfig, Method};
use echo_autograd::ParamStore;
use echo_model::weights::{check_finite, save_safetensors, write_atomic, SaveDtype, SaveTensor, WeightFiles};
use echo_model::{Llama, Proj};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid JSON at line {line}, column {column}: {msg}")]
    Json { path: PathBuf, line: usize, column: usize, msg: String },
    #[error("{path}: key `{key}`: {msg}")]
    Config { path: PathBuf, key: String, msg: String },
    #[error("{path}: {msg}")]
    Tensors { path: PathBuf, msg: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Model(#[from] echo_model::Error),
    #[error(transparent)]
    Autograd(#[from] echo_autograd::Error),
}

fn cfg_err(path: &Path, key: &str, msg: impl Into<String>) -> PeftError {
    PeftError::Config { path: path.to_path_buf(), key: key.into(), msg: msg.into() }
}

/// `lora_alpha` must be a positive number: the adapter's update is scaled by `alpha / r`, so a
/// negative alpha silently flips it and zero silently removes it.
fn check_alpha(alpha: f64) -> Result<(), String> {
    if alpha > 0.0 && alpha.is_finite() {
        Ok(())
    } else {
        Err(format!("{alpha} must be a positive number (the update is scaled by lora_alpha / r)"))
    }
}

/// Parses PEFT's `adapter_config.json`.
pub fn parse_adapter_config(path: &Path) -> Result<AdapterConfig, PeftError> {
    let text = std::fs::read_to_string(path).map_err(|e| PeftError::Io { path: path.into(), source: e })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| PeftError::Json {
        path: path.into(),
        line: e.line(),
        column: e.column(),
        msg: e.to_string(),
    })?;
    let get = |k: &str| v.get(k).filter(|x| !x.is_null());
    match get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => {
            return Err(cfg_err(
                path,
                "peft_type",
                format!("{other:?}; only LORA (with or without use_dora) is supported"),
            ))
        }
    }
    for (key, ok) in [("bias", "none"), ("task_type", "CAUSAL_LM")] {
        if let Some(x) = get(key).and_then(Value::as_str).filter(|x| *x != ok) {
            return Err(cfg_err(path, key, format!("`{x}` is not supported (expected `{ok}`)")));
        }
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if get(key).and_then(Value::as_object).is_some_and(|o| !o.is_empty()) {
            return Err(cfg_err(path, key, "per-module ranks/alphas are not supported"));
        }
    }
    if get("fan_in_fan_out").and_then(Value::as_bool) == Some(true) {
        return Err(cfg_err(path, "fan_in_fan_out", "true is not supported (LLaMA linears are not Conv1D)"));
    }
    let r = get("r")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0)
        .ok_or_else(|| cfg_err(path, "r", "missing or not a positive integer"))?;
    let alpha = get("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| cfg_err(path, "lora_alpha", "missing or not a number"))?;
    check_alpha(alpha).map_err(|msg| cfg_err(path, "lora_alpha", msg))?;
    let dropout = get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
    if !(0.0..1.0).contains(&dropout) {
        return Err(cfg_err(path, "lora_dropout", format!("{dropout} is outside [0, 1)")));
    }
    let targets = match get("target_modules") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|x| {
                let name = x.as_str().unwrap_or_default();
                Proj::from_short_name(name).ok_or_else(|| {
                    let known: Vec<_> = Proj::ALL.iter().map(|p| p.short_name()).collect();
                    cfg_err(
                        path,
                        "target_modules",
                        format!("`{x}` is not a LLaMA projection (known: {})", known.join(", ")),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(cfg_err(
                path,
                "target_modules",
                format!("{other} (only a list of module names is supported, not a regex)"),
            ))
        }
        None => return Err(cfg_err(path, "target_modules", "missing")),
    };
    let layers = match get("layers_to_transform") {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|x| {
                    x.as_u64()
                        .map(|l| l as usize)
                        .ok_or_else(|| cfg_err(path, "layers_to_transform", format!("{x} is not a layer index")))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(x) => Some(vec![x
            .as_u64()
            .ok_or_else(|| cfg_err(path, "layers_to_transform", format!("{x} is not a layer index")))?
            as usize]),
    };
    Ok(AdapterConfig {
        method: if get("use_dora").and_then(Value::as_bool) == Some(true) { Method::Dora } else { Method::Lora },
        r: r as usize,
        alpha: alpha as f32,
        use_rslora: get("use_rslora").and_then(Value::as_bool).unwrap_or(false),
        dropout: dropout as f32,
        targets,
        layers,
    })
}

/// Loads a PEFT adapter folder onto `model`, registering its tensors in `store` (trainable).
/// The file must hold exactly the tensors its config implies: a missing, extra or misshapen
/// tensor is an error naming it.
pub fn load_peft(dir: &Path, model: &Llama, store: &mut ParamStore) -> Result<Adapters, PeftError> {
    let config = parse_adapter_config(&dir.join("adapter_config.json"))?;
    let weights_path = dir.join("adapter_model.safetensors");
    let files = WeightFiles::open_files(std::slice::from_ref(&weights_path))?;
    let mut used = BTreeSet::new();
    let adapters = Adapters::register(config, model, store, |layer, proj, kind, shape| {
        let key = peft_key(layer, proj, kind);
        used.insert(key.clone());
        Ok(files.finite_f32_tensor(&key, Some(shape))?)
    })?;
    if let Some(extra) = files.names().into_iter().find(|n| !used.contains(*n)) {
        return Err(PeftError::Tensors {
            path: weights_path,
            msg: format!(
                "unexpected tensor `{extra}` (not implied by adapter_config.json: wrong model, targets or layers?)"
            ),
        });
    }
    Ok(adapters)
}

/// PEFT's `adapter_config.json` for these adapters (the fields PEFT 0.21 writes).
pub fn adapter_config_json(config: &AdapterConfig, base_model: &str) -> Value {
    let mut targets: Vec<&str> = config.targets.iter().map(|p| p.short_name()).collect();
    targets.sort();
    json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "exclude_modules": null,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": config.layers,
        "loftq_config": {},
        "lora_alpha": config.alpha,
        "lora_bias": false,
        "lora_dropout": config.dropout,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": config.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "use_dora": config.method == Method::Dora,
        "use_rslora": config.use_rslora,
    })
}

/// Writes the adapters as a PEFT folder (created if needed; each file replaced atomically).
pub fn save_peft(dir: &Path, adapters: &Adapters, store: &ParamStore, base_model: &str) -> Result<(), PeftError> {
    save_peft_as(dir, adapters, store, base_model, SaveDtype::F32)
}

/// [`save_peft`] with the weights in `dtype` (bf16: half the size, each value rounded to
/// nearest even; PEFT and transformers load it as they load their own bf16 adapters).
pub fn save_peft_as(
    dir: &Path,
    adapters: &Adapters,
    store: &ParamStore,
    base_model: &str,
    dtype: SaveDtype,
) -> Result<(), PeftError> {
    let weights_path = dir.join("adapter_model.safetensors");
    check_alpha(adapters.config.alpha as f64)
        .map_err(|msg| cfg_err(&dir.join("adapter_config.json"), "lora_alpha", msg))?;
    let tensors: Vec<(String, SaveTensor)> =
        adapters.tensors().into_iter().map(|(id, key)| (key, SaveTensor::from_tensor(store.value(id)))).collect();
    // A NaN or infinite adapter is never written: it would load, export and merge into a model
    // that computes NaN (or, before the attention propagated NaN, plausible nonsense).
    for (key, t) in &tensors {
        if let SaveTensor::F32(data, shape) = t {
            check_finite(&weights_path, key, shape, data)?;
        }
    }
    let tensors: Vec<(String, SaveTensor)> = tensors.into_iter().map(|(k, t)| (k, t.into_dtype(dtype))).collect();
    // A finite f32 beyond bf16's range (about 3.4e38) would round to infinity.
    for (key, t) in &tensors {
        if let SaveTensor::Bf16(data, shape) = t {
            let wide: Vec<f32> = data.iter().map(|x| x.to_f32()).collect();
            check_finite(&weights_path, key, shape, &wide)?;
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| PeftError::Io { path: dir.into(), source: e })?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    save_safetensors(&weights_path, tensors, Some(meta))?;
    let cfg = serde_json::to_string_pretty(&adapter_config_json(&adapters.config, base_model)).expect("json");
    write_atomic(&dir.join("adapter_config.json"), cfg.as_bytes())?;
    Ok(())
}

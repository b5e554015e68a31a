//! Checkpoints: everything needed to continue a run exactly: the adapter (as a PEFT folder),
//! the echo parameters, AdamW's moments, the random generators' states and the data position.
//! A checkpoint folder is written complete under a temporary name and then renamed into
//! place, so a crash never leaves a half-written checkpoint where a good one was.

use crate::config::RunConfig;
use crate::optim::AdamWState;
use echo_adapters::{save_peft, Adapters};
use echo_autograd::{ParamId, ParamStore};
use echo_data::BatchPosition;
use echo_model::weights::{save_safetensors, write_atomic, SaveTensor, WeightFiles};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The scalar part of a checkpoint (`state.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// The next batch to train on.
    pub position: BatchPosition,
    pub dropout_rng: [u64; 4],
    pub routing_rng: [u64; 4],
    pub adam_step: u64,
    pub best_val_loss: Option<f32>,
    pub best_step: Option<usize>,
    /// The run config as TOML, to refuse resuming under a different one.
    pub config_toml: String,
    /// The run so far, so a resumed run's summary covers all of it: the first step's loss,
    /// the validation loss before training, the last step's loss, tokens trained on, seconds
    /// spent in steps and wall-clock seconds of the processes up to this checkpoint.
    /// Checkpoints written before these existed read as `None` / 0.
    #[serde(default)]
    pub first_loss: Option<f32>,
    #[serde(default)]
    pub first_val_loss: Option<f32>,
    #[serde(default)]
    pub last_loss: Option<f32>,
    #[serde(default)]
    pub tokens: u64,
    #[serde(default)]
    pub train_seconds: f64,
    #[serde(default)]
    pub wall_seconds: f64,
}

/// One key whose value differs between two run configs, by its dotted name.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigChange {
    pub key: String,
    /// The value in the first config, as TOML (`(unset)` when absent).
    pub old: String,
    pub new: String,
}

impl std::fmt::Display for ConfigChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} -> {}", self.key, self.old, self.new)
    }
}

/// Every key whose value differs between `old` and `new` (`adapter.r: 16 -> 8`), sorted by
/// key; empty when they are the same config.
pub fn config_changes(old: &RunConfig, new: &RunConfig) -> Vec<ConfigChange> {
    let (a, b) = (flat(old), flat(new));
    let unset = || "(unset)".to_string();
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| ConfigChange {
            key: k.clone(),
            old: a.get(k).cloned().unwrap_or_else(unset),
            new: b.get(k).cloned().unwrap_or_else(unset),
        })
        .collect()
}

/// A config as dotted keys and TOML values.
fn flat(cfg: &RunConfig) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            _ => {
                out.insert(prefix.to_string(), show(v));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", &toml::Value::try_from(cfg).expect("a run config serialises"), &mut out);
    out
}

/// A TOML value as written in a config; f32 keys (widened to f64 by serialisation) print
/// as the f32 they are (`0.01`, not `0.009999999776482582`).
fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::Float(x) if (*x as f32) as f64 == *x => format!("{}", *x as f32),
        toml::Value::Array(a) => format!("[{}]", a.iter().map(show).collect::<Vec<_>>().join(", ")),
        other => other.to_string(),
    }
}

/// The run config a checkpoint was written under (its `config_toml`), read without the
/// range checks (they belong to the config being resumed with).
pub fn stored_config(state: &TrainState) -> Result<RunConfig, String> {
    toml::from_str(&state.config_toml).map_err(|e| format!("the config stored in the checkpoint cannot be read: {e}"))
}

fn io(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

/// Writes a checkpoint into `dir` (replacing an older one there atomically).
pub fn save(
    dir: &Path,
    state: &TrainState,
    adapters: &Adapters,
    echo_params: &[ParamId],
    adam: &AdamWState,
    store: &ParamStore,
    base_model: &str,
) -> Result<(), String> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "checkpoint".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    save_peft(&tmp.join("adapter"), adapters, store, base_model).map_err(|e| e.to_string())?;
    let mut tensors: Vec<(String, SaveTensor)> =
        echo_params.iter().map(|&id| (store.get(id).name.clone(), SaveTensor::from_tensor(store.value(id)))).collect();
    // Moments are stored flat (`[numel]`), read back from a device if they live there.
    for (k, m) in &adam.m {
        tensors.push((
            format!("optim.m.{k}"),
            SaveTensor::F32(m.try_to_vec_f32().map_err(|e| e.to_string())?, vec![m.numel()]),
        ));
    }
    for (k, v) in &adam.v {
        tensors.push((
            format!("optim.v.{k}"),
            SaveTensor::F32(v.try_to_vec_f32().map_err(|e| e.to_string())?, vec![v.numel()]),
        ));
    }
    save_safetensors(&tmp.join("state.safetensors"), tensors, None).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    write_atomic(&tmp.join("state.json"), json.as_bytes()).map_err(|e| e.to_string())?;
    // Swap: the old checkpoint moves aside only once the new one is complete.
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| io(dir, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| io(&old, e))?;
    }
    Ok(())
}

/// What [`load`] restores besides the adapter (which the caller loads from `dir/adapter`).
pub struct Loaded {
    pub state: TrainState,
    pub adam: AdamWState,
    /// Echo parameter values by name.
    pub echo: BTreeMap<String, echo_tensor::Tensor>,
}

pub fn adapter_dir(dir: &Path) -> PathBuf {
    dir.join("adapter")
}

pub fn load(dir: &Path) -> Result<Loaded, String> {
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| io(&state_path, e))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| io(&state_path, e))?;
    let files = WeightFiles::open_files(&[dir.join("state.safetensors")]).map_err(|e| e.to_string())?;
    let mut adam = AdamWState { step: state.adam_step, ..Default::default() };
    let mut echo = BTreeMap::new();
    for name in files.names() {
        let t = files.f32_tensor(name, None).map_err(|e| e.to_string())?;
        if let Some(k) = name.strip_prefix("optim.m.") {
            adam.m.insert(k.to_string(), t);
        } else if let Some(k) = name.strip_prefix("optim.v.") {
            adam.v.insert(k.to_string(), t);
        } else {
            echo.insert(name.to_string(), t);
        }
    }
    Ok(Loaded { state, adam, echo })
}

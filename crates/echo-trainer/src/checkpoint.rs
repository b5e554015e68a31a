//! Checkpoints: everything needed to continue a run exactly: the adapter (as a PEFT folder),
//! the echo parameters, AdamW's moments, the random generators' states and the data position.
//! Each save writes a complete `checkpoint-<step>/` (under a temporary name, fsynced, then
//! renamed) and then atomically moves the pointer `checkpoint` (a symbolic link) to it,
//! keeping the previous one: a kill at any moment leaves a complete checkpoint to resume
//! from ([`save`], [`latest`]).

use crate::config::RunConfig;
use crate::error::{Result, TrainError};
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
/// `dir` is the checkpoint folder, for the error.
pub fn stored_config(dir: &Path, state: &TrainState) -> Result<RunConfig> {
    toml::from_str(&state.config_toml)
        .map_err(|e| io(&dir.join("state.json"), format!("the config stored in the checkpoint cannot be read: {e}")))
}

/// A checkpoint file or folder that cannot be read, written, synced or renamed.
fn io(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint { path: path.to_path_buf(), msg: e.to_string() }
}

/// The name of the pointer in a run folder: a symbolic link to the current
/// `checkpoint-<step>/` folder (in run folders written before checkpoints were numbered, the
/// checkpoint folder itself, which [`latest`] still reads).
pub const POINTER: &str = "checkpoint";

/// The folder of the checkpoint at `step` in the run folder `out`.
pub fn step_dir(out: &Path, step: usize) -> PathBuf {
    out.join(format!("checkpoint-{step}"))
}

/// The step of a `checkpoint-<step>` folder name.
fn numbered(name: &str) -> Option<usize> {
    name.strip_prefix("checkpoint-").filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))?.parse().ok()
}

/// Temporary and leftover folders of checkpoint saves: ours (`.checkpoint-<step>.tmp-<pid>`,
/// `.checkpoint-<step>.stale-<pid>`) and the swap's of older versions
/// (`.checkpoint.tmp-<pid>`, `.checkpoint.old-<pid>`).
fn is_leftover(name: &str) -> bool {
    name.starts_with(".checkpoint") && (name.contains(".tmp-") || name.contains(".old-") || name.contains(".stale-"))
}

/// Older versions' swap leftovers, which a kill between their two renames left as the only
/// copies of the run's checkpoints.
fn is_legacy_leftover(name: &str) -> bool {
    name.starts_with(".checkpoint.tmp-") || name.starts_with(".checkpoint.old-")
}

fn entries(out: &Path) -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(out) else { return vec![] };
    rd.filter_map(|e| e.ok()).map(|e| (e.file_name().to_string_lossy().into_owned(), e.path())).collect()
}

/// Removes the temporary folders of saves that never finished (a run folder is locked by
/// one process, so none of them is being written). The swap leftovers of older versions are
/// kept until a checkpoint is saved: they may be all there is to resume from.
pub fn remove_stale(out: &Path) -> Result<()> {
    for (name, path) in entries(out) {
        if is_leftover(&name) && !is_legacy_leftover(&name) {
            remove(&path)?;
        }
    }
    Ok(())
}

/// Whether `out` holds any checkpoint [`latest`] would look at.
pub fn exists(out: &Path) -> bool {
    out.join(POINTER).symlink_metadata().is_ok()
        || entries(out).iter().any(|(n, p)| (numbered(n).is_some() || is_legacy_leftover(n)) && p.is_dir())
}

/// Removes a folder, a file or a link (not what it points to).
fn remove(path: &Path) -> Result<()> {
    match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(|e| io(path, e)),
        Ok(_) => std::fs::remove_file(path).map_err(|e| io(path, e)),
        Err(_) => Ok(()),
    }
}

/// fsyncs every file under `dir`, then the folders, deepest first.
fn sync_tree(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let e = e.map_err(|e| io(dir, e))?;
        let path = e.path();
        if e.file_type().map_err(|e| io(&path, e))?.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(|e| io(&path, e))?;
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    echo_io::sync_dir(dir).map_err(|e| io(dir, e))
}

/// A test-only kill: `ECHO_TRAIN_KILL_SAVE=<step>:<point>` ends the process without any
/// clean-up, as a kill would, when the save of `step` reaches `point` (`written`: the new
/// folder complete under its temporary name; `renamed`: in place, the pointer not yet moved).
fn kill_point(step: usize, point: &str) {
    if std::env::var("ECHO_TRAIN_KILL_SAVE").is_ok_and(|v| v == format!("{step}:{point}")) {
        eprintln!("ECHO_TRAIN_KILL_SAVE: killed at step {step}, {point}");
        std::process::exit(137);
    }
}

/// Writes the checkpoint of `state.step` into the run folder `out`.
///
/// The protocol has no moment at which a kill leaves nothing to resume from: the new
/// checkpoint is written complete under a temporary name, its files and folders fsynced,
/// renamed to `checkpoint-<step>/`; then the pointer (`checkpoint`, a symbolic link) is
/// replaced atomically by a rename to name it. Until that rename the pointer names the
/// previous checkpoint, complete and untouched. Only then are the checkpoints older than
/// the previous one, and the leftovers of older versions, removed: the last two stay.
/// Returns the new checkpoint's folder.
pub fn save(
    out: &Path,
    state: &TrainState,
    adapters: &Adapters,
    echo_params: &[ParamId],
    adam: &AdamWState,
    store: &ParamStore,
    base_model: &str,
) -> Result<PathBuf> {
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let pid = std::process::id();
    let step = state.step;
    let tmp = out.join(format!(".checkpoint-{step}.tmp-{pid}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    save_peft(&tmp.join("adapter"), adapters, store, base_model)?;
    let mut tensors: Vec<(String, SaveTensor)> =
        echo_params.iter().map(|&id| (store.get(id).name.clone(), SaveTensor::from_tensor(store.value(id)))).collect();
    // Moments are stored flat (`[numel]`), read back from a device if they live there.
    for (k, m) in &adam.m {
        tensors.push((format!("optim.m.{k}"), SaveTensor::F32(m.try_to_vec_f32()?, vec![m.numel()])));
    }
    for (k, v) in &adam.v {
        tensors.push((format!("optim.v.{k}"), SaveTensor::F32(v.try_to_vec_f32()?, vec![v.numel()])));
    }
    save_safetensors(&tmp.join("state.safetensors"), tensors, None)?;
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    write_atomic(&tmp.join("state.json"), json.as_bytes())?;
    sync_tree(&tmp)?;
    kill_point(step, "written");

    let pointer = out.join(POINTER);
    let link = std::fs::read_link(&pointer).ok();
    let dest = step_dir(out, step);
    if dest.symlink_metadata().is_ok() {
        // A folder of this step that is not current (a kill before its pointer moved, or a
        // damaged one resumed past): moved aside first, so the pointer may dangle but never
        // names a half-replaced folder ([`latest`] then falls back to the previous one).
        let stale = out.join(format!(".checkpoint-{step}.stale-{pid}"));
        std::fs::rename(&dest, &stale).map_err(|e| io(&dest, e))?;
        std::fs::remove_dir_all(&stale).map_err(|e| io(&stale, e))?;
    }
    std::fs::rename(&tmp, &dest).map_err(|e| io(&dest, e))?;
    sync_dir(out)?;
    kill_point(step, "renamed");

    // The previous checkpoint, kept: the pointer's target, or a checkpoint folder from before
    // numbering, renamed to its number (the newest numbered folder wins should a kill
    // land between this rename and the pointer's).
    let mut previous = link.as_ref().and_then(|l| l.file_name()).map(|n| n.to_string_lossy().into_owned());
    if link.is_none() && pointer.is_dir() {
        match load(&pointer).map(|l| l.state.step) {
            Ok(s) if s < step && !step_dir(out, s).exists() => {
                std::fs::rename(&pointer, step_dir(out, s)).map_err(|e| io(&pointer, e))?;
                previous = Some(format!("checkpoint-{s}"));
            }
            _ => {
                let stale = out.join(format!(".checkpoint.stale-{pid}"));
                std::fs::rename(&pointer, &stale).map_err(|e| io(&pointer, e))?;
            }
        }
    }
    point_to(out, step)?;

    for (name, path) in entries(out) {
        let keep = name == format!("checkpoint-{step}") || previous.as_deref() == Some(name.as_str());
        let old = numbered(&name).is_some_and(|_| !keep);
        if old || is_leftover(&name) {
            remove(&path)?;
        }
    }
    Ok(dest)
}

/// Makes the pointer name `checkpoint-<step>`: a new link renamed over the old one (a
/// checkpoint folder from before numbering in its place is moved aside first).
fn point_to(out: &Path, step: usize) -> Result<()> {
    let pid = std::process::id();
    let pointer = out.join(POINTER);
    if pointer.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        let stale = out.join(format!(".checkpoint.stale-{pid}"));
        std::fs::rename(&pointer, &stale).map_err(|e| io(&pointer, e))?;
    }
    let new_link = out.join(format!(".checkpoint.link.tmp-{pid}"));
    remove(&new_link)?;
    std::os::unix::fs::symlink(format!("checkpoint-{step}"), &new_link).map_err(|e| io(&new_link, e))?;
    std::fs::rename(&new_link, &pointer).map_err(|e| io(&pointer, e))?;
    sync_dir(out)
}

/// Makes a checkpoint found past the pointer current: named `checkpoint-<step>` (a swap
/// leftover of an older version is renamed so) and pointed to, so the damaged one is no
/// longer kept as the previous checkpoint. Returns its folder.
fn adopt(out: &Path, dir: PathBuf, step: usize) -> Result<PathBuf> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = if numbered(&name) == Some(step) {
        dir
    } else {
        let dest = step_dir(out, step);
        if dest.symlink_metadata().is_ok() {
            let stale = out.join(format!(".checkpoint-{step}.stale-{}", std::process::id()));
            std::fs::rename(&dest, &stale).map_err(|e| io(&dest, e))?;
        }
        std::fs::rename(&dir, &dest).map_err(|e| io(&dir, e))?;
        dest
    };
    point_to(out, step)?;
    Ok(dir)
}

/// The checkpoint a resume starts from.
pub struct Found {
    /// Its folder.
    pub dir: PathBuf,
    pub loaded: Loaded,
    /// What was passed over, one line each (a damaged newer checkpoint).
    pub notes: Vec<String>,
}

/// Reads a checkpoint folder whole: its state, and the adapter's config and tensors, so a
/// damaged one is found before training starts.
fn load_checked(dir: &Path) -> Result<Loaded> {
    if !dir.is_dir() {
        return Err(io(dir, "missing"));
    }
    let loaded = load(dir)?;
    let adapter = adapter_dir(dir);
    let cfg = adapter.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg).map_err(|e| io(&cfg, e))?;
    serde_json::from_str::<serde_json::Value>(&text).map_err(|e| io(&cfg, e))?;
    let files = WeightFiles::open_files(&[adapter.join("adapter_model.safetensors")])?;
    for name in files.names() {
        files.f32_tensor(name, None)?;
    }
    Ok(loaded)
}

/// The step a candidate folder claims (its name's, else its `state.json`'s).
fn claimed_step(name: &str, path: &Path) -> Option<usize> {
    numbered(name).or_else(|| {
        let text = std::fs::read_to_string(path.join("state.json")).ok()?;
        Some(serde_json::from_str::<TrainState>(&text).ok()?.step)
    })
}

/// The checkpoint to resume the run in `out` from: the one the pointer names, or, when that
/// one is damaged or missing, the newest older one that reads whole (each one passed over
/// is named in [`Found::notes`]). Without a pointer, the newest of the numbered folders and
/// of the swap leftovers of older versions (which a kill between their two renames left).
/// A checkpoint found past the pointer is made current (see `adopt`), so call this only
/// holding the run folder's lock.
/// `Ok(None)`: nothing to resume from; `Err`: checkpoints, none of them readable.
pub fn latest(out: &Path) -> Result<Option<Found>> {
    let pointer = out.join(POINTER);
    let mut candidates: Vec<PathBuf> = Vec::new();
    let mut below = None;
    let mut legacy = false;
    if let Ok(link) = std::fs::read_link(&pointer) {
        let target = out.join(&link);
        below = link.file_name().and_then(|n| numbered(&n.to_string_lossy()));
        candidates.push(target);
    } else if pointer.is_dir() {
        below = claimed_step(POINTER, &pointer);
        candidates.push(pointer.clone());
    } else {
        legacy = true;
    }
    let mut others: Vec<(usize, PathBuf)> = entries(out)
        .into_iter()
        .filter(|(n, p)| (numbered(n).is_some() || (legacy && is_legacy_leftover(n))) && p.is_dir())
        .filter_map(|(n, p)| claimed_step(&n, &p).map(|s| (s, p)))
        .filter(|(s, p)| below.is_none_or(|b| *s < b) && !candidates.contains(p))
        .collect();
    others.sort_by_key(|o| std::cmp::Reverse(o.0));
    candidates.extend(others.into_iter().map(|(_, p)| p));
    if candidates.is_empty() {
        return Ok(None);
    }
    let mut notes = Vec::new();
    for dir in candidates {
        match load_checked(&dir) {
            Ok(loaded) => {
                if !notes.is_empty() || legacy {
                    let dir = adopt(out, dir, loaded.state.step)?;
                    notes.push(format!("resuming from the newest complete checkpoint, {}", dir.display()));
                    return Ok(Some(Found { dir, loaded, notes }));
                }
                return Ok(Some(Found { dir, loaded, notes }));
            }
            Err(e) => notes.push(format!("checkpoint {} is damaged or incomplete, passed over ({e})", dir.display())),
        }
    }
    Err(io(out, format!("no checkpoint there reads whole: {}", notes.join("; "))))
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

pub fn load(dir: &Path) -> Result<Loaded> {
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| io(&state_path, e))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| io(&state_path, e))?;
    let files = WeightFiles::open_files(&[dir.join("state.safetensors")])?;
    let mut adam = AdamWState { step: state.adam_step, ..Default::default() };
    let mut echo = BTreeMap::new();
    for name in files.names() {
        let t = files.f32_tensor(name, None)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use echo_model::Llama;
    use echo_tensor::Rng;

    fn state(step: usize) -> TrainState {
        TrainState {
            step,
            position: Default::default(),
            dropout_rng: [1, 2, 3, 4],
            routing_rng: [5, 6, 7, 8],
            adam_step: step as u64,
            best_val_loss: None,
            best_step: None,
            config_toml: String::new(),
            first_loss: None,
            first_val_loss: None,
            last_loss: None,
            tokens: 0,
            train_seconds: 0.0,
            wall_seconds: 0.0,
        }
    }

    fn names(out: &Path) -> Vec<String> {
        let mut v: Vec<String> = entries(out).into_iter().map(|(n, _)| n).collect();
        v.sort();
        v
    }

    #[test]
    fn a_damaged_newest_checkpoint_falls_back_to_the_previous_one() {
        let model = Llama::load(&echo_testdata::tiny_llama_a()).unwrap();
        let cfg = RunConfig::parse("[model]\npath = \"m\"\n[adapter]\nr = 2\n").unwrap();
        let mut store = ParamStore::new();
        let adapters = Adapters::init(
            cfg.adapter_config(model.config.num_hidden_layers).unwrap(),
            &model,
            &mut store,
            &mut Rng::derive(1, "t"),
        )
        .unwrap();
        let out = std::env::temp_dir().join(format!("echo-checkpoint-fallback-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let adam = AdamWState::default();
        for step in [2, 4, 6] {
            let dir = save(&out, &state(step), &adapters, &[], &adam, &store, "m").unwrap();
            assert_eq!(dir, step_dir(&out, step));
        }
        // The last two stay; the pointer names the newest.
        assert_eq!(names(&out), ["checkpoint", "checkpoint-4", "checkpoint-6"]);
        assert_eq!(std::fs::read_link(out.join(POINTER)).unwrap(), Path::new("checkpoint-6"));
        let found = latest(&out).unwrap().unwrap();
        assert_eq!((found.loaded.state.step, found.notes.len()), (6, 0));

        // The newest cut short (as by a disk that lost its tail): the previous one, said so.
        let f = step_dir(&out, 6).join("state.safetensors");
        let len = std::fs::metadata(&f).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len / 2).unwrap();
        let found = latest(&out).unwrap().unwrap();
        assert_eq!(found.loaded.state.step, 4);
        assert_eq!(found.dir, step_dir(&out, 4));
        assert!(found.notes[0].contains("checkpoint-6") && found.notes[0].contains("damaged"), "{:?}", found.notes);
        assert!(found.notes[1].contains("checkpoint-4"), "{:?}", found.notes);
        // It is current now, so the damaged one is not kept as the previous after the next save.
        assert_eq!(std::fs::read_link(out.join(POINTER)).unwrap(), Path::new("checkpoint-4"));
        save(&out, &state(5), &adapters, &[], &adam, &store, "m").unwrap();
        assert_eq!(names(&out), ["checkpoint", "checkpoint-4", "checkpoint-5"]);

        // A damaged adapter is found too; with no older checkpoint left, an error names both.
        let a = step_dir(&out, 5).join("adapter/adapter_model.safetensors");
        std::fs::write(&a, b"not a safetensors file").unwrap();
        assert_eq!(latest(&out).unwrap().unwrap().loaded.state.step, 4);
        std::fs::write(step_dir(&out, 4).join("state.json"), b"{").unwrap();
        let e = latest(&out).err().unwrap().to_string();
        assert!(e.contains("checkpoint-4") && e.contains("no checkpoint there reads whole"), "{e}");
        std::fs::remove_dir_all(&out).unwrap();
    }
}

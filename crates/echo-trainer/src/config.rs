//! The run configuration (TOML). Unknown keys are errors that list the allowed keys; values
//! are range-checked with the key's full name in the message. `docs/method.md`'s ablation
//! switches are all keys of `[echo]`.

use crate::echo::EchoConfig;
use crate::error::{Result, TrainError};
use crate::optim::Schedule;
use echo_adapters::{AdapterConfig, Method};
use echo_data::{Overlong, TemplateKind};
use echo_kernels::cuda::DeviceSpec;
use echo_model::Proj;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Model names `cargo xtask` fetches and imports by itself (xtask/src/model.rs); a config's
/// `model.path` equal to one of them is a name, not a path.
pub const MODEL_ALIASES: &[&str] = &["smollm2"];

/// The `data.train` entry that selects the built-in synthetic task instead of a file.
pub const SYNTHETIC: &str = "synthetic";

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: ModelSection,
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub adapter: AdapterSection,
    #[serde(default)]
    /// `[echo]`: the echo path's own config type, read directly (see [`EchoConfig`]).
    pub echo: EchoConfig,
    #[serde(default)]
    pub train: TrainSection,
    #[serde(default)]
    pub output: OutputSection,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A HF model folder, or `smollm2` (fetched and imported by `cargo xtask fetch-model`).
    pub path: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// LLM-Adapters JSON / JSONL files, or `synthetic` for the built-in generated task.
    pub train: Vec<String>,
    /// Mixing weights, one per `train` entry (empty: proportional to size).
    pub weights: Vec<f64>,
    /// Records generated when `train` is `["synthetic"]`.
    pub synthetic_records: usize,
    /// Held-out validation records (taken from the training data, by count).
    pub val_count: usize,
    pub cutoff: usize,
    /// `truncate` or `drop` over-long samples.
    pub overlong: Overlong,
    /// `alpaca` (LLM-Adapters records), `chat` (`{"messages": [...]}` through the model's
    /// chat_template), `completion` (`{"prompt", "completion"}`), `plain` (`{"text"}`, every
    /// token learned) or `custom` (LLM-Adapters records through `prompt_format`).
    pub template: TemplateKind,
    /// With `template = "custom"`: the prompt of a record without `input`, with
    /// `{instruction}` once (the output follows it directly).
    pub prompt_format: Option<String>,
    /// With `template = "custom"`: the prompt of a record with an `input`, with
    /// `{instruction}` and `{input}` once each; without it such a record is an error.
    pub prompt_format_with_input: Option<String>,
    /// `true`: loss on prompt tokens too (LLM-Adapters' default, for baselines).
    pub train_on_inputs: bool,
    pub bucket_by_length: bool,
    /// The largest share of records (0 to 1) from which the cutoff may take learned (answer)
    /// tokens under `overlong = "truncate"`: truncated ones and those dropped because the
    /// prompt alone reaches the cutoff. Training refuses to start above it. Not checked under
    /// `overlong = "drop"`, where dropping is what was asked for (both are reported).
    pub max_truncated_fraction: f64,
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            train: vec!["synthetic".into()],
            weights: vec![],
            synthetic_records: 2000,
            val_count: 64,
            cutoff: 256,
            overlong: Overlong::Truncate,
            template: TemplateKind::Alpaca,
            prompt_format: None,
            prompt_format_with_input: None,
            train_on_inputs: false,
            bucket_by_length: false,
            max_truncated_fraction: 0.05,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdapterSection {
    /// `lora` or `dora`.
    pub method: Method,
    pub r: usize,
    pub alpha: f32,
    pub rslora: bool,
    pub dropout: f32,
    /// The projections to adapt, by short name (`q_proj`, ...).
    pub targets: Vec<Proj>,
    /// Layer indices to adapt (negative: from the end); empty: all layers.
    pub layers: Vec<i64>,
    /// Start from this PEFT adapter folder (continued training) instead of a fresh init; its
    /// `adapter_config.json` then decides method, rank, alpha, targets and layers.
    pub from: Option<String>,
}

impl Default for AdapterSection {
    fn default() -> Self {
        AdapterSection {
            method: Method::Lora,
            r: 32,
            alpha: 64.0,
            rslora: false,
            dropout: 0.05,
            targets: vec![Proj::Q, Proj::K, Proj::V, Proj::Up, Proj::Down],
            layers: vec![],
            from: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub seed: u64,
    pub epochs: usize,
    /// Stop after this many optimizer steps (0: run all epochs).
    pub max_steps: usize,
    pub batch_size: usize,
    pub micro_batch_size: usize,
    /// Pack each micro-batch's examples one after the other into a single row, attention
    /// kept inside each example and positions restarting at each, instead of padding every
    /// example to the longest: no compute is spent on padding. Exact: the same loss and
    /// gradients as the padded batch to f32 rounding (tested), so it is not part of a run's
    /// identity and a resume may switch it.
    pub packing: bool,
    pub lr: f32,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub adam_eps: f32,
    /// Global-norm clipping threshold (0: off).
    pub max_grad_norm: f32,
    /// Evaluate on the validation split every N steps (0: only at the end).
    pub eval_every: usize,
    /// Write a checkpoint every N steps (0: only at the end).
    pub save_every: usize,
    /// With the echo path on, measure it on a fixed probe batch (docs/method.md,
    /// "Diagnostics") before training, every N steps and at the end, into `metrics.jsonl`
    /// (`0`: never). Unset: at the validation steps (`eval_every`; with `eval_every = 0`,
    /// before training and at the end). Measures and changes nothing of the training, so it is
    /// not part of a run's identity. Written out only when set, so configs serialised before
    /// the key existed read the same.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics_every: Option<usize>,
    /// When stdout is not a terminal (or no progress bar is drawn), print a progress line
    /// every N steps (0: automatic, `max(1, total / 50)`, so a run prints 50-100 lines).
    pub log_every: usize,
    /// Where to compute: `auto` (the first CUDA device when a usable driver, NVRTC and cuBLAS
    /// are there, else the CPU), `cpu`, `cuda` or `cuda:N` (an error without that GPU).
    /// `cargo xtask train --device` overrides it. Not part of a run's identity: a checkpoint
    /// may be resumed on another device. Written out only when it is not `auto`, so configs
    /// serialised before the key existed read the same.
    #[serde(with = "device_spec", skip_serializing_if = "is_auto")]
    pub device: DeviceSpec,
}

fn is_auto(device: &DeviceSpec) -> bool {
    *device == DeviceSpec::Auto
}

/// `train.device` as its string (`auto`, `cpu`, `cuda:N`), read by [`DeviceSpec`]'s own rules.
mod device_spec {
    use echo_kernels::cuda::DeviceSpec;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &DeviceSpec, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(d)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DeviceSpec, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|e| serde::de::Error::custom(format!("train.device: {e}")))
    }
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            seed: 42,
            epochs: 3,
            max_steps: 0,
            batch_size: 16,
            micro_batch_size: 4,
            packing: true,
            lr: 3e-4,
            schedule: Schedule::Linear,
            warmup_steps: 100,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            adam_eps: 1e-8,
            max_grad_norm: 1.0,
            eval_every: 200,
            save_every: 200,
            diagnostics_every: None,
            log_every: 0,
            device: DeviceSpec::Auto,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSection {
    pub dir: String,
}

impl Default for OutputSection {
    fn default() -> Self {
        OutputSection { dir: "runs/default".into() }
    }
}

fn bad(key: &str, expected: &str, got: impl std::fmt::Display) -> TrainError {
    TrainError::config(format!("key `{key}`: expected {expected}, got {got}"))
}

/// The dotted key (`adapter.method`) of the `key = value` line holding byte `offset` of a TOML
/// text, so that a value refused while it is read (an unknown enum name) is named as the range
/// checks name theirs. `None` where the line is not a simple `key = value` (a value on a later
/// line of a multi-line array, say): the parser's own line and column still say where.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let key = line.split('=').next()?.trim();
    let bare = |k: &str| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !line.contains('=') || !bare(key) {
        return None;
    }
    let section = text[..line_start].lines().rev().find_map(|l| l.trim().strip_prefix('[')?.strip_suffix(']'));
    Some(match section {
        Some(s) => format!("{}.{key}", s.trim()),
        None => key.to_string(),
    })
}

/// A module list must name at least one (each name was checked when it was read).
fn some_modules(key: &str, modules: &[Proj]) -> Result<()> {
    if modules.is_empty() {
        return Err(bad(key, "at least one module", "an empty list"));
    }
    Ok(())
}

/// `p` taken relative to the folder `base` (unchanged when absolute), as an absolute path. The
/// folder is named as the file system names it (links and `..` resolved, when it exists) and
/// the rest is cleaned lexically, so `../runs/x` reads `<parent>/runs/x` in every message.
pub fn resolve_relative(base: &Path, p: &str) -> String {
    if Path::new(p).is_absolute() {
        return p.to_string();
    }
    let base =
        std::fs::canonicalize(base).or_else(|_| std::path::absolute(base)).unwrap_or_else(|_| base.to_path_buf());
    lexically_normal(&base.join(p)).display().to_string()
}

/// `path` with `.` dropped and each `..` taking off the component before it, without asking
/// the file system (the part it applies to may not exist yet, such as an output folder).
fn lexically_normal(path: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

impl RunConfig {
    /// Parses and validates a TOML file; errors name the file. Relative paths inside it are
    /// taken relative to the file's folder ([`RunConfig::resolve_paths`]).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(TrainError::io(path, "reading the run config"))?;
        let mut c = Self::parse(&text).map_err(|e| e.in_file(path))?;
        c.resolve_paths(path.parent().unwrap_or(Path::new("")));
        Ok(c)
    }

    /// Makes every relative path of the config (`model.path` unless it is one of
    /// [`MODEL_ALIASES`], `data.train` files, `adapter.from`, `output.dir`) absolute, taking it
    /// relative to `base`, the folder of the file it was written in: a config means the same
    /// files whatever the working directory. Absolute paths are kept, so resolving twice, or
    /// against a second folder for keys another file added, changes only what is still relative.
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut String| *p = resolve_relative(base, p);
        if !MODEL_ALIASES.contains(&self.model.path.as_str()) {
            resolve(&mut self.model.path);
        }
        self.data.train.iter_mut().filter(|t| t.as_str() != SYNTHETIC).for_each(resolve);
        self.adapter.from.iter_mut().for_each(resolve);
        resolve(&mut self.output.dir);
    }

    pub fn parse(text: &str) -> Result<Self> {
        let c: RunConfig = toml::from_str(text).map_err(|e| match e.span().and_then(|s| key_at(text, s.start)) {
            Some(key) => TrainError::config(format!("key `{key}`: {e}")),
            None => TrainError::config(e.to_string()),
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Range checks, each naming its key and the allowed values.
    pub fn validate(&self) -> Result<()> {
        let (d, a, e, t) = (&self.data, &self.adapter, &self.echo, &self.train);
        if d.train.is_empty() {
            return Err(bad("data.train", "at least one file or \"synthetic\"", "an empty list"));
        }
        if !d.weights.is_empty() && (d.weights.len() != d.train.len() || d.weights.iter().any(|w| !(*w > 0.0))) {
            return Err(bad("data.weights", "one weight > 0 per data.train entry", format!("{:?}", d.weights)));
        }
        if d.cutoff < 8 {
            return Err(bad("data.cutoff", "at least 8 tokens", d.cutoff));
        }
        if !(0.0..=1.0).contains(&d.max_truncated_fraction) {
            return Err(bad("data.max_truncated_fraction", "a fraction in [0, 1]", d.max_truncated_fraction));
        }
        match (d.template, &d.prompt_format, &d.prompt_format_with_input) {
            (TemplateKind::Custom, None, _) => {
                return Err(bad(
                    "data.prompt_format",
                    "a format string with {instruction} (template = \"custom\")",
                    "none",
                ))
            }
            (TemplateKind::Custom, Some(f), fi) => {
                echo_data::Template::new("custom", fi.as_deref().unwrap_or(""), f).map_err(|e| {
                    TrainError::config(format!("data.prompt_format / data.prompt_format_with_input: {e}"))
                })?;
            }
            (t, Some(_), _) | (t, None, Some(_)) => {
                return Err(TrainError::config(format!(
                    "data.prompt_format / data.prompt_format_with_input: only read with data.template = \"custom\", \
                     found data.template = \"{}\"",
                    t.name()
                )))
            }
            _ => {}
        }
        if a.r == 0 || a.r > 4096 {
            return Err(bad("adapter.r", "1..=4096", a.r));
        }
        if !(a.alpha > 0.0) {
            return Err(bad("adapter.alpha", "> 0", a.alpha));
        }
        if !(0.0..1.0).contains(&a.dropout) {
            return Err(bad("adapter.dropout", "a value in [0, 1)", a.dropout));
        }
        some_modules("adapter.targets", &a.targets)?;
        some_modules("echo.target_modules", &e.target_modules)?;
        if e.source_layers.is_empty() {
            return Err(bad("echo.source_layers", "at least one layer", "an empty list"));
        }
        if e.d_echo == 0 || e.d_echo > crate::echo::MAX_D_ECHO {
            return Err(bad("echo.d_echo", &format!("1..={}", crate::echo::MAX_D_ECHO), e.d_echo));
        }
        if !(e.tau > 0.0) {
            return Err(bad("echo.tau", "> 0", e.tau));
        }
        if !(e.lambda_kd >= 0.0) {
            return Err(bad("echo.lambda_kd", ">= 0", e.lambda_kd));
        }
        if !(0.0..=1.0).contains(&e.p_route) {
            return Err(bad("echo.p_route", "a probability in [0, 1]", e.p_route));
        }
        if !(e.init_std >= 0.0) {
            return Err(bad("echo.init_std", ">= 0", e.init_std));
        }
        if t.batch_size == 0 || t.micro_batch_size == 0 || t.batch_size % t.micro_batch_size != 0 {
            return Err(bad(
                "train.batch_size",
                "a positive multiple of train.micro_batch_size",
                format!("{} (micro {})", t.batch_size, t.micro_batch_size),
            ));
        }
        if t.epochs == 0 && t.max_steps == 0 {
            return Err(bad("train.epochs", "> 0 (or train.max_steps > 0)", 0));
        }
        if !(t.lr > 0.0 && t.lr < 1.0) {
            return Err(bad("train.lr", "a value in (0, 1)", t.lr));
        }
        for (k, v) in [("train.beta1", t.beta1), ("train.beta2", t.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(bad(k, "a value in [0, 1)", v));
            }
        }
        if !(t.adam_eps > 0.0) || !(t.weight_decay >= 0.0) || !(t.max_grad_norm >= 0.0) {
            return Err(bad(
                "train.adam_eps / weight_decay / max_grad_norm",
                "adam_eps > 0, weight_decay >= 0, max_grad_norm >= 0",
                format!("{} / {} / {}", t.adam_eps, t.weight_decay, t.max_grad_norm),
            ));
        }
        Ok(())
    }

    /// The checks that need the model: `data.cutoff` within the model's context (else the run
    /// fails only when a long sample arrives), and the echo layout resolved against its layers
    /// (sources and targets exist, none twice, every target shallower than every source).
    /// Called where the run config meets the model, before data or parameters are made.
    pub fn check_against_model(&self, model: &echo_model::LlamaConfig) -> Result<()> {
        let ctx = model.max_position_embeddings;
        if self.data.cutoff > ctx {
            return Err(bad(
                "data.cutoff",
                &format!("at most the model's context, max_position_embeddings = {ctx} (config.json)"),
                self.data.cutoff,
            ));
        }
        if let Some(ec) = self.echo_config(model.num_hidden_layers)? {
            let n = model.num_hidden_layers;
            let sources = crate::echo::resolve_layers("echo.source_layers", &ec.source_layers, n)?;
            let targets = crate::echo::resolve_layers("echo.target_layers", &ec.target_layers, n)?;
            crate::echo::check_layout(&ec.source_layers, &sources, &ec.target_layers, &targets)?;
        }
        Ok(())
    }

    pub fn adapter_config(&self, n_layers: usize) -> Result<AdapterConfig> {
        let a = &self.adapter;
        let layers = if a.layers.is_empty() {
            None
        } else {
            Some(crate::echo::resolve_layers("adapter.layers", &a.layers, n_layers)?)
        };
        Ok(AdapterConfig {
            method: a.method,
            r: a.r,
            alpha: a.alpha,
            use_rslora: a.rslora,
            dropout: a.dropout,
            targets: a.targets.clone(),
            layers,
        })
    }

    /// The echo path's config, `None` when `echo.enabled = false`. Empty target layers mean
    /// the first quarter of the blocks (at least one).
    /// The echo diagnostics' schedule for [`crate::diagnostics::due`]: `None` (off) without the
    /// echo path or with `train.diagnostics_every = 0`, else the steps between measurements
    /// (`train.eval_every` when unset; `0`: only before training and at the end).
    pub fn diagnostics_schedule(&self) -> Option<usize> {
        match (self.echo.enabled, self.train.diagnostics_every) {
            (false, _) | (true, Some(0)) => None,
            (true, Some(n)) => Some(n),
            (true, None) => Some(self.train.eval_every),
        }
    }

    pub fn echo_config(&self, n_layers: usize) -> Result<Option<EchoConfig>> {
        if !self.echo.enabled {
            return Ok(None);
        }
        let mut config = self.echo.clone();
        if config.target_layers.is_empty() {
            config.target_layers = (0..(n_layers / 4).max(1) as i64).collect();
        }
        Ok(Some(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::InjectionSite;

    #[test]
    fn paths_resolve_against_the_config_folder_once() {
        let dir = std::env::temp_dir().join(format!("echo-config-paths-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = "[model]\npath = \"../models/m\"\n[data]\ntrain = [\"synthetic\", \"d/a.json\", \"/abs/b.json\"]\n\
                    [adapter]\nfrom = \"prev\"\n[output]\ndir = \"../runs/x\"\n";
        std::fs::write(dir.join("run.toml"), text).unwrap();
        let c = RunConfig::from_file(&dir.join("run.toml")).unwrap();
        let dir = std::fs::canonicalize(&dir).unwrap();
        let at = |p: &str| dir.join(p).display().to_string();
        assert_eq!(c.model.path, dir.parent().unwrap().join("models/m").display().to_string());
        assert_eq!(c.data.train, vec!["synthetic".to_string(), at("d/a.json"), "/abs/b.json".into()]);
        assert_eq!(c.adapter.from.as_deref(), Some(at("prev").as_str()));
        assert_eq!(c.output.dir, dir.parent().unwrap().join("runs/x").display().to_string());
        // Resolving again (elsewhere) changes nothing; an alias is never a path.
        let mut again = c.clone();
        again.resolve_paths(Path::new("/elsewhere"));
        assert_eq!(again, c);
        let mut alias = RunConfig::parse("[model]\npath = \"smollm2\"\n").unwrap();
        alias.resolve_paths(&dir);
        assert_eq!(alias.model.path, "smollm2");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn values_refused_while_reading_name_their_key_and_the_allowed_values() {
        let cases = [
            ("[adapter]\nmethod = \"lorax\"\n", "adapter.method", "dora"),
            ("[adapter]\ntargets = [\"q_proj\", \"qkv\"]\n", "adapter.targets", "down_proj"),
            ("[echo]\ntarget_modules = [\"mlp\"]\n", "echo.target_modules", "q_proj"),
            ("[data]\noverlong = \"cut\"\n", "data.overlong", "truncate"),
            ("[data]\ntemplate = \"vicuna\"\n", "data.template", "custom"),
            ("[train]\ndevice = \"tpu\"\n", "train.device", "cuda:N"),
        ];
        for (section, key, allowed) in cases {
            let e = RunConfig::parse(&format!("[model]\npath = \"m\"\n{section}")).unwrap_err().to_string();
            assert!(e.contains(&format!("key `{key}`")) && e.contains(allowed), "{section}: {e}");
        }
        // Typed values read back as the names a config writes.
        let c = RunConfig::parse(
            "[model]\npath = \"m\"\n[adapter]\nmethod = \"dora\"\ntargets = [\"o_proj\"]\n\
             [data]\noverlong = \"drop\"\ntemplate = \"plain\"\n[train]\ndevice = \"cuda\"\n",
        )
        .unwrap();
        assert_eq!((c.adapter.method, c.adapter.targets.clone()), (Method::Dora, vec![Proj::O]));
        assert_eq!((c.data.overlong, c.data.template), (Overlong::Drop, TemplateKind::Plain));
        assert_eq!(c.train.device, DeviceSpec::Cuda(0));
        let text = toml::to_string(&c).unwrap();
        for line in ["method = \"dora\"", "targets = [\"o_proj\"]", "overlong = \"drop\"", "device = \"cuda:0\""] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert_eq!(RunConfig::parse(&text).unwrap(), c);
    }

    #[test]
    fn the_injection_site_is_a_typed_key_that_resume_compares() {
        let base = RunConfig::parse("[model]\npath = \"m\"\n").unwrap();
        assert_eq!(base.echo.injection, InjectionSite::Bottleneck);
        let out = RunConfig::parse("[model]\npath = \"m\"\n[echo]\ninjection = \"output\"\n").unwrap();
        assert_eq!(out.echo_config(4).unwrap().unwrap().injection, InjectionSite::Output);
        let e = RunConfig::parse("[model]\npath = \"m\"\n[echo]\ninjection = \"residual\"\n").unwrap_err().to_string();
        assert!(e.contains("bottleneck") && e.contains("output"), "{e}");
        // A checkpoint's config written before the key existed has no `injection` line: it
        // trained at the bottleneck, so it resumes under the default and not under `output`.
        let stored = toml::to_string(&base).unwrap();
        let old: String = stored.lines().filter(|l| !l.starts_with("injection")).map(|l| format!("{l}\n")).collect();
        assert_ne!(old, stored, "the serialised config names the site");
        let old: RunConfig = toml::from_str(&old).unwrap();
        assert!(crate::checkpoint::config_changes(&old, &base).is_empty());
        let changes: Vec<String> =
            crate::checkpoint::config_changes(&old, &out).iter().map(|c| c.to_string()).collect();
        assert_eq!(changes, ["echo.injection: \"bottleneck\" -> \"output\""]);
        // The name the CLI prints is the config's spelling.
        for site in [InjectionSite::Bottleneck, InjectionSite::Output] {
            assert_eq!(serde_json::to_string(&site).unwrap(), format!("\"{}\"", site.name()));
        }
    }
}

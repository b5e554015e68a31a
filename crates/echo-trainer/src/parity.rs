//! The echo parity format of `fixtures/tiny-llama-a/echo/` and `echo-output/`:
//! `echo-config.json` (keys map one-to-one to the `[echo]` section of a run config; an absent
//! `injection` is the bottleneck site) and `echo-init.safetensors` (echo parameters under the
//! spec's names).

use crate::echo::{Aggregation, EchoConfig, EchoPath, InjectionSite};
use crate::error::{Result, TrainError};
use echo_adapters::Adapters;
use echo_autograd::ParamStore;
use echo_model::weights::WeightFiles;
use echo_model::{Llama, Proj};
use serde::Deserialize;
use std::path::Path;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoJson {
    source_layers: Vec<i64>,
    target_layers: Vec<i64>,
    target_modules: Vec<String>,
    d_echo: usize,
    tau: f32,
    lambda_kd: f32,
    detach_echo: bool,
    aggregation: Aggregation,
    #[serde(default)]
    route: Option<Vec<i64>>,
    #[serde(default)]
    rms_norm_eps: Option<f32>,
    #[serde(default)]
    gate: Option<bool>,
    #[serde(default)]
    p_route: Option<f32>,
    #[serde(default)]
    injection: InjectionSite,
}

/// Reads `dir/echo-config.json` and `dir/echo-init.safetensors`, registering the echo
/// parameters in `store`. Returns the path and the given per-sample route, if any.
pub fn load_echo_dir(
    dir: &Path,
    model: &Llama,
    adapters: &Adapters,
    store: &mut ParamStore,
) -> Result<(EchoPath, Option<Vec<bool>>)> {
    let cfg_path = dir.join("echo-config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(TrainError::io(&cfg_path, "reading the echo config"))?;
    let j: EchoJson = serde_json::from_str(&text)
        .map_err(|e| TrainError::Config { file: Some(cfg_path.clone()), msg: e.to_string() })?;
    let target_modules = j
        .target_modules
        .iter()
        .map(|m| {
            Proj::from_short_name(m).ok_or_else(|| TrainError::Config {
                file: Some(cfg_path.clone()),
                msg: format!("target_modules: `{m}` is not a LLaMA projection"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let config = EchoConfig {
        enabled: true,
        source_layers: j.source_layers,
        target_layers: j.target_layers,
        target_modules,
        d_echo: j.d_echo,
        tau: j.tau,
        lambda_kd: j.lambda_kd,
        detach_echo: j.detach_echo,
        aggregation: j.aggregation,
        p_route: j.p_route.unwrap_or(0.5),
        gate: j.gate.unwrap_or(true),
        init_std: 0.02,
        rms_norm_eps: j.rms_norm_eps,
        injection: j.injection,
    };
    let route = j.route.map(|r| r.iter().map(|&x| x != 0).collect());
    let init_path = dir.join("echo-init.safetensors");
    let files = WeightFiles::open_files(std::slice::from_ref(&init_path))?;
    let c = &model.config;
    let path = EchoPath::register(
        config,
        adapters,
        c.num_hidden_layers,
        c.hidden_size,
        c.rms_norm_eps,
        store,
        |name, shape| Ok(files.f32_tensor(name, Some(shape))?),
    )?;
    Ok((path, route))
}

//! LoRA and DoRA adapters on the projections of an [`echo_model::Llama`], stored in a
//! [`ParamStore`](echo_autograd::ParamStore) under their HF PEFT key names, saved and loaded in
//! PEFT's layout (`adapter_config.json` + `adapter_model.safetensors`), and applied through the
//! model's [`Projector`](echo_model::Projector) seam, with an optional per-module injection into
//! the low-rank bottleneck or onto the adapter's output (the echo path's entry point,
//! [`InjectionSite`]).

mod adapters;
mod merge;
mod peft;

pub use adapters::{
    peft_key, row_norms, AdapterConfig, AdapterProjector, Adapters, InjectionSite, Injections, Kind, Method, Site,
};
pub use merge::merged_weights;
pub use peft::{adapter_config_json, load_peft, parse_adapter_config, save_peft, save_peft_as, PeftError};

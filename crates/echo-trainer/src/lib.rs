//! The Echo-LoRA trainer: the echo path ([`echo`]), one training step ([`step`]), AdamW and
//! schedules ([`optim`]), the run config ([`config`]), checkpoints, metrics and the loop
//! ([`train`]), the echo diagnostics ([`diagnostics`]). [`device`] picks where a run
//! computes; [`device_check`] compares the whole step on a GPU with the CPU and
//! [`step_bench`] times the LLaMA-7B LoRA step (both for `cargo xtask gpu-check`).
//! [`interrupt`] carries a stop asked for by a signal to the loop.

pub mod checkpoint;
pub mod config;
pub mod device;
pub mod device_check;
pub mod diagnostics;
pub mod echo;
pub mod error;
pub mod interrupt;
pub mod layout;
pub mod metrics;
pub mod optim;
pub mod parity;
mod report;
mod run_data;
mod run_folder;
pub mod step;
pub mod step_bench;
pub mod train;

pub use config::RunConfig;
pub use echo::{Aggregation, EchoConfig, EchoPath, InjectionSite};
pub use error::{Context, TrainError};
pub use step::{forward_backward, StepContext, StepInput, StepStats, Trace};
pub use train::{train, RunOptions, RunSummary};

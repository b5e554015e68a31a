//! The Echo-LoRA trainer: the echo path ([`echo`]), one training step ([`step`]), AdamW and
//! schedules ([`optim`]), the run config ([`config`]), checkpoints, metrics and the loop
//! ([`train`]).

pub mod checkpoint;
pub mod config;
pub mod echo;
pub mod metrics;
pub mod optim;
pub mod parity;
pub mod step;
pub mod train;

pub use config::RunConfig;
pub use echo::{Aggregation, EchoConfig, EchoPath};
pub use step::{forward_backward, StepContext, StepInput, StepStats, Trace};
pub use train::{train, RunOptions, RunSummary};

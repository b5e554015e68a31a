//! The Echo-LoRA trainer: the echo path ([`echo`]), the training step ([`step`]).

pub mod echo;
pub mod parity;
pub mod step;

pub use echo::{Aggregation, EchoConfig, EchoPath};
pub use step::{forward_backward, StepContext, StepInput, StepStats, Trace};

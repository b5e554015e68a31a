//! Reverse-mode automatic differentiation for echo-lora.
//!
//! A [`Tape`] records one node per op; each node holds a hand-written backward closure that
//! owns exactly the tensors it needs. [`Tape::backward`] runs the closures newest-first and
//! drops each one as soon as it has run, so activations are released during backward, not
//! after it. Trainable parameters live in a [`ParamStore`] outside the tape, where gradients
//! accumulate across micro-batches until the optimizer takes them. Frozen tensors are plain
//! constants: they get no gradient buffer, and the fused nodes skip their weight-gradient GEMMs.

mod error;
pub mod gradcheck;
pub mod ops;
mod params;
mod tape;

pub use error::{Error, Result};
pub use params::{Param, ParamId, ParamStore};
pub use tape::{Grads, NoGradGuard, Tape, Var};

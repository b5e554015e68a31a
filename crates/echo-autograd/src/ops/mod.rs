//! Differentiable ops. Each records one node whose backward is written by hand.
//!
//! - [`basic`]: arithmetic with broadcasting, matmul, layout, reductions, activations.
//! - [`nn`]: the transformer's fused nodes (RMSNorm, RoPE, attention, SwiGLU).
//! - [`adapter`]: LoRA / DoRA linears and the echo path's gated injection.
//! - [`loss`]: cross-entropy, KL with temperature, masked mean pooling.

pub mod adapter;
pub mod basic;
pub mod loss;
pub mod nn;

pub use adapter::*;
pub use basic::*;
pub use loss::*;
pub use nn::*;

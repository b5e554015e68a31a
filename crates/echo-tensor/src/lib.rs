//! The tensor core: [`Tensor`] (contiguous, immutable, cheaply cloned), [`DType`],
//! [`Shape`], [`Device`], and every op a LLaMA training step needs, shape-checked.
//!
//! Ops validate their arguments and return [`Error`] naming the op and the shapes involved;
//! the arithmetic itself lives in `echo-kernels`. Compute ops run on f32; bf16 and f16 are
//! storage types reached through [`Tensor::to_dtype`].
//!
//! A tensor's data lives on the host or on a CUDA device ([`Tensor::to_device`]); every op
//! runs where its operands are, and operands on different devices are an
//! [`Error::DeviceMismatch`]. The op files (`ops/`, `nn/`) check arguments and hand over to
//! the device's backend (`backend.rs`: one trait, implemented by `cpu/` and `cuda/`).

mod backend;
mod cpu;
mod cuda;
mod device;
mod dtype;
mod error;
pub mod nn;
mod ops;
mod shape;
mod tensor;

pub use device::Device;
pub use dtype::DType;
pub use echo_rng::Rng;
pub use error::{Error, Result};
pub use ops::broadcast_shape;
pub use shape::Shape;
pub use tensor::{Buffer, Tensor, WeakTensor};

pub use echo_kernels::cpu::loss::IGNORE_INDEX;
pub use echo_kernels::cpu::rope::{Llama3Scaling, RopeTable};

//! The CPU side of echo-tensor: the host form of every op (`ops`: generic ops, `nn`: the
//! fused pairs), on the routines of `echo_kernels::cpu`, and the twin of the GPU's mixed
//! precision (`mixed`). [`Cpu`]'s `crate::backend::Backend` calls these functions by name
//! (`backend.rs`).

pub(crate) mod mixed;
pub(crate) mod nn;
pub(crate) mod ops;

/// Host memory, computed on the rayon pool.
pub(crate) struct Cpu;

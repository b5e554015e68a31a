//! Raw compute routines on slices: no shapes, no errors, no allocation policy.
//!
//! Every routine takes its dimensions explicitly and `debug_assert`s / `assert`s that the
//! slices are large enough; validating user input is the job of `echo-tensor`, which calls
//! these. The `cpu` module is the reference implementation ("CPU twin") that any GPU kernel
//! is tested against; `cuda` holds the CUDA backend (kernels in `kernels/*.cu`, loaded at run
//! time: nothing here needs a GPU or a CUDA toolkit to build).

pub mod cpu;
pub mod cuda;

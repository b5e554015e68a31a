//! Fused neural-network ops as validated forward/backward pairs over the `echo-kernels`
//! routines. The autograd crate turns each pair into one tape node with a hand-written
//! backward; the pairs are also usable on their own (inference, benchmarks).

mod adapter;
mod loss;
mod optim;
mod transformer;

pub use adapter::*;
pub use loss::*;
pub use optim::*;
pub use transformer::*;

use crate::{Error, Result, Tensor};

/// Errors unless `t` has exactly `dims`.
pub(crate) fn expect_dims(op: &'static str, what: &str, t: &Tensor, dims: &[usize]) -> Result<()> {
    if t.dims() != dims {
        return Err(Error::BadShape { op, msg: format!("{what} must have shape {dims:?}, got {}", t.shape()) });
    }
    Ok(())
}

/// Errors unless `t` has rank `rank`.
pub(crate) fn expect_rank(op: &'static str, what: &str, t: &Tensor, rank: usize) -> Result<()> {
    if t.rank() != rank {
        return Err(Error::BadShape { op, msg: format!("{what} must be {rank}-D, got shape {}", t.shape()) });
    }
    Ok(())
}

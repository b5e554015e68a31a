//! Generic tensor ops, each an `impl Tensor` block: elementwise and broadcasting,
//! reductions, layout (reshape, permute, slice, concat, gather/scatter), matmul.

mod elementwise;
mod layout;
mod matmul;
mod reduce;

pub use elementwise::broadcast_shape;

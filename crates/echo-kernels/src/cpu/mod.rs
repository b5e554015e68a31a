//! CPU kernels. Parallelism comes from rayon; GEMM from our AVX2 kernel (`gemm_avx2`) or the
//! `gemm` crate, chosen per call by `gemm::gemm`.

pub mod activation;
pub mod attention;
pub mod cast;
pub mod decode;
pub mod embed;
pub mod gemm;
pub mod gemm_avx2;
pub mod loss;
pub mod lowrank;
pub mod norm;
pub mod optim;
pub mod pool;
pub mod rope;
pub mod tensor_ref;

/// Rows per rayon task for row-wise kernels: big enough that scheduling is noise.
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (16_384 / row_len.max(1)).max(1)
}

// Embedding lookup and its adjoint. CPU twin: crates/echo-kernels/src/cpu/embed.rs.
// Indices are int32 (validated by the layer above: 0 <= idx < rows).

// out[i, :] = table[idx[i], :], fp32 table. One thread per output element.
extern "C" __global__ void embed_gather_f32(const float* __restrict__ table, const int* __restrict__ idx,
                                            float* __restrict__ out, int n, int dim) {
    const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t)n * dim) return;
    const size_t i = e / dim;
    const int d = (int)(e % dim);
    out[e] = table[(size_t)idx[i] * dim + d];
}

// The same from a bf16 table (the frozen base embedding), widened to fp32.
extern "C" __global__ void embed_gather_bf16(const unsigned short* __restrict__ table, const int* __restrict__ idx,
                                             float* __restrict__ out, int n, int dim) {
    const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t)n * dim) return;
    const size_t i = e / dim;
    const int d = (int)(e % dim);
    out[e] = __uint_as_float(((unsigned int)table[(size_t)idx[i] * dim + d]) << 16);
}

// out[idx[k], :] += src[k, :] for k in order: one thread per column, so repeated indices
// accumulate in the twin's order with no atomics (bit-identical to the CPU). The caller
// zeroes `out` first when it wants the plain adjoint.
extern "C" __global__ void embed_scatter_add(const float* __restrict__ src, const int* __restrict__ idx,
                                             float* __restrict__ out, int n, int dim) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= dim) return;
    for (int k = 0; k < n; ++k) out[(size_t)idx[k] * dim + d] += src[(size_t)k * dim + d];
}

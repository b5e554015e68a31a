// Masked mean over the token axis: out[b] = sum_t m[b,t] x[b,t] / sum_t m[b,t]; an all-zero
// mask pools to zero and passes no gradient. CPU twin: crates/echo-kernels/src/cpu/pool.rs.

// counts[b] = sum_t mask[b, t], in token order as the twin. One thread per sample.
extern "C" __global__ void pool_counts(const float* __restrict__ mask, float* __restrict__ counts, int batch,
                                       int seq) {
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= batch) return;
    float n = 0.0f;
    for (int t = 0; t < seq; ++t) n += mask[(size_t)b * seq + t];
    counts[b] = n;
}

// x [B, T, D] -> out [B, D]. One thread per (b, d), tokens in order.
extern "C" __global__ void masked_mean_fwd(const float* __restrict__ x, const float* __restrict__ mask,
                                           const float* __restrict__ counts, float* __restrict__ out, int batch,
                                           int seq, int dim) {
    const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t)batch * dim) return;
    const int b = (int)(e / dim), d = (int)(e % dim);
    const float n = counts[b];
    float o = 0.0f;
    if (n != 0.0f) {
        for (int t = 0; t < seq; ++t) {
            const float w = mask[(size_t)b * seq + t] / n;
            if (w != 0.0f) o += w * x[((size_t)b * seq + t) * dim + d];
        }
    }
    out[e] = o;
}

// dx[b, t, :] = mask[b, t] / n_b * dout[b, :]. One thread per element of dx.
extern "C" __global__ void masked_mean_bwd(const float* __restrict__ dout, const float* __restrict__ mask,
                                           const float* __restrict__ counts, float* __restrict__ dx, int batch,
                                           int seq, int dim) {
    const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t)batch * seq * dim) return;
    const size_t bt = e / dim;
    const int d = (int)(e % dim);
    const int b = (int)(bt / seq);
    const float n = counts[b];
    const float w = n == 0.0f ? 0.0f : mask[bt] / n;
    dx[e] = w * dout[(size_t)b * dim + d];
}

// RMSNorm as LLaMA defines it, y = w * x / sqrt(mean(x^2) + eps), per row of `dim`.
// CPU twin: crates/echo-kernels/src/cpu/norm.rs. Launch wrappers: cuda/ops.rs.
// w == nullptr: the parameter-free RMSNorm of the echo path.

// Tile sizes come from the compiler options (echo_kernels::cuda::tiles, -D flags).
#ifndef NORM_THREADS
#error "compile with the -D options of echo_kernels::cuda::tiles::defines()"
#endif

__device__ __forceinline__ float norm_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block (NORM_THREADS threads); every thread gets the result.
__device__ float norm_block_sum(float v) {
    __shared__ float warp_part[NORM_THREADS / 32];
    __shared__ float total;
    v = norm_warp_sum(v);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) warp_part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = lane < NORM_THREADS / 32 ? warp_part[lane] : 0.0f;
        s = norm_warp_sum(s);
        if (lane == 0) total = s;
    }
    __syncthreads();
    const float r = total;
    __syncthreads();  // warp_part / total may be reused by a following call
    return r;
}

// One block of NORM_THREADS per row. Writes y and the per-row reciprocal RMS rstd.
extern "C" __global__ void rmsnorm_fwd(const float* __restrict__ x, const float* __restrict__ w,
                                       float* __restrict__ y, float* __restrict__ rstd, int rows, int dim,
                                       float eps) {
    const int row = blockIdx.x;
    if (row >= rows) return;
    const float* xr = x + (size_t)row * dim;
    float* yr = y + (size_t)row * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
    ss = norm_block_sum(ss);
    const double ms = (double)ss / (double)dim;
    const float inv = (float)(1.0 / sqrt(ms + (double)eps));
    if (threadIdx.x == 0) rstd[row] = inv;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float xh = xr[i] * inv;
        yr[i] = w != nullptr ? w[i] * xh : xh;
    }
}

// dx = rstd * (g - xhat * mean(g * xhat)), g = dy * w, xhat = x * rstd. One block per row.
extern "C" __global__ void rmsnorm_bwd_dx(const float* __restrict__ dy, const float* __restrict__ x,
                                          const float* __restrict__ w, const float* __restrict__ rstd,
                                          float* __restrict__ dx, int rows, int dim) {
    const int row = blockIdx.x;
    if (row >= rows) return;
    const float* dyr = dy + (size_t)row * dim;
    const float* xr = x + (size_t)row * dim;
    float* dxr = dx + (size_t)row * dim;
    const float r = rstd[row];
    float dot = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float g = dyr[i] * (w != nullptr ? w[i] : 1.0f);
        dot += g * xr[i] * r;
    }
    dot = norm_block_sum(dot);
    const float mean = dot / (float)dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float g = dyr[i] * (w != nullptr ? w[i] : 1.0f);
        dxr[i] = r * (g - xr[i] * r * mean);
    }
}

// dw[i] += sum_rows dy * x * rstd: one thread per column, rows in order (deterministic).
extern "C" __global__ void rmsnorm_bwd_dw(const float* __restrict__ dy, const float* __restrict__ x,
                                          const float* __restrict__ rstd, float* __restrict__ dw, int rows,
                                          int dim) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= dim) return;
    float acc = 0.0f;
    for (int row = 0; row < rows; ++row) {
        const size_t idx = (size_t)row * dim + i;
        acc += dy[idx] * x[idx] * rstd[row];
    }
    dw[i] += acc;
}

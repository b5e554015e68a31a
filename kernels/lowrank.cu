// The LoRA / DoRA low-rank path and the echo path's gated injection.
//
// CPU twins: crates/echo-kernels/src/cpu/lowrank.rs (lora_forward / lora_backward,
// gated_inject_forward / gated_inject_backward, dora_scale_forward / dora_scale_backward).
// Launch wrappers: crates/echo-kernels/src/cuda/ops.rs. Tile constants (LR_*, SHRINK_*,
// EXPAND_*, WG_*): crates/echo-kernels/src/cuda/tiles.rs, given to the compiler as -D options.
//
// Shapes as in the twin: x [N, in], A [r, in], B [out, r], bottleneck z [N, r], the N rows
// grouped by sample (rows_per_sample each). Everything here is fp32 (adapters are fp32);
// the frozen base GEMM runs in cuBLAS (bf16 in, fp32 accumulate), see cuda/blas.rs.
//
// No headers: NVRTC compiles this file as is, with the options in cuda/source.rs.

// Tile sizes come from the compiler options (echo_kernels::cuda::tiles, -D flags).
#ifndef LR_THREADS
#error "compile with the -D options of echo_kernels::cuda::tiles::defines()"
#endif

// c[M, n] = alpha * sum_k x[m, k] * mat(k, j), mat(k, j) = mat[k * mat_ks + j * mat_js],
// then, when gate != nullptr, c[m, j] += gate[b, j] * proj[b, j] with b = m / rows_per_sample
// (the gated injection fused into the shrink's epilogue). n <= LR_MAX_RANK.
//   LoRA shrink  z  = x A^T    : mat = A [r, in],   mat_ks = 1, mat_js = in, alpha = 1
//   LoRA dz      dz = s dy B   : mat = B [out, r],  mat_ks = r, mat_js = 1,  alpha = s
// Grid: ceil(M / SHRINK_ROWS) blocks of LR_THREADS threads.
extern "C" __global__ void lowrank_shrink(const float* __restrict__ x, const float* __restrict__ mat,
                                          float* __restrict__ c, int M, int K, int n, long long mat_ks,
                                          long long mat_js, float alpha, const float* __restrict__ gate,
                                          const float* __restrict__ proj, int rows_per_sample) {
    __shared__ float xs[SHRINK_ROWS][SHRINK_KT + 1];
    __shared__ float ms[LR_MAX_RANK][SHRINK_KT + 1];
    const int row0 = blockIdx.x * SHRINK_ROWS;
    const int outs = SHRINK_ROWS * n;
    float acc[SHRINK_PER_THREAD];
#pragma unroll
    for (int t = 0; t < SHRINK_PER_THREAD; ++t) acc[t] = 0.0f;

    for (int k0 = 0; k0 < K; k0 += SHRINK_KT) {
        for (int e = threadIdx.x; e < SHRINK_ROWS * SHRINK_KT; e += blockDim.x) {
            const int r = e / SHRINK_KT, kk = e % SHRINK_KT;
            const int row = row0 + r, k = k0 + kk;
            xs[r][kk] = (row < M && k < K) ? x[(size_t)row * K + k] : 0.0f;
        }
        for (int e = threadIdx.x; e < n * SHRINK_KT; e += blockDim.x) {
            const int j = e / SHRINK_KT, kk = e % SHRINK_KT;
            const int k = k0 + kk;
            ms[j][kk] = k < K ? mat[(long long)k * mat_ks + (long long)j * mat_js] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int t = 0; t < SHRINK_PER_THREAD; ++t) {
            const int o = threadIdx.x + t * LR_THREADS;
            if (o < outs) {
                const int r = o / n, j = o % n;
                float s = 0.0f;
#pragma unroll 8
                for (int kk = 0; kk < SHRINK_KT; ++kk) s += xs[r][kk] * ms[j][kk];
                acc[t] += s;
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int t = 0; t < SHRINK_PER_THREAD; ++t) {
        const int o = threadIdx.x + t * LR_THREADS;
        if (o < outs) {
            const int r = o / n, j = o % n;
            const int row = row0 + r;
            if (row < M) {
                float v = alpha * acc[t];
                if (gate != nullptr) {
                    const int b = row / rows_per_sample;
                    v += gate[(size_t)b * n + j] * proj[(size_t)b * n + j];
                }
                c[(size_t)row * n + j] = v;
            }
        }
    }
}

// y[M, N] (+)= alpha * (sum_j z[m, j] * mat(j, o)) * keep[m, o], mat(j, o) = mat[o * mat_os + j * mat_js];
// keep == nullptr means 1. accumulate != 0 adds into y (the base GEMM's output), else overwrites.
//   LoRA expand  y += s z B^T      : mat = B [out, r], mat_os = r, mat_js = 1,  alpha = s
//   LoRA dx      dx += (dz A) keep : mat = A [r, in],  mat_os = 1, mat_js = in, alpha = 1
// Grid: (ceil(N / EXPAND_COLS), ceil(M / EXPAND_ROWS)) blocks of EXPAND_COLS threads. n <= LR_MAX_RANK.
extern "C" __global__ void lowrank_expand(const float* __restrict__ z, const float* __restrict__ mat,
                                          float* __restrict__ y, int M, int N, int n, long long mat_os,
                                          long long mat_js, float alpha, const float* __restrict__ keep,
                                          int accumulate) {
    __shared__ float zs[EXPAND_ROWS][LR_MAX_RANK];
    const int o = blockIdx.x * EXPAND_COLS + threadIdx.x;
    const int row0 = blockIdx.y * EXPAND_ROWS;
    for (int e = threadIdx.x; e < EXPAND_ROWS * n; e += blockDim.x) {
        const int r = e / n, j = e % n;
        zs[r][j] = (row0 + r < M) ? z[(size_t)(row0 + r) * n + j] : 0.0f;
    }
    __syncthreads();
    if (o >= N) return;
    float acc[EXPAND_ROWS];
#pragma unroll
    for (int r = 0; r < EXPAND_ROWS; ++r) acc[r] = 0.0f;
    for (int j = 0; j < n; ++j) {
        const float mv = mat[(long long)o * mat_os + (long long)j * mat_js];
#pragma unroll
        for (int r = 0; r < EXPAND_ROWS; ++r) acc[r] += zs[r][j] * mv;
    }
#pragma unroll
    for (int r = 0; r < EXPAND_ROWS; ++r) {
        const int row = row0 + r;
        if (row < M) {
            const size_t idx = (size_t)row * N + o;
            float v = alpha * acc[r];
            if (keep != nullptr) v *= keep[idx];
            y[idx] = accumulate ? y[idx] + v : v;
        }
    }
}

// c[I, J] (+)= alpha * sum_m p[m, i] * q[m, j]: the weight gradients, a reduction over the
// N rows. p is [M, I], q is [M, J], both row-major.
//   dA = dz^T xd   : p = dz [N, r],   q = xd [N, in], alpha = 1
//   dB = s dy^T z  : p = dy [N, out], q = z [N, r],   alpha = s
// Grid: (ceil(J / WG_TILE), ceil(I / WG_TILE)) blocks of 256 threads (16 x 16, 4 x 4 each).
extern "C" __global__ void lowrank_wgrad(const float* __restrict__ p, const float* __restrict__ q,
                                         float* __restrict__ c, int M, int I, int J, float alpha,
                                         int accumulate) {
    __shared__ float ps[WG_KT][WG_TILE];
    __shared__ float qs[WG_KT][WG_TILE];
    const int i0 = blockIdx.y * WG_TILE, j0 = blockIdx.x * WG_TILE;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b] = 0.0f;
    for (int m0 = 0; m0 < M; m0 += WG_KT) {
        for (int e = threadIdx.x; e < WG_KT * WG_TILE; e += blockDim.x) {
            const int kk = e / WG_TILE, ii = e % WG_TILE;
            const int m = m0 + kk;
            ps[kk][ii] = (m < M && i0 + ii < I) ? p[(size_t)m * I + i0 + ii] : 0.0f;
            qs[kk][ii] = (m < M && j0 + ii < J) ? q[(size_t)m * J + j0 + ii] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < WG_KT; ++kk) {
            float pa[4], qb[4];
#pragma unroll
            for (int a = 0; a < 4; ++a) pa[a] = ps[kk][ty + 16 * a];
#pragma unroll
            for (int b = 0; b < 4; ++b) qb[b] = qs[kk][tx + 16 * b];
#pragma unroll
            for (int a = 0; a < 4; ++a)
#pragma unroll
                for (int b = 0; b < 4; ++b) acc[a][b] += pa[a] * qb[b];
        }
        __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const int i = i0 + ty + 16 * a;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            const int j = j0 + tx + 16 * b;
            if (i < I && j < J) {
                const size_t idx = (size_t)i * J + j;
                const float v = alpha * acc[a][b];
                c[idx] = accumulate ? c[idx] + v : v;
            }
        }
    }
}

// Gated injection alone (when the shrink is not ours, e.g. the unfused baseline):
// z[row, j] += gate[b, j] * proj[b, j], b = row / rows_per_sample. One thread per element.
extern "C" __global__ void gated_inject_fwd(float* __restrict__ z, const float* __restrict__ gate,
                                            const float* __restrict__ proj, int rows, int rank,
                                            int rows_per_sample) {
    const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t)rows * rank) return;
    const int row = (int)(e / rank), j = (int)(e % rank);
    const size_t bj = (size_t)(row / rows_per_sample) * rank + j;
    z[e] += gate[bj] * proj[bj];
}

// dgate[b, j] = proj[b, j] * sum_t dz[b, t, j], dproj[b, j] = gate[b, j] * sum_t dz[b, t, j]:
// the reduction over the sample's tokens, deterministic (fixed order, no atomics).
// Grid: (ceil(rank / 32), samples) blocks of (32, 8) threads.
extern "C" __global__ void gated_inject_bwd(const float* __restrict__ dz, const float* __restrict__ gate,
                                            const float* __restrict__ proj, float* __restrict__ dgate,
                                            float* __restrict__ dproj, int rank, int rows_per_sample) {
    __shared__ float part[8][33];
    const int j = blockIdx.x * 32 + threadIdx.x;
    const int b = blockIdx.y;
    float s = 0.0f;
    if (j < rank) {
        const float* base = dz + (size_t)b * rows_per_sample * rank + j;
        for (int t = threadIdx.y; t < rows_per_sample; t += 8) s += base[(size_t)t * rank];
    }
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && j < rank) {
        float sum = 0.0f;
#pragma unroll
        for (int y = 0; y < 8; ++y) sum += part[y][threadIdx.x];
        const size_t bj = (size_t)b * rank + j;
        dgate[bj] = sum * proj[bj];
        dproj[bj] = sum * gate[bj];
    }
}

// DoRA column scaling: y[n, o] = pre[n, o] * (magnitude[o] / norm[o]). One thread per element.
extern "C" __global__ void dora_scale_fwd(const float* __restrict__ pre, const float* __restrict__ magnitude,
                                          const float* __restrict__ norm, float* __restrict__ y, int rows,
                                          int cols) {
    const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t)rows * cols) return;
    const int o = (int)(e % cols);
    y[e] = pre[e] * (magnitude[o] / norm[o]);
}

// Its backward: dpre = dy * (m / n) per column, and (when dm != nullptr)
// dm[o] = sum_n dy[n, o] * pre[n, o] / norm[o], accumulated in double as the twin does.
// One thread per column (coalesced across columns), looping over rows in order.
extern "C" __global__ void dora_scale_bwd(const float* __restrict__ dy, const float* __restrict__ pre,
                                          const float* __restrict__ magnitude, const float* __restrict__ norm,
                                          float* __restrict__ dpre, float* __restrict__ dm, int rows, int cols) {
    const int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= cols) return;
    const float c = magnitude[o] / norm[o];
    double acc = 0.0;
    for (int n = 0; n < rows; ++n) {
        const size_t idx = (size_t)n * cols + o;
        const float g = dy[idx];
        dpre[idx] = g * c;
        acc += (double)(g * pre[idx]);
    }
    if (dm != nullptr) dm[o] = (float)acc / norm[o];
}

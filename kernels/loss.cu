// Row-wise losses over logits: masked cross-entropy (ignore index -100) and the echo path's
// distillation KL with temperature. CPU twin: crates/echo-kernels/src/cpu/loss.rs.
// Launch wrappers: cuda/ops.rs.
//
// Chunked over the vocabulary: a block streams its row in LOSS_THREADS-wide chunks keeping an
// online (max, sum of exp) per thread, then merges them, so a row of any vocabulary size costs
// one pass for the log-sum-exp and no scratch memory. Callers pass only the labelled rows (the
// LM head never runs on the others), rows with target -100 give 0 and a zero gradient.

// Tile sizes come from the compiler options (echo_kernels::cuda::tiles, -D flags).
#ifndef LOSS_THREADS
#error "compile with the -D options of echo_kernels::cuda::tiles::defines()"
#endif
#define IGNORE_INDEX (-100LL)
#define LOSS_NEG_INF __uint_as_float(0xff800000u)
#define LOSS_NAN __uint_as_float(0x7fc00000u)

// (m, s) represents s * exp(m); merge two of them.
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
    if (m2 == LOSS_NEG_INF) return;
    if (m == LOSS_NEG_INF) {
        m = m2;
        s = s2;
        return;
    }
    if (m2 > m) {
        s = s * expf(m - m2) + s2;
        m = m2;
    } else {
        s = s + s2 * expf(m2 - m);
    }
}

__device__ __forceinline__ void lse_push(float& m, float& s, float x) {
    if (x == LOSS_NEG_INF) return;
    if (x > m) {
        s = (m == LOSS_NEG_INF ? 0.0f : s * expf(m - x)) + 1.0f;
        m = x;
    } else {
        s += expf(x - m);
    }
}

// Log-sum-exp of row * inv_tau over the block; every thread gets the result.
__device__ float block_lse(const float* __restrict__ row, int vocab, float inv_tau) {
    __shared__ float ms[LOSS_THREADS / 32], ss[LOSS_THREADS / 32];
    __shared__ float result;
    float m = LOSS_NEG_INF, s = 0.0f;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) lse_push(m, s, row[v] * inv_tau);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        ms[warp] = m;
        ss[warp] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float mm = LOSS_NEG_INF, sm = 0.0f;
        for (int w = 0; w < LOSS_THREADS / 32; ++w) lse_merge(mm, sm, ms[w], ss[w]);
        result = mm + logf(sm);
    }
    __syncthreads();
    const float r = result;
    __syncthreads();  // the shared slots may be reused by the next call
    return r;
}

__device__ float loss_block_sum(float v) {
    __shared__ float part[LOSS_THREADS / 32];
    __shared__ float total;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int w = 0; w < LOSS_THREADS / 32; ++w) s += part[w];
        total = s;
    }
    __syncthreads();
    const float r = total;
    __syncthreads();
    return r;
}

// loss[r] = lse(logits[r]) - logits[r, target[r]], lse[r] written too; 0 and 0 for ignored
// rows. A target outside [0, vocab) (a bug above: echo-tensor validates) gives NaN.
// One block of LOSS_THREADS per row.
extern "C" __global__ void cross_entropy_fwd(const float* __restrict__ logits, const long long* __restrict__ targets,
                                             float* __restrict__ loss, float* __restrict__ lse, int rows, int vocab) {
    const int r = blockIdx.x;
    if (r >= rows) return;
    const long long t = targets[r];
    if (t == IGNORE_INDEX) {
        if (threadIdx.x == 0) {
            loss[r] = 0.0f;
            lse[r] = 0.0f;
        }
        return;  // the whole block returns: no barrier is left waiting
    }
    const float* row = logits + (size_t)r * vocab;
    const float z = block_lse(row, vocab, 1.0f);
    if (threadIdx.x == 0) {
        lse[r] = z;
        loss[r] = (t >= 0 && t < vocab) ? z - row[t] : LOSS_NAN;
    }
}

// dlogits[r] = row_scale[r] * (softmax(logits[r]) - onehot(target[r])), 0 for ignored rows.
// One thread per logit over the flattened [rows, vocab] (a 1-D grid: rows may exceed 65535).
extern "C" __global__ void cross_entropy_bwd(const float* __restrict__ logits, const long long* __restrict__ targets,
                                             const float* __restrict__ lse, const float* __restrict__ row_scale,
                                             float* __restrict__ dlogits, int rows, int vocab) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)rows * vocab) return;
    const int r = (int)(idx / vocab);
    const int v = (int)(idx % vocab);
    const long long t = targets[r];
    if (t == IGNORE_INDEX) {
        dlogits[idx] = 0.0f;
        return;
    }
    const float s = row_scale[r];
    float d = s * expf(logits[idx] - lse[r]);
    if ((long long)v == t) d -= s;
    dlogits[idx] = d;
}

// kl[r] = sum_v pT (log pT - log pS), pT = softmax(teacher / tau), pS = softmax(student / tau).
// One block per row.
extern "C" __global__ void kl_fwd(const float* __restrict__ teacher, const float* __restrict__ student,
                                  float* __restrict__ kl, int rows, int vocab, float tau) {
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float inv = 1.0f / tau;
    const float* t = teacher + (size_t)r * vocab;
    const float* s = student + (size_t)r * vocab;
    const float zt = block_lse(t, vocab, inv);
    const float zs = block_lse(s, vocab, inv);
    float acc = 0.0f;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
        const float log_pt = t[v] * inv - zt;
        const float log_ps = s[v] * inv - zs;
        acc += expf(log_pt) * (log_pt - log_ps);
    }
    acc = loss_block_sum(acc);
    if (threadIdx.x == 0) kl[r] = acc;
}

// dstudent[r] = row_scale[r] * (pS - pT) / tau (the teacher is a constant); rows with scale 0
// get zeros. One block per row (the two log-sum-exps first, then one pass writing).
extern "C" __global__ void kl_bwd_student(const float* __restrict__ teacher, const float* __restrict__ student,
                                          const float* __restrict__ row_scale, float* __restrict__ dstudent,
                                          int rows, int vocab, float tau) {
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float sc = row_scale[r];
    float* d = dstudent + (size_t)r * vocab;
    if (sc == 0.0f) {
        for (int v = threadIdx.x; v < vocab; v += blockDim.x) d[v] = 0.0f;
        return;
    }
    const float inv = 1.0f / tau;
    const float* t = teacher + (size_t)r * vocab;
    const float* s = student + (size_t)r * vocab;
    const float zt = block_lse(t, vocab, inv);
    const float zs = block_lse(s, vocab, inv);
    for (int v = threadIdx.x; v < vocab; v += blockDim.x)
        d[v] = sc * inv * (expf(s[v] * inv - zs) - expf(t[v] * inv - zt));
}

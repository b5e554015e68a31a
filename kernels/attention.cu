// Causal self-attention with grouped-query heads and a key padding mask, flash-style: no
// T x T matrix ever reaches global memory. CPU twin: crates/echo-kernels/src/cpu/attention.rs.
// Launch wrappers: cuda/ops.rs; tile sizes: cuda/tiles.rs.
//
// Layouts (as the twin): q, out, dout, dq are [B, T, Hq, D]; k, v, dk, dv are [B, T, Hkv, D];
// key_valid is [B, T] bytes (0/1) and key_start [B, T] ints; lse and delta are [B, Hq, T].
// Query i attends key j when key_start[b, i] <= j <= i and key_valid[b, j]. key_start is 0 for
// a padded batch and the first position of the query's own example in a packed row (several
// examples one after the other), so attention stays inside each example; it never decreases
// along a row (checked on the host), which lets every kernel skip the key tiles before the
// first query's start and (dK/dV) the query tiles past the keys' examples. A query with no
// key to attend gets a zero output, lse = +inf, and a zero gradient. A query whose scores
// include a NaN or +inf (or whose keys all score -inf) gets a NaN output and lse, and NaN
// gradients through them, as the twin does: never a plausible zero. Scores are scale * q.k; D <= ATT_DMAX (any D, not only multiples of 32).
//
// Scheme: a K/V tile of ATT_BK = 32 keys sits in shared memory, lane j of a warp owns key j
// of the tile (its score), and the warp's 32 lanes own the head dims (d = lane + 32 c) of
// the accumulators; probabilities move from the key lanes to the dim lanes by shuffles.

// Tile sizes come from the compiler options (echo_kernels::cuda::tiles, -D flags).
#ifndef ATT_BK
#error "compile with the -D options of echo_kernels::cuda::tiles::defines()"
#endif
#define ATT_DC (ATT_DMAX / 32)
#define ATT_THREADS (ATT_WARPS * 32)
#define ATT_FWD_BQ (ATT_WARPS * ATT_FWD_QPW)  // queries per block, forward (ATT_FWD_QPW per warp)
#define ATT_DQ_BQ (ATT_WARPS * ATT_DQ_QPW)
#define ATT_DKV_BK (ATT_WARPS * ATT_DKV_KPW)  // keys per block, dK/dV
#define ATT_FULL 0xffffffffu
// No <math.h> under NVRTC: spell the infinities out.
#define ATT_INF __uint_as_float(0x7f800000u)
#define ATT_NEG_INF __uint_as_float(0xff800000u)
#define ATT_NAN __uint_as_float(0x7fc00000u)

__device__ __forceinline__ float att_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(ATT_FULL, v, o));
    return v;
}

__device__ __forceinline__ float att_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(ATT_FULL, v, o);
    return v;
}

// Loads rows t0 .. t0+rows-1 of head `head` of a [B, T, H, D] tensor into dst (row stride ld),
// zero past T.
__device__ __forceinline__ void att_load_tile(float* dst, int ld, const float* __restrict__ src, int b, int t0,
                                              int rows, int T, int H, int head, int D) {
    for (int e = threadIdx.x; e < rows * D; e += blockDim.x) {
        const int r = e / D, d = e % D;
        const int t = t0 + r;
        dst[r * ld + d] = t < T ? src[(((size_t)b * T + t) * H + head) * D + d] : 0.0f;
    }
}

// Forward. Grid: (ceil(T / ATT_FWD_BQ), Hq, B) blocks of ATT_THREADS.
extern "C" __global__ void attention_fwd(const float* __restrict__ q, const float* __restrict__ k,
                                         const float* __restrict__ v, const unsigned char* __restrict__ key_valid,
                                         const int* __restrict__ key_start, float* __restrict__ out, float* __restrict__ lse, int B, int T, int Hq,
                                         int Hkv, int D, float scale) {
    __shared__ float qs[ATT_FWD_BQ][ATT_DMAX];
    __shared__ float ks[ATT_BK][ATT_DMAX + 1];
    __shared__ float vs[ATT_BK][ATT_DMAX + 1];
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * ATT_FWD_BQ;
    const int g = h / (Hq / Hkv);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    att_load_tile(&qs[0][0], ATT_DMAX, q, b, q0, ATT_FWD_BQ, T, Hq, h, D);
    float m[ATT_FWD_QPW], l[ATT_FWD_QPW], o[ATT_FWD_QPW][ATT_DC];
    int st[ATT_FWD_QPW];
    // Per query, uniform across the warp: a key to attend was seen; a score was NaN or +inf
    // (fmaxf skips NaN, so the running max alone cannot tell).
    bool any[ATT_FWD_QPW], bad[ATT_FWD_QPW];
#pragma unroll
    for (int a = 0; a < ATT_FWD_QPW; ++a) {
        const int i = q0 + warp * ATT_FWD_QPW + a;
        st[a] = i < T ? key_start[(size_t)b * T + i] : T;
        m[a] = ATT_NEG_INF;
        l[a] = 0.0f;
        any[a] = false;
        bad[a] = false;
#pragma unroll
        for (int c = 0; c < ATT_DC; ++c) o[a][c] = 0.0f;
    }
    const int q_last = min(q0 + ATT_FWD_BQ, T) - 1;
    const int k_begin = (key_start[(size_t)b * T + q0] / ATT_BK) * ATT_BK;  // the block's smallest start
    for (int k0 = k_begin; k0 <= q_last; k0 += ATT_BK) {
        __syncthreads();  // the previous tile is consumed (and qs is loaded, first time)
        att_load_tile(&ks[0][0], ATT_DMAX + 1, k, b, k0, ATT_BK, T, Hkv, g, D);
        att_load_tile(&vs[0][0], ATT_DMAX + 1, v, b, k0, ATT_BK, T, Hkv, g, D);
        __syncthreads();
        const int kj = k0 + lane;
        const bool kvalid = kj < T && key_valid[(size_t)b * T + kj] != 0;
#pragma unroll
        for (int a = 0; a < ATT_FWD_QPW; ++a) {
            const int qi = warp * ATT_FWD_QPW + a;
            const int i = q0 + qi;
            if (i >= T) continue;  // uniform across the warp
            float s = ATT_NEG_INF;
            const bool attends = kvalid && kj <= i && kj >= st[a];
            if (attends) {
                float dot = 0.0f;
                for (int d = 0; d < D; ++d) dot += qs[qi][d] * ks[lane][d];
                s = scale * dot;
            }
            any[a] = any[a] || __any_sync(ATT_FULL, attends);
            bad[a] = bad[a] || __any_sync(ATT_FULL, attends && (s != s || s == ATT_INF));
            const float m_new = fmaxf(m[a], att_warp_max(s));
            if (m_new == ATT_NEG_INF) continue;  // no valid key yet: uniform across the warp
            const float p = s == ATT_NEG_INF ? 0.0f : expf(s - m_new);
            const float corr = m[a] == ATT_NEG_INF ? 0.0f : expf(m[a] - m_new);
            l[a] = l[a] * corr + att_warp_sum(p);
#pragma unroll
            for (int c = 0; c < ATT_DC; ++c) o[a][c] *= corr;
            for (int jj = 0; jj < ATT_BK; ++jj) {
                const float pj = __shfl_sync(ATT_FULL, p, jj);
#pragma unroll
                for (int c = 0; c < ATT_DC; ++c) {
                    const int d = lane + 32 * c;
                    if (d < D) o[a][c] += pj * vs[jj][d];
                }
            }
            m[a] = m_new;
        }
    }
#pragma unroll
    for (int a = 0; a < ATT_FWD_QPW; ++a) {
        const int i = q0 + warp * ATT_FWD_QPW + a;
        if (i >= T) continue;
        // No key: zeros and +inf. Keys but a bad score (or no positive weight): NaN.
        const bool nan_row = any[a] && (bad[a] || !(l[a] > 0.0f));
        const float inv = l[a] > 0.0f ? 1.0f / l[a] : 0.0f;
        float* orow = out + (((size_t)b * T + i) * Hq + h) * D;
#pragma unroll
        for (int c = 0; c < ATT_DC; ++c) {
            const int d = lane + 32 * c;
            if (d < D) orow[d] = nan_row ? ATT_NAN : o[a][c] * inv;
        }
        if (lane == 0)
            lse[((size_t)b * Hq + h) * T + i] = !any[a] ? ATT_INF : nan_row ? ATT_NAN : m[a] + logf(l[a]);
    }
}

// delta[b, h, i] = sum_d dout * out (the row term of dS = P (dP - delta)).
// One warp per (b, i, h) row. Grid: ceil(B*T*Hq / ATT_WARPS) blocks of ATT_THREADS.
extern "C" __global__ void attention_bwd_delta(const float* __restrict__ out, const float* __restrict__ dout,
                                               float* __restrict__ delta, int B, int T, int Hq, int D) {
    const size_t row = (size_t)blockIdx.x * ATT_WARPS + threadIdx.x / 32;  // index into [B, T, Hq]
    const int lane = threadIdx.x % 32;
    if (row >= (size_t)B * T * Hq) return;  // uniform across the warp
    float s = 0.0f;
    for (int d = lane; d < D; d += 32) s += dout[row * D + d] * out[row * D + d];
    s = att_warp_sum(s);
    if (lane == 0) {
        const int h = (int)(row % Hq);
        const size_t bt = row / Hq;
        const int i = (int)(bt % T), b = (int)(bt / T);
        delta[((size_t)b * Hq + h) * T + i] = s;
    }
}

// dQ = scale * dS K, dS = P (dP - delta), P = exp(S - lse), dP = dO V^T.
// Grid: (ceil(T / ATT_DQ_BQ), Hq, B) blocks of ATT_THREADS.
extern "C" __global__ void attention_bwd_dq(const float* __restrict__ q, const float* __restrict__ k,
                                            const float* __restrict__ v, const unsigned char* __restrict__ key_valid,
                                            const int* __restrict__ key_start, const float* __restrict__ lse,
                                            const float* __restrict__ delta, const float* __restrict__ dout,
                                            float* __restrict__ dq, int B, int T,
                                            int Hq, int Hkv, int D, float scale) {
    __shared__ float qs[ATT_DQ_BQ][ATT_DMAX];
    __shared__ float dos[ATT_DQ_BQ][ATT_DMAX];
    __shared__ float ks[ATT_BK][ATT_DMAX + 1];
    __shared__ float vs[ATT_BK][ATT_DMAX + 1];
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * ATT_DQ_BQ;
    const int g = h / (Hq / Hkv);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    att_load_tile(&qs[0][0], ATT_DMAX, q, b, q0, ATT_DQ_BQ, T, Hq, h, D);
    att_load_tile(&dos[0][0], ATT_DMAX, dout, b, q0, ATT_DQ_BQ, T, Hq, h, D);
    float L[ATT_DQ_QPW], Di[ATT_DQ_QPW], acc[ATT_DQ_QPW][ATT_DC];
    int st[ATT_DQ_QPW];
#pragma unroll
    for (int a = 0; a < ATT_DQ_QPW; ++a) {
        const int i = q0 + warp * ATT_DQ_QPW + a;
        st[a] = i < T ? key_start[(size_t)b * T + i] : T;
        L[a] = i < T ? lse[((size_t)b * Hq + h) * T + i] : ATT_INF;
        Di[a] = i < T ? delta[((size_t)b * Hq + h) * T + i] : 0.0f;
#pragma unroll
        for (int c = 0; c < ATT_DC; ++c) acc[a][c] = 0.0f;
    }
    const int q_last = min(q0 + ATT_DQ_BQ, T) - 1;
    const int k_begin = (key_start[(size_t)b * T + q0] / ATT_BK) * ATT_BK;
    for (int k0 = k_begin; k0 <= q_last; k0 += ATT_BK) {
        __syncthreads();
        att_load_tile(&ks[0][0], ATT_DMAX + 1, k, b, k0, ATT_BK, T, Hkv, g, D);
        att_load_tile(&vs[0][0], ATT_DMAX + 1, v, b, k0, ATT_BK, T, Hkv, g, D);
        __syncthreads();
        const int kj = k0 + lane;
        const bool kvalid = kj < T && key_valid[(size_t)b * T + kj] != 0;
#pragma unroll
        for (int a = 0; a < ATT_DQ_QPW; ++a) {
            const int qi = warp * ATT_DQ_QPW + a;
            const int i = q0 + qi;
            if (i >= T) continue;  // uniform across the warp
            float ds = 0.0f;
            if (kvalid && kj <= i && kj >= st[a] && L[a] != ATT_INF) {
                float dot = 0.0f, dp = 0.0f;
                for (int d = 0; d < D; ++d) {
                    dot += qs[qi][d] * ks[lane][d];
                    dp += dos[qi][d] * vs[lane][d];
                }
                const float p = expf(scale * dot - L[a]);
                ds = p * (dp - Di[a]);
            }
            for (int jj = 0; jj < ATT_BK; ++jj) {
                const float dsj = __shfl_sync(ATT_FULL, ds, jj);
#pragma unroll
                for (int c = 0; c < ATT_DC; ++c) {
                    const int d = lane + 32 * c;
                    if (d < D) acc[a][c] += dsj * ks[jj][d];
                }
            }
        }
    }
#pragma unroll
    for (int a = 0; a < ATT_DQ_QPW; ++a) {
        const int i = q0 + warp * ATT_DQ_QPW + a;
        if (i >= T) continue;
        float* row = dq + (((size_t)b * T + i) * Hq + h) * D;
#pragma unroll
        for (int c = 0; c < ATT_DC; ++c) {
            const int d = lane + 32 * c;
            if (d < D) row[d] = scale * acc[a][c];
        }
    }
}

// dV = sum over the group's query heads of P^T dO; dK = scale * sum of dS^T Q. One block per
// tile of ATT_DKV_BK keys of one kv head, looping over the group's query heads and over the
// query tiles at or after the keys (causal); lane i of a warp owns query i of the tile. Each
// key is owned by one warp, so nothing is written twice and no atomics are needed.
// Grid: (ceil(T / ATT_DKV_BK), Hkv, B) blocks of ATT_THREADS.
extern "C" __global__ void attention_bwd_dkv(const float* __restrict__ q, const float* __restrict__ k,
                                             const float* __restrict__ v, const unsigned char* __restrict__ key_valid,
                                             const int* __restrict__ key_start, const float* __restrict__ lse,
                                             const float* __restrict__ delta, const float* __restrict__ dout,
                                             float* __restrict__ dk,
                                             float* __restrict__ dv, int B, int T, int Hq, int Hkv, int D,
                                             float scale) {
    __shared__ float qs[ATT_BK][ATT_DMAX + 1];
    __shared__ float dos[ATT_BK][ATT_DMAX + 1];
    __shared__ float ks[ATT_DKV_BK][ATT_DMAX];
    __shared__ float vs[ATT_DKV_BK][ATT_DMAX];
    __shared__ float lse_s[ATT_BK];
    __shared__ float delta_s[ATT_BK];
    __shared__ int start_s[ATT_BK];
    const int b = blockIdx.z, g = blockIdx.y, k0 = blockIdx.x * ATT_DKV_BK;
    const int group = Hq / Hkv;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    att_load_tile(&ks[0][0], ATT_DMAX, k, b, k0, ATT_DKV_BK, T, Hkv, g, D);
    att_load_tile(&vs[0][0], ATT_DMAX, v, b, k0, ATT_DKV_BK, T, Hkv, g, D);
    float dk_acc[ATT_DKV_KPW][ATT_DC], dv_acc[ATT_DKV_KPW][ATT_DC];
    bool jvalid[ATT_DKV_KPW];
#pragma unroll
    for (int a = 0; a < ATT_DKV_KPW; ++a) {
        const int j = k0 + warp * ATT_DKV_KPW + a;
        jvalid[a] = j < T && key_valid[(size_t)b * T + j] != 0;
#pragma unroll
        for (int c = 0; c < ATT_DC; ++c) {
            dk_acc[a][c] = 0.0f;
            dv_acc[a][c] = 0.0f;
        }
    }
    const int first_q_tile = (k0 / ATT_BK) * ATT_BK;
    for (int hh = 0; hh < group; ++hh) {
        const int h = g * group + hh;
        for (int q0 = first_q_tile; q0 < T; q0 += ATT_BK) {
            // Starts never decrease along a row: once a tile's first query starts after this
            // block's last key, no later query attends any of its keys (uniform per block).
            if (key_start[(size_t)b * T + q0] > min(k0 + ATT_DKV_BK, T) - 1) break;
            __syncthreads();  // the previous tile is consumed (and ks/vs are loaded, first time)
            att_load_tile(&qs[0][0], ATT_DMAX + 1, q, b, q0, ATT_BK, T, Hq, h, D);
            att_load_tile(&dos[0][0], ATT_DMAX + 1, dout, b, q0, ATT_BK, T, Hq, h, D);
            if (threadIdx.x < ATT_BK) {
                const int i = q0 + threadIdx.x;
                lse_s[threadIdx.x] = i < T ? lse[((size_t)b * Hq + h) * T + i] : ATT_INF;
                delta_s[threadIdx.x] = i < T ? delta[((size_t)b * Hq + h) * T + i] : 0.0f;
                start_s[threadIdx.x] = i < T ? key_start[(size_t)b * T + i] : T;
            }
            __syncthreads();
            const int i = q0 + lane;
            const float L = lse_s[lane], Di = delta_s[lane];
            const int st = start_s[lane];
#pragma unroll
            for (int a = 0; a < ATT_DKV_KPW; ++a) {
                const int kl = warp * ATT_DKV_KPW + a;
                const int j = k0 + kl;
                if (!jvalid[a]) continue;  // uniform across the warp (j depends on warp and a only)
                float p = 0.0f, ds = 0.0f;
                if (i < T && j <= i && j >= st && L != ATT_INF) {
                    float dot = 0.0f, dp = 0.0f;
                    for (int d = 0; d < D; ++d) {
                        dot += qs[lane][d] * ks[kl][d];
                        dp += dos[lane][d] * vs[kl][d];
                    }
                    p = expf(scale * dot - L);
                    ds = p * (dp - Di);
                }
                for (int ii = 0; ii < ATT_BK; ++ii) {
                    const float pi = __shfl_sync(ATT_FULL, p, ii);
                    const float dsi = __shfl_sync(ATT_FULL, ds, ii);
#pragma unroll
                    for (int c = 0; c < ATT_DC; ++c) {
                        const int d = lane + 32 * c;
                        if (d < D) {
                            dv_acc[a][c] += pi * dos[ii][d];
                            dk_acc[a][c] += dsi * qs[ii][d];
                        }
                    }
                }
            }
        }
    }
#pragma unroll
    for (int a = 0; a < ATT_DKV_KPW; ++a) {
        const int j = k0 + warp * ATT_DKV_KPW + a;
        if (j >= T) continue;
        const size_t base = (((size_t)b * T + j) * Hkv + g) * D;
#pragma unroll
        for (int c = 0; c < ATT_DC; ++c) {
            const int d = lane + 32 * c;
            if (d < D) {
                dk[base + d] = scale * dk_acc[a][c];
                dv[base + d] = dv_acc[a][c];
            }
        }
    }
}

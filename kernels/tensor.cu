// Generic fp32 tensor ops: unary maps, broadcasting binary arithmetic, accumulation,
// reductions (over one axis, and summing a broadcast gradient back to its operand's shape),
// softmax over the last axis, layout copies (strided 2-D blocks, permutations) and fill.
// CPU twin: crates/echo-kernels/src/cpu/tensor_ref.rs. Launch wrappers: cuda/tensor_ops.rs.
//
// A shape is passed as six `long long` scalars (innermost dimension last; unused leading
// dimensions have size 1 and stride 0), and each operand's element strides the same way. The
// wrappers drop size-1 dimensions and merge neighbours every operand walks as one, so most
// launches use one to three of the six. Sums accumulate in double, reductions combine in a
// fixed order without atomics: results are the same run to run.

// Tile sizes come from the compiler options (echo_kernels::cuda::tiles, -D flags).
#ifndef TS_THREADS
#error "compile with the -D options of echo_kernels::cuda::tiles::defines()"
#endif
// TS_THREADS: every kernel here (one block per row for the row kernels); TS_COL_TILE adjacent
// columns (one warp wide) and TS_COL_GROUPS row groups per block of tensor_reduce_cols.
#define TS_NEG_INF __uint_as_float(0xff800000u)
#define TS_NAN __uint_as_float(0x7fc00000u)

// Six kernel parameters v0..v5 holding one shape or stride vector, and the array of them.
// Every loop over such an array is unrolled, so it lives in registers.
#define TS_VEC6(v) long long v##0, long long v##1, long long v##2, long long v##3, long long v##4, long long v##5
#define TS_ARR6(v) {v##0, v##1, v##2, v##3, v##4, v##5}

// Peels the coordinate of a dimension of size `dim` off the linear index `rem` (rem >= 0,
// dim >= 1): returns rem % dim and leaves rem / dim. 64-bit division is a long software
// routine on the GPU, and most indices are below the size or fit in 32 bits: try those first.
__device__ __forceinline__ long long ts_peel(long long& rem, long long dim) {
    if (rem < dim) {
        const long long c = rem;
        rem = 0;
        return c;
    }
    long long q;
    if ((((unsigned long long)rem | (unsigned long long)dim) >> 32) == 0ull)
        q = (long long)((unsigned int)rem / (unsigned int)dim);
    else
        q = rem / dim;
    const long long c = rem - q * dim;
    rem = q;
    return c;
}

// Element offset of row-major index i over `dims` in an operand with element strides `st`.
__device__ __forceinline__ long long ts_offset(long long i, const long long* dims, const long long* st) {
    long long off = 0;
#pragma unroll
    for (int d = TS_MAX_DIMS - 1; d > 0; --d) {
        if (i == 0) break;  // every coordinate left (the outer ones) is 0
        off += ts_peel(i, dims[d]) * st[d];
    }
    return off + i * st[0];
}

// y[i] = f(x[i]); op: 0 neg, 1 exp, 2 ln, 3 sqr, 4 sigmoid, 5 silu, 6 x * s, 7 x + s
// (UnaryOp in cuda/tensor_ops.rs). expf / logf are the accurate ones (no fast math), and
// sigmoid is spelled as the twin's 1 / (1 + exp(-x)).
extern "C" __global__ void tensor_unary(const float* __restrict__ x, float* __restrict__ y, long long n, int op,
                                        float s) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = x[i];
    float r;
    switch (op) {
        case 0: r = -v; break;
        case 1: r = expf(v); break;
        case 2: r = logf(v); break;
        case 3: r = v * v; break;
        case 4: r = 1.0f / (1.0f + expf(-v)); break;
        case 5: r = v * (1.0f / (1.0f + expf(-v))); break;
        case 6: r = v * s; break;
        case 7: r = v + s; break;
        default: r = TS_NAN; break;  // not a code the wrapper sends: make it visible
    }
    y[i] = r;
}

// out[i] = a[ia] op b[ib] (op: 0 add, 1 sub, 2 mul, 3 div), i row-major over `dim` (n
// elements), ia and ib through the operands' element strides `sa`, `sb` (0 where broadcast).
extern "C" __global__ void tensor_binary(const float* __restrict__ a, const float* __restrict__ b,
                                         float* __restrict__ out, long long n, int op, TS_VEC6(dim), TS_VEC6(sa),
                                         TS_VEC6(sb)) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const long long dims[TS_MAX_DIMS] = TS_ARR6(dim), sta[TS_MAX_DIMS] = TS_ARR6(sa), stb[TS_MAX_DIMS] = TS_ARR6(sb);
    // One peel for both operands (ts_offset twice would divide twice).
    long long rem = i, ia = 0, ib = 0;
#pragma unroll
    for (int d = TS_MAX_DIMS - 1; d > 0; --d) {
        if (rem == 0) break;
        const long long c = ts_peel(rem, dims[d]);
        ia += c * sta[d];
        ib += c * stb[d];
    }
    ia += rem * sta[0];
    ib += rem * stb[0];
    const float x = a[ia], z = b[ib];
    float r;
    switch (op) {
        case 0: r = x + z; break;
        case 1: r = x - z; break;
        case 2: r = x * z; break;
        case 3: r = x / z; break;
        default: r = TS_NAN; break;
    }
    out[i] = r;
}

// y[i] += x[i] (gradient accumulation).
extern "C" __global__ void tensor_add_assign(float* __restrict__ y, const float* __restrict__ x, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] += x[i];
}

// ---------------------------------------------------------------- reductions
// op 0: sum, accumulated in double and rounded once; op 1: max, ignoring NaN as the twin's
// f32::max (fmax does the same), -inf over an empty axis. Max runs in double too: converting
// a float to double and back is exact, so one accumulator type serves both.

__device__ __forceinline__ double ts_combine(double acc, double v, int op) { return op == 1 ? fmax(acc, v) : acc + v; }

__device__ __forceinline__ double ts_init(int op) { return op == 1 ? (double)TS_NEG_INF : 0.0; }

// Combines one value per thread over the block (TS_THREADS) in a fixed tree: a butterfly
// within each warp (a + b == b + a exactly, so every lane ends with the same bits), then
// warp 0 over the warps' results. Every thread gets the result.
__device__ double ts_block_reduce(double v, int op) {
    __shared__ double warp_part[TS_THREADS / 32];
    __shared__ double total;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = ts_combine(v, __shfl_xor_sync(0xffffffffu, v, o), op);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) warp_part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        double t = lane < TS_THREADS / 32 ? warp_part[lane] : ts_init(op);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) t = ts_combine(t, __shfl_xor_sync(0xffffffffu, t, o), op);
        if (lane == 0) total = t;
    }
    __syncthreads();
    const double r = total;
    __syncthreads();  // warp_part / total may be reused by a following call
    return r;
}

// y[r] = reduce x[r, 0..n) over contiguous rows. One block of TS_THREADS per row (for rows
// longer than a few dozen; the wrapper sends short ones to tensor_reduce_strided).
extern "C" __global__ void tensor_reduce_rows(const float* __restrict__ x, float* __restrict__ y, long long rows,
                                              long long n, int op) {
    const long long r = blockIdx.x;
    if (r >= rows) return;  // the whole block: no barrier is left waiting
    const float* xr = x + r * n;
    double acc = ts_init(op);
    for (long long k = threadIdx.x; k < n; k += TS_THREADS) acc = ts_combine(acc, (double)xr[k], op);
    acc = ts_block_reduce(acc, op);
    if (threadIdx.x == 0) y[r] = (float)acc;
}

// y[o, i] = reduce x[o, 0..n, i] (x is [outer, n, inner], inner > 1). A block takes
// TS_COL_TILE adjacent columns of one o, so each warp reads one contiguous row segment, and
// splits the n rows among TS_COL_GROUPS groups (group g takes rows g, g + GROUPS, ...); the
// groups' partials are then combined in group order. Blocks are numbered o * tiles + tile
// (a 1-D grid: outer may exceed 65535).
extern "C" __global__ void tensor_reduce_cols(const float* __restrict__ x, float* __restrict__ y, long long outer,
                                              long long n, long long inner, int op) {
    __shared__ double part[TS_COL_GROUPS][TS_COL_TILE];
    const long long tiles = (inner + TS_COL_TILE - 1) / TS_COL_TILE;
    const long long o = (long long)blockIdx.x / tiles;
    const int lane = threadIdx.x % TS_COL_TILE, g = threadIdx.x / TS_COL_TILE;
    const long long i = ((long long)blockIdx.x % tiles) * TS_COL_TILE + lane;
    double acc = ts_init(op);
    if (o < outer && i < inner) {
        const float* xo = x + o * n * inner + i;
        for (long long k = g; k < n; k += TS_COL_GROUPS) acc = ts_combine(acc, (double)xo[k * inner], op);
    }
    part[g][lane] = acc;
    __syncthreads();
    if (g == 0 && o < outer && i < inner) {
        double t = part[0][lane];
#pragma unroll
        for (int j = 1; j < TS_COL_GROUPS; ++j) t = ts_combine(t, part[j][lane], op);
        y[o * inner + i] = (float)t;
    }
}

// y[j] = reduce of x over the reduced index space, for any pattern of kept and reduced
// dimensions (sum_to's general case, and short axes). `kd` are y's dimensions (the kept
// ones, row-major in y) with their element strides `ks` in x; `rd` / `rs` the reduced
// dimensions and their strides in x. One thread per output element, reduced indices walked
// in row-major order by an odometer (no division in the loop).
extern "C" __global__ void tensor_reduce_strided(const float* __restrict__ x, float* __restrict__ y, long long n_out,
                                                 long long n_red, int op, TS_VEC6(kd), TS_VEC6(ks), TS_VEC6(rd),
                                                 TS_VEC6(rs)) {
    const long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n_out) return;
    const long long kdims[TS_MAX_DIMS] = TS_ARR6(kd), kst[TS_MAX_DIMS] = TS_ARR6(ks);
    const long long rdims[TS_MAX_DIMS] = TS_ARR6(rd), rst[TS_MAX_DIMS] = TS_ARR6(rs);
    long long off = ts_offset(j, kdims, kst);
    long long idx[TS_MAX_DIMS] = {0, 0, 0, 0, 0, 0};
    double acc = ts_init(op);
    for (long long r = 0; r < n_red; ++r) {
        acc = ts_combine(acc, (double)x[off], op);
#pragma unroll
        for (int d = TS_MAX_DIMS - 1; d >= 0; --d) {
            if (++idx[d] < rdims[d]) {
                off += rst[d];
                break;
            }
            off -= rst[d] * (rdims[d] - 1);  // back to the start of this dimension, carry on
            idx[d] = 0;
        }
    }
    y[j] = (float)acc;
}

// y[r] = softmax(x[r]) over rows of `cols`, as the twin: m = max (NaN ignored), e = exp(x - m),
// y = e / sum(e) with the sum in double. A row of -inf or with +inf gives NaN, as on the CPU.
// One block of TS_THREADS per row; exp is recomputed in the last pass instead of stored.
extern "C" __global__ void tensor_softmax_rows(const float* __restrict__ x, float* __restrict__ y, long long rows,
                                               long long cols) {
    const long long r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    double m = ts_init(1);
    for (long long k = threadIdx.x; k < cols; k += TS_THREADS) m = fmax(m, (double)xr[k]);
    const float mf = (float)ts_block_reduce(m, 1);
    double s = 0.0;
    for (long long k = threadIdx.x; k < cols; k += TS_THREADS) s += (double)expf(xr[k] - mf);
    const float sf = (float)ts_block_reduce(s, 0);
    for (long long k = threadIdx.x; k < cols; k += TS_THREADS) yr[k] = expf(xr[k] - mf) / sf;
}

// ---------------------------------------------------------------- layout

// dst[dst_off + r dst_pitch + c] = src[src_off + r src_pitch + c], r < rows, c < cols: a block
// of rows (narrow and concat along any dimension are one such copy per part). One thread per
// element over the flattened rows x cols.
extern "C" __global__ void tensor_copy_2d(const float* __restrict__ src, long long src_off, long long src_pitch,
                                          float* __restrict__ dst, long long dst_off, long long dst_pitch,
                                          long long rows, long long cols) {
    long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows * cols) return;
    const long long c = ts_peel(r, cols);
    dst[dst_off + r * dst_pitch + c] = src[src_off + r * src_pitch + c];
}

// y[i] = x[offset of i]: i row-major over `dim` (n elements), offsets through x's strides `st`
// (a permutation's strides, or 0 to broadcast).
extern "C" __global__ void tensor_gather(const float* __restrict__ x, float* __restrict__ y, long long n,
                                         TS_VEC6(dim), TS_VEC6(st)) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const long long dims[TS_MAX_DIMS] = TS_ARR6(dim), strides[TS_MAX_DIMS] = TS_ARR6(st);
    y[i] = x[ts_offset(i, dims, strides)];
}

extern "C" __global__ void tensor_fill(float* __restrict__ y, long long n, float value) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] = value;
}

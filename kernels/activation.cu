// SwiGLU, silu(gate) * up, forward and backward. CPU twin: crates/echo-kernels/src/cpu/activation.rs.
// One thread per element.

__device__ __forceinline__ float act_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

extern "C" __global__ void swiglu_fwd(const float* __restrict__ gate, const float* __restrict__ up,
                                      float* __restrict__ out, long long n) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    const float g = gate[e];
    out[e] = g * act_sigmoid(g) * up[e];
}

// dgate = dout * up * silu'(gate), silu'(x) = s (1 + x (1 - s)); dup = dout * silu(gate).
extern "C" __global__ void swiglu_bwd(const float* __restrict__ dout, const float* __restrict__ gate,
                                      const float* __restrict__ up, float* __restrict__ dgate,
                                      float* __restrict__ dup, long long n) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    const float g = gate[e], d = dout[e];
    const float s = act_sigmoid(g);
    dgate[e] = d * up[e] * (s * (1.0f + g * (1.0f - s)));
    dup[e] = d * (g * s);
}

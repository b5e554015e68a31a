// fp32 <-> bf16 (stored as raw unsigned short, so no cuda_bf16.h is needed under NVRTC).
// The rounding is the `half` crate's (round to nearest even, NaN kept quiet), so a bf16
// made on the GPU is bit-identical to one made on the CPU. CPU twin: cpu/cast.rs.

extern "C" __global__ void f32_to_bf16(const float* __restrict__ src, unsigned short* __restrict__ dst,
                                       long long n) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    const unsigned int x = __float_as_uint(src[e]);
    unsigned short h;
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        h = (unsigned short)((x >> 16) | 0x0040u);
    } else {
        const unsigned int round_bit = 0x00008000u;
        h = (unsigned short)(x >> 16);
        if ((x & round_bit) != 0u && (x & (3u * round_bit - 1u)) != 0u) h = (unsigned short)(h + 1u);
    }
    dst[e] = h;
}

extern "C" __global__ void bf16_to_f32(const unsigned short* __restrict__ src, float* __restrict__ dst,
                                       long long n) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    dst[e] = __uint_as_float(((unsigned int)src[e]) << 16);
}

// Rotary position embedding, HF "rotate half" layout: in a head of size 2*half, dims i and
// i + half rotate together by pos * inv_freq[i]. CPU twin: crates/echo-kernels/src/cpu/rope.rs
// (rope_apply). The cos/sin table ([max_pos, half]) is the twin's RopeTable, uploaded once.
// inverse != 0 rotates by the negative angle: that is the backward pass.

// x is [tokens, heads, 2*half], rotated in place; token t sits at position pos[t].
// One thread per (token, head, i < half).
extern "C" __global__ void rope_apply(float* __restrict__ x, const int* __restrict__ pos,
                                      const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                                      int tokens, int heads, int half, int inverse) {
    const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t total = (size_t)tokens * heads * half;
    if (e >= total) return;
    const int i = (int)(e % half);
    const size_t th = e / half;  // token * heads + head
    const int t = (int)(th / heads);
    const size_t p = (size_t)pos[t];
    const float c = cos_t[p * half + i];
    const float s = inverse ? -sin_t[p * half + i] : sin_t[p * half + i];
    float* head = x + th * (size_t)(2 * half);
    const float a = head[i], b = head[i + half];
    head[i] = a * c - b * s;
    head[i + half] = b * c + a * s;
}

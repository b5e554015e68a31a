// Fused AdamW step (decoupled weight decay, as torch.optim.AdamW and the trainer's
// crates/echo-trainer/src/optim.rs). CPU twin: crates/echo-kernels/src/cpu/optim.rs.
// Parameters, gradients and moments are fp32; the bias corrections bc1 = 1 - beta1^t and
// bc2 = 1 - beta2^t come from the host in double, and the update is formed in double as
// the trainer does. One thread per element.
extern "C" __global__ void adamw_step(float* __restrict__ w, const float* __restrict__ grad, float* __restrict__ m,
                                      float* __restrict__ v, long long n, float grad_scale, float lr, float beta1,
                                      float beta2, float eps, float weight_decay, double bc1, double bc2) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float gi = grad[i] * grad_scale;
    const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const double m_hat = (double)mi / bc1;
    const double v_hat = (double)vi / bc2;
    float wi = w[i];
    wi -= lr * weight_decay * wi;
    wi -= (float)((double)lr * m_hat / (sqrt(v_hat) + (double)eps));
    w[i] = wi;
}

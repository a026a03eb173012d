// Optimizer family: one fused pass per parameter tensor for SGD (momentum, dampening, nesterov,
// weight decay) and Adam / AdamW (amsgrad), with the f32 scalars and fma order of
// src/ops/optimizer/cpu_kernel.rs (which follows PyTorch's foreach kernels).

// SGD modes (mirror: SgdParams::mode in cuda_kernel.rs).
enum { SGD_PLAIN, SGD_FIRST_STEP, SGD_MOMENTUM };

// One SGD launch (mirror: SgdParams, 32 bytes).
struct SgdParams {
    u64 n;
    u32 mode;
    u32 nesterov;
    float weight_decay;
    float momentum;
    float grad_scale;  // 1 − dampening
    float neg_lr;
};
static_assert(sizeof(SgdParams) == 32, "SgdParams must match its #[repr(C)] mirror in src/ops/optimizer/cuda_kernel.rs");

// One Adam launch (mirror: AdamParams, 48 bytes).
struct AdamParams {
    u64 n;
    float grad_weight_decay;
    float param_scale;
    float one_minus_beta1;
    float beta2;
    float one_minus_beta2;
    float bias_correction2_sqrt;
    float eps;
    float neg_step_size;
    u32 amsgrad;
    u32 pad;
};
static_assert(sizeof(AdamParams) == 48, "AdamParams must match its #[repr(C)] mirror in src/ops/optimizer/cuda_kernel.rs");

// p ← p − lr·d with d = buf (or g + momentum·buf with nesterov), buf ← momentum·buf + (1−damp)·g.
extern "C" __global__ void sgd_update(SgdParams s, const float* __restrict__ param,
                                      const float* __restrict__ grad,
                                      const float* __restrict__ buf_in,
                                      float* __restrict__ param_out,
                                      float* __restrict__ buf_out) {
    FOR_EACH_INDEX(i, s.n) {
        const float p = param[i];
        float g = grad[i];
        if (s.weight_decay != 0.0f) g = fmaf(s.weight_decay, p, g);
        if (s.mode == SGD_PLAIN) {
            param_out[i] = fmaf(s.neg_lr, g, p);
            continue;
        }
        const float buf = s.mode == SGD_FIRST_STEP ? g : fmaf(s.grad_scale, g, buf_in[i] * s.momentum);
        const float d = s.nesterov ? fmaf(s.momentum, buf, g) : buf;
        param_out[i] = fmaf(s.neg_lr, d, p);
        buf_out[i] = buf;
    }
}

// torch.lerp's two-sided formula (exact at both ends).
__device__ __forceinline__ float lerp(float start, float end, float weight) {
    return fabsf(weight) < 0.5f ? fmaf(weight, end - start, start)
                                : fmaf(start - end, 1.0f - weight, end);
}

// m ← lerp(m, g, 1−β1), v ← β2·v + (1−β2)·g², p ← p·scale − step·m / (√v̂ / √bc2 + eps).
extern "C" __global__ void adam_update(AdamParams s, const float* __restrict__ param,
                                       const float* __restrict__ grad,
                                       const float* __restrict__ exp_avg,
                                       const float* __restrict__ exp_avg_sq,
                                       const float* __restrict__ max_in,
                                       float* __restrict__ param_out,
                                       float* __restrict__ exp_avg_out,
                                       float* __restrict__ exp_avg_sq_out,
                                       float* __restrict__ max_out) {
    FOR_EACH_INDEX(i, s.n) {
        const float p = param[i];
        float g = grad[i];
        if (s.grad_weight_decay != 0.0f) g = fmaf(s.grad_weight_decay, p, g);
        const float m = lerp(exp_avg[i], g, s.one_minus_beta1);
        const float v = fmaf(s.one_minus_beta2 * g, g, exp_avg_sq[i] * s.beta2);
        float v_hat = v;
        if (s.amsgrad) {
            const float old = max_in[i];
            v_hat = (v != v || v > old) ? v : old;  // torch.maximum: NaN wins
            max_out[i] = v_hat;
        }
        const float denom = sqrtf(v_hat) / s.bias_correction2_sqrt + s.eps;
        param_out[i] = p * s.param_scale + s.neg_step_size * m / denom;
        exp_avg_out[i] = m;
        exp_avg_sq_out[i] = v;
    }
}

// Softmax family: softmax / log-softmax along the middle axis of an [outer, size, inner] view,
// and their backward. CUDA twin of src/ops/softmax/cpu_kernel.rs:
//   softmax:      y = e^(x − max) / Σ e^(x − max)       dx = y · (g − Σ g·y)
//   log-softmax:  y = x − max − ln Σ e^(x − max)        dx = g − e^y · Σ g

// One launch (mirror: SoftmaxParams, 16 bytes); `log` selects log-softmax.
struct SoftmaxParams {
    u32 outer;
    u32 size;
    u32 inner;
    u32 log;
};
static_assert(sizeof(SoftmaxParams) == 16, "SoftmaxParams must match its #[repr(C)] mirror in src/ops/softmax/cuda_kernel.rs");

// One thread per column (o, i): max, then Σ e^(x − max), then the outputs, walking the axis.
extern "C" __global__ void softmax_forward(SoftmaxParams p, const float* __restrict__ x,
                                           float* __restrict__ y) {
    FOR_EACH_INDEX(oi, (u64)p.outer * p.inner) {
        const u64 o = oi / p.inner, i = oi % p.inner;
        const u64 base = o * p.size * p.inner + i;
        float max = -__int_as_float(0x7f800000);
        for (u32 s = 0; s < p.size; ++s) max = fmaxf(max, x[base + (u64)s * p.inner]);
        float sum = 0.0f;
        for (u32 s = 0; s < p.size; ++s) sum += expf(x[base + (u64)s * p.inner] - max);
        const float log_sum = logf(sum);
        for (u32 s = 0; s < p.size; ++s) {
            const u64 at = base + (u64)s * p.inner;
            y[at] = p.log ? x[at] - max - log_sum : expf(x[at] - max) / sum;
        }
    }
}

// One thread per column: the column sum (Σ g·y, or Σ g for log-softmax), then every dx.
extern "C" __global__ void softmax_backward(SoftmaxParams p, const float* __restrict__ y,
                                            const float* __restrict__ grad_out,
                                            float* __restrict__ grad_x) {
    FOR_EACH_INDEX(oi, (u64)p.outer * p.inner) {
        const u64 o = oi / p.inner, i = oi % p.inner;
        const u64 base = o * p.size * p.inner + i;
        float sum = 0.0f;
        for (u32 s = 0; s < p.size; ++s) {
            const u64 at = base + (u64)s * p.inner;
            sum += p.log ? grad_out[at] : grad_out[at] * y[at];
        }
        for (u32 s = 0; s < p.size; ++s) {
            const u64 at = base + (u64)s * p.inner;
            grad_x[at] = p.log ? grad_out[at] - expf(y[at]) * sum : y[at] * (grad_out[at] - sum);
        }
    }
}

// Activation family: relu, leaky relu, sigmoid, tanh, hardswish, hardsigmoid, gelu (erf and tanh
// forms) and PReLU, forward and backward side by side. CUDA twin of src/ops/activation/cpu_kernel.rs (PyTorch's choices
// at the kinks).

// Op codes (mirror: activation_code in cuda_kernel.rs).
enum { A_RELU, A_LEAKY_RELU, A_SIGMOID, A_TANH, A_HARDSWISH, A_HARDSIGMOID, A_GELU, A_GELU_TANH };

// One activation launch (mirror: ActivationParams, 16 bytes).
struct ActivationParams {
    u64 n;
    u32 op;
    float negative_slope;
};
static_assert(sizeof(ActivationParams) == 16, "ActivationParams must match its #[repr(C)] mirror in src/ops/activation/cuda_kernel.rs");

// A [outer, channels, inner] view for PReLU (mirror: ChannelParams, 16 bytes).
struct ChannelParams {
    u32 outer;
    u32 channels;
    u32 inner;
    u32 pad;
};
static_assert(sizeof(ChannelParams) == 16, "ChannelParams must match its #[repr(C)] mirror in src/ops/activation/cuda_kernel.rs");

__device__ __forceinline__ float relu6(float x) { return fminf(fmaxf(x, 0.0f), 6.0f); }

// gelu(x) = x·c(x); returns c(x) and stores c'(x) in *slope, so gelu'(x) = c + x·c'.
//   erf form:  c = (1 + erf(x/√2))/2 = erfc(−x/√2)/2 = Φ(x),  c' = φ(x) = e^(−x²/2)/√(2π)
//              (erfc: no cancellation in the negative tail)
//   tanh form: c = (1 + tanh u)/2 = 1/(1 + e^(−2u)), u = √(2/π)(x + 0.044715x³),
//              c' = (1 − tanh²u)·u'/2 = 2c(1 − c)·u'  (the logistic form: no cancellation)
__device__ __forceinline__ float gelu_cdf(u32 op, float x, float* slope) {
    if (op == A_GELU_TANH) {
        const float k = 0.7978845608028654f, cubic = 0.044715f;
        const float u = k * (x + cubic * x * x * x), a = expf(-2.0f * fabsf(u));
        const float large = 1.0f / (1.0f + a), small = a * large;  // c and 1 − c, in some order
        *slope = 2.0f * large * small * k * (1.0f + 3.0f * cubic * x * x);
        return u >= 0.0f ? large : small;
    }
    *slope = expf(-0.5f * x * x) * 0.3989422804014327f;
    return 0.5f * erfcf(-x * 0.7071067811865476f);
}

// y = op(x), one thread per element.
extern "C" __global__ void activation_forward(ActivationParams p, const float* __restrict__ x,
                                              float* __restrict__ y) {
    FOR_EACH_INDEX(i, p.n) {
        const float v = x[i];
        float r;
        switch (p.op) {
            case A_RELU: r = fmaxf(v, 0.0f); break;
            case A_LEAKY_RELU: r = v > 0.0f ? v : v * p.negative_slope; break;
            case A_SIGMOID: r = 1.0f / (1.0f + expf(-v)); break;
            case A_TANH: r = tanhf(v); break;
            case A_HARDSWISH: r = v * relu6(v + 3.0f) / 6.0f; break;
            case A_GELU:
            case A_GELU_TANH: {
                float slope;
                r = v * gelu_cdf(p.op, v, &slope);
                break;
            }
            default: r = relu6(v + 3.0f) / 6.0f; break;
        }
        y[i] = r;
    }
}

// grad_x = grad_out · op'(saved); `saved` is y for sigmoid/tanh, else x.
extern "C" __global__ void activation_backward(ActivationParams p, const float* __restrict__ saved,
                                               const float* __restrict__ grad_out,
                                               float* __restrict__ grad_x) {
    FOR_EACH_INDEX(i, p.n) {
        const float s = saved[i], g = grad_out[i];
        float r;
        switch (p.op) {
            case A_RELU: r = s > 0.0f ? g : 0.0f; break;
            case A_LEAKY_RELU: r = s > 0.0f ? g : g * p.negative_slope; break;
            case A_SIGMOID: r = g * s * (1.0f - s); break;
            case A_TANH: r = g * (1.0f - s * s); break;
            case A_HARDSWISH: r = s <= -3.0f ? 0.0f : (s < 3.0f ? g * (s / 3.0f + 0.5f) : g); break;
            case A_GELU:
            case A_GELU_TANH: {
                float slope;
                const float cdf = gelu_cdf(p.op, s, &slope);
                r = g * (cdf + s * slope);
                break;
            }
            default: r = (s > -3.0f && s < 3.0f) ? g / 6.0f : 0.0f; break;
        }
        grad_x[i] = r;
    }
}

// PReLU: y = x for x > 0, else w[channel] · x.
extern "C" __global__ void prelu_forward(ChannelParams p, const float* __restrict__ x,
                                         const float* __restrict__ w, float* __restrict__ y) {
    FOR_EACH_INDEX(i, (u64)p.outer * p.channels * p.inner) {
        const float v = x[i];
        y[i] = v > 0.0f ? v : w[(i / p.inner) % p.channels] * v;
    }
}

// PReLU's input gradient: grad_out where x > 0, else w[channel] · grad_out.
extern "C" __global__ void prelu_backward_input(ChannelParams p, const float* __restrict__ x,
                                                const float* __restrict__ w,
                                                const float* __restrict__ grad_out,
                                                float* __restrict__ grad_x) {
    FOR_EACH_INDEX(i, (u64)p.outer * p.channels * p.inner) {
        const float g = grad_out[i];
        grad_x[i] = x[i] > 0.0f ? g : w[(i / p.inner) % p.channels] * g;
    }
}

// PReLU's weight gradient: one block per channel sums x·grad_out over x ≤ 0 (shared-memory tree,
// fixed order, so the result is deterministic).
extern "C" __global__ void prelu_backward_weight(ChannelParams p, const float* __restrict__ x,
                                                 const float* __restrict__ grad_out,
                                                 float* __restrict__ grad_w) {
    __shared__ float partial[256];
    const u32 c = blockIdx.x;
    float acc = 0.0f;
    const u64 per_channel = (u64)p.outer * p.inner;
    for (u64 k = threadIdx.x; k < per_channel; k += blockDim.x) {
        const u64 o = k / p.inner, i = k % p.inner;
        const u64 at = (o * p.channels + c) * p.inner + i;
        const float v = x[at];
        if (!(v > 0.0f)) acc += v * grad_out[at];
    }
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (u32 stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) grad_w[c] = partial[0];
}

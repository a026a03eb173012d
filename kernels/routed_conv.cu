// Routed-conv family (PatchConvMoE's sparse expert convolution), CUDA twin of
// src/ops/routed_conv/cpu_kernel.rs. Each token t is convolved (VALID, stride 1, dilation,
// groups) only by its k experts e = indices[t, j]:
//   s[t, j] = b_e + conv_e(tokens[t])          y[t] = Σ_j w[t, j] · s[t, j]   (slot order)
//   ∂tokens[t] = Σ_j w[t, j] · conv_eᵀ(∂y[t])  ∂w[t, j] = ⟨∂y[t], s[t, j]⟩
//   ∂W_e = Σ_{(t,j): e} w[t, j] · ∂y[t] ⋆ tokens[t]      ∂b_e = Σ_{(t,j): e} w[t, j] · Σ_p ∂y[t]
// Every kernel gathers (one thread or block per output element, fixed order): deterministic
// without atomics. Direct loops, no tiling yet (the dense conv's implicit GEMM is the fast path).

// Threads per block of the dot-product kernel (mirror: ROUTED_BLOCK in cuda_kernel.rs).
#define ROUTED_BLOCK 256

// One launch (mirror: RoutedParams, 72 bytes). `per_token` = Cout·oh·ow.
struct RoutedParams {
    u32 tokens, slots, experts;
    u32 in_channels, token_h, token_w;
    u32 out_channels, kernel_h, kernel_w;
    u32 out_h, out_w;
    u32 dilation_h, dilation_w;
    u32 groups;
    u32 has_bias;
    u32 pad;
    u64 per_token;
};
static_assert(sizeof(RoutedParams) == 72, "RoutedParams must match its #[repr(C)] mirror in src/ops/routed_conv/cuda_kernel.rs");

// One thread per output element: the routing-weighted sum of its token's slot outputs.
extern "C" __global__ void routed_conv_combine(RoutedParams p, const float* __restrict__ slot_outputs,
                                               const float* __restrict__ routing_weights,
                                               float* __restrict__ out) {
    FOR_EACH_INDEX(idx, (u64)p.tokens * p.per_token) {
        const u64 t = idx / p.per_token, q = idx % p.per_token;
        float acc = 0.0f;
        for (u32 j = 0; j < p.slots; ++j)
            acc += routing_weights[t * p.slots + j] * slot_outputs[(t * p.slots + j) * p.per_token + q];
        out[idx] = acc;
    }
}

// One block per (token, slot): the f64 dot product of the token's output gradient and the slot's
// output (shared-memory tree in fixed order, deterministic).
extern "C" __global__ void routed_conv_routing_weights_backward(RoutedParams p,
                                                                const float* __restrict__ grad_out,
                                                                const float* __restrict__ slot_outputs,
                                                                float* __restrict__ grad_w) {
    __shared__ double partial[ROUTED_BLOCK];
    const u64 a = (u64)blockIdx.x + (u64)blockIdx.y * gridDim.x;  // t·k + j
    if (a >= (u64)p.tokens * p.slots) return;
    const float* dy = grad_out + (a / p.slots) * p.per_token;
    const float* s = slot_outputs + a * p.per_token;
    double acc = 0.0;
    for (u64 q = threadIdx.x; q < p.per_token; q += ROUTED_BLOCK) acc += (double)dy[q] * (double)s[q];
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (u32 stride = ROUTED_BLOCK / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) grad_w[a] = (float)partial[0];
}

// tokens[t, c, h, w].
__device__ __forceinline__ float token_at(const RoutedParams& p, const float* tokens, u64 t, u64 c,
                                          u64 h, u64 w) {
    return tokens[((t * p.in_channels + c) * p.token_h + h) * p.token_w + w];
}

// W_e[oc, ic, kh, kw] (ic within the group).
__device__ __forceinline__ float weight_at(const RoutedParams& p, const float* weights, u64 e,
                                           u64 oc, u64 ic, u64 kh, u64 kw) {
    const u64 icg = p.in_channels / p.groups;
    return weights[(((e * p.out_channels + oc) * icg + ic) * p.kernel_h + kh) * p.kernel_w + kw];
}

// One thread per slot-output element: bias plus the expert's taps over its group's channels.
extern "C" __global__ void routed_conv_expert_outputs(RoutedParams p, const float* __restrict__ tokens,
                                                      const float* __restrict__ weights,
                                                      const float* __restrict__ biases,
                                                      const float* __restrict__ indices,
                                                      float* __restrict__ slot_outputs) {
    const u32 icg = p.in_channels / p.groups, ocg = p.out_channels / p.groups;
    FOR_EACH_INDEX(idx, (u64)p.tokens * p.slots * p.per_token) {
        const u32 x = idx % p.out_w, y = (idx / p.out_w) % p.out_h;
        const u32 oc = (idx / ((u64)p.out_w * p.out_h)) % p.out_channels;
        const u64 slot = idx / p.per_token, t = slot / p.slots;
        const u64 e = (u64)indices[slot];
        const u32 g = oc / ocg;
        float acc = 0.0f;
        for (u32 ic = 0; ic < icg; ++ic)
            for (u32 kh = 0; kh < p.kernel_h; ++kh)
                for (u32 kw = 0; kw < p.kernel_w; ++kw)
                    acc += weight_at(p, weights, e, oc, ic, kh, kw) *
                           token_at(p, tokens, t, g * icg + ic, y + kh * p.dilation_h, x + kw * p.dilation_w);
        slot_outputs[idx] = acc + (p.has_bias ? biases[e * p.out_channels + oc] : 0.0f);
    }
}

// One thread per token element: Σ_j w[t, j] Σ_{oc in its group, taps} W_e · ∂y at the output
// positions that read it.
extern "C" __global__ void routed_conv_tokens_backward(RoutedParams p, const float* __restrict__ grad_out,
                                                       const float* __restrict__ weights,
                                                       const float* __restrict__ indices,
                                                       const float* __restrict__ routing_weights,
                                                       float* __restrict__ grad_tokens) {
    const u32 icg = p.in_channels / p.groups, ocg = p.out_channels / p.groups;
    FOR_EACH_INDEX(idx, (u64)p.tokens * p.in_channels * p.token_h * p.token_w) {
        const u32 w = idx % p.token_w, h = (idx / p.token_w) % p.token_h;
        const u32 c = (idx / ((u64)p.token_w * p.token_h)) % p.in_channels;
        const u64 t = idx / ((u64)p.token_w * p.token_h * p.in_channels);
        const u32 g = c / icg, ic = c % icg;
        const float* dy = grad_out + t * p.per_token;
        float total = 0.0f;
        for (u32 j = 0; j < p.slots; ++j) {
            const u64 e = (u64)indices[t * p.slots + j];
            float acc = 0.0f;
            for (u32 oc = g * ocg; oc < (g + 1) * ocg; ++oc)
                for (u32 kh = 0; kh < p.kernel_h; ++kh)
                    for (u32 kw = 0; kw < p.kernel_w; ++kw) {
                        const int y = (int)h - (int)(kh * p.dilation_h);
                        const int x = (int)w - (int)(kw * p.dilation_w);
                        if (y < 0 || x < 0 || y >= (int)p.out_h || x >= (int)p.out_w) continue;
                        acc += weight_at(p, weights, e, oc, ic, kh, kw) *
                               dy[((u64)oc * p.out_h + y) * p.out_w + x];
                    }
            total += routing_weights[t * p.slots + j] * acc;
        }
        grad_tokens[idx] = total;
    }
}

// One thread per expert-weight element: over the (t, j) routed to its expert, in order, the
// routing weight times the correlation of ∂y[t, oc] with the token channel at the tap.
extern "C" __global__ void routed_conv_expert_weights_backward(RoutedParams p,
                                                               const float* __restrict__ grad_out,
                                                               const float* __restrict__ tokens,
                                                               const float* __restrict__ indices,
                                                               const float* __restrict__ routing_weights,
                                                               float* __restrict__ grad_weights) {
    const u32 icg = p.in_channels / p.groups, ocg = p.out_channels / p.groups;
    FOR_EACH_INDEX(idx, (u64)p.experts * p.out_channels * icg * p.kernel_h * p.kernel_w) {
        const u32 kw = idx % p.kernel_w, kh = (idx / p.kernel_w) % p.kernel_h;
        const u32 ic = (idx / ((u64)p.kernel_w * p.kernel_h)) % icg;
        const u32 oc = (idx / ((u64)p.kernel_w * p.kernel_h * icg)) % p.out_channels;
        const u64 e = idx / ((u64)p.kernel_w * p.kernel_h * icg * p.out_channels);
        const u32 c = (oc / ocg) * icg + ic;
        float total = 0.0f;
        for (u64 a = 0; a < (u64)p.tokens * p.slots; ++a) {
            if ((u64)indices[a] != e) continue;
            const u64 t = a / p.slots;
            const float* dy = grad_out + t * p.per_token + (u64)oc * p.out_h * p.out_w;
            float acc = 0.0f;
            for (u32 y = 0; y < p.out_h; ++y)
                for (u32 x = 0; x < p.out_w; ++x)
                    acc += dy[y * p.out_w + x] *
                           token_at(p, tokens, t, c, y + kh * p.dilation_h, x + kw * p.dilation_w);
            total += routing_weights[a] * acc;
        }
        grad_weights[idx] = total;
    }
}

// One thread per (expert, output channel): Σ over routed (t, j) of w[t, j] · Σ_p ∂y[t, oc, p].
extern "C" __global__ void routed_conv_expert_biases_backward(RoutedParams p,
                                                              const float* __restrict__ grad_out,
                                                              const float* __restrict__ indices,
                                                              const float* __restrict__ routing_weights,
                                                              float* __restrict__ grad_biases) {
    FOR_EACH_INDEX(idx, (u64)p.experts * p.out_channels) {
        const u64 e = idx / p.out_channels, oc = idx % p.out_channels;
        float total = 0.0f;
        for (u64 a = 0; a < (u64)p.tokens * p.slots; ++a) {
            if ((u64)indices[a] != e) continue;
            const float* dy = grad_out + (a / p.slots) * p.per_token + oc * p.out_h * p.out_w;
            float acc = 0.0f;
            for (u32 q = 0; q < p.out_h * p.out_w; ++q) acc += dy[q];
            total += routing_weights[a] * acc;
        }
        grad_biases[idx] = total;
    }
}

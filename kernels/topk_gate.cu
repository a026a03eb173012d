// Top-k gate family (PatchConvMoE's router), CUDA twin of src/ops/topk_gate/cpu_kernel.rs:
// probs = softmax(logits) per token; the k experts of highest score (selection, else probs; ties
// to the lower expert, NaN first), optionally under a per-expert capacity served in token order;
// weights = p_e / (Σ_chosen p + eps) (or 1 with straight-through); counts and top-1 counts per
// expert; and the backward of the renormalised weights.

// One launch (mirror: GateParams, 24 bytes).
struct GateParams {
    u32 tokens;
    u32 experts;
    u32 k;
    u32 capacity;          // 0: no limit
    u32 straight_through;  // k = 1: weight 1 forward, gradient as if it were p
    float eps;
};
static_assert(sizeof(GateParams) == 24, "GateParams must match its #[repr(C)] mirror in src/ops/topk_gate/cuda_kernel.rs");

// a ranks above b: larger, or NaN over a number.
__device__ __forceinline__ bool ranks_above(float a, float b) {
    return a > b || (a != a && b == b);
}

// Fills chosen[0..k) (global memory, row of token t) with the best experts not yet taken; with
// a capacity, an expert with room wins over a full one (falls back to the best full one).
__device__ void choose_experts(const GateParams& p, const float* scores, float* chosen,
                               const float* load) {
    for (u32 slot = 0; slot < p.k; ++slot) {
        int best = -1;
        for (int pass = 0; pass < 2 && best < 0; ++pass) {
            const bool room_needed = pass == 0 && p.capacity > 0;
            for (u32 e = 0; e < p.experts; ++e) {
                bool taken = false;
                for (u32 s = 0; s < slot; ++s) taken |= (u32)chosen[s] == e;
                if (taken || (room_needed && load[e] >= (float)p.capacity)) continue;
                if (best < 0 || ranks_above(scores[e], scores[best])) best = (int)e;
            }
            if (p.capacity == 0) break;
        }
        chosen[slot] = (float)(best < 0 ? 0 : best);
    }
}

// One thread per token: softmax of its logits row (max-shifted, sums in expert order).
extern "C" __global__ void topk_gate_softmax(GateParams p, const float* __restrict__ logits,
                                             float* __restrict__ probs) {
    FOR_EACH_INDEX(t, (u64)p.tokens) {
        const float* x = logits + t * p.experts;
        float* out = probs + t * p.experts;
        float max = -__int_as_float(0x7f800000);
        for (u32 e = 0; e < p.experts; ++e) max = fmaxf(max, x[e]);
        float sum = 0.0f;
        for (u32 e = 0; e < p.experts; ++e) sum += expf(x[e] - max);
        for (u32 e = 0; e < p.experts; ++e) out[e] = expf(x[e] - max) / sum;
    }
}

// Without a capacity: one thread per token chooses its experts independently.
extern "C" __global__ void topk_gate_choose(GateParams p, const float* __restrict__ scores,
                                            float* __restrict__ indices) {
    FOR_EACH_INDEX(t, (u64)p.tokens) {
        choose_experts(p, scores + t * p.experts, indices + t * p.k, scores);
    }
}

// With a capacity: tokens are served in order by one thread (`load` is zeroed by the launcher
// and ends as the per-expert counts); sequential by definition of the rule.
extern "C" __global__ void topk_gate_choose_capacity(GateParams p, const float* __restrict__ scores,
                                                     float* __restrict__ load,
                                                     float* __restrict__ indices) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    for (u32 t = 0; t < p.tokens; ++t) {
        float* chosen = indices + (u64)t * p.k;
        choose_experts(p, scores + (u64)t * p.experts, chosen, load);
        for (u32 s = 0; s < p.k; ++s) load[(u32)chosen[s]] += 1.0f;
    }
}

// One thread per token: renormalised weights of its chosen experts.
extern "C" __global__ void topk_gate_weights(GateParams p, const float* __restrict__ probs,
                                             const float* __restrict__ indices,
                                             float* __restrict__ weights) {
    FOR_EACH_INDEX(t, (u64)p.tokens) {
        const float* prob = probs + t * p.experts;
        const float* chosen = indices + t * p.k;
        float sum = 0.0f;
        for (u32 s = 0; s < p.k; ++s) sum += prob[(u32)chosen[s]];
        const float denominator = sum + p.eps;
        for (u32 s = 0; s < p.k; ++s)
            weights[t * p.k + s] = p.straight_through ? 1.0f : prob[(u32)chosen[s]] / denominator;
    }
}

// One thread per expert counts its assignments and first choices over all tokens (exact).
extern "C" __global__ void topk_gate_counts(GateParams p, const float* __restrict__ indices,
                                            float* __restrict__ counts,
                                            float* __restrict__ top1_counts) {
    FOR_EACH_INDEX(e, (u64)p.experts) {
        float all = 0.0f, first = 0.0f;
        for (u64 t = 0; t < p.tokens; ++t)
            for (u32 s = 0; s < p.k; ++s)
                if ((u64)indices[t * p.k + s] == e) {
                    all += 1.0f;
                    if (s == 0) first += 1.0f;
                }
        counts[e] = all;
        top1_counts[e] = first;
    }
}

// One thread per token: dL/dp for the renormalised weights, (g_s − Σ g·w) / denominator at each
// chosen expert, 0 elsewhere (straight-through: g at the single chosen expert).
extern "C" __global__ void routing_weights_backward(GateParams p, const float* __restrict__ grad_w,
                                                    const float* __restrict__ probs,
                                                    const float* __restrict__ indices,
                                                    float* __restrict__ grad_p) {
    FOR_EACH_INDEX(t, (u64)p.tokens) {
        const float* prob = probs + t * p.experts;
        const float* chosen = indices + t * p.k;
        const float* g = grad_w + t * p.k;
        float* out = grad_p + t * p.experts;
        for (u32 e = 0; e < p.experts; ++e) out[e] = 0.0f;
        if (p.straight_through) {
            out[(u32)chosen[0]] = g[0];
            continue;
        }
        float sum = 0.0f;
        for (u32 s = 0; s < p.k; ++s) sum += prob[(u32)chosen[s]];
        const float denominator = sum + p.eps;
        float g_dot_w = 0.0f;
        for (u32 s = 0; s < p.k; ++s) g_dot_w += g[s] * (prob[(u32)chosen[s]] / denominator);
        for (u32 s = 0; s < p.k; ++s) out[(u32)chosen[s]] = (g[s] - g_dot_w) / denominator;
    }
}

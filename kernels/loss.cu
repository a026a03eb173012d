// Loss family: fused softmax-cross-entropy over [batch, classes, spatial] logits with an ignore
// index and optional class weights, and its backward. CUDA twin of src/ops/loss/cpu_kernel.rs:
//   loss[p] = w[y] · (lse[p] − x[y, p]),  lse = ln Σ_c e^(x_c)      (0 where y = ignore)
//   dx[c, p] = g[p] · w[y] · (e^(x_c − lse) − [c = y])

// One launch (mirror: CrossEntropyParams, 24 bytes).
struct CrossEntropyParams {
    u32 batch;
    u32 classes;
    u32 spatial;
    u32 has_weight;  // 0: `weight` is a dummy pointer, every class weighs 1
    float ignore_index;
    u32 pad;
};
static_assert(sizeof(CrossEntropyParams) == 24, "CrossEntropyParams must match its #[repr(C)] mirror in src/ops/loss/cuda_kernel.rs");

// One thread per position: lse by max-shifted sum over classes, then the weighted loss. A target
// that is neither a class nor ignore_index records (position + 1) in bad[0] (atomicMax on its
// bits); the launcher turns it into an error naming the value.
extern "C" __global__ void cross_entropy_forward(CrossEntropyParams p, const float* __restrict__ x,
                                                 const float* __restrict__ target,
                                                 const float* __restrict__ weight,
                                                 float* __restrict__ loss,
                                                 float* __restrict__ weight_out,
                                                 float* __restrict__ log_sum_exp,
                                                 float* __restrict__ bad) {
    FOR_EACH_INDEX(pos, (u64)p.batch * p.spatial) {
        const u64 b = pos / p.spatial, s = pos % p.spatial;
        const float* column = x + b * p.classes * p.spatial + s;
        float max = -__int_as_float(0x7f800000);
        for (u32 c = 0; c < p.classes; ++c) max = fmaxf(max, column[(u64)c * p.spatial]);
        float sum = 0.0f;
        for (u32 c = 0; c < p.classes; ++c) sum += expf(column[(u64)c * p.spatial] - max);
        const float lse = max + logf(sum);
        log_sum_exp[pos] = lse;
        const float t = target[pos];
        float l = 0.0f, w = 0.0f;
        if (t != p.ignore_index) {
            if (t != floorf(t) || t < 0.0f || t >= (float)p.classes) {
                atomicMax((int*)bad, (int)(pos + 1));
            } else {
                const u32 cls = (u32)t;
                w = p.has_weight ? weight[cls] : 1.0f;
                l = w * (lse - column[(u64)cls * p.spatial]);
            }
        }
        loss[pos] = l;
        weight_out[pos] = w;
    }
}

// One thread per logit: softmax probability minus the one-hot target, scaled by g · w[y].
extern "C" __global__ void cross_entropy_backward(CrossEntropyParams p, const float* __restrict__ x,
                                                  const float* __restrict__ target,
                                                  const float* __restrict__ weight,
                                                  const float* __restrict__ log_sum_exp,
                                                  const float* __restrict__ grad_loss,
                                                  float* __restrict__ grad_x) {
    FOR_EACH_INDEX(idx, (u64)p.batch * p.classes * p.spatial) {
        const u64 s = idx % p.spatial;
        const u64 c = (idx / p.spatial) % p.classes;
        const u64 b = idx / ((u64)p.spatial * p.classes);
        const u64 pos = b * p.spatial + s;
        const float t = target[pos];
        float r = 0.0f;
        if (t != p.ignore_index) {
            const u32 cls = (u32)t;
            const float scale = grad_loss[pos] * (p.has_weight ? weight[cls] : 1.0f);
            r = scale * (expf(x[idx] - log_sum_exp[pos]) - (c == cls ? 1.0f : 0.0f));
        }
        grad_x[idx] = r;
    }
}

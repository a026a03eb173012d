// Interpolate family: nearest (PyTorch's legacy ⌊o·step⌋) and bilinear (align_corners true or
// false) resizing of [H, W] planes, forward and backward. CUDA twin of
// src/ops/interpolate/cpu_kernel.rs: the same taps from the same f32 step (computed on the host).
// The backward gathers: one thread per input pixel sums, in the CPU's order, the weighted
// gradients of the outputs whose taps read it — deterministic, no atomics.

// One launch (mirror: InterpolateParams, 40 bytes). `step` per axis as the CPU computes it.
struct InterpolateParams {
    u32 planes;
    u32 in_h, in_w;
    u32 out_h, out_w;
    u32 bilinear;
    u32 align_corners;
    u32 pad;
    float step_h, step_w;
};
static_assert(sizeof(InterpolateParams) == 40, "InterpolateParams must match its #[repr(C)] mirror in src/ops/interpolate/cuda_kernel.rs");

// Up to two taps along one axis: indices and weights; `count` is 1 for nearest.
struct Taps {
    u32 index[2];
    float weight[2];
    u32 count;
};

// The taps of output o along an axis of `input` → `output` with source step `step`.
__device__ Taps axis_taps(const InterpolateParams& p, u32 o, u32 input, u32 output, float step) {
    Taps t;
    if (!p.bilinear) {
        u32 index;
        if (output == input) index = o;
        else if (output == 2 * input) index = o >> 1;
        else index = min((u32)floorf((float)o * step), input - 1);
        t.index[0] = t.index[1] = index;
        t.weight[0] = 1.0f;
        t.weight[1] = 0.0f;
        t.count = 1;
        return t;
    }
    t.count = 2;
    if (input == output) {
        t.index[0] = t.index[1] = o;
        t.weight[0] = 1.0f;
        t.weight[1] = 0.0f;
        return t;
    }
    float source;
    if (p.align_corners) {
        source = step * (float)o;
    } else {
        source = step * ((float)o + 0.5f) - 0.5f;
        if (source < 0.0f) source = 0.0f;
    }
    const u32 low = min((u32)floorf(source), input - 1);
    const float lambda = fminf(fmaxf(source - (float)low, 0.0f), 1.0f);
    t.index[0] = low;
    t.index[1] = low < input - 1 ? low + 1 : low;
    t.weight[0] = 1.0f - lambda;
    t.weight[1] = lambda;
    return t;
}

// Outputs whose taps may read input i: a window around i/step with a margin of two.
__device__ __forceinline__ void output_range(u32 i, u32 input, u32 output, float step, i64* first,
                                             i64* last) {
    if (step <= 0.0f || input == output) {
        *first = input == output ? (i64)i : 0;
        *last = input == output ? (i64)i : (i64)output - 1;
        return;
    }
    const float lo = ((float)i - 1.5f) / step - 2.0f, hi = ((float)i + 1.5f) / step + 2.0f;
    *first = max((i64)0, (i64)floorf(lo));
    *last = min((i64)output - 1, (i64)ceilf(hi));
}

// out = Σ_a Σ_b wh[a]·ww[b]·x[h_a, w_b], one thread per output pixel.
extern "C" __global__ void interpolate(InterpolateParams p, const float* __restrict__ x,
                                       float* __restrict__ out) {
    FOR_EACH_INDEX(idx, (u64)p.planes * p.out_h * p.out_w) {
        const u32 ow = idx % p.out_w, oh = (idx / p.out_w) % p.out_h;
        const float* plane = x + (idx / ((u64)p.out_w * p.out_h)) * p.in_h * p.in_w;
        const Taps th = axis_taps(p, oh, p.in_h, p.out_h, p.step_h);
        const Taps tw = axis_taps(p, ow, p.in_w, p.out_w, p.step_w);
        float sum = 0.0f;
        for (u32 a = 0; a < th.count; ++a) {
            const float* line = plane + (u64)th.index[a] * p.in_w;
            float inner = line[tw.index[0]] * tw.weight[0];
            for (u32 b = 1; b < tw.count; ++b) inner += line[tw.index[b]] * tw.weight[b];
            sum = a == 0 ? inner * th.weight[0] : sum + inner * th.weight[a];
        }
        out[idx] = sum;
    }
}

// grad_x[h, w] = Σ over outputs (row-major) and taps of wh·ww·g where the tap is (h, w).
extern "C" __global__ void interpolate_backward(InterpolateParams p,
                                                const float* __restrict__ grad_out,
                                                float* __restrict__ grad_x) {
    FOR_EACH_INDEX(idx, (u64)p.planes * p.in_h * p.in_w) {
        const u32 w = idx % p.in_w, h = (idx / p.in_w) % p.in_h;
        const float* g = grad_out + (idx / ((u64)p.in_w * p.in_h)) * p.out_h * p.out_w;
        i64 oh0, oh1, ow0, ow1;
        output_range(h, p.in_h, p.out_h, p.step_h, &oh0, &oh1);
        output_range(w, p.in_w, p.out_w, p.step_w, &ow0, &ow1);
        if (!p.bilinear && p.out_h == 2 * p.in_h) { oh0 = 2 * (i64)h; oh1 = 2 * (i64)h + 1; }
        if (!p.bilinear && p.out_w == 2 * p.in_w) { ow0 = 2 * (i64)w; ow1 = 2 * (i64)w + 1; }
        float acc = 0.0f;
        for (i64 oh = oh0; oh <= oh1; ++oh) {
            const Taps th = axis_taps(p, (u32)oh, p.in_h, p.out_h, p.step_h);
            for (i64 ow = ow0; ow <= ow1; ++ow) {
                const Taps tw = axis_taps(p, (u32)ow, p.in_w, p.out_w, p.step_w);
                const float v = g[oh * p.out_w + ow];
                for (u32 a = 0; a < th.count; ++a)
                    for (u32 b = 0; b < tw.count; ++b)
                        if (th.index[a] == h && tw.index[b] == w) acc += th.weight[a] * tw.weight[b] * v;
            }
        }
        grad_x[idx] = acc;
    }
}

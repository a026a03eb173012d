// Pool family over planes of [H, W]: max pool with indices (flat h·W + w within the plane) and
// its backward, max unpool and its backward, avg pool (count_include_pad, divisor_override) and
// adaptive avg pool with their backward. CUDA twin of src/ops/pool/cpu_kernel.rs, same windows.
// Backward passes gather: one thread per input pixel sums the outputs whose window holds it, in
// the CPU's order, so results are deterministic without atomics.

// One launch (mirror: PoolParams, 64 bytes). Axis a: [0] = rows (h), [1] = columns (w).
struct PoolParams {
    u32 planes;
    u32 in_h, in_w;
    u32 out_h, out_w;
    u32 kernel_h, kernel_w;
    u32 stride_h, stride_w;
    u32 pad_h, pad_w;
    u32 dilation_h, dilation_w;
    u32 count_include_pad;
    u32 divisor;  // divisor_override, 0 when absent
    u32 pad;
};
static_assert(sizeof(PoolParams) == 64, "PoolParams must match its #[repr(C)] mirror in src/ops/pool/cuda_kernel.rs");

// A window along one axis: [start, end) with `padded` its length counting padding (avg pool).
struct Window {
    i64 start, end, padded;
};

// Max pool's window along an axis: the first tap at or after 0, the end clipped to the input.
__device__ __forceinline__ Window max_window(i64 o, i64 input, i64 kernel, i64 stride, i64 pad,
                                             i64 dilation) {
    const i64 origin = o * stride - pad;
    i64 start = origin;
    while (start < 0) start += dilation;
    const i64 end = min(origin + (kernel - 1) * dilation + 1, input);
    Window w = {start, end > 0 ? end : 0, 0};
    return w;
}

// Avg pool's window along an axis (padded length for count_include_pad).
__device__ __forceinline__ Window avg_window(i64 o, i64 input, i64 kernel, i64 stride, i64 pad) {
    const i64 origin = o * stride - pad;
    const i64 padded_end = min(origin + kernel, input + pad);
    const i64 end = min(padded_end, input);
    Window w = {origin > 0 ? origin : 0, end > 0 ? end : 0, padded_end - origin > 0 ? padded_end - origin : 0};
    return w;
}

// Adaptive pool's window: [⌊o·in/out⌋, ⌈(o+1)·in/out⌉).
__device__ __forceinline__ Window adaptive_window(i64 o, i64 input, i64 output) {
    const i64 start = o * input / output;
    const i64 end = ((o + 1) * input + output - 1) / output;
    Window w = {start, end, end - start};
    return w;
}

// The outputs o whose window [o·stride − pad, + (kernel−1)·dilation] may hold input i.
__device__ __forceinline__ void candidate_outputs(i64 i, i64 output, i64 kernel, i64 stride,
                                                  i64 pad, i64 dilation, i64* first, i64* last) {
    const i64 reach = (kernel - 1) * dilation;
    const i64 lo = i + pad - reach;
    *first = lo <= 0 ? 0 : (lo + stride - 1) / stride;
    const i64 hi = (i + pad) / stride;
    *last = min(hi, output - 1);
}

// Max over each window, keeping the first maximum (a NaN wins), and its flat index in the plane.
extern "C" __global__ void max_pool2d(PoolParams p, const float* __restrict__ x,
                                      float* __restrict__ values, float* __restrict__ indices) {
    FOR_EACH_INDEX(idx, (u64)p.planes * p.out_h * p.out_w) {
        const i64 ow = idx % p.out_w, oh = (idx / p.out_w) % p.out_h;
        const u64 plane = idx / ((u64)p.out_w * p.out_h);
        const float* src = x + plane * p.in_h * p.in_w;
        const Window rw = max_window(oh, p.in_h, p.kernel_h, p.stride_h, p.pad_h, p.dilation_h);
        const Window cw = max_window(ow, p.in_w, p.kernel_w, p.stride_w, p.pad_w, p.dilation_w);
        float best = -__int_as_float(0x7f800000);
        i64 best_index = rw.start * p.in_w + cw.start;
        for (i64 h = rw.start; h < rw.end; h += p.dilation_h)
            for (i64 w = cw.start; w < cw.end; w += p.dilation_w) {
                const float v = src[h * p.in_w + w];
                if (v > best || v != v) {
                    best = v;
                    best_index = h * p.in_w + w;
                }
            }
        values[idx] = best;
        indices[idx] = (float)best_index;
    }
}

// Max pool's gradient: each input pixel sums grad_out of the outputs that picked it.
extern "C" __global__ void max_pool2d_backward(PoolParams p, const float* __restrict__ grad_out,
                                               const float* __restrict__ indices,
                                               float* __restrict__ grad_x) {
    FOR_EACH_INDEX(idx, (u64)p.planes * p.in_h * p.in_w) {
        const i64 w = idx % p.in_w, h = (idx / p.in_w) % p.in_h;
        const u64 plane = idx / ((u64)p.in_w * p.in_h);
        const u64 base = plane * p.out_h * p.out_w;
        i64 oh0, oh1, ow0, ow1;
        candidate_outputs(h, p.out_h, p.kernel_h, p.stride_h, p.pad_h, p.dilation_h, &oh0, &oh1);
        candidate_outputs(w, p.out_w, p.kernel_w, p.stride_w, p.pad_w, p.dilation_w, &ow0, &ow1);
        const float self_index = (float)(h * p.in_w + w);
        float acc = 0.0f;
        for (i64 oh = oh0; oh <= oh1; ++oh)
            for (i64 ow = ow0; ow <= ow1; ++ow) {
                const u64 at = base + oh * p.out_w + ow;
                if (indices[at] == self_index) acc += grad_out[at];
            }
        grad_x[idx] = acc;
    }
}

// Max unpool: each input value goes to its index in the (zeroed) output plane. Indices from a
// max pool are distinct within a plane; with repeated indices the surviving write is unspecified
// (the CPU keeps the last).
extern "C" __global__ void max_unpool2d(PoolParams p, const float* __restrict__ x,
                                        const float* __restrict__ indices,
                                        float* __restrict__ out) {
    FOR_EACH_INDEX(idx, (u64)p.planes * p.in_h * p.in_w) {
        const u64 plane = idx / ((u64)p.in_h * p.in_w);
        const float index = indices[idx];
        const u64 plane_len = (u64)p.out_h * p.out_w;
        if (index >= 0.0f && (u64)index < plane_len) out[plane * plane_len + (u64)index] = x[idx];
    }
}

// Max unpool's gradient: each input reads the output gradient at its index.
extern "C" __global__ void max_unpool2d_backward(PoolParams p, const float* __restrict__ grad_out,
                                                 const float* __restrict__ indices,
                                                 float* __restrict__ grad_x) {
    FOR_EACH_INDEX(idx, (u64)p.planes * p.in_h * p.in_w) {
        const u64 plane = idx / ((u64)p.in_h * p.in_w);
        const float index = indices[idx];
        const u64 plane_len = (u64)p.out_h * p.out_w;
        grad_x[idx] = (index >= 0.0f && (u64)index < plane_len)
                          ? grad_out[plane * plane_len + (u64)index]
                          : 0.0f;
    }
}

// The divisor of an avg-pool output window.
__device__ __forceinline__ float avg_divisor(const PoolParams& p, Window rw, Window cw) {
    if (p.divisor) return (float)p.divisor;
    if (p.count_include_pad) return (float)(rw.padded * cw.padded);
    return (float)((rw.end - rw.start) * (cw.end - cw.start));
}

// `adaptive`: adaptive windows and mean divisor; else avg-pool windows.
__device__ __forceinline__ void mean_windows(const PoolParams& p, bool adaptive, i64 oh, i64 ow,
                                             Window* rw, Window* cw, float* divisor) {
    if (adaptive) {
        *rw = adaptive_window(oh, p.in_h, p.out_h);
        *cw = adaptive_window(ow, p.in_w, p.out_w);
        *divisor = (float)(rw->end - rw->start) * (float)(cw->end - cw->start);
    } else {
        *rw = avg_window(oh, p.in_h, p.kernel_h, p.stride_h, p.pad_h);
        *cw = avg_window(ow, p.in_w, p.kernel_w, p.stride_w, p.pad_w);
        *divisor = avg_divisor(p, *rw, *cw);
    }
}

// Mean over each window (avg or adaptive), one thread per output.
__device__ void windowed_mean(const PoolParams& p, bool adaptive, const float* x, float* out) {
    FOR_EACH_INDEX(idx, (u64)p.planes * p.out_h * p.out_w) {
        const i64 ow = idx % p.out_w, oh = (idx / p.out_w) % p.out_h;
        const float* src = x + (idx / ((u64)p.out_w * p.out_h)) * p.in_h * p.in_w;
        Window rw, cw;
        float divisor;
        mean_windows(p, adaptive, oh, ow, &rw, &cw, &divisor);
        float sum = 0.0f;
        for (i64 h = rw.start; h < rw.end; ++h)
            for (i64 w = cw.start; w < cw.end; ++w) sum += src[h * p.in_w + w];
        const bool empty = rw.end <= rw.start || cw.end <= cw.start;
        out[idx] = empty ? 0.0f : (adaptive ? sum / (float)(rw.end - rw.start) / (float)(cw.end - cw.start) : sum / divisor);
    }
}

// The mean's gradient: each input pixel sums g/divisor of the windows holding it, in order.
__device__ void windowed_mean_backward(const PoolParams& p, bool adaptive, const float* grad_out,
                                       float* grad_x) {
    FOR_EACH_INDEX(idx, (u64)p.planes * p.in_h * p.in_w) {
        const i64 w = idx % p.in_w, h = (idx / p.in_w) % p.in_h;
        const float* g = grad_out + (idx / ((u64)p.in_w * p.in_h)) * p.out_h * p.out_w;
        i64 oh0, oh1, ow0, ow1;
        if (adaptive) {
            oh0 = max((i64)0, h * p.out_h / p.in_h - 1);
            oh1 = min((i64)p.out_h - 1, (h + 1) * p.out_h / p.in_h + 1);
            ow0 = max((i64)0, w * p.out_w / p.in_w - 1);
            ow1 = min((i64)p.out_w - 1, (w + 1) * p.out_w / p.in_w + 1);
        } else {
            candidate_outputs(h, p.out_h, p.kernel_h, p.stride_h, p.pad_h, 1, &oh0, &oh1);
            candidate_outputs(w, p.out_w, p.kernel_w, p.stride_w, p.pad_w, 1, &ow0, &ow1);
        }
        float acc = 0.0f;
        for (i64 oh = oh0; oh <= oh1; ++oh)
            for (i64 ow = ow0; ow <= ow1; ++ow) {
                Window rw, cw;
                float divisor;
                mean_windows(p, adaptive, oh, ow, &rw, &cw, &divisor);
                if (h < rw.start || h >= rw.end || w < cw.start || w >= cw.end) continue;
                const float v = g[oh * p.out_w + ow];
                acc += adaptive ? v / (float)(rw.end - rw.start) / (float)(cw.end - cw.start) : v / divisor;
            }
        grad_x[idx] = acc;
    }
}

// Avg pool: mean over each (padded) window.
extern "C" __global__ void avg_pool2d(PoolParams p, const float* __restrict__ x,
                                      float* __restrict__ out) {
    windowed_mean(p, false, x, out);
}

// Avg pool's gradient.
extern "C" __global__ void avg_pool2d_backward(PoolParams p, const float* __restrict__ grad_out,
                                               float* __restrict__ grad_x) {
    windowed_mean_backward(p, false, grad_out, grad_x);
}

// Adaptive avg pool: mean over ⌊o·in/out⌋..⌈(o+1)·in/out⌉ in each axis.
extern "C" __global__ void adaptive_avg_pool2d(PoolParams p, const float* __restrict__ x,
                                               float* __restrict__ out) {
    windowed_mean(p, true, x, out);
}

// Adaptive avg pool's gradient.
extern "C" __global__ void adaptive_avg_pool2d_backward(PoolParams p,
                                                        const float* __restrict__ grad_out,
                                                        float* __restrict__ grad_x) {
    windowed_mean_backward(p, true, grad_out, grad_x);
}

// Softmax family: softmax / log-softmax along the middle axis of an [outer, size, inner] view,
// and their backward; Soft-MoE's fused pair of softmaxes over one logits tensor (at the end). CUDA twin of src/ops/softmax/cpu_kernel.rs:
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

// Soft-MoE routing over logits [batch, tokens, slots] (mirror: SoftRouteParams, 16 bytes).
// CUDA twin of the soft_route kernels of src/ops/softmax/cpu_kernel.rs. A "line" is a row
// (a token, over the slots) or a column (a slot, over the tokens) of one batch item: line
// l < tokens is row l, line tokens + j is column j. Outputs routes = [dispatch; combine]:
//   dispatch = e^(x − max_col) / Σ_col e^(x − max_col)   (softmax over the tokens)
//   combine  = e^(x − max_row) / Σ_row e^(x − max_row)   (softmax over the slots)
//   dx = D·(g_D − Σ_tokens g_D·D) + C·(g_C − Σ_slots g_C·C)
struct SoftRouteParams {
    u32 batch;
    u32 tokens;
    u32 slots;
    u32 pad;
};
static_assert(sizeof(SoftRouteParams) == 16, "SoftRouteParams must match its #[repr(C)] mirror in src/ops/softmax/cuda_kernel.rs");

// Threads per block of the per-line kernels (mirror: ROUTE_BLOCK in cuda_kernel.rs).
#define ROUTE_BLOCK 256

// Element k of line `line` of batch item b.
__device__ __forceinline__ u64 route_at(const SoftRouteParams& p, u64 b, u32 line, u32 k) {
    const u64 base = b * p.tokens * p.slots;
    return line < p.tokens ? base + (u64)line * p.slots + k
                           : base + (u64)k * p.slots + (line - p.tokens);
}

__device__ __forceinline__ u32 route_line_length(const SoftRouteParams& p, u32 line) {
    return line < p.tokens ? p.slots : p.tokens;
}

// Merges the running (max, Σ e^(x − max)) pair (m2, s2) into (m, s).
__device__ __forceinline__ void merge_running_max(float& m, float& s, float m2, float s2) {
    const float top = fmaxf(m, m2);
    if (top == -__int_as_float(0x7f800000)) return;  // both empty
    s = s * expf(m - top) + s2 * expf(m2 - top);
    m = top;
}

// One block per line (block-strided over batch × lines): each thread keeps a running
// (max, sum) over its elements, then a shared-memory tree merges them in a fixed order.
extern "C" __global__ void soft_route_statistics(SoftRouteParams p, const float* __restrict__ x,
                                                 float* __restrict__ stats) {
    __shared__ float max_part[ROUTE_BLOCK];
    __shared__ float sum_part[ROUTE_BLOCK];
    const u32 lines = p.tokens + p.slots;
    for (u64 bl = blockIdx.x; bl < (u64)p.batch * lines; bl += gridDim.x) {
        const u64 b = bl / lines;
        const u32 line = (u32)(bl % lines), length = route_line_length(p, line);
        float m = -__int_as_float(0x7f800000), s = 0.0f;
        for (u32 k = threadIdx.x; k < length; k += ROUTE_BLOCK) {
            const float v = x[route_at(p, b, line, k)];
            if (v > m) {
                s = s * expf(m - v) + 1.0f;
                m = v;
            } else {
                s += expf(v - m);
            }
        }
        max_part[threadIdx.x] = m;
        sum_part[threadIdx.x] = s;
        __syncthreads();
        for (u32 stride = ROUTE_BLOCK / 2; stride > 0; stride >>= 1) {
            if (threadIdx.x < stride) {
                merge_running_max(max_part[threadIdx.x], sum_part[threadIdx.x],
                                  max_part[threadIdx.x + stride], sum_part[threadIdx.x + stride]);
            }
            __syncthreads();
        }
        if (threadIdx.x == 0) {
            stats[2 * bl] = max_part[0];
            stats[2 * bl + 1] = sum_part[0];
        }
        __syncthreads();
    }
}

// Both outputs of every logit from its row's and its column's statistics.
extern "C" __global__ void soft_route_forward(SoftRouteParams p, const float* __restrict__ x,
                                              const float* __restrict__ stats,
                                              float* __restrict__ routes) {
    const u64 per_batch = (u64)p.tokens * p.slots, n = p.batch * per_batch;
    const u32 lines = p.tokens + p.slots;
    FOR_EACH_INDEX(idx, n) {
        const u64 b = idx / per_batch, rem = idx % per_batch;
        const u64 row = b * lines + rem / p.slots, column = b * lines + p.tokens + rem % p.slots;
        const float v = x[idx];
        routes[idx] = expf(v - stats[2 * column]) / stats[2 * column + 1];
        routes[n + idx] = expf(v - stats[2 * row]) / stats[2 * row + 1];
    }
}

// One block per line: Σ g_C·C over a row, Σ g_D·D over a column (shared-memory tree, fixed
// order).
extern "C" __global__ void soft_route_backward_sums(SoftRouteParams p,
                                                   const float* __restrict__ routes,
                                                   const float* __restrict__ grad_routes,
                                                   float* __restrict__ dots) {
    __shared__ float partial[ROUTE_BLOCK];
    const u32 lines = p.tokens + p.slots;
    const u64 n = (u64)p.batch * p.tokens * p.slots;
    for (u64 bl = blockIdx.x; bl < (u64)p.batch * lines; bl += gridDim.x) {
        const u64 b = bl / lines;
        const u32 line = (u32)(bl % lines), length = route_line_length(p, line);
        const u64 half = line < p.tokens ? n : 0;  // rows read combine, columns dispatch
        float acc = 0.0f;
        for (u32 k = threadIdx.x; k < length; k += ROUTE_BLOCK) {
            const u64 at = half + route_at(p, b, line, k);
            acc += grad_routes[at] * routes[at];
        }
        partial[threadIdx.x] = acc;
        __syncthreads();
        for (u32 stride = ROUTE_BLOCK / 2; stride > 0; stride >>= 1) {
            if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
            __syncthreads();
        }
        if (threadIdx.x == 0) dots[bl] = partial[0];
        __syncthreads();
    }
}

// dx from both softmax backward terms, one thread per logit.
extern "C" __global__ void soft_route_backward(SoftRouteParams p, const float* __restrict__ routes,
                                               const float* __restrict__ grad_routes,
                                               const float* __restrict__ dots,
                                               float* __restrict__ grad_x) {
    const u64 per_batch = (u64)p.tokens * p.slots, n = p.batch * per_batch;
    const u32 lines = p.tokens + p.slots;
    FOR_EACH_INDEX(idx, n) {
        const u64 b = idx / per_batch, rem = idx % per_batch;
        const u64 row = b * lines + rem / p.slots, column = b * lines + p.tokens + rem % p.slots;
        grad_x[idx] = routes[idx] * (grad_routes[idx] - dots[column]) +
                      routes[n + idx] * (grad_routes[n + idx] - dots[row]);
    }
}

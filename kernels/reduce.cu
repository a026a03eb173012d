// Reduction family: sum and max (with arg-max indices) along one axis of an [outer, size, inner]
// view, and max's backward. CUDA twin of src/ops/reduce/cpu_kernel.rs.

// The [outer, size, inner] view of one launch (mirror: AxisParams, 16 bytes).
struct AxisParams {
    u32 outer;
    u32 size;
    u32 inner;
    u32 pad;
};
static_assert(sizeof(AxisParams) == 16, "AxisParams must match its #[repr(C)] mirror in src/ops/reduce/cuda_kernel.rs");

// Sum of `value` over the warp, by butterfly shuffles (every lane gets the total).
__device__ __forceinline__ float warp_sum(float value) {
    for (int offset = 16; offset > 0; offset >>= 1)
        value += __shfl_xor_sync(0xffffffffu, value, offset);
    return value;
}

// Sum of `value` over the block: warp shuffles, then one warp over the per-warp partials.
__device__ float block_sum(float value) {
    __shared__ float partial[32];
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    value = warp_sum(value);
    if (lane == 0) partial[warp] = value;
    __syncthreads();
    const u32 warps = (blockDim.x + 31) >> 5;
    value = (threadIdx.x < warps) ? partial[threadIdx.x] : 0.0f;
    if (warp == 0) value = warp_sum(value);
    if (threadIdx.x == 0) partial[0] = value;
    __syncthreads();
    value = partial[0];
    __syncthreads();
    return value;
}

// inner == 1: one block per contiguous row; threads stride the row, the block reduces by shuffles.
extern "C" __global__ void sum_rows(AxisParams p, const float* __restrict__ x,
                                    float* __restrict__ out) {
    const u64 row = (u64)blockIdx.x + (u64)blockIdx.y * gridDim.x;
    if (row >= p.outer) return;
    const float* src = x + row * p.size;
    float acc = 0.0f;
    for (u32 s = threadIdx.x; s < p.size; s += blockDim.x) acc += src[s];
    acc = block_sum(acc);
    if (threadIdx.x == 0) out[row] = acc;
}

// inner > 1: one thread per output column (o, i) walks the axis; neighbours read neighbours.
extern "C" __global__ void sum_columns(AxisParams p, const float* __restrict__ x,
                                       float* __restrict__ out) {
    FOR_EACH_INDEX(oi, (u64)p.outer * p.inner) {
        const u64 o = oi / p.inner, i = oi % p.inner;
        const float* src = x + o * p.size * p.inner + i;
        float acc = 0.0f;
        for (u32 s = 0; s < p.size; ++s) acc += src[(u64)s * p.inner];
        out[oi] = acc;
    }
}

// Max and its first index along the axis; a NaN wins and stops the scan, as on the CPU.
extern "C" __global__ void max_axis(AxisParams p, const float* __restrict__ x,
                                    float* __restrict__ values, float* __restrict__ indices) {
    FOR_EACH_INDEX(oi, (u64)p.outer * p.inner) {
        const u64 o = oi / p.inner, i = oi % p.inner;
        const float* src = x + o * p.size * p.inner + i;
        float best = src[0];
        u32 best_index = 0;
        for (u32 s = 1; s < p.size; ++s) {
            if (best != best) break;
            const float v = src[(u64)s * p.inner];
            if (v > best || v != v) {
                best = v;
                best_index = s;
            }
        }
        values[oi] = best;
        indices[oi] = (float)best_index;
    }
}

// Max's gradient: each input element takes grad_out where it was the arg-max, else 0.
extern "C" __global__ void max_axis_backward(AxisParams p, const float* __restrict__ grad_out,
                                             const float* __restrict__ indices,
                                             float* __restrict__ grad_x) {
    FOR_EACH_INDEX(idx, (u64)p.outer * p.size * p.inner) {
        const u64 i = idx % p.inner;
        const u64 s = (idx / p.inner) % p.size;
        const u64 o = idx / ((u64)p.inner * p.size);
        const u64 oi = o * p.inner + i;
        grad_x[idx] = ((u64)indices[oi] == s) ? grad_out[oi] : 0.0f;
    }
}

// Index family over an [outer, size, inner] view: gather / index_select (select along the axis),
// scatter_add / index_select's backward (accumulate along the axis), and top-k.
// CUDA twin of src/ops/index/cpu_kernel.rs. Accumulation gives each thread one (outer, inner)
// column and walks the indices in order, so sums are deterministic and need no atomics.

// One launch (mirror: IndexParams, 24 bytes). per_row = 1: one index per (outer, j) row
// (index_select, `index[j]`); 0: one per element (gather / scatter, `index[row·inner + i]`).
struct IndexParams {
    u32 outer;
    u32 size;
    u32 inner;
    u32 count;
    u32 per_row;
    u32 has_base;  // accumulate: start from `base` (scatter_add) or from zeros
};
static_assert(sizeof(IndexParams) == 24, "IndexParams must match its #[repr(C)] mirror in src/ops/index/cuda_kernel.rs");

// One top-k launch (mirror: TopkKernelParams, 20 bytes).
struct TopkKernelParams {
    u32 outer;
    u32 size;
    u32 inner;
    u32 k;
    u32 largest;
};
static_assert(sizeof(TopkKernelParams) == 20, "TopkKernelParams must match its #[repr(C)] mirror in src/ops/index/cuda_kernel.rs");

__device__ __forceinline__ u64 source_index(const IndexParams& p, const float* index, u64 row,
                                            u64 i) {
    return p.per_row ? (u64)index[row % p.count] : (u64)index[row * p.inner + i];
}

// out[o, j, i] = x[o, index(o, j, i), i]: one thread per output element.
extern "C" __global__ void select_along_axis(IndexParams p, const float* __restrict__ x,
                                             const float* __restrict__ index,
                                             float* __restrict__ out) {
    FOR_EACH_INDEX(idx, (u64)p.outer * p.count * p.inner) {
        const u64 row = idx / p.inner, i = idx % p.inner;
        const u64 o = row / p.count;
        out[idx] = x[(o * p.size + source_index(p, index, row, i)) * p.inner + i];
    }
}

// out[o, index(o, j, i), i] += values[o, j, i]: one thread per (o, i) column, j in order.
extern "C" __global__ void accumulate_along_axis(IndexParams p, const float* __restrict__ base,
                                                 const float* __restrict__ index,
                                                 const float* __restrict__ values,
                                                 float* __restrict__ out) {
    FOR_EACH_INDEX(oi, (u64)p.outer * p.inner) {
        const u64 o = oi / p.inner, i = oi % p.inner;
        const u64 slab = o * p.size * p.inner;
        for (u32 s = 0; s < p.size; ++s) {
            const u64 at = slab + (u64)s * p.inner + i;
            out[at] = p.has_base ? base[at] : 0.0f;
        }
        for (u32 j = 0; j < p.count; ++j) {
            const u64 row = o * p.count + j;
            out[slab + source_index(p, index, row, i) * p.inner + i] += values[row * p.inner + i];
        }
    }
}

// Total order of the CPU's value_order: NaN above every number.
__device__ __forceinline__ int value_cmp(float a, float b) {
    const bool an = a != a, bn = b != b;
    if (an || bn) return an == bn ? 0 : (an ? 1 : -1);
    return a < b ? -1 : (a > b ? 1 : 0);
}

// True when (av, ai) comes before (bv, bi): by value (descending when largest), then by index.
__device__ __forceinline__ bool before(float av, u32 ai, float bv, u32 bi, u32 largest) {
    const int c = largest ? value_cmp(bv, av) : value_cmp(av, bv);
    return c < 0 || (c == 0 && ai < bi);
}

// One thread per lane (o, i): k selection passes, each taking the first element after the
// previous pick in the total order (O(k·size); the gates use k ≤ 4). Output [outer, k, inner].
extern "C" __global__ void topk(TopkKernelParams p, const float* __restrict__ x,
                                float* __restrict__ values, float* __restrict__ indices) {
    FOR_EACH_INDEX(lane, (u64)p.outer * p.inner) {
        const u64 o = lane / p.inner, i = lane % p.inner;
        const float* src = x + o * p.size * p.inner + i;
        float last_v = 0.0f;
        u32 last_i = 0;
        for (u32 r = 0; r < p.k; ++r) {
            bool found = false;
            float best_v = 0.0f;
            u32 best_i = 0;
            for (u32 s = 0; s < p.size; ++s) {
                const float v = src[(u64)s * p.inner];
                if (r > 0 && !before(last_v, last_i, v, s, p.largest)) continue;
                if (!found || before(v, s, best_v, best_i, p.largest)) {
                    best_v = v;
                    best_i = s;
                    found = true;
                }
            }
            const u64 at = (o * p.k + r) * p.inner + i;
            values[at] = best_v;
            indices[at] = (float)best_i;
            last_v = best_v;
            last_i = best_i;
        }
    }
}

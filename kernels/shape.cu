// Shape family: permute, concat, and one box copy that serves narrow, pad and both of their
// backward passes. CUDA twin of src/ops/shape/cpu_kernel.rs and permute.rs.

// Highest rank (mirror: MAX_RANK in cuda_kernel.rs).
#define MAX_RANK 8

// A box copy (mirror: BoxParams): out coordinate c reads in coordinate c − offset when that is
// inside `in_dims`, else writes `fill`. Pad: offset = padding before; crop: offset = −start.
struct BoxParams {
    u64 n;
    u32 rank;
    float fill;
    u32 out_dims[MAX_RANK];
    u32 in_dims[MAX_RANK];
    int offset[MAX_RANK];
};
static_assert(sizeof(BoxParams) == 112, "BoxParams must match its #[repr(C)] mirror in src/ops/shape/cuda_kernel.rs");

// A permutation (mirror: PermuteParams): out dims, and for each out axis the stride of the
// input axis it comes from.
struct PermuteParams {
    u64 n;
    u32 rank;
    u32 pad;
    u32 out_dims[MAX_RANK];
    u64 in_strides[MAX_RANK];
};
static_assert(sizeof(PermuteParams) == 112, "PermuteParams must match its #[repr(C)] mirror in src/ops/shape/cuda_kernel.rs");

// One concat part (mirror: ConcatParams): rows of `width` go to columns at..at+width of rows of
// `total`.
struct ConcatParams {
    u32 outer;
    u32 width;
    u32 total;
    u32 at;
};
static_assert(sizeof(ConcatParams) == 16, "ConcatParams must match its #[repr(C)] mirror in src/ops/shape/cuda_kernel.rs");

// One thread per output element: peel its coordinates, shift them, read or fill.
extern "C" __global__ void box_copy(BoxParams p, const float* __restrict__ x,
                                    float* __restrict__ out) {
    FOR_EACH_INDEX(idx, p.n) {
        u64 rest = idx, at = 0, stride = 1;
        bool inside = true;
        for (int d = (int)p.rank - 1; d >= 0; --d) {
            const i64 c = (i64)(rest % p.out_dims[d]) - p.offset[d];
            rest /= p.out_dims[d];
            if (c < 0 || c >= (i64)p.in_dims[d]) inside = false;
            at += (u64)c * stride;
            stride *= p.in_dims[d];
        }
        out[idx] = inside ? x[at] : p.fill;
    }
}

// One thread per output element: its input offset is Σ coordinate · stride of the source axis.
extern "C" __global__ void permute(PermuteParams p, const float* __restrict__ x,
                                   float* __restrict__ out) {
    FOR_EACH_INDEX(idx, p.n) {
        u64 rest = idx, at = 0;
        for (int d = (int)p.rank - 1; d >= 0; --d) {
            at += (rest % p.out_dims[d]) * p.in_strides[d];
            rest /= p.out_dims[d];
        }
        out[idx] = x[at];
    }
}

// One thread per element of the part: copy into its column range of the output rows.
extern "C" __global__ void concat_part(ConcatParams p, const float* __restrict__ part,
                                       float* __restrict__ out) {
    FOR_EACH_INDEX(idx, (u64)p.outer * p.width) {
        const u64 o = idx / p.width, j = idx % p.width;
        out[o * p.total + p.at + j] = part[idx];
    }
}

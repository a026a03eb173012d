// Elementwise family: unary maps, binary maps with numpy broadcasting, broadcast_to, fill.
// CUDA twin of src/ops/elementwise/cpu_kernel.rs (same formulas, same NaN choices).
// Backward of every op here is itself elementwise (composed in src/ops/elementwise/mod.rs).

// Grid-stride loop over the flat indices 0..n of the output.

// Highest rank the broadcast kernels handle (mirror: MAX_RANK in cuda_kernel.rs).
#define MAX_RANK 8

// Unary op codes (mirror: UnaryCode in cuda_kernel.rs).
enum { U_NEG, U_EXP, U_LOG, U_SQRT, U_ABS, U_SIGN, U_ADD, U_MUL, U_POW, U_CLAMP, U_IN_RANGE };
// Binary op codes (mirror: binary_code in cuda_kernel.rs).
enum { B_ADD, B_SUB, B_MUL, B_DIV, B_MAXIMUM, B_MINIMUM, B_EQUAL, B_GREATER };

// One unary launch (mirror: UnaryParams, 24 bytes).
struct UnaryParams {
    u64 n;
    u32 op;
    float a;  // scalar / exponent / min
    float b;  // max
    u32 pad;
};
static_assert(sizeof(UnaryParams) == 24, "UnaryParams must match its #[repr(C)] mirror in src/ops/elementwise/cuda_kernel.rs");

// One broadcast launch: output dims and each operand's element strides (0 on broadcast axes).
struct BroadcastParams {
    u64 n;
    u32 rank;
    u32 op;
    u32 dims[MAX_RANK];
    u32 lhs_strides[MAX_RANK];
    u32 rhs_strides[MAX_RANK];
};
static_assert(sizeof(BroadcastParams) == 112, "BroadcastParams must match its #[repr(C)] mirror in src/ops/elementwise/cuda_kernel.rs");

// One fill launch (mirror: FillParams, 16 bytes).
struct FillParams {
    u64 n;
    float value;
    u32 pad;
};
static_assert(sizeof(FillParams) == 16, "FillParams must match its #[repr(C)] mirror in src/ops/elementwise/cuda_kernel.rs");

__device__ __forceinline__ float unary_apply(const UnaryParams& p, float x) {
    switch (p.op) {
        case U_NEG: return -x;
        case U_EXP: return expf(x);
        case U_LOG: return logf(x);
        case U_SQRT: return sqrtf(x);
        case U_ABS: return fabsf(x);
        case U_SIGN: return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
        case U_ADD: return x + p.a;
        case U_MUL: return x * p.a;
        case U_POW:
            if (p.a == 2.0f) return x * x;
            if (p.a == 1.0f) return x;
            if (p.a == 0.0f) return 1.0f;
            return powf(x, p.a);
        case U_CLAMP: return fminf(fmaxf(x, p.a), p.b);
        default: return (x >= p.a && x <= p.b) ? 1.0f : 0.0f;  // U_IN_RANGE
    }
}

__device__ __forceinline__ float binary_apply(u32 op, float a, float b) {
    switch (op) {
        case B_ADD: return a + b;
        case B_SUB: return a - b;
        case B_MUL: return a * b;
        case B_DIV: return a / b;
        case B_MAXIMUM: return (a >= b || a != a) ? a : b;  // NaN in a wins, as on the CPU
        case B_MINIMUM: return (a <= b || a != a) ? a : b;
        case B_EQUAL: return a == b ? 1.0f : 0.0f;
        default: return a > b ? 1.0f : 0.0f;  // B_GREATER
    }
}

// Operand offsets of output element `idx`: peel the output coordinates, last axis first.
__device__ __forceinline__ void broadcast_offsets(const BroadcastParams& p, u64 idx, u64* lhs,
                                                  u64* rhs) {
    u64 l = 0, r = 0;
    for (int axis = (int)p.rank - 1; axis >= 0; --axis) {
        const u64 coord = idx % p.dims[axis];
        idx /= p.dims[axis];
        l += coord * p.lhs_strides[axis];
        r += coord * p.rhs_strides[axis];
    }
    *lhs = l;
    *rhs = r;
}

// out[i] = op(x[i]): one thread per element.
extern "C" __global__ void unary(UnaryParams p, const float* __restrict__ x,
                                 float* __restrict__ out) {
    FOR_EACH_INDEX(i, p.n) { out[i] = unary_apply(p, x[i]); }
}

// out[i] = op(lhs[i], rhs[i]) for operands of the output's shape (the common fast path).
extern "C" __global__ void binary_same_shape(BroadcastParams p, const float* __restrict__ lhs,
                                             const float* __restrict__ rhs,
                                             float* __restrict__ out) {
    FOR_EACH_INDEX(i, p.n) { out[i] = binary_apply(p.op, lhs[i], rhs[i]); }
}

// out[i] = op(lhs[bcast(i)], rhs[bcast(i)]): each thread maps its output index to both operands.
extern "C" __global__ void binary_broadcast(BroadcastParams p, const float* __restrict__ lhs,
                                            const float* __restrict__ rhs,
                                            float* __restrict__ out) {
    FOR_EACH_INDEX(i, p.n) {
        u64 l, r;
        broadcast_offsets(p, i, &l, &r);
        out[i] = binary_apply(p.op, lhs[l], rhs[r]);
    }
}

// out[i] = x[bcast(i)] (the lhs strides of the params describe x).
extern "C" __global__ void broadcast_to(BroadcastParams p, const float* __restrict__ x,
                                        float* __restrict__ out) {
    FOR_EACH_INDEX(i, p.n) {
        u64 l, r;
        broadcast_offsets(p, i, &l, &r);
        out[i] = x[l];
    }
}

// out[i] = value.
extern "C" __global__ void fill(FillParams p, float* __restrict__ out) {
    FOR_EACH_INDEX(i, p.n) { out[i] = p.value; }
}

// Routed-conv family (PatchConvMoE's sparse expert convolution), CUDA twin of the combine and
// routing-weight gradient of src/ops/routed_conv/cpu_kernel.rs:
//   y[t] = Σ_j w[t, j] · s[t, j]   (slot order)        ∂L/∂w[t, j] = ⟨∂L/∂y[t], s[t, j]⟩
// The expert dispatch itself (slot outputs) and its token / weight / bias gradients have no CUDA
// kernel yet. STATUS: compile-checked under NVRTC only; no CUDA header needed.

typedef unsigned int u32;
typedef unsigned long long u64;

#define FOR_EACH_INDEX(idx, n)                                                   \
    for (u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x; idx < (n);        \
         idx += (u64)gridDim.x * blockDim.x)

// Threads per block of the dot-product kernel (mirror: ROUTED_BLOCK in cuda_kernel.rs).
#define ROUTED_BLOCK 256

// One launch (mirror: RoutedParams, 16 bytes): T tokens, k slots, elements of one token output.
struct RoutedParams {
    u32 tokens;
    u32 slots;
    u64 per_token;
};
static_assert(sizeof(RoutedParams) == 16, "RoutedParams must match its #[repr(C)] mirror in src/ops/routed_conv/cuda_kernel.rs");

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

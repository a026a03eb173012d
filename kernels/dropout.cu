// Dropout family: the mask (0 or 1/(1 − p)) from a counter-based RNG, bit-identical to the CPU's
// (src/ops/dropout/cpu_kernel.rs): element i draws splitmix64(seed + (i + 1)·γ), keeps its top
// 24 bits as a uniform u in [0, 1), and is dropped when u < p. Backward is a multiply by the mask.

// One launch (mirror: DropoutParams, 24 bytes).
struct DropoutParams {
    u64 n;
    u64 seed;
    float p;
    float keep_scale;
};
static_assert(sizeof(DropoutParams) == 24, "DropoutParams must match its #[repr(C)] mirror in src/ops/dropout/cuda_kernel.rs");

// Element `index` of the SplitMix64 stream seeded with `seed` (wrapping u64 arithmetic).
__device__ __forceinline__ u64 splitmix64(u64 seed, u64 index) {
    u64 z = seed + (index + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// One thread per element: hash the element's counter, compare with p.
extern "C" __global__ void dropout_mask(DropoutParams p, float* __restrict__ mask) {
    FOR_EACH_INDEX(i, p.n) {
        const float uniform = (float)(splitmix64(p.seed, i) >> 40) * (1.0f / 16777216.0f);
        mask[i] = uniform < p.p ? 0.0f : p.keep_scale;
    }
}

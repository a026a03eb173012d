// Matmul family: batched C[b] = op(A[b]) · op(B[b]) in f32, one tiled SGEMM for the forward and
// both gradients (the launcher picks the transpositions and strides, as the CPU's batched_gemm
// does). Tiles of 64×64 outputs, K in steps of 16, 256 threads with a 4×4 register block each.

#define TILE 64
#define TILE_K 16
#define THREADS 256

// One batched GEMM (mirror: GemmParams, 40 bytes). A is [m, k] ([k, m] when a_transposed), B is
// [k, n] ([n, k] when b_transposed); a stride of 0 shares one matrix across the batch.
struct GemmParams {
    u32 m, n, k;
    u32 a_transposed, b_transposed;
    u32 pad;
    u64 a_stride, b_stride;
};
static_assert(sizeof(GemmParams) == 40, "GemmParams must match its #[repr(C)] mirror in src/ops/matmul/cuda_kernel.rs");

// One 64×64 tile of C[blockIdx.z]: stage A and B tiles in shared memory, accumulate 4×4 per thread.
extern "C" __global__ void sgemm(GemmParams p, const float* __restrict__ a,
                                 const float* __restrict__ b, float* __restrict__ c) {
    __shared__ float a_tile[TILE_K][TILE + 4];
    __shared__ float b_tile[TILE_K][TILE + 4];
    const u64 batch = blockIdx.z;
    a += batch * p.a_stride;
    b += batch * p.b_stride;
    c += batch * (u64)p.m * p.n;
    const u32 tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
    const u32 row0 = blockIdx.y * TILE, col0 = blockIdx.x * TILE;
    float acc[4][4] = {};
    for (u32 k0 = 0; k0 < p.k; k0 += TILE_K) {
        for (u32 e = tid; e < TILE * TILE_K; e += THREADS) {
            // Neighbouring threads read neighbouring addresses in either storage order.
            const u32 i = p.a_transposed ? e % TILE : e / TILE_K;
            const u32 ka = p.a_transposed ? e / TILE : e % TILE_K;
            const u32 gi = row0 + i, gk = k0 + ka;
            a_tile[ka][i] = (gi < p.m && gk < p.k)
                                ? a[p.a_transposed ? (u64)gk * p.m + gi : (u64)gi * p.k + gk]
                                : 0.0f;
            const u32 j = p.b_transposed ? e / TILE_K : e % TILE;
            const u32 kb = p.b_transposed ? e % TILE_K : e / TILE;
            const u32 gj = col0 + j, gkb = k0 + kb;
            b_tile[kb][j] = (gj < p.n && gkb < p.k)
                                ? b[p.b_transposed ? (u64)gj * p.k + gkb : (u64)gkb * p.n + gj]
                                : 0.0f;
        }
        __syncthreads();
        for (u32 kk = 0; kk < TILE_K; ++kk) {
            float av[4], bv[4];
            for (u32 r = 0; r < 4; ++r) av[r] = a_tile[kk][ty * 4 + r];
            for (u32 q = 0; q < 4; ++q) bv[q] = b_tile[kk][tx * 4 + q];
            for (u32 r = 0; r < 4; ++r)
                for (u32 q = 0; q < 4; ++q) acc[r][q] += av[r] * bv[q];
        }
        __syncthreads();
    }
    for (u32 r = 0; r < 4; ++r)
        for (u32 q = 0; q < 4; ++q) {
            const u32 i = row0 + ty * 4 + r, j = col0 + tx * 4 + q;
            if (i < p.m && j < p.n) c[(u64)i * p.n + j] = acc[r][q];
        }
}

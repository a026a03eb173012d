// Conv family: 2-D convolution (NCHW, weights [OC, IC/groups, KH, KW]) as implicit GEMM with
// shared-memory tiling — forward, input gradient (which is also conv-transpose's forward) and
// weight gradient — handling stride, padding, dilation and groups; and depthwise convolution
// (one input channel per group) as its own direct kernels. CUDA twin of src/ops/conv/.
//   forward: out[b,oc,p]   = Σ_{ic,kh,kw} W[oc,ic,kh,kw] · x[b, g·ICg+ic, p·s − pad + k·d]
//   dgrad:   dx[b,ic,q]    = Σ_{oc,kh,kw} W[oc,ic,kh,kw] · g[b, oc, (q + pad − k·d)/s]  (exact)
//   wgrad:   dW[oc,ic,k]   = Σ_{b,p} g[b,oc,p] · x[b, g·ICg+ic, p·s − pad + k·d]
// Each is C[M, N] = A[M, K] · B[K, N] per group (blockIdx.z), with A and B read through index
// maps (the im2col matrix is never materialised). Tiles of 64×64 outputs, K in steps of 16;
// 256 threads each accumulate a 4×4 block in registers.
// A tensor-core (mma.sync) variant is not written yet; this f32 kernel is the reference.

#define TILE 64
#define TILE_K 16
#define THREADS 256

// One convolution (mirror: ConvParams, 72 bytes).
struct ConvParams {
    u32 batch;
    u32 in_channels, in_h, in_w;
    u32 out_channels, out_h, out_w;
    u32 kernel_h, kernel_w;
    u32 stride_h, stride_w;
    u32 pad_top, pad_left;
    u32 dilation_h, dilation_w;
    u32 groups;
    u32 has_bias;
    u32 pad;
};
static_assert(sizeof(ConvParams) == 72, "ConvParams must match its #[repr(C)] mirror in src/ops/conv/cuda_kernel.rs");

// x[b, c, h, w] or 0 outside the image.
__device__ __forceinline__ float pixel(const ConvParams& p, const float* x, u64 b, u64 c, i64 h,
                                       i64 w) {
    if (h < 0 || w < 0 || h >= (i64)p.in_h || w >= (i64)p.in_w) return 0.0f;
    return x[((b * p.in_channels + c) * p.in_h + (u64)h) * p.in_w + (u64)w];
}

// C = A·B over one 64×64 tile, A and B read through the index maps `a(i, k)` and `b(k, j)`;
// the result goes through `store(i, j, value)`.
template <class LoadA, class LoadB, class Store>
__device__ void tile_gemm(u32 m, u32 n, u32 k, const LoadA& a, const LoadB& b, const Store& store) {
    __shared__ float a_tile[TILE_K][TILE + 4];
    __shared__ float b_tile[TILE_K][TILE + 4];
    const u32 tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
    const u32 row0 = blockIdx.y * TILE, col0 = blockIdx.x * TILE;
    float acc[4][4] = {};
    for (u32 k0 = 0; k0 < k; k0 += TILE_K) {
        for (u32 e = tid; e < TILE * TILE_K; e += THREADS) {
            const u32 i = e / TILE_K, kk = e % TILE_K;  // A: neighbours along K
            a_tile[kk][i] = (row0 + i < m && k0 + kk < k) ? a(row0 + i, k0 + kk) : 0.0f;
            const u32 j = e % TILE, kb = e / TILE;      // B: neighbours along N
            b_tile[kb][j] = (col0 + j < n && k0 + kb < k) ? b(k0 + kb, col0 + j) : 0.0f;
        }
        __syncthreads();
        for (u32 kk = 0; kk < TILE_K; ++kk) {
            float av[4], bv[4];
            for (u32 r = 0; r < 4; ++r) av[r] = a_tile[kk][ty * 4 + r];
            for (u32 c = 0; c < 4; ++c) bv[c] = b_tile[kk][tx * 4 + c];
            for (u32 r = 0; r < 4; ++r)
                for (u32 c = 0; c < 4; ++c) acc[r][c] += av[r] * bv[c];
        }
        __syncthreads();
    }
    for (u32 r = 0; r < 4; ++r)
        for (u32 c = 0; c < 4; ++c) {
            const u32 i = row0 + ty * 4 + r, j = col0 + tx * 4 + c;
            if (i < m && j < n) store(i, j, acc[r][c]);
        }
}

// Forward: M = OC/groups, N = B·OH·OW, K = IC/groups·KH·KW.
extern "C" __global__ void conv2d_forward(ConvParams p, const float* __restrict__ x,
                                          const float* __restrict__ weight,
                                          const float* __restrict__ bias,
                                          float* __restrict__ out) {
    const u32 g = blockIdx.z;
    const u32 ocg = p.out_channels / p.groups, icg = p.in_channels / p.groups;
    const u32 taps = p.kernel_h * p.kernel_w, pixels = p.out_h * p.out_w;
    const u32 k = icg * taps;
    auto a = [&](u32 i, u32 kk) { return weight[(u64)(g * ocg + i) * k + kk]; };
    auto b = [&](u32 kk, u32 j) {
        const u32 ic = kk / taps, t = kk % taps, kh = t / p.kernel_w, kw = t % p.kernel_w;
        const u32 bi = j / pixels, q = j % pixels, oh = q / p.out_w, ow = q % p.out_w;
        const i64 h = (i64)oh * p.stride_h - p.pad_top + (i64)kh * p.dilation_h;
        const i64 w = (i64)ow * p.stride_w - p.pad_left + (i64)kw * p.dilation_w;
        return pixel(p, x, bi, g * icg + ic, h, w);
    };
    auto store = [&](u32 i, u32 j, float v) {
        const u32 oc = g * ocg + i, bi = j / pixels, q = j % pixels;
        out[((u64)bi * p.out_channels + oc) * pixels + q] = v + (p.has_bias ? bias[oc] : 0.0f);
    };
    tile_gemm(ocg, p.batch * pixels, k, a, b, store);
}

// Input gradient: M = IC/groups, N = B·H·W, K = OC/groups·KH·KW; a tap contributes only where
// (q + pad − k·d) is a multiple of the stride inside the output.
extern "C" __global__ void conv2d_input_backward(ConvParams p, const float* __restrict__ grad_out,
                                                 const float* __restrict__ weight,
                                                 float* __restrict__ grad_x) {
    const u32 g = blockIdx.z;
    const u32 ocg = p.out_channels / p.groups, icg = p.in_channels / p.groups;
    const u32 taps = p.kernel_h * p.kernel_w, in_pixels = p.in_h * p.in_w;
    auto a = [&](u32 i, u32 kk) {
        const u32 oc = kk / taps, t = kk % taps;
        return weight[((u64)(g * ocg + oc) * icg + i) * taps + t];
    };
    auto b = [&](u32 kk, u32 j) {
        const u32 oc = kk / taps, t = kk % taps, kh = t / p.kernel_w, kw = t % p.kernel_w;
        const u32 bi = j / in_pixels, q = j % in_pixels, ih = q / p.in_w, iw = q % p.in_w;
        const i64 sh = (i64)ih + p.pad_top - (i64)kh * p.dilation_h;
        const i64 sw = (i64)iw + p.pad_left - (i64)kw * p.dilation_w;
        if (sh < 0 || sw < 0 || sh % p.stride_h || sw % p.stride_w) return 0.0f;
        const i64 oh = sh / p.stride_h, ow = sw / p.stride_w;
        if (oh >= (i64)p.out_h || ow >= (i64)p.out_w) return 0.0f;
        return grad_out[(((u64)bi * p.out_channels + g * ocg + oc) * p.out_h + (u64)oh) * p.out_w + (u64)ow];
    };
    auto store = [&](u32 i, u32 j, float v) {
        const u32 bi = j / in_pixels, q = j % in_pixels;
        grad_x[((u64)bi * p.in_channels + g * icg + i) * in_pixels + q] = v;
    };
    tile_gemm(icg, p.batch * in_pixels, ocg * taps, a, b, store);
}

// Weight gradient: M = OC/groups, N = IC/groups·KH·KW, K = B·OH·OW.
extern "C" __global__ void conv2d_weight_backward(ConvParams p, const float* __restrict__ grad_out,
                                                  const float* __restrict__ x,
                                                  float* __restrict__ grad_w) {
    const u32 g = blockIdx.z;
    const u32 ocg = p.out_channels / p.groups, icg = p.in_channels / p.groups;
    const u32 taps = p.kernel_h * p.kernel_w, pixels = p.out_h * p.out_w;
    auto a = [&](u32 i, u32 kk) {
        const u32 bi = kk / pixels, q = kk % pixels;
        return grad_out[((u64)bi * p.out_channels + g * ocg + i) * pixels + q];
    };
    auto b = [&](u32 kk, u32 j) {
        const u32 ic = j / taps, t = j % taps, kh = t / p.kernel_w, kw = t % p.kernel_w;
        const u32 bi = kk / pixels, q = kk % pixels, oh = q / p.out_w, ow = q % p.out_w;
        const i64 h = (i64)oh * p.stride_h - p.pad_top + (i64)kh * p.dilation_h;
        const i64 w = (i64)ow * p.stride_w - p.pad_left + (i64)kw * p.dilation_w;
        return pixel(p, x, bi, g * icg + ic, h, w);
    };
    auto store = [&](u32 i, u32 j, float v) { grad_w[(u64)(g * ocg + i) * icg * taps + j] = v; };
    tile_gemm(ocg, icg * taps, p.batch * pixels, a, b, store);
}

// Depthwise forward (IC/groups = 1): one thread per output sums its KH·KW taps.
extern "C" __global__ void depthwise_forward(ConvParams p, const float* __restrict__ x,
                                             const float* __restrict__ weight,
                                             const float* __restrict__ bias,
                                             float* __restrict__ out) {
    const u32 ocg = p.out_channels / p.groups;
    FOR_EACH_INDEX(idx, (u64)p.batch * p.out_channels * p.out_h * p.out_w) {
        const u32 ow = idx % p.out_w, oh = (idx / p.out_w) % p.out_h;
        const u32 oc = (idx / ((u64)p.out_w * p.out_h)) % p.out_channels;
        const u64 b = idx / ((u64)p.out_w * p.out_h * p.out_channels);
        const u32 c = oc / ocg;
        const float* w = weight + (u64)oc * p.kernel_h * p.kernel_w;
        float acc = 0.0f;
        for (u32 kh = 0; kh < p.kernel_h; ++kh)
            for (u32 kw = 0; kw < p.kernel_w; ++kw) {
                const i64 h = (i64)oh * p.stride_h - p.pad_top + (i64)kh * p.dilation_h;
                const i64 x_w = (i64)ow * p.stride_w - p.pad_left + (i64)kw * p.dilation_w;
                acc += w[kh * p.kernel_w + kw] * pixel(p, x, b, c, h, x_w);
            }
        out[idx] = acc + (p.has_bias ? bias[oc] : 0.0f);
    }
}

// Depthwise input gradient: one thread per input pixel gathers the outputs its taps fed.
extern "C" __global__ void depthwise_input_backward(ConvParams p, const float* __restrict__ grad_out,
                                                    const float* __restrict__ weight,
                                                    float* __restrict__ grad_x) {
    const u32 ocg = p.out_channels / p.groups;
    FOR_EACH_INDEX(idx, (u64)p.batch * p.in_channels * p.in_h * p.in_w) {
        const u32 iw = idx % p.in_w, ih = (idx / p.in_w) % p.in_h;
        const u32 c = (idx / ((u64)p.in_w * p.in_h)) % p.in_channels;
        const u64 b = idx / ((u64)p.in_w * p.in_h * p.in_channels);
        float acc = 0.0f;
        for (u32 m = 0; m < ocg; ++m) {
            const u32 oc = c * ocg + m;
            const float* g = grad_out + (b * p.out_channels + oc) * p.out_h * p.out_w;
            for (u32 kh = 0; kh < p.kernel_h; ++kh)
                for (u32 kw = 0; kw < p.kernel_w; ++kw) {
                    const i64 sh = (i64)ih + p.pad_top - (i64)kh * p.dilation_h;
                    const i64 sw = (i64)iw + p.pad_left - (i64)kw * p.dilation_w;
                    if (sh < 0 || sw < 0 || sh % p.stride_h || sw % p.stride_w) continue;
                    const i64 oh = sh / p.stride_h, ow = sw / p.stride_w;
                    if (oh >= (i64)p.out_h || ow >= (i64)p.out_w) continue;
                    acc += weight[((u64)oc * p.kernel_h + kh) * p.kernel_w + kw] * g[oh * p.out_w + ow];
                }
        }
        grad_x[idx] = acc;
    }
}

// Depthwise weight gradient: one block per (oc, kh, kw) reduces over batch and output pixels
// (shared-memory tree, fixed order).
extern "C" __global__ void depthwise_weight_backward(ConvParams p, const float* __restrict__ grad_out,
                                                     const float* __restrict__ x,
                                                     float* __restrict__ grad_w) {
    __shared__ float partial[THREADS];
    const u32 ocg = p.out_channels / p.groups, taps = p.kernel_h * p.kernel_w;
    const u32 oc = blockIdx.x / taps, t = blockIdx.x % taps, kh = t / p.kernel_w, kw = t % p.kernel_w;
    const u32 c = oc / ocg, pixels = p.out_h * p.out_w;
    float acc = 0.0f;
    for (u64 e = threadIdx.x; e < (u64)p.batch * pixels; e += THREADS) {
        const u64 b = e / pixels;
        const u32 q = e % pixels, oh = q / p.out_w, ow = q % p.out_w;
        const i64 h = (i64)oh * p.stride_h - p.pad_top + (i64)kh * p.dilation_h;
        const i64 w = (i64)ow * p.stride_w - p.pad_left + (i64)kw * p.dilation_w;
        acc += grad_out[(b * p.out_channels + oc) * pixels + q] * pixel(p, x, b, c, h, w);
    }
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (u32 stride = THREADS / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) grad_w[blockIdx.x] = partial[0];
}

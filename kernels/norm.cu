// Norm family: layer norm over the last axis of a [rows, dim] view (at the end of this file), and
// batch norm over an [N, C, S] view — fused per-channel statistics (mean and biased
// variance, two passes in f64 like the CPU), the normalising forward (train and eval use the same
// kernel with batch or running statistics), and the backward (per-channel sums, then dx).
// CUDA twin of src/ops/norm/cpu_kernel.rs:
//   y = (x − mean)·inv_std·w + b,  inv_std = 1/√(var + eps)
//   train: dx = a·g + b'·x + d with a = w·inv_std, b' = −a·inv_std·Σg·x̂/M, d = −a·Σg/M − b'·mean
//   eval:  dx = a·g

// Threads per block of the per-channel kernels (mirror: NORM_BLOCK in cuda_kernel.rs).
#define NORM_BLOCK 256

// One launch (mirror: NormParams, 32 bytes).
struct NormParams {
    u32 outer;
    u32 channels;
    u32 inner;
    u32 has_weight;
    u32 has_bias;
    u32 training;  // backward: through the batch statistics (1) or fixed running ones (0)
    float eps;
    u32 pad;
};
static_assert(sizeof(NormParams) == 32, "NormParams must match its #[repr(C)] mirror in src/ops/norm/cuda_kernel.rs");

// Sum over the block of one f64 per thread: a shared-memory tree in fixed order (deterministic).
__device__ double block_sum(double value) {
    __shared__ double partial[NORM_BLOCK];
    partial[threadIdx.x] = value;
    __syncthreads();
    for (u32 stride = NORM_BLOCK / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    const double total = partial[0];
    __syncthreads();
    return total;
}

// Flat offset of the k-th element of channel c (k over N·S).
__device__ __forceinline__ u64 channel_at(const NormParams& p, u32 c, u64 k) {
    return ((k / p.inner) * p.channels + c) * p.inner + k % p.inner;
}

// One block per channel: mean, then the mean of squared deviations (biased variance).
extern "C" __global__ void batch_norm_statistics(NormParams p, const float* __restrict__ x,
                                                 float* __restrict__ mean_out,
                                                 float* __restrict__ var_out) {
    const u32 c = blockIdx.x;
    const u64 count = (u64)p.outer * p.inner;
    double sum = 0.0;
    for (u64 k = threadIdx.x; k < count; k += NORM_BLOCK) sum += (double)x[channel_at(p, c, k)];
    const double mean = block_sum(sum) / (double)count;
    double squares = 0.0;
    for (u64 k = threadIdx.x; k < count; k += NORM_BLOCK) {
        const double d = (double)x[channel_at(p, c, k)] - mean;
        squares += d * d;
    }
    const double var = block_sum(squares) / (double)count;
    if (threadIdx.x == 0) {
        mean_out[c] = (float)mean;
        var_out[c] = (float)var;
    }
}

// y = x·scale + shift per element, scale and shift from the channel's statistics.
extern "C" __global__ void batch_norm_forward(NormParams p, const float* __restrict__ x,
                                              const float* __restrict__ mean,
                                              const float* __restrict__ var,
                                              const float* __restrict__ weight,
                                              const float* __restrict__ bias,
                                              float* __restrict__ y) {
    FOR_EACH_INDEX(i, (u64)p.outer * p.channels * p.inner) {
        const u32 c = (u32)((i / p.inner) % p.channels);
        const float inv_std = 1.0f / sqrtf(var[c] + p.eps);
        const float scale = inv_std * (p.has_weight ? weight[c] : 1.0f);
        const float shift = (p.has_bias ? bias[c] : 0.0f) - mean[c] * scale;
        y[i] = x[i] * scale + shift;
    }
}

// One block per channel: grad_bias = Σ g, grad_weight = Σ g·(x − mean)·inv_std.
extern "C" __global__ void batch_norm_backward_sums(NormParams p, const float* __restrict__ x,
                                                    const float* __restrict__ grad_out,
                                                    const float* __restrict__ mean,
                                                    const float* __restrict__ var,
                                                    float* __restrict__ grad_weight,
                                                    float* __restrict__ grad_bias) {
    const u32 c = blockIdx.x;
    const u64 count = (u64)p.outer * p.inner;
    const float m = mean[c];
    double sum_g = 0.0, sum_gc = 0.0;
    for (u64 k = threadIdx.x; k < count; k += NORM_BLOCK) {
        const u64 at = channel_at(p, c, k);
        const float g = grad_out[at];
        sum_g += (double)g;
        sum_gc += (double)(g * (x[at] - m));
    }
    sum_g = block_sum(sum_g);
    sum_gc = block_sum(sum_gc);
    if (threadIdx.x == 0) {
        const float inv_std = 1.0f / sqrtf(var[c] + p.eps);
        grad_bias[c] = (float)sum_g;
        grad_weight[c] = (float)(sum_gc * (double)inv_std);
    }
}

// dx per element from the channel's coefficients (training: through the batch statistics).
extern "C" __global__ void batch_norm_backward_input(NormParams p, const float* __restrict__ x,
                                                     const float* __restrict__ grad_out,
                                                     const float* __restrict__ mean,
                                                     const float* __restrict__ var,
                                                     const float* __restrict__ weight,
                                                     const float* __restrict__ grad_weight,
                                                     const float* __restrict__ grad_bias,
                                                     float* __restrict__ grad_x) {
    const float count = (float)((u64)p.outer * p.inner);
    FOR_EACH_INDEX(i, (u64)p.outer * p.channels * p.inner) {
        const u32 c = (u32)((i / p.inner) % p.channels);
        const float inv_std = 1.0f / sqrtf(var[c] + p.eps);
        const float a = (p.has_weight ? weight[c] : 1.0f) * inv_std;
        float b = 0.0f, d = 0.0f;
        if (p.training) {
            b = -a * inv_std * grad_weight[c] / count;
            d = -a * grad_bias[c] / count - b * mean[c];
        }
        grad_x[i] = a * grad_out[i] + b * x[i] + d;
    }
}

// Layer norm over each row of a [rows, dim] view (mirror: LayerNormParams, 24 bytes).
// CUDA twin of the layer norm kernels of src/ops/norm/cpu_kernel.rs:
//   y = x̂·w + b with x̂ = (x − mean)·rstd, rstd = 1/√(var + eps) (biased variance, f64 sums)
//   dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) with ĝ = g·w;  dw = Σ_rows g·x̂;  db = Σ_rows g
struct LayerNormParams {
    u32 rows;
    u32 dim;
    u32 has_weight;
    u32 has_bias;
    float eps;
    u32 pad;
};
static_assert(sizeof(LayerNormParams) == 24, "LayerNormParams must match its #[repr(C)] mirror in src/ops/norm/cuda_kernel.rs");

// One block per row (block-strided over the rows): mean, then the biased variance, then y.
extern "C" __global__ void layer_norm_forward(LayerNormParams p, const float* __restrict__ x,
                                              const float* __restrict__ weight,
                                              const float* __restrict__ bias,
                                              float* __restrict__ y, float* __restrict__ mean_out,
                                              float* __restrict__ rstd_out) {
    for (u64 row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const float* __restrict__ xr = x + row * p.dim;
        double sum = 0.0;
        for (u32 j = threadIdx.x; j < p.dim; j += NORM_BLOCK) sum += (double)xr[j];
        const double mean = block_sum(sum) / (double)p.dim;
        double squares = 0.0;
        for (u32 j = threadIdx.x; j < p.dim; j += NORM_BLOCK) {
            const double d = (double)xr[j] - mean;
            squares += d * d;
        }
        const double var = block_sum(squares) / (double)p.dim;
        const float m = (float)mean, r = (float)(1.0 / sqrt(var + (double)p.eps));
        for (u32 j = threadIdx.x; j < p.dim; j += NORM_BLOCK) {
            const float normalised = (xr[j] - m) * r;
            y[row * p.dim + j] = normalised * (p.has_weight ? weight[j] : 1.0f) + (p.has_bias ? bias[j] : 0.0f);
        }
        if (threadIdx.x == 0) {
            mean_out[row] = m;
            rstd_out[row] = r;
        }
    }
}

// One block per row: the row means of ĝ and ĝ·x̂ (f64), then dx.
extern "C" __global__ void layer_norm_backward_input(LayerNormParams p, const float* __restrict__ x,
                                                     const float* __restrict__ grad_out,
                                                     const float* __restrict__ mean,
                                                     const float* __restrict__ rstd,
                                                     const float* __restrict__ weight,
                                                     float* __restrict__ grad_x) {
    for (u64 row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const u64 base = row * p.dim;
        const float m = mean[row], r = rstd[row];
        double sum = 0.0, sum_normalised = 0.0;
        for (u32 j = threadIdx.x; j < p.dim; j += NORM_BLOCK) {
            const float scaled = grad_out[base + j] * (p.has_weight ? weight[j] : 1.0f);
            sum += (double)scaled;
            sum_normalised += (double)(scaled * ((x[base + j] - m) * r));
        }
        const float mean_g = (float)(block_sum(sum) / (double)p.dim);
        const float mean_gx = (float)(block_sum(sum_normalised) / (double)p.dim);
        for (u32 j = threadIdx.x; j < p.dim; j += NORM_BLOCK) {
            const float scaled = grad_out[base + j] * (p.has_weight ? weight[j] : 1.0f);
            const float normalised = (x[base + j] - m) * r;
            grad_x[base + j] = r * (scaled - mean_g - normalised * mean_gx);
        }
    }
}

// One block per column j (block-strided over the columns): Σ_rows g·x̂ and Σ_rows g (f64).
extern "C" __global__ void layer_norm_backward_parameters(LayerNormParams p,
                                                          const float* __restrict__ x,
                                                          const float* __restrict__ grad_out,
                                                          const float* __restrict__ mean,
                                                          const float* __restrict__ rstd,
                                                          float* __restrict__ grad_weight,
                                                          float* __restrict__ grad_bias) {
    for (u64 j = blockIdx.x; j < p.dim; j += gridDim.x) {
        double sum_gx = 0.0, sum_g = 0.0;
        for (u64 row = threadIdx.x; row < p.rows; row += NORM_BLOCK) {
            const u64 at = row * p.dim + j;
            const float g = grad_out[at];
            sum_gx += (double)(g * ((x[at] - mean[row]) * rstd[row]));
            sum_g += (double)g;
        }
        sum_gx = block_sum(sum_gx);
        sum_g = block_sum(sum_g);
        if (threadIdx.x == 0) {
            grad_weight[j] = (float)sum_gx;
            grad_bias[j] = (float)sum_g;
        }
    }
}

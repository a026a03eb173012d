// Patch-grid split (with halo) and reassemble, forward and backward: the tokens of PatchConvMoE.
// CUDA twin of src/ops/patch_grid/cpu_kernel.rs; layout and formulas in src/ops/patch_grid/mod.rs:
//   split(x)[t = (b, r, c), ch, i, j] = x[b, ch, r*ph - hh + i, c*pw - hw + j]   (0 outside H x W)
//   reassemble(y)[b, ch, r*ph + i, c*pw + j] = y[(b, r, c), ch, i, j]            (cropped to H x W)
// Tokens are ordered batch-major, then patch row, then patch column: t = (b*rows + r)*cols + c.
//
// Launch: kernel(params, input, output).

// Shapes of one launch, passed by value (mirror: a #[repr(C)] Rust struct of ten u32, no
// padding). `rows`/`cols` are ceil(H/ph)/ceil(W/pw), computed once on the host.
struct PatchGridParams {
    u32 batch;
    u32 channels;
    u32 height;
    u32 width;
    u32 patch_h;
    u32 patch_w;
    u32 halo_h;
    u32 halo_w;
    u32 rows;
    u32 cols;
};
static_assert(sizeof(PatchGridParams) == 40, "PatchGridParams must match its #[repr(C)] mirror in src/ops/patch_grid/cuda_kernel.rs");

// Grid-stride loop over the flat indices 0..n of the output.

// Each token element copies the one map pixel it reads, or 0 outside the map (split's gather).
__device__ void gather_tokens(const float* __restrict__ map, float* __restrict__ tokens,
                              const PatchGridParams& p) {
    const u32 token_h = p.patch_h + 2 * p.halo_h;
    const u32 token_w = p.patch_w + 2 * p.halo_w;
    const u64 n = (u64)p.batch * p.rows * p.cols * p.channels * token_h * token_w;
    FOR_EACH_INDEX(idx, n) {
        u64 rest = idx;
        const u32 j = (u32)(rest % token_w);
        rest /= token_w;
        const u32 i = (u32)(rest % token_h);
        rest /= token_h;
        const u32 ch = (u32)(rest % p.channels);
        rest /= p.channels;
        const u32 c = (u32)(rest % p.cols);
        rest /= p.cols;
        const u32 r = (u32)(rest % p.rows);
        const u64 b = rest / p.rows;
        const i64 y = (i64)r * p.patch_h - (i64)p.halo_h + i;
        const i64 x = (i64)c * p.patch_w - (i64)p.halo_w + j;
        float value = 0.0f;
        if (y >= 0 && y < (i64)p.height && x >= 0 && x < (i64)p.width) {
            value = map[((b * p.channels + ch) * p.height + (u64)y) * p.width + (u64)x];
        }
        tokens[idx] = value;
    }
}

// Split: one thread per token element gathers its map pixel (zero padding and halo included).
extern "C" __global__ void patch_split(PatchGridParams p, const float* __restrict__ x, float* __restrict__ tokens) {
    gather_tokens(x, tokens, p);
}

// Split's gradient: one thread per map pixel sums every token element that read it, tokens in
// order (patch row, then column) as the CPU's plane loop does, so sums are deterministic and
// bit-equal to the CPU's; no atomics.
extern "C" __global__ void patch_split_backward(PatchGridParams p, const float* __restrict__ grad_tokens, float* __restrict__ grad_x) {
    const u32 token_h = p.patch_h + 2 * p.halo_h;
    const u32 token_w = p.patch_w + 2 * p.halo_w;
    const u64 n = (u64)p.batch * p.channels * p.height * p.width;
    FOR_EACH_INDEX(idx, n) {
        u64 rest = idx;
        const u32 x = (u32)(rest % p.width);
        rest /= p.width;
        const u32 y = (u32)(rest % p.height);
        rest /= p.height;
        const u32 ch = (u32)(rest % p.channels);
        const u64 b = rest / p.channels;
        // Token row i = (y + hh) - r*ph must lie in [0, token_h): r*ph <= y + hh < r*ph + token_h.
        const u32 yy = y + p.halo_h;
        const u32 xx = x + p.halo_w;
        const u32 r_first = yy + 1 > token_h ? (yy + 1 - token_h + p.patch_h - 1) / p.patch_h : 0;
        const u32 c_first = xx + 1 > token_w ? (xx + 1 - token_w + p.patch_w - 1) / p.patch_w : 0;
        const u32 r_last = min(yy / p.patch_h, p.rows - 1);
        const u32 c_last = min(xx / p.patch_w, p.cols - 1);
        float sum = 0.0f;
        for (u32 r = r_first; r <= r_last; ++r) {
            const u32 i = yy - r * p.patch_h;
            for (u32 c = c_first; c <= c_last; ++c) {
                const u32 j = xx - c * p.patch_w;
                const u64 t = (b * p.rows + r) * p.cols + c;
                sum += grad_tokens[((t * p.channels + ch) * token_h + i) * token_w + j];
            }
        }
        grad_x[idx] = sum;
    }
}

// Reassemble: one thread per map pixel copies the single token element that covers it (tokens
// [T, C, ph, pw] tile the padded map; the halo is ignored and the crop drops the padding).
extern "C" __global__ void patch_reassemble(PatchGridParams p, const float* __restrict__ tokens, float* __restrict__ map) {
    const u64 n = (u64)p.batch * p.channels * p.height * p.width;
    FOR_EACH_INDEX(idx, n) {
        u64 rest = idx;
        const u32 x = (u32)(rest % p.width);
        rest /= p.width;
        const u32 y = (u32)(rest % p.height);
        rest /= p.height;
        const u32 ch = (u32)(rest % p.channels);
        const u64 b = rest / p.channels;
        const u32 r = y / p.patch_h, i = y % p.patch_h;
        const u32 c = x / p.patch_w, j = x % p.patch_w;
        const u64 t = (b * p.rows + r) * p.cols + c;
        map[idx] = tokens[((t * p.channels + ch) * p.patch_h + i) * p.patch_w + j];
    }
}

// Reassemble's gradient: a split without halo (one thread per token element; zeros where a
// patch covers the cropped padding).
extern "C" __global__ void patch_reassemble_backward(PatchGridParams p, const float* __restrict__ grad_map, float* __restrict__ grad_tokens) {
    PatchGridParams no_halo = p;
    no_halo.halo_h = 0;
    no_halo.halo_w = 0;
    gather_tokens(grad_map, grad_tokens, no_halo);
}

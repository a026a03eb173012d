// The prelude of every kernel file: prepended to kernels/<family>.cu before it is compiled, by
// NVRTC for a GPU and by the host C++ compiler for the emulated device (whose own header,
// src/backend/cuda/emu/cuda_emu.h, comes first and defines the CUDA built-ins on the host).
// Nothing here depends on the backend.

typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

// Grid-stride loop: idx runs over 0..n, each thread of the grid taking every (grid size)-th.
#define FOR_EACH_INDEX(idx, n)                                                   \
    for (u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x; idx < (n);        \
         idx += (u64)gridDim.x * blockDim.x)

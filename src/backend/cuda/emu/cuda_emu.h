// The CUDA built-ins on the host, for the emulated device (`cuda-emu`). Compiled in front of
// kernels/prelude.cuh and kernels/<family>.cu by the host C++ compiler, so the kernel files run
// unchanged. The Rust side (src/backend/cuda/emu/) runs every thread of a block as a fiber on
// one OS thread; this header only forwards what needs the scheduler through `EmuHost`:
//   __syncthreads()        -> host->barrier(line): the fiber waits until every thread of its
//                             block is at a barrier (divergence is reported by the host);
//   __shfl_*_sync(...)     -> host->warp(...): the fiber waits for the lanes of its warp and
//                             gets its partner's value;
//   undefined behaviour    -> host->fail(...): the fiber stops, the launch fails (the kernel
//                             is built with -fsanitize=integer-divide-by-zero,float-cast-
//                             overflow,...; the handlers below replace the sanitizer runtime).
// threadIdx & co. read the running fiber's `EmuThread`, which every call that can switch
// fibers restores afterwards. `__shared__` is `static thread_local`: one copy per OS thread,
// and an OS thread runs one block at a time, so it is per block.

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <utility>

struct dim3 {
    unsigned int x, y, z;
};

// One emulated thread: its indices and the launch's shape (mirror: EmuThread in emu/block.rs).
struct EmuThread {
    dim3 thread_idx, block_idx, block_dim, grid_dim;
};

// What the host provides (mirror: EmuHost in emu/block.rs).
struct EmuHost {
    void (*barrier)(unsigned line);
    unsigned long long (*warp)(unsigned kind, unsigned mask, unsigned long long value, int arg,
                               int width, unsigned line);
    [[noreturn]] void (*fail)(const char* what, const char* file, unsigned line, unsigned column);
};

static const EmuHost* emu_host;
static thread_local const EmuThread* emu_thread;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __shared__ static thread_local
#define __launch_bounds__(...)

#define threadIdx (emu_thread->thread_idx)
#define blockIdx (emu_thread->block_idx)
#define blockDim (emu_thread->block_dim)
#define gridDim (emu_thread->grid_dim)
#define warpSize 32

// A call that may run other fibers: the fiber's own EmuThread is put back afterwards.
static inline void emu_barrier(unsigned line) {
    const EmuThread* self = emu_thread;
    emu_host->barrier(line);
    emu_thread = self;
}
#define __syncthreads() emu_barrier(__LINE__)

// Warp exchanges (kinds mirror WarpKind in emu/block.rs): the value travels as 64 bits.
template <class T>
static inline T emu_warp(unsigned kind, unsigned mask, T value, int arg, int width, unsigned line) {
    static_assert(sizeof(T) <= 8, "warp exchanges move at most 64 bits");
    unsigned long long bits = 0;
    memcpy(&bits, &value, sizeof(T));
    const EmuThread* self = emu_thread;
    bits = emu_host->warp(kind, mask, bits, arg, width, line);
    emu_thread = self;
    memcpy(&value, &bits, sizeof(T));
    return value;
}
static inline int emu_width(int width = 32) { return width; }
#define __shfl_sync(mask, v, lane, ...) emu_warp(0u, (mask), (v), (lane), emu_width(__VA_ARGS__), __LINE__)
#define __shfl_xor_sync(mask, v, lane_mask, ...) emu_warp(1u, (mask), (v), (lane_mask), emu_width(__VA_ARGS__), __LINE__)
#define __shfl_down_sync(mask, v, delta, ...) emu_warp(2u, (mask), (v), (delta), emu_width(__VA_ARGS__), __LINE__)
#define __shfl_up_sync(mask, v, delta, ...) emu_warp(3u, (mask), (v), (delta), emu_width(__VA_ARGS__), __LINE__)
#define __syncwarp(...) ((void)emu_warp(4u, 0xffffffffu, 0u, 0, 32, __LINE__))

// Reinterpretations and the float intrinsics the kernels use.
static inline float __int_as_float(int v) { float f; memcpy(&f, &v, 4); return f; }
static inline int __float_as_int(float f) { int v; memcpy(&v, &f, 4); return v; }
static inline float __uint_as_float(unsigned v) { float f; memcpy(&f, &v, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned v; memcpy(&v, &f, 4); return v; }
// __expf and __logf: glibc's declarations serve (plain expf/logf).

// CUDA's min/max overloads: integers in the common type, floats through fminf/fmaxf (NaN loses).
template <class A, class B>
static inline auto min(A a, B b) -> decltype(true ? a : b) { return b < a ? b : a; }
template <class A, class B>
static inline auto max(A a, B b) -> decltype(true ? a : b) { return a < b ? b : a; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
static inline float __fdividef(float a, float b) { return a / b; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

// Atomics: blocks run in parallel on the host's cores, so these are real atomics.
template <class T>
static inline T atomicAdd(T* at, T v) { return __atomic_fetch_add(at, v, __ATOMIC_RELAXED); }
template <class T>
static inline T emu_atomic_float_add(T* at, T v) {
    T old, sum;
    __atomic_load(at, &old, __ATOMIC_RELAXED);
    do {
        sum = old + v;
    } while (!__atomic_compare_exchange(at, &old, &sum, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
static inline float atomicAdd(float* at, float v) { return emu_atomic_float_add(at, v); }
static inline double atomicAdd(double* at, double v) { return emu_atomic_float_add(at, v); }
template <class T>
static inline T atomicMax(T* at, T v) {
    T old = __atomic_load_n(at, __ATOMIC_RELAXED);
    while (old < v && !__atomic_compare_exchange_n(at, &old, v, false, __ATOMIC_RELAXED,
                                                   __ATOMIC_RELAXED)) {
    }
    return old;
}
template <class T>
static inline T atomicMin(T* at, T v) {
    T old = __atomic_load_n(at, __ATOMIC_RELAXED);
    while (old > v && !__atomic_compare_exchange_n(at, &old, v, false, __ATOMIC_RELAXED,
                                                   __ATOMIC_RELAXED)) {
    }
    return old;
}
template <class T>
static inline T atomicExch(T* at, T v) { return __atomic_exchange_n(at, v, __ATOMIC_RELAXED); }
template <class T>
static inline T atomicCAS(T* at, T expected, T v) {
    __atomic_compare_exchange_n(at, &expected, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return expected;
}

// The undefined-behaviour sanitizer's handlers (GCC's and Clang's names), reporting through the
// host: every handler's first argument starts with the source location.
struct EmuSourceLocation {
    const char* file;
    unsigned line, column;
};
#define EMU_UBSAN(name, what, ...)                                                         \
    extern "C" void __ubsan_handle_##name(void* data, ##__VA_ARGS__) {                     \
        const EmuSourceLocation* at = (const EmuSourceLocation*)data;                      \
        emu_host->fail(what, at->file, at->line, at->column);                              \
    }                                                                                      \
    extern "C" void __ubsan_handle_##name##_abort(void* data, ##__VA_ARGS__) {             \
        const EmuSourceLocation* at = (const EmuSourceLocation*)data;                      \
        emu_host->fail(what, at->file, at->line, at->column);                              \
    }
EMU_UBSAN(divrem_overflow, "integer division by zero (or INT_MIN / -1)", void*, void*)
EMU_UBSAN(float_cast_overflow, "float-to-integer conversion of NaN or an out-of-range value", void*)
EMU_UBSAN(shift_out_of_bounds, "shift by a negative amount or by the width of the type or more", void*, void*)
EMU_UBSAN(add_overflow, "signed integer overflow in +", void*, void*)
EMU_UBSAN(sub_overflow, "signed integer overflow in -", void*, void*)
EMU_UBSAN(mul_overflow, "signed integer overflow in *", void*, void*)
EMU_UBSAN(negate_overflow, "signed integer overflow in unary -", void*)
EMU_UBSAN(out_of_bounds, "index out of the bounds of a fixed-size array", void*)
EMU_UBSAN(vla_bound_not_positive, "variable-length array of non-positive length", void*)
EMU_UBSAN(load_invalid_value, "load of an invalid bool or enum value", void*)
EMU_UBSAN(type_mismatch_v1, "null or misaligned pointer access", void*)
EMU_UBSAN(builtin_unreachable, "__builtin_unreachable reached")
EMU_UBSAN(missing_return, "end of a value-returning function reached without a return")
#undef EMU_UBSAN

// Calls `kernel(params, buffers[0], buffers[1], ...)` for the thread `thread`.
template <class P, class... Buffers, size_t... I>
static inline void emu_call(void (*kernel)(P, Buffers...), const void* params,
                            void* const* buffers, std::index_sequence<I...>) {
    P p;
    memcpy((void*)&p, params, sizeof(P));
    kernel(p, static_cast<Buffers>(buffers[I])...);
}
template <class P, class... Buffers>
static inline void emu_run(void (*kernel)(P, Buffers...), const EmuThread* thread,
                           const void* params, void* const* buffers) {
    emu_thread = thread;
    emu_call(kernel, params, buffers, std::index_sequence_for<Buffers...>{});
}
// The kernel's parameter-struct size and number of buffers, checked against the launcher's.
template <class P, class... Buffers>
static inline void emu_signature(void (*)(P, Buffers...), size_t* params_size,
                                 size_t* buffers) {
    *params_size = sizeof(P);
    *buffers = sizeof...(Buffers);
}

#define EMU_EXPORT extern "C" __attribute__((visibility("default")))
EMU_EXPORT void emu_init(const EmuHost* host) { emu_host = host; }
// Makes sure this OS thread's copy of the file's thread-locals (the __shared__ arrays) exists,
// so the host can fill it with NaN bytes before each block: shared memory starts undefined on
// a GPU, and a kernel that reads it before writing must not see the previous block's values.
EMU_EXPORT void emu_touch_shared(void) { emu_thread = nullptr; }

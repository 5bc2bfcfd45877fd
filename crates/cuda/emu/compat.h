// The emulated CUDA device's compatibility header: lets the kernels' own .cu text
// compile as host C++ (g++/clang++, through the `cc` crate in build.rs). Each thread of
// a block is a fiber (emu/runtime.cpp); `__syncthreads` and every warp operation are
// barriers of the block's or the warp's fibers, so a kernel that needs them runs as it
// would on the device, one block at a time, blocks in grid order.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#define HYPERION_EMU 1
#define __global__ __attribute__((visibility("hidden")))
#define __device__ static
#define __forceinline__ inline
#define __host__
#define __restrict__ __restrict
#define __launch_bounds__(...)
// Shared memory: one copy per OS thread (a block runs on one), shared by its fibers.
#define __shared__ static thread_local

struct emu_dim3 {
    unsigned x, y, z;
};

extern "C" {
// The running fiber's thread index and lane, the launch's block index and sizes.
const emu_dim3* emu_thread_idx(void);
const emu_dim3* emu_block_idx(void);
const emu_dim3* emu_block_dim(void);
const emu_dim3* emu_grid_dim(void);
void emu_syncthreads(void);
// One warp exchange: every live lane of `mask` posts `v`; returns lane `src`'s value.
// `src` < 0: returns the ballot of the lanes' (v != 0) instead.
uint32_t emu_warp_exchange(uint32_t mask, uint32_t v, int src);
void emu_syncwarp(uint32_t mask);
void* emu_dynamic_shared(void);
unsigned emu_lane(void);
}

#define threadIdx (*emu_thread_idx())
#define blockIdx (*emu_block_idx())
#define blockDim (*emu_block_dim())
#define gridDim (*emu_grid_dim())
#define warpSize 32

static inline void __syncthreads(void) { emu_syncthreads(); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) { emu_syncwarp(mask); }

// Dynamic shared memory (the launch's shared-memory bytes): the kernels spell it
// DYNAMIC_SHARED(type, name), which the prelude maps to `extern __shared__` under NVRTC.
#define EMU_DYNAMIC_SHARED(T, name) T* name = (T*)emu_dynamic_shared()

// Bit casts and intrinsics.
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline long long __double_as_longlong(double d) { long long l; memcpy(&l, &d, 8); return l; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
// glibc declares __expf and __logf itself: the device's fast forms as macros.
#define __expf(x) expf(x)
#define __logf(x) logf(x)
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

// Warp shuffles and votes: lanes of one warp exchange through the runtime.
static inline unsigned emu_bits(float v) { return __float_as_uint(v); }
static inline unsigned emu_bits(int v) { return (unsigned)v; }
static inline unsigned emu_bits(unsigned v) { return v; }
template <typename T> static inline T emu_from(unsigned b);
template <> inline float emu_from<float>(unsigned b) { return __uint_as_float(b); }
template <> inline int emu_from<int>(unsigned b) { return (int)b; }
template <> inline unsigned emu_from<unsigned>(unsigned b) { return b; }

template <typename T> static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    unsigned lane = emu_lane();
    int base = (int)(lane & ~(unsigned)(width - 1));
    return emu_from<T>(emu_warp_exchange(mask, emu_bits(v), base + (src & (width - 1))));
}
template <typename T> static inline T __shfl_xor_sync(unsigned mask, T v, int o, int width = 32) {
    unsigned lane = emu_lane();
    int base = (int)(lane & ~(unsigned)(width - 1));
    return emu_from<T>(emu_warp_exchange(mask, emu_bits(v), base + (((int)lane ^ o) & (width - 1))));
}
template <typename T> static inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
    unsigned lane = emu_lane();
    unsigned in = (lane & (unsigned)(width - 1)) + d;
    int src = in < (unsigned)width ? (int)(lane + d) : (int)lane;
    return emu_from<T>(emu_warp_exchange(mask, emu_bits(v), src));
}
template <typename T> static inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) {
    unsigned lane = emu_lane();
    int src = (lane & (unsigned)(width - 1)) >= d ? (int)(lane - d) : (int)lane;
    return emu_from<T>(emu_warp_exchange(mask, emu_bits(v), src));
}
static inline unsigned __ballot_sync(unsigned mask, int p) { return emu_warp_exchange(mask, p != 0, -1); }
static inline int __any_sync(unsigned mask, int p) { return __ballot_sync(mask, p) != 0; }
static inline int __all_sync(unsigned mask, int p) { return (__ballot_sync(mask, p) & mask) == (mask & __ballot_sync(mask, 1)); }

// Atomics (blocks run one at a time on one OS thread; these are atomic anyway).
static inline float atomicAdd(float* p, float v) {
    float old = *p;
    *p = old + v;
    return old;
}
static inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline int atomicMax(int* p, int v) {
    int old = *p;
    if (v > old) *p = v;
    return old;
}
static inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) {
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return cmp;
}

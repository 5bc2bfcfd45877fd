// Shared by every kernel source (prepended before compilation; NVRTC sees one file).
// Conventions as the CPU kernels crate: row-major, backward kernels ADD (+=) into the
// gradients they produce. Reductions use a fixed order (shuffles, then shared memory in
// warp order), so results do not depend on timing.
//
// Storage type. Activations, parameters as the model reads them, and gradients are
// `floatX`: a source that uses it is compiled twice, as f32 (floatX = float) and with
// HYPERION_BF16 defined (floatX = bf16x, every kernel renamed NAME_bf16 by the build).
// Arithmetic is f32 either way: a bf16x converts to float when read and rounds to
// nearest even when written. Statistics (norm mean/rstd, attention lse, losses), fp32
// master weights and Adam moments stay `float`.

typedef unsigned int u32;
// Dynamic shared memory (the launch's shared-memory bytes) as `T* name`: the emulated
// device's compatibility header (crates/cuda/emu/compat.h) maps it to its per-block buffer.
#ifdef HYPERION_EMU
#define DYNAMIC_SHARED(T, name) EMU_DYNAMIC_SHARED(T, name)
#else
#define DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif
// No math.h under NVRTC: -inf by its bits.
#define NEG_INF __int_as_float(0xff800000)
typedef unsigned short bf16_bits;

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024), the same value on
// every thread. `scratch` holds 32 floats of shared memory.
__device__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(t);
}

__device__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < warps ? scratch[lane] : NEG_INF;
    return warp_max(t);
}

// bf16 as its 16 bits (no cuda_bf16.h in NVRTC): round to nearest even, NaN kept NaN.
__device__ __forceinline__ bf16_bits f32_to_bf16_bits(float x) {
    u32 u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_bits)0x7fc0u;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_bits)(u >> 16);
}

__device__ __forceinline__ float bf16_bits_to_f32(bf16_bits b) {
    return __uint_as_float(((u32)b) << 16);
}

// Member functions: the emulator's `__device__` is `static`, which a member cannot be.
#ifdef HYPERION_EMU
#define MEMBER inline
#else
#define MEMBER __device__ __forceinline__
#endif

// A bf16 element of device memory (2 bytes): reads as float, writes round. No
// converting constructor, so `c ? x[i] : 0.0f` has one meaning (float).
struct bf16x {
    bf16_bits bits;
    MEMBER operator float() const { return bf16_bits_to_f32(bits); }
    MEMBER bf16x& operator=(float x) {
        bits = f32_to_bf16_bits(x);
        return *this;
    }
    MEMBER bf16x& operator+=(float x) { return *this = (float)*this + x; }
    MEMBER bf16x& operator*=(float x) { return *this = (float)*this * x; }
};

#ifdef HYPERION_BF16
typedef bf16x floatX;
#else
typedef float floatX;
#endif

// Kernels that test the device (and the emulated device's model of it), not the model:
// warp shuffles and votes, dynamic shared memory, atomics, and two deliberately wrong
// kernels the emulator must refuse (tests/emu_checks.rs; never launched on a GPU).

// out[i] for thread i of one block: lanes' xor-butterfly sum, shfl_down sum at lane 0,
// shfl_up prefix, the warp's ballot of odd lanes; a block-wide reversal through dynamic
// shared memory; an atomic count.
extern "C" __global__ void selftest_warps(float* sums, float* down, float* up, u32* ballot, float* reversed, u32* count, const float* x) {
    DYNAMIC_SHARED(float, smem);
    unsigned i = threadIdx.x, lane = i & 31;
    float v = x[blockIdx.x * blockDim.x + i];
    float s = v;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    float d = v;
    for (int o = 16; o > 0; o >>= 1) d += __shfl_down_sync(0xffffffffu, d, o);
    float u = v;
    for (int o = 1; o < 32; o <<= 1) {
        float t = __shfl_up_sync(0xffffffffu, u, o);
        if (lane >= (unsigned)o) u += t;
    }
    u32 b = __ballot_sync(0xffffffffu, lane & 1);
    smem[i] = v;
    __syncthreads();
    long k = blockIdx.x * blockDim.x + i;
    sums[k] = s;
    down[k] = d;
    up[k] = u;
    ballot[k] = b;
    reversed[k] = smem[blockDim.x - 1 - i];
    atomicAdd(count, 1u);
}

// Wrong on purpose: only even threads reach the barrier.
extern "C" __global__ void selftest_divergent_barrier(float* x) {
    if (threadIdx.x % 2 == 0) {
        __syncthreads();
        x[threadIdx.x] = 1.0f;
    }
}

// Wrong on purpose: the upper half of the warp exits before a full-mask shuffle.
extern "C" __global__ void selftest_shuffle_after_exit(float* x) {
    if (threadIdx.x >= 16) return;
    x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, x[threadIdx.x], 1);
}

// Fused softmax cross-entropy over logit rows (rows, v), one block per row: the loss
// per row, and the logits overwritten by scale * (softmax - onehot(target)).

extern "C" __global__ void xent_forward_backward(floatX* logits, float* losses, const u32* targets, long rows, long v, float scale, int backward) {
    __shared__ float scratch[32];
    long r = blockIdx.x;
    if (r >= rows) return;
    floatX* z = logits + r * v;
    float m = NEG_INF;
    for (long j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, z[j]);
    m = block_max(m, scratch);
    float s = 0.0f;
    for (long j = threadIdx.x; j < v; j += blockDim.x) s += expf(z[j] - m);
    s = block_sum(s, scratch);
    long tg = targets[r];
    __syncthreads();
    float zt = z[tg];
    if (threadIdx.x == 0) losses[r] = (logf(s) + m) - zt;
    if (!backward) return;
    __syncthreads();
    float inv = 1.0f / s;
    for (long j = threadIdx.x; j < v; j += blockDim.x) z[j] = scale * (expf(z[j] - m) * inv - (j == tg ? 1.0f : 0.0f));
}

// Vocabulary-parallel pieces (this rank holds columns [first, first + v) of the whole
// vocabulary): per row the local max and the target's logit (0 where not held)...
extern "C" __global__ void xent_parallel_stats(const floatX* logits, const u32* targets, long first, long rows, long v, float* max_out,
                                               float* picked) {
    __shared__ float scratch[32];
    long r = blockIdx.x;
    if (r >= rows) return;
    const floatX* z = logits + r * v;
    float m = NEG_INF;
    for (long j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, z[j]);
    m = block_max(m, scratch);
    if (threadIdx.x == 0) {
        long tg = (long)targets[r] - first;
        max_out[r] = m;
        picked[r] = (tg >= 0 && tg < v) ? z[tg] : 0.0f;
    }
}

// ... then, with the group's max, exp(z - max) in place and its row sum ...
extern "C" __global__ void xent_parallel_exp(floatX* logits, const float* max_in, long rows, long v, float* sum_out) {
    __shared__ float scratch[32];
    long r = blockIdx.x;
    if (r >= rows) return;
    floatX* z = logits + r * v;
    float s = 0.0f;
    for (long j = threadIdx.x; j < v; j += blockDim.x) {
        float e = expf(z[j] - max_in[r]);
        z[j] = e;
        s += e;
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) sum_out[r] = s;
}

// ... and with the group's sums the gradient scale * (e / sum - onehot).
extern "C" __global__ void xent_parallel_grad(floatX* logits, const float* sum_in, const u32* targets, long first, long rows, long v, float scale) {
    long n = rows * v;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        long r = i / v, j = i % v;
        long tg = (long)targets[r] - first;
        logits[i] = scale * (logits[i] / sum_in[r] - (j == tg ? 1.0f : 0.0f));
    }
}

// AdamW on fp32 master weights (Loshchilov & Hutter 2019) in the CPU kernel's exact
// form (kernels::adamw_step): the host computes step = lr / (1 - b1^t) and
// bc2_sqrt = sqrt(1 - b2^t) in f64, and decay = 1 - lr wd; g is scaled by the clipping
// factor (the host's clip-then-step, one multiplication either way);
// m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p = p decay - step m / (sqrt(v) / bc2_sqrt + eps).
// `pw`, when not null, receives the weights as the model reads them (the bf16 copy).
extern "C" __global__ void adamw(float* p, floatX* pw, const floatX* g, float* m, float* v, long n, float clip, float step, float b1, float b2,
                                 float eps, float decay, float bc2_sqrt) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float gi = clip == 1.0f ? (float)g[i] : g[i] * clip;
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        float pi = p[i] * decay - step * mi / denom;
        p[i] = pi;
        if (pw) pw[i] = pi;
    }
}

// Sum of squares, first pass: block k of a fixed grid sums a grid-stride share into
// partial[k]; the host adds the partials in order in f64 (the global gradient norm).
extern "C" __global__ void sum_squares_partial(float* partial, const floatX* x, long n) {
    __shared__ float scratch[32];
    float s = 0.0f;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float xi = x[i];
        s += xi * xi;
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

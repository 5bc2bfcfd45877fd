// AdamW on fp32 master weights (Loshchilov & Hutter 2019) in the CPU kernel's exact
// form (kernels::adamw_step): the host computes step = lr / (1 - b1^t) and
// bc2_sqrt = sqrt(1 - b2^t) in f64, and decay = 1 - lr wd; g is scaled by the clipping
// factor (the CPU's clip-then-step, one multiplication either way);
// m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p = p decay - step m / (sqrt(v) / bc2_sqrt + eps).
// `pw`, when not null, receives the weights as the model reads them (the bf16 copy).
// The clipping factor is read from the device (`norm_clip` wrote it); NaN there means
// the step's gradient norm was not finite: the numerics guard, nothing is updated.
extern "C" __global__ void adamw(float* p, floatX* pw, const floatX* g, float* m, float* v, long n, const float* clip_at, float step, float b1,
                                 float b2, float eps, float decay, float bc2_sqrt) {
    float clip = *clip_at;
    if (clip != clip) return;
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

// The global gradient norm on the device, in the host's arithmetic: the partial sums
// added in order in f64 into sumsq[0] (one thread: a few thousand numbers)...
extern "C" __global__ void norm_total(double* sumsq, const float* partials, long n) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double s = 0.0;
    for (long i = 0; i < n; i++) s += (double)partials[i];
    sumsq[0] = s;
}

// ... summed over a group's ranks in rank order (their sums gathered, `size` of them) ...
extern "C" __global__ void norm_ranks(double* sumsq, const double* gathered, long size) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double s = 0.0;
    for (long r = 0; r < size; r++) s += gathered[r];
    sumsq[0] = s;
}

// ... then the norm (kept for logging) and the clipping factor, torch's
// clip_grad_norm_ rule as the CPU's clip_factor: max_norm / (norm + 1e-6) when clipping
// is on and the norm exceeds it, else 1; NaN when the norm is not finite.
extern "C" __global__ void norm_clip(float* clip, double* norm, const double* sumsq, double max_norm) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double s = sumsq[0];
    double nrm = sqrt(s);
    norm[0] = nrm;
    float c = 1.0f;
    // Finite by its exponent bits (no comparison with a NaN, which traps in the emulator).
    if (((__double_as_longlong(nrm) >> 52) & 0x7ff) == 0x7ff) c = __int_as_float(0x7fc00000);
    else if (max_norm > 0.0 && nrm > max_norm) c = (float)(max_norm / (nrm + 1e-6));
    clip[0] = c;
}

// LayerNorm and RMSNorm over rows of c channels, one block per row. The weight (and
// bias) gradients are written per row into `partial` buffers (rows, c) and summed by
// `column_sum_add` in row order, so they are deterministic.

// One row's norm: LayerNorm (with mean, and b when not null) or RMSNorm when `rms`;
// its statistics written by thread 0. Every forward norm kernel runs this, so the fused
// residual form gives the unfused kernels' bits.
__device__ void norm_row(floatX* out, float* mean, float* rstd, const floatX* xr, const floatX* w, const floatX* b, long r, long c, float eps, int rms,
                         float* scratch) {
    float m = 0.0f;
    if (!rms) {
        float s = 0.0f;
        for (long j = threadIdx.x; j < c; j += blockDim.x) s += xr[j];
        m = block_sum(s, scratch) / (float)c;
    }
    float v = 0.0f;
    for (long j = threadIdx.x; j < c; j += blockDim.x) {
        float d = xr[j] - m;
        v += d * d;
    }
    float rs = rsqrtf(block_sum(v, scratch) / (float)c + eps);
    for (long j = threadIdx.x; j < c; j += blockDim.x) {
        float y = (xr[j] - m) * rs * w[j];
        out[r * c + j] = b ? y + b[j] : y;
    }
    if (threadIdx.x == 0) {
        if (!rms) mean[r] = m;
        rstd[r] = rs;
    }
}

extern "C" __global__ void layernorm_forward(floatX* out, float* mean, float* rstd, const floatX* x, const floatX* w, const floatX* b,
                                             long rows, long c, float eps) {
    __shared__ float scratch[32];
    long r = blockIdx.x;
    if (r >= rows) return;
    norm_row(out, mean, rstd, x + r * c, w, b, r, c, eps, 0, scratch);
}

// dx += rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = dout w;
// dw_partial[r] = dout xhat, db_partial[r] = dout (when db_partial is not null).
extern "C" __global__ void layernorm_backward(floatX* dx, floatX* dw_partial, floatX* db_partial, const floatX* dout, const floatX* x, const floatX* w,
                                              const float* mean, const float* rstd, long rows, long c) {
    __shared__ float scratch[32];
    long r = blockIdx.x;
    if (r >= rows) return;
    const floatX *xr = x + r * c, *dr = dout + r * c;
    float m = mean[r], rs = rstd[r];
    float a = 0.0f, bsum = 0.0f;
    for (long j = threadIdx.x; j < c; j += blockDim.x) {
        float xhat = (xr[j] - m) * rs;
        float dxhat = dr[j] * w[j];
        a += dxhat;
        bsum += dxhat * xhat;
    }
    float mean_d = block_sum(a, scratch) / (float)c;
    float mean_dx = block_sum(bsum, scratch) / (float)c;
    for (long j = threadIdx.x; j < c; j += blockDim.x) {
        float xhat = (xr[j] - m) * rs;
        float dxhat = dr[j] * w[j];
        dx[r * c + j] += rs * (dxhat - mean_d - xhat * mean_dx);
        dw_partial[r * c + j] = dr[j] * xhat;
        if (db_partial) db_partial[r * c + j] = dr[j];
    }
}

extern "C" __global__ void rmsnorm_forward(floatX* out, float* rstd, const floatX* x, const floatX* w, long rows, long c, float eps) {
    __shared__ float scratch[32];
    long r = blockIdx.x;
    if (r >= rows) return;
    norm_row(out, 0, rstd, x + r * c, w, 0, r, c, eps, 1, scratch);
}

// dx += rstd (dxhat - xhat mean(dxhat xhat)), dxhat = dout w; dw_partial[r] = dout xhat.
extern "C" __global__ void rmsnorm_backward(floatX* dx, floatX* dw_partial, const floatX* dout, const floatX* x, const floatX* w, const float* rstd,
                                            long rows, long c) {
    __shared__ float scratch[32];
    long r = blockIdx.x;
    if (r >= rows) return;
    const floatX *xr = x + r * c, *dr = dout + r * c;
    float rs = rstd[r];
    float a = 0.0f;
    for (long j = threadIdx.x; j < c; j += blockDim.x) a += dr[j] * w[j] * xr[j] * rs;
    float mean_dx = block_sum(a, scratch) / (float)c;
    for (long j = threadIdx.x; j < c; j += blockDim.x) {
        float xhat = xr[j] * rs;
        dx[r * c + j] += rs * (dr[j] * w[j] - xhat * mean_dx);
        dw_partial[r * c + j] = dr[j] * xhat;
    }
}

// The residual add fused with the next norm (one pass over the row instead of two):
// res += delta, then out = norm(res) with its statistics (see norm_row). The sum is
// stored first and read back, so the norm sees the stored (in bf16, rounded) residual
// exactly as the unfused add_inplace + layernorm_forward / rmsnorm_forward do.
extern "C" __global__ void residual_norm_forward(floatX* res, const floatX* delta, floatX* out, float* mean, float* rstd, const floatX* w,
                                                 const floatX* b, long rows, long c, float eps, int rms) {
    __shared__ float scratch[32];
    long r = blockIdx.x;
    if (r >= rows) return;
    floatX* xr = res + r * c;
    const floatX* dr = delta + r * c;
    for (long j = threadIdx.x; j < c; j += blockDim.x) xr[j] = xr[j] + dr[j];
    norm_row(out, mean, rstd, xr, w, b, r, c, eps, rms, scratch);
}

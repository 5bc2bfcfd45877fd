// Causal attention with the probabilities materialised (the correctness path): the
// host runs the two GEMMs per head group with cuBLAS (scores = q k^T, out = p v and
// their gradients); these kernels move heads in and out of packed rows and run the
// causal softmax and its backward. GQA: query head h reads key/value head h / (nh / nkv).

// Element i of packed rows (b, t, [q | k | v]): which part it is (0 q, 1 k, 2 v) and
// its index in that part's head-major layout, q (b, nh, t, hd), k and v (b, nkv, t, hd).
__device__ __forceinline__ long head_major(long i, long t, long nh, long nkv, long hd, int* part) {
    long width = (nh + 2 * nkv) * hd;
    long col = i % width, row = i / width;
    long bi = row / t, ti = row % t;
    long h = col / hd, d = col % hd;
    if (h < nh) {
        *part = 0;
        return ((bi * nh + h) * t + ti) * hd + d;
    }
    *part = h < nh + nkv ? 1 : 2;
    long j = h - nh - (*part == 2 ? nkv : 0);
    return ((bi * nkv + j) * t + ti) * hd + d;
}

extern "C" __global__ void qkv_split(float* q, float* k, float* v, const float* qkv, long b, long t, long nh, long nkv, long hd) {
    long n = b * t * (nh + 2 * nkv) * hd;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        int part;
        long j = head_major(i, t, nh, nkv, hd, &part);
        (part == 0 ? q : part == 1 ? k : v)[j] = qkv[i];
    }
}

// The inverse, adding: d qkv rows += (dq, dk, dv) in head-major layouts.
extern "C" __global__ void qkv_merge_add(float* dqkv, const float* dq, const float* dk, const float* dv, long b, long t, long nh, long nkv,
                                         long hd) {
    long n = b * t * (nh + 2 * nkv) * hd;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        int part;
        long j = head_major(i, t, nh, nkv, hd, &part);
        dqkv[i] += (part == 0 ? dq : part == 1 ? dk : dv)[j];
    }
}

// (b, nh, t, hd) <-> (b, t, nh hd).
extern "C" __global__ void heads_to_rows(float* out, const float* o, long b, long t, long nh, long hd) {
    long n = b * t * nh * hd;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        long d = i % hd, h = (i / hd) % nh, ti = (i / (hd * nh)) % t, bi = i / (hd * nh * t);
        out[i] = o[((bi * nh + h) * t + ti) * hd + d];
    }
}

extern "C" __global__ void rows_to_heads(float* o, const float* rows, long b, long t, long nh, long hd) {
    long n = b * t * nh * hd;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        long d = i % hd, h = (i / hd) % nh, ti = (i / (hd * nh)) % t, bi = i / (hd * nh * t);
        o[((bi * nh + h) * t + ti) * hd + d] = rows[i];
    }
}

// Row r of (rows, t) scores, query position r % t: p = softmax(scale * s) over keys
// 0..=pos, 0 above the diagonal. One block per row.
extern "C" __global__ void causal_softmax_forward(float* p, const float* s, long rows, long t, float scale) {
    __shared__ float scratch[32];
    long r = blockIdx.x;
    if (r >= rows) return;
    long pos = r % t;
    const float* sr = s + r * t;
    float m = NEG_INF;
    for (long j = threadIdx.x; j <= pos; j += blockDim.x) m = fmaxf(m, scale * sr[j]);
    m = block_max(m, scratch);
    float z = 0.0f;
    for (long j = threadIdx.x; j <= pos; j += blockDim.x) z += expf(scale * sr[j] - m);
    z = block_sum(z, scratch);
    float inv = 1.0f / z;
    for (long j = threadIdx.x; j < t; j += blockDim.x) p[r * t + j] = j <= pos ? expf(scale * sr[j] - m) * inv : 0.0f;
}

// ds = scale * p * (dp - sum_j dp_j p_j), written (not added): the scores' gradient.
extern "C" __global__ void causal_softmax_backward(float* ds, const float* dp, const float* p, long rows, long t, float scale) {
    __shared__ float scratch[32];
    long r = blockIdx.x;
    if (r >= rows) return;
    long pos = r % t;
    float a = 0.0f;
    for (long j = threadIdx.x; j <= pos; j += blockDim.x) a += dp[r * t + j] * p[r * t + j];
    a = block_sum(a, scratch);
    for (long j = threadIdx.x; j < t; j += blockDim.x) ds[r * t + j] = j <= pos ? scale * p[r * t + j] * (dp[r * t + j] - a) : 0.0f;
}

// Fused causal attention (the algorithm of FlashAttention-2, Dao 2023, written here):
// no (T, T) buffer. The forward keeps, per query row, a running max m and sum l of the
// exponentiated scores over key tiles (online softmax) and saves lse = m + log l per
// (batch, head, position); the backward recomputes the probabilities from lse tile by
// tile. Grouped-query attention: query head h reads key/value head h / (nh / nkv).
// Every output element is written by exactly one block, in a fixed order (dK and dV sum
// the query heads of their group one after another): deterministic, no atomics.
//
// Operands are the packed rows the model uses: qkv (b, t, [q nh hd | k nkv hd | v nkv hd]),
// out and dout (b, t, nh hd). Tiles of BT query and BT key rows live in dynamic shared
// memory (the host picks BT so the tiles fit; see backend.rs).

__device__ __forceinline__ const floatX* qrow(const floatX* qkv, long bi, long i, long h, long t, long w, long hd) { return qkv + (bi * t + i) * w + h * hd; }

__device__ void flash_load_keys(float* K, float* V, const floatX* qkv, long bi, long kh, long j0, long t, long nh, long nkv, long w, long hd, int bt) {
    int tid = threadIdx.x, nt = blockDim.x;
    for (long e = tid; e < bt * hd; e += nt) {
        long c = e / hd, d = e % hd;
        bool ok = j0 + c < t;
        K[e] = ok ? qrow(qkv, bi, j0 + c, nh + kh, t, w, hd)[d] : 0.0f;
        V[e] = ok ? qrow(qkv, bi, j0 + c, nh + nkv + kh, t, w, hd)[d] : 0.0f;
    }
}

// Grid (ceil(t / BT), nh, b); lse (b, nh, t).
extern "C" __global__ void flash_attention_forward(floatX* out, float* lse, const floatX* qkv, long b, long t, long nh, long nkv, long hd, float scale,
                                                   int bt) {
    DYNAMIC_SHARED(float, sh);
    float *Q = sh, *K = Q + bt * hd, *V = K + bt * hd, *O = V + bt * hd, *S = O + bt * hd, *M = S + bt * bt, *L = M + bt, *C = L + bt;
    long bi = blockIdx.z, h = blockIdx.y, i0 = (long)blockIdx.x * bt;
    long w = (nh + 2 * nkv) * hd, kh = h / (nh / nkv);
    int tid = threadIdx.x, nt = blockDim.x;
    for (long e = tid; e < bt * hd; e += nt) {
        long r = e / hd, d = e % hd;
        Q[e] = i0 + r < t ? qrow(qkv, bi, i0 + r, h, t, w, hd)[d] : 0.0f;
        O[e] = 0.0f;
    }
    for (int r = tid; r < bt; r += nt) {
        M[r] = NEG_INF;
        L[r] = 0.0f;
    }
    long last = i0 + bt - 1 < t - 1 ? i0 + bt - 1 : t - 1;
    for (long j0 = 0; j0 <= last; j0 += bt) {
        __syncthreads();
        flash_load_keys(K, V, qkv, bi, kh, j0, t, nh, nkv, w, hd, bt);
        __syncthreads();
        for (long e = tid; e < bt * bt; e += nt) {
            long r = e / bt, c = e % bt;
            float s = NEG_INF;
            if (i0 + r < t && j0 + c <= i0 + r) {
                float a = 0.0f;
                for (long d = 0; d < hd; d++) a += Q[r * hd + d] * K[c * hd + d];
                s = a * scale;
            }
            S[e] = s;
        }
        __syncthreads();
        // One thread per query row: the online softmax update.
        for (int r = tid; r < bt; r += nt) {
            if (i0 + r >= t) {
                C[r] = 1.0f;
                for (int c = 0; c < bt; c++) S[r * bt + c] = 0.0f;
                continue;
            }
            float mx = M[r];
            for (int c = 0; c < bt; c++) mx = fmaxf(mx, S[r * bt + c]);
            // Key j0 <= i0 + r always exists in the tile's range, so mx is finite.
            float corr = expf(M[r] - mx), sum = 0.0f;
            for (int c = 0; c < bt; c++) {
                float s = S[r * bt + c];
                float p = s == NEG_INF ? 0.0f : expf(s - mx);
                S[r * bt + c] = p;
                sum += p;
            }
            L[r] = L[r] * corr + sum;
            M[r] = mx;
            C[r] = corr;
        }
        __syncthreads();
        for (long e = tid; e < bt * hd; e += nt) {
            long r = e / hd, d = e % hd;
            float a = O[e] * C[r];
            for (long c = 0; c < bt; c++) a += S[r * bt + c] * V[c * hd + d];
            O[e] = a;
        }
    }
    __syncthreads();
    for (long e = tid; e < bt * hd; e += nt) {
        long r = e / hd, d = e % hd;
        if (i0 + r < t) out[(bi * t + i0 + r) * nh * hd + h * hd + d] = O[e] / L[r];
    }
    for (int r = tid; r < bt; r += nt)
        if (i0 + r < t) lse[(bi * nh + h) * t + i0 + r] = M[r] + logf(L[r]);
}

// D (b, nh, t) = rowsum(dout * out) per head: the backward's softmax correction.
extern "C" __global__ void flash_attention_rowdot(float* dsum, const floatX* dout, const floatX* out, long b, long t, long nh, long hd) {
    long n = b * nh * t;
    for (long k = blockIdx.x * (long)blockDim.x + threadIdx.x; k < n; k += (long)gridDim.x * blockDim.x) {
        long i = k % t, h = (k / t) % nh, bi = k / (t * nh);
        const floatX *o = out + (bi * t + i) * nh * hd + h * hd, *g = dout + (bi * t + i) * nh * hd + h * hd;
        float a = 0.0f;
        for (long d = 0; d < hd; d++) a += o[d] * g[d];
        dsum[k] = a;
    }
}

// The probabilities and score gradients of one (query tile, key tile) pair into P and
// dS (bt x bt): P = exp(scale q.k - lse), dS = P (dO.v - D), 0 where masked.
__device__ void flash_tile_grads(float* P, float* dS, const float* Q, const float* G, const float* K, const float* V, const float* lse,
                                 const float* dsum, long i0, long j0, long t, long hd, float scale, int bt) {
    int tid = threadIdx.x, nt = blockDim.x;
    for (long e = tid; e < bt * bt; e += nt) {
        long r = e / bt, c = e % bt;
        float p = 0.0f, ds = 0.0f;
        if (i0 + r < t && j0 + c < t && j0 + c <= i0 + r) {
            float s = 0.0f, dp = 0.0f;
            for (long d = 0; d < hd; d++) {
                s += Q[r * hd + d] * K[c * hd + d];
                dp += G[r * hd + d] * V[c * hd + d];
            }
            p = expf(s * scale - lse[r]);
            ds = p * (dp - dsum[r]);
        }
        P[e] = p;
        dS[e] = ds;
    }
}

// Loads query tile i0 of head h: Q, dO and the row statistics.
__device__ void flash_load_queries(float* Q, float* G, float* Lse, float* Dsum, const floatX* qkv, const floatX* dout, const float* lse, const float* dsum,
                                   long bi, long h, long i0, long t, long nh, long w, long hd, int bt) {
    int tid = threadIdx.x, nt = blockDim.x;
    for (long e = tid; e < bt * hd; e += nt) {
        long r = e / hd, d = e % hd;
        bool ok = i0 + r < t;
        Q[e] = ok ? qrow(qkv, bi, i0 + r, h, t, w, hd)[d] : 0.0f;
        G[e] = ok ? dout[(bi * t + i0 + r) * nh * hd + h * hd + d] : 0.0f;
    }
    for (int r = tid; r < bt; r += nt) {
        bool ok = i0 + r < t;
        Lse[r] = ok ? lse[(bi * nh + h) * t + i0 + r] : 0.0f;
        Dsum[r] = ok ? dsum[(bi * nh + h) * t + i0 + r] : 0.0f;
    }
}

// dK and dV of one key tile of key/value head kh: grid (ceil(t / BT), nkv, b). Sums over
// the group's query heads in order, then over query tiles from the diagonal on.
extern "C" __global__ void flash_attention_backward_kv(floatX* dqkv, const floatX* dout, const floatX* qkv, const float* lse, const float* dsum, long b, long t,
                                                       long nh, long nkv, long hd, float scale, int bt) {
    DYNAMIC_SHARED(float, sh);
    float *K = sh, *V = K + bt * hd, *dK = V + bt * hd, *dV = dK + bt * hd, *Q = dV + bt * hd, *G = Q + bt * hd;
    float *P = G + bt * hd, *dS = P + bt * bt, *Lse = dS + bt * bt, *Dsum = Lse + bt;
    long bi = blockIdx.z, kh = blockIdx.y, j0 = (long)blockIdx.x * bt;
    long w = (nh + 2 * nkv) * hd, g = nh / nkv;
    int tid = threadIdx.x, nt = blockDim.x;
    flash_load_keys(K, V, qkv, bi, kh, j0, t, nh, nkv, w, hd, bt);
    for (long e = tid; e < bt * hd; e += nt) {
        dK[e] = 0.0f;
        dV[e] = 0.0f;
    }
    for (long h = kh * g; h < (kh + 1) * g; h++) {
        for (long i0 = j0 - j0 % bt; i0 < t; i0 += bt) {
            __syncthreads();
            flash_load_queries(Q, G, Lse, Dsum, qkv, dout, lse, dsum, bi, h, i0, t, nh, w, hd, bt);
            __syncthreads();
            flash_tile_grads(P, dS, Q, G, K, V, Lse, Dsum, i0, j0, t, hd, scale, bt);
            __syncthreads();
            // dV += P^T dO, dK += scale dS^T Q.
            for (long e = tid; e < bt * hd; e += nt) {
                long c = e / hd, d = e % hd;
                float av = 0.0f, ak = 0.0f;
                for (long r = 0; r < bt; r++) {
                    av += P[r * bt + c] * G[r * hd + d];
                    ak += dS[r * bt + c] * Q[r * hd + d];
                }
                dV[e] += av;
                dK[e] += scale * ak;
            }
        }
    }
    __syncthreads();
    for (long e = tid; e < bt * hd; e += nt) {
        long c = e / hd, d = e % hd;
        if (j0 + c >= t) continue;
        floatX* row = dqkv + (bi * t + j0 + c) * w;
        row[(nh + kh) * hd + d] += dK[e];
        row[(nh + nkv + kh) * hd + d] += dV[e];
    }
}

// dQ of one query tile of head h: grid (ceil(t / BT), nh, b), key tiles up to the diagonal.
extern "C" __global__ void flash_attention_backward_q(floatX* dqkv, const floatX* dout, const floatX* qkv, const float* lse, const float* dsum, long b, long t,
                                                      long nh, long nkv, long hd, float scale, int bt) {
    DYNAMIC_SHARED(float, sh);
    float *Q = sh, *G = Q + bt * hd, *dQ = G + bt * hd, *K = dQ + bt * hd, *V = K + bt * hd;
    float *P = V + bt * hd, *dS = P + bt * bt, *Lse = dS + bt * bt, *Dsum = Lse + bt;
    long bi = blockIdx.z, h = blockIdx.y, i0 = (long)blockIdx.x * bt;
    long w = (nh + 2 * nkv) * hd, kh = h / (nh / nkv);
    int tid = threadIdx.x, nt = blockDim.x;
    flash_load_queries(Q, G, Lse, Dsum, qkv, dout, lse, dsum, bi, h, i0, t, nh, w, hd, bt);
    for (long e = tid; e < bt * hd; e += nt) dQ[e] = 0.0f;
    long last = i0 + bt - 1 < t - 1 ? i0 + bt - 1 : t - 1;
    for (long j0 = 0; j0 <= last; j0 += bt) {
        __syncthreads();
        flash_load_keys(K, V, qkv, bi, kh, j0, t, nh, nkv, w, hd, bt);
        __syncthreads();
        flash_tile_grads(P, dS, Q, G, K, V, Lse, Dsum, i0, j0, t, hd, scale, bt);
        __syncthreads();
        for (long e = tid; e < bt * hd; e += nt) {
            long r = e / hd, d = e % hd;
            float a = 0.0f;
            for (long c = 0; c < bt; c++) a += dS[r * bt + c] * K[c * hd + d];
            dQ[e] += scale * a;
        }
    }
    __syncthreads();
    for (long e = tid; e < bt * hd; e += nt) {
        long r = e / hd, d = e % hd;
        if (i0 + r < t) dqkv[(bi * t + i0 + r) * w + h * hd + d] += dQ[e];
    }
}

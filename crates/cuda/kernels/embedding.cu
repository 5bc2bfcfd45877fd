// Token (+ learned position) embedding. The vocabulary may be a tensor-parallel part:
// rows [first, first + vrows) of the whole table; other tokens contribute zeros.

extern "C" __global__ void embedding_forward(floatX* out, const u32* tokens, const floatX* wte, const floatX* wpe, long b, long t, long c,
                                             long first, long vrows) {
    long n = b * t * c;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        long row = i / c, j = i % c;
        long tok = (long)tokens[row] - first;
        float v = (tok >= 0 && tok < vrows) ? wte[tok * c + j] : 0.0f;
        if (wpe) v += wpe[(row % t) * c + j];
        out[i] = v;
    }
}

// Deterministic d wte: the host sorts the positions by token; `order` lists positions
// grouped by token, segment s = [starts[s], starts[s + 1]) belongs to token uniq[s]
// (a local row). One block per segment, each thread a channel, positions in order.
extern "C" __global__ void embedding_backward_sorted(floatX* dwte, const floatX* dout, const u32* order, const u32* starts, const u32* uniq,
                                                     long segments, long c) {
    long s = blockIdx.x;
    if (s >= segments) return;
    long row = uniq[s];
    for (long j = threadIdx.x; j < c; j += blockDim.x) {
        float acc = 0.0f;
        for (u32 k = starts[s]; k < starts[s + 1]; k++) acc += dout[(long)order[k] * c + j];
        dwte[row * c + j] += acc;
    }
}

// d wpe[t, j] += sum over the batch of dout[b, t, j], batch in order.
extern "C" __global__ void position_backward(floatX* dwpe, const floatX* dout, long b, long t, long c) {
    long n = t * c;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (long k = 0; k < b; k++) acc += dout[k * n + i];
        dwpe[i] += acc;
    }
}

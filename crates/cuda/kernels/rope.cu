// Rotary embeddings in Hugging Face's rotate_half layout, in place on the q and k heads
// of packed qkv rows [q (nh hd) | k (nkv hd) | v (nkv hd)], position = row % t; the
// tables (t, hd/2) are the CPU's (cos and sin of the f32 angle, rounded from f64).
// inverse = 1 rotates by -angle (the backward, on the gradient).

extern "C" __global__ void rope_rotate(floatX* qkv, const float* cos_t, const float* sin_t, long b, long t, long nh, long nkv, long hd,
                                       int inverse) {
    long half = hd / 2, heads = nh + nkv, width = (nh + 2 * nkv) * hd;
    long n = b * t * heads * half;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        long k = i % half, rest = i / half;
        long h = rest % heads, row = rest / heads;
        long pos = row % t;
        float c = cos_t[pos * half + k], s = sin_t[pos * half + k];
        if (inverse) s = -s;
        floatX* x = qkv + row * width + h * hd;
        float x1 = x[k], x2 = x[k + half];
        x[k] = x1 * c - x2 * s;
        x[k + half] = x2 * c + x1 * s;
    }
}

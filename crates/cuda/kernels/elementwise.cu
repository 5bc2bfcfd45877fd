// Elementwise ops: add, scale, GELU (tanh form, GPT-2's), SwiGLU (Llama), conversions.

extern "C" __global__ void add_inplace(floatX* out, const floatX* a, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) out[i] += a[i];
}

extern "C" __global__ void scale_inplace(floatX* x, float s, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) x[i] *= s;
}

// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
#define GELU_K 0.7978845608028654f
#define GELU_C 0.044715f

extern "C" __global__ void gelu_forward(floatX* out, const floatX* h, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float x = h[i];
        float u = GELU_K * (x + GELU_C * x * x * x);
        out[i] = 0.5f * x * (1.0f + tanhf(u));
    }
}

// dh += dout * d gelu(h) / dh.
extern "C" __global__ void gelu_backward(floatX* dh, const floatX* dout, const floatX* h, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float x = h[i];
        float u = GELU_K * (x + GELU_C * x * x * x);
        float th = tanhf(u);
        float sech2 = 1.0f - th * th;
        float d = 0.5f * (1.0f + th) + 0.5f * x * sech2 * GELU_K * (1.0f + 3.0f * GELU_C * x * x);
        dh[i] += dout[i] * d;
    }
}

// SwiGLU on packed rows h = [gate (f) | up (f)]: out = silu(gate) * up, (rows, f).
extern "C" __global__ void swiglu_forward(floatX* out, const floatX* h, long rows, long f) {
    long n = rows * f;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        long r = i / f, j = i % f;
        float g = h[r * 2 * f + j], u = h[r * 2 * f + f + j];
        float sig = 1.0f / (1.0f + expf(-g));
        out[i] = g * sig * u;
    }
}

// d gate += dout * up * silu'(gate), d up += dout * silu(gate).
extern "C" __global__ void swiglu_backward(floatX* dh, const floatX* dout, const floatX* h, long rows, long f) {
    long n = rows * f;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        long r = i / f, j = i % f;
        float g = h[r * 2 * f + j], u = h[r * 2 * f + f + j];
        float sig = 1.0f / (1.0f + expf(-g));
        float silu = g * sig;
        float dsilu = sig * (1.0f + g * (1.0f - sig));
        dh[r * 2 * f + j] += dout[i] * u * dsilu;
        dh[r * 2 * f + f + j] += dout[i] * silu;
    }
}

extern "C" __global__ void f32_to_bf16(bf16_bits* out, const float* x, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) out[i] = f32_to_bf16_bits(x[i]);
}

extern "C" __global__ void bf16_to_f32(float* out, const bf16_bits* x, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) out[i] = bf16_bits_to_f32(x[i]);
}

// Column sums of `partial` (rows, c) added to `out` (c), rows in order: the
// deterministic second pass of every weight gradient that rows contribute to.
extern "C" __global__ void column_sum_add(floatX* out, const floatX* partial, long rows, long c) {
    for (long j = blockIdx.x * (long)blockDim.x + threadIdx.x; j < c; j += (long)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (long r = 0; r < rows; r++) s += partial[r * c + j];
        out[j] += s;
    }
}

// y (rows, c) += b (c): a linear layer's bias.
extern "C" __global__ void add_bias(floatX* y, const floatX* b, long rows, long c) {
    long n = rows * c;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) y[i] += b[i % c];
}

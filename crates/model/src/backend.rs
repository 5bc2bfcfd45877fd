//! The backend seam: every numerical op the model runs, over buffers the backend owns.
//!
//! The model ([`crate::Model`]) never calls a kernel directly: it calls these methods on
//! its backend, passing `&B::Buf` views. [`Cpu`] runs the `kernels` crate on host `[f32]`
//! slices; a CUDA backend implements the same trait over device buffers (cuBLAS GEMMs,
//! NVRTC-compiled kernels), and the model code, stage loop and activation layout stay
//! as they are. Conventions of every op are the kernels crate's: backward ops ADD into
//! the gradients they write; results do not depend on the thread count.

use std::ops::{Deref, DerefMut, Range};

use crate::spec::{Mlp, Norm};

/// A flat buffer of f32 elements the model can carve into views.
pub trait Buf {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn slice(&self, r: Range<usize>) -> &Self;
    fn slice_mut(&mut self, r: Range<usize>) -> &mut Self;
    fn split_at(&self, mid: usize) -> (&Self, &Self);
    fn split_at_mut(&mut self, mid: usize) -> (&mut Self, &mut Self);
}

impl Buf for [f32] {
    fn len(&self) -> usize {
        <[f32]>::len(self)
    }
    fn slice(&self, r: Range<usize>) -> &Self {
        &self[r]
    }
    fn slice_mut(&mut self, r: Range<usize>) -> &mut Self {
        &mut self[r]
    }
    fn split_at(&self, mid: usize) -> (&Self, &Self) {
        <[f32]>::split_at(self, mid)
    }
    fn split_at_mut(&mut self, mid: usize) -> (&mut Self, &mut Self) {
        <[f32]>::split_at_mut(self, mid)
    }
}

/// How a linear layer's weight is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `(in, out)`: `y = x W` (Hugging Face GPT-2's `Conv1D`).
    InOut,
    /// `(out, in)`: `y = x W^T` (`nn.Linear`, Llama).
    OutIn,
}

/// The ops of a decoder-only transformer, forward and backward. Shapes as in the
/// kernels crate: rows = B*T, `c` channels, `nh` query heads, `nkv` key/value heads of
/// width `hd`, packed qkv rows `[q (nh*hd) | k (nkv*hd) | v (nkv*hd)]`.
#[allow(clippy::too_many_arguments)]
pub trait Backend: Send + Sync {
    type Buf: ?Sized + Buf;
    /// An owned buffer.
    type Vec: Deref<Target = Self::Buf> + DerefMut + Send;
    /// Precomputed rotary tables.
    type Rope: Send + Sync;

    fn zeros(&self, n: usize) -> Self::Vec;
    /// Zeros for per-row statistics (norm mean and rstd, attention's saved state, the
    /// losses): f32 even where activations are stored narrower.
    fn stats(&self, n: usize) -> Self::Vec {
        self.zeros(n)
    }
    fn fill_zero(&self, x: &mut Self::Buf);
    /// `out += a`.
    fn add_inplace(&self, out: &mut Self::Buf, a: &Self::Buf);
    /// `y (rows, out) = x (rows, in) W + b`.
    fn linear_forward(&self, y: &mut Self::Buf, x: &Self::Buf, w: &Self::Buf, b: Option<&Self::Buf>, wl: WeightLayout, rows: usize, din: usize, dout: usize);
    /// `dx += dy W^T`, `dW += x^T dy` (in W's layout), `db += colsum(dy)`.
    fn linear_backward(
        &self,
        dx: Option<&mut Self::Buf>,
        dw: &mut Self::Buf,
        db: Option<&mut Self::Buf>,
        dy: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        wl: WeightLayout,
        rows: usize,
        din: usize,
        dout: usize,
    );
    /// `c (m, n) = op(a) (m, k) @ op(b) (k, n)` (+ c when `accumulate`).
    fn matmul(&self, c: &mut Self::Buf, a: &Self::Buf, ta: bool, b: &Self::Buf, tb: bool, m: usize, n: usize, k: usize, accumulate: bool);
    /// Normalises rows; saves `mean` (LayerNorm only) and `rstd`.
    fn norm_forward(&self, norm: Norm, eps: f32, out: &mut Self::Buf, mean: &mut Self::Buf, rstd: &mut Self::Buf, x: &Self::Buf, w: &Self::Buf, b: Option<&Self::Buf>, rows: usize, c: usize);
    /// The residual add and the norm after it: `res += delta`, then
    /// [`Backend::norm_forward`] of `res`. A backend may fuse them (one pass over the
    /// rows); the result is the unfused one.
    fn residual_norm_forward(
        &self,
        norm: Norm,
        eps: f32,
        res: &mut Self::Buf,
        delta: &Self::Buf,
        out: &mut Self::Buf,
        mean: &mut Self::Buf,
        rstd: &mut Self::Buf,
        w: &Self::Buf,
        b: Option<&Self::Buf>,
        rows: usize,
        c: usize,
    ) {
        self.add_inplace(res, delta);
        self.norm_forward(norm, eps, out, mean, rstd, res, w, b, rows, c);
    }
    fn norm_backward(
        &self,
        norm: Norm,
        dx: &mut Self::Buf,
        dw: &mut Self::Buf,
        db: Option<&mut Self::Buf>,
        dout: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        mean: &Self::Buf,
        rstd: &Self::Buf,
        rows: usize,
        c: usize,
    );
    /// `out[b, t] = wte[tokens[b, t]] (+ wpe[t])`.
    fn embedding_forward(&self, out: &mut Self::Buf, tokens: &[u32], wte: &Self::Buf, wpe: Option<&Self::Buf>, b: usize, t: usize, c: usize);
    fn embedding_backward(&self, dwte: &mut Self::Buf, dwpe: Option<&mut Self::Buf>, dout: &Self::Buf, tokens: &[u32], b: usize, t: usize, c: usize);
    fn rope_table(&self, t: usize, hd: usize, theta: f64) -> Self::Rope;
    /// Rotates q and k of packed qkv rows in place.
    fn rope_forward(&self, qkv: &mut Self::Buf, rope: &Self::Rope, b: usize, t: usize, nh: usize, nkv: usize, hd: usize);
    /// d(rotated) -> d(unrotated), in place.
    fn rope_backward(&self, dqkv: &mut Self::Buf, rope: &Self::Rope, b: usize, t: usize, nh: usize, nkv: usize, hd: usize);
    /// Length of attention's saved state.
    fn attention_saved_len(&self, b: usize, t: usize, nh: usize) -> usize;
    fn attention_forward(&self, out: &mut Self::Buf, saved: &mut Self::Buf, qkv: &Self::Buf, b: usize, t: usize, nh: usize, nkv: usize, hd: usize);
    fn attention_backward(
        &self,
        dqkv: &mut Self::Buf,
        dout: &Self::Buf,
        qkv: &Self::Buf,
        out: &Self::Buf,
        saved: &Self::Buf,
        b: usize,
        t: usize,
        nh: usize,
        nkv: usize,
        hd: usize,
    );
    /// The MLP's up projection and its nonlinearity: `h = x W + b` (rows, `dout`, kept
    /// for the backward), then `out = act(h)` (rows, f). A backend may fuse them (a
    /// GEMM epilogue); the result is the unfused one up to the rounding of storage.
    fn linear_act_forward(
        &self,
        mlp: Mlp,
        h: &mut Self::Buf,
        out: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        b: Option<&Self::Buf>,
        wl: WeightLayout,
        rows: usize,
        din: usize,
        dout: usize,
        f: usize,
    ) {
        self.linear_forward(h, x, w, b, wl, rows, din, dout);
        self.mlp_act_forward(mlp, out, h, rows, f);
    }
    /// The MLP's nonlinearity: GELU on `h` (rows, f), or SwiGLU on packed `h` (rows, 2f).
    fn mlp_act_forward(&self, mlp: Mlp, out: &mut Self::Buf, h: &Self::Buf, rows: usize, f: usize);
    fn mlp_act_backward(&self, mlp: Mlp, dh: &mut Self::Buf, dout: &Self::Buf, h: &Self::Buf, rows: usize, f: usize);
    /// Fused softmax cross-entropy: per-row losses, logits overwritten by their scaled
    /// gradient; returns the summed loss.
    fn xent_forward_backward(&self, logits: &mut Self::Buf, losses: &mut Self::Buf, targets: &[u32], rows: usize, v: usize, scale: f32) -> f64;
    fn xent_forward(&self, logits: &Self::Buf, losses: &mut Self::Buf, targets: &[u32], rows: usize, v: usize) -> f64;
    /// Copies `src` to host memory (sampling, tests).
    fn to_host(&self, src: &Self::Buf, out: &mut [f32]);

    // Tensor parallelism: a vocabulary-parallel embedding and cross-entropy over this
    // rank's rows `[first, first + rows)` of the vocabulary (see the kernels' docs).
    /// `out = wte[tokens - first]` for the tokens held here, 0 for the others (+ wpe).
    #[allow(clippy::too_many_arguments)]
    fn embedding_part_forward(&self, out: &mut Self::Buf, tokens: &[u32], wte: &Self::Buf, first: usize, wpe: Option<&Self::Buf>, b: usize, t: usize, c: usize);
    #[allow(clippy::too_many_arguments)]
    fn embedding_part_backward(&self, dwte: &mut Self::Buf, dwpe: Option<&mut Self::Buf>, dout: &Self::Buf, tokens: &[u32], first: usize, b: usize, t: usize, c: usize);
    /// Per row: the local max of the logits and the target's logit if held here (else 0).
    #[allow(clippy::too_many_arguments)]
    fn xent_parallel_stats(&self, logits: &Self::Buf, targets: &[u32], first: usize, rows: usize, v: usize, max: &mut Self::Buf, picked: &mut Self::Buf);
    /// `logits = exp(logits - max)` with the global maxima; per-row local sums.
    fn xent_parallel_exp(&self, logits: &mut Self::Buf, max: &Self::Buf, rows: usize, v: usize, sum: &mut Self::Buf);
    /// `logits = scale * (exp / sum - onehot)` with the global sums.
    #[allow(clippy::too_many_arguments)]
    fn xent_parallel_grad(&self, logits: &mut Self::Buf, sum: &Self::Buf, targets: &[u32], first: usize, rows: usize, v: usize, scale: f32);
}

/// The CPU backend: the `kernels` crate on host memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu;

#[allow(clippy::too_many_arguments)]
impl Backend for Cpu {
    type Buf = [f32];
    type Vec = Vec<f32>;
    type Rope = kernels::RopeTable;

    fn zeros(&self, n: usize) -> Vec<f32> {
        vec![0.0; n]
    }
    fn fill_zero(&self, x: &mut [f32]) {
        x.fill(0.0);
    }
    fn add_inplace(&self, out: &mut [f32], a: &[f32]) {
        kernels::add_inplace(out, a);
    }
    fn linear_forward(&self, y: &mut [f32], x: &[f32], w: &[f32], b: Option<&[f32]>, wl: WeightLayout, rows: usize, din: usize, dout: usize) {
        match wl {
            WeightLayout::InOut => kernels::linear_forward(y, x, w, b, rows, din, dout),
            WeightLayout::OutIn => kernels::linear_t_forward(y, x, w, b, rows, din, dout),
        }
    }
    fn linear_backward(
        &self,
        dx: Option<&mut [f32]>,
        dw: &mut [f32],
        db: Option<&mut [f32]>,
        dy: &[f32],
        x: &[f32],
        w: &[f32],
        wl: WeightLayout,
        rows: usize,
        din: usize,
        dout: usize,
    ) {
        match wl {
            WeightLayout::InOut => kernels::linear_backward(dx, dw, db, dy, x, w, rows, din, dout),
            WeightLayout::OutIn => kernels::linear_t_backward(dx, dw, db, dy, x, w, rows, din, dout),
        }
    }
    fn matmul(&self, c: &mut [f32], a: &[f32], ta: bool, b: &[f32], tb: bool, m: usize, n: usize, k: usize, accumulate: bool) {
        kernels::matmul(c, a, ta, b, tb, m, n, k, accumulate);
    }
    fn norm_forward(&self, norm: Norm, eps: f32, out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], b: Option<&[f32]>, rows: usize, c: usize) {
        match norm {
            Norm::LayerNorm => kernels::layernorm_forward_eps(out, mean, rstd, x, w, b, rows, c, eps),
            Norm::RmsNorm => kernels::rmsnorm_forward(out, rstd, x, w, rows, c, eps),
        }
    }
    fn norm_backward(
        &self,
        norm: Norm,
        dx: &mut [f32],
        dw: &mut [f32],
        db: Option<&mut [f32]>,
        dout: &[f32],
        x: &[f32],
        w: &[f32],
        mean: &[f32],
        rstd: &[f32],
        rows: usize,
        c: usize,
    ) {
        match norm {
            Norm::LayerNorm => kernels::layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, rows, c),
            Norm::RmsNorm => kernels::rmsnorm_backward(dx, dw, dout, x, w, rstd, rows, c),
        }
    }
    fn embedding_forward(&self, out: &mut [f32], tokens: &[u32], wte: &[f32], wpe: Option<&[f32]>, b: usize, t: usize, c: usize) {
        match wpe {
            Some(wpe) => kernels::embedding_forward(out, tokens, wte, wpe, b, t, c),
            None => kernels::token_embedding_forward(out, tokens, wte, b, t, c),
        }
    }
    fn embedding_backward(&self, dwte: &mut [f32], dwpe: Option<&mut [f32]>, dout: &[f32], tokens: &[u32], b: usize, t: usize, c: usize) {
        match dwpe {
            Some(dwpe) => kernels::embedding_backward(dwte, dwpe, dout, tokens, b, t, c),
            None => kernels::token_embedding_backward(dwte, dout, tokens, b, t, c),
        }
    }
    fn rope_table(&self, t: usize, hd: usize, theta: f64) -> kernels::RopeTable {
        kernels::RopeTable::new(t, hd, theta)
    }
    fn rope_forward(&self, qkv: &mut [f32], rope: &kernels::RopeTable, b: usize, t: usize, nh: usize, nkv: usize, hd: usize) {
        kernels::rope_forward(qkv, rope, b, t, nh, nkv, hd);
    }
    fn rope_backward(&self, dqkv: &mut [f32], rope: &kernels::RopeTable, b: usize, t: usize, nh: usize, nkv: usize, hd: usize) {
        kernels::rope_backward(dqkv, rope, b, t, nh, nkv, hd);
    }
    fn attention_saved_len(&self, b: usize, t: usize, nh: usize) -> usize {
        kernels::attention_saved_len(b, t, nh)
    }
    fn attention_forward(&self, out: &mut [f32], saved: &mut [f32], qkv: &[f32], b: usize, t: usize, nh: usize, nkv: usize, hd: usize) {
        kernels::attention_gqa_forward(out, saved, qkv, b, t, nh, nkv, hd);
    }
    fn attention_backward(
        &self,
        dqkv: &mut [f32],
        dout: &[f32],
        qkv: &[f32],
        out: &[f32],
        saved: &[f32],
        b: usize,
        t: usize,
        nh: usize,
        nkv: usize,
        hd: usize,
    ) {
        kernels::attention_gqa_backward(dqkv, dout, qkv, out, saved, b, t, nh, nkv, hd);
    }
    fn mlp_act_forward(&self, mlp: Mlp, out: &mut [f32], h: &[f32], rows: usize, f: usize) {
        match mlp {
            Mlp::Gelu => kernels::gelu_forward(out, h),
            Mlp::SwiGlu => kernels::swiglu_forward(out, h, rows, f),
        }
    }
    fn mlp_act_backward(&self, mlp: Mlp, dh: &mut [f32], dout: &[f32], h: &[f32], rows: usize, f: usize) {
        match mlp {
            Mlp::Gelu => kernels::gelu_backward(dh, h, dout),
            Mlp::SwiGlu => kernels::swiglu_backward(dh, dout, h, rows, f),
        }
    }
    fn xent_forward_backward(&self, logits: &mut [f32], losses: &mut [f32], targets: &[u32], rows: usize, v: usize, scale: f32) -> f64 {
        kernels::softmax_xent_forward_backward(logits, losses, targets, rows, v, scale)
    }
    fn xent_forward(&self, logits: &[f32], losses: &mut [f32], targets: &[u32], rows: usize, v: usize) -> f64 {
        kernels::softmax_xent_forward(logits, losses, targets, rows, v)
    }
    fn to_host(&self, src: &[f32], out: &mut [f32]) {
        out.copy_from_slice(src);
    }
    fn embedding_part_forward(&self, out: &mut [f32], tokens: &[u32], wte: &[f32], first: usize, wpe: Option<&[f32]>, b: usize, t: usize, c: usize) {
        kernels::embedding_part_forward(out, tokens, wte, first, wpe, b, t, c);
    }
    fn embedding_part_backward(&self, dwte: &mut [f32], dwpe: Option<&mut [f32]>, dout: &[f32], tokens: &[u32], first: usize, b: usize, t: usize, c: usize) {
        if let Some(dwpe) = dwpe {
            kernels::position_embedding_backward(dwpe, dout, b, t, c);
        }
        kernels::embedding_part_backward(dwte, dout, tokens, first, c);
    }
    fn xent_parallel_stats(&self, logits: &[f32], targets: &[u32], first: usize, rows: usize, v: usize, max: &mut [f32], picked: &mut [f32]) {
        kernels::xent_parallel_stats(logits, targets, first, rows, v, max, picked);
    }
    fn xent_parallel_exp(&self, logits: &mut [f32], max: &[f32], rows: usize, v: usize, sum: &mut [f32]) {
        kernels::xent_parallel_exp(logits, max, rows, v, sum);
    }
    fn xent_parallel_grad(&self, logits: &mut [f32], sum: &[f32], targets: &[u32], first: usize, rows: usize, v: usize, scale: f32) {
        kernels::xent_parallel_grad(logits, sum, targets, first, rows, v, scale);
    }
}

//! Rotary position embeddings (Su et al. 2021, RoFormer eq. 34) in Hugging Face's
//! `rotate_half` layout (`apply_rotary_pos_emb` in `modeling_llama.py`), applied in
//! place to the q and k heads of packed qkv rows.
//!
//! A row (one token) of qkv has width `(nh + 2 nkv) hd`: `[q heads (nh hd) | k heads
//! (nkv hd) | v heads (nkv hd)]`, head j of a part at channels `j hd..(j+1) hd`. Rows
//! are (B, T), position = row % T. For every q and k head vector x (dim hd, even) and
//! i < hd/2, with `angle = pos * inv_freq_i`, `inv_freq_i = 1 / theta^(2i/hd)`:
//! `x'[i] = x[i] cos - x[i + hd/2] sin`, `x'[i + hd/2] = x[i + hd/2] cos + x[i] sin`.
//! V is untouched.
//!
//! To match transformers in f32, `inv_freq` is computed in f32 (`1 / theta.powf(2i/hd)`,
//! theta as f32) and the angle as the f32 product `pos * inv_freq`; only cos/sin of
//! that f32 angle are evaluated in f64 and rounded. The backward is the transpose (a
//! rotation by `-angle`), mapping d(post-rope) to d(pre-rope) in place.

use rayon::prelude::*;

use crate::activation::ELEMS_PER_TASK;
use crate::attention::check_heads;
use crate::error::{check_len, KernelError};
use crate::simd::vectorized;

/// Precomputed `cos`/`sin` of every (position, frequency) pair: (t, hd/2) each.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeTable {
    t: usize,
    hd: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Table for positions `0..t` and head dim `hd` (even, > 0) with base `theta` (> 0).
    /// Panics with a [`KernelError::InvalidArgument`] message otherwise.
    pub fn new(t: usize, hd: usize, theta: f64) -> RopeTable {
        if hd == 0 || hd % 2 != 0 {
            let e = KernelError::InvalidArgument { kernel: "RopeTable::new", name: "hd", value: hd as f64, why: "RoPE needs an even, positive head dim" };
            panic!("{e}");
        }
        if !(theta.is_finite() && theta > 0.0) {
            let e = KernelError::InvalidArgument { kernel: "RopeTable::new", name: "theta", value: theta, why: "must be finite and positive" };
            panic!("{e}");
        }
        let half = hd / 2;
        let base = theta as f32;
        // transformers: inv_freq = 1.0 / (base ** (arange(0, dim, 2).float() / dim)), f32.
        let inv_freq: Vec<f32> = (0..half).map(|i| 1.0 / base.powf((2 * i) as f32 / hd as f32)).collect();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for pos in 0..t {
            for &f in &inv_freq {
                let angle = ((pos as f32) * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        RopeTable { t, hd, cos, sin }
    }

    /// Number of positions covered (the `t` the table was built with).
    pub fn seq_len(&self) -> usize {
        self.t
    }

    /// Head dim the table was built for.
    pub fn head_dim(&self) -> usize {
        self.hd
    }

    /// `cos` of the angles of position `pos`, one per frequency (hd/2 values).
    pub fn cos(&self, pos: usize) -> &[f32] {
        let half = self.hd / 2;
        &self.cos[pos * half..(pos + 1) * half]
    }

    /// `sin` of the angles of position `pos`, one per frequency (hd/2 values).
    pub fn sin(&self, pos: usize) -> &[f32] {
        let half = self.hd / 2;
        &self.sin[pos * half..(pos + 1) * half]
    }
}

/// Applies RoPE in place to the q and k heads of `qkv` (B, T, (nh + 2 nkv) hd).
pub fn rope_forward(qkv: &mut [f32], table: &RopeTable, b: usize, t: usize, nh: usize, nkv: usize, hd: usize) {
    rotate("rope_forward", qkv, table, b, t, nh, nkv, hd, false);
}

/// RoPE backward in place on `dqkv` (B, T, (nh + 2 nkv) hd): turns the gradient w.r.t.
/// the rotated q/k into the gradient w.r.t. the unrotated q/k (rotation by `-angle`);
/// the v part is left as is. Unlike the other backward kernels this transforms the
/// buffer rather than adding into it: the rotation is applied to the accumulated
/// gradient once all its contributions are in.
pub fn rope_backward(dqkv: &mut [f32], table: &RopeTable, b: usize, t: usize, nh: usize, nkv: usize, hd: usize) {
    rotate("rope_backward", dqkv, table, b, t, nh, nkv, hd, true);
}

/// Rotates every q/k head of every row by `+angle` (`inverse = false`) or `-angle`.
#[allow(clippy::too_many_arguments)]
fn rotate(kernel: &'static str, qkv: &mut [f32], table: &RopeTable, b: usize, t: usize, nh: usize, nkv: usize, hd: usize, inverse: bool) {
    check_heads(kernel, nh, nkv, hd);
    if hd != table.hd {
        let e = KernelError::InvalidArgument { kernel, name: "hd", value: hd as f64, why: "differs from the head dim of the RoPE table" };
        panic!("{e}");
    }
    if t > table.t {
        let e = KernelError::InvalidArgument { kernel, name: "t", value: t as f64, why: "exceeds the number of positions of the RoPE table" };
        panic!("{e}");
    }
    let width = (nh + 2 * nkv) * hd;
    check_len(kernel, "qkv", qkv.len(), b * t * width);
    if qkv.is_empty() {
        return;
    }
    let half = hd / 2;
    // q and k heads are contiguous at the start of each row: channels 0..(nh + nkv) hd.
    let rotated = (nh + nkv) * hd;
    let rows_per_task = (ELEMS_PER_TASK / width).max(1);
    qkv.par_chunks_mut(rows_per_task * width).enumerate().for_each(|(task, rows)| {
        vectorized(#[inline(always)] || {
            for (r, row) in rows.chunks_exact_mut(width).enumerate() {
                let pos = (task * rows_per_task + r) % t;
                let cos = &table.cos[pos * half..(pos + 1) * half];
                let sin = &table.sin[pos * half..(pos + 1) * half];
                for head in row[..rotated].chunks_exact_mut(hd) {
                    let (lo, hi) = head.split_at_mut(half);
                    // The inverse is the same rotation with the sign of sin flipped.
                    if inverse {
                        for (((a, b), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(cos).zip(sin) {
                            let (x1, x2) = (*a, *b);
                            *a = x1 * c + x2 * s;
                            *b = x2 * c - x1 * s;
                        }
                    } else {
                        for (((a, b), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(cos).zip(sin) {
                            let (x1, x2) = (*a, *b);
                            *a = x1 * c - x2 * s;
                            *b = x2 * c + x1 * s;
                        }
                    }
                }
            }
        })
    });
}

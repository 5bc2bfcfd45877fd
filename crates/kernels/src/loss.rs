//! Softmax cross-entropy over rows of logits (rows, V), fused with its gradient.
//!
//! Per row: `loss = logsumexp(z) - z[target]`, `dloss/dz = softmax(z) - onehot(target)`.
//! A row of V = 50257 floats (196 KiB) stays in L2 across the three passes (max; exp
//! and sum; normalize), so main memory sees one read and one write of the logits.

use rayon::prelude::*;

use crate::error::{check_ids, check_len, KernelError};
use crate::simd::{self, exp_f32, vectorized};

/// Fused forward + backward. Writes per-row losses (nats) into `losses`, overwrites
/// `logits` with `(softmax - onehot) * grad_scale`, and returns the sum of the losses
/// (summed in row order in f64, so deterministic).
pub fn softmax_xent_forward_backward(
    logits: &mut [f32],
    losses: &mut [f32],
    targets: &[u32],
    rows: usize,
    v: usize,
    grad_scale: f32,
) -> f64 {
    check_len("softmax_xent_forward_backward", "logits", logits.len(), rows * v);
    check_len("softmax_xent_forward_backward", "losses", losses.len(), rows);
    check_len("softmax_xent_forward_backward", "targets", targets.len(), rows);
    check_ids("softmax_xent_forward_backward", targets, v);
    if v == 0 {
        return 0.0;
    }
    logits.par_chunks_mut(v).zip(losses.par_iter_mut()).zip(targets.par_iter()).for_each(|((z, loss), &tgt)| {
        vectorized(#[inline(always)] || {
            let tgt = tgt as usize;
            let zt = z[tgt];
            let mx = simd::max(z);
            // e = exp(z - max) in place, summed with lane accumulators.
            let mut acc = [0.0f32; simd::LANES];
            let mut it = z.chunks_exact_mut(simd::LANES);
            for blk in &mut it {
                for l in 0..simd::LANES {
                    let e = exp_f32(blk[l] - mx);
                    blk[l] = e;
                    acc[l] += e;
                }
            }
            let mut s = simd::sum(&acc);
            for e in it.into_remainder() {
                *e = exp_f32(*e - mx);
                s += *e;
            }
            *loss = (s.ln() + mx) - zt;
            let k = grad_scale / s;
            for e in z.iter_mut() {
                *e *= k;
            }
            z[tgt] -= grad_scale;
        })
    });
    losses.iter().map(|&l| l as f64).sum()
}

/// Loss only (evaluation): per-row losses into `losses`, logits untouched.
pub fn softmax_xent_forward(logits: &[f32], losses: &mut [f32], targets: &[u32], rows: usize, v: usize) -> f64 {
    check_len("softmax_xent_forward", "logits", logits.len(), rows * v);
    check_len("softmax_xent_forward", "losses", losses.len(), rows);
    check_len("softmax_xent_forward", "targets", targets.len(), rows);
    check_ids("softmax_xent_forward", targets, v);
    if v == 0 {
        return 0.0;
    }
    logits.par_chunks(v).zip(losses.par_iter_mut()).zip(targets.par_iter()).for_each(|((z, loss), &tgt)| {
        vectorized(#[inline(always)] || {
            let mx = simd::max(z);
            let mut acc = [0.0f32; simd::LANES];
            let mut it = z.chunks_exact(simd::LANES);
            for blk in &mut it {
                for l in 0..simd::LANES {
                    acc[l] += exp_f32(blk[l] - mx);
                }
            }
            let mut s = simd::sum(&acc);
            for &e in it.remainder() {
                s += exp_f32(e - mx);
            }
            *loss = (s.ln() + mx) - z[tgt as usize];
        })
    });
    losses.iter().map(|&l| l as f64).sum()
}

/// probs = softmax(logits / temperature) for one row (sampling). Panics unless
/// `temperature > 0` and the lengths match.
pub fn softmax_row(probs: &mut [f32], logits: &[f32], temperature: f32) {
    check_len("softmax_row", "probs", probs.len(), logits.len());
    if !(temperature > 0.0 && temperature.is_finite()) {
        panic!(
            "{}",
            KernelError::InvalidArgument {
                kernel: "softmax_row",
                name: "temperature",
                value: temperature as f64,
                why: "must be finite and > 0 (use argmax for greedy decoding)",
            }
        );
    }
    if logits.is_empty() {
        return;
    }
    vectorized(#[inline(always)] || {
        let inv_t = 1.0 / temperature;
        let mx = simd::max(logits) * inv_t;
        for (p, &z) in probs.iter_mut().zip(logits) {
            *p = exp_f32(z * inv_t - mx);
        }
        let s = simd::sum(probs);
        let k = 1.0 / s;
        for p in probs.iter_mut() {
            *p *= k;
        }
    })
}

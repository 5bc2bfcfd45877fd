//! Softmax cross-entropy over rows of logits (rows, V), fused with its gradient.
//!
//! Per row: `loss = logsumexp(z) - z[target]`, `dloss/dz = softmax(z) - onehot(target)`.
//! A row of V = 50257 floats (196 KiB) stays in L2 across the three passes (max; exp
//! and sum; normalize), so main memory sees one read and one write of the logits.

use rayon::prelude::*;

use crate::error::{check_ids, check_len, KernelError};
use crate::simd::{self, exp_f32, vectorized};

/// `z = exp(z - mx)` in place; returns the sum, accumulated in SIMD lanes then the
/// remainder (inlined into the callers' `vectorized` sections).
#[inline(always)]
fn exp_sum_inplace(z: &mut [f32], mx: f32) -> f32 {
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
    s
}

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
            let s = exp_sum_inplace(z, mx);
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

/// Vocabulary-parallel cross-entropy (Megatron-LM, Shoeybi et al. 2019), step 1 of 3 on
/// one rank's logit columns `[first, first + v)`: each row's local maximum, and its
/// target's logit when the target is one of this rank's columns (else 0). After both
/// are reduced across the ranks (max, sum), no rank has held all the logits.
pub fn xent_parallel_stats(logits: &[f32], targets: &[u32], first: usize, rows: usize, v: usize, max: &mut [f32], picked: &mut [f32]) {
    check_len("xent_parallel_stats", "logits", logits.len(), rows * v);
    check_len("xent_parallel_stats", "targets", targets.len(), rows);
    check_len("xent_parallel_stats", "max", max.len(), rows);
    check_len("xent_parallel_stats", "picked", picked.len(), rows);
    if v == 0 {
        max.fill(f32::NEG_INFINITY);
        picked.fill(0.0);
        return;
    }
    logits.par_chunks(v).zip(max.par_iter_mut()).zip(picked.par_iter_mut()).zip(targets.par_iter()).for_each(|(((z, mx), pk), &t)| {
        *mx = simd::max(z);
        let t = t as usize;
        *pk = if (first..first + v).contains(&t) { z[t - first] } else { 0.0 };
    });
}

/// Step 2: `logits = exp(logits - max)` in place with the global row maxima, and each
/// row's local sum of them (to be summed across the ranks).
pub fn xent_parallel_exp(logits: &mut [f32], max: &[f32], rows: usize, v: usize, sum: &mut [f32]) {
    check_len("xent_parallel_exp", "logits", logits.len(), rows * v);
    check_len("xent_parallel_exp", "max", max.len(), rows);
    check_len("xent_parallel_exp", "sum", sum.len(), rows);
    if v == 0 {
        sum.fill(0.0);
        return;
    }
    logits.par_chunks_mut(v).zip(max.par_iter()).zip(sum.par_iter_mut()).for_each(|((z, &mx), s)| {
        vectorized(#[inline(always)] || {
            *s = exp_sum_inplace(z, mx);
        })
    });
}

/// Step 3 (backward): with `logits` holding `exp(z - max)` and `sum` the global sums,
/// overwrites them with `scale * (softmax - onehot(target))` for this rank's columns.
pub fn xent_parallel_grad(logits: &mut [f32], sum: &[f32], targets: &[u32], first: usize, rows: usize, v: usize, scale: f32) {
    check_len("xent_parallel_grad", "logits", logits.len(), rows * v);
    check_len("xent_parallel_grad", "sum", sum.len(), rows);
    check_len("xent_parallel_grad", "targets", targets.len(), rows);
    if v == 0 {
        return;
    }
    logits.par_chunks_mut(v).zip(sum.par_iter()).zip(targets.par_iter()).for_each(|((z, &s), &t)| {
        let k = scale / s;
        for e in z.iter_mut() {
            *e *= k;
        }
        let t = t as usize;
        if (first..first + v).contains(&t) {
            z[t - first] -= scale;
        }
    });
}

#[cfg(test)]
mod parallel_tests {
    use super::*;

    /// Two halves of the vocabulary, combined as the ranks would, give the fused
    /// kernel's loss and gradient.
    #[test]
    fn vocabulary_halves_give_the_fused_loss_and_gradient() {
        let (rows, v, split) = (5, 37, 20);
        let logits: Vec<f32> = (0..rows * v).map(|i| ((i * 7919 % 101) as f32 - 50.0) / 13.0).collect();
        let targets: Vec<u32> = vec![0, 19, 20, 36, 7];
        let mut fused = logits.clone();
        let mut losses = vec![0.0; rows];
        let total = softmax_xent_forward_backward(&mut fused, &mut losses, &targets, rows, v, 0.5);
        let parts: Vec<(usize, usize)> = vec![(0, split), (split, v - split)];
        let mut local: Vec<Vec<f32>> = parts.iter().map(|&(f, n)| (0..rows).flat_map(|r| logits[r * v + f..r * v + f + n].to_vec()).collect()).collect();
        let (mut mx, mut pk) = (vec![f32::NEG_INFINITY; rows], vec![0.0; rows]);
        for ((f, n), z) in parts.iter().zip(&local) {
            let (mut m, mut p) = (vec![0.0; rows], vec![0.0; rows]);
            xent_parallel_stats(z, &targets, *f, rows, *n, &mut m, &mut p);
            for r in 0..rows {
                mx[r] = mx[r].max(m[r]);
                pk[r] += p[r];
            }
        }
        let mut sum = vec![0.0; rows];
        for ((_, n), z) in parts.iter().zip(&mut local) {
            let mut s = vec![0.0; rows];
            xent_parallel_exp(z, &mx, rows, *n, &mut s);
            for r in 0..rows {
                sum[r] += s[r];
            }
        }
        let loss: f64 = (0..rows).map(|r| ((sum[r].ln() + mx[r]) - pk[r]) as f64).sum();
        assert!((loss - total).abs() < 1e-5 * total.abs(), "{loss} vs {total}");
        for ((f, n), z) in parts.iter().zip(&mut local) {
            xent_parallel_grad(z, &sum, &targets, *f, rows, *n, 0.5);
            for r in 0..rows {
                for j in 0..*n {
                    let (a, b) = (z[r * n + j], fused[r * v + f + j]);
                    assert!((a - b).abs() < 1e-6, "row {r} col {}: {a} vs {b}", f + j);
                }
            }
        }
    }
}

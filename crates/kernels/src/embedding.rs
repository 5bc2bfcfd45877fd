//! Token + position embedding: `out[b, t] = wte[tokens[b, t]] + wpe[t]` (GPT-2).
//!
//! The backward is a scatter-add into `dwte`, where repeated tokens collide. Instead of
//! atomics (order-dependent float sums) each task owns a contiguous range of channels
//! and visits all positions in order, so every `dwte` element receives its terms in
//! position order regardless of the thread count.

use rayon::prelude::*;

use crate::error::{check_ids, check_len};
use crate::simd::{vectorized, SendPtr};

/// Channels per backward task: 2 cache lines per row visit.
const CHANNELS_PER_TASK: usize = 32;

/// out (B,T,C) = wte[tokens] + wpe[position]. Panics on a token id >= V
/// (use [`crate::check_tokens`] on untrusted ids first).
pub fn embedding_forward(out: &mut [f32], tokens: &[u32], wte: &[f32], wpe: &[f32], b: usize, t: usize, c: usize) {
    check_len("embedding_forward", "out", out.len(), b * t * c);
    check_len("embedding_forward", "tokens", tokens.len(), b * t);
    if c == 0 || b * t == 0 {
        return;
    }
    if wpe.len() < t * c {
        panic!(
            "{}",
            crate::KernelError::LengthMismatch { kernel: "embedding_forward", buffer: "wpe", expected: t * c, got: wpe.len() }
        );
    }
    if wte.len() % c != 0 {
        panic!(
            "{}",
            crate::KernelError::LengthMismatch { kernel: "embedding_forward", buffer: "wte", expected: (wte.len() / c + 1) * c, got: wte.len() }
        );
    }
    check_ids("embedding_forward", tokens, wte.len() / c);
    out.par_chunks_mut(c).enumerate().for_each(|(row, o)| {
        let tok = tokens[row] as usize;
        let pos = row % t;
        let e = &wte[tok * c..(tok + 1) * c];
        let p = &wpe[pos * c..(pos + 1) * c];
        for ((o, &e), &p) in o.iter_mut().zip(e).zip(p) {
            *o = e + p;
        }
    });
}

/// dwte[token] += dout, dwpe[pos] += dout, in a fixed (position) order.
pub fn embedding_backward(dwte: &mut [f32], dwpe: &mut [f32], dout: &[f32], tokens: &[u32], b: usize, t: usize, c: usize) {
    check_len("embedding_backward", "dout", dout.len(), b * t * c);
    check_len("embedding_backward", "tokens", tokens.len(), b * t);
    if c == 0 || b * t == 0 {
        return;
    }
    if dwpe.len() < t * c {
        panic!(
            "{}",
            crate::KernelError::LengthMismatch { kernel: "embedding_backward", buffer: "dwpe", expected: t * c, got: dwpe.len() }
        );
    }
    if dwte.len() % c != 0 {
        panic!(
            "{}",
            crate::KernelError::LengthMismatch { kernel: "embedding_backward", buffer: "dwte", expected: (dwte.len() / c + 1) * c, got: dwte.len() }
        );
    }
    let vocab = dwte.len() / c;
    check_ids("embedding_backward", tokens, vocab);
    // dwpe: rows are disjoint per position; sum over batch in order b = 0, 1, ...
    dwpe[..t * c].par_chunks_mut(c).enumerate().for_each(|(pos, d)| {
        for bi in 0..b {
            let g = &dout[(bi * t + pos) * c..(bi * t + pos + 1) * c];
            for (d, &g) in d.iter_mut().zip(g) {
                *d += g;
            }
        }
    });
    let base = SendPtr(dwte.as_mut_ptr());
    let tasks = c.div_ceil(CHANNELS_PER_TASK);
    (0..tasks).into_par_iter().for_each(|task| {
        let c0 = task * CHANNELS_PER_TASK;
        let c1 = (c0 + CHANNELS_PER_TASK).min(c);
        vectorized(#[inline(always)] || {
            for (row, &tok) in tokens.iter().enumerate() {
                let g = &dout[row * c + c0..row * c + c1];
                // SAFETY: tok < vocab (checked above) so the range lies inside dwte;
                // tasks own disjoint channel ranges [c0, c1), so no two threads write
                // the same element, and dwte outlives this parallel section.
                let d = unsafe { std::slice::from_raw_parts_mut(base.get().add(tok as usize * c + c0), c1 - c0) };
                for (d, &g) in d.iter_mut().zip(g) {
                    *d += g;
                }
            }
        })
    });
}

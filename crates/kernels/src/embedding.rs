//! Token + position embedding: `out[b, t] = wte[tokens[b, t]] + wpe[t]` (GPT-2), and
//! token-only embedding `out[b, t] = wte[tokens[b, t]]` (Llama: positions come from RoPE).
//!
//! The backward is a scatter-add into `dwte`, where repeated tokens collide. Instead of
//! atomics (order-dependent float sums) each task owns a contiguous range of channels
//! and visits all positions in order, so every `dwte` element receives its terms in
//! position order regardless of the thread count. Both variants share that code
//! ([`scatter_add_rows`]) and the gather ([`gather_rows`]).

use rayon::prelude::*;

use crate::error::{check_ids, check_len, KernelError};
use crate::simd::{vectorized, SendPtr};

/// Channels per backward task: 2 cache lines per row visit.
const CHANNELS_PER_TASK: usize = 32;

/// `out (B,T,C) = wte[tokens] + wpe[position]`. Panics on a token id >= V
/// (use [`crate::check_tokens`] on untrusted ids first).
pub fn embedding_forward(out: &mut [f32], tokens: &[u32], wte: &[f32], wpe: &[f32], b: usize, t: usize, c: usize) {
    gather_rows("embedding_forward", out, tokens, wte, Some(wpe), b, t, c);
}

/// `out (B,T,C) = wte[tokens]`, no position embedding. Panics on a token id >= V
/// (use [`crate::check_tokens`] on untrusted ids first).
pub fn token_embedding_forward(out: &mut [f32], tokens: &[u32], wte: &[f32], b: usize, t: usize, c: usize) {
    gather_rows("token_embedding_forward", out, tokens, wte, None, b, t, c);
}

/// `dwte[token] += dout`, `dwpe[pos] += dout`, in a fixed (position) order.
pub fn embedding_backward(dwte: &mut [f32], dwpe: &mut [f32], dout: &[f32], tokens: &[u32], b: usize, t: usize, c: usize) {
    let kernel = "embedding_backward";
    check_len(kernel, "dout", dout.len(), b * t * c);
    check_len(kernel, "tokens", tokens.len(), b * t);
    if c == 0 || b * t == 0 {
        return;
    }
    check_table(kernel, "dwte", dwte.len(), c);
    check_ids(kernel, tokens, dwte.len() / c);
    position_embedding_backward(dwpe, dout, b, t, c);
    scatter_add_rows(kernel, dwte, dout, tokens, c);
}

/// `dwte[token] += dout` (B,T,C), in a fixed (position) order.
pub fn token_embedding_backward(dwte: &mut [f32], dout: &[f32], tokens: &[u32], b: usize, t: usize, c: usize) {
    let kernel = "token_embedding_backward";
    check_len(kernel, "dout", dout.len(), b * t * c);
    check_len(kernel, "tokens", tokens.len(), b * t);
    if c == 0 || b * t == 0 {
        return;
    }
    scatter_add_rows(kernel, dwte, dout, tokens, c);
}

/// Panics unless a (V, C) table's length is a multiple of `c` (> 0).
fn check_table(kernel: &'static str, buffer: &'static str, len: usize, c: usize) {
    if len % c != 0 {
        panic!("{}", KernelError::LengthMismatch { kernel, buffer, expected: (len / c + 1) * c, got: len });
    }
}

/// out[row] = wte[tokens[row]] (+ wpe[row % t]); checks every length and id.
#[allow(clippy::too_many_arguments)]
fn gather_rows(kernel: &'static str, out: &mut [f32], tokens: &[u32], wte: &[f32], wpe: Option<&[f32]>, b: usize, t: usize, c: usize) {
    check_len(kernel, "out", out.len(), b * t * c);
    check_len(kernel, "tokens", tokens.len(), b * t);
    if c == 0 || b * t == 0 {
        return;
    }
    if let Some(wpe) = wpe {
        if wpe.len() < t * c {
            panic!("{}", KernelError::LengthMismatch { kernel, buffer: "wpe", expected: t * c, got: wpe.len() });
        }
    }
    check_table(kernel, "wte", wte.len(), c);
    check_ids(kernel, tokens, wte.len() / c);
    out.par_chunks_mut(c).enumerate().for_each(|(row, o)| {
        let tok = tokens[row] as usize;
        let e = &wte[tok * c..(tok + 1) * c];
        match wpe {
            Some(wpe) => {
                let pos = row % t;
                let p = &wpe[pos * c..(pos + 1) * c];
                for ((o, &e), &p) in o.iter_mut().zip(e).zip(p) {
                    *o = e + p;
                }
            }
            None => o.copy_from_slice(e),
        }
    });
}

/// dwte[tokens[row]] += dout[row] for every row (dout is (tokens.len(), c), c > 0).
/// Each task owns a channel range and visits rows in order, so every element gets its
/// terms in row order whatever the thread count.
fn scatter_add_rows(kernel: &'static str, dwte: &mut [f32], dout: &[f32], tokens: &[u32], c: usize) {
    check_len(kernel, "dout", dout.len(), tokens.len() * c);
    check_table(kernel, "dwte", dwte.len(), c);
    check_ids(kernel, tokens, dwte.len() / c);
    let base = SendPtr(dwte.as_mut_ptr());
    let tasks = c.div_ceil(CHANNELS_PER_TASK);
    (0..tasks).into_par_iter().for_each(|task| {
        let c0 = task * CHANNELS_PER_TASK;
        let c1 = (c0 + CHANNELS_PER_TASK).min(c);
        vectorized(#[inline(always)] || {
            for (row, &tok) in tokens.iter().enumerate() {
                let g = &dout[row * c + c0..row * c + c1];
                // SAFETY: tok < vocab (checked above) so the range lies inside
                // dwte; tasks own disjoint channel ranges [c0, c1), so no two threads
                // write the same element, and dwte outlives this parallel section.
                let d = unsafe { std::slice::from_raw_parts_mut(base.get().add(tok as usize * c + c0), c1 - c0) };
                for (d, &g) in d.iter_mut().zip(g) {
                    *d += g;
                }
            }
        })
    });
}

/// A vocabulary-parallel embedding's forward on the rank holding rows
/// `[first, first + wte.len() / c)` of the table: `out[row] = wte[tokens[row] - first]`
/// for the tokens it holds, 0 for the others (summed across the ranks afterwards), plus
/// `wpe[row % t]` when given (on one rank only).
#[allow(clippy::too_many_arguments)] // the table part, its first row, positions, shape
pub fn embedding_part_forward(out: &mut [f32], tokens: &[u32], wte: &[f32], first: usize, wpe: Option<&[f32]>, b: usize, t: usize, c: usize) {
    let kernel = "embedding_part_forward";
    check_len(kernel, "out", out.len(), b * t * c);
    check_len(kernel, "tokens", tokens.len(), b * t);
    if c == 0 {
        return;
    }
    check_table(kernel, "wte", wte.len(), c);
    if let Some(wpe) = wpe {
        if wpe.len() < t * c {
            panic!("{}", KernelError::LengthMismatch { kernel, buffer: "wpe", expected: t * c, got: wpe.len() });
        }
    }
    let rows = wte.len() / c;
    out.par_chunks_mut(c).enumerate().for_each(|(row, o)| {
        let tok = tokens[row] as usize;
        match tok.checked_sub(first).filter(|&i| i < rows) {
            Some(i) => o.copy_from_slice(&wte[i * c..(i + 1) * c]),
            None => o.fill(0.0),
        }
        if let Some(wpe) = wpe {
            let p = &wpe[(row % t) * c..(row % t + 1) * c];
            for (o, &p) in o.iter_mut().zip(p) {
                *o += p;
            }
        }
    });
}

/// Backward of [`embedding_part_forward`]'s table rows: `dwte[tokens[row] - first] +=
/// dout[row]` for the tokens this rank holds, in row order (the same sums as the whole
/// table's backward).
pub fn embedding_part_backward(dwte: &mut [f32], dout: &[f32], tokens: &[u32], first: usize, c: usize) {
    let kernel = "embedding_part_backward";
    check_len(kernel, "dout", dout.len(), tokens.len() * c);
    if c == 0 {
        return;
    }
    check_table(kernel, "dwte", dwte.len(), c);
    let rows = (dwte.len() / c) as u32;
    let mine: Vec<usize> = (0..tokens.len()).filter(|&r| (tokens[r] as usize).checked_sub(first).is_some_and(|i| i < rows as usize)).collect();
    let local: Vec<u32> = mine.iter().map(|&r| tokens[r] - first as u32).collect();
    let mut g = Vec::with_capacity(mine.len() * c);
    for &r in &mine {
        g.extend_from_slice(&dout[r * c..(r + 1) * c]);
    }
    scatter_add_rows(kernel, dwte, &g, &local, c);
}

/// Position-table gradient alone: `dwpe[pos] += dout[b, pos]`, summed over the batch in
/// order b = 0, 1, ... (rows of dwpe are disjoint per position).
pub fn position_embedding_backward(dwpe: &mut [f32], dout: &[f32], b: usize, t: usize, c: usize) {
    let kernel = "position_embedding_backward";
    check_len(kernel, "dout", dout.len(), b * t * c);
    if c == 0 || b * t == 0 {
        return;
    }
    if dwpe.len() < t * c {
        panic!("{}", KernelError::LengthMismatch { kernel, buffer: "dwpe", expected: t * c, got: dwpe.len() });
    }
    dwpe[..t * c].par_chunks_mut(c).enumerate().for_each(|(pos, d)| {
        for bi in 0..b {
            let g = &dout[(bi * t + pos) * c..(bi * t + pos + 1) * c];
            for (d, &g) in d.iter_mut().zip(g) {
                *d += g;
            }
        }
    });
}

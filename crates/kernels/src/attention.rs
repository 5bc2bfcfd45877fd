//! Causal multi-head self-attention (Vaswani et al. 2017, eq. 1) on packed qkv.
//!
//! qkv (B, T, 3C) holds [q | k | v] along the last dim, head h at channels
//! `h*hs..(h+1)*hs` of each part (hs = C / NH); out is (B, T, C).
//! Per (b, h): `S = Q K^T / sqrt(hs)` with causal mask, `P = softmax(S)`, `O = P V`.
//!
//! Design (measured, see crates/kernels/BENCHMARKS.md): we save the probabilities P
//! (B, NH, T, T) rather than only the row logsumexp of a flash-style kernel. On CPU
//! the backward then needs no recomputation of `Q K^T` and its exponentials, and P for
//! T = 256 is 256 KiB per head, small next to the MLP activations.
//! Rows are processed in blocks of [`ROW_BLOCK`] queries; block `r` only touches keys
//! `0..(r+1)*ROW_BLOCK`, which skips most of the masked upper triangle (62% of the
//! full work at T = 256) while every product stays a strided GEMM on `qkv` itself
//! (no copies).
//!
//! Backward per (b, h), for each row block (in order, so dK/dV accumulate
//! deterministically): `dP = dO V^T`, `dV += P^T dO`,
//! `dS = P * (dP - rowsum(P * dP))` (softmax Jacobian), `dQ += dS K / sqrt(hs)`,
//! `dK += dS^T Q / sqrt(hs)`.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::error::{check_len, KernelError};
use crate::matmul::{gemm_raw, Mat};
use crate::simd::{self, exp_f32, vectorized, SendPtr};

/// Queries per block.
const ROW_BLOCK: usize = 64;

thread_local! {
    /// dP scratch for the backward (ROW_BLOCK x T), reused across calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Length of the `saved` buffer: the probabilities, (B, NH, T, T).
pub fn attention_saved_len(b: usize, t: usize, nh: usize) -> usize {
    b * nh * t * t
}

fn check_shapes(kernel: &'static str, c: usize, nh: usize) -> usize {
    if nh == 0 || c % nh != 0 {
        panic!("{}", KernelError::HeadsDoNotDivide { kernel, channels: c, heads: nh });
    }
    c / nh
}

/// Causal attention forward; writes `out` (B,T,C) and the probabilities into `saved`.
pub fn attention_forward(out: &mut [f32], saved: &mut [f32], qkv: &[f32], b: usize, t: usize, c: usize, nh: usize) {
    let hs = check_shapes("attention_forward", c, nh);
    check_len("attention_forward", "out", out.len(), b * t * c);
    check_len("attention_forward", "qkv", qkv.len(), b * t * 3 * c);
    check_len("attention_forward", "saved", saved.len(), attention_saved_len(b, t, nh));
    if b * t * c == 0 {
        return;
    }
    let scale = 1.0 / (hs as f32).sqrt();
    let blocks = t.div_ceil(ROW_BLOCK);
    let out_p = SendPtr(out.as_mut_ptr());
    let saved_p = SendPtr(saved.as_mut_ptr());
    let c3 = 3 * c;
    (0..b * nh * blocks).into_par_iter().for_each(|task| {
        let (bh, rb) = (task / blocks, task % blocks);
        let (bi, h) = (bh / nh, bh % nh);
        let i0 = rb * ROW_BLOCK;
        let i1 = (i0 + ROW_BLOCK).min(t);
        let (rows, keys) = (i1 - i0, i1);
        let base = bi * t * c3;
        let q = Mat { ptr: qkv[base + i0 * c3 + h * hs..].as_ptr(), rs: c3 as isize, cs: 1 };
        // K^T (hs, keys): element (p, j) = k[j, p].
        let kt = Mat { ptr: qkv[base + c + h * hs..].as_ptr(), rs: 1, cs: c3 as isize };
        let v = Mat { ptr: qkv[base + 2 * c + h * hs..].as_ptr(), rs: c3 as isize, cs: 1 };
        // SAFETY: task (bh, rb) writes rows i0..i1 of head (bi, h) in `saved` and the
        // (rows, hs) strip at channels h*hs of rows i0..i1 of batch bi in `out`; these
        // regions are disjoint between tasks, in bounds by the length checks, and the
        // buffers outlive the parallel loop. `qkv` is only read.
        let p_rows = unsafe { std::slice::from_raw_parts_mut(saved_p.get().add((bh * t + i0) * t), rows * t) };
        unsafe {
            gemm_raw(p_rows.as_mut_ptr(), t, q, kt, rows, keys, hs, false, scale, false);
        }
        vectorized(#[inline(always)] || {
            for (r, row) in p_rows.chunks_exact_mut(t).enumerate() {
                let n = i0 + r + 1; // causal: keys 0..=i
                let (live, masked) = row.split_at_mut(n);
                let mx = simd::max(live);
                let mut s = 0.0f32;
                let mut acc = [0.0f32; simd::LANES];
                let mut it = live.chunks_exact_mut(simd::LANES);
                for blk in &mut it {
                    for l in 0..simd::LANES {
                        let e = exp_f32(blk[l] - mx);
                        blk[l] = e;
                        acc[l] += e;
                    }
                }
                for e in it.into_remainder() {
                    *e = exp_f32(*e - mx);
                    s += *e;
                }
                let k = 1.0 / (simd::sum(&acc) + s);
                for e in live.iter_mut() {
                    *e *= k;
                }
                masked.fill(0.0);
            }
        });
        let p = Mat { ptr: p_rows.as_ptr(), rs: t as isize, cs: 1 };
        unsafe {
            let o = out_p.get().add((bi * t + i0) * c + h * hs);
            gemm_raw(o, c, p, v, rows, hs, keys, false, 1.0, false);
        }
    });
}

/// Causal attention backward; adds into `dqkv` (B,T,3C).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    saved: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    let hs = check_shapes("attention_backward", c, nh);
    check_len("attention_backward", "dqkv", dqkv.len(), b * t * 3 * c);
    check_len("attention_backward", "dout", dout.len(), b * t * c);
    check_len("attention_backward", "qkv", qkv.len(), b * t * 3 * c);
    check_len("attention_backward", "out", out.len(), b * t * c);
    check_len("attention_backward", "saved", saved.len(), attention_saved_len(b, t, nh));
    if b * t * c == 0 {
        return;
    }
    // `out` is not needed: the saved probabilities replace the flash-style
    // `rowsum(dO * O)` term. It stays in the signature so a flash variant can use it.
    let _ = out;
    let scale = 1.0 / (hs as f32).sqrt();
    let c3 = 3 * c;
    let dp = SendPtr(dqkv.as_mut_ptr());
    (0..b * nh).into_par_iter().for_each(|bh| {
        let (bi, h) = (bh / nh, bh % nh);
        let base = bi * t * c3;
        let probs = &saved[bh * t * t..(bh + 1) * t * t];
        SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            if scratch.len() < ROW_BLOCK * t {
                scratch.resize(ROW_BLOCK * t, 0.0);
            }
            for i0 in (0..t).step_by(ROW_BLOCK) {
                let i1 = (i0 + ROW_BLOCK).min(t);
                let (rows, keys) = (i1 - i0, i1);
                let d_o = Mat { ptr: dout[(bi * t + i0) * c + h * hs..].as_ptr(), rs: c as isize, cs: 1 };
                let vt = Mat { ptr: qkv[base + 2 * c + h * hs..].as_ptr(), rs: 1, cs: c3 as isize };
                let p_blk = &probs[i0 * t..i1 * t];
                let pt = Mat { ptr: p_blk.as_ptr(), rs: 1, cs: t as isize };
                let ds = &mut scratch[..rows * keys];
                // SAFETY: task bh writes only the dq/dk/dv strips of head (bi, h) in
                // dqkv (channels h*hs, C + h*hs, 2C + h*hs of batch bi's rows), disjoint
                // from other tasks; all reads are in bounds by the length checks; the
                // scratch is this thread's own and does not alias any input.
                unsafe {
                    // dP (rows, keys) = dO (rows, hs) @ V^T (hs, keys)
                    gemm_raw(ds.as_mut_ptr(), keys, d_o, vt, rows, keys, hs, false, 1.0, false);
                    // dV (keys, hs) += P^T (keys, rows) @ dO (rows, hs)
                    let dv = dp.get().add(base + 2 * c + h * hs);
                    gemm_raw(dv, c3, pt, d_o, keys, hs, rows, true, 1.0, false);
                }
                vectorized(#[inline(always)] || {
                    for r in 0..rows {
                        let n = i0 + r + 1;
                        let prow = &p_blk[r * t..r * t + n];
                        let drow = &mut ds[r * keys..r * keys + keys];
                        let inner = simd::dot(prow, &drow[..n]);
                        for j in 0..n {
                            drow[j] = prow[j] * (drow[j] - inner);
                        }
                        // Masked keys: P = 0 there, so dS = 0.
                        drow[n..].fill(0.0);
                    }
                });
                let dsm = Mat { ptr: ds.as_ptr(), rs: keys as isize, cs: 1 };
                let dst = Mat { ptr: ds.as_ptr(), rs: 1, cs: keys as isize };
                let k = Mat { ptr: qkv[base + c + h * hs..].as_ptr(), rs: c3 as isize, cs: 1 };
                let q = Mat { ptr: qkv[base + i0 * c3 + h * hs..].as_ptr(), rs: c3 as isize, cs: 1 };
                unsafe {
                    // dQ (rows, hs) += scale * dS (rows, keys) @ K (keys, hs)
                    let dq = dp.get().add(base + i0 * c3 + h * hs);
                    gemm_raw(dq, c3, dsm, k, rows, hs, keys, true, scale, false);
                    // dK (keys, hs) += scale * dS^T (keys, rows) @ Q (rows, hs)
                    let dk = dp.get().add(base + c + h * hs);
                    gemm_raw(dk, c3, dst, q, keys, hs, rows, true, scale, false);
                }
            }
        });
    });
}

//! Causal self-attention (Vaswani et al. 2017, eq. 1) on packed qkv, multi-head or
//! grouped-query (GQA, Ainslie et al. 2023; Hugging Face `repeat_kv` semantics).
//!
//! A qkv row (one token) has width `(NH + 2 NKV) HD`: `[q (NH HD) | k (NKV HD) | v (NKV HD)]`,
//! head j of a part at channels `j*HD..(j+1)*HD`; query head h reads key/value head
//! `h / (NH / NKV)`. out is (B, T, NH HD). The GPT-2 entry points [`attention_forward`]
//! and [`attention_backward`] (qkv (B, T, 3C), HD = C / NH) are the case NKV = NH.
//! Per (b, h): `S = Q K^T / sqrt(HD)` with causal mask, `P = softmax(S)`, `O = P V`.
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
//! `dS = P * (dP - rowsum(P * dP))` (softmax Jacobian), `dQ += dS K / sqrt(HD)`,
//! `dK += dS^T Q / sqrt(HD)`. With GQA several query heads add into one dK/dV: a task
//! owns a (batch, kv head) pair and runs that group's query heads in order, so the
//! accumulation order is fixed whatever the thread count (parallelism B * NKV tasks;
//! for MHA this is exactly the per-(b, h) loop).

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

/// Panics unless `nh` is a positive multiple of `nkv` and `hd > 0` (GQA / RoPE shapes).
pub(crate) fn check_heads(kernel: &'static str, nh: usize, nkv: usize, hd: usize) {
    if nkv == 0 || nh < nkv || nh % nkv != 0 {
        panic!("{}", KernelError::KvHeadsDoNotDivide { kernel, heads: nh, kv_heads: nkv });
    }
    if hd == 0 {
        let e = KernelError::InvalidArgument { kernel, name: "hd", value: 0.0, why: "the head dim must be positive" };
        panic!("{e}");
    }
}

/// Causal attention forward; writes `out` (B,T,C) and the probabilities into `saved`.
/// qkv is (B, T, 3C); same as [`attention_gqa_forward`] with NKV = NH, HD = C / NH.
pub fn attention_forward(out: &mut [f32], saved: &mut [f32], qkv: &[f32], b: usize, t: usize, c: usize, nh: usize) {
    let hs = check_shapes("attention_forward", c, nh);
    forward("attention_forward", out, saved, qkv, b, t, nh, nh, hs);
}

/// Grouped-query causal attention forward: qkv (B, T, (NH + 2 NKV) HD) -> out
/// (B, T, NH HD); writes the probabilities (B, NH, T, T) into `saved`.
/// Panics unless NKV >= 1 divides NH and HD > 0.
#[allow(clippy::too_many_arguments)]
pub fn attention_gqa_forward(out: &mut [f32], saved: &mut [f32], qkv: &[f32], b: usize, t: usize, nh: usize, nkv: usize, hd: usize) {
    check_heads("attention_gqa_forward", nh, nkv, hd);
    forward("attention_gqa_forward", out, saved, qkv, b, t, nh, nkv, hd);
}

#[allow(clippy::too_many_arguments)]
fn forward(kernel: &'static str, out: &mut [f32], saved: &mut [f32], qkv: &[f32], b: usize, t: usize, nh: usize, nkv: usize, hd: usize) {
    let ow = nh * hd; // out row width
    let w = (nh + 2 * nkv) * hd; // qkv row width
    check_len(kernel, "out", out.len(), b * t * ow);
    check_len(kernel, "qkv", qkv.len(), b * t * w);
    check_len(kernel, "saved", saved.len(), attention_saved_len(b, t, nh));
    if b * t * ow == 0 {
        return;
    }
    let group = nh / nkv;
    let (k_off, v_off) = (nh * hd, (nh + nkv) * hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let blocks = t.div_ceil(ROW_BLOCK);
    let out_p = SendPtr(out.as_mut_ptr());
    let saved_p = SendPtr(saved.as_mut_ptr());
    (0..b * nh * blocks).into_par_iter().for_each(|task| {
        let (bh, rb) = (task / blocks, task % blocks);
        let (bi, h) = (bh / nh, bh % nh);
        let kvh = h / group;
        let i0 = rb * ROW_BLOCK;
        let i1 = (i0 + ROW_BLOCK).min(t);
        let (rows, keys) = (i1 - i0, i1);
        let base = bi * t * w;
        let q = Mat { ptr: qkv[base + i0 * w + h * hd..].as_ptr(), rs: w as isize, cs: 1 };
        // K^T (hd, keys): element (p, j) = k[j, p].
        let kt = Mat { ptr: qkv[base + k_off + kvh * hd..].as_ptr(), rs: 1, cs: w as isize };
        let v = Mat { ptr: qkv[base + v_off + kvh * hd..].as_ptr(), rs: w as isize, cs: 1 };
        // SAFETY: task (bh, rb) writes rows i0..i1 of head (bi, h) in `saved` and the
        // (rows, hd) strip at channels h*hd of rows i0..i1 of batch bi in `out`; these
        // regions are disjoint between tasks, in bounds by the length checks, and the
        // buffers outlive the parallel loop. `qkv` is only read.
        let p_rows = unsafe { std::slice::from_raw_parts_mut(saved_p.get().add((bh * t + i0) * t), rows * t) };
        unsafe {
            gemm_raw(p_rows.as_mut_ptr(), t, q, kt, rows, keys, hd, false, scale, false);
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
            let o = out_p.get().add((bi * t + i0) * ow + h * hd);
            gemm_raw(o, ow, p, v, rows, hd, keys, false, 1.0, false);
        }
    });
}

/// Causal attention backward; adds into `dqkv` (B,T,3C).
/// Same as [`attention_gqa_backward`] with NKV = NH, HD = C / NH.
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
    backward("attention_backward", dqkv, dout, qkv, out, saved, b, t, nh, nh, hs);
}

/// Grouped-query causal attention backward; adds into `dqkv` (B, T, (NH + 2 NKV) HD).
/// dout and out are (B, T, NH HD), saved is the forward's (B, NH, T, T).
/// Bitwise independent of the thread count (see the module docs).
#[allow(clippy::too_many_arguments)]
pub fn attention_gqa_backward(
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
    check_heads("attention_gqa_backward", nh, nkv, hd);
    backward("attention_gqa_backward", dqkv, dout, qkv, out, saved, b, t, nh, nkv, hd);
}

#[allow(clippy::too_many_arguments)]
fn backward(
    kernel: &'static str,
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
    let ow = nh * hd;
    let w = (nh + 2 * nkv) * hd;
    check_len(kernel, "dqkv", dqkv.len(), b * t * w);
    check_len(kernel, "dout", dout.len(), b * t * ow);
    check_len(kernel, "qkv", qkv.len(), b * t * w);
    check_len(kernel, "out", out.len(), b * t * ow);
    check_len(kernel, "saved", saved.len(), attention_saved_len(b, t, nh));
    if b * t * ow == 0 {
        return;
    }
    // `out` is not needed: the saved probabilities replace the flash-style
    // `rowsum(dO * O)` term. It stays in the signature so a flash variant can use it.
    let _ = out;
    let group = nh / nkv;
    let (k_off, v_off) = (nh * hd, (nh + nkv) * hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let dp = SendPtr(dqkv.as_mut_ptr());
    (0..b * nkv).into_par_iter().for_each(|bg| {
        let (bi, kvh) = (bg / nkv, bg % nkv);
        let base = bi * t * w;
        let k = Mat { ptr: qkv[base + k_off + kvh * hd..].as_ptr(), rs: w as isize, cs: 1 };
        let vt = Mat { ptr: qkv[base + v_off + kvh * hd..].as_ptr(), rs: 1, cs: w as isize };
        SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            if scratch.len() < ROW_BLOCK * t {
                scratch.resize(ROW_BLOCK * t, 0.0);
            }
            // The group's query heads in order, then row blocks in order: the only
            // accumulation order dK/dV of this kv head ever see.
            for h in kvh * group..(kvh + 1) * group {
                let bh = bi * nh + h;
                let probs = &saved[bh * t * t..(bh + 1) * t * t];
                for i0 in (0..t).step_by(ROW_BLOCK) {
                    let i1 = (i0 + ROW_BLOCK).min(t);
                    let (rows, keys) = (i1 - i0, i1);
                    let d_o = Mat { ptr: dout[(bi * t + i0) * ow + h * hd..].as_ptr(), rs: ow as isize, cs: 1 };
                    let p_blk = &probs[i0 * t..i1 * t];
                    let pt = Mat { ptr: p_blk.as_ptr(), rs: 1, cs: t as isize };
                    let ds = &mut scratch[..rows * keys];
                    // SAFETY: task (bi, kvh) writes only the dq strips of its query heads
                    // (channels h*hd) and the dk/dv strips of kv head kvh (channels
                    // k_off + kvh*hd, v_off + kvh*hd) of batch bi's rows: disjoint from
                    // other tasks. All reads are in bounds by the length checks; the
                    // scratch is this thread's own and does not alias any input.
                    unsafe {
                        // dP (rows, keys) = dO (rows, hd) @ V^T (hd, keys)
                        gemm_raw(ds.as_mut_ptr(), keys, d_o, vt, rows, keys, hd, false, 1.0, false);
                        // dV (keys, hd) += P^T (keys, rows) @ dO (rows, hd)
                        let dv = dp.get().add(base + v_off + kvh * hd);
                        gemm_raw(dv, w, pt, d_o, keys, hd, rows, true, 1.0, false);
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
                    let q = Mat { ptr: qkv[base + i0 * w + h * hd..].as_ptr(), rs: w as isize, cs: 1 };
                    unsafe {
                        // dQ (rows, hd) += scale * dS (rows, keys) @ K (keys, hd)
                        let dq = dp.get().add(base + i0 * w + h * hd);
                        gemm_raw(dq, w, dsm, k, rows, hd, keys, true, scale, false);
                        // dK (keys, hd) += scale * dS^T (keys, rows) @ Q (rows, hd)
                        let dk = dp.get().add(base + k_off + kvh * hd);
                        gemm_raw(dk, w, dst, q, keys, hd, rows, true, scale, false);
                    }
                }
            }
        });
    });
}

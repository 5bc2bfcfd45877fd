//! LayerNorm over the last dim (Ba, Kiros & Hinton 2016), eps = 1e-5 as in GPT-2
//! ([`layernorm_forward`]) or given ([`layernorm_forward_eps`]).
//!
//! Forward: `out = (x - mean) * rstd * w + b`, `rstd = 1 / sqrt(var + eps)` (biased var).
//! Backward (llm.c's form): with `n = (x - mean) * rstd` and `g = dout * w`,
//! `dx = rstd * (g - mean(g) - n * mean(g * n))`, `dw = sum_rows dout * n`, `db = sum_rows dout`.

use rayon::prelude::*;

use crate::error::check_len;
use crate::simd::{self, vectorized};

const EPS: f32 = 1e-5;
/// Rows per task; also the granularity of the dw/db partial sums, fixed so the
/// reduction order does not depend on the number of threads (shared with RMSNorm).
pub(crate) const ROWS_PER_CHUNK: usize = 32;

/// LayerNorm forward over rows of length `c` with eps = 1e-5 (GPT-2); saves `mean` and
/// `rstd` (one per row). Same as [`layernorm_forward_eps`] with `eps = 1e-5`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    rows: usize,
    c: usize,
) {
    layernorm_forward_eps(out, mean, rstd, x, w, b, rows, c, EPS);
}

/// LayerNorm forward over rows of length `c` with the given `eps`; saves `mean` and
/// `rstd` (one per row). out, x: (rows, c); mean, rstd: (rows); w, b: (c).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward_eps(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    rows: usize,
    c: usize,
    eps: f32,
) {
    check_len("layernorm_forward", "out", out.len(), rows * c);
    check_len("layernorm_forward", "x", x.len(), rows * c);
    check_len("layernorm_forward", "mean", mean.len(), rows);
    check_len("layernorm_forward", "rstd", rstd.len(), rows);
    check_len("layernorm_forward", "w", w.len(), c);
    if let Some(b) = b {
        check_len("layernorm_forward", "b", b.len(), c);
    }
    if rows == 0 || c == 0 {
        return;
    }
    out.par_chunks_mut(c * ROWS_PER_CHUNK)
        .zip(x.par_chunks(c * ROWS_PER_CHUNK))
        .zip(mean.par_chunks_mut(ROWS_PER_CHUNK).zip(rstd.par_chunks_mut(ROWS_PER_CHUNK)))
        .for_each(|((o, xs), (mu, rs))| {
            vectorized(#[inline(always)] || {
                for (r, (orow, xrow)) in o.chunks_exact_mut(c).zip(xs.chunks_exact(c)).enumerate() {
                    let m = simd::sum(xrow) / c as f32;
                    // Two-pass variance: no cancellation for rows with a large mean.
                    let mut acc = [0.0f32; simd::LANES];
                    let mut ch = xrow.chunks_exact(simd::LANES);
                    for blk in &mut ch {
                        for l in 0..simd::LANES {
                            let d = blk[l] - m;
                            acc[l] += d * d;
                        }
                    }
                    let mut var = simd::sum(&acc);
                    for &v in ch.remainder() {
                        var += (v - m) * (v - m);
                    }
                    let s = 1.0 / (var / c as f32 + eps).sqrt();
                    match b {
                        Some(b) => {
                            for i in 0..c {
                                orow[i] = (xrow[i] - m) * s * w[i] + b[i];
                            }
                        }
                        None => {
                            for i in 0..c {
                                orow[i] = (xrow[i] - m) * s * w[i];
                            }
                        }
                    }
                    mu[r] = m;
                    rs[r] = s;
                }
            })
        });
}

/// LayerNorm backward; adds into `dx`, `dw` and `db` (if given).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
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
    check_len("layernorm_backward", "dx", dx.len(), rows * c);
    check_len("layernorm_backward", "dout", dout.len(), rows * c);
    check_len("layernorm_backward", "x", x.len(), rows * c);
    check_len("layernorm_backward", "mean", mean.len(), rows);
    check_len("layernorm_backward", "rstd", rstd.len(), rows);
    check_len("layernorm_backward", "w", w.len(), c);
    check_len("layernorm_backward", "dw", dw.len(), c);
    if let Some(db) = db.as_deref() {
        check_len("layernorm_backward", "db", db.len(), c);
    }
    if rows == 0 || c == 0 {
        return;
    }
    let chunks = rows.div_ceil(ROWS_PER_CHUNK);
    // Per-chunk partial sums of dw (first c) and db (next c); summed in chunk order below.
    let mut partial = vec![0.0f32; chunks * 2 * c];
    dx.par_chunks_mut(c * ROWS_PER_CHUNK)
        .zip(partial.par_chunks_mut(2 * c))
        .enumerate()
        .for_each(|(ci, (dxs, part))| {
            let r0 = ci * ROWS_PER_CHUNK;
            vectorized(#[inline(always)] || {
                let (pw, pb) = part.split_at_mut(c);
                for (r, dxrow) in dxs.chunks_exact_mut(c).enumerate() {
                    let row = r0 + r;
                    let xrow = &x[row * c..(row + 1) * c];
                    let drow = &dout[row * c..(row + 1) * c];
                    let (m, s) = (mean[row], rstd[row]);
                    // mean(g) and mean(g * n) with lane accumulators.
                    let mut ag = [0.0f32; simd::LANES];
                    let mut agn = [0.0f32; simd::LANES];
                    let full = c - c % simd::LANES;
                    let mut i = 0;
                    while i < full {
                        for l in 0..simd::LANES {
                            let n = (xrow[i + l] - m) * s;
                            let g = drow[i + l] * w[i + l];
                            ag[l] += g;
                            agn[l] += g * n;
                        }
                        i += simd::LANES;
                    }
                    let mut sg = simd::sum(&ag);
                    let mut sgn = simd::sum(&agn);
                    for i in full..c {
                        let n = (xrow[i] - m) * s;
                        let g = drow[i] * w[i];
                        sg += g;
                        sgn += g * n;
                    }
                    let mg = sg / c as f32;
                    let mgn = sgn / c as f32;
                    for i in 0..c {
                        let n = (xrow[i] - m) * s;
                        let g = drow[i] * w[i];
                        dxrow[i] += s * (g - mg - n * mgn);
                        pw[i] += drow[i] * n;
                        pb[i] += drow[i];
                    }
                }
            })
        });
    let mut db = db;
    for part in partial.chunks_exact(2 * c) {
        let (pw, pb) = part.split_at(c);
        for (d, p) in dw.iter_mut().zip(pw) {
            *d += *p;
        }
        if let Some(db) = db.as_deref_mut() {
            for (d, p) in db.iter_mut().zip(pb) {
                *d += *p;
            }
        }
    }
}

//! RMSNorm over the last dim (Zhang & Sennrich 2019, eq. 4), as Hugging Face's
//! `LlamaRMSNorm` computes it in f32: `y = w * (x * rsqrt(mean(x^2) + eps))`.
//!
//! Forward saves `rstd = 1 / sqrt(mean(x^2) + eps)` per row. Backward: with
//! `n = x * rstd` and `g = dout * w`, `dx = rstd * (g - n * mean(g * n))`
//! (from `d rstd / d x_j = -rstd^3 x_j / c`), `dw = sum_rows dout * n`.
//! `dw` is reduced like LayerNorm's: per-chunk partial sums over a fixed number of rows
//! ([`ROWS_PER_CHUNK`]), added in chunk order, so it does not depend on the thread count.

use rayon::prelude::*;

use crate::error::check_len;
use crate::norm::ROWS_PER_CHUNK;
use crate::simd::{self, vectorized};

/// RMSNorm forward over rows of length `c`; saves `rstd` (one per row).
/// out, x: (rows, c); rstd: (rows); w: (c).
pub fn rmsnorm_forward(out: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], rows: usize, c: usize, eps: f32) {
    check_len("rmsnorm_forward", "out", out.len(), rows * c);
    check_len("rmsnorm_forward", "x", x.len(), rows * c);
    check_len("rmsnorm_forward", "rstd", rstd.len(), rows);
    check_len("rmsnorm_forward", "w", w.len(), c);
    if rows == 0 || c == 0 {
        return;
    }
    out.par_chunks_mut(c * ROWS_PER_CHUNK)
        .zip(x.par_chunks(c * ROWS_PER_CHUNK))
        .zip(rstd.par_chunks_mut(ROWS_PER_CHUNK))
        .for_each(|((o, xs), rs)| {
            vectorized(#[inline(always)] || {
                for (r, (orow, xrow)) in o.chunks_exact_mut(c).zip(xs.chunks_exact(c)).enumerate() {
                    let ms = simd::dot(xrow, xrow) / c as f32;
                    let s = 1.0 / (ms + eps).sqrt();
                    // HF order: normalise first, then scale by the weight.
                    for ((o, &xv), &wv) in orow.iter_mut().zip(xrow).zip(w) {
                        *o = wv * (xv * s);
                    }
                    rs[r] = s;
                }
            })
        });
}

/// RMSNorm backward; adds into `dx` (rows, c) and `dw` (c).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    dx: &mut [f32],
    dw: &mut [f32],
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    rows: usize,
    c: usize,
) {
    check_len("rmsnorm_backward", "dx", dx.len(), rows * c);
    check_len("rmsnorm_backward", "dout", dout.len(), rows * c);
    check_len("rmsnorm_backward", "x", x.len(), rows * c);
    check_len("rmsnorm_backward", "rstd", rstd.len(), rows);
    check_len("rmsnorm_backward", "w", w.len(), c);
    check_len("rmsnorm_backward", "dw", dw.len(), c);
    if rows == 0 || c == 0 {
        return;
    }
    let chunks = rows.div_ceil(ROWS_PER_CHUNK);
    // Per-chunk partial sums of dw; summed in chunk order below.
    let mut partial = vec![0.0f32; chunks * c];
    dx.par_chunks_mut(c * ROWS_PER_CHUNK)
        .zip(partial.par_chunks_mut(c))
        .enumerate()
        .for_each(|(ci, (dxs, pw))| {
            let r0 = ci * ROWS_PER_CHUNK;
            vectorized(#[inline(always)] || {
                for (r, dxrow) in dxs.chunks_exact_mut(c).enumerate() {
                    let row = r0 + r;
                    let xrow = &x[row * c..(row + 1) * c];
                    let drow = &dout[row * c..(row + 1) * c];
                    let s = rstd[row];
                    // mean(g * n) with lane accumulators.
                    let mut agn = [0.0f32; simd::LANES];
                    let full = c - c % simd::LANES;
                    let mut i = 0;
                    while i < full {
                        for l in 0..simd::LANES {
                            agn[l] += drow[i + l] * w[i + l] * (xrow[i + l] * s);
                        }
                        i += simd::LANES;
                    }
                    let mut sgn = simd::sum(&agn);
                    for i in full..c {
                        sgn += drow[i] * w[i] * (xrow[i] * s);
                    }
                    let mgn = sgn / c as f32;
                    for i in 0..c {
                        let n = xrow[i] * s;
                        let g = drow[i] * w[i];
                        dxrow[i] += s * (g - n * mgn);
                        pw[i] += drow[i] * n;
                    }
                }
            })
        });
    for pw in partial.chunks_exact(c) {
        for (d, p) in dw.iter_mut().zip(pw) {
            *d += *p;
        }
    }
}

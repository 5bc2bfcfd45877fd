//! SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer", eq. 5 with Swish_1 = SiLU),
//! the activation of Hugging Face's `LlamaMLP`: `down(silu(gate(x)) * up(x))`.
//!
//! The kernels see one packed buffer `gate_up` (rows, 2f) per row `[gate (f) | up (f)]`:
//! the output of one GEMM against the stacked gate_proj/up_proj weights.
//! Forward: `out = silu(g) * u`, `silu(g) = g / (1 + e^-g)` (as torch computes it).
//! Backward, with `s = 1 / (1 + e^-g)`: `dg += dout * u * (s + silu(g) (1 - s))`,
//! `du += dout * silu(g)`. `e^-g` uses the vectorizable [`exp_f32`] (it saturates at
//! e^88, where silu is already ~0 in f32).

use rayon::prelude::*;

use crate::activation::ELEMS_PER_TASK;
use crate::error::check_len;
use crate::simd::{exp_f32, vectorized};

/// Rows per parallel task for rows of `f` outputs (about [`ELEMS_PER_TASK`] outputs).
fn rows_per_task(f: usize) -> usize {
    (ELEMS_PER_TASK / f.max(1)).max(1)
}

/// out (rows, f) = silu(gate) * up, with gate_up (rows, 2f) = [gate | up] per row.
pub fn swiglu_forward(out: &mut [f32], gate_up: &[f32], rows: usize, f: usize) {
    check_len("swiglu_forward", "out", out.len(), rows * f);
    check_len("swiglu_forward", "gate_up", gate_up.len(), rows * 2 * f);
    if rows == 0 || f == 0 {
        return;
    }
    let rpt = rows_per_task(f);
    out.par_chunks_mut(rpt * f).zip(gate_up.par_chunks(rpt * 2 * f)).for_each(|(o, gu)| {
        vectorized(#[inline(always)] || {
            for (orow, gurow) in o.chunks_exact_mut(f).zip(gu.chunks_exact(2 * f)) {
                let (g, u) = gurow.split_at(f);
                for ((o, &g), &u) in orow.iter_mut().zip(g).zip(u) {
                    *o = g / (1.0 + exp_f32(-g)) * u;
                }
            }
        })
    });
}

/// dgate_up (rows, 2f) += d[gate | up] of `out = silu(gate) * up`, given dout (rows, f).
pub fn swiglu_backward(dgate_up: &mut [f32], dout: &[f32], gate_up: &[f32], rows: usize, f: usize) {
    check_len("swiglu_backward", "dgate_up", dgate_up.len(), rows * 2 * f);
    check_len("swiglu_backward", "dout", dout.len(), rows * f);
    check_len("swiglu_backward", "gate_up", gate_up.len(), rows * 2 * f);
    if rows == 0 || f == 0 {
        return;
    }
    let rpt = rows_per_task(f);
    dgate_up
        .par_chunks_mut(rpt * 2 * f)
        .zip(dout.par_chunks(rpt * f).zip(gate_up.par_chunks(rpt * 2 * f)))
        .for_each(|(dgu, (d, gu))| {
            vectorized(#[inline(always)] || {
                for ((dgurow, drow), gurow) in dgu.chunks_exact_mut(2 * f).zip(d.chunks_exact(f)).zip(gu.chunks_exact(2 * f)) {
                    let (dg, du) = dgurow.split_at_mut(f);
                    let (g, u) = gurow.split_at(f);
                    // Indexed over equal-length slices: a 5-way zip did not vectorize
                    // (measured 12x slower than the forward).
                    let (du, drow, g, u) = (&mut du[..f], &drow[..f], &g[..f], &u[..f]);
                    for i in 0..f {
                        let den = 1.0 + exp_f32(-g[i]);
                        let s = 1.0 / den;
                        let silu = g[i] / den; // bitwise the forward's silu
                        dg[i] += drow[i] * u[i] * (s + silu * (1.0 - s));
                        du[i] += drow[i] * silu;
                    }
                }
            })
        });
}

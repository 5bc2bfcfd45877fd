//! GELU, tanh approximation (Hendrycks & Gimpel 2016, eq. in sec. 2; GPT-2's "gelu_new"):
//! `gelu(x) = 0.5 x (1 + tanh(u))`, `u = sqrt(2/pi) (x + 0.044715 x^3)`.
//! Derivative: `0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)`.
//! `tanh(u) = 1 - 2 / (e^{2u} + 1)` with the vectorizable [`exp_f32`]: libm's scalar
//! `tanhf` would cost as much as the MLP's GEMMs at GPT-2-small widths.

use rayon::prelude::*;

use crate::error::check_len;
use crate::simd::{exp_f32, vectorized};

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_A: f32 = 0.044_715;
/// Elements per parallel task (64 KiB of f32): big enough to amortize scheduling.
pub(crate) const ELEMS_PER_TASK: usize = 16 * 1024;

#[inline(always)]
fn tanh_fast(u: f32) -> f32 {
    1.0 - 2.0 / (exp_f32(2.0 * u) + 1.0)
}

/// out = gelu(x), elementwise.
pub fn gelu_forward(out: &mut [f32], x: &[f32]) {
    check_len("gelu_forward", "out", out.len(), x.len());
    out.par_chunks_mut(ELEMS_PER_TASK).zip(x.par_chunks(ELEMS_PER_TASK)).for_each(|(o, xs)| {
        vectorized(#[inline(always)] || {
            for (o, &x) in o.iter_mut().zip(xs) {
                let u = SQRT_2_OVER_PI * (x + GELU_A * x * x * x);
                *o = 0.5 * x * (1.0 + tanh_fast(u));
            }
        })
    });
}

/// dx += gelu'(x) * dout, elementwise.
pub fn gelu_backward(dx: &mut [f32], x: &[f32], dout: &[f32]) {
    check_len("gelu_backward", "dx", dx.len(), x.len());
    check_len("gelu_backward", "dout", dout.len(), x.len());
    dx.par_chunks_mut(ELEMS_PER_TASK)
        .zip(x.par_chunks(ELEMS_PER_TASK).zip(dout.par_chunks(ELEMS_PER_TASK)))
        .for_each(|(d, (xs, ds))| {
            vectorized(#[inline(always)] || {
                for ((d, &x), &g) in d.iter_mut().zip(xs).zip(ds) {
                    let x2 = x * x;
                    let u = SQRT_2_OVER_PI * (x + GELU_A * x2 * x);
                    let t = tanh_fast(u);
                    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_A * x2);
                    let grad = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du;
                    *d += grad * g;
                }
            })
        });
}

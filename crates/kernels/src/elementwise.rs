//! Residual adds, scaling, and the deterministic sum of squares used for global-norm
//! gradient clipping (Pascanu et al. 2013).

use rayon::prelude::*;

use crate::activation::ELEMS_PER_TASK;
use crate::error::check_len;
use crate::simd::{vectorized, LANES};

/// out = a + b (residual connection).
pub fn add(out: &mut [f32], a: &[f32], b: &[f32]) {
    check_len("add", "a", a.len(), out.len());
    check_len("add", "b", b.len(), out.len());
    out.par_chunks_mut(ELEMS_PER_TASK)
        .zip(a.par_chunks(ELEMS_PER_TASK).zip(b.par_chunks(ELEMS_PER_TASK)))
        .for_each(|(o, (a, b))| {
            vectorized(#[inline(always)] || {
                for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                    *o = a + b;
                }
            })
        });
}

/// out += a.
pub fn add_inplace(out: &mut [f32], a: &[f32]) {
    check_len("add_inplace", "a", a.len(), out.len());
    out.par_chunks_mut(ELEMS_PER_TASK).zip(a.par_chunks(ELEMS_PER_TASK)).for_each(|(o, a)| {
        vectorized(#[inline(always)] || {
            for (o, &a) in o.iter_mut().zip(a) {
                *o += a;
            }
        })
    });
}

/// x *= s.
pub fn scale(x: &mut [f32], s: f32) {
    x.par_chunks_mut(ELEMS_PER_TASK).for_each(|o| {
        vectorized(#[inline(always)] || {
            for o in o.iter_mut() {
                *o *= s;
            }
        })
    });
}

/// Sum of squares accumulated in f64. The input is cut into fixed chunks of
/// `ELEMS_PER_TASK`, each summed with `LANES` f64 accumulators, and the chunk sums are
/// added in index order: the result does not depend on the thread count.
pub fn sum_squares(x: &[f32]) -> f64 {
    let partials: Vec<f64> = x
        .par_chunks(ELEMS_PER_TASK)
        .map(|c| {
            vectorized(#[inline(always)] || {
                let mut acc = [0.0f64; LANES];
                let mut it = c.chunks_exact(LANES);
                for blk in &mut it {
                    for l in 0..LANES {
                        let v = blk[l] as f64;
                        acc[l] += v * v;
                    }
                }
                let mut s: f64 = acc.iter().sum();
                for &v in it.remainder() {
                    s += (v as f64) * (v as f64);
                }
                s
            })
        })
        .collect();
    partials.iter().sum()
}

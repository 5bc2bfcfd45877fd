//! AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization", Alg. 2),
//! in the operation order of PyTorch's `torch.optim.AdamW` single-tensor path:
//! `p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;`
//! `p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)`.

use rayon::prelude::*;

use crate::activation::ELEMS_PER_TASK;
use crate::error::{check_len, KernelError};
use crate::simd::vectorized;

/// One AdamW step over equal-length slices; `t` is the 1-based step count.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    t: u64,
) {
    let n = params.len();
    check_len("adamw_step", "grads", grads.len(), n);
    check_len("adamw_step", "m", m.len(), n);
    check_len("adamw_step", "v", v.len(), n);
    if t == 0 {
        panic!(
            "{}",
            KernelError::InvalidArgument {
                kernel: "adamw_step",
                name: "t",
                value: 0.0,
                why: "the step count is 1-based (bias correction divides by 1 - beta^t)",
            }
        );
    }
    // Bias corrections in f64: beta2^t for t ~ 1e5 loses digits in f32.
    let tt = t.min(i32::MAX as u64) as i32;
    let bc1 = 1.0 - (beta1 as f64).powi(tt);
    let bc2 = 1.0 - (beta2 as f64).powi(tt);
    let step = (lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let decay = 1.0 - lr * weight_decay;
    let (one_b1, one_b2) = (1.0 - beta1, 1.0 - beta2);
    params
        .par_chunks_mut(ELEMS_PER_TASK)
        .zip(grads.par_chunks(ELEMS_PER_TASK))
        .zip(m.par_chunks_mut(ELEMS_PER_TASK).zip(v.par_chunks_mut(ELEMS_PER_TASK)))
        .for_each(|((p, g), (m, v))| {
            vectorized(#[inline(always)] || {
                for i in 0..p.len().min(g.len()).min(m.len()).min(v.len()) {
                    let gi = g[i];
                    let mi = beta1 * m[i] + one_b1 * gi;
                    let vi = beta2 * v[i] + one_b2 * gi * gi;
                    m[i] = mi;
                    v[i] = vi;
                    let denom = vi.sqrt() / bc2_sqrt + eps;
                    p[i] = p[i] * decay - step * mi / denom;
                }
            })
        });
}

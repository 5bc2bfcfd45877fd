//! AdamW over flat buckets, with decoupled weight decay applied per tensor kind, and
//! clipping by the global gradient norm.

use model::{Layout, TensorKind};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Decay embeddings too (off by default: GPT-2 / nanoGPT decay only 2-D matmul weights).
    pub decay_embeddings: bool,
}

impl AdamW {
    pub(crate) fn decay_for(&self, kind: TensorKind) -> f32 {
        match kind {
            TensorKind::Matrix => self.weight_decay,
            TensorKind::Embedding if self.decay_embeddings => self.weight_decay,
            _ => 0.0,
        }
    }

    /// One update of elements `range` of bucket `bucket` (a ZeRO shard updates only its
    /// range; one rank passes the whole bucket). `params`, `grads`, `m`, `v` hold exactly
    /// that range. `t` is the 1-based step count for bias correction.
    #[allow(clippy::too_many_arguments)]
    pub fn update_range(
        &self,
        layout: &Layout,
        bucket: usize,
        range: std::ops::Range<usize>,
        params: &mut [f32],
        grads: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        lr: f32,
        t: u64,
    ) {
        for spec in &layout.buckets[bucket].tensors {
            let tr = spec.range();
            let (lo, hi) = (tr.start.max(range.start), tr.end.min(range.end));
            if lo >= hi {
                continue;
            }
            let s = lo - range.start..hi - range.start;
            kernels::adamw_step(
                &mut params[s.clone()],
                &grads[s.clone()],
                &mut m[s.clone()],
                &mut v[s],
                lr,
                self.beta1,
                self.beta2,
                self.eps,
                self.decay_for(spec.kind),
                t,
            );
        }
    }
}

/// Scale factor that clips a gradient of global norm `norm` to `max_norm` (1 when
/// clipping is off or not needed), as torch.nn.utils.clip_grad_norm_ does.
pub fn clip_factor(norm: f64, max_norm: f64) -> f32 {
    if max_norm > 0.0 && norm > max_norm {
        (max_norm / (norm + 1e-6)) as f32
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_factor_only_shrinks() {
        assert_eq!(clip_factor(0.5, 1.0), 1.0);
        assert_eq!(clip_factor(5.0, 0.0), 1.0);
        assert!((clip_factor(4.0, 1.0) - 0.25).abs() < 1e-6);
    }
}

//! Learning-rate schedule: linear warm-up, then cosine decay to a floor (GPT-3 paper,
//! appendix B; nanoGPT's `get_lr`).

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub decay_steps: u64,
}

impl LrSchedule {
    /// Learning rate for optimizer step `step` (0-based).
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if step >= self.decay_steps {
            return self.min_lr;
        }
        let span = (self.decay_steps - self.warmup_steps).max(1) as f64;
        let progress = (step - self.warmup_steps) as f64 / span;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.min_lr + coeff * (self.lr - self.min_lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: LrSchedule = LrSchedule { lr: 1e-3, min_lr: 1e-4, warmup_steps: 10, decay_steps: 110 };

    #[test]
    fn warms_up_linearly() {
        assert!((S.at(0) - 1e-4).abs() < 1e-12);
        assert!((S.at(4) - 5e-4).abs() < 1e-12);
        assert!((S.at(9) - 1e-3).abs() < 1e-12);
    }

    #[test]
    fn decays_by_cosine_to_the_floor() {
        assert!((S.at(10) - 1e-3).abs() < 1e-12);
        // Half way through the decay the cosine factor is 0.5.
        assert!((S.at(60) - (1e-4 + 0.5 * 9e-4)).abs() < 1e-12);
        assert!((S.at(110) - 1e-4).abs() < 1e-15);
        assert!((S.at(10_000) - 1e-4).abs() < 1e-15);
        for s in 10..110 {
            assert!(S.at(s + 1) <= S.at(s));
        }
    }
}

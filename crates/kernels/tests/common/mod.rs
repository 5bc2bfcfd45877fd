//! Shared test helpers: a seeded generator and a finite-difference gradient checker.
#![allow(dead_code)]

/// SplitMix64 (Steele et al. 2014): tiny, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
}

/// Central finite differences of `loss` w.r.t. every element of `x` (eps 1e-3, loss in
/// f64), compared with `analytic`: |fd - an| <= 1e-2 * |an| + 1e-3 * max|an| + 1e-4.
pub fn fd_check(name: &str, x: &[f32], analytic: &[f32], mut loss: impl FnMut(&[f32]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
    let eps = 1e-3f32;
    let scale = analytic.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    assert!(scale > 0.0, "{name}: analytic gradient is all zeros");
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        let orig = xp[i];
        xp[i] = orig + eps;
        let lp = loss(&xp);
        xp[i] = orig - eps;
        let lm = loss(&xp);
        xp[i] = orig;
        // Divide by the step actually taken after f32 rounding of orig +- eps.
        let fd = (lp - lm) / ((orig + eps) as f64 - (orig - eps) as f64);
        let an = analytic[i] as f64;
        let tol = 1e-2 * an.abs() + 1e-3 * scale + 1e-4;
        assert!((fd - an).abs() <= tol, "{name}[{i}]: finite difference {fd} vs analytic {an} (tol {tol})");
    }
}

/// sum(out * r) in f64: the scalar whose gradient w.r.t. out is r.
pub fn weighted_sum(out: &[f32], r: &[f32]) -> f64 {
    out.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Runs `f` inside a rayon pool of `threads` threads.
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("build test pool").install(f)
}

//! Runtime instruction-set dispatch and vectorizable scalar helpers.
//!
//! The workspace is compiled for baseline x86-64 (SSE2) so the binary runs anywhere.
//! Hot elementwise loops are written as plain Rust over slices and run through
//! [`vectorized`], which calls them from a function compiled with AVX-512 (or
//! AVX2+FMA) enabled when the CPU has it; LLVM then auto-vectorizes the inlined body
//! for that instruction set. This is the trick `pulp`/`gemm` use for their own
//! dispatch (`is_x86_feature_detected!` + `#[target_feature]`).
//!
//! Results do not depend on the path taken: Rust never contracts `a*b+c` into an FMA
//! and never reassociates float sums, so every ISA performs the same IEEE operations in
//! the same order. Reductions use a fixed number of lanes ([`LANES`]) for the same reason.

/// Number of independent accumulators in reductions (one AVX-512 register of f32).
/// Fixed, so sums are bitwise identical whatever the ISA or the thread count.
pub(crate) const LANES: usize = 16;

/// Runs `f` inside a function compiled for the widest vector ISA the CPU supports.
/// Callers mark the closure `#[inline(always)]`: otherwise LLVM may keep it out of line,
/// compiled for baseline SSE2, and the dispatch buys nothing (measured: 2.5x on the
/// cross-entropy before the attribute was added).
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if has_v4() {
            // SAFETY: the features `v4` is compiled for were just detected.
            return unsafe { v4(f) };
        }
        if has_v3() {
            // SAFETY: as above, for `v3`'s features.
            return unsafe { v3(f) };
        }
    }
    f()
}

/// AVX-512 (F, BW, DQ, VL): the `x86-64-v4` level.
#[cfg(target_arch = "x86_64")]
fn has_v4() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && has_v3()
}

/// AVX2 + FMA: the `x86-64-v3` level.
#[cfg(target_arch = "x86_64")]
fn has_v3() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("bmi1")
        && std::arch::is_x86_feature_detected!("bmi2")
        && std::arch::is_x86_feature_detected!("lzcnt")
        && std::arch::is_x86_feature_detected!("popcnt")
}

/// # Safety
/// The CPU must support every feature listed (check with [`has_v4`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
unsafe fn v4<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// # Safety
/// The CPU must support every feature listed (check with [`has_v3`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
unsafe fn v3<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// e^x for f32, branch-free so loops over it vectorize. Cody-Waite range reduction
/// x = n ln2 + r, |r| <= ln2/2, then a degree-6 Taylor/minimax polynomial for e^r
/// (Cephes `expf` coefficients), scaled by 2^n built from the exponent bits.
/// Max relative error ~2 ulp on [-87, 88]. Below -87 the result is exactly 0 (so
/// `-inf` logits, e.g. top-k masking, get probability 0; denormals are not produced);
/// above 88 it saturates at e^88 ~ 1.6e38. NaN propagates.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    let underflow = x < -87.0;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to nearest integer and leaves n in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let t = x * LOG2E + MAGIC;
    let n_f = t - MAGIC;
    let n = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = x - n_f * LN2_HI - n_f * LN2_LO;
    let r2 = r * r;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = p * r2 + r + 1.0;
    // 2^n as float bits; n in [-126, 127] thanks to the clamp.
    let scale = f32::from_bits(((n + 127) as u32) << 23);
    let e = er * scale;
    if underflow {
        0.0
    } else {
        e
    }
}

/// Sum with [`LANES`] accumulators in a fixed order (vectorizes, deterministic).
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for ch in &mut chunks {
        for l in 0..LANES {
            acc[l] += ch[l];
        }
    }
    let mut total = reduce_lanes(&acc);
    for &v in chunks.remainder() {
        total += v;
    }
    total
}

/// Dot product with [`LANES`] accumulators (vectorizes, deterministic).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut total = reduce_lanes(&acc);
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        total += x * y;
    }
    total
}

/// Maximum (NaN-unaware, like `maxps`), lane-parallel.
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for ch in &mut chunks {
        for l in 0..LANES {
            acc[l] = if ch[l] > acc[l] { ch[l] } else { acc[l] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(chunks.remainder()) {
        m = if v > m { v } else { m };
    }
    m
}

/// Pairwise reduction of the lane accumulators (fixed tree).
#[inline(always)]
fn reduce_lanes(acc: &[f32; LANES]) -> f32 {
    let mut a = *acc;
    let mut w = LANES / 2;
    while w > 0 {
        for l in 0..w {
            a[l] += a[l + w];
        }
        w /= 2;
    }
    a[0]
}

/// A raw pointer that may cross threads. Used where parallel tasks write provably
/// disjoint (often strided) regions of one buffer, which safe slices cannot express.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
// SAFETY: every user documents why the regions written through the pointer by
// different tasks are disjoint and why the buffer outlives the parallel section.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The wrapped pointer (a method, so closures capture the whole `Sync` wrapper).
    #[inline(always)]
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_to_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = -80.0f32;
        while x < 80.0 {
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.013;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-1000.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(1000.0).is_finite());
    }

    #[test]
    fn lane_reductions_are_exact_on_integers() {
        let x: Vec<f32> = (0..1001).map(|i| (i % 17) as f32).collect();
        let want: f32 = x.iter().sum();
        assert_eq!(sum(&x), want);
        assert_eq!(dot(&x, &x), x.iter().map(|v| v * v).sum::<f32>());
        assert_eq!(max(&x), 16.0);
        assert_eq!(vectorized(#[inline(always)] || sum(&x)), want);
    }

    /// The same loop compiled for SSE2, AVX2 and AVX-512 gives bitwise-equal results
    /// (no FMA contraction, no reassociation), so runs agree across machines.
    #[test]
    fn every_isa_path_gives_identical_bits() {
        let x: Vec<f32> = (0..4099).map(|i| ((i * 7919) % 2001) as f32 / 100.0 - 10.0).collect();
        #[inline(always)]
        fn work(x: &[f32]) -> Vec<u32> {
            let e: Vec<f32> = x.iter().map(|&v| exp_f32(v) * 0.5 + v * v).collect();
            let mut bits: Vec<u32> = e.iter().map(|v| v.to_bits()).collect();
            bits.push(sum(&e).to_bits());
            bits.push(dot(&e, x).to_bits());
            bits.push(max(&e).to_bits());
            bits
        }
        let plain = work(&x);
        #[cfg(target_arch = "x86_64")]
        {
            if has_v3() {
                // SAFETY: features detected.
                assert_eq!(unsafe { v3(#[inline(always)] || work(&x)) }, plain);
            }
            if has_v4() {
                // SAFETY: features detected.
                assert_eq!(unsafe { v4(#[inline(always)] || work(&x)) }, plain);
            }
        }
        assert_eq!(vectorized(#[inline(always)] || work(&x)), plain);
    }
}

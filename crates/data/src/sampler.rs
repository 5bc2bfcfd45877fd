//! The deterministic sampler: global sample index -> window start.
//!
//! A counter-based generator (Salmon et al. 2011, "Parallel random numbers: as easy
//! as 1, 2, 3") has no state to carry: sample `i` is a pure function of
//! `(seed, i)`. Resuming at step k, or giving data-parallel rank r the indices
//! `r, r + dp, ...`, therefore reproduces exactly the windows of an uninterrupted
//! single-rank run.

/// SplitMix64's increment: 2^64 / golden ratio (Steele, Lea & Flood 2014,
/// "Fast splittable pseudorandom number generators").
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function (a bijective 64-bit mixer, Stafford's "Mix13").
#[inline]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `index`-th output of a SplitMix64 stream whose start state is derived from
/// `seed`: state_i = mix(seed) + (i + 1) * GAMMA, output = mix(state_i). Jumping to
/// any i is O(1), which is what makes it counter-based.
#[inline]
pub fn hash2(seed: u64, index: u64) -> u64 {
    let key = mix64(seed.wrapping_add(GAMMA));
    mix64(key.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA)))
}

/// Start offset of global sample `index` in a token file of `num_tokens` tokens,
/// for windows of `block` tokens plus one target token.
///
/// The result lies in `0..=num_tokens - block - 1`, so both the input window
/// `start..start + block` and the target window `start + 1..start + block + 1`
/// are in bounds. It is a pure function of its arguments. If the file is too
/// short (`num_tokens <= block`, which [`crate::Dataset::check_block`] reports as
/// an error) there is no valid start and 0 is returned.
///
/// The 64-bit hash is mapped to the `n = num_tokens - block` starts by the
/// multiply-high reduction (Lemire 2019, "Fast random integer generation in an
/// interval"): `floor(h * n / 2^64)`; its bias is at most n / 2^64.
pub fn sample_start(seed: u64, index: u64, num_tokens: usize, block: usize) -> usize {
    let n = match num_tokens.checked_sub(block) {
        Some(n) if n > 0 => n as u128,
        _ => return 0,
    };
    ((hash2(seed, index) as u128 * n) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_seed_dependent() {
        let a: Vec<usize> = (0..100).map(|i| sample_start(7, i, 1000, 16)).collect();
        let b: Vec<usize> = (0..100).map(|i| sample_start(7, i, 1000, 16)).collect();
        let c: Vec<usize> = (0..100).map(|i| sample_start(8, i, 1000, 16)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Resume at index 50 = continue the same sequence.
        let resumed: Vec<usize> = (50..100).map(|i| sample_start(7, i, 1000, 16)).collect();
        assert_eq!(&a[50..], &resumed[..]);
    }

    #[test]
    fn always_in_range() {
        for &(len, block) in &[(2usize, 1usize), (17, 16), (100, 99), (100, 1), (1 << 20, 1024)] {
            for i in 0..5000u64 {
                let s = sample_start(3, i, len, block);
                assert!(s + block < len, "start {s} block {block} len {len}");
            }
        }
        // block = len - 1: the only window starts at 0.
        assert!((0..1000).all(|i| sample_start(99, i, 65, 64) == 0));
        // Too short: no valid start, 0 by convention.
        assert_eq!(sample_start(1, 1, 10, 10), 0);
        assert_eq!(sample_start(1, 1, 5, 10), 0);
    }

    #[test]
    fn covers_the_file_evenly() {
        // 20 buckets over 10_000 starts, 200_000 samples: each bucket expects 10_000.
        let (len, block) = (10_064usize, 64usize);
        let mut buckets = [0u32; 20];
        for i in 0..200_000u64 {
            let s = sample_start(42, i, len, block);
            buckets[s * 20 / (len - block)] += 1;
        }
        for (b, &count) in buckets.iter().enumerate() {
            // 5 sigma of a binomial(200_000, 1/20) is about 487.
            assert!((9_500..=10_500).contains(&count), "bucket {b}: {count}");
        }
        // Both ends are reachable.
        let starts: Vec<usize> = (0..200_000u64).map(|i| sample_start(42, i, len, block)).collect();
        assert!(starts.iter().any(|&s| s < 5));
        assert!(starts.iter().any(|&s| s > len - block - 6));
    }
}

//! ZeRO sharding of flat buckets (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations
//! Toward Training Trillion Parameter Models").
//!
//! Every bucket of `numel` elements is padded to `padded = shard * dp` elements
//! (`shard = ceil(numel / dp)`); rank `r` owns the contiguous range
//! `[r * shard, (r + 1) * shard)`. Pad elements are zero and never reach the model. The
//! stages differ in what each rank keeps whole:
//!
//! | stage | parameters | gradients | Adam moments |
//! |---|---|---|---|
//! | 0 | whole | whole, all-reduced | whole |
//! | 1 | whole | whole, reduce-scattered after the last micro-batch | shard |
//! | 2 | whole | shard: each bucket reduce-scattered as its backward ends | shard |
//! | 3 | shard: all-gathered just before each use, dropped after | shard | shard |

use std::ops::Range;

use checkpoint::TensorSlice;
use model::{BucketSpec, Layout};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketShard {
    pub numel: usize,
    /// Elements per rank (`ceil(numel / dp)`).
    pub shard: usize,
}

impl BucketShard {
    pub fn new(numel: usize, dp: usize) -> BucketShard {
        BucketShard { numel, shard: numel.div_ceil(dp).max(1) }
    }

    pub fn padded(&self, dp: usize) -> usize {
        self.shard * dp
    }

    /// Rank `r`'s range in bucket coordinates, padding included.
    pub fn owned(&self, r: usize) -> Range<usize> {
        r * self.shard..(r + 1) * self.shard
    }

    /// Rank `r`'s range of real (non-pad) elements, in bucket coordinates.
    pub fn real(&self, r: usize) -> Range<usize> {
        let o = self.owned(r);
        o.start.min(self.numel)..o.end.min(self.numel)
    }
}

/// The pieces of named tensors that the bucket range `range` covers, as checkpoint
/// slices. `buf` holds bucket elements starting at `base` (0 for a whole bucket, the
/// shard start for a shard buffer).
pub fn pieces<'a>(
    spec: &'a BucketSpec,
    names: &'a [String],
    range: Range<usize>,
    buf: &'a [f32],
    base: usize,
) -> Vec<TensorSlice<'a>> {
    spec.tensors
        .iter()
        .zip(names)
        .filter_map(|(t, name)| {
            let tr = t.range();
            let (lo, hi) = (tr.start.max(range.start), tr.end.min(range.end));
            (lo < hi).then(|| TensorSlice {
                name,
                global_shape: &t.shape,
                start: lo - tr.start,
                data: &buf[lo - base..hi - base],
            })
        })
        .collect()
}

/// For each bucket, the `(tensor name, bucket range, tensor-local start)` pieces inside
/// `range`: what to read from a checkpoint into a (shard) buffer.
pub fn piece_ranges(spec: &BucketSpec, range: Range<usize>) -> Vec<(&str, Range<usize>, usize)> {
    spec.tensors
        .iter()
        .filter_map(|t| {
            let tr = t.range();
            let (lo, hi) = (tr.start.max(range.start), tr.end.min(range.end));
            (lo < hi).then(|| (t.name.as_str(), lo..hi, lo - tr.start))
        })
        .collect()
}

pub fn shards(layout: &Layout, dp: usize) -> Vec<BucketShard> {
    layout.buckets.iter().map(|b| BucketShard::new(b.numel, dp)).collect()
}

/// ZeRO model-state bytes per rank for f32 training with Adam (ZeRO paper, section 5,
/// with K = 12 replaced by f32 master-free training: 4 bytes each for parameters,
/// gradients and the two moments): stage 0 `16 Psi`, 1 `8 Psi + 8 Psi / dp`,
/// 2 `4 Psi + 12 Psi / dp`, 3 `16 Psi / dp`.
pub fn expected_model_state_bytes(psi: usize, dp: usize, zero: u8) -> f64 {
    let (p, d) = (psi as f64, dp as f64);
    match zero {
        0 => 16.0 * p,
        1 => 8.0 * p + 8.0 * p / d,
        2 => 4.0 * p + 12.0 * p / d,
        _ => 16.0 * p / d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_bucket_once() {
        for (numel, dp) in [(10, 3), (7, 7), (5, 8), (1, 2), (1000, 4)] {
            let s = BucketShard::new(numel, dp);
            let mut seen = vec![0; numel];
            for r in 0..dp {
                for i in s.real(r) {
                    seen[i] += 1;
                }
                assert_eq!(s.owned(r).len(), s.shard);
            }
            assert!(seen.iter().all(|&c| c == 1), "numel {numel} dp {dp}");
            assert!(s.padded(dp) >= numel && s.padded(dp) - numel < dp);
        }
    }

    #[test]
    fn zero_formulas() {
        // ZeRO paper's example shape: the savings ratios at dp = 64.
        let psi = 1_000_000;
        assert_eq!(expected_model_state_bytes(psi, 64, 0), 16e6);
        assert!((expected_model_state_bytes(psi, 4, 3) - 4e6).abs() < 1.0);
        assert!((expected_model_state_bytes(psi, 4, 2) - 7e6).abs() < 1.0);
        assert!((expected_model_state_bytes(psi, 4, 1) - 10e6).abs() < 1.0);
    }
}

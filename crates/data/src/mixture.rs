//! Weighted mixtures of prepared datasets, still a pure function of
//! `(seed, sample index)`.
//!
//! Sample `i` first picks its source from the Kronecker (golden-ratio)
//! sequence `u_i = frac(o + i * phi)`, `o` derived from the seed: source `s`
//! owns the slice of `[0, 1)` proportional to its weight. The sequence is
//! equidistributed with discrepancy O(log n / n), so after `n` samples every
//! source's share is within a few samples of `n * weight` (an iid draw would
//! wander by `sqrt(n)`). The window inside the source is then
//! [`crate::sample_start`] with a per-source seed. With one source the pick is
//! skipped and windows are exactly those of a plain dataset.

use std::path::PathBuf;

use crate::{hash2, sample_start, Tokens};

/// 2^64 / golden ratio: the Kronecker step in 64-bit fixed point.
const PHI: u64 = 0x9E37_79B9_7F4A_7C15;
const MIX_SALT: u64 = 0x6D69_7874_7572_6521;

/// One prepared folder in a split, with its weight.
#[derive(Debug)]
pub struct Source {
    pub dir: PathBuf,
    pub weight: f64,
    pub tokens: Tokens,
}

/// The train or val split of a [`crate::Dataset`]: one source or a mixture.
#[derive(Debug)]
pub struct Split {
    pub sources: Vec<Source>,
    /// Upper end of each source's slice of the u64 range (last = u64::MAX).
    bounds: Vec<u64>,
}

impl Split {
    pub(crate) fn new(sources: Vec<Source>) -> Self {
        let total: f64 = sources.iter().map(|s| s.weight).sum();
        let mut acc = 0.0;
        let mut bounds: Vec<u64> = sources
            .iter()
            .map(|s| {
                acc += s.weight / total;
                (acc * 18_446_744_073_709_551_616.0).min(u64::MAX as f64) as u64
            })
            .collect();
        if let Some(last) = bounds.last_mut() {
            *last = u64::MAX;
        }
        Split { sources, bounds }
    }

    /// Tokens over all sources.
    pub fn len(&self) -> usize {
        self.sources.iter().map(|s| s.tokens.len()).sum()
    }

    /// True when no source has a token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The source of global sample `index`.
    pub fn source_of(&self, seed: u64, index: u64) -> usize {
        if self.sources.len() == 1 {
            return 0;
        }
        let u = hash2(seed ^ MIX_SALT, 0).wrapping_add(index.wrapping_mul(PHI));
        self.bounds.partition_point(|&b| b <= u).min(self.sources.len() - 1)
    }

    /// Samples per source among global indices `first..first + n`.
    pub fn count_sources(&self, seed: u64, first: u64, n: u64) -> Vec<u64> {
        let mut counts = vec![0u64; self.sources.len()];
        for i in first..first + n {
            counts[self.source_of(seed, i)] += 1;
        }
        counts
    }

    /// Fills `(B, T)` windows of global sample indices `first_index..` (see the
    /// module doc); with one source exactly [`Tokens::fill_batch`].
    ///
    /// # Panics
    /// If a source is too short for one window (check with
    /// [`crate::Dataset::check_block`] first) or a buffer is not `batch * block` long.
    pub fn fill_batch(&self, seed: u64, first_index: u64, batch: usize, block: usize, inputs: &mut [u32], targets: &mut [u32]) {
        if let [one] = self.sources.as_slice() {
            return one.tokens.fill_batch(seed, first_index, batch, block, inputs, targets);
        }
        assert_eq!(inputs.len(), batch * block, "inputs must be batch * block = {} long", batch * block);
        assert_eq!(targets.len(), batch * block, "targets must be batch * block = {} long", batch * block);
        for b in 0..batch {
            let index = first_index + b as u64;
            let s = self.source_of(seed, index);
            let tokens = &self.sources[s].tokens;
            assert!(block > 0 && tokens.len() > block, "{}: too short for block {block}", tokens.path().display());
            let start = sample_start(seed ^ hash2(MIX_SALT, s as u64 + 1), index, tokens.len(), block);
            let row = b * block..(b + 1) * block;
            tokens.window(start, block, &mut inputs[row.clone()], &mut targets[row]);
        }
    }
}

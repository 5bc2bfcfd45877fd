//! Deterministic parameter initialisation, GPT-2 style for every family, independent of the layout:
//! every tensor draws from its own stream keyed by (seed, tensor name), so any sharding
//! of the buckets initialises the same model.

use rayon::prelude::*;

use crate::layout::{BucketSpec, TensorKind};
use crate::spec::ModelSpec;

/// SplitMix64 (Steele, Lea & Flood 2014): a small, fast, well-mixed 64-bit generator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64(pub u64);

/// SplitMix64's increment: the state after n draws is `seed + n * GAMMA`.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// The generator `n` draws further on (the state is a counter).
    pub fn skip(&self, n: u64) -> SplitMix64 {
        SplitMix64(self.0.wrapping_add(n.wrapping_mul(GAMMA)))
    }

    /// Standard normal by Box-Muller (two draws).
    pub fn next_normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Elements per parallel task of [`init_bucket`].
const INIT_CHUNK: usize = 1 << 16;

/// FNV-1a of a name, to key a tensor's stream.
pub fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3))
}

/// Fills `out` (the bucket's flat buffer) with GPT-2's initialisation: matrices and
/// embeddings N(0, 0.02), projections into the residual stream (GPT-2's `c_proj`,
/// Llama's `o_proj` and `down_proj`) N(0, 0.02 / sqrt(2 L)) (GPT-2 paper, section 2.3),
/// norm weights 1, biases 0.
pub fn init_bucket(spec: &ModelSpec, bucket: &BucketSpec, seed: u64, out: &mut [f32]) {
    assert_eq!(out.len(), bucket.numel, "bucket {} buffer length", bucket.name);
    for t in &bucket.tensors {
        let dst = &mut out[t.range()];
        match t.kind {
            TensorKind::NormWeight => dst.fill(1.0),
            TensorKind::Bias => dst.fill(0.0),
            TensorKind::Embedding | TensorKind::Matrix => {
                let residual = ["c_proj.weight", "o_proj.weight", "down_proj.weight"].iter().any(|s| t.name.ends_with(s));
                let std = if residual {
                    0.02 / (2.0 * spec.layers as f64).sqrt()
                } else {
                    0.02
                };
                // One stream per tensor, filled in parallel chunks: a chunk starting at
                // element e starts 2e draws into the stream, so the values do not depend
                // on the chunking or the thread count.
                let rng = SplitMix64(seed ^ name_hash(&t.name));
                dst.par_chunks_mut(INIT_CHUNK).enumerate().for_each(|(c, chunk)| {
                    let mut rng = rng.skip(2 * (c * INIT_CHUNK) as u64);
                    for x in chunk.iter_mut() {
                        *x = (rng.next_normal() * std) as f32;
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_is_the_same_stream_further_on() {
        let mut a = SplitMix64(42);
        for _ in 0..1000 {
            a.next_u64();
        }
        let mut b = SplitMix64(42).skip(1000);
        assert_eq!((0..10).map(|_| a.next_u64()).collect::<Vec<_>>(), (0..10).map(|_| b.next_u64()).collect::<Vec<_>>());
    }

    #[test]
    fn normal_draws_have_unit_variance() {
        let mut r = SplitMix64(7);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.next_normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }

    #[test]
    fn splitmix_reference_values() {
        // First outputs of SplitMix64 seeded with 0 (published test vector).
        let mut r = SplitMix64(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }
}

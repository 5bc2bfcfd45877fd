//! Shared helpers for the integration tests: seeded data and one-call checkpoints.
#![allow(dead_code)]

pub mod tp;

use std::path::{Path, PathBuf};

use checkpoint::{begin, commit, TensorSlice};

/// splitmix64 (Steele et al., OOPSLA 2014): a tiny seeded generator, so tests need no
/// extra crate and are reproducible.
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
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Random f32 bit patterns, NaN payloads, infinities, -0.0 and subnormals included:
/// a checkpoint must preserve bits, not just values.
pub fn random_bits(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut v: Vec<f32> = (0..n)
        .map(|_| f32::from_bits(rng.next_u64() as u32))
        .collect();
    let specials = [
        f32::NAN,
        f32::from_bits(0x7fc0_1234),
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        f32::from_bits(1),
        f32::MIN_POSITIVE,
    ];
    for (i, s) in specials.iter().enumerate().take(n) {
        v[i] = *s;
    }
    v
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Commits one checkpoint holding the whole tensors, one file per tensor.
pub fn save_whole(
    run: &Path,
    step: u64,
    tensors: &[(&str, Vec<usize>, Vec<f32>)],
    keep_last: usize,
) -> PathBuf {
    let pending = begin(run, step).unwrap();
    let mut records = Vec::new();
    for (i, (name, shape, data)) in tensors.iter().enumerate() {
        let slice = TensorSlice {
            name,
            global_shape: shape,
            start: 0,
            data,
        };
        records.push(
            pending
                .write_file(&format!("part-{i}.safetensors"), &[slice])
                .unwrap(),
        );
    }
    commit(
        pending,
        serde_json::json!({ "step": step }),
        records,
        keep_last,
    )
    .unwrap()
}

/// A one-tensor checkpoint whose values are a function of `step`.
pub fn save_step(run: &Path, step: u64, n: usize, keep_last: usize) -> PathBuf {
    save_whole(
        run,
        step,
        &[("w", vec![n], step_values(step, n))],
        keep_last,
    )
}

pub fn step_values(step: u64, n: usize) -> Vec<f32> {
    (0..n).map(|i| (step * 1000 + i as u64) as f32).collect()
}

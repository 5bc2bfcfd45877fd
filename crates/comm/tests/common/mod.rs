//! Helpers shared by the integration tests: seeded data and the serial references.
#![allow(dead_code)]

use comm::{reduce_reference, ReduceOp};
use half::bf16;

pub const WORLD_SIZES: [usize; 6] = [1, 2, 3, 4, 7, 8];
/// Zero, one, primes (one above the reduction tile of 4096), and non-multiples.
pub const LENGTHS: [usize; 8] = [0, 1, 2, 3, 13, 97, 1000, 4099];

/// Deterministic values in [-1, 1) for `(rank, len)` (a 64-bit LCG, Knuth's MMIX constants).
pub fn data(rank: usize, len: usize, salt: u64) -> Vec<f32> {
    let mut s = (rank as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt ^ (len as u64);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn data_bf16(rank: usize, len: usize, salt: u64) -> Vec<bf16> {
    data(rank, len, salt).into_iter().map(bf16::from_f32).collect()
}

pub fn bytes(rank: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (rank * 31 + i * 7) as u8).collect()
}

pub fn ref_f32(inputs: &[Vec<f32>], op: ReduceOp) -> Vec<f32> {
    let v: Vec<&[f32]> = inputs.iter().map(|x| &x[..]).collect();
    reduce_reference(&v, op, |x| x, |x| x)
}

pub fn ref_bf16(inputs: &[Vec<bf16>], op: ReduceOp) -> Vec<bf16> {
    let v: Vec<&[bf16]> = inputs.iter().map(|x| &x[..]).collect();
    reduce_reference(&v, op, |x| x.to_f32(), bf16::from_f32)
}

/// The even split used by the crate, as counts.
pub fn even_counts(n: usize, p: usize) -> Vec<usize> {
    (0..p).map(|r| comm::even_block(n, p, r).1).collect()
}

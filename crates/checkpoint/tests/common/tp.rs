//! Helpers for the N-d piece tests: reference box extraction and a tensor-parallel save.

use std::path::Path;

use checkpoint::{begin, commit, NdSlice, ShardSlice, TensorSlice};

use super::random_bits;

/// A global tensor: shape and row-major data.
pub type Tensor = (Vec<usize>, Vec<f32>);

/// The box `slice` of a row-major tensor of `shape`, row-major within the box.
pub fn extract(shape: &[usize], data: &[f32], slice: &[(usize, usize)]) -> Vec<f32> {
    let mut strides = vec![1usize; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * shape[k + 1];
    }
    let n: usize = slice.iter().map(|&(_, l)| l).product();
    (0..n)
        .map(|mut i| {
            let mut flat = 0;
            for k in (0..slice.len()).rev() {
                let (s, l) = slice[k];
                flat += (s + i % l) * strides[k];
                i /= l;
            }
            data[flat]
        })
        .collect()
}

/// `n` equal column blocks of a matrix (what tp = n gives a row-parallel weight).
pub fn column_blocks(shape: [usize; 2], n: usize) -> Vec<Vec<(usize, usize)>> {
    let w = shape[1] / n;
    (0..n).map(|i| vec![(0, shape[0]), (i * w, w)]).collect()
}

/// Commits `w` as `n` column blocks, one shard file per tp rank, and the 3-D `x` as row
/// blocks spread over the same files, plus a replicated bias in rank 0's file.
pub fn save_tp(run: &Path, step: u64, w: &Tensor, x: &Tensor, n: usize) {
    let blocks = column_blocks([w.0[0], w.0[1]], n);
    let row_cuts = [0, 1, 3, x.0[0]];
    let row_blocks: Vec<Vec<(usize, usize)>> = row_cuts
        .windows(2)
        .map(|r| vec![(r[0], r[1] - r[0]), (0, x.0[1]), (0, x.0[2])])
        .collect();
    let block_data: Vec<Vec<f32>> = blocks.iter().map(|b| extract(&w.0, &w.1, b)).collect();
    let row_data: Vec<Vec<f32>> = row_blocks.iter().map(|b| extract(&x.0, &x.1, b)).collect();
    let bias = random_bits(99, w.0[1]);
    let pending = begin(run, step).unwrap();
    let mut records = Vec::new();
    for rank in 0..n {
        let mut slices: Vec<ShardSlice> = vec![NdSlice {
            name: "w",
            global_shape: &w.0,
            slice: &blocks[rank],
            data: &block_data[rank],
        }
        .into()];
        for i in (rank..row_blocks.len()).step_by(n) {
            slices.push(
                NdSlice {
                    name: "x",
                    global_shape: &x.0,
                    slice: &row_blocks[i],
                    data: &row_data[i],
                }
                .into(),
            );
        }
        if rank == 0 {
            let shape = [w.0[1]];
            slices.push(
                TensorSlice {
                    name: "bias",
                    global_shape: &shape,
                    start: 0,
                    data: &bias,
                }
                .into(),
            );
            let record = pending
                .write_file("tp-rank-0.safetensors", &slices)
                .unwrap();
            records.push(record);
            continue;
        }
        records.push(
            pending
                .write_file(&format!("tp-rank-{rank}.safetensors"), &slices)
                .unwrap(),
        );
    }
    commit(pending, serde_json::json!({ "tp": n }), records, 0).unwrap();
}

pub fn tensors() -> (Tensor, Tensor) {
    let w = (vec![24, 64], random_bits(1, 24 * 64));
    let x = (vec![5, 4, 6], random_bits(2, 5 * 4 * 6));
    (w, x)
}

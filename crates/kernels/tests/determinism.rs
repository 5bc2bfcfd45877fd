//! Every kernel with a reduction gives bitwise-identical results on 1 and 2 threads.
mod common;
use common::{with_threads, Rng};
use kernels::*;

/// Runs the whole forward/backward set once and returns every output buffer.
fn run_all() -> Vec<Vec<f32>> {
    let mut rng = Rng::new(40);
    let (b, t, c, nh, v) = (2, 80, 48, 3, 301);
    let rows = b * t;
    let mut outs = Vec::new();
    // Matmul big enough to use gemm's threading (m*n*k > 48*48*256).
    let (m, n, k) = (160, 144, 96);
    let a = rng.vec(m * k, 1.0);
    let bm = rng.vec(k * n, 1.0);
    let mut cm = vec![0.0; m * n];
    matmul(&mut cm, &a, true, &bm, false, m, n, k, false);
    outs.push(cm);
    // Linear backward (dw reduces over rows).
    let x = rng.vec(rows * c, 1.0);
    let w = rng.vec(c * 4 * c, 1.0);
    let dy = rng.vec(rows * 4 * c, 1.0);
    let (mut dx, mut dw, mut db) = (vec![0.0; rows * c], vec![0.0; c * 4 * c], vec![0.0; 4 * c]);
    linear_backward(Some(&mut dx), &mut dw, Some(&mut db), &dy, &x, &w, rows, c, 4 * c);
    outs.extend([dx, dw, db]);
    // LayerNorm backward (dw/db reduce over rows, several chunks).
    let (mut o, mut mu, mut rs) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
    let lw = rng.vec(c, 1.0);
    layernorm_forward(&mut o, &mut mu, &mut rs, &x, &lw, None, rows, c);
    let (mut ldx, mut ldw, mut ldb) = (vec![0.0; rows * c], vec![0.0; c], vec![0.0; c]);
    layernorm_backward(&mut ldx, &mut ldw, Some(&mut ldb), &x, &x, &lw, &mu, &rs, rows, c);
    outs.extend([o, ldx, ldw, ldb]);
    // Attention forward/backward over two row blocks.
    let qkv = rng.vec(rows * 3 * c, 1.0);
    let mut att = vec![0.0; rows * c];
    let mut saved = vec![0.0; attention_saved_len(b, t, nh)];
    attention_forward(&mut att, &mut saved, &qkv, b, t, c, nh);
    let mut dqkv = vec![0.0; rows * 3 * c];
    attention_backward(&mut dqkv, &x, &qkv, &att, &saved, b, t, c, nh);
    outs.extend([att, dqkv]);
    // Embedding backward with many repeated tokens.
    let tokens: Vec<u32> = (0..rows).map(|_| rng.below(7)).collect();
    let (mut dwte, mut dwpe) = (vec![0.0; 7 * c], vec![0.0; t * c]);
    embedding_backward(&mut dwte, &mut dwpe, &x, &tokens, b, t, c);
    outs.extend([dwte, dwpe]);
    // Cross-entropy.
    let mut logits = rng.vec(rows * v, 4.0);
    let targets: Vec<u32> = (0..rows).map(|_| rng.below(v as u32)).collect();
    let mut losses = vec![0.0; rows];
    let total = softmax_xent_forward_backward(&mut logits, &mut losses, &targets, rows, v, 0.5);
    outs.extend([logits, losses, vec![total as f32, (total - total as f32 as f64) as f32]]);
    // Sum of squares over many chunks.
    let big = rng.vec(100_003, 1.0);
    let ss = sum_squares(&big);
    outs.push(vec![ss as f32, (ss - ss as f32 as f64) as f32]);
    outs
}

#[test]
fn one_and_two_threads_agree_bitwise() {
    let one = with_threads(1, run_all);
    let two = with_threads(2, run_all);
    let three = with_threads(3, run_all);
    assert_eq!(one.len(), two.len());
    for (i, ((a, b), c)) in one.iter().zip(&two).zip(&three).enumerate() {
        let bits = |v: &Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a), bits(b), "output {i} differs between 1 and 2 threads");
        assert_eq!(bits(a), bits(c), "output {i} differs between 1 and 3 threads");
        assert!(a.iter().all(|x| x.is_finite()), "output {i} not finite");
    }
}

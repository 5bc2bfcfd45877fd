//! GEMM and linear layer against naive references and finite differences.
mod common;
use common::{fd_check, weighted_sum, Rng};
use kernels::{linear_backward, linear_forward, matmul};

/// Naive op(a) @ op(b) in f64.
fn naive(a: &[f32], ta: bool, b: &[f32], tb: bool, m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut c = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] };
                let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                s += av as f64 * bv as f64;
            }
            c[i * n + j] = s;
        }
    }
    c
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
    }
}

#[test]
fn matmul_all_transpose_combos_and_accumulate() {
    let mut rng = Rng::new(1);
    // Odd sizes exercise the microkernel tails; the big one crosses gemm's threading threshold.
    for &(m, n, k) in &[(7, 5, 3), (33, 17, 65), (130, 96, 80)] {
        for &(ta, tb) in &[(false, false), (true, false), (false, true), (true, true)] {
            let a = rng.vec(m * k, 1.0);
            let b = rng.vec(k * n, 1.0);
            let want = naive(&a, ta, &b, tb, m, n, k);
            let mut c = rng.vec(m * n, 1.0);
            matmul(&mut c, &a, ta, &b, tb, m, n, k, false);
            assert_close(&c, &want, 1e-5, &format!("matmul {m}x{n}x{k} ta={ta} tb={tb}"));
            let init = rng.vec(m * n, 1.0);
            let mut c = init.clone();
            matmul(&mut c, &a, ta, &b, tb, m, n, k, true);
            let want_acc: Vec<f64> = want.iter().zip(&init).map(|(w, &i)| w + i as f64).collect();
            assert_close(&c, &want_acc, 1e-5, &format!("matmul accumulate ta={ta} tb={tb}"));
        }
    }
}

#[test]
fn matmul_with_k_zero_gives_zero_or_keeps_c() {
    let mut c = vec![3.0f32; 6];
    matmul(&mut c, &[], false, &[], false, 2, 3, 0, true);
    assert_eq!(c, vec![3.0; 6]);
    matmul(&mut c, &[], false, &[], false, 2, 3, 0, false);
    assert_eq!(c, vec![0.0; 6]);
}

#[test]
#[should_panic(expected = "kernel `matmul`: buffer `b` has 5 elements, expected 6")]
fn matmul_length_mismatch_names_the_buffer() {
    let mut c = vec![0.0f32; 4];
    matmul(&mut c, &[0.0; 6], false, &[0.0; 5], false, 2, 2, 3, false);
}

#[test]
fn linear_forward_matches_naive_with_and_without_bias() {
    let mut rng = Rng::new(2);
    let (rows, i, o) = (9, 12, 7);
    let x = rng.vec(rows * i, 1.0);
    let w = rng.vec(i * o, 1.0);
    let bias = rng.vec(o, 1.0);
    let xw = naive(&x, false, &w, false, rows, o, i);
    let mut y = vec![f32::NAN; rows * o];
    linear_forward(&mut y, &x, &w, None, rows, i, o);
    assert_close(&y, &xw, 1e-5, "linear no bias");
    linear_forward(&mut y, &x, &w, Some(&bias), rows, i, o);
    let want: Vec<f64> = xw.iter().enumerate().map(|(e, v)| v + bias[e % o] as f64).collect();
    assert_close(&y, &want, 1e-5, "linear bias");
}

#[test]
fn linear_backward_matches_finite_differences() {
    let mut rng = Rng::new(3);
    let (rows, i, o) = (5, 6, 4);
    let x = rng.vec(rows * i, 1.0);
    let w = rng.vec(i * o, 1.0);
    let bias = rng.vec(o, 1.0);
    let r = rng.vec(rows * o, 1.0);
    let fwd = |x: &[f32], w: &[f32], b: Option<&[f32]>| {
        let mut y = vec![0.0f32; rows * o];
        linear_forward(&mut y, x, w, b, rows, i, o);
        weighted_sum(&y, &r)
    };
    // Gradients start non-zero to check that backward adds.
    let base = 0.25f32;
    let mut dx = vec![base; rows * i];
    let mut dw = vec![base; i * o];
    let mut db = vec![base; o];
    linear_backward(Some(&mut dx), &mut dw, Some(&mut db), &r, &x, &w, rows, i, o);
    let sub = |v: &[f32]| v.iter().map(|g| g - base).collect::<Vec<f32>>();
    fd_check("linear dx", &x, &sub(&dx), |xp| fwd(xp, &w, Some(&bias)));
    fd_check("linear dw", &w, &sub(&dw), |wp| fwd(&x, wp, Some(&bias)));
    fd_check("linear dbias", &bias, &sub(&db), |bp| fwd(&x, &w, Some(bp)));
    // dx = None, dbias = None path: dw must be the same.
    let mut dw2 = vec![base; i * o];
    linear_backward(None, &mut dw2, None, &r, &x, &w, rows, i, o);
    assert_eq!(dw2, dw);
}

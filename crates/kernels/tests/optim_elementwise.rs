//! AdamW against a hand-written f64 reference; residual adds, scale, sum of squares.
mod common;
use common::Rng;
use kernels::*;

#[test]
fn adamw_matches_f64_reference_over_several_steps() {
    let mut rng = Rng::new(30);
    let n = 40_000; // several parallel chunks
    let mut p = rng.vec(n, 1.0);
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let mut pr: Vec<f64> = p.iter().map(|&x| x as f64).collect();
    let (mut mr, mut vr) = (vec![0.0f64; n], vec![0.0f64; n]);
    let (lr, b1, b2, eps, wd) = (1e-2f32, 0.9f32, 0.95f32, 1e-8f32, 0.1f32);
    for t in 1..=3u64 {
        let g = rng.vec(n, 1.0);
        adamw_step(&mut p, &g, &mut m, &mut v, lr, b1, b2, eps, wd, t);
        let (lr, b1, b2, eps, wd) = (lr as f64, b1 as f64, b2 as f64, eps as f64, wd as f64);
        for i in 0..n {
            let gi = g[i] as f64;
            mr[i] = b1 * mr[i] + (1.0 - b1) * gi;
            vr[i] = b2 * vr[i] + (1.0 - b2) * gi * gi;
            let mh = mr[i] / (1.0 - b1.powi(t as i32));
            let vh = vr[i] / (1.0 - b2.powi(t as i32));
            pr[i] = pr[i] * (1.0 - lr * wd) - lr * mh / (vh.sqrt() + eps);
        }
    }
    for i in 0..n {
        assert!((p[i] as f64 - pr[i]).abs() < 2e-6, "param {i}: {} vs {}", p[i], pr[i]);
    }
    // The first step of Adam moves each parameter by ~lr (sign of the gradient).
    let mut q = vec![0.0f32; 1];
    adamw_step(&mut q, &[3.0], &mut [0.0], &mut [0.0], 0.01, 0.9, 0.999, 1e-8, 0.0, 1);
    assert!((q[0] + 0.01).abs() < 1e-6);
}

#[test]
#[should_panic(expected = "argument `t` = 0 is invalid")]
fn adamw_rejects_step_zero() {
    adamw_step(&mut [0.0], &[1.0], &mut [0.0], &mut [0.0], 0.1, 0.9, 0.99, 1e-8, 0.0, 0);
}

#[test]
fn residual_adds_scale_and_sum_squares() {
    let mut rng = Rng::new(31);
    let n = 50_001;
    let a = rng.vec(n, 1.0);
    let b = rng.vec(n, 1.0);
    let mut out = vec![0.0; n];
    add(&mut out, &a, &b);
    assert!(out.iter().zip(a.iter().zip(&b)).all(|(o, (x, y))| *o == x + y));
    add_inplace(&mut out, &a);
    assert!(out.iter().zip(a.iter().zip(&b)).all(|(o, (x, y))| *o == (x + y) + x));
    scale(&mut out, 0.5);
    assert!(out.iter().zip(a.iter().zip(&b)).all(|(o, (x, y))| *o == ((x + y) + x) * 0.5));
    let want: f64 = a.iter().map(|&x| x as f64 * x as f64).sum();
    let got = sum_squares(&a);
    assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
    assert_eq!(sum_squares(&[3.0, 4.0]), 25.0);
    assert_eq!(sum_squares(&[]), 0.0);
}

//! Backward kernels against central finite differences (loss = sum(out * r)).
mod common;
use common::{fd_check, weighted_sum, Rng};
use kernels::*;

#[test]
fn layernorm_backward_matches_fd_with_and_without_bias() {
    let mut rng = Rng::new(10);
    // c = 20 exercises both the 16-lane body and the remainder.
    let (rows, c) = (3, 20);
    let x: Vec<f32> = rng.vec(rows * c, 2.0).iter().map(|v| v + 0.7).collect();
    let w = rng.vec(c, 1.0);
    let b = rng.vec(c, 1.0);
    let r = rng.vec(rows * c, 1.0);
    for with_bias in [true, false] {
        let bias = if with_bias { Some(b.as_slice()) } else { None };
        let fwd = |x: &[f32], w: &[f32], b: Option<&[f32]>| {
            let (mut out, mut mu, mut rs) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
            layernorm_forward(&mut out, &mut mu, &mut rs, x, w, b, rows, c);
            weighted_sum(&out, &r)
        };
        let (mut out, mut mu, mut rs) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
        layernorm_forward(&mut out, &mut mu, &mut rs, &x, &w, bias, rows, c);
        // Normalized rows have mean 0 and variance ~1 before the affine map.
        let mean0: f32 = x[..c].iter().sum::<f32>() / c as f32;
        assert!((mu[0] - mean0).abs() < 1e-5);
        let (mut dx, mut dw) = (vec![0.0; rows * c], vec![0.0; c]);
        let mut db = vec![0.0; c];
        layernorm_backward(&mut dx, &mut dw, if with_bias { Some(&mut db) } else { None }, &r, &x, &w, &mu, &rs, rows, c);
        fd_check("layernorm dx", &x, &dx, |xp| fwd(xp, &w, bias));
        fd_check("layernorm dw", &w, &dw, |wp| fwd(&x, wp, bias));
        if with_bias {
            fd_check("layernorm db", &b, &db, |bp| fwd(&x, &w, Some(bp)));
        } else {
            assert!(db.iter().all(|&v| v == 0.0));
        }
    }
}

#[test]
fn gelu_matches_reference_values_and_fd() {
    let mut rng = Rng::new(11);
    let x: Vec<f32> = rng.vec(300, 5.0);
    let mut y = vec![0.0; x.len()];
    gelu_forward(&mut y, &x);
    for (&xi, &yi) in x.iter().zip(&y) {
        let xd = xi as f64;
        let want = 0.5 * xd * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd.powi(3))).tanh());
        assert!((yi as f64 - want).abs() < 1e-6 * (1.0 + want.abs()), "gelu({xi}) = {yi}, want {want}");
    }
    let r = rng.vec(x.len(), 1.0);
    let mut dx = vec![0.5; x.len()];
    gelu_backward(&mut dx, &x, &r);
    let dx: Vec<f32> = dx.iter().map(|v| v - 0.5).collect();
    fd_check("gelu dx", &x, &dx, |xp| {
        let mut y = vec![0.0; xp.len()];
        gelu_forward(&mut y, xp);
        weighted_sum(&y, &r)
    });
}

#[test]
fn embedding_backward_is_the_adjoint_of_forward_with_repeated_tokens() {
    let mut rng = Rng::new(12);
    let (b, t, c, v) = (2, 5, 7, 4); // 10 positions, 4 tokens: collisions guaranteed
    let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(v as u32)).collect();
    let wte = rng.vec(v * c, 1.0);
    let wpe = rng.vec(t * c, 1.0);
    let mut out = vec![0.0; b * t * c];
    embedding_forward(&mut out, &tokens, &wte, &wpe, b, t, c);
    assert_eq!(out[c + 3], wte[tokens[1] as usize * c + 3] + wpe[c + 3]);
    let r = rng.vec(b * t * c, 1.0);
    let (mut dwte, mut dwpe) = (vec![0.0; v * c], vec![0.0; t * c]);
    embedding_backward(&mut dwte, &mut dwpe, &r, &tokens, b, t, c);
    fd_check("embedding dwte", &wte, &dwte, |p| {
        let mut o = vec![0.0; b * t * c];
        embedding_forward(&mut o, &tokens, p, &wpe, b, t, c);
        weighted_sum(&o, &r)
    });
    fd_check("embedding dwpe", &wpe, &dwpe, |p| {
        let mut o = vec![0.0; b * t * c];
        embedding_forward(&mut o, &tokens, &wte, p, b, t, c);
        weighted_sum(&o, &r)
    });
}

#[test]
fn check_tokens_reports_the_first_bad_id() {
    assert_eq!(check_tokens(&[0, 3, 2], 4), Ok(()));
    let err = check_tokens(&[0, 3, 9, 7], 4).unwrap_err();
    assert_eq!(err, KernelError::TokenOutOfRange { kernel: "check_tokens", position: 2, token: 9, vocab: 4 });
    assert!(err.to_string().contains("token id 9 at position 2"));
}

#[test]
fn softmax_xent_loss_and_gradient() {
    let mut rng = Rng::new(13);
    let (rows, v) = (4, 37);
    let logits = rng.vec(rows * v, 3.0);
    let targets: Vec<u32> = (0..rows).map(|_| rng.below(v as u32)).collect();
    // Reference loss in f64.
    let mut want_sum = 0.0f64;
    for r in 0..rows {
        let z = &logits[r * v..(r + 1) * v];
        let mx = z.iter().fold(f32::MIN, |m, &x| m.max(x)) as f64;
        let lse = z.iter().map(|&x| (x as f64 - mx).exp()).sum::<f64>().ln() + mx;
        want_sum += lse - z[targets[r] as usize] as f64;
    }
    let mut losses = vec![0.0; rows];
    let eval = softmax_xent_forward(&logits, &mut losses, &targets, rows, v);
    assert!((eval - want_sum).abs() < 1e-5 * want_sum.abs(), "{eval} vs {want_sum}");
    let mut grad = logits.clone();
    let mut losses2 = vec![0.0; rows];
    let total = softmax_xent_forward_backward(&mut grad, &mut losses2, &targets, rows, v, 1.0);
    assert_eq!(total, eval);
    assert_eq!(losses, losses2);
    fd_check("xent dlogits", &logits, &grad, |z| {
        let mut l = vec![0.0; rows];
        softmax_xent_forward(z, &mut l, &targets, rows, v)
    });
    // Each gradient row sums to ~0 (softmax sums to 1, minus the one-hot); grad_scale scales it.
    let mut g2 = logits.clone();
    softmax_xent_forward_backward(&mut g2, &mut losses2, &targets, rows, v, 0.25);
    for (a, b) in g2.iter().zip(&grad) {
        assert!((a - 0.25 * b).abs() < 1e-7);
    }
    assert!(grad[..v].iter().sum::<f32>().abs() < 1e-6);
}

#[test]
fn softmax_row_with_temperature() {
    let logits = [1.0f32, 2.0, 3.0, 0.5];
    let mut p = [0.0f32; 4];
    softmax_row(&mut p, &logits, 0.5);
    let e: Vec<f64> = logits.iter().map(|&z| (z as f64 / 0.5).exp()).collect();
    let s: f64 = e.iter().sum();
    for (pi, ei) in p.iter().zip(&e) {
        assert!((*pi as f64 - ei / s).abs() < 1e-6);
    }
}

#[test]
fn softmax_row_gives_masked_logits_exactly_zero() {
    // Top-k sampling masks logits with -inf; they must get probability exactly 0.
    let logits = [f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY, 1.0];
    let mut p = [1.0f32; 4];
    softmax_row(&mut p, &logits, 0.7);
    assert_eq!(p, [0.0, 0.5, 0.0, 0.5]);
}

#[test]
#[should_panic(expected = "argument `temperature` = 0 is invalid")]
fn softmax_row_rejects_zero_temperature() {
    let mut p = [0.0f32; 2];
    softmax_row(&mut p, &[1.0, 2.0], 0.0);
}

#[test]
#[should_panic(expected = "token id 5 at position 1 is outside the vocabulary of size 5")]
fn xent_rejects_out_of_range_target() {
    let mut z = vec![0.0f32; 10];
    let mut l = vec![0.0f32; 2];
    softmax_xent_forward_backward(&mut z, &mut l, &[0, 5], 2, 5, 1.0);
}

//! Llama kernels (RMSNorm, RoPE, SwiGLU, GQA attention, nn.Linear-layout linear, token
//! embedding): references, finite differences (loss = sum(out * r)) and determinism.
mod common;
use common::{fd_check, weighted_sum, with_threads, Rng};
use kernels::*;

/// Subtracts the constant a buffer was pre-filled with (checks that backwards add).
fn minus(v: &[f32], c: f32) -> Vec<f32> {
    v.iter().map(|x| x - c).collect()
}

#[test]
fn layernorm_forward_eps_generalises_layernorm_forward() {
    let mut rng = Rng::new(50);
    let (rows, c) = (5, 20);
    let x = rng.vec(rows * c, 1.0);
    let (w, b) = (rng.vec(c, 1.0), rng.vec(c, 1.0));
    let run = |eps: Option<f32>| {
        let (mut o, mut mu, mut rs) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
        match eps {
            Some(eps) => layernorm_forward_eps(&mut o, &mut mu, &mut rs, &x, &w, Some(&b), rows, c, eps),
            None => layernorm_forward(&mut o, &mut mu, &mut rs, &x, &w, Some(&b), rows, c),
        }
        (o, mu, rs)
    };
    assert_eq!(run(None), run(Some(1e-5)));
    let (_, mu, rs) = run(Some(0.25));
    for r in 0..rows {
        let var: f64 = x[r * c..(r + 1) * c].iter().map(|&v| (v as f64 - mu[r] as f64).powi(2)).sum::<f64>() / c as f64;
        assert!((rs[r] as f64 - 1.0 / (var + 0.25).sqrt()).abs() < 1e-5);
    }
}

fn rmsnorm(x: &[f32], w: &[f32], rows: usize, c: usize, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let (mut out, mut rstd) = (vec![f32::NAN; rows * c], vec![f32::NAN; rows]);
    rmsnorm_forward(&mut out, &mut rstd, x, w, rows, c, eps);
    (out, rstd)
}

#[test]
fn rmsnorm_matches_reference_and_fd() {
    let mut rng = Rng::new(51);
    // c = 20 exercises both the 16-lane body and the remainder.
    let (rows, c, eps) = (3, 20, 1e-5);
    let x: Vec<f32> = rng.vec(rows * c, 2.0).iter().map(|v| v + 0.3).collect();
    let w = rng.vec(c, 1.0);
    let r = rng.vec(rows * c, 1.0);
    let (out, rstd) = rmsnorm(&x, &w, rows, c, eps);
    for row in 0..rows {
        let xs = &x[row * c..(row + 1) * c];
        let ms = xs.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / c as f64;
        let s = 1.0 / (ms + eps as f64).sqrt();
        assert!((rstd[row] as f64 - s).abs() < 1e-6 * s);
        for i in 0..c {
            let want = w[i] as f64 * xs[i] as f64 * s;
            assert!((out[row * c + i] as f64 - want).abs() < 1e-5, "out[{row},{i}]");
        }
    }
    let (mut dx, mut dw) = (vec![0.25; rows * c], vec![0.25; c]);
    rmsnorm_backward(&mut dx, &mut dw, &r, &x, &w, &rstd, rows, c);
    fd_check("rmsnorm dx", &x, &minus(&dx, 0.25), |xp| weighted_sum(&rmsnorm(xp, &w, rows, c, eps).0, &r));
    fd_check("rmsnorm dw", &w, &minus(&dw, 0.25), |wp| weighted_sum(&rmsnorm(&x, wp, rows, c, eps).0, &r));
}

fn roped(qkv: &[f32], table: &RopeTable, b: usize, t: usize, nh: usize, nkv: usize, hd: usize) -> Vec<f32> {
    let mut y = qkv.to_vec();
    rope_forward(&mut y, table, b, t, nh, nkv, hd);
    y
}

#[test]
fn rope_on_a_hand_computed_case() {
    // hd = 4, theta = 10000: inv_freq = [1, 1/100]; position 1 rotates the pairs
    // (x0, x2) by 1 rad and (x1, x3) by 0.01 rad; position 0 and V are untouched.
    let (b, t, nh, nkv, hd) = (1, 2, 1, 1, 4);
    let table = RopeTable::new(t, hd, 10_000.0);
    assert_eq!((table.seq_len(), table.head_dim()), (2, 4));
    assert_eq!(table.cos(0), &[1.0, 1.0]);
    assert_eq!(table.sin(0), &[0.0, 0.0]);
    let q = [1.0f32, 2.0, 3.0, 4.0];
    let k = [0.5f32, -1.0, 2.0, 0.25];
    let v = [9.0f32, 8.0, 7.0, 6.0];
    let row: Vec<f32> = q.iter().chain(&k).chain(&v).copied().collect();
    let qkv: Vec<f32> = row.iter().chain(&row).copied().collect();
    let y = roped(&qkv, &table, b, t, nh, nkv, hd);
    assert_eq!(&y[..12], &qkv[..12]);
    let want_q = [-1.9841106485555495, 1.959900667496664, 2.4623779024123156, 4.019799668334994];
    let want_k = [-1.4127908166817231, -1.002449958750207, 1.501340104140228, 0.23998766676999966];
    for i in 0..4 {
        assert!((y[12 + i] as f64 - want_q[i]).abs() < 1e-6, "q[{i}] = {}", y[12 + i]);
        assert!((y[16 + i] as f64 - want_k[i]).abs() < 1e-6, "k[{i}] = {}", y[16 + i]);
    }
    assert_eq!(&y[20..], &v);
}

#[test]
fn rope_table_follows_transformers_f32_recipe() {
    let (t, hd, theta) = (300, 8, 500_000.0);
    let table = RopeTable::new(t, hd, theta);
    for pos in [0, 1, 7, 299] {
        for i in 0..hd / 2 {
            let inv = 1.0f32 / (theta as f32).powf((2 * i) as f32 / hd as f32);
            let angle = ((pos as f32) * inv) as f64;
            assert_eq!(table.cos(pos)[i], angle.cos() as f32);
            assert_eq!(table.sin(pos)[i], angle.sin() as f32);
        }
    }
}

#[test]
fn rope_backward_inverts_forward_and_matches_fd() {
    let mut rng = Rng::new(52);
    let (b, t, nh, nkv, hd) = (2, 5, 4, 2, 6);
    let table = RopeTable::new(t + 3, hd, 10_000.0); // a longer table is fine
    let qkv = rng.vec(b * t * (nh + 2 * nkv) * hd, 1.0);
    // Round trip: the rotation is orthogonal, so backward(forward(x)) = x.
    let mut y = roped(&qkv, &table, b, t, nh, nkv, hd);
    rope_backward(&mut y, &table, b, t, nh, nkv, hd);
    for (i, (a, w)) in y.iter().zip(&qkv).enumerate() {
        assert!((a - w).abs() < 1e-6, "round trip [{i}]: {a} vs {w}");
    }
    let r = rng.vec(qkv.len(), 1.0);
    let mut d = r.clone();
    rope_backward(&mut d, &table, b, t, nh, nkv, hd);
    fd_check("rope dqkv", &qkv, &d, |p| weighted_sum(&roped(p, &table, b, t, nh, nkv, hd), &r));
}

#[test]
#[should_panic(expected = "argument `t` = 9 is invalid: exceeds the number of positions of the RoPE table")]
fn rope_rejects_a_short_table() {
    let table = RopeTable::new(8, 4, 10_000.0);
    let mut qkv = vec![0.0; 9 * 3 * 4];
    rope_forward(&mut qkv, &table, 1, 9, 1, 1, 4);
}

#[test]
#[should_panic(expected = "argument `hd` = 5 is invalid")]
fn rope_table_rejects_odd_head_dim() {
    RopeTable::new(8, 5, 10_000.0);
}

fn swiglu(h: &[f32], rows: usize, f: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; rows * f];
    swiglu_forward(&mut out, h, rows, f);
    out
}

#[test]
fn swiglu_matches_reference_and_fd_for_both_halves() {
    let mut rng = Rng::new(53);
    let (rows, f) = (3, 20);
    let h = rng.vec(rows * 2 * f, 4.0);
    let out = swiglu(&h, rows, f);
    for r in 0..rows {
        for i in 0..f {
            let (g, u) = (h[r * 2 * f + i] as f64, h[r * 2 * f + f + i] as f64);
            let want = g / (1.0 + (-g).exp()) * u;
            assert!((out[r * f + i] as f64 - want).abs() < 1e-6 * (1.0 + want.abs()));
        }
    }
    let r = rng.vec(rows * f, 1.0);
    let mut dh = vec![0.5; h.len()];
    swiglu_backward(&mut dh, &r, &h, rows, f);
    let dh = minus(&dh, 0.5);
    // fd over the whole buffer covers the gate half and the up half.
    fd_check("swiglu d[gate|up]", &h, &dh, |p| weighted_sum(&swiglu(p, rows, f), &r));
    assert!(dh[f..2 * f].iter().any(|&v| v != 0.0), "up half of the gradient is empty");
}

/// qkv width of a GQA row.
fn width(nh: usize, nkv: usize, hd: usize) -> usize {
    (nh + 2 * nkv) * hd
}

fn gqa(qkv: &[f32], b: usize, t: usize, nh: usize, nkv: usize, hd: usize) -> (Vec<f32>, Vec<f32>) {
    let mut out = vec![f32::NAN; b * t * nh * hd];
    let mut saved = vec![f32::NAN; attention_saved_len(b, t, nh)];
    attention_gqa_forward(&mut out, &mut saved, qkv, b, t, nh, nkv, hd);
    (out, saved)
}

#[allow(clippy::too_many_arguments)]
fn gqa_grad(qkv: &[f32], r: &[f32], b: usize, t: usize, nh: usize, nkv: usize, hd: usize, init: f32) -> Vec<f32> {
    let (out, saved) = gqa(qkv, b, t, nh, nkv, hd);
    let mut d = vec![init; qkv.len()];
    attention_gqa_backward(&mut d, r, qkv, &out, &saved, b, t, nh, nkv, hd);
    d
}

#[test]
fn gqa_backward_matches_fd() {
    let mut rng = Rng::new(54);
    let (b, t, hd) = (2, 5, 3); // hd = 3: not C / NH of any usual C, not a SIMD width
    for (nh, nkv) in [(4, 2), (4, 1), (2, 2)] {
        let qkv = rng.vec(b * t * width(nh, nkv, hd), 1.0);
        let r = rng.vec(b * t * nh * hd, 1.0);
        let d = minus(&gqa_grad(&qkv, &r, b, t, nh, nkv, hd, 0.125), 0.125);
        fd_check(&format!("gqa ({nh},{nkv}) dqkv"), &qkv, &d, |p| weighted_sum(&gqa(p, b, t, nh, nkv, hd).0, &r));
    }
}

#[test]
fn gqa_backward_across_row_blocks_matches_fd_on_a_sample() {
    // t = 67 > 64: dK/dV of one kv head accumulate over 2 query heads x 2 row blocks.
    let mut rng = Rng::new(55);
    let (b, t, nh, nkv, hd) = (1, 67, 4, 2, 4);
    let qkv = rng.vec(b * t * width(nh, nkv, hd), 1.0);
    let r = rng.vec(b * t * nh * hd, 1.0);
    let d = gqa_grad(&qkv, &r, b, t, nh, nkv, hd, 0.0);
    let scale = d.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    let (eps, mut p) = (1e-3f32, qkv.clone());
    for idx in (0..qkv.len()).step_by(11) {
        let o = p[idx];
        p[idx] = o + eps;
        let lp = weighted_sum(&gqa(&p, b, t, nh, nkv, hd).0, &r);
        p[idx] = o - eps;
        let lm = weighted_sum(&gqa(&p, b, t, nh, nkv, hd).0, &r);
        p[idx] = o;
        let fd = (lp - lm) / ((o + eps) as f64 - (o - eps) as f64);
        let an = d[idx] as f64;
        assert!((fd - an).abs() <= 1e-2 * an.abs() + 2e-3 * scale, "dqkv[{idx}]: fd {fd} vs {an}");
    }
}

#[test]
fn gqa_with_nkv_equal_nh_is_the_old_attention_bitwise() {
    let mut rng = Rng::new(56);
    let (b, t, nh, hd) = (2, 70, 3, 8);
    let c = nh * hd;
    let qkv = rng.vec(b * t * 3 * c, 1.0);
    let dout = rng.vec(b * t * c, 1.0);
    let (out, saved) = gqa(&qkv, b, t, nh, nh, hd);
    let (mut out_old, mut saved_old) = (vec![0.0; b * t * c], vec![0.0; attention_saved_len(b, t, nh)]);
    attention_forward(&mut out_old, &mut saved_old, &qkv, b, t, c, nh);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&out), bits(&out_old));
    assert_eq!(bits(&saved), bits(&saved_old));
    let d = gqa_grad(&qkv, &dout, b, t, nh, nh, hd, 0.0);
    let mut d_old = vec![0.0; qkv.len()];
    attention_backward(&mut d_old, &dout, &qkv, &out_old, &saved_old, b, t, c, nh);
    assert_eq!(bits(&d), bits(&d_old));
}

#[test]
fn gqa_equals_mha_on_explicitly_repeated_kv_heads() {
    let mut rng = Rng::new(57);
    let (b, t, hd) = (2, 70, 5);
    for (nh, nkv) in [(4, 2), (4, 1), (6, 3)] {
        let (group, w, c) = (nh / nkv, width(nh, nkv, hd), nh * hd);
        let qkv = rng.vec(b * t * w, 1.0);
        // HF repeat_kv: MHA row [q | k_rep | v_rep], k_rep head h = k head h / group.
        let mut rep = vec![0.0; b * t * 3 * c];
        for row in 0..b * t {
            let (src, dst) = (&qkv[row * w..(row + 1) * w], &mut rep[row * 3 * c..(row + 1) * 3 * c]);
            dst[..c].copy_from_slice(&src[..c]);
            for h in 0..nh {
                for part in 1..3 {
                    let s0 = c + (part - 1) * nkv * hd + (h / group) * hd;
                    dst[part * c + h * hd..part * c + (h + 1) * hd].copy_from_slice(&src[s0..s0 + hd]);
                }
            }
        }
        let (out, saved) = gqa(&qkv, b, t, nh, nkv, hd);
        let (mut out_m, mut saved_m) = (vec![0.0; b * t * c], vec![0.0; attention_saved_len(b, t, nh)]);
        attention_forward(&mut out_m, &mut saved_m, &rep, b, t, c, nh);
        assert_eq!(out, out_m, "({nh},{nkv}) forward");
        assert_eq!(saved, saved_m, "({nh},{nkv}) probabilities");
        let dout = rng.vec(b * t * c, 1.0);
        let d = gqa_grad(&qkv, &dout, b, t, nh, nkv, hd, 0.0);
        let mut d_m = vec![0.0; rep.len()];
        attention_backward(&mut d_m, &dout, &rep, &out_m, &saved_m, b, t, c, nh);
        // Fold dK/dV of the repeated heads back onto their kv head.
        let mut want = vec![0.0f32; qkv.len()];
        for row in 0..b * t {
            let (src, dst) = (&d_m[row * 3 * c..(row + 1) * 3 * c], &mut want[row * w..(row + 1) * w]);
            dst[..c].copy_from_slice(&src[..c]);
            for h in 0..nh {
                for part in 1..3 {
                    let d0 = c + (part - 1) * nkv * hd + (h / group) * hd;
                    for i in 0..hd {
                        dst[d0 + i] += src[part * c + h * hd + i];
                    }
                }
            }
        }
        for (i, (g, w)) in d.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "({nh},{nkv}) dqkv[{i}]: {g} vs {w}");
        }
    }
}

#[test]
#[should_panic(expected = "query heads 4 are not a positive multiple of key/value heads 3")]
fn gqa_rejects_kv_heads_that_do_not_divide() {
    gqa(&[0.0; 10 * 3], 1, 1, 4, 3, 3);
}

#[test]
#[should_panic(expected = "query heads 4 are not a positive multiple of key/value heads 0")]
fn gqa_rejects_zero_kv_heads() {
    gqa(&[0.0; 4 * 3], 1, 1, 4, 0, 3);
}

#[test]
#[should_panic(expected = "argument `hd` = 0 is invalid")]
fn gqa_rejects_zero_head_dim() {
    let mut d = vec![0.0; 0];
    attention_gqa_backward(&mut d, &[], &[], &[], &[0.0; 4], 1, 1, 4, 2, 0);
}

#[test]
fn linear_t_matches_fd_and_linear_forward_on_transposed_weight() {
    let mut rng = Rng::new(58);
    let (rows, i, o) = (6, 5, 7);
    let x = rng.vec(rows * i, 1.0);
    let w = rng.vec(o * i, 1.0); // (out, in)
    let bias = rng.vec(o, 1.0);
    let r = rng.vec(rows * o, 1.0);
    let fwd = |x: &[f32], w: &[f32], b: &[f32]| {
        let mut y = vec![f32::NAN; rows * o];
        linear_t_forward(&mut y, x, w, Some(b), rows, i, o);
        y
    };
    let mut wt = vec![0.0; i * o]; // (in, out)
    for a in 0..o {
        for p in 0..i {
            wt[p * o + a] = w[a * i + p];
        }
    }
    let mut y_old = vec![0.0; rows * o];
    linear_forward(&mut y_old, &x, &wt, Some(&bias), rows, i, o);
    let y = fwd(&x, &w, &bias);
    for (a, b) in y.iter().zip(&y_old) {
        assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
    }
    let (mut dx, mut dw, mut db) = (vec![0.5; rows * i], vec![0.5; o * i], vec![0.5; o]);
    linear_t_backward(Some(&mut dx), &mut dw, Some(&mut db), &r, &x, &w, rows, i, o);
    let (dx, dw, db) = (minus(&dx, 0.5), minus(&dw, 0.5), minus(&db, 0.5));
    fd_check("linear_t dx", &x, &dx, |p| weighted_sum(&fwd(p, &w, &bias), &r));
    fd_check("linear_t dw", &w, &dw, |p| weighted_sum(&fwd(&x, p, &bias), &r));
    fd_check("linear_t dbias", &bias, &db, |p| weighted_sum(&fwd(&x, &w, p), &r));
    // Same gradients as the Conv1D-layout kernel on the transposed weight.
    let (mut dx2, mut dwt2) = (vec![0.0; rows * i], vec![0.0; i * o]);
    linear_backward(Some(&mut dx2), &mut dwt2, None, &r, &x, &wt, rows, i, o);
    for (a, b) in dx.iter().zip(&dx2) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "dx {a} vs {b}");
    }
    for a in 0..o {
        for p in 0..i {
            let (g, want) = (dw[a * i + p], dwt2[p * o + a]);
            assert!((g - want).abs() <= 1e-5 * (1.0 + want.abs()), "dw {g} vs {want}");
        }
    }
    // dx = None: the same dw.
    let (mut dw3, mut dw4, mut dx4) = (vec![0.0; o * i], vec![0.0; o * i], vec![0.0; rows * i]);
    linear_t_backward(None, &mut dw3, None, &r, &x, &w, rows, i, o);
    linear_t_backward(Some(&mut dx4), &mut dw4, None, &r, &x, &w, rows, i, o);
    assert_eq!(dw3, dw4);
}

#[test]
fn token_embedding_matches_embedding_with_zero_positions_and_fd() {
    let mut rng = Rng::new(59);
    let (b, t, c, v) = (2, 5, 7, 4); // collisions guaranteed
    let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(v as u32)).collect();
    let wte = rng.vec(v * c, 1.0);
    let zeros = vec![0.0; t * c];
    let fwd = |wte: &[f32]| {
        let mut o = vec![f32::NAN; b * t * c];
        token_embedding_forward(&mut o, &tokens, wte, b, t, c);
        o
    };
    let mut want = vec![0.0; b * t * c];
    embedding_forward(&mut want, &tokens, &wte, &zeros, b, t, c);
    assert_eq!(fwd(&wte), want);
    let r = rng.vec(b * t * c, 1.0);
    let mut dwte = vec![0.25; v * c];
    token_embedding_backward(&mut dwte, &r, &tokens, b, t, c);
    let (mut dwte_old, mut dwpe) = (vec![0.25; v * c], vec![0.0; t * c]);
    embedding_backward(&mut dwte_old, &mut dwpe, &r, &tokens, b, t, c);
    assert_eq!(dwte, dwte_old);
    fd_check("token_embedding dwte", &wte, &minus(&dwte, 0.25), |p| weighted_sum(&fwd(p), &r));
}

#[test]
#[should_panic(expected = "kernel `token_embedding_forward`: token id 9 at position 1")]
fn token_embedding_rejects_out_of_range_ids() {
    let mut o = vec![0.0; 2 * 3];
    token_embedding_forward(&mut o, &[0, 9], &[0.0; 4 * 3], 1, 2, 3);
}

/// Every new kernel once, big enough for several tasks/chunks; all outputs.
fn run_llama_kernels() -> Vec<Vec<f32>> {
    let mut rng = Rng::new(60);
    let (b, t, nh, nkv, hd) = (2, 80, 4, 2, 12);
    let (rows, c, f) = (b * t, nh * hd, 3 * nh * hd);
    let mut outs = Vec::new();
    let x = rng.vec(rows * c, 1.0);
    let w = rng.vec(c, 1.0);
    let (o, rstd) = rmsnorm(&x, &w, rows, c, 1e-5);
    let (mut dx, mut dw) = (vec![0.0; rows * c], vec![0.0; c]);
    rmsnorm_backward(&mut dx, &mut dw, &o, &x, &w, &rstd, rows, c);
    outs.extend([o, rstd, dx, dw]);
    let table = RopeTable::new(t, hd, 10_000.0);
    for kv in [nkv, 1, nh] {
        let qkv = roped(&rng.vec(rows * width(nh, kv, hd), 1.0), &table, b, t, nh, kv, hd);
        let dout = rng.vec(rows * c, 1.0);
        let (out, saved) = gqa(&qkv, b, t, nh, kv, hd);
        let mut d = vec![0.0; qkv.len()];
        attention_gqa_backward(&mut d, &dout, &qkv, &out, &saved, b, t, nh, kv, hd);
        rope_backward(&mut d, &table, b, t, nh, kv, hd);
        outs.extend([qkv, out, d]);
    }
    let h = rng.vec(rows * 2 * f, 3.0);
    let dy = rng.vec(rows * f, 1.0);
    let mut dh = vec![0.0; h.len()];
    swiglu_backward(&mut dh, &dy, &h, rows, f);
    outs.extend([swiglu(&h, rows, f), dh]);
    // nn.Linear layout, above gemm's threading threshold.
    let (i, od) = (c, 4 * c);
    let wl = rng.vec(od * i, 1.0);
    let mut y = vec![0.0; rows * od];
    linear_t_forward(&mut y, &x, &wl, None, rows, i, od);
    let (mut ldx, mut ldw, mut ldb) = (vec![0.0; rows * i], vec![0.0; od * i], vec![0.0; od]);
    linear_t_backward(Some(&mut ldx), &mut ldw, Some(&mut ldb), &y, &x, &wl, rows, i, od);
    outs.extend([y, ldx, ldw, ldb]);
    let tokens: Vec<u32> = (0..rows).map(|_| rng.below(7)).collect();
    let mut dwte = vec![0.0; 7 * c];
    token_embedding_backward(&mut dwte, &x, &tokens, b, t, c);
    outs.push(dwte);
    outs
}

#[test]
fn llama_kernels_agree_bitwise_on_1_2_and_3_threads() {
    let one = with_threads(1, run_llama_kernels);
    let bits = |v: &Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for n in [2, 3] {
        let other = with_threads(n, run_llama_kernels);
        assert_eq!(one.len(), other.len());
        for (k, (a, b)) in one.iter().zip(&other).enumerate() {
            assert_eq!(bits(a), bits(b), "output {k} differs between 1 and {n} threads");
            assert!(a.iter().all(|x| x.is_finite()), "output {k} not finite");
        }
    }
}

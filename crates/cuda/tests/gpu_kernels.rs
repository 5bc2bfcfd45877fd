//! Every CUDA kernel against the CPU kernel on random inputs, forward and backward,
//! through the backend's ops (f32: relative 1e-5 on the whole output; the bf16 builds,
//! inputs rounded to bf16 and results read back widened: relative 2e-2), on the
//! emulated device everywhere and on GPU 0 where there is one (that half skips, saying
//! so, without one). `scripts/gpu-check.sh` runs this binary on the GPU machine; with
//! `HYPERION_GPU_CHECK_OUT=FILE` each check's worst error is written there as JSON.

use cuda_kernels::backend::{Cuda, DevVec};
use cuda_kernels::device::{Dims, Dtype};
use cuda_kernels::gpu::unavailable;
use model::backend::{Backend, Buf, Cpu, WeightLayout};
use model::spec::{Mlp, Norm};

fn rand_vec(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n.max(1e-30)).sqrt()
}

struct Check<'a> {
    g: &'a Cuda,
    results: Vec<(String, f64)>,
    seed: u64,
    /// The least tolerance of this precision (0 for f32, bf16's 2e-2).
    floor: f64,
}

impl Check<'_> {
    fn rand(&mut self, n: usize, scale: f32) -> Vec<f32> {
        self.seed += 1;
        rand_vec(n, self.seed, scale)
    }
    /// `v` in the backend's precision (activations, weights, gradients).
    fn up(&self, v: &[f32]) -> DevVec {
        self.g.from_host(v)
    }
    /// f32 statistics.
    fn stats(&self, n: usize) -> DevVec {
        self.g.stats(n)
    }
    fn down(&self, d: &DevVec) -> Vec<f32> {
        let mut h = vec![0.0; d.len()];
        self.g.to_host(d, &mut h);
        h
    }
    fn expect(&mut self, what: &str, got: &DevVec, want: &[f32], tol: f64) {
        let got = self.down(got);
        let e = rel(&got, want);
        let tol = tol.max(self.floor);
        self.results.push((format!("{what} ({:?})", self.g.dtype), e));
        assert!(e <= tol, "{} {:?} {what}: device vs CPU relative error {e:e} > {tol:e}", self.g.name(), self.g.dtype);
    }
}

fn elementwise(c: &mut Check) {
    let (rows, f) = (19, 40);
    for mlp in [Mlp::Gelu, Mlp::SwiGlu] {
        let w = if mlp == Mlp::SwiGlu { 2 * f } else { f };
        let (h, dout, dh0) = (c.rand(rows * w, 3.0), c.rand(rows * f, 1.0), c.rand(rows * w, 1.0));
        let mut out = vec![0.0; rows * f];
        Cpu.mlp_act_forward(mlp, &mut out, &h, rows, f);
        let (hd, mut od) = (c.up(&h), c.g.zeros(rows * f));
        c.g.mlp_act_forward(mlp, &mut od, &hd, rows, f);
        c.expect(&format!("{mlp:?} forward"), &od, &out, 1e-5);
        let mut dh = dh0.clone();
        Cpu.mlp_act_backward(mlp, &mut dh, &dout, &h, rows, f);
        let (mut dhd, doutd) = (c.up(&dh0), c.up(&dout));
        c.g.mlp_act_backward(mlp, &mut dhd, &doutd, &hd, rows, f);
        c.expect(&format!("{mlp:?} backward (adds)"), &dhd, &dh, 1e-5);
    }
    let (x, a) = (c.rand(1000, 1.0), c.rand(1000, 1.0));
    let mut want = x.clone();
    Cpu.add_inplace(&mut want, &a);
    let (mut xd, ad) = (c.up(&x), c.up(&a));
    c.g.add_inplace(&mut xd, &ad);
    c.expect("add_inplace", &xd, &want, 0.0);
    let xd = c.up(&x);
    c.g.launch("scale_inplace", Dims { grid: (3, 1, 1), block: (128, 1, 1), shared: 0 }, &[&xd.arg(), &0.5f32, &(1000i64)]);
    let half: Vec<f32> = x.iter().map(|v| v * 0.5).collect();
    c.expect("scale_inplace", &xd, &half, 0.0);
    // bf16 round trip: round to nearest even, as the CPU's `half` crate does.
    let n = 999;
    let x = c.rand(n, 100.0);
    let xd = c.g.upload(&x);
    let bits = c.g.zeros_as(n, Dtype::Bf16);
    let back = c.g.zeros_as(n, Dtype::F32);
    c.g.launch("f32_to_bf16", Dims { grid: (4, 1, 1), block: (256, 1, 1), shared: 0 }, &[&bits.arg(), &xd.arg(), &(n as i64)]);
    c.g.launch("bf16_to_f32", Dims { grid: (4, 1, 1), block: (256, 1, 1), shared: 0 }, &[&back.arg(), &bits.arg(), &(n as i64)]);
    let want: Vec<f32> = x.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
    c.expect("f32 -> bf16 -> f32", &back, &want, 0.0);
}

fn linear(c: &mut Check) {
    let (rows, din, dout) = (13, 24, 20);
    for wl in [WeightLayout::InOut, WeightLayout::OutIn] {
        let (x, w, b, dy) = (c.rand(rows * din, 1.0), c.rand(din * dout, 0.5), c.rand(dout, 0.5), c.rand(rows * dout, 1.0));
        let (dx0, dw0, db0) = (c.rand(rows * din, 1.0), c.rand(din * dout, 1.0), c.rand(dout, 1.0));
        let mut y = vec![0.0; rows * dout];
        Cpu.linear_forward(&mut y, &x, &w, Some(&b), wl, rows, din, dout);
        let (xd, wd, bd, dyd) = (c.up(&x), c.up(&w), c.up(&b), c.up(&dy));
        let mut yd = c.g.zeros(rows * dout);
        c.g.linear_forward(&mut yd, &xd, &wd, Some(&bd), wl, rows, din, dout);
        c.expect(&format!("linear {wl:?} forward"), &yd, &y, 1e-5);
        let (mut dx, mut dw, mut db) = (dx0.clone(), dw0.clone(), db0.clone());
        Cpu.linear_backward(Some(&mut dx), &mut dw, Some(&mut db), &dy, &x, &w, wl, rows, din, dout);
        let (mut dxd, mut dwd, mut dbd) = (c.up(&dx0), c.up(&dw0), c.up(&db0));
        c.g.linear_backward(Some(&mut dxd), &mut dwd, Some(&mut dbd), &dyd, &xd, &wd, wl, rows, din, dout);
        c.expect(&format!("linear {wl:?} backward dx"), &dxd, &dx, 1e-5);
        c.expect(&format!("linear {wl:?} backward dw"), &dwd, &dw, 1e-5);
        c.expect(&format!("linear {wl:?} backward db"), &dbd, &db, 1e-5);
    }
    // The MLP's up projection with its GELU (fused into cuBLASLt's GELU_AUX_BIAS
    // epilogue in bf16), and with SwiGLU (no bias: never fused).
    for (mlp, wide) in [(Mlp::Gelu, 1), (Mlp::SwiGlu, 2)] {
        let f = 20;
        let (x, w, b) = (c.rand(rows * din, 1.0), c.rand(din * wide * f, 0.5), c.rand(wide * f, 0.5));
        let bias = (mlp == Mlp::Gelu).then_some(&b[..]);
        let (mut h, mut out) = (vec![0.0; rows * wide * f], vec![0.0; rows * f]);
        Cpu.linear_act_forward(mlp, &mut h, &mut out, &x, &w, bias, WeightLayout::InOut, rows, din, wide * f, f);
        let (xd, wd, bd) = (c.up(&x), c.up(&w), c.up(&b));
        let (mut hd, mut od) = (c.g.zeros(rows * wide * f), c.g.zeros(rows * f));
        let bd = (mlp == Mlp::Gelu).then_some(&*bd);
        c.g.linear_act_forward(mlp, &mut hd, &mut od, &xd, &wd, bd, WeightLayout::InOut, rows, din, wide * f, f);
        c.expect(&format!("linear + {mlp:?}: pre-activation"), &hd, &h, 1e-5);
        c.expect(&format!("linear + {mlp:?}: output"), &od, &out, 1e-5);
    }
    let (m, n, k) = (7, 9, 11);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let (a, b, c0) = (c.rand(m * k, 1.0), c.rand(k * n, 1.0), c.rand(m * n, 1.0));
        let mut want = c0.clone();
        Cpu.matmul(&mut want, &a, ta, &b, tb, m, n, k, true);
        let (ad, bd, mut cd) = (c.up(&a), c.up(&b), c.up(&c0));
        c.g.matmul(&mut cd, &ad, ta, &bd, tb, m, n, k, true);
        c.expect(&format!("matmul ta={ta} tb={tb} accumulate"), &cd, &want, 1e-5);
    }
}

fn norms(c: &mut Check) {
    let (rows, ch) = (11, 300);
    for norm in [Norm::LayerNorm, Norm::RmsNorm] {
        let bias = norm == Norm::LayerNorm;
        let (x, w, b) = (c.rand(rows * ch, 2.0), c.rand(ch, 1.0), c.rand(ch, 0.5));
        let (mut out, mut mean, mut rstd) = (vec![0.0; rows * ch], vec![0.0; rows], vec![0.0; rows]);
        Cpu.norm_forward(norm, 1e-5, &mut out, &mut mean, &mut rstd, &x, &w, bias.then_some(&b[..]), rows, ch);
        let (xd, wd, bd) = (c.up(&x), c.up(&w), c.up(&b));
        let (mut od, mut md, mut rd) = (c.g.zeros(rows * ch), c.stats(rows), c.stats(rows));
        c.g.norm_forward(norm, 1e-5, &mut od, &mut md, &mut rd, &xd, &wd, bias.then_some(&*bd), rows, ch);
        c.expect(&format!("{norm:?} forward"), &od, &out, 1e-5);
        c.expect(&format!("{norm:?} forward rstd"), &rd, &rstd, 1e-5);
        if bias {
            c.expect(&format!("{norm:?} forward mean"), &md, &mean, 1e-5);
        }
        // The residual add fused with the norm: the CPU's add then norm, and bit for bit
        // the device's unfused pair.
        let delta = c.rand(rows * ch, 1.0);
        let (mut res, mut fo, mut fm, mut fr) = (x.clone(), vec![0.0; rows * ch], vec![0.0; rows], vec![0.0; rows]);
        Cpu.residual_norm_forward(norm, 1e-5, &mut res, &delta, &mut fo, &mut fm, &mut fr, &w, bias.then_some(&b[..]), rows, ch);
        let (mut resd, deltad) = (c.up(&x), c.up(&delta));
        let (mut fod, mut fmd, mut frd) = (c.g.zeros(rows * ch), c.stats(rows), c.stats(rows));
        c.g.residual_norm_forward(norm, 1e-5, &mut resd, &deltad, &mut fod, &mut fmd, &mut frd, &wd, bias.then_some(&*bd), rows, ch);
        c.expect(&format!("{norm:?} residual + norm: sum"), &resd, &res, 1e-6);
        c.expect(&format!("{norm:?} residual + norm: output"), &fod, &fo, 1e-5);
        c.expect(&format!("{norm:?} residual + norm: rstd"), &frd, &fr, 1e-5);
        let (mut ud, mut uo, mut um, mut ur) = (c.up(&x), c.g.zeros(rows * ch), c.stats(rows), c.stats(rows));
        c.g.add_inplace(&mut ud, &deltad);
        c.g.norm_forward(norm, 1e-5, &mut uo, &mut um, &mut ur, &ud, &wd, bias.then_some(&*bd), rows, ch);
        assert_eq!(c.down(&fod), c.down(&uo), "{norm:?} {:?}: the fused residual norm differs from the unfused pair", c.g.dtype);
        assert_eq!(c.down(&frd), c.down(&ur), "{norm:?} {:?}: fused rstd", c.g.dtype);
        if bias {
            assert_eq!(c.down(&fmd), c.down(&um), "{norm:?} {:?}: fused mean", c.g.dtype);
        }
        let (dout, dx0, dw0, db0) = (c.rand(rows * ch, 1.0), c.rand(rows * ch, 1.0), c.rand(ch, 1.0), c.rand(ch, 1.0));
        let (mut dx, mut dw, mut db) = (dx0.clone(), dw0.clone(), db0.clone());
        Cpu.norm_backward(norm, &mut dx, &mut dw, bias.then_some(&mut db[..]), &dout, &x, &w, &mean, &rstd, rows, ch);
        let (mut dxd, mut dwd, mut dbd, doutd) = (c.up(&dx0), c.up(&dw0), c.up(&db0), c.up(&dout));
        c.g.norm_backward(norm, &mut dxd, &mut dwd, if bias { Some(&mut *dbd) } else { None }, &doutd, &xd, &wd, &md, &rd, rows, ch);
        c.expect(&format!("{norm:?} backward dx"), &dxd, &dx, 1e-5);
        c.expect(&format!("{norm:?} backward dw"), &dwd, &dw, 1e-5);
        if bias {
            c.expect(&format!("{norm:?} backward db"), &dbd, &db, 1e-5);
        }
    }
}

fn embedding(c: &mut Check) {
    let (b, t, ch, v) = (2, 7, 24, 29);
    let tokens: Vec<u32> = (0..b * t).map(|i| ((i * 7 + 3) % v) as u32).collect();
    let (wte, wpe, dout) = (c.rand(v * ch, 1.0), c.rand(t * ch, 1.0), c.rand(b * t * ch, 1.0));
    let (wted, wped, doutd) = (c.up(&wte), c.up(&wpe), c.up(&dout));
    for pos in [true, false] {
        let mut out = vec![0.0; b * t * ch];
        Cpu.embedding_forward(&mut out, &tokens, &wte, pos.then_some(&wpe[..]), b, t, ch);
        let mut od = c.g.zeros(b * t * ch);
        c.g.embedding_forward(&mut od, &tokens, &wted, if pos { Some(&*wped) } else { None }, b, t, ch);
        c.expect(&format!("embedding forward (positions {pos})"), &od, &out, 0.0);
        let (dwte0, dwpe0) = (c.rand(v * ch, 1.0), c.rand(t * ch, 1.0));
        let (mut dwte, mut dwpe) = (dwte0.clone(), dwpe0.clone());
        Cpu.embedding_backward(&mut dwte, pos.then_some(&mut dwpe[..]), &dout, &tokens, b, t, ch);
        let (mut a, mut p) = (c.up(&dwte0), c.up(&dwpe0));
        c.g.embedding_backward(&mut a, if pos { Some(&mut *p) } else { None }, &doutd, &tokens, b, t, ch);
        c.expect(&format!("embedding backward wte (positions {pos})"), &a, &dwte, 1e-6);
        if pos {
            c.expect("embedding backward wpe", &p, &dwpe, 1e-6);
        }
    }
    // A tensor-parallel part: rows [10, 20) of the vocabulary.
    let (first, part) = (10, 10);
    let wp = c.rand(part * ch, 1.0);
    let wpd = c.up(&wp);
    let mut out = vec![0.0; b * t * ch];
    Cpu.embedding_part_forward(&mut out, &tokens, &wp, first, Some(&wpe), b, t, ch);
    let mut od = c.g.zeros(b * t * ch);
    c.g.embedding_part_forward(&mut od, &tokens, &wpd, first, Some(&wped), b, t, ch);
    c.expect("embedding part forward", &od, &out, 0.0);
    let mut dw = vec![0.0; part * ch];
    Cpu.embedding_part_backward(&mut dw, None, &dout, &tokens, first, b, t, ch);
    let mut dwd = c.g.zeros(part * ch);
    c.g.embedding_part_backward(&mut dwd, None, &doutd, &tokens, first, b, t, ch);
    c.expect("embedding part backward", &dwd, &dw, 1e-6);
}

fn attention(c: &mut Check) {
    // One tile (t < the tile), several tiles with a ragged last one (hd 64: tiles of
    // 16 rows; hd 128: 8), and grouped-query layouts.
    for (b, t, hd, nh, nkv) in [(2, 9, 8, 4, 4), (2, 9, 8, 4, 2), (1, 9, 8, 6, 1), (2, 37, 64, 4, 2), (1, 21, 128, 2, 1)] {
        attention_case(c, b, t, hd, nh, nkv);
    }
    // The fused kernel keeps one log-sum-exp per row, not the (t, t) probabilities.
    assert_eq!(c.g.attention_saved_len(2, 1024, 12), 2 * 12 * 1024);
}

fn attention_case(c: &mut Check, b: usize, t: usize, hd: usize, nh: usize, nkv: usize) {
    {
        let w = (nh + 2 * nkv) * hd;
        let qkv = c.rand(b * t * w, 1.0);
        // RoPE on q and k, forward and backward.
        let rope = Cpu.rope_table(t, hd, 10000.0);
        let drope = c.g.rope_table(t, hd, 10000.0);
        let mut r = qkv.clone();
        Cpu.rope_forward(&mut r, &rope, b, t, nh, nkv, hd);
        let mut rd = c.up(&qkv);
        c.g.rope_forward(&mut rd, &drope, b, t, nh, nkv, hd);
        c.expect(&format!("rope forward t={t} hd={hd} nh={nh} nkv={nkv}"), &rd, &r, 1e-6);
        Cpu.rope_backward(&mut r, &rope, b, t, nh, nkv, hd);
        c.g.rope_backward(&mut rd, &drope, b, t, nh, nkv, hd);
        c.expect(&format!("rope backward nh={nh} nkv={nkv}"), &rd, &r, 1e-6);
        // Causal GQA attention.
        let (mut out, mut saved) = (vec![0.0; b * t * nh * hd], vec![0.0; Cpu.attention_saved_len(b, t, nh)]);
        Cpu.attention_forward(&mut out, &mut saved, &qkv, b, t, nh, nkv, hd);
        let qd = c.up(&qkv);
        let (mut od, mut sd) = (c.g.zeros(b * t * nh * hd), c.stats(c.g.attention_saved_len(b, t, nh)));
        c.g.attention_forward(&mut od, &mut sd, &qd, b, t, nh, nkv, hd);
        c.expect(&format!("attention forward t={t} hd={hd} nh={nh} nkv={nkv}"), &od, &out, 1e-5);
        let (dout, dqkv0) = (c.rand(b * t * nh * hd, 1.0), c.rand(b * t * w, 1.0));
        let mut dqkv = dqkv0.clone();
        Cpu.attention_backward(&mut dqkv, &dout, &qkv, &out, &saved, b, t, nh, nkv, hd);
        let (mut dd, doutd) = (c.up(&dqkv0), c.up(&dout));
        c.g.attention_backward(&mut dd, &doutd, &qd, &od, &sd, b, t, nh, nkv, hd);
        c.expect(&format!("attention backward t={t} hd={hd} nh={nh} nkv={nkv}"), &dd, &dqkv, 1e-5);
    }
}

fn xent(c: &mut Check) {
    let (rows, v) = (9, 333);
    let logits = c.rand(rows * v, 4.0);
    let targets: Vec<u32> = (0..rows).map(|i| ((i * 37 + 1) % v) as u32).collect();
    let mut l = logits.clone();
    let mut losses = vec![0.0; rows];
    let want = Cpu.xent_forward_backward(&mut l, &mut losses, &targets, rows, v, 0.25);
    let (mut ld, mut lossd) = (c.up(&logits), c.stats(rows));
    let got = c.g.xent_forward_backward(&mut ld, &mut lossd, &targets, rows, v, 0.25);
    assert!(((got - want) / want).abs() < 1e-6f64.max(c.floor), "xent loss {got} vs {want}");
    c.expect("xent losses", &lossd, &losses, 1e-6);
    c.expect("xent gradient", &ld, &l, 1e-5);
    let mut lf = vec![0.0; rows];
    let want = Cpu.xent_forward(&logits, &mut lf, &targets, rows, v);
    let ld = c.up(&logits);
    let got = c.g.xent_forward(&ld, &mut lossd, &targets, rows, v);
    assert!(((got - want) / want).abs() < 1e-6f64.max(c.floor), "xent forward {got} vs {want}");
    // The vocabulary-parallel pieces on columns [100, 100 + v) of a larger vocabulary.
    let first = 100;
    let tg: Vec<u32> = (0..rows).map(|i| (first + (i * 53) % (v + 50)) as u32).collect();
    let (mut max, mut picked) = (vec![0.0; rows], vec![0.0; rows]);
    Cpu.xent_parallel_stats(&logits, &tg, first, rows, v, &mut max, &mut picked);
    let (mut maxd, mut pd) = (c.stats(rows), c.stats(rows));
    c.g.xent_parallel_stats(&ld, &tg, first, rows, v, &mut maxd, &mut pd);
    c.expect("xent parallel max", &maxd, &max, 0.0);
    c.expect("xent parallel picked", &pd, &picked, 0.0);
    let (mut e, mut sum) = (logits.clone(), vec![0.0; rows]);
    Cpu.xent_parallel_exp(&mut e, &max, rows, v, &mut sum);
    let (mut ed, mut sd) = (c.up(&logits), c.stats(rows));
    c.g.xent_parallel_exp(&mut ed, &maxd, rows, v, &mut sd);
    c.expect("xent parallel exp", &ed, &e, 1e-6);
    c.expect("xent parallel sums", &sd, &sum, 1e-6);
    Cpu.xent_parallel_grad(&mut e, &sum, &tg, first, rows, v, 0.5);
    c.g.xent_parallel_grad(&mut ed, &sd, &tg, first, rows, v, 0.5);
    c.expect("xent parallel gradient", &ed, &e, 1e-5);
}

fn optimizer(c: &mut Check) {
    let n = 1234;
    let (p, g, m, v) = (c.rand(n, 1.0), c.rand(n, 0.1), c.rand(n, 0.01), c.rand(n, 0.01).iter().map(|x| x.abs()).collect::<Vec<_>>());
    let (lr, b1, b2, eps, wd, step, clip) = (1e-3f32, 0.9f32, 0.95f32, 1e-8f32, 0.1f32, 7, 0.5f32);
    // The gradient as the device holds it (rounded in bf16), clipped as the host clips.
    let gd = c.up(&g);
    let held = c.down(&gd);
    let clipped: Vec<f32> = held.iter().map(|x| x * clip).collect();
    let (mut pw, mut mw, mut vw) = (p.clone(), m.clone(), v.clone());
    kernels::adamw_step(&mut pw, &clipped, &mut mw, &mut vw, lr, b1, b2, eps, wd, step);
    let st = (lr as f64 / (1.0 - (b1 as f64).powi(step as i32))) as f32;
    let bc2 = (1.0 - (b2 as f64).powi(step as i32)).sqrt() as f32;
    // fp32 masters and moments whatever the precision; the copy the model reads in it.
    let (pd, md, vd) = (c.g.upload(&p), c.g.upload(&m), c.g.upload(&v));
    let copy = c.g.zeros(n);
    let dims = Dims { grid: (5, 1, 1), block: (256, 1, 1), shared: 0 };
    let clipd = c.g.upload(&[clip]);
    c.g.launch("adamw", dims, &[&pd.arg(), &copy.arg(), &gd.arg(), &md.arg(), &vd.arg(), &(n as i64), &clipd.arg(), &st, &b1, &b2, &eps, &(1.0 - lr * wd), &bc2]);
    // The update itself is exact f32 arithmetic in either precision.
    let (floor, e) = (c.floor, 1e-6);
    c.floor = 0.0;
    c.expect("adamw params", &pd, &pw, e);
    c.expect("adamw m", &md, &mw, e);
    c.expect("adamw v", &vd, &vw, e);
    let rounded: Vec<f32> = if c.g.dtype == Dtype::Bf16 { pw.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect() } else { pw.clone() };
    c.expect("adamw weight copy", &copy, &rounded, 0.0);
    c.floor = floor;
    let partial = c.stats(8);
    c.g.launch("sum_squares_partial", Dims { grid: (8, 1, 1), block: (128, 1, 1), shared: 0 }, &[&partial.arg(), &gd.arg(), &(n as i64)]);
    let got: f64 = c.down(&partial).iter().map(|&x| x as f64).sum();
    let want: f64 = held.iter().map(|&x| (x as f64) * (x as f64)).sum();
    assert!(((got - want) / want).abs() < 1e-5, "sum of squares {got} vs {want}");
    c.results.push((format!("sum_squares_partial ({:?})", c.g.dtype), ((got - want) / want).abs()));
    // The norm and clipping factor on the device, in the host's f64 arithmetic: the
    // partials in order, then two "ranks'" sums in order, then clip_factor's rule.
    let one = Dims { grid: (1, 1, 1), block: (32, 1, 1), shared: 0 };
    let scalars = c.g.zeros_as(6, Dtype::F32);
    let (sumsq, norm, clip_at) = (scalars.slice(0..2).arg(), scalars.slice(2..4).arg(), scalars.slice(4..5).arg());
    let halves = |x: f64| [f32::from_bits(x.to_bits() as u32), f32::from_bits((x.to_bits() >> 32) as u32)];
    let f64_at = |c: &Check, i: usize| {
        let h = c.down(&scalars);
        f64::from_bits(h[i].to_bits() as u64 | ((h[i + 1].to_bits() as u64) << 32))
    };
    c.g.launch("norm_total", one, &[&sumsq, &partial.arg(), &8i64]);
    let local: f64 = c.down(&partial).iter().map(|&x| x as f64).sum();
    assert_eq!(f64_at(c, 0), local, "the partials' f64 sum");
    let two: Vec<f32> = [local, 2.5].into_iter().flat_map(halves).collect();
    let gathered = c.g.upload(&two);
    c.g.launch("norm_ranks", one, &[&sumsq, &gathered.arg(), &2i64]);
    for max_norm in [0.0f64, 0.1, 1e3] {
        c.g.launch("norm_clip", one, &[&clip_at, &norm, &sumsq, &max_norm]);
        let want_norm = (local + 2.5).sqrt();
        assert_eq!(f64_at(c, 2), want_norm);
        let want = if max_norm > 0.0 && want_norm > max_norm { (max_norm / (want_norm + 1e-6)) as f32 } else { 1.0 };
        assert_eq!(c.down(&scalars)[4], want, "clip factor for max_norm {max_norm}");
    }
    // A non-finite norm: the factor is NaN and AdamW leaves everything as it was.
    let infd = c.g.upload(&halves(f64::INFINITY));
    c.g.launch("norm_ranks", one, &[&sumsq, &infd.arg(), &1i64]);
    c.g.launch("norm_clip", one, &[&clip_at, &norm, &sumsq, &1.0f64]);
    assert!(c.down(&scalars)[4].is_nan() && f64_at(c, 2).is_infinite());
    let before = (c.down(&pd), c.down(&md));
    c.g.launch("adamw", dims, &[&pd.arg(), &copy.arg(), &gd.arg(), &md.arg(), &vd.arg(), &(n as i64), &clip_at, &st, &b1, &b2, &eps, &(1.0 - lr * wd), &bc2]);
    assert_eq!((c.down(&pd), c.down(&md)), before, "a step with a non-finite norm updates nothing");
}

fn every_kernel(g: &Cuda) -> Vec<(String, f64)> {
    let floor = if g.dtype == Dtype::Bf16 { 2e-2 } else { 0.0 };
    let mut c = Check { g, results: Vec::new(), seed: 11, floor };
    elementwise(&mut c);
    linear(&mut c);
    norms(&mut c);
    embedding(&mut c);
    attention(&mut c);
    xent(&mut c);
    optimizer(&mut c);
    c.results
}

#[test]
fn every_kernel_on_the_emulated_device_matches_the_cpu_kernel() {
    let r = every_kernel(&Cuda::emulated(0));
    assert!(r.len() > 50, "{} checks", r.len());
}

#[test]
fn every_bf16_kernel_on_the_emulated_device_matches_the_cpu_kernel() {
    let r = every_kernel(&Cuda::emulated(0).with_dtype(Dtype::Bf16));
    assert!(r.len() > 50, "{} checks", r.len());
    // bf16 is not f32 by another name: its rounding shows in the results.
    let worst = r.iter().map(|(_, e)| *e).fold(0.0, f64::max);
    assert!(worst > 1e-4, "every bf16 result within {worst:e} of f32: is the bf16 build running?");
}

#[test]
fn every_kernel_on_the_gpu_matches_the_cpu_kernel() {
    if let Some(why) = unavailable(0) {
        eprintln!("SKIPPED: no GPU check here: {why}");
        return;
    }
    let gpu = Cuda::new(0).expect("the CUDA backend on GPU 0");
    let mut r = every_kernel(&gpu);
    r.extend(every_kernel(&gpu.with_dtype(Dtype::Bf16)));
    if let Ok(path) = std::env::var("HYPERION_GPU_CHECK_OUT") {
        let obj: serde_json::Map<String, serde_json::Value> = r.iter().map(|(k, e)| (k.clone(), serde_json::json!(e))).collect();
        std::fs::write(&path, serde_json::to_string_pretty(&obj).unwrap()).expect("writing the check's JSON");
    }
}

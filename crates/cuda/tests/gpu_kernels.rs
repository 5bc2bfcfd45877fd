//! Every CUDA kernel against the CPU kernel on random inputs, forward and backward
//! (f32: relative 1e-5 on the whole output). Needs a GPU: skips, saying so, without
//! one. `scripts/gpu-check.sh` runs this binary on the GPU machine; with
//! `HYPERION_GPU_CHECK_OUT=FILE` each check's worst error is written there as JSON.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use cuda_kernels::gpu::{unavailable, Gpu};

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

fn grid(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (n.div_ceil(256).clamp(1, 4096) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn rows_cfg(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

struct Check<'g> {
    g: &'g Gpu,
    results: Vec<(String, f64)>,
}

impl Check<'_> {
    fn up(&self, v: &[f32]) -> CudaSlice<f32> {
        self.g.stream.clone_htod(v).expect("copy to the device")
    }
    fn up_u32(&self, v: &[u32]) -> CudaSlice<u32> {
        self.g.stream.clone_htod(v).expect("copy to the device")
    }
    fn down(&self, d: &CudaSlice<f32>) -> Vec<f32> {
        self.g.stream.clone_dtoh(d).expect("copy to the host")
    }
    fn expect(&mut self, what: &str, got: &[f32], want: &[f32], tol: f64) {
        let e = rel(got, want);
        self.results.push((what.to_string(), e));
        assert!(e <= tol, "{what}: GPU vs CPU relative error {e:e} > {tol:e}");
    }
}

#[test]
fn every_kernel_matches_the_cpu_kernel() {
    if let Some(why) = unavailable(0) {
        eprintln!("SKIPPED: no GPU check here: {why}");
        return;
    }
    let g = Gpu::new(0).expect("a GPU with every kernel loaded");
    let mut c = Check { g: &g, results: Vec::new() };
    let (rows, ch, f) = (96usize, 200usize, 160usize);
    let n = rows * ch;
    let s = &g.stream;
    let x = rand_vec(n, 1, 2.0);
    let w = rand_vec(ch, 2, 1.0);
    let bias = rand_vec(ch, 3, 0.5);
    let dout = rand_vec(n, 4, 1.0);

    // GELU forward and backward.
    let (dx, dd) = (c.up(&x), c.up(&dout));
    let mut out = s.alloc_zeros::<f32>(n).unwrap();
    unsafe { s.launch_builder(g.f("gelu_forward")).arg(&mut out).arg(&dx).arg(&(n as i64)).launch(grid(n)) }.unwrap();
    let mut want = vec![0.0; n];
    kernels::gelu_forward(&mut want, &x);
    c.expect("gelu_forward", &c.down(&out), &want, 1e-5);
    let start = rand_vec(n, 5, 1.0);
    let mut dh = c.up(&start);
    unsafe { s.launch_builder(g.f("gelu_backward")).arg(&mut dh).arg(&dd).arg(&dx).arg(&(n as i64)).launch(grid(n)) }.unwrap();
    let mut want = start.clone();
    kernels::gelu_backward(&mut want, &x, &dout);
    c.expect("gelu_backward", &c.down(&dh), &want, 1e-5);

    // SwiGLU on packed (rows, 2f).
    let h = rand_vec(rows * 2 * f, 6, 2.0);
    let dy = rand_vec(rows * f, 7, 1.0);
    let (hd, dyd) = (c.up(&h), c.up(&dy));
    let mut o = s.alloc_zeros::<f32>(rows * f).unwrap();
    unsafe { s.launch_builder(g.f("swiglu_forward")).arg(&mut o).arg(&hd).arg(&(rows as i64)).arg(&(f as i64)).launch(grid(rows * f)) }.unwrap();
    let mut want = vec![0.0; rows * f];
    kernels::swiglu_forward(&mut want, &h, rows, f);
    c.expect("swiglu_forward", &c.down(&o), &want, 1e-5);
    let mut dgu = s.alloc_zeros::<f32>(rows * 2 * f).unwrap();
    unsafe { s.launch_builder(g.f("swiglu_backward")).arg(&mut dgu).arg(&dyd).arg(&hd).arg(&(rows as i64)).arg(&(f as i64)).launch(grid(rows * f)) }
        .unwrap();
    let mut want = vec![0.0; rows * 2 * f];
    kernels::swiglu_backward(&mut want, &dy, &h, rows, f);
    c.expect("swiglu_backward", &c.down(&dgu), &want, 1e-5);

    // LayerNorm forward and backward (weight and bias gradients through column sums).
    let (wd, bd) = (c.up(&w), c.up(&bias));
    let (mut y, mut mean, mut rstd) = (s.alloc_zeros::<f32>(n).unwrap(), s.alloc_zeros::<f32>(rows).unwrap(), s.alloc_zeros::<f32>(rows).unwrap());
    let eps = 1e-5f32;
    unsafe {
        s.launch_builder(g.f("layernorm_forward"))
            .arg(&mut y)
            .arg(&mut mean)
            .arg(&mut rstd)
            .arg(&dx)
            .arg(&wd)
            .arg(&bd)
            .arg(&(rows as i64))
            .arg(&(ch as i64))
            .arg(&eps)
            .launch(rows_cfg(rows))
    }
    .unwrap();
    let (mut wy, mut wm, mut wr) = (vec![0.0; n], vec![0.0; rows], vec![0.0; rows]);
    kernels::layernorm_forward_eps(&mut wy, &mut wm, &mut wr, &x, &w, Some(&bias), rows, ch, eps);
    c.expect("layernorm_forward", &c.down(&y), &wy, 1e-5);
    c.expect("layernorm_forward rstd", &c.down(&rstd), &wr, 1e-5);
    let mut ddx = c.up(&start);
    let (mut pw, mut pb) = (s.alloc_zeros::<f32>(n).unwrap(), s.alloc_zeros::<f32>(n).unwrap());
    unsafe {
        s.launch_builder(g.f("layernorm_backward"))
            .arg(&mut ddx)
            .arg(&mut pw)
            .arg(&mut pb)
            .arg(&dd)
            .arg(&dx)
            .arg(&wd)
            .arg(&mean)
            .arg(&rstd)
            .arg(&(rows as i64))
            .arg(&(ch as i64))
            .launch(rows_cfg(rows))
    }
    .unwrap();
    let (w0, b0) = (rand_vec(ch, 8, 1.0), rand_vec(ch, 9, 1.0));
    let (mut dwd, mut dbd) = (c.up(&w0), c.up(&b0));
    for (acc, part) in [(&mut dwd, &pw), (&mut dbd, &pb)] {
        unsafe { s.launch_builder(g.f("column_sum_add")).arg(acc).arg(part).arg(&(rows as i64)).arg(&(ch as i64)).launch(grid(ch)) }.unwrap();
    }
    let (mut wdx, mut wdw, mut wdb) = (start.clone(), w0.clone(), b0.clone());
    kernels::layernorm_backward(&mut wdx, &mut wdw, Some(&mut wdb), &dout, &x, &w, &wm, &wr, rows, ch);
    c.expect("layernorm_backward dx", &c.down(&ddx), &wdx, 1e-5);
    c.expect("layernorm_backward dw", &c.down(&dwd), &wdw, 1e-5);
    c.expect("layernorm_backward db", &c.down(&dbd), &wdb, 1e-5);

    // RMSNorm forward and backward.
    let mut y = s.alloc_zeros::<f32>(n).unwrap();
    unsafe {
        s.launch_builder(g.f("rmsnorm_forward"))
            .arg(&mut y)
            .arg(&mut rstd)
            .arg(&dx)
            .arg(&wd)
            .arg(&(rows as i64))
            .arg(&(ch as i64))
            .arg(&eps)
            .launch(rows_cfg(rows))
    }
    .unwrap();
    let (mut wy, mut wr) = (vec![0.0; n], vec![0.0; rows]);
    kernels::rmsnorm_forward(&mut wy, &mut wr, &x, &w, rows, ch, eps);
    c.expect("rmsnorm_forward", &c.down(&y), &wy, 1e-5);
    let mut ddx = c.up(&start);
    let mut dwd = c.up(&w0);
    unsafe {
        s.launch_builder(g.f("rmsnorm_backward"))
            .arg(&mut ddx)
            .arg(&mut pw)
            .arg(&dd)
            .arg(&dx)
            .arg(&wd)
            .arg(&rstd)
            .arg(&(rows as i64))
            .arg(&(ch as i64))
            .launch(rows_cfg(rows))
    }
    .unwrap();
    unsafe { s.launch_builder(g.f("column_sum_add")).arg(&mut dwd).arg(&pw).arg(&(rows as i64)).arg(&(ch as i64)).launch(grid(ch)) }.unwrap();
    let (mut wdx, mut wdw) = (start.clone(), w0.clone());
    kernels::rmsnorm_backward(&mut wdx, &mut wdw, &dout, &x, &w, &wr, rows, ch);
    c.expect("rmsnorm_backward dx", &c.down(&ddx), &wdx, 1e-5);
    c.expect("rmsnorm_backward dw", &c.down(&dwd), &wdw, 1e-5);

    // Fused softmax cross-entropy forward and backward.
    let v = 1000usize;
    let logits = rand_vec(rows * v, 10, 4.0);
    let targets: Vec<u32> = (0..rows).map(|r| ((r * 7919) % v) as u32).collect();
    let (mut ld, td) = (c.up(&logits), c.up_u32(&targets));
    let mut losses = s.alloc_zeros::<f32>(rows).unwrap();
    let scale = 1.0f32 / rows as f32;
    unsafe {
        s.launch_builder(g.f("xent_forward_backward"))
            .arg(&mut ld)
            .arg(&mut losses)
            .arg(&td)
            .arg(&(rows as i64))
            .arg(&(v as i64))
            .arg(&scale)
            .arg(&1i32)
            .launch(rows_cfg(rows))
    }
    .unwrap();
    let (mut wl, mut wloss) = (logits.clone(), vec![0.0; rows]);
    kernels::softmax_xent_forward_backward(&mut wl, &mut wloss, &targets, rows, v, scale);
    c.expect("xent losses", &c.down(&losses), &wloss, 1e-5);
    c.expect("xent gradient", &c.down(&ld), &wl, 1e-5);

    // AdamW at step 3 with weight decay.
    let p0 = rand_vec(n, 11, 1.0);
    let (m0, v0) = (rand_vec(n, 12, 0.1), rand_vec(n, 13, 0.1).iter().map(|x| x.abs()).collect::<Vec<f32>>());
    let (lr, b1, b2, eps_a, wdk, t) = (1e-3f32, 0.9f32, 0.95f32, 1e-8f32, 0.1f32, 3i32);
    let step = (lr as f64 / (1.0 - (b1 as f64).powi(t))) as f32;
    let bc2_sqrt = (1.0 - (b2 as f64).powi(t)).sqrt() as f32;
    let decay = 1.0 - lr * wdk;
    let (mut pd, mut md, mut vd) = (c.up(&p0), c.up(&m0), c.up(&v0));
    unsafe {
        s.launch_builder(g.f("adamw"))
            .arg(&mut pd)
            .arg(&dd)
            .arg(&mut md)
            .arg(&mut vd)
            .arg(&(n as i64))
            .arg(&step)
            .arg(&b1)
            .arg(&b2)
            .arg(&eps_a)
            .arg(&decay)
            .arg(&bc2_sqrt)
            .launch(grid(n))
    }
    .unwrap();
    let (mut wp, mut wm, mut wv) = (p0.clone(), m0.clone(), v0.clone());
    kernels::adamw_step(&mut wp, &dout, &mut wm, &mut wv, lr, b1, b2, eps_a, wdk, t as u64);
    c.expect("adamw params", &c.down(&pd), &wp, 1e-5);
    c.expect("adamw m", &c.down(&md), &wm, 1e-5);
    c.expect("adamw v", &c.down(&vd), &wv, 1e-5);

    if let Ok(path) = std::env::var("HYPERION_GPU_CHECK_OUT") {
        let rows: Vec<serde_json::Value> = c.results.iter().map(|(k, e)| serde_json::json!({ "check": k, "relative_error": e })).collect();
        let doc = serde_json::json!({ "arch": g.arch, "checks": rows });
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    }
}

//! Micro-benchmark of the kernels at the shapes of the two reference models
//! (bench/pytorch_reference.py presets):
//! shakespeare-char (L6, NH6, C384, T256, V65, no bias) and gpt2-mini (L4, NH4, C256,
//! T128, V50257, bias), batch 8. Prints GEMM GFLOP/s per shape, milliseconds per
//! kernel (best of several runs), and a per-step estimate summed over the layers.
//!
//! Then the Llama kernels at the llama-mini preset's shapes (L4, NH4, NKV2, HD64, C256,
//! F768, T128, batch 8): RMSNorm, RoPE, SwiGLU, GQA attention (and MHA at the same
//! shape), nn.Linear-layout GEMMs against the Conv1D ones.
//!
//! cargo run --release -p hyperion-kernels --example kernel_bench [-- --reps N --threads N]

use std::time::Instant;

use kernels::*;

struct Model {
    name: &'static str,
    layers: usize,
    nh: usize,
    c: usize,
    t: usize,
    v: usize,
    bias: bool,
}

/// Best (minimum) wall time of `reps` runs of `f`, in milliseconds, after one warm-up
/// run. The minimum, not the median: on a shared machine other processes only ever
/// add time, so the fastest run is the best estimate of the kernel's own cost.
fn time_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn filled(n: usize, seed: u32) -> Vec<f32> {
    // Cheap deterministic pseudo-random values in [-1, 1).
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// Times the three GEMMs of a linear layer (rows, in) @ (in, out): forward, dx, dw.
/// Returns the total milliseconds.
fn bench_linear(reps: usize, label: &str, rows: usize, i: usize, o: usize, total: &mut f64, mult: f64) {
    let x = filled(rows * i, 1);
    let w = filled(i * o, 2);
    let dy = filled(rows * o, 3);
    let (mut y, mut dx, mut dw) = (vec![0.0; rows * o], vec![0.0; rows * i], vec![0.0; i * o]);
    let flop = 2.0 * (rows * i * o) as f64;
    let f = time_ms(reps, || linear_forward(&mut y, &x, &w, None, rows, i, o));
    let bx = time_ms(reps, || matmul(&mut dx, &dy, false, &w, true, rows, i, o, true));
    let bw = time_ms(reps, || matmul(&mut dw, &x, true, &dy, false, i, o, rows, true));
    let g = |ms: f64| flop / ms / 1e6;
    println!(
        "  gemm {label:<10} ({rows}x{i} @ {i}x{o}) fwd {f:7.2} ms {:6.1} GF/s | dx {bx:7.2} ms {:6.1} GF/s | dw {bw:7.2} ms {:6.1} GF/s",
        g(f),
        g(bx),
        g(bw)
    );
    *total += (f + bx + bw) * mult;
}

fn bench_model(m: &Model, b: usize, reps: usize) {
    let (c, t, nh, v) = (m.c, m.t, m.nh, m.v);
    let rows = b * t;
    let l = m.layers as f64;
    println!("{} (L{} NH{} C{} T{} V{} B{} bias={})", m.name, m.layers, nh, c, t, v, b, m.bias);
    let mut step = 0.0f64;
    bench_linear(reps, "c_attn", rows, c, 3 * c, &mut step, l);
    bench_linear(reps, "attn.proj", rows, c, c, &mut step, l);
    bench_linear(reps, "c_fc", rows, c, 4 * c, &mut step, l);
    bench_linear(reps, "mlp.proj", rows, 4 * c, c, &mut step, l);
    // LM head tied to wte (V, C): logits = x @ wte^T; dx = dlogits @ wte; dwte += dlogits^T @ x.
    {
        let x = filled(rows * c, 4);
        let wte = filled(v * c, 5);
        let dl = filled(rows * v, 6);
        let (mut lg, mut dx, mut dw) = (vec![0.0; rows * v], vec![0.0; rows * c], vec![0.0; v * c]);
        let flop = 2.0 * (rows * c * v) as f64;
        let f = time_ms(reps, || matmul(&mut lg, &x, false, &wte, true, rows, v, c, false));
        let bx = time_ms(reps, || matmul(&mut dx, &dl, false, &wte, false, rows, c, v, true));
        let bw = time_ms(reps, || matmul(&mut dw, &dl, true, &x, false, v, c, rows, true));
        let g = |ms: f64| flop / ms / 1e6;
        println!(
            "  gemm lm_head    ({rows}x{c} @ {c}x{v}) fwd {f:7.2} ms {:6.1} GF/s | dx {bx:7.2} ms {:6.1} GF/s | dw {bw:7.2} ms {:6.1} GF/s",
            g(f),
            g(bx),
            g(bw)
        );
        step += f + bx + bw;
        // The model crate runs the head in chunks of 2^24 / V rows (logits scratch of
        // 64 MiB); time that pattern too, as it re-reads and re-writes dwte per chunk.
        let chunk = ((1usize << 24) / v).clamp(1, rows);
        if chunk < rows {
            let t_chunked = time_ms(reps, || {
                for r0 in (0..rows).step_by(chunk) {
                    let r = chunk.min(rows - r0);
                    let (xs, lgs) = (&x[r0 * c..(r0 + r) * c], &mut lg[..r * v]);
                    matmul(lgs, xs, false, &wte, true, r, v, c, false);
                    matmul(&mut dx[r0 * c..(r0 + r) * c], lgs, false, &wte, false, r, c, v, true);
                    matmul(&mut dw, lgs, true, xs, false, v, c, r, true);
                }
            });
            println!(
                "  lm_head in chunks of {chunk} rows (fwd+dx+dw): {t_chunked:7.2} ms vs {:7.2} ms unchunked",
                f + bx + bw
            );
        }
        let targets: Vec<u32> = (0..rows).map(|r| (r * 7919 % v) as u32).collect();
        let mut losses = vec![0.0; rows];
        let base = lg.clone();
        let xe = time_ms(reps, || {
            lg.copy_from_slice(&base);
            softmax_xent_forward_backward(&mut lg, &mut losses, &targets, rows, v, 1.0 / rows as f32);
        });
        let cp = time_ms(reps, || lg.copy_from_slice(&base));
        println!("  softmax_xent fwd+bwd ({rows}x{v}): {:7.2} ms (copy of the logits excluded)", xe - cp);
        step += xe - cp;
    }
    let mut ms = |name: &str, per_layer: f64, t_ms: f64| {
        println!("  {name:<28} {t_ms:7.3} ms");
        step += t_ms * per_layer;
    };
    // LayerNorm: 2 per layer + ln_f.
    let x = filled(rows * c, 7);
    let w = filled(c, 8);
    let bias_v = filled(c, 9);
    let bias = if m.bias { Some(bias_v.as_slice()) } else { None };
    let (mut o, mut mu, mut rs) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
    ms("layernorm_forward", 2.0 * l + 1.0, time_ms(reps, || layernorm_forward(&mut o, &mut mu, &mut rs, &x, &w, bias, rows, c)));
    let (mut dx, mut dw, mut db) = (vec![0.0; rows * c], vec![0.0; c], vec![0.0; c]);
    ms(
        "layernorm_backward",
        2.0 * l + 1.0,
        time_ms(reps, || layernorm_backward(&mut dx, &mut dw, if m.bias { Some(&mut db) } else { None }, &o, &x, &w, &mu, &rs, rows, c)),
    );
    // GELU on (rows, 4C).
    let h = filled(rows * 4 * c, 10);
    let mut g = vec![0.0; rows * 4 * c];
    ms("gelu_forward", l, time_ms(reps, || gelu_forward(&mut g, &h)));
    let mut dg = vec![0.0; rows * 4 * c];
    ms("gelu_backward", l, time_ms(reps, || gelu_backward(&mut dg, &h, &g)));
    // Attention.
    let qkv = filled(rows * 3 * c, 11);
    let mut att = vec![0.0; rows * c];
    let mut saved = vec![0.0; attention_saved_len(b, t, nh)];
    ms("attention_forward", l, time_ms(reps, || attention_forward(&mut att, &mut saved, &qkv, b, t, c, nh)));
    let mut dqkv = vec![0.0; rows * 3 * c];
    let dout = filled(rows * c, 12);
    let att_b = time_ms(reps, || attention_backward(&mut dqkv, &dout, &qkv, &att, &saved, b, t, c, nh));
    ms("attention_backward", l, att_b);
    // What a flash-style kernel (saving only the row logsumexp) would pay on top in the
    // backward: recomputing S = QK^T and its exponentials, i.e. roughly the forward
    // minus its P V product (half the forward FLOPs). Printed for the design choice.
    let att_f = time_ms(reps, || attention_forward(&mut att, &mut saved, &qkv, b, t, c, nh));
    println!(
        "  (flash-style backward would be ~{:.3} ms: + recompute of QK^T and exp ~{:.3} ms; saved P costs {:.1} MiB/layer)",
        att_b + 0.5 * att_f,
        0.5 * att_f,
        (attention_saved_len(b, t, nh) * 4) as f64 / (1 << 20) as f64
    );
    // Residual adds: 2 per layer forward, 2 per layer backward.
    let mut r = vec![0.0; rows * c];
    ms("add (residual)", 4.0 * l, time_ms(reps, || add(&mut r, &x, &o)));
    // Embedding.
    let tokens: Vec<u32> = (0..rows).map(|i| (i * 31 % v) as u32).collect();
    let wte = filled(v * c, 13);
    let wpe = filled(t * c, 14);
    ms("embedding_forward", 1.0, time_ms(reps, || embedding_forward(&mut r, &tokens, &wte, &wpe, b, t, c)));
    let (mut dwte, mut dwpe) = (vec![0.0; v * c], vec![0.0; t * c]);
    ms("embedding_backward", 1.0, time_ms(reps, || embedding_backward(&mut dwte, &mut dwpe, &x, &tokens, b, t, c)));
    // Optimizer over all parameters (about 12 L C^2 + V C + T C).
    let n_params = 12 * m.layers * c * c + v * c + t * c;
    let mut p = filled(n_params, 15);
    let gr = filled(n_params, 16);
    let (mut m1, mut v1) = (vec![0.0; n_params], vec![0.0; n_params]);
    let mut step_no = 0u64;
    ms(
        &format!("adamw_step ({:.1}M params)", n_params as f64 / 1e6),
        1.0,
        time_ms(reps, || {
            step_no += 1;
            adamw_step(&mut p, &gr, &mut m1, &mut v1, 1e-3, 0.9, 0.99, 1e-8, 0.1, step_no)
        }),
    );
    ms("sum_squares (all grads)", 1.0, time_ms(reps, || {
        std::hint::black_box(sum_squares(&gr));
    }));
    println!(
        "  => kernel-sum estimate of one training step: {step:.1} ms = {:.0} tokens/s\n",
        rows as f64 / step * 1e3
    );
}

/// Llama kernels at llama-mini's shapes (per layer, ms per call).
fn bench_llama(b: usize, reps: usize) {
    let (nh, nkv, hd, c, f, t) = (4, 2, 64, 256, 768, 128);
    let rows = b * t;
    println!("llama-mini kernels (NH{nh} NKV{nkv} HD{hd} C{c} F{f} T{t} B{b})");
    let ms = |name: &str, t_ms: f64| println!("  {name:<28} {t_ms:7.3} ms");
    let x = filled(rows * c, 20);
    let w = filled(c, 21);
    let (mut o, mut rs) = (vec![0.0; rows * c], vec![0.0; rows]);
    ms("rmsnorm_forward", time_ms(reps, || rmsnorm_forward(&mut o, &mut rs, &x, &w, rows, c, 1e-5)));
    let (mut dx, mut dw) = (vec![0.0; rows * c], vec![0.0; c]);
    ms("rmsnorm_backward", time_ms(reps, || rmsnorm_backward(&mut dx, &mut dw, &o, &x, &w, &rs, rows, c)));
    let table = RopeTable::new(t, hd, 10_000.0);
    let width = (nh + 2 * nkv) * hd;
    let mut qkv = filled(rows * width, 22);
    ms("rope_forward (q and k)", time_ms(reps, || rope_forward(&mut qkv, &table, b, t, nh, nkv, hd)));
    ms("rope_backward (q and k)", time_ms(reps, || rope_backward(&mut qkv, &table, b, t, nh, nkv, hd)));
    let h = filled(rows * 2 * f, 23);
    let mut g = vec![0.0; rows * f];
    ms("swiglu_forward", time_ms(reps, || swiglu_forward(&mut g, &h, rows, f)));
    let mut dh = vec![0.0; rows * 2 * f];
    ms("swiglu_backward", time_ms(reps, || swiglu_backward(&mut dh, &g, &h, rows, f)));
    for kv in [nkv, nh] {
        let qkv = filled(rows * (nh + 2 * kv) * hd, 24);
        let mut att = vec![0.0; rows * nh * hd];
        let mut saved = vec![0.0; attention_saved_len(b, t, nh)];
        ms(
            &format!("attention_gqa_forward nkv={kv}"),
            time_ms(reps, || attention_gqa_forward(&mut att, &mut saved, &qkv, b, t, nh, kv, hd)),
        );
        let mut dqkv = vec![0.0; qkv.len()];
        let dout = filled(rows * nh * hd, 25);
        ms(
            &format!("attention_gqa_backward nkv={kv}"),
            time_ms(reps, || attention_gqa_backward(&mut dqkv, &dout, &qkv, &att, &saved, b, t, nh, kv, hd)),
        );
    }
    // gate_up projection (rows, C) -> (rows, 2F): nn.Linear (out, in) vs Conv1D (in, out).
    let wl = filled(2 * f * c, 26);
    let dy = filled(rows * 2 * f, 27);
    let mut y = vec![0.0; rows * 2 * f];
    let (mut ldx, mut ldw) = (vec![0.0; rows * c], vec![0.0; 2 * f * c]);
    let t_f = time_ms(reps, || linear_t_forward(&mut y, &x, &wl, None, rows, c, 2 * f));
    let t_b = time_ms(reps, || linear_t_backward(Some(&mut ldx), &mut ldw, None, &dy, &x, &wl, rows, c, 2 * f));
    let c_f = time_ms(reps, || linear_forward(&mut y, &x, &wl, None, rows, c, 2 * f));
    let c_b = time_ms(reps, || linear_backward(Some(&mut ldx), &mut ldw, None, &dy, &x, &wl, rows, c, 2 * f));
    println!("  gate_up {rows}x{c} -> {}: linear_t fwd {t_f:.3} bwd {t_b:.3} ms | linear fwd {c_f:.3} bwd {c_b:.3} ms", 2 * f);
    let tokens: Vec<u32> = (0..rows).map(|i| (i * 31 % 32000) as u32).collect();
    let wte = filled(32000 * c, 28);
    let mut e = vec![0.0; rows * c];
    ms("token_embedding_forward", time_ms(reps, || token_embedding_forward(&mut e, &tokens, &wte, b, t, c)));
    let mut dwte = vec![0.0; 32000 * c];
    ms("token_embedding_backward", time_ms(reps, || token_embedding_backward(&mut dwte, &x, &tokens, b, t, c)));
}

/// Value following `--name` on the command line, parsed.
fn flag<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::args().skip_while(|a| a != name).nth(1).and_then(|s| s.parse().ok())
}

fn main() {
    let reps: usize = flag("--reps").unwrap_or(5).max(1);
    let threads: usize = flag("--threads").unwrap_or(0);
    let pool = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kernel_bench: cannot build a rayon pool of {threads} threads: {e}");
            std::process::exit(1);
        }
    };
    pool.install(|| {
        println!("threads: {}, best of {reps} runs", rayon::current_num_threads());
        let models = [
            Model { name: "shakespeare-char", layers: 6, nh: 6, c: 384, t: 256, v: 65, bias: false },
            Model { name: "gpt2-mini", layers: 4, nh: 4, c: 256, t: 128, v: 50257, bias: true },
        ];
        for m in &models {
            bench_model(m, 8, reps);
        }
        bench_llama(8, reps);
    });
}

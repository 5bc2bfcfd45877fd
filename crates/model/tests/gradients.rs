//! Whole-model gradient checks: finite differences on a tiny GPT, recompute equivalence,
//! and determinism.

use model::init::SplitMix64;
use model::{Activations, Backend, Gpt, GptConfig};

fn tiny(bias: bool) -> GptConfig {
    GptConfig { vocab_size: 13, n_layer: 2, n_head: 2, n_embd: 8, block_size: 6, bias }
}

fn batch(cfg: &GptConfig, b: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut r = SplitMix64(seed);
    let n = b * cfg.block_size;
    let v = cfg.vocab_size as u64;
    let x = (0..n).map(|_| (r.next_u64() % v) as u32).collect();
    let y = (0..n).map(|_| (r.next_u64() % v) as u32).collect();
    (x, y)
}

/// Random, non-trivial parameters (GPT-2 init makes gradients of some tensors tiny).
fn random_params(gpt: &Gpt, seed: u64) -> Vec<Vec<f32>> {
    let mut r = SplitMix64(seed);
    let mut p = gpt.zeros();
    for (b, spec) in gpt.layout.tensors() {
        let base = if spec.name.contains("ln_") && spec.name.ends_with("weight") { 1.0 } else { 0.0 };
        for x in &mut p[b][spec.range()] {
            *x = base + 0.3 * r.next_normal() as f32;
        }
    }
    p
}

fn mean_loss(gpt: &Gpt, p: &[Vec<f32>], x: &[u32], y: &[u32], b: usize) -> f64 {
    let mut acts = Activations::new(&gpt.cfg, b, gpt.cfg.block_size, false);
    gpt.forward_loss(p, &mut acts, x, y) / x.len() as f64
}

fn check_fd(bias: bool) {
    let cfg = tiny(bias);
    let gpt = Gpt::new(cfg);
    let b = 2;
    let (x, y) = batch(&cfg, b, 1);
    let mut p = random_params(&gpt, 2);
    let mut g = gpt.zeros();
    let mut acts = Activations::new(&cfg, b, cfg.block_size, false);
    let n = x.len();
    gpt.forward_backward(&p, &mut g, &mut acts, &x, &y, 1.0 / n as f32);
    let mut r = SplitMix64(3);
    let mut checked = 0;
    for (bk, spec) in gpt.layout.tensors() {
        for _ in 0..4 {
            let i = spec.offset + (r.next_u64() as usize % spec.numel());
            let orig = p[bk][i];
            let eps = 1e-2f32;
            p[bk][i] = orig + eps;
            let lp = mean_loss(&gpt, &p, &x, &y, b);
            p[bk][i] = orig - eps;
            let lm = mean_loss(&gpt, &p, &x, &y, b);
            p[bk][i] = orig;
            let fd = (lp - lm) / (2.0 * eps as f64);
            let an = g[bk][i] as f64;
            let err = (fd - an).abs() / (fd.abs() + an.abs()).max(1e-2);
            assert!(err < 2e-2, "{} [{}]: analytic {an:e} vs finite difference {fd:e}", spec.name, i - spec.offset);
            checked += 1;
        }
    }
    assert_eq!(checked, 4 * gpt.layout.tensors().count());
}

#[test]
fn gradients_match_finite_differences_with_bias() {
    check_fd(true);
}

#[test]
fn gradients_match_finite_differences_without_bias() {
    check_fd(false);
}

#[test]
fn recompute_gives_identical_gradients() {
    let cfg = tiny(true);
    let gpt = Gpt::new(cfg);
    let (x, y) = batch(&cfg, 3, 4);
    let p = random_params(&gpt, 5);
    let run = |recompute: bool| {
        let mut g = gpt.zeros();
        let mut acts = Activations::new(&cfg, 3, cfg.block_size, recompute);
        let loss = gpt.forward_backward(&p, &mut g, &mut acts, &x, &y, 0.1);
        (loss, g)
    };
    let (l0, g0) = run(false);
    let (l1, g1) = run(true);
    assert_eq!(l0.to_bits(), l1.to_bits());
    assert_eq!(g0, g1, "recompute must reproduce the stored activations exactly");
    // Selective: only the attention core runs again, into one shared buffer.
    let mut g2 = gpt.zeros();
    let mut acts = Activations::new(&cfg, 3, cfg.block_size, false).recompute_attention(&model::Cpu);
    let l2 = gpt.forward_backward(&p, &mut g2, &mut acts, &x, &y, 0.1);
    assert_eq!(l0.to_bits(), l2.to_bits());
    assert_eq!(g0, g2, "selective recompute must reproduce the stored statistics exactly");
}

#[test]
fn activation_bytes_match_the_formula() {
    for recompute in [false, true] {
        let cfg = tiny(true);
        let acts = Activations::new(&cfg, 3, 5, recompute);
        assert_eq!(acts.bytes(), Activations::expected_bytes(&cfg, 3, 5, recompute));
        // Sequence parallel over 3 ranks: the residual stream and norms on 5 of 15 rows.
        let spec = model::ModelSpec::from(cfg);
        let acts = Activations::sequence_parallel(&model::Cpu, &spec, 3, 5, recompute, 3);
        assert_eq!(acts.bytes(), Activations::expected_bytes_sp(&cfg, 3, 5, recompute, 3));
        assert!(acts.bytes() < Activations::expected_bytes(&cfg, 3, 5, recompute) || recompute);
        // Selective recomputation keeps one block's attention statistics instead of L.
        let acts = Activations::new(&cfg, 3, 5, recompute).recompute_attention(&model::Cpu);
        assert_eq!(acts.bytes(), Activations::expected_bytes_with(&cfg, 3, 5, recompute, true, 1));
        let probs = 4 * model::Cpu.attention_saved_len(3, 5, cfg.n_head);
        let layers = if recompute { 0 } else { cfg.n_layer - 1 };
        assert_eq!(Activations::expected_bytes(&cfg, 3, 5, recompute) - acts.bytes(), layers * probs);
    }
}

#[test]
fn init_is_gpt2_style_and_deterministic() {
    let gpt = Gpt::new(GptConfig { vocab_size: 500, n_layer: 4, n_head: 4, n_embd: 64, block_size: 32, bias: true });
    let a = gpt.init_params(9);
    assert_eq!(a, gpt.init_params(9));
    assert_ne!(a, gpt.init_params(10));
    let (b, t) = gpt.layout.find("transformer.h.1.mlp.c_proj.weight").unwrap();
    let xs = &a[b][t.range()];
    let std = (xs.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / xs.len() as f64).sqrt();
    let expected = 0.02 / (8f64).sqrt();
    assert!((std - expected).abs() < 0.1 * expected, "c_proj std {std} vs {expected}");
    let (b, t) = gpt.layout.find("transformer.h.0.ln_1.weight").unwrap();
    assert!(a[b][t.range()].iter().all(|&x| x == 1.0));
    // A tensor larger than one parallel init chunk holds one sequential stream.
    let big = Gpt::new(GptConfig { vocab_size: 2100, n_layer: 1, n_head: 4, n_embd: 64, block_size: 32, bias: true });
    let p = big.init_params(9);
    let (b, t) = big.layout.find("transformer.wte.weight").unwrap();
    let mut rng = model::init::SplitMix64(9 ^ model::init::name_hash("transformer.wte.weight"));
    let sequential: Vec<f32> = (0..t.range().len()).map(|_| (rng.next_normal() * 0.02) as f32).collect();
    assert!(sequential.len() > 2 * 65536);
    assert_eq!(p[b][t.range()], sequential[..]);
}

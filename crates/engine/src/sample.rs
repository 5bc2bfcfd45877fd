//! Autoregressive sampling with temperature and top-k, seeded and reproducible.

use model::init::SplitMix64;
use model::{Activations, Gpt};

pub struct SampleOptions {
    pub tokens: usize,
    /// 0 means greedy (always the most likely token).
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    pub seed: u64,
}

/// Continues `prompt` by `opts.tokens` tokens. The context is cropped to the last
/// `block_size` tokens; since attention is causal, the unused tail of the window does not
/// affect the logits that are read.
pub fn generate(gpt: &Gpt, params: &[Vec<f32>], prompt: &[u32], opts: &SampleOptions) -> Vec<u32> {
    let (t, v) = (gpt.cfg.block_size, gpt.cfg.vocab_size);
    let mut acts = Activations::new(&gpt.spec, 1, t, false);
    let mut rng = SplitMix64(opts.seed);
    let mut ctx: Vec<u32> = prompt.to_vec();
    let mut window = vec![0u32; t];
    let mut logits = vec![0.0f32; v];
    let mut probs = vec![0.0f32; v];
    let mut out = Vec::with_capacity(opts.tokens);
    for _ in 0..opts.tokens {
        let start = ctx.len().saturating_sub(t);
        let len = ctx.len() - start;
        window[..len].copy_from_slice(&ctx[start..]);
        window[len..].fill(0);
        gpt.forward_hidden(params, &mut acts, &window);
        gpt.head_logits(&params[0], &params[gpt.layout.head()], &mut acts, 0, len.max(1) - 1, &mut logits);
        let next = pick(&mut logits, &mut probs, opts, &mut rng);
        ctx.push(next);
        out.push(next);
    }
    out
}

fn pick(logits: &mut [f32], probs: &mut [f32], opts: &SampleOptions, rng: &mut SplitMix64) -> u32 {
    let argmax = logits
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best })
        .0;
    if opts.temperature <= 0.0 {
        return argmax as u32;
    }
    if opts.top_k > 0 && opts.top_k < logits.len() {
        let mut sorted: Vec<f32> = logits.to_vec();
        sorted.sort_unstable_by(|a, b| b.total_cmp(a));
        let kth = sorted[opts.top_k - 1];
        for x in logits.iter_mut() {
            if *x < kth {
                *x = f32::NEG_INFINITY;
            }
        }
    }
    kernels::softmax_row(probs, logits, opts.temperature);
    let r = rng.next_f64() as f32;
    let mut acc = 0.0f32;
    for (i, &p) in probs.iter().enumerate() {
        acc += p;
        if r < acc {
            return i as u32;
        }
    }
    argmax as u32
}

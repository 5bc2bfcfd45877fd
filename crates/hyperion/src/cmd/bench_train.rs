//! `hyperion bench train`: full training steps (forward, backward, AdamW) on random
//! tokens after a warm-up; medians of the step and of its phases.

use anyhow::Result;
use engine::{StepTimes, Trainer};

use super::common::ConfigArgs;

#[derive(clap::Args)]
pub struct BenchTrainArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Micro-batch size in sequences (overrides train.batch_size).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Vocabulary used when the preset leaves it to the data (character-level presets): the
/// size of nanoGPT's tiny-Shakespeare alphabet, so the PyTorch reference matches.
const DEFAULT_CHAR_VOCAB: usize = 65;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

pub fn run(a: BenchTrainArgs) -> Result<()> {
    if a.steps == 0 {
        anyhow::bail!("--steps must be at least 1");
    }
    let mut cfg_args = a.config.clone();
    if let Some(b) = a.batch {
        cfg_args.sets.push(format!("train.batch_size={b}"));
    }
    cfg_args.sets.push("train.grad_accum=1".into());
    cfg_args.sets.push("train.global_batch=none".into());
    let mut cfg = cfg_args.resolve()?;
    if cfg.raw.model.vocab_size.is_none() {
        cfg = cfg.with_vocab_size(DEFAULT_CHAR_VOCAB)?;
    }
    let mut t = Trainer::synthetic(cfg)?;
    let (b, tt) = (t.cfg.raw.train.batch_size, t.cfg.raw.model.block_size);
    let tokens = (b * tt) as f64;
    let mut scratch = StepTimes::default();
    for _ in 0..a.warmup {
        t.train_step(&mut scratch)?;
    }
    let (mut step, mut fwd, mut bwd, mut opt) = (vec![], vec![], vec![], vec![]);
    for _ in 0..a.steps {
        let mut times = StepTimes::default();
        let t0 = std::time::Instant::now();
        t.train_step(&mut times)?;
        step.push(t0.elapsed().as_secs_f64());
        fwd.push(times.forward);
        bwd.push(times.backward);
        opt.push(times.optimizer);
    }
    let step_s = median(&mut step);
    let tokens_per_s = tokens / step_s;
    let mfu = t.gpt.flops_per_token(tt) * tokens_per_s / t.peak_flops;
    let params = t.gpt.layout.num_params();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "tokens_per_s": tokens_per_s,
                "step_ms": step_s * 1e3,
                "forward_ms": median(&mut fwd) * 1e3,
                "backward_ms": median(&mut bwd) * 1e3,
                "optimizer_ms": median(&mut opt) * 1e3,
                "mfu": mfu,
                "params": params,
                "batch": b,
                "block": tt,
                "threads": rayon::current_num_threads(),
                "peak_flops": t.peak_flops,
                "peak_rss_mb": engine::peak_rss_bytes().map(|x| x as f64 / 1048576.0),
            })
        );
    } else {
        println!("model {:.2}M params, batch {b} x {tt} tokens, {} timed steps after {} warm-up", params as f64 / 1e6, a.steps, a.warmup);
        println!(
            "median step {:.1} ms (forward {:.1}, backward {:.1}, optimizer {:.1})",
            step_s * 1e3,
            median(&mut fwd) * 1e3,
            median(&mut bwd) * 1e3,
            median(&mut opt) * 1e3
        );
        println!("{tokens_per_s:.0} tokens/s, MFU {:.1}% of {:.1} GFLOP/s", 100.0 * mfu, t.peak_flops / 1e9);
    }
    Ok(())
}

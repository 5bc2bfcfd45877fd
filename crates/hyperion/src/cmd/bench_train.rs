//! `hyperion bench train`: full training steps (forward, backward, AdamW) on random
//! tokens after a warm-up, on one rank or on `--workers N` data-parallel threads at the
//! same global batch; medians of the step and of its phases.

use std::time::{Duration, Instant};

use anyhow::Result;
use engine::{Rank, StepTimes, Trainer};

use super::common::ConfigArgs;

#[derive(clap::Args)]
pub struct BenchTrainArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Global batch in sequences (default: train.batch_size); split evenly over the workers.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Data-parallel ranks as threads (the cores are shared out among them).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Micro-batches per step (train.grad_accum; what a pipeline step carries): each
    /// worker's share of the batch is split into this many.
    #[arg(long, default_value_t = 1)]
    pub micro_batches: usize,
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
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Per-step samples of one rank.
#[derive(Default)]
struct Samples {
    step: Vec<f64>,
    fwd: Vec<f64>,
    bwd: Vec<f64>,
    opt: Vec<f64>,
    comm: Vec<f64>,
    /// Waiting for the neighbouring pipeline stages.
    wait: Vec<f64>,
}

pub fn run(a: BenchTrainArgs) -> Result<()> {
    if a.steps == 0 || a.workers == 0 {
        anyhow::bail!("--steps and --workers must be at least 1");
    }
    let mut cfg_args = a.config.clone();
    let global = match a.batch {
        Some(b) => b,
        None => cfg_args.resolve()?.raw.train.batch_size,
    };
    if a.micro_batches == 0 || global % (a.workers * a.micro_batches) != 0 {
        anyhow::bail!("--batch {global} does not split evenly over --workers {} x --micro-batches {}", a.workers, a.micro_batches);
    }
    cfg_args.sets.extend([
        format!("train.batch_size={}", global / (a.workers * a.micro_batches)),
        format!("train.grad_accum={}", a.micro_batches),
        "train.global_batch=none".into(),
        format!("parallel.dp={}", a.workers),
    ]);
    let mut cfg = cfg_args.resolve()?;
    if cfg.raw.model.vocab_size.is_none() {
        cfg = cfg.with_vocab_size(DEFAULT_CHAR_VOCAB)?;
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    // With parallel.tp = T and pp = P, each of the `workers` data-parallel ranks is
    // T x P rank threads.
    let ranks = cfg.world_size();
    let runs = comm::run_local(ranks, Duration::from_secs(600), |c| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads((cores / ranks).max(1)).build()?;
        pool.install(|| -> Result<(Samples, Trainer)> {
            let mut t = Trainer::synthetic(cfg.clone(), Rank::for_config(&c, &cfg)?)?;
            let mut scratch = StepTimes::default();
            for _ in 0..a.warmup {
                t.train_step(&mut scratch)?;
            }
            let mut s = Samples::default();
            for _ in 0..a.steps {
                let mut times = StepTimes::default();
                let t0 = Instant::now();
                t.train_step(&mut times)?;
                s.step.push(t0.elapsed().as_secs_f64());
                s.fwd.push(times.forward);
                s.bwd.push(times.backward);
                s.opt.push(times.optimizer);
                s.comm.push(times.comm);
                s.wait.push(times.pipe_wait);
            }
            Ok((s, t))
        })
    })
    .map_err(|e| anyhow::anyhow!("benchmark failed: {e}"))?;
    // Each rank's share of the step spent waiting for its pipeline neighbours, and its
    // median wait and computation (forward + backward) per step.
    let idle: Vec<f64> = runs.iter().map(|(s, _)| s.wait.iter().sum::<f64>() / s.step.iter().sum::<f64>()).collect();
    let per_rank: Vec<serde_json::Value> = runs
        .iter()
        .map(|(s, _)| {
            let mut compute: Vec<f64> = s.fwd.iter().zip(&s.bwd).map(|(f, b)| f + b).collect();
            serde_json::json!({ "pipe_wait_ms": median(&mut s.wait.clone()) * 1e3, "compute_ms": median(&mut compute) * 1e3 })
        })
        .collect();
    let (mut s, t) = runs.into_iter().next().expect("rank 0");
    let tt = t.cfg.raw.model.block_size;
    let step_s = median(&mut s.step);
    let tokens_per_s = (global * tt) as f64 / step_s;
    // Each rank measured (or was given) the peak of its share of the cores.
    let mfu = t.global.flops_per_token(tt) * tokens_per_s / (t.peak_flops * ranks as f64);
    let params = t.gpt.layout.num_params();
    let (fwd, bwd, opt, comm) = (median(&mut s.fwd), median(&mut s.bwd), median(&mut s.opt), median(&mut s.comm));
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "tokens_per_s": tokens_per_s,
                "step_ms": step_s * 1e3,
                "forward_ms": fwd * 1e3,
                "backward_ms": bwd * 1e3,
                "optimizer_ms": opt * 1e3,
                "comm_ms": comm * 1e3,
                "mfu": mfu,
                "params": params,
                "batch": global,
                "block": tt,
                "workers": a.workers,
                "zero": t.cfg.raw.parallel.zero,
                "recompute": format!("{:?}", t.cfg.raw.parallel.recompute).to_lowercase(),
                "threads_per_rank": (cores / ranks).max(1),
                "tp": t.cfg.raw.parallel.tp,
                "pp": t.cfg.raw.parallel.pp,
                "virtual_stages": t.cfg.raw.parallel.virtual_stages,
                "micro_batches": a.micro_batches,
                "pipe_idle": idle,
                "ranks": per_rank,
                // What the counting allocator saw rank 0 allocate for activations.
                "activation_bytes": t.measured.map(|m| m.activations),
                "activation_bytes_formula": model::Activations::expected_bytes_with(&t.gpt.spec, t.cfg.raw.train.batch_size, tt, t.acts.recompute, t.acts.selective, t.acts.sp),
                "peak_flops": t.peak_flops,
                "peak_rss_mb": engine::peak_rss_bytes().map(|x| x as f64 / 1048576.0),
            })
        );
    } else {
        println!(
            "model {:.2}M params, global batch {global} x {tt} tokens on {} worker(s), ZeRO-{}; {} timed steps after {} warm-up",
            params as f64 / 1e6,
            a.workers,
            t.cfg.raw.parallel.zero,
            a.steps,
            a.warmup
        );
        println!(
            "median step {:.1} ms (forward {:.1}, backward {:.1}, optimizer {:.1}, exposed communication {:.1})",
            step_s * 1e3,
            fwd * 1e3,
            bwd * 1e3,
            opt * 1e3,
            comm * 1e3
        );
        println!("{tokens_per_s:.0} tokens/s, MFU {:.1}% of {:.1} GFLOP/s", 100.0 * mfu, t.peak_flops / 1e9);
    }
    Ok(())
}

//! The training loop on one rank: micro-batches with gradient accumulation, global-norm
//! clipping, AdamW, evaluation, metrics and checkpoints.

use std::path::{Path, PathBuf};
use std::time::Instant;

use config::ResolvedConfig;
use data::Dataset;
use model::{Activations, Gpt, GptConfig};

use crate::error::{EngineError, Result};
use crate::metrics::{MemoryReport, MetricsLog, RunInfo, StepMetrics};
use crate::optim::{clip_factor, AdamW};
use crate::schedule::LrSchedule;

/// Called by the loop as the run advances; the CLI draws progress bars from it.
pub trait Observer {
    fn started(&mut self, _info: &RunInfo) {}
    fn step(&mut self, _m: &StepMetrics) {}
    /// A checkpoint file is durable on disk (the checkpoint is not committed yet).
    fn checkpoint_file(&mut self, _path: &Path) {}
    fn checkpoint(&mut self, _dir: &Path, _step: u64) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// Sample-index stream for evaluation, disjoint from training by seed.
const EVAL_SEED_SALT: u64 = 0x5EED_0E7A_1000_0001;

pub fn gpt_config(cfg: &ResolvedConfig) -> Result<GptConfig> {
    let m = &cfg.raw.model;
    let vocab_size = m
        .vocab_size
        .ok_or_else(|| EngineError::Invalid("model.vocab_size is unknown: the data folder's meta.json must set it".into()))?;
    Ok(GptConfig { vocab_size, n_layer: m.n_layer, n_head: m.n_head, n_embd: m.n_embd, block_size: m.block_size, bias: m.bias })
}

pub struct Trainer {
    pub cfg: ResolvedConfig,
    pub gpt: Gpt,
    /// None for benchmarks, which train on random tokens.
    pub data: Option<Dataset>,
    pub params: Vec<Vec<f32>>,
    pub grads: Vec<Vec<f32>>,
    pub exp_avg: Vec<Vec<f32>>,
    pub exp_avg_sq: Vec<Vec<f32>>,
    pub acts: Activations,
    /// Optimizer steps completed.
    pub step: u64,
    pub tokens_seen: u64,
    inputs: Vec<u32>,
    targets: Vec<u32>,
    adamw: AdamW,
    schedule: LrSchedule,
    run_dir: PathBuf,
    pub peak_flops: f64,
    pub peak_measured: bool,
}

/// Time of each phase of the last step, in seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepTimes {
    pub forward: f64,
    pub backward: f64,
    pub optimizer: f64,
}

impl Trainer {
    /// A fresh model (initialised from `train.seed`) over an opened dataset.
    pub fn new(cfg: ResolvedConfig, data: Dataset, run_dir: &Path) -> Result<Trainer> {
        let cfg = cfg.with_vocab_size(data.meta.vocab_size)?;
        data.check_block(cfg.raw.model.block_size)?;
        Self::build(cfg, Some(data), run_dir)
    }

    /// A trainer on uniformly random tokens (no data files, no evaluation), for
    /// `hyperion bench train`. `model.vocab_size` must be set.
    pub fn synthetic(cfg: ResolvedConfig) -> Result<Trainer> {
        Self::build(cfg, None, Path::new(""))
    }

    fn build(cfg: ResolvedConfig, data: Option<Dataset>, run_dir: &Path) -> Result<Trainer> {
        let gpt = Gpt::new(gpt_config(&cfg)?);
        let params = gpt.init_params(cfg.raw.train.seed);
        let (b, t) = (cfg.raw.train.batch_size, cfg.raw.model.block_size);
        let recompute = matches!(cfg.raw.parallel.recompute, config::Recompute::Full);
        let o = &cfg.raw.optim;
        let adamw = AdamW {
            beta1: o.beta1 as f32,
            beta2: o.beta2 as f32,
            eps: o.eps as f32,
            weight_decay: o.weight_decay as f32,
            decay_embeddings: o.decay_embeddings,
        };
        let schedule = LrSchedule { lr: o.lr, min_lr: o.min_lr, warmup_steps: o.warmup_steps, decay_steps: cfg.decay_steps };
        let (peak_flops, peak_measured) = match cfg.raw.log.peak_flops {
            Some(p) => (p, false),
            None => (crate::metrics::measure_peak_flops(), true),
        };
        Ok(Trainer {
            acts: Activations::new(&gpt.cfg, b, t, recompute),
            grads: gpt.zeros(),
            exp_avg: gpt.zeros(),
            exp_avg_sq: gpt.zeros(),
            params,
            gpt,
            data,
            step: 0,
            tokens_seen: 0,
            inputs: vec![0; b * t],
            targets: vec![0; b * t],
            adamw,
            schedule,
            run_dir: run_dir.to_path_buf(),
            peak_flops,
            peak_measured,
            cfg,
        })
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Sequences per optimizer step across all ranks.
    fn global_batch(&self) -> u64 {
        self.cfg.global_batch as u64
    }

    pub fn memory(&self) -> MemoryReport {
        MemoryReport::measure(self)
    }

    /// One optimizer step: `grad_accum` micro-batches, clipping, AdamW. Returns the mean
    /// training loss and the pre-clip gradient norm.
    pub fn train_step(&mut self, times: &mut StepTimes) -> Result<(f64, f64)> {
        let tc = &self.cfg.raw.train;
        let (b, t, accum) = (tc.batch_size, self.cfg.raw.model.block_size, tc.grad_accum);
        let seed = tc.seed;
        for g in &mut self.grads {
            g.fill(0.0);
        }
        // Mean over every token of the global batch.
        let grad_scale = 1.0 / (b * t * accum) as f32;
        let mut loss_sum = 0.0;
        for micro in 0..accum {
            // Global sample index of this micro-batch's first sequence: the window of a
            // sample depends on (seed, index) alone, so resume is exact.
            let first = self.step * self.global_batch() + (micro * b) as u64;
            match &self.data {
                Some(d) => d.train.fill_batch(seed, first, b, t, &mut self.inputs, &mut self.targets),
                None => random_tokens(seed, first, self.gpt.cfg.vocab_size, &mut self.inputs, &mut self.targets),
            }
            loss_sum += self.forward_backward_timed(grad_scale, times);
        }
        let loss = loss_sum / (b * t * accum) as f64;
        if !loss.is_finite() {
            return Err(EngineError::NonFinite { step: self.step + 1, value: loss });
        }
        let t0 = Instant::now();
        let norm = self.grads.iter().map(|g| kernels::sum_squares(g)).sum::<f64>().sqrt();
        let clip = clip_factor(norm, self.cfg.raw.optim.grad_clip);
        let lr = self.schedule.at(self.step) as f32;
        let layout = &self.gpt.layout;
        for i in 0..self.params.len() {
            if clip != 1.0 {
                kernels::scale(&mut self.grads[i], clip);
            }
            let n = self.params[i].len();
            self.adamw.update_range(
                layout,
                i,
                0..n,
                &mut self.params[i],
                &self.grads[i],
                &mut self.exp_avg[i],
                &mut self.exp_avg_sq[i],
                lr,
                self.step + 1,
            );
        }
        times.optimizer += t0.elapsed().as_secs_f64();
        self.step += 1;
        self.tokens_seen += self.global_batch() * t as u64;
        Ok((loss, norm))
    }

    fn forward_backward_timed(&mut self, grad_scale: f32, times: &mut StepTimes) -> f64 {
        let (gpt, p, acts) = (&self.gpt, &self.params, &mut self.acts);
        let nl = gpt.cfg.n_layer;
        let head = gpt.layout.head();
        let t0 = Instant::now();
        gpt.forward_hidden(p, acts, &self.inputs);
        let (d_emb, rest) = self.grads.split_first_mut().expect("layout has buckets");
        let loss = gpt.head_forward_backward(&p[0], &p[head], d_emb, &mut rest[head - 1], acts, &self.targets, grad_scale);
        let t1 = Instant::now();
        for l in (0..nl).rev() {
            gpt.block_backward(l, &p[l + 1], &mut rest[l], acts);
        }
        gpt.embed_backward(d_emb, acts);
        times.forward += (t1 - t0).as_secs_f64();
        times.backward += t1.elapsed().as_secs_f64();
        loss
    }

    /// Mean validation loss over `train.eval_batches` fixed batches (the same batches at
    /// every evaluation, so values are comparable along the run).
    pub fn evaluate(&mut self) -> f64 {
        let Some(data) = &self.data else { return f64::NAN };
        let tc = &self.cfg.raw.train;
        let (b, t) = (tc.batch_size, self.cfg.raw.model.block_size);
        eval_batches(&self.gpt, &self.params, data, &mut self.acts, tc.seed, tc.eval_batches, &mut self.inputs, &mut self.targets)
            / (tc.eval_batches * b * t) as f64
    }

    /// Runs to `train.steps`, evaluating, logging and checkpointing as configured.
    pub fn run(&mut self, observer: &mut dyn Observer) -> Result<Option<f64>> {
        let total = self.cfg.raw.train.steps;
        let info = RunInfo::new(self);
        observer.started(&info);
        let mut log = MetricsLog::open(&self.run_dir, self.step)?;
        let tc = self.cfg.raw.train.clone();
        let ck = self.cfg.raw.checkpoint.clone();
        let tokens_per_step = self.cfg.tokens_per_step as f64;
        let mut last_val = None;
        while self.step < total {
            let mut times = StepTimes::default();
            let t0 = Instant::now();
            let lr = self.schedule.at(self.step);
            let (loss, norm) = self.train_step(&mut times)?;
            let secs = t0.elapsed().as_secs_f64();
            let done = self.step;
            let eval_now = tc.eval_interval > 0 && (done % tc.eval_interval == 0 || done == total);
            let val_loss = eval_now.then(|| self.evaluate());
            if val_loss.is_some() {
                last_val = val_loss;
            }
            let tokens_per_s = tokens_per_step / secs;
            let m = StepMetrics {
                step: done,
                train_loss: loss,
                val_loss,
                lr,
                grad_norm: norm,
                tokens_per_s,
                mfu: info.flops_per_token * tokens_per_s / self.peak_flops,
                step_ms: secs * 1e3,
                tokens_seen: self.tokens_seen,
                times,
            };
            if done % tc.log_interval.max(1) == 0 || val_loss.is_some() || done == total {
                log.append(&m)?;
            }
            observer.step(&m);
            if (ck.interval > 0 && done % ck.interval == 0) || done == total {
                let dir = self.save_checkpoint(observer)?;
                observer.checkpoint(&dir, done);
            }
        }
        Ok(last_val)
    }
}

/// Mean validation loss of `params` over `batches` batches of (b, t): the batches
/// `Trainer::evaluate` uses for a run with this `seed`.
pub fn evaluate(gpt: &Gpt, params: &[Vec<f32>], data: &Dataset, seed: u64, b: usize, t: usize, batches: usize) -> f64 {
    let mut acts = Activations::new(&gpt.cfg, b, t, false);
    let (mut x, mut y) = (vec![0; b * t], vec![0; b * t]);
    eval_batches(gpt, params, data, &mut acts, seed, batches, &mut x, &mut y) / (batches * b * t) as f64
}

#[allow(clippy::too_many_arguments)]
fn eval_batches(
    gpt: &Gpt,
    params: &[Vec<f32>],
    data: &Dataset,
    acts: &mut Activations,
    seed: u64,
    batches: usize,
    x: &mut [u32],
    y: &mut [u32],
) -> f64 {
    let (b, t) = (acts.b, acts.t);
    (0..batches)
        .map(|i| {
            data.val.fill_batch(seed ^ EVAL_SEED_SALT, (i * b) as u64, b, t, x, y);
            gpt.forward_loss(params, acts, x, y)
        })
        .sum()
}

fn random_tokens(seed: u64, first: u64, vocab: usize, x: &mut [u32], y: &mut [u32]) {
    let mut rng = model::init::SplitMix64(seed ^ first.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    for (a, b) in x.iter_mut().zip(y.iter_mut()) {
        *a = (rng.next_u64() % vocab as u64) as u32;
        *b = (rng.next_u64() % vocab as u64) as u32;
    }
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

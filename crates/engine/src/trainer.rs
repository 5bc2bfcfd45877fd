//! The training loop of one rank: micro-batches with gradient accumulation, the
//! data-parallel step (see `step.rs`), evaluation, metrics and checkpoints.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use config::ResolvedConfig;
use data::Dataset;
use model::{Activations, Gpt, ModelSpec};

use crate::error::{EngineError, Result};
use crate::metrics::{MemoryReport, MetricsLog, RunInfo, StepMetrics};
use crate::optim::AdamW;
use crate::rank::{Pool, Rank};
use crate::schedule::LrSchedule;
use crate::shard::{shards, BucketShard};

/// Called with each checkpoint file as it becomes durable (from any thread).
pub type FileHook = std::sync::Arc<dyn Fn(&Path) + Send + Sync>;

/// Called by the loop as the run advances; the CLI draws progress bars from it.
pub trait Observer {
    fn started(&mut self, _info: &RunInfo) {}
    fn step(&mut self, _m: &StepMetrics) {}
    /// A checkpoint file is durable on disk (the checkpoint is not committed yet).
    fn checkpoint_file(&mut self, _path: &Path) {}
    fn checkpoint(&mut self, _dir: &Path, _step: u64) {}
}

impl<O: Observer + ?Sized> Observer for &mut O {
    fn started(&mut self, info: &RunInfo) {
        (**self).started(info)
    }
    fn step(&mut self, m: &StepMetrics) {
        (**self).step(m)
    }
    fn checkpoint_file(&mut self, path: &Path) {
        (**self).checkpoint_file(path)
    }
    fn checkpoint(&mut self, dir: &Path, step: u64) {
        (**self).checkpoint(dir, step)
    }
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// Sample-index stream for evaluation, disjoint from training by seed.
const EVAL_SEED_SALT: u64 = 0x5EED_0E7A_1000_0001;

/// The model a resolved config describes (the vocabulary must be known).
pub fn model_spec(cfg: &ResolvedConfig) -> Result<ModelSpec> {
    Ok(cfg.model_spec()?)
}

/// Time of each phase of a step, in seconds. `comm` is communication the step waited
/// for (exposed), not what overlapped with computation.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepTimes {
    pub forward: f64,
    pub backward: f64,
    pub optimizer: f64,
    pub comm: f64,
    /// Pipeline parallelism: the part of `comm` spent waiting for the neighbouring
    /// stages' activations and gradients (the bubble, and exposed transfers).
    pub pipe_wait: f64,
}

/// One rank's training state. With `parallel.dp = 1` this is the whole job; otherwise
/// every rank runs the same loop on its share of each global batch (SPMD).
pub struct Trainer {
    pub cfg: ResolvedConfig,
    /// The model this rank computes: the whole model, or its tensor-parallel part.
    pub gpt: std::sync::Arc<Gpt>,
    /// The whole model's shape (what checkpoints, metrics and data describe).
    pub global: model::ModelSpec,
    /// None for benchmarks, which train on random tokens.
    pub data: Option<Dataset>,
    pub rank: Rank,
    pub shards: Vec<BucketShard>,
    /// Stages 0-2: whole buckets (padded to a multiple of dp); stage 3: this rank's shard.
    pub params: Vec<Vec<f32>>,
    /// Stages 0-1: whole gradient buckets (padded); stages 2-3: unused.
    pub grads: Vec<Vec<f32>>,
    /// Stages 1-3: this rank's reduced gradient shard; stage 0: unused.
    pub gshard: Vec<Vec<f32>>,
    /// Adam moments: whole (padded) at stage 0, this rank's shard otherwise.
    pub exp_avg: Vec<Vec<f32>>,
    pub exp_avg_sq: Vec<Vec<f32>>,
    pub acts: Activations,
    /// Bytes the allocator saw for each kind of state when it was created (None when
    /// the counting allocator is not installed).
    pub measured: Option<crate::metrics::Measured>,
    pub(crate) pool: Pool,
    pub(crate) gather_wait: f64,
    /// Optimizer steps completed.
    pub step: u64,
    pub tokens_seen: u64,
    pub(crate) inputs: Vec<u32>,
    pub(crate) targets: Vec<u32>,
    pub(crate) adamw: AdamW,
    pub(crate) schedule: LrSchedule,
    run_dir: PathBuf,
    pub peak_flops: f64,
    pub peak_measured: bool,
    /// Set (by a signal handler) to ask for a graceful stop; see [`Trainer::run`].
    pub stop: Option<&'static AtomicBool>,
    /// The step at which [`Trainer::run`] stopped on request (None: it ran to the end).
    pub stopped_at: Option<u64>,
    /// Testing aid: steps (1-based) whose gradients are made non-finite.
    pub poison_steps: Vec<u64>,
    /// Called by the background checkpoint writer as each file becomes durable.
    pub async_file_hook: Option<FileHook>,
    /// The background checkpoint write in flight (`checkpoint.async`), if any.
    writer: Option<std::thread::JoinHandle<Result<(PathBuf, u64)>>>,
    /// Pipeline parallelism: this stage's chunks and the micro-batches in flight.
    pub(crate) pipe: Option<crate::pipe::PipeState>,
    /// `train.device = "cuda"`: forward and backward on a GPU (see `gpu.rs`).
    pub(crate) gpu: Option<crate::gpu::GpuState>,
}

impl Trainer {
    /// A fresh single-rank trainer (model initialised from `train.seed`).
    pub fn new(cfg: ResolvedConfig, data: Dataset, run_dir: &Path) -> Result<Trainer> {
        Self::with_rank(cfg, data, run_dir, Rank::single()?)
    }

    /// A fresh trainer for one rank of a data-parallel group.
    pub fn with_rank(cfg: ResolvedConfig, data: Dataset, run_dir: &Path, rank: Rank) -> Result<Trainer> {
        Self::with_data(cfg, data, run_dir, rank, true)
    }

    /// Like [`Trainer::with_rank`], with the parameters left zero instead of
    /// initialised: for a trainer that [`Trainer::restore`] or [`Trainer::load_params`]
    /// fills next (the initialisation is most of a large model's start-up).
    pub fn with_rank_uninit(cfg: ResolvedConfig, data: Dataset, run_dir: &Path, rank: Rank) -> Result<Trainer> {
        Self::with_data(cfg, data, run_dir, rank, false)
    }

    fn with_data(cfg: ResolvedConfig, data: Dataset, run_dir: &Path, rank: Rank, init: bool) -> Result<Trainer> {
        let cfg = cfg.with_vocab_size(data.meta.vocab_size)?;
        data.check_block(cfg.raw.model.block_size)?;
        // A token id beyond the vocabulary would panic hours later inside the embedding.
        data.verify_tokens()?;
        Self::build(cfg, Some(data), run_dir, rank, init)
    }

    /// A trainer on uniformly random tokens (no data files, no evaluation),
    /// for `hyperion bench train`. `model.vocab_size` must be set.
    pub fn synthetic(cfg: ResolvedConfig, rank: Rank) -> Result<Trainer> {
        Self::build(cfg, None, Path::new(""), rank, true)
    }

    fn build(cfg: ResolvedConfig, data: Option<Dataset>, run_dir: &Path, rank: Rank, init: bool) -> Result<Trainer> {
        let par = &cfg.raw.parallel;
        if par.dp != rank.dp {
            return Err(EngineError::Invalid(format!(
                "parallel.dp = {} but {} ranks were started; they must be equal",
                par.dp, rank.dp
            )));
        }
        if par.tp != rank.tp {
            return Err(EngineError::Invalid(format!("parallel.tp = {} but the ranks were grouped by {}", par.tp, rank.tp)));
        }
        if par.pp != rank.pp {
            return Err(EngineError::Invalid(format!("parallel.pp = {} but the ranks were grouped into {} pipeline stages", par.pp, rank.pp)));
        }
        if rank.pipe.as_ref().is_some_and(|p| p.wraps() != (par.virtual_stages > 1)) {
            return Err(EngineError::Invalid("the ranks' pipeline links do not match parallel.virtual_stages".into()));
        }
        let global = model_spec(&cfg)?;
        let chunks = crate::pipe::rank_chunks(&global, rank.pp, par.virtual_stages, rank.pp_rank)?;
        let gpt = std::sync::Arc::new(if rank.tp == 1 {
            Gpt::new(global.clone())
        } else {
            Gpt::tensor_parallel(model::Cpu, &global, rank.tp, rank.tp_rank).map_err(EngineError::Invalid)?
        });
        let (dp, r, zero) = (rank.dp, rank.rank, par.zero);
        // A pipeline stage holds its chunks' buckets; the others stay empty here.
        let held = crate::pipe::held_buckets(&gpt, &chunks);
        let shards: Vec<BucketShard> = shards(&gpt.layout, dp).into_iter().zip(&held).map(|(s, &h)| if h { s } else { BucketShard { numel: 0, shard: 0 } }).collect();
        let whole = |s: &BucketShard| vec![0.0f32; s.padded(dp)];
        let part = |s: &BucketShard| vec![0.0f32; s.shard];
        // The whole model is initialised, then each rank keeps what it holds: measured
        // together, the transient whole copy nets out.
        let (params, m_params) = crate::alloc::measure(|| -> Vec<Vec<f32>> {
            if !init {
                return shards.iter().map(|s| if zero == 3 { part(s) } else { whole(s) }).collect();
            }
            let init = if rank.tp == 1 {
                gpt.init_params(cfg.raw.train.seed)
            } else {
                // The whole model's initialisation, cut to this rank's parts: every
                // layout starts from the same model.
                let whole = Gpt::new(global.clone());
                let mut mine = gpt.zeros();
                whole.layout.tp_extract(&whole.init_params(cfg.raw.train.seed), &gpt.layout, &mut mine, rank.tp, rank.tp_rank);
                mine
            };
            init.into_iter()
                .zip(&shards)
                .map(|(p, s)| {
                    let mut v = if zero == 3 { part(s) } else { whole(s) };
                    keep_held(&mut v, &p, *s, r, zero);
                    v
                })
                .collect()
        });
        let ((grads, gshard), m_grads) = crate::alloc::measure(|| {
            let grads: Vec<Vec<f32>> = shards.iter().map(|s| if zero < 2 { whole(s) } else { Vec::new() }).collect();
            let gshard: Vec<Vec<f32>> = shards.iter().map(|s| if zero >= 1 { part(s) } else { Vec::new() }).collect();
            (grads, gshard)
        });
        let moment = || -> Vec<Vec<f32>> { shards.iter().map(|s| if zero == 0 { whole(s) } else { part(s) }).collect() };
        let ((exp_avg, exp_avg_sq), m_optim) = crate::alloc::measure(|| (moment(), moment()));
        let (b, t) = (cfg.raw.train.batch_size, cfg.raw.model.block_size);
        let recompute = matches!(par.recompute, config::Recompute::Full);
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
        // Sequence parallelism shards the B*T rows of the residual stream over the tp group.
        let sp = if par.sp && rank.tp > 1 { rank.tp } else { 1 };
        if !(b * t).is_multiple_of(sp) {
            return Err(EngineError::Invalid(format!(
                "parallel.sp shards the {} rows of a micro-batch (train.batch_size {b} x model.block_size {t}) over parallel.tp = {sp} ranks: they must divide",
                b * t
            )));
        }
        let layers: Vec<_> = chunks.iter().map(|c| c.layers.clone()).collect();
        let has_head = chunks.iter().any(|c| c.last);
        let selective = matches!(par.recompute, config::Recompute::Selective);
        let gpu = match crate::gpu::requested(&cfg)? {
            Some(_) => Some(crate::gpu::GpuState::new(&cfg, &global, (b, t), recompute, selective, &rank, &shards, &chunks)?),
            None => None,
        };
        let (mut acts, m_acts) = crate::alloc::measure(|| {
            if gpu.is_some() {
                // The activations live on the device.
                return Activations::empty();
            }
            let acts = Activations::pipeline(&model::Cpu, &gpt.spec, b, t, recompute, sp, &layers, has_head);
            if selective { acts.recompute_attention(&model::Cpu) } else { acts }
        });
        let msg = b * t * gpt.spec.hidden;
        let pipe = (rank.pp > 1).then(|| {
            if gpu.is_some() {
                // The saved activations live on the device (gpu.rs).
                crate::pipe::PipeState::without_saved(chunks, msg, sp, rank.tp, rank.tp_rank)
            } else {
                crate::pipe::PipeState::new(chunks, &mut acts, msg, sp, rank.tp, rank.tp_rank)
            }
        });
        let measured = match (m_params, m_grads, m_optim, m_acts) {
            (Some(params), Some(grads), Some(optimizer), Some(activations)) => {
                Some(crate::metrics::Measured { params, grads, optimizer, activations, thread_peak: 0 })
            }
            _ => None,
        };
        Ok(Trainer {
            global,
            acts,
            measured,
            exp_avg,
            exp_avg_sq,
            params,
            grads,
            gshard,
            shards,
            gpt,
            data,
            rank,
            pool: Pool::default(),
            gather_wait: 0.0,
            step: 0,
            tokens_seen: 0,
            inputs: vec![0; b * t],
            targets: vec![0; b * t],
            adamw,
            schedule,
            run_dir: run_dir.to_path_buf(),
            peak_flops,
            peak_measured,
            stop: None,
            stopped_at: None,
            poison_steps: Vec::new(),
            async_file_hook: None,
            writer: None,
            pipe,
            gpu,
            cfg,
        })
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Rank 0 of the whole job (it logs, writes the manifest and commits).
    pub fn is_root(&self) -> bool {
        self.rank.world_rank() == 0
    }

    pub fn memory(&self) -> MemoryReport {
        MemoryReport::measure(self)
    }

    pub(crate) fn fill(&mut self, first: u64, val: bool) {
        let tc = &self.cfg.raw.train;
        let (b, t) = (tc.batch_size, self.cfg.raw.model.block_size);
        match (&self.data, val) {
            (Some(d), false) => d.train.fill_batch(tc.seed, first, b, t, &mut self.inputs, &mut self.targets),
            (Some(d), true) => d.val.fill_batch(tc.seed ^ EVAL_SEED_SALT, first, b, t, &mut self.inputs, &mut self.targets),
            (None, _) => random_tokens(tc.seed, first, self.global.vocab, &mut self.inputs, &mut self.targets),
        }
    }

    /// Global sample index of this rank's first sequence in micro-batch `micro` of this
    /// step: the window of a sample depends on (seed, index) alone, so resume is exact
    /// and any dp x accumulation split of a global batch reads the same samples.
    pub(crate) fn sample_index(&self, micro: usize) -> u64 {
        let (b, dp, r) = (self.cfg.raw.train.batch_size, self.rank.dp, self.rank.rank);
        self.step * self.cfg.global_batch as u64 + ((micro * dp + r) * b) as u64
    }

    /// One optimizer step: `grad_accum` micro-batches on every rank, the ZeRO reduction,
    /// clipping, AdamW. Returns the mean training loss over the global batch and the
    /// pre-clip gradient norm.
    pub fn train_step(&mut self, times: &mut StepTimes) -> Result<(f64, f64)> {
        let tc = &self.cfg.raw.train;
        let (b, t, accum) = (tc.batch_size, self.cfg.raw.model.block_size, tc.grad_accum);
        let dp = self.rank.dp;
        let global = self.cfg.global_batch as u64;
        for g in &mut self.grads {
            g.fill(0.0);
        }
        // Mean over every token of the global batch; ranks' shares add up by SUM.
        let grad_scale = 1.0 / (b * t * accum * dp) as f32;
        let mut loss_sum = 0.0;
        if let Some(g) = &mut self.gpu {
            // The device's masters are the run's once uploaded (see gpu.rs).
            g.ensure(&self.params, &self.exp_avg, &self.exp_avg_sq);
            g.zero_grads();
        }
        if self.gpu.is_some() && self.pipe.is_none() {
            let t0 = Instant::now();
            for micro in 0..accum {
                self.fill(self.sample_index(micro), false);
                let g = self.gpu.as_mut().expect("a GPU");
                loss_sum += g.micro(&self.inputs, &self.targets, grad_scale)?;
            }
            // Forward and backward are not timed apart on the device (one stream).
            times.forward += t0.elapsed().as_secs_f64();
        } else if self.pipe.is_some() {
            // Only the last stage computes losses; the others add zero.
            let mine = self.pipeline_step(grad_scale, times)?;
            // The sum waits for the last stage's last backward: the idle end of this
            // stage's pipeline, part of its bubble.
            let t0 = Instant::now();
            loss_sum = self.rank.sum_f64_pp(mine)?;
            let waited = t0.elapsed().as_secs_f64();
            times.comm += waited;
            times.pipe_wait += waited;
            self.sum_tied_embedding()?;
        } else {
            for micro in 0..accum {
                self.fill(self.sample_index(micro), false);
                loss_sum += self.micro_step(grad_scale, micro == 0, micro + 1 == accum, times)?;
            }
        }
        let loss = self.rank.sum_f64(loss_sum)? / (b * t * accum * dp) as f64;
        if self.poison_steps.contains(&(self.step + 1)) {
            self.poison_gradients();
        }
        // The loss is all-reduced and the norm global, so every rank skips alike. A
        // non-finite norm makes `optimizer_step` leave the state as it was.
        let norm = if !loss.is_finite() {
            f64::NAN
        } else if let Some(g) = &mut self.gpu {
            // On the device: the masters and moments stay there (see gpu.rs).
            let t0 = Instant::now();
            let lr = self.schedule.at(self.step) as f32;
            let norm = g.optimizer_step(&self.gpt.layout, &self.adamw, lr, self.step + 1, self.cfg.raw.optim.grad_clip)?;
            times.optimizer += t0.elapsed().as_secs_f64();
            norm
        } else {
            self.optimizer_step(times)?
        };
        self.step += 1;
        self.tokens_seen += global * t as u64;
        Ok((loss, norm))
    }

    /// Testing aid: makes this step's gradient norm NaN (one element of the rank's
    /// reduced gradient), as an overflow would.
    fn poison_gradients(&mut self) {
        let g = if self.cfg.raw.parallel.zero == 0 { &mut self.grads[0] } else { &mut self.gshard[0] };
        if let Some(x) = g.first_mut() {
            *x = f32::NAN;
        }
    }

    /// Mean validation loss over `train.eval_batches` global batches of validation
    /// sequences: sequences `0 .. eval_batches x global_batch` of the validation stream,
    /// the same at every evaluation and for every layout of the run (dp, accumulation),
    /// since the global batch is the run's. Rank r reads micro-batch i's sequences
    /// `(i dp + r) B ..`, as [`evaluate`] does on one rank.
    pub fn evaluate(&mut self) -> Result<f64> {
        if self.data.is_none() {
            return Ok(f64::NAN);
        }
        let tc = &self.cfg.raw.train;
        let (b, t, micro) = (tc.batch_size, self.cfg.raw.model.block_size, tc.eval_batches * tc.grad_accum);
        let (dp, r) = (self.rank.dp, self.rank.rank);
        let mut sum = 0.0;
        if let Some(g) = &mut self.gpu {
            g.ensure(&self.params, &self.exp_avg, &self.exp_avg_sq);
        }
        if self.gpu.is_some() && self.pipe.is_none() {
            for i in 0..micro {
                self.fill((i * b) as u64, true);
                let g = self.gpu.as_mut().expect("a GPU");
                sum += g.loss(&self.inputs, &self.targets)?;
            }
        } else if self.pipe.is_some() {
            let mine = self.pipeline_eval(micro)?;
            sum = self.rank.sum_f64_pp(mine)?;
        } else {
            for i in 0..micro {
                self.fill(((i * dp + r) * b) as u64, true);
                sum += self.forward_loss()?;
            }
        }
        Ok(self.rank.sum_f64(sum)? / (micro * dp * b * t) as f64)
    }

    /// Summed loss of the batch in `inputs`/`targets`, no gradients.
    fn forward_loss(&mut self) -> Result<f64> {
        let plan = self.prefetch_plan(false);
        Ok(self.drive(plan, false, false, |gpt, d, acts, x, y| gpt.eval_micro(d, acts, x, y))?.0)
    }

    /// Replaces the parameters by `whole` (every bucket whole, layout order), e.g. the
    /// weights of a Hugging Face model; each rank keeps what it holds.
    pub fn load_params(&mut self, whole: &[Vec<f32>]) -> Result<()> {
        let parts;
        let whole = match self.tp_parts() {
            // The whole model's buckets: keep this tensor-parallel rank's parts.
            Some(tp) => {
                parts = tp.extract(whole, &self.gpt.layout)?;
                &parts[..]
            }
            None => whole,
        };
        if whole.len() != self.params.len() {
            return Err(EngineError::Invalid(format!("{} parameter buckets given, the model has {}", whole.len(), self.params.len())));
        }
        let (zero, r) = (self.cfg.raw.parallel.zero, self.rank.rank);
        for (b, src) in whole.iter().enumerate() {
            let (s, numel) = (self.shards[b], self.gpt.layout.buckets[b].numel);
            if src.len() != numel {
                return Err(EngineError::Invalid(format!("bucket {b} has {} elements, the model needs {numel}", src.len())));
            }
            keep_held(&mut self.params[b], src, s, r, zero);
        }
        if let Some(g) = &mut self.gpu {
            g.stale();
        }
        Ok(())
    }

    /// A run on a device keeps its parameters and moments there: this brings the host's
    /// copies up to date (before anything reads them: checkpoints, sampling).
    pub(crate) fn pull_from_device(&mut self) {
        if let Some(g) = &self.gpu {
            g.pull(&mut self.params, &mut self.exp_avg, &mut self.exp_avg_sq);
        }
    }

    /// The whole model's parameters, unpadded, on every rank (a collective under ZeRO-3).
    pub fn full_params(&mut self) -> Result<Vec<Vec<f32>>> {
        self.pull_from_device();
        let nb = self.params.len();
        let held: Vec<usize> = (0..nb).filter(|&b| self.shards[b].numel > 0).collect();
        let mut plan = crate::step::Prefetch::new(held.clone());
        let mut out = Vec::with_capacity(nb);
        // Plan order is embedding, blocks, head: the layout order.
        for b in 0..nb {
            let numel = self.gpt.layout.buckets[b].numel;
            let mut whole = vec![0.0; numel];
            if held.contains(&b) {
                let p = self.acquire(b, &mut plan)?;
                whole.copy_from_slice(&p[..numel]);
                self.release(b, p);
            }
            // Under pipeline parallelism the stage that holds a bucket sends it to all.
            if let Some(links) = &self.rank.pipe {
                let owner = crate::pipe::owner_stage(&self.gpt, self.rank.pp, self.cfg.raw.parallel.virtual_stages, b);
                links.group.broadcast((&mut whole[..]).into(), owner)?;
            }
            out.push(whole);
        }
        Ok(out)
    }

    /// Runs to `train.steps`, evaluating, logging and checkpointing as configured. Only
    /// rank 0 writes metrics; every rank writes its checkpoint shard.
    ///
    /// Graceful stop: when `stop` is set and the flag is raised on any rank, every rank
    /// finishes the step it is in, the ranks agree (one all-reduce per step) so that
    /// all stop after the same step, a checkpoint of that step is written (unless the
    /// step just wrote one) and `run` returns with `stopped_at` set.
    pub fn run(&mut self, observer: &mut dyn Observer) -> Result<Option<f64>> {
        let total = self.cfg.raw.train.steps;
        let info = RunInfo::new(self);
        observer.started(&info);
        let mut log = if self.is_root() { Some(MetricsLog::open(&self.run_dir, self.step)?) } else { None };
        let tc = self.cfg.raw.train.clone();
        let ck = self.cfg.raw.checkpoint.clone();
        let tokens_per_step = self.cfg.tokens_per_step as f64;
        let mut last_val = None;
        // Samples drawn per mixture source (a pure function of the sample indices).
        let gb = self.cfg.global_batch as u64;
        let draws = |d: &Dataset, first: u64, n: u64| d.train.count_sources(tc.seed, first, n);
        let mut drawn = self.data.as_ref().filter(|d| d.train.sources.len() > 1).map(|d| draws(d, 0, self.step * gb));
        let mut guard = Guard::new(&self.cfg.raw);
        while self.step < total {
            let mut times = StepTimes::default();
            let t0 = Instant::now();
            let lr = self.schedule.at(self.step);
            let (loss, norm) = self.train_step(&mut times)?;
            let secs = t0.elapsed().as_secs_f64();
            let done = self.step;
            let spike = guard.observe(loss, norm);
            if guard.streak >= tc.max_bad_steps.max(1) {
                self.finish_write(observer)?;
                let resume = match checkpoint::list_checkpoints(&self.run_dir)?.pop() {
                    Some((step, dir)) => format!("The last checkpoint, {} (step {step}), holds the state before them: resume from it", dir.display()),
                    None => "No checkpoint was written before them: start again".to_string(),
                };
                return Err(EngineError::Diverged {
                    first: done + 1 - guard.streak,
                    last: done,
                    count: guard.streak,
                    limit: tc.max_bad_steps,
                    loss,
                    norm,
                    resume,
                });
            }
            let eval_now = tc.eval_interval > 0 && (done.is_multiple_of(tc.eval_interval) || done == total);
            let val_loss = if eval_now { Some(self.evaluate()?) } else { None };
            if val_loss.is_some() {
                last_val = val_loss;
            }
            let tokens_per_s = tokens_per_step / secs;
            let block = self.cfg.raw.model.block_size as u64;
            let sources = match (&mut drawn, &self.data) {
                (Some(dr), Some(d)) => {
                    for (acc, n) in dr.iter_mut().zip(draws(d, (done - 1) * gb, gb)) {
                        *acc += n;
                    }
                    let list = d.train.sources.iter().zip(dr.iter()).map(|(s, &n)| crate::metrics::SourceDraw {
                        dir: s.dir.display().to_string(),
                        tokens: n * block,
                        epochs: (n * block) as f64 / s.tokens.len().max(1) as f64,
                    });
                    Some(list.collect())
                }
                _ => None,
            };
            let m = StepMetrics {
                sources,
                step: done,
                train_loss: loss,
                val_loss,
                lr,
                grad_norm: norm,
                tokens_per_s,
                mfu: info.flops_per_token * tokens_per_s / (self.peak_flops * self.rank.world.size() as f64),
                step_ms: secs * 1e3,
                tokens_seen: self.tokens_seen,
                forward_ms: times.forward * 1e3,
                backward_ms: times.backward * 1e3,
                comm_ms: times.comm * 1e3,
                pipe_wait_ms: times.pipe_wait * 1e3,
                optimizer_ms: times.optimizer * 1e3,
                skipped_steps: guard.skipped,
                loss_spike_z: spike,
            };
            if let Some(log) = &mut log {
                let notable = guard.streak > 0 || spike.is_some();
                if done.is_multiple_of(tc.log_interval.max(1)) || val_loss.is_some() || done == total || notable {
                    log.append(&m)?;
                }
            }
            observer.step(&m);
            let saved = (ck.interval > 0 && done.is_multiple_of(ck.interval)) || done == total;
            if saved {
                self.checkpoint_now(observer)?;
            }
            if done < total && self.stop_agreed()? {
                if !saved {
                    self.checkpoint_now(observer)?;
                }
                self.stopped_at = Some(done);
                break;
            }
        }
        self.finish_write(observer)?;
        Ok(last_val)
    }

    /// Checkpoints the current step: on this thread, or with `checkpoint.async` by a
    /// background writer from a copy of this rank's state (waiting first for the
    /// previous write, so at most one is in flight).
    fn checkpoint_now(&mut self, observer: &mut dyn Observer) -> Result<()> {
        if !self.cfg.raw.checkpoint.async_write {
            let dir = self.save_checkpoint(observer)?;
            observer.checkpoint(&dir, self.step);
            return Ok(());
        }
        self.finish_write(observer)?;
        self.pull_from_device();
        let snap = self.snapshot(|v| std::borrow::Cow::Owned(v.to_vec())).into_owned();
        let (comm, hook) = (self.rank.ckpt.clone(), self.async_file_hook.clone());
        let spawned = std::thread::Builder::new().name("checkpoint-writer".into()).spawn(move || {
            let step = snap.step();
            snap.write(comm.as_ref(), &mut |p| {
                if let Some(h) = &hook {
                    h(p)
                }
            })
            .map(|dir| (dir, step))
        });
        self.writer = Some(spawned.map_err(|e| EngineError::Invalid(format!("starting the checkpoint writer: {e}")))?);
        Ok(())
    }

    /// Waits for the background checkpoint write in flight, if any, and reports it.
    pub fn finish_write(&mut self, observer: &mut dyn Observer) -> Result<()> {
        let Some(h) = self.writer.take() else { return Ok(()) };
        match h.join() {
            Ok(Ok((dir, step))) => {
                observer.checkpoint(&dir, step);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(EngineError::Invalid("the checkpoint writer panicked".into())),
        }
    }

    /// Whether any rank has been asked to stop. A collective when the flag is installed
    /// and dp > 1: ranks read their flags at different moments, so they vote.
    fn stop_agreed(&self) -> Result<bool> {
        let Some(flag) = self.stop else { return Ok(false) };
        let mine = flag.load(Ordering::SeqCst);
        // Every rank of the job votes (tensor-parallel peers are in other dp groups).
        Ok(crate::rank::sum_f64(self.rank.world.as_ref(), f64::from(u8::from(mine)))? > 0.0)
    }
}

/// The numerics guard's bookkeeping: skipped steps (a non-finite loss or gradient
/// norm; `train_step` applied no update) and loss spikes against a rolling window.
struct Guard {
    skipped: u64,
    streak: u64,
    window: std::collections::VecDeque<f64>,
    spike_z: f64,
    len: usize,
}

impl Guard {
    fn new(c: &config::RunConfig) -> Guard {
        Guard { skipped: 0, streak: 0, window: Default::default(), spike_z: c.log.spike_z, len: c.log.spike_window as usize }
    }

    /// Records a step; returns the loss's z-score when it is a spike.
    fn observe(&mut self, loss: f64, norm: f64) -> Option<f64> {
        if !(loss.is_finite() && norm.is_finite()) {
            self.skipped += 1;
            self.streak += 1;
            return None;
        }
        self.streak = 0;
        let mut spike = None;
        if self.spike_z > 0.0 && self.window.len() == self.len {
            let n = self.len as f64;
            let mean = self.window.iter().sum::<f64>() / n;
            let var = self.window.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
            let z = (loss - mean) / var.sqrt();
            if var > 0.0 && z > self.spike_z {
                spike = Some(z);
            }
        }
        if self.spike_z > 0.0 {
            if self.window.len() == self.len {
                self.window.pop_front();
            }
            self.window.push_back(loss);
        }
        spike
    }
}

/// Mean validation loss of whole `params` over `micro_batches` batches of shape (b, t), i.e.
/// validation sequences `0 .. micro_batches x b` of the run with this `seed` (what
/// [`Trainer::evaluate`] reads when `micro_batches x b` is its evaluation size).
/// `done(i)` is called after each batch.
pub fn evaluate(gpt: &Gpt, params: &[Vec<f32>], data: &Dataset, seed: u64, (b, t): (usize, usize), micro_batches: usize, done: &mut dyn FnMut(usize)) -> f64 {
    let mut acts = Activations::new(&gpt.spec, b, t, false);
    let (mut x, mut y) = (vec![0; b * t], vec![0; b * t]);
    let mut sum = 0.0;
    for i in 0..micro_batches {
        data.val.fill_batch(seed ^ EVAL_SEED_SALT, (i * b) as u64, b, t, &mut x, &mut y);
        sum += gpt.forward_loss(params, &mut acts, &x, &y);
        done(i + 1);
    }
    sum / (micro_batches * b * t) as f64
}

/// Copies into `dst` the part of the whole bucket `src` this rank holds: its shard's
/// real elements under ZeRO-3, else the whole bucket (the padding stays zero).
fn keep_held(dst: &mut [f32], src: &[f32], s: BucketShard, r: usize, zero: u8) {
    if s.numel == 0 {
        // Another pipeline stage's bucket.
        return;
    }
    if zero == 3 {
        let real = s.real(r);
        dst[..real.len()].copy_from_slice(&src[real]);
    } else {
        dst[..s.numel].copy_from_slice(src);
    }
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

//! `train.device = "cuda"` (or the emulated `"cuda-emu"`, the same code on the host's
//! model of a GPU): each rank's forward and backward on its own device (the model on the
//! CUDA backend, crates/cuda), and the optimizer there too: the fp32 masters and Adam
//! moments stay on the device between steps (uploaded at the first step and after the
//! host's copies change, downloaded for checkpoints and sampling); the gradient norm,
//! clipping, the numerics guard and AdamW run as kernels, and only the loss and, once
//! the step is queued, the norm come back to the host in a step. Data, tensor, sequence
//! and pipeline parallelism go through device collectives (crates/cuda/src/dist.rs).
//!
//! `train.dtype = "bf16"`: the model reads a bf16 copy of the masters (written by the
//! AdamW kernel as it updates them) and accumulates bf16 gradients; masters, moments,
//! the loss and every statistic stay fp32, so checkpoints are the same as f32 runs'.
//!
//! Without the `cuda` feature `GpuState` is an uninhabited type and asking for a GPU is
//! an error naming the feature.

use crate::error::{EngineError, Result};

#[cfg(feature = "cuda")]
mod imp {
    use std::sync::Arc;

    use cuda_kernels::backend::{Cuda, DevBuf, DevVec};
    use cuda_kernels::device::{Dims, Dtype};
    use cuda_kernels::dist::DeviceComm;
    use model::backend::Buf;
    use model::{Activations, Backend, Chunk, Driver, Model, ModelSpec, Saved, TpReduce};

    use crate::error::{EngineError, Result};
    use crate::shard::BucketShard;

    /// This rank's place in a data-parallel group of devices.
    struct Group {
        comm: Box<dyn DeviceComm>,
        rank: usize,
        size: usize,
        zero: u8,
        /// ZeRO 1-3: this rank's block of each reduced gradient bucket (backend precision;
        /// at 2-3 the micro-batches' reductions accumulate here).
        gshard: Vec<DevVec>,
        /// ZeRO 1-2: this rank's updated masters, the all-gather's input.
        mine: Vec<DevVec>,
    }

    /// A bucket lent to the model: the device's own, or (ZeRO 3) gathered for this use.
    enum Lent<'a> {
        Held(&'a DevBuf),
        Gathered(DevVec),
    }

    impl std::ops::Deref for Lent<'_> {
        type Target = DevBuf;
        fn deref(&self) -> &DevBuf {
            match self {
                Lent::Held(b) => b,
                Lent::Gathered(v) => v,
            }
        }
    }

    pub(crate) struct GpuState {
        be: Cuda,
        model: Model<Cuda>,
        acts: Activations<Cuda>,
        /// The fp32 masters and Adam moments live here between steps; the host's copies
        /// are refreshed by `pull` (checkpoints, sampling) and replace these after `stale`.
        params: Vec<DevVec>,
        /// bf16: the weights as the model reads them (empty in f32, where it reads `params`).
        work: Vec<DevVec>,
        /// In the backend's precision.
        grads: Vec<DevVec>,
        m: Vec<DevVec>,
        v: Vec<DevVec>,
        /// The device's state is the run's (false until the host's is uploaded, and again
        /// after the host's changes: a restore, loaded weights).
        current: bool,
        /// The gradient norm's per-block partial sums, `NORM_PARTS` per tensor.
        partials: DevVec,
        /// The step's scalars on the device: the sum of squares and the norm (f64 each,
        /// floats 0..2 and 2..4), the clipping factor (float 4).
        scalars: DevVec,
        shards: Vec<BucketShard>,
        /// Data parallelism over devices (`None`: one rank).
        group: Option<Group>,
        /// Tensor (and sequence) parallelism: the group's collectives (`None`: tp = 1).
        tp: Option<Box<dyn DeviceComm>>,
        /// Whether this rank counts its replicated tensors in the gradient norm (tp rank 0).
        counts_replicated: bool,
        /// Pipeline parallelism (`None`: one stage).
        pipe: Option<DevicePipe>,
    }

    /// A pipeline stage's device state: its chunks' saved-activation sets, free and per
    /// micro-batch in flight (as the host's `PipeState`), and the first and last stages'
    /// collectives for the tied embedding.
    struct DevicePipe {
        chunks: Vec<Chunk>,
        free: Vec<Vec<Saved<Cuda>>>,
        live: std::collections::HashMap<(usize, usize), Saved<Cuda>>,
        ends: Option<Box<dyn DeviceComm>>,
        /// The pipeline's stages (the gradient norm's sum).
        stages: Option<Box<dyn DeviceComm>>,
        /// This stage is not the first: its copy of a tied embedding is not counted.
        later_stage: bool,
    }

    /// The model's [`Driver`] on a device: whole buckets lent as they are; tensor
    /// parallelism's reductions and sequence parallelism's gathers and scatters by the
    /// tp group's device collectives.
    struct OnDevice<'a> {
        be: &'a Cuda,
        params: &'a [DevVec],
        grads: Option<&'a mut [DevVec]>,
        tp: Option<&'a dyn DeviceComm>,
        /// ZeRO 2-3: buckets are gathered (3) and gradients reduce-scattered per
        /// micro-batch into the group's shards.
        group: Option<&'a mut Group>,
        shards: &'a [BucketShard],
    }

    impl OnDevice<'_> {
        fn tp(&self) -> Result<&dyn DeviceComm> {
            self.tp.ok_or_else(|| EngineError::Invalid("a tensor-parallel collective without a tp group".into()))
        }
    }

    impl OnDevice<'_> {
        fn zero(&self) -> u8 {
            self.group.as_ref().map_or(0, |g| g.zero)
        }
    }

    impl<'a> Driver<Cuda> for OnDevice<'a> {
        type Error = EngineError;
        type Params = Lent<'a>;
        type Grads = DevVec;
        fn acquire(&mut self, b: usize) -> Result<Lent<'a>> {
            let mine: &'a DevBuf = &self.params[b];
            match self.group.as_deref() {
                Some(g) if g.zero == 3 => {
                    // Every rank's block, in rank order: the whole (padded) bucket.
                    let mut whole = self.be.zeros(self.shards[b].padded(g.size));
                    g.comm.all_gather(mine, &mut whole).map_err(comm_err)?;
                    Ok(Lent::Gathered(whole))
                }
                _ => Ok(Lent::Held(mine)),
            }
        }
        fn release(&mut self, _b: usize, _p: Lent<'a>) {}
        fn grad(&mut self, b: usize) -> Result<DevVec> {
            if self.zero() >= 2 {
                // A zeroed whole bucket for this micro-batch; reduced and freed in grad_done.
                let dp = self.group.as_ref().map_or(1, |g| g.size);
                return Ok(self.be.zeros(self.shards[b].padded(dp)));
            }
            let grads = self.grads.as_deref_mut().ok_or_else(|| EngineError::Invalid("gradients requested in a forward-only pass".into()))?;
            Ok(std::mem::replace(&mut grads[b], self.be.zeros(0)))
        }
        fn grad_done(&mut self, b: usize, g: DevVec) -> Result<()> {
            if let Some(grp) = self.group.as_deref_mut().filter(|g| g.zero >= 2) {
                let mut block = self.be.zeros(self.shards[b].shard);
                grp.comm.reduce_scatter_sum(&g, &mut block).map_err(comm_err)?;
                self.be.add_inplace(&mut grp.gshard[b], &block);
                return Ok(());
            }
            let grads = self.grads.as_deref_mut().ok_or_else(|| EngineError::Invalid("gradients returned in a forward-only pass".into()))?;
            grads[b] = g;
            Ok(())
        }
        fn tp_reduce(&mut self, x: &mut DevBuf, op: TpReduce) -> Result<()> {
            let op = match op {
                TpReduce::Sum => comm::ReduceOp::Sum,
                TpReduce::Max => comm::ReduceOp::Max,
            };
            self.tp()?.all_reduce(x, op).map_err(comm_err)
        }
        fn tp_all_gather(&mut self, shard: &DevBuf, full: &mut DevBuf) -> Result<()> {
            self.tp()?.all_gather(shard, full).map_err(comm_err)
        }
        fn tp_reduce_scatter(&mut self, full: &DevBuf, shard: &mut DevBuf) -> Result<()> {
            self.tp()?.reduce_scatter_sum(full, shard).map_err(comm_err)
        }
    }

    fn comm_err(e: String) -> EngineError {
        EngineError::Invalid(format!("device collective: {e}"))
    }

    /// Device `index` counted from the base `train.device` names: `cuda-emu` /
    /// `cuda-emu:N` / `cuda` / `cuda:N` give N + index (one device per rank).
    fn rank_device(device: &str, index: usize) -> Result<String> {
        let base = config::device_ordinal(device).map_err(EngineError::Invalid)?.unwrap_or(0);
        Ok(if cuda_kernels::device::parse_emu(device).is_some() { format!("cuda-emu:{}", base + index) } else { format!("cuda:{}", base + index) })
    }

    /// How long an NCCL collective may take before the communicator is aborted.
    const NCCL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

    /// Device collectives over the ranks of `over` (the emulator's through `over` itself).
    fn device_comm(be: &Cuda, over: &Arc<dyn comm::Communicator>) -> Result<Box<dyn DeviceComm>> {
        if cuda_kernels::device::parse_emu(&be.name()).is_some() {
            Ok(Box::new(cuda_kernels::dist::EmuComm::new(Arc::clone(over), be).map_err(comm_err)?))
        } else {
            nccl_comm(be, &**over, NCCL_TIMEOUT)
        }
    }

    fn open_group(be: &Cuda, rank: &crate::rank::Rank, zero: u8, shards: &[BucketShard]) -> Result<Option<Group>> {
        if rank.dp == 1 {
            return Ok(None);
        }
        let comm = device_comm(be, &rank.comm)?;
        let gshard = if zero >= 1 { shards.iter().map(|s| be.zeros(s.shard)).collect() } else { Vec::new() };
        let mine = if zero == 1 || zero == 2 { shards.iter().map(|s| be.zeros_as(s.shard, Dtype::F32)).collect() } else { Vec::new() };
        Ok(Some(Group { comm, rank: rank.rank, size: rank.dp, zero, gshard, mine }))
    }

    #[cfg(feature = "nccl")]
    fn nccl_comm(be: &Cuda, bootstrap: &dyn comm::Communicator, timeout: std::time::Duration) -> Result<Box<dyn DeviceComm>> {
        let ordinal = config::device_ordinal(&be.name()).map_err(EngineError::Invalid)?.unwrap_or(0);
        Ok(Box::new(cuda_kernels::dist::NcclDeviceComm::new(bootstrap, be, ordinal, timeout).map_err(comm_err)?))
    }

    #[cfg(not(feature = "nccl"))]
    fn nccl_comm(be: &Cuda, _bootstrap: &dyn comm::Communicator, _timeout: std::time::Duration) -> Result<Box<dyn DeviceComm>> {
        Err(EngineError::Invalid(format!(
            "data or tensor parallelism over GPUs ({}) needs NCCL: build with --features cuda,nccl (the emulated cuda-emu devices need no NCCL)",
            be.name()
        )))
    }

    const NORM_PARTS: usize = 64;

    impl GpuState {
        /// The device of `rank` (its `gpu_index` counted from `train.device`), with the
        /// model, its activations and the optimizer state as the host holds them: whole
        /// (padded) buckets of masters and gradients, moments whole at ZeRO 0 and this
        /// rank's shard at ZeRO 1.
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn new(
            cfg: &config::ResolvedConfig,
            global: &ModelSpec,
            (b, t): (usize, usize),
            recompute: bool,
            selective: bool,
            rank: &crate::rank::Rank,
            shards: &[BucketShard],
            chunks: &[Chunk],
        ) -> Result<GpuState> {
            let (device, zero, dp) = (&cfg.raw.train.device, cfg.raw.parallel.zero, rank.dp);
            let name = rank_device(device, rank.gpu_index)?;
            let be = Cuda::open(&name).map_err(|e| EngineError::Invalid(format!("train.device = \"{device}\" (rank {}: {name}): {e}", rank.world_rank())))?;
            let be = be.with_dtype(if cfg.raw.train.dtype == "bf16" { Dtype::Bf16 } else { Dtype::F32 });
            let model = if rank.tp > 1 {
                Model::tensor_parallel(be.clone(), global, rank.tp, rank.tp_rank).map_err(EngineError::Invalid)?
            } else {
                Model::with_backend(be.clone(), global.clone())
            };
            let sp = if cfg.raw.parallel.sp && rank.tp > 1 { rank.tp } else { 1 };
            let layers: Vec<_> = chunks.iter().map(|c| c.layers.clone()).collect();
            let has_head = chunks.iter().any(|c| c.last);
            let acts = Activations::pipeline(&be, &model.spec, b, t, recompute, sp, &layers, has_head);
            let mut acts = if selective { acts.recompute_attention(&be) } else { acts };
            let pipe = match &rank.pipe {
                Some(links) if rank.pp > 1 => {
                    let free = chunks.iter().map(|c| vec![acts.take_saved(&be, c.layers.clone(), c.first)]).collect();
                    let ends = match &links.ends {
                        Some(c) if model.tied() => Some(device_comm(&be, c)?),
                        _ => None,
                    };
                    let stages = Some(device_comm(&be, &links.group)?);
                    Some(DevicePipe { chunks: chunks.to_vec(), free, live: Default::default(), ends, stages, later_stage: rank.pp_rank > 0 })
                }
                _ => None,
            };
            let whole = |dt| shards.iter().map(|s| be.zeros_as(s.padded(dp), dt)).collect::<Vec<_>>();
            let part = |dt| shards.iter().map(|s| be.zeros_as(s.shard, dt)).collect::<Vec<_>>();
            // As the host holds them: ZeRO 3 shards the masters (and their bf16 copy),
            // 1-3 the moments; 2-3 keep no whole gradient (a bucket's lives from its
            // backward to its reduce-scatter).
            let held = |dt| if zero == 3 && dp > 1 { part(dt) } else { whole(dt) };
            let params = held(Dtype::F32);
            let moment = || if zero == 0 { whole(Dtype::F32) } else { part(Dtype::F32) };
            let (m, v) = (moment(), moment());
            let grads = if zero >= 2 && dp > 1 { shards.iter().map(|_| be.zeros(0)).collect() } else { whole(be.dtype) };
            let work = if be.dtype == Dtype::F32 { Vec::new() } else { held(be.dtype) };
            // One slot of partial sums per tensor; tensors not counted leave theirs at zero.
            let tensors: usize = model.layout.buckets.iter().map(|k| k.tensors.len()).sum();
            let partials = be.zeros_as(NORM_PARTS * tensors, Dtype::F32);
            let group = open_group(&be, rank, zero, shards)?;
            let tp = match &rank.tp_comm {
                Some(c) if rank.tp > 1 => Some(device_comm(&be, c)?),
                _ => None,
            };
            let counts_replicated = rank.tp_rank == 0;
            let scalars = be.zeros_as(6, Dtype::F32);
            Ok(GpuState { be, model, acts, params, work, grads, m, v, current: false, partials, scalars, shards: shards.to_vec(), group, tp, counts_replicated, pipe })
        }

        /// The host's parameters and moments (whole buckets, maybe padded) onto the
        /// device, unless the device's are already the run's.
        pub(crate) fn ensure(&mut self, params: &[Vec<f32>], m: &[Vec<f32>], v: &[Vec<f32>]) {
            if self.current {
                return;
            }
            for (dev, host) in [(&mut self.params, params), (&mut self.m, m), (&mut self.v, v)] {
                for (d, h) in dev.iter_mut().zip(host) {
                    let n = d.len();
                    self.be.copy_from_host(d, &h[..n]);
                }
            }
            self.refresh_work();
            self.current = true;
        }

        /// The host's copies changed: the next step uploads them.
        pub(crate) fn stale(&mut self) {
            self.current = false;
        }

        /// The device's parameters and moments into the host's buckets.
        pub(crate) fn pull(&self, params: &mut [Vec<f32>], m: &mut [Vec<f32>], v: &mut [Vec<f32>]) {
            if !self.current {
                return;
            }
            for (dev, host) in [(&self.params, params), (&self.m, m), (&self.v, v)] {
                for (d, h) in dev.iter().zip(host.iter_mut()) {
                    let n = d.len();
                    self.be.to_host(d, &mut h[..n]);
                }
            }
        }

        /// The step's gradient reduction over the data-parallel group (ZeRO 0: sum
        /// all-reduce of each bucket; ZeRO 1: sum reduce-scatter into this rank's block;
        /// 2-3 reduced each micro-batch already), then global-norm clipping and AdamW on
        /// what this rank updates, in the host optimizer's order and form, and at ZeRO 1-2
        /// the all-gather of the updated masters. The norm, the clipping factor and the
        /// numerics guard (a non-finite norm updates nothing) stay on the device; the norm
        /// is read back once the step is queued, for the log. Returns the pre-clip norm.
        pub(crate) fn optimizer_step(
            &mut self,
            layout: &model::Layout,
            adamw: &crate::optim::AdamW,
            lr: f32,
            t: u64,
            max_norm: f64,
        ) -> Result<f64> {
            let dims = |blocks: usize| Dims { grid: (blocks as u32, 1, 1), block: (256, 1, 1), shared: 0 };
            let sharded = self.group.as_ref().is_some_and(|g| g.zero >= 1);
            if let Some(g) = self.group.as_mut().filter(|g| g.zero <= 1) {
                for (b, grad) in self.grads.iter_mut().enumerate() {
                    if self.shards[b].numel == 0 {
                        continue;
                    }
                    if g.zero == 0 {
                        g.comm.all_reduce(grad, comm::ReduceOp::Sum).map_err(comm_err)?;
                    } else {
                        g.comm.reduce_scatter_sum(grad, &mut g.gshard[b]).map_err(comm_err)?;
                    }
                }
            }
            // The gradients this rank updates from, and their first element's index in
            // bucket coordinates.
            let r = self.group.as_ref().map_or(0, |g| g.rank);
            let held = |b: usize| -> (std::ops::Range<usize>, usize) {
                let s = self.shards[b];
                if sharded {
                    (s.real(r), s.owned(r).start)
                } else {
                    (0..s.numel, 0)
                }
            };
            // Every tensor's partial sums into one buffer, then one copy to the host. Under
            // tensor parallelism a tensor replicated across the group (norms, row-parallel
            // biases) counts on tp rank 0 only, as on the CPU.
            let mut slot = 0;
            for (b, bucket) in layout.buckets.iter().enumerate() {
                let (real, base) = held(b);
                for spec in &bucket.tensors {
                    let at = self.partials.slice(slot * NORM_PARTS..(slot + 1) * NORM_PARTS).arg();
                    slot += 1;
                    let tr = spec.range();
                    let (lo, hi) = (tr.start.max(real.start), tr.end.min(real.end));
                    let replica = self.tp.is_some() && spec.split.is_none() && !self.counts_replicated;
                    // A later pipeline stage's copy of the tied embedding: the first stage's counts.
                    let tied_copy = b == model::layout::EMBED && self.pipe.as_ref().is_some_and(|p| p.later_stage);
                    if lo >= hi || replica || tied_copy {
                        continue;
                    }
                    let g = if sharded { &self.group.as_ref().expect("a group").gshard[b] } else { &self.grads[b] };
                    let g = g.slice(lo - base..hi - base);
                    self.be.launch("sum_squares_partial", dims(NORM_PARTS), &[&at, &g.arg(), &(g.len() as i64)]);
                }
            }
            // The norm and the clipping factor stay on the device: the partials summed in
            // order in f64, then (as the host's `sum_f64`) over the groups whose ranks hold
            // different parts, in rank order: a ZeRO 1-3 dp group's shards, the tp group's
            // parts, the pipeline's stages. All-reduced gradients are the same on every
            // rank of a ZeRO-0 dp group.
            let one = Dims { grid: (1, 1, 1), block: (32, 1, 1), shared: 0 };
            let (sumsq, norm_at, clip_at) = (self.scalars.slice(0..2).arg(), self.scalars.slice(2..4).arg(), self.scalars.slice(4..5).arg());
            self.be.launch("norm_total", one, &[&sumsq, &self.partials.arg(), &(self.partials.len() as i64)]);
            let groups = [self.group.as_ref().filter(|_| sharded).map(|g| &*g.comm), self.tp.as_deref(), self.pipe.as_ref().and_then(|p| p.stages.as_deref())];
            for comm in groups.into_iter().flatten() {
                let mut gathered = self.be.zeros_as(2 * comm.size(), Dtype::F32);
                comm.all_gather(self.scalars.slice(0..2), &mut gathered).map_err(comm_err)?;
                self.be.launch("norm_ranks", one, &[&sumsq, &gathered.arg(), &(comm.size() as i64)]);
            }
            self.be.launch("norm_clip", one, &[&clip_at, &norm_at, &sumsq, &max_norm]);
            // The host's bias corrections, in f64 (kernels::adamw_step's form).
            let tt = t.min(i32::MAX as u64) as i32;
            let step = (lr as f64 / (1.0 - (adamw.beta1 as f64).powi(tt))) as f32;
            let bc2_sqrt = (1.0 - (adamw.beta2 as f64).powi(tt)).sqrt() as f32;
            for (b, bucket) in layout.buckets.iter().enumerate() {
                let (real, base) = held(b);
                let g = if sharded { &self.group.as_ref().expect("a group").gshard[b] } else { &self.grads[b] };
                // Moments are indexed from `base` at ZeRO 1-3 (this rank's block), from 0
                // otherwise; the masters from `base` at ZeRO 3.
                let mbase = if sharded { base } else { 0 };
                let pbase = if self.zero3() { base } else { 0 };
                for spec in &bucket.tensors {
                    let tr = spec.range();
                    let (lo, hi) = (tr.start.max(real.start), tr.end.min(real.end));
                    if lo >= hi {
                        continue;
                    }
                    let p = self.params[b].slice(lo - pbase..hi - pbase).arg();
                    // The bf16 copy is written here unless a gather rebuilds it (ZeRO 1-2).
                    let copy = self.work.get(b).map_or(0, |w| if sharded && !self.zero3() { 0 } else { w.slice(lo - pbase..hi - pbase).addr() });
                    let gi = g.slice(lo - base..hi - base).arg();
                    let (mi, vi) = (self.m[b].slice(lo - mbase..hi - mbase).arg(), self.v[b].slice(lo - mbase..hi - mbase).arg());
                    let decay = 1.0 - lr * adamw.decay_for(spec.kind);
                    self.be.launch(
                        "adamw",
                        dims((hi - lo).div_ceil(256).min(4096)),
                        &[&p, &copy, &gi, &mi, &vi, &((hi - lo) as i64), &clip_at, &step, &adamw.beta1, &adamw.beta2, &adamw.eps, &decay, &bc2_sqrt],
                    );
                }
            }
            if sharded && !self.zero3() {
                // Skipped steps left the masters as they were: gathering them is harmless.
                self.gather_masters()?;
            }
            // The norm, for the log and the numerics guard's count, read once the step's
            // work is queued.
            let mut h = [0.0f32; 2];
            self.be.to_host(self.scalars.slice(2..4), &mut h);
            Ok(f64::from_bits(h[0].to_bits() as u64 | ((h[1].to_bits() as u64) << 32)))
        }

        /// ZeRO 3 over a group: masters sharded, gathered where used.
        fn zero3(&self) -> bool {
            self.group.as_ref().is_some_and(|g| g.zero == 3)
        }

        /// ZeRO 1: every rank's updated block of the masters into every rank's whole
        /// buckets (the bf16 copy then follows from them).
        fn gather_masters(&mut self) -> Result<()> {
            let g = self.group.as_mut().expect("a group");
            for (b, p) in self.params.iter_mut().enumerate() {
                let s = self.shards[b];
                if s.numel == 0 {
                    continue;
                }
                let owned = s.owned(g.rank);
                self.be.copy_device(&mut g.mine[b], p.slice(owned));
                g.comm.all_gather(&g.mine[b], p).map_err(comm_err)?;
            }
            self.refresh_work();
            Ok(())
        }

        /// The bf16 copy from the masters, rounded as the AdamW kernel rounds.
        fn refresh_work(&mut self) {
            for (w, p) in self.work.iter_mut().zip(&self.params) {
                if p.len() > 0 {
                    let dims = Dims { grid: (p.len().div_ceil(256).min(4096) as u32, 1, 1), block: (256, 1, 1), shared: 0 };
                    self.be.launch("f32_to_bf16", dims, &[&w.arg(), &p.arg(), &(p.len() as i64)]);
                }
            }
        }

        /// The model's driver over this rank's weights and gradients.
        fn driver(&mut self, grads: bool) -> (OnDevice<'_>, &mut Activations<Cuda>, &Model<Cuda>) {
            let params = if self.work.is_empty() { &self.params } else { &self.work };
            let grads = if grads { Some(&mut self.grads[..]) } else { None };
            let d = OnDevice { be: &self.be, params, grads, tp: self.tp.as_deref(), group: self.group.as_mut(), shards: &self.shards };
            (d, &mut self.acts, &self.model)
        }

        fn pipe_state(&mut self) -> Result<&mut DevicePipe> {
            self.pipe.as_mut().ok_or_else(|| EngineError::Invalid("a pipeline pass without pipeline stages".into()))
        }

        /// A saved-activation set of local chunk `k` (micro-batch `mb`'s, or a free one)
        /// into the working activations; the working ones come back in its place.
        fn swap_in(&mut self, k: usize, mb: Option<usize>) -> Result<Saved<Cuda>> {
            let be = self.be.clone();
            let pipe = self.pipe_state()?;
            let mut set = match mb {
                Some(mb) => pipe.live.remove(&(k, mb)).ok_or_else(|| EngineError::Invalid(format!("no activations of micro-batch {mb} on chunk {k}")))?,
                None => match pipe.free[k].pop() {
                    Some(s) => s,
                    // Another micro-batch in flight: shaped like one that is.
                    None => pipe
                        .live
                        .iter()
                        .find(|((kk, _), _)| *kk == k)
                        .map(|(_, s)| s.like(&be))
                        .ok_or_else(|| EngineError::Invalid(format!("pipeline chunk {k} has no activations")))?,
                },
            };
            self.acts.swap_saved(&mut set);
            Ok(set)
        }

        fn to_host_vec(&self, v: &DevBuf) -> Vec<f32> {
            let mut h = vec![0.0; v.len()];
            self.be.to_host(v, &mut h);
            h
        }

        /// Local chunk `k`'s forward of micro-batch `mb` (`input` from the previous stage;
        /// none on the first chunk); returns what goes to the next stage.
        pub(crate) fn pipe_forward(&mut self, k: usize, mb: usize, x: &[u32], input: Option<&[f32]>) -> Result<Option<Vec<f32>>> {
            let chunk = self.pipe_state()?.chunks[k].clone();
            let mut set = self.swap_in(k, None)?;
            if let Some(input) = input {
                self.be.copy_from_host(&mut self.acts.resid[chunk.layers.start], input);
            }
            let (mut d, acts, model) = self.driver(false);
            let r = model.chunk_forward(&mut d, acts, &chunk, x);
            let out = (!chunk.last).then(|| self.to_host_vec(&self.acts.resid[chunk.layers.end]));
            self.acts.swap_saved(&mut set);
            self.pipe_state()?.live.insert((k, mb), set);
            r.map(|_| out)
        }

        /// Local chunk `k`'s backward of micro-batch `mb` (`dres` from the next stage;
        /// none on the last chunk); returns its loss and what goes back.
        pub(crate) fn pipe_backward(&mut self, k: usize, mb: usize, y: &[u32], dres: Option<&[f32]>, scale: f32) -> Result<(f64, Option<Vec<f32>>)> {
            let chunk = self.pipe_state()?.chunks[k].clone();
            let mut set = self.swap_in(k, Some(mb))?;
            if let Some(g) = dres {
                self.be.copy_from_host(&mut self.acts.dres, g);
            }
            let (mut d, acts, model) = self.driver(true);
            let r = model.chunk_backward(&mut d, acts, &chunk, y, scale);
            let back = (!chunk.first).then(|| self.to_host_vec(&self.acts.dres));
            self.acts.swap_saved(&mut set);
            self.pipe_state()?.free[k].push(set);
            r.map(|l| (l, back))
        }

        /// Local chunk `k`'s forward for evaluation, and its loss on the last chunk.
        pub(crate) fn pipe_eval(&mut self, k: usize, x: &[u32], y: &[u32], input: Option<&[f32]>) -> Result<(f64, Option<Vec<f32>>)> {
            let chunk = self.pipe_state()?.chunks[k].clone();
            let mut set = self.swap_in(k, None)?;
            if let Some(input) = input {
                self.be.copy_from_host(&mut self.acts.resid[chunk.layers.start], input);
            }
            let (mut d, acts, model) = self.driver(false);
            let r = model.chunk_forward(&mut d, acts, &chunk, x).and_then(|_| if chunk.last { model.chunk_loss(&mut d, acts, y) } else { Ok(0.0) });
            let out = (!chunk.last).then(|| self.to_host_vec(&self.acts.resid[chunk.layers.end]));
            self.acts.swap_saved(&mut set);
            self.pipe_state()?.free[k].push(set);
            r.map(|l| (l, out))
        }

        /// The tied embedding's two copies (first and last stage) take the sum of their
        /// gradients, so both take the same update.
        pub(crate) fn sum_tied_embedding(&mut self) -> Result<()> {
            let Some(ends) = self.pipe.as_ref().and_then(|p| p.ends.as_deref()) else { return Ok(()) };
            let e = model::layout::EMBED;
            match self.group.as_mut().filter(|g| g.zero >= 2) {
                // ZeRO 2-3 reduced the gradient into this rank's block already; the ends'
                // ranks of one pipeline hold the same block.
                Some(g) => ends.all_reduce(&mut g.gshard[e], comm::ReduceOp::Sum).map_err(comm_err),
                // Whole gradients (ZeRO 0-1 reduce them later: the sums commute).
                None => {
                    let n = self.shards[e].numel;
                    ends.all_reduce(self.grads[e].slice_mut(0..n), comm::ReduceOp::Sum).map_err(comm_err)
                }
            }
        }

        pub(crate) fn zero_grads(&mut self) {
            for g in &mut self.grads {
                self.be.fill_zero(g);
            }
            if let Some(grp) = self.group.as_mut().filter(|g| g.zero >= 2) {
                for g in &mut grp.gshard {
                    self.be.fill_zero(g);
                }
            }
        }

        /// One micro-batch's forward and backward; gradients accumulate on the device.
        pub(crate) fn micro(&mut self, x: &[u32], y: &[u32], scale: f32) -> Result<f64> {
            let (mut d, acts, model) = self.driver(true);
            model.train_micro(&mut d, acts, x, y, scale)
        }

        pub(crate) fn loss(&mut self, x: &[u32], y: &[u32]) -> Result<f64> {
            let (mut d, acts, model) = self.driver(false);
            model.eval_micro(&mut d, acts, x, y)
        }

        /// The device's name, and its bytes allocated now and at most so far.
        pub(crate) fn memory(&self) -> (String, usize, usize) {
            let (now, peak) = self.be.memory();
            (self.be.name(), now, peak)
        }

        pub(crate) fn recompute(&self) -> (bool, bool) {
            (self.acts.recompute, self.acts.selective)
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use model::ModelSpec;

    use crate::error::{EngineError, Result};

    /// No GPU in this build: no value of this type exists.
    pub(crate) enum GpuState {}

    impl GpuState {
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn new(
            cfg: &config::ResolvedConfig,
            _spec: &ModelSpec,
            _bt: (usize, usize),
            _recompute: bool,
            _selective: bool,
            _rank: &crate::rank::Rank,
            _shards: &[crate::shard::BucketShard],
            _chunks: &[model::Chunk],
        ) -> Result<GpuState> {
            let device = &cfg.raw.train.device;
            Err(EngineError::Invalid(format!("train.device = \"{device}\" needs a build with the GPU backend (which holds the emulated device too): cargo build --release --features cuda")))
        }
        pub(crate) fn ensure(&mut self, _p: &[Vec<f32>], _m: &[Vec<f32>], _v: &[Vec<f32>]) {
            match *self {}
        }
        pub(crate) fn stale(&mut self) {
            match *self {}
        }
        pub(crate) fn pull(&self, _p: &mut [Vec<f32>], _m: &mut [Vec<f32>], _v: &mut [Vec<f32>]) {
            match *self {}
        }
        pub(crate) fn optimizer_step(
            &mut self,
            _l: &model::Layout,
            _a: &crate::optim::AdamW,
            _lr: f32,
            _t: u64,
            _max: f64,
        ) -> Result<f64> {
            match *self {}
        }
        pub(crate) fn zero_grads(&mut self) {
            match *self {}
        }
        pub(crate) fn micro(&mut self, _x: &[u32], _y: &[u32], _scale: f32) -> Result<f64> {
            match *self {}
        }
        pub(crate) fn loss(&mut self, _x: &[u32], _y: &[u32]) -> Result<f64> {
            match *self {}
        }
        pub(crate) fn memory(&self) -> (String, usize, usize) {
            match *self {}
        }
        pub(crate) fn recompute(&self) -> (bool, bool) {
            match *self {}
        }
        pub(crate) fn pipe_forward(&mut self, _k: usize, _mb: usize, _x: &[u32], _i: Option<&[f32]>) -> Result<Option<Vec<f32>>> {
            match *self {}
        }
        pub(crate) fn pipe_backward(&mut self, _k: usize, _mb: usize, _y: &[u32], _d: Option<&[f32]>, _s: f32) -> Result<(f64, Option<Vec<f32>>)> {
            match *self {}
        }
        pub(crate) fn pipe_eval(&mut self, _k: usize, _x: &[u32], _y: &[u32], _i: Option<&[f32]>) -> Result<(f64, Option<Vec<f32>>)> {
            match *self {}
        }
        pub(crate) fn sum_tied_embedding(&mut self) -> Result<()> {
            match *self {}
        }
    }
}

pub(crate) use imp::GpuState;

/// The GPU a run asks for (`train.device`), if any: every layout runs there (one device
/// per rank; data parallelism with ZeRO 0-3, tensor, sequence and pipeline parallelism).
pub(crate) fn requested(cfg: &config::ResolvedConfig) -> Result<Option<&str>> {
    let Some(_) = config::device_ordinal(&cfg.raw.train.device).map_err(EngineError::Invalid)? else { return Ok(None) };
    Ok(Some(&cfg.raw.train.device))
}

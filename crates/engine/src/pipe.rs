//! Pipeline parallelism: which layers a pipeline rank runs, and in which order it runs
//! the forward and backward passes of a step's micro-batches (the schedule).
//!
//! The model's `L` blocks are cut into `pp * v` chunks of consecutive layers (as even as
//! possible); chunk `c` runs on pipeline rank `c % pp`, so with `v > 1` (the interleaved
//! schedule) a rank holds `v` chunks spaced `pp` apart. The first chunk also runs the
//! embedding, the last the head.
//!
//! Schedules (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on
//! GPU Clusters Using Megatron-LM", section 2.2):
//!
//! * 1F1B (PipeDream-Flush): rank `p` runs `min(pp - p - 1, m)` forwards to fill the
//!   pipeline, then alternates one forward and one backward, then drains the remaining
//!   backwards; at most `pp - p` micro-batches are in flight on rank `p`.
//! * Interleaved 1F1B: forwards visit the rank's chunks in groups of `pp` micro-batches
//!   (chunk 0 for micro-batches 0..pp, chunk 1 for the same, ...), backwards the chunks
//!   in reverse; the warm-up is `2 (pp - p - 1) + (v - 1) pp` forwards. The bubble is
//!   `(pp - 1) / (v m)` of the ideal step instead of `(pp - 1) / m`.
//!
//! Every rank runs backwards of a chunk in micro-batch order, so gradients accumulate in
//! the same order as on one rank, and sends never wait for their receiver
//! (they run on a background thread), so the schedules cannot deadlock (checked for
//! many shapes by [`simulate`] in the tests).

use std::collections::HashMap;
use std::ops::Range;
use std::time::Instant;

use comm::Handle;
use config::PipeSchedule;
use model::{Activations, Chunk, Cpu, Gpt, Saved};

use crate::error::{EngineError, Result};
use crate::step::Prefetch;
use crate::trainer::{StepTimes, Trainer};

const EMBED: usize = model::layout::EMBED;

/// One pass of a schedule: the forward or backward of local chunk `k` for micro-batch `m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PipeOp {
    Fwd { k: usize, m: usize },
    Bwd { k: usize, m: usize },
}

/// The blocks of chunk `c` of `chunks` over `layers` blocks (the first `layers % chunks`
/// chunks get one more).
pub fn chunk_layers(layers: usize, chunks: usize, c: usize) -> Range<usize> {
    let (start, len) = comm::even_block(layers, chunks, c);
    start..start + len
}

/// The global chunk index of rank `p`'s local chunk `k`.
pub fn global_chunk(pp: usize, p: usize, k: usize) -> usize {
    k * pp + p
}

/// The passes pipeline rank `p` of `pp` runs in one step of `m` micro-batches, with `v`
/// chunks per rank, in order.
pub fn ops(schedule: PipeSchedule, pp: usize, v: usize, m: usize, p: usize) -> Vec<PipeOp> {
    let total = m * v;
    // The i-th forward (backward) of this rank: which chunk and micro-batch.
    let nth = |i: usize, backward: bool| {
        let (k, m) = match schedule {
            PipeSchedule::OneFOneB => (0, i),
            PipeSchedule::Interleaved => {
                let k = (i / pp) % v;
                ((if backward { v - 1 - k } else { k }), (i / (pp * v)) * pp + i % pp)
            }
        };
        if backward { PipeOp::Bwd { k, m } } else { PipeOp::Fwd { k, m } }
    };
    let fwd = |i| nth(i, false);
    let bwd = |i| nth(i, true);
    let warmup = match schedule {
        PipeSchedule::OneFOneB => (pp - p - 1).min(total),
        // With as many micro-batches as stages, Megatron-LM runs every forward first.
        PipeSchedule::Interleaved if m == pp => total,
        PipeSchedule::Interleaved => (2 * (pp - p - 1) + (v - 1) * pp).min(total),
    };
    let mut out = Vec::with_capacity(2 * total);
    out.extend((0..warmup).map(&fwd));
    for i in 0..total - warmup {
        out.push(fwd(warmup + i));
        out.push(bwd(i));
    }
    out.extend((total - warmup..total).map(&bwd));
    out
}

/// What [`simulate`] finds for a pipeline: every rank's idle fraction of the step, the
/// most micro-batches any rank holds at once (per chunk summed), and the step's length.
#[derive(Clone, Debug, PartialEq)]
pub struct Simulated {
    pub idle: Vec<f64>,
    pub max_in_flight: Vec<usize>,
    /// Per rank and local chunk: the most micro-batches of that chunk held at once.
    pub max_in_flight_chunk: Vec<Vec<usize>>,
    pub makespan: f64,
}

/// Runs the schedules of all `pp` ranks with a forward costing `f` and a backward `b`
/// per chunk, sends free and never blocking, receives waiting for their message.
/// Errors when the ranks deadlock (some rank waits for a message nobody will send).
pub fn simulate(schedule: PipeSchedule, pp: usize, v: usize, m: usize, f: f64, b: f64) -> std::result::Result<Simulated, String> {
    use std::collections::HashMap;
    let chunks = pp * v;
    let lists: Vec<Vec<PipeOp>> = (0..pp).map(|p| ops(schedule, pp, v, m, p)).collect();
    // When each (global chunk, micro-batch, is backward) pass finished.
    let mut done: HashMap<(usize, usize, bool), f64> = HashMap::new();
    let mut pos = vec![0usize; pp];
    let mut clock = vec![0.0f64; pp];
    let mut busy = vec![0.0f64; pp];
    let mut held = vec![0usize; pp];
    let mut max_held = vec![0usize; pp];
    let mut held_chunk = vec![vec![0usize; v]; pp];
    let mut max_chunk = vec![vec![0usize; v]; pp];
    loop {
        let mut progressed = false;
        for p in 0..pp {
            while let Some(&op) = lists[p].get(pos[p]) {
                let (c, mb, back) = match op {
                    PipeOp::Fwd { k, m } => (global_chunk(pp, p, k), m, false),
                    PipeOp::Bwd { k, m } => (global_chunk(pp, p, k), m, true),
                };
                // The pass this one's input comes from.
                let needs = match (back, c) {
                    (false, 0) => None,
                    (false, c) => Some((c - 1, mb, false)),
                    (true, c) if c + 1 == chunks => Some((c, mb, false)),
                    (true, c) => Some((c + 1, mb, true)),
                };
                let ready = match needs {
                    None => 0.0,
                    Some(key) => match done.get(&key) {
                        Some(&t) => t,
                        None => break,
                    },
                };
                let cost = if back { b } else { f };
                clock[p] = clock[p].max(ready) + cost;
                busy[p] += cost;
                done.insert((c, mb, back), clock[p]);
                let k = c / pp;
                if back {
                    held[p] -= 1;
                    held_chunk[p][k] -= 1;
                } else {
                    held[p] += 1;
                    held_chunk[p][k] += 1;
                    max_held[p] = max_held[p].max(held[p]);
                    max_chunk[p][k] = max_chunk[p][k].max(held_chunk[p][k]);
                }
                pos[p] += 1;
                progressed = true;
            }
        }
        if (0..pp).all(|p| pos[p] == lists[p].len()) {
            break;
        }
        if !progressed {
            let stuck: Vec<String> = (0..pp).filter(|&p| pos[p] < lists[p].len()).map(|p| format!("rank {p} at {:?}", lists[p][pos[p]])).collect();
            return Err(format!("deadlock: {}", stuck.join(", ")));
        }
    }
    let makespan = clock.iter().cloned().fold(0.0, f64::max);
    let idle = busy.iter().map(|&w| 1.0 - w / makespan).collect();
    Ok(Simulated { idle, max_in_flight: max_held, max_in_flight_chunk: max_chunk, makespan })
}

/// Rank `p`'s chunks (in local order) of a `pp`-stage pipeline with `v` chunks per rank.
pub fn rank_chunks(spec: &model::ModelSpec, pp: usize, v: usize, p: usize) -> crate::Result<Vec<Chunk>> {
    let n = pp * v;
    if spec.layers < n {
        return Err(EngineError::Invalid(format!(
            "parallel.pp x parallel.virtual_stages = {pp} x {v} = {n} pipeline chunks need at least as many layers; the model has {} (model.n_layer)",
            spec.layers
        )));
    }
    Ok((0..v)
        .map(|k| {
            let c = global_chunk(pp, p, k);
            Chunk { layers: chunk_layers(spec.layers, n, c), first: c == 0, last: c + 1 == n }
        })
        .collect())
}

/// Which parameter buckets a rank running `chunks` holds: its blocks, the embedding
/// with the first chunk, the head with the last (and, with a tied head, a copy of the
/// embedding, whose gradient the two ends sum).
pub(crate) fn held_buckets(gpt: &Gpt, chunks: &[Chunk]) -> Vec<bool> {
    let mut held = vec![false; gpt.layout.buckets.len()];
    for c in chunks {
        for l in c.layers.clone() {
            held[model::Layout::block(l)] = true;
        }
        if c.first || (c.last && gpt.tied()) {
            held[EMBED] = true;
        }
        if c.last {
            held[gpt.layout.head()] = true;
        }
    }
    held
}

/// The stage that owns bucket `b` (writes it, counts it in the gradient norm): the
/// first for the embedding, the last for the head, the chunk's stage for a block.
pub(crate) fn owner_stage(gpt: &Gpt, pp: usize, v: usize, b: usize) -> usize {
    let n = pp * v;
    if b == EMBED {
        return 0;
    }
    if b == gpt.layout.head() {
        return (n - 1) % pp;
    }
    let l = b - model::Layout::block(0);
    (0..n).find(|&c| chunk_layers(gpt.spec.layers, n, c).contains(&l)).map_or(0, |c| c % pp)
}

/// A pipeline stage's running state: its chunks, the saved activations of the
/// micro-batches between their forward and backward, and the sends in flight.
pub(crate) struct PipeState {
    pub(crate) chunks: Vec<Chunk>,
    /// Per local chunk: saved-activation sets not in use.
    free: Vec<Vec<Saved>>,
    /// (local chunk, micro-batch) -> its saved activations.
    live: HashMap<(usize, usize), Saved>,
    sends: Vec<Handle<comm::Result<Vec<f32>>>>,
    /// With tensor parallelism (no sequence parallelism) a message carries this rank's
    /// 1/tp of the rows, gathered over the tp group on receipt: these floats of it.
    split: Option<Range<usize>>,
    recv_buf: Vec<f32>,
}

impl PipeState {
    /// `msg` floats per activation (B*T*C); `sp` > 1 when the residual stream already
    /// holds 1/sp of the rows.
    pub(crate) fn new(chunks: Vec<Chunk>, acts: &mut Activations, msg: usize, sp: usize, tp: usize, tp_rank: usize) -> PipeState {
        let free = chunks.iter().map(|c| vec![acts.take_saved(&Cpu, c.layers.clone(), c.first)]).collect();
        let split = (tp > 1 && sp == 1 && msg.is_multiple_of(tp)).then(|| {
            let n = msg / tp;
            tp_rank * n..(tp_rank + 1) * n
        });
        let recv_buf = vec![0.0; split.as_ref().map_or(0, |r| r.len())];
        PipeState { chunks, free, live: HashMap::new(), sends: Vec::new(), split, recv_buf }
    }

    /// A stage whose saved activations live elsewhere (on its device): only the links'
    /// state.
    pub(crate) fn without_saved(chunks: Vec<Chunk>, msg: usize, sp: usize, tp: usize, tp_rank: usize) -> PipeState {
        let free = chunks.iter().map(|_| Vec::new()).collect();
        let split = (tp > 1 && sp == 1 && msg.is_multiple_of(tp)).then(|| {
            let n = msg / tp;
            tp_rank * n..(tp_rank + 1) * n
        });
        let recv_buf = vec![0.0; split.as_ref().map_or(0, |r| r.len())];
        PipeState { chunks, free, live: HashMap::new(), sends: Vec::new(), split, recv_buf }
    }

    /// Saved-activation sets made so far, per local chunk: the most micro-batches the
    /// schedule has held at once.
    pub(crate) fn sets(&self) -> Vec<usize> {
        (0..self.chunks.len()).map(|k| self.free[k].len() + self.live.keys().filter(|(kk, _)| *kk == k).count()).collect()
    }

    /// Bytes of the saved-activation sets (free and in flight).
    pub(crate) fn bytes(&self) -> usize {
        self.free.iter().flatten().chain(self.live.values()).map(|s| s.bytes()).sum()
    }

    /// A saved-activation set for local chunk `k`.
    fn take(&mut self, k: usize) -> Result<Saved> {
        if let Some(s) = self.free[k].pop() {
            return Ok(s);
        }
        // Another micro-batch in flight: shaped like one that is.
        let like = self.live.iter().find(|((kk, _), _)| *kk == k).map(|(_, s)| s.like(&Cpu));
        like.ok_or_else(|| EngineError::Invalid(format!("pipeline chunk {k} has no activations")))
    }
}

/// A message's tag: chunk and micro-batch (checked on receipt).
fn tag(chunks: usize, c: usize, m: usize) -> u32 {
    ((m * chunks + c) % (1 << 15)) as u32
}

impl Trainer {
    fn links(&self) -> Result<&crate::rank::PipeLinks> {
        self.rank.pipe.as_ref().ok_or_else(|| EngineError::Invalid("a pipeline step without pipeline links".into()))
    }

    /// Sends `src` (or this tp rank's part of it) to the next stage (`grad = false`) or
    /// the previous one, on the link's background thread.
    fn pipe_send(&mut self, pipe: &mut PipeState, grad: bool, src: &[f32], tag: u32) -> Result<()> {
        let msg = match &pipe.split {
            Some(r) => &src[r.clone()],
            None => src,
        };
        let mut buf = self.pool.take(msg.len());
        buf.copy_from_slice(msg);
        let links = self.links()?;
        let link = if grad { &links.grad_out } else { &links.act_out };
        let link = link.as_ref().ok_or_else(|| EngineError::Invalid("no pipeline link to send on".into()))?;
        pipe.sends.push(link.submit(move |c| c.send((&buf[..]).into(), 1, tag).map(|_| buf)));
        Ok(())
    }

    /// Receives the previous stage's activation (`grad = false`) or the next stage's
    /// gradient into `dst`; returns the seconds spent waiting for it.
    fn pipe_recv(&self, pipe: &mut PipeState, grad: bool, dst: &mut [f32], tag: u32) -> Result<f64> {
        let links = self.links()?;
        let link = if grad { &links.grad_in } else { &links.act_in };
        let link = link.as_ref().ok_or_else(|| EngineError::Invalid("no pipeline link to receive on".into()))?;
        let t0 = Instant::now();
        if pipe.split.is_none() {
            link.recv(dst.into(), 0, tag)?;
            return Ok(t0.elapsed().as_secs_f64());
        }
        link.recv((&mut pipe.recv_buf[..]).into(), 0, tag)?;
        let waited = t0.elapsed().as_secs_f64();
        let tp = self.rank.tp_comm.as_ref().ok_or_else(|| EngineError::Invalid("a split pipeline message without a tp group".into()))?;
        tp.all_gather((&pipe.recv_buf[..]).into(), dst.into())?;
        Ok(waited)
    }

    /// Waits for this stage's sends; their buffers return to the pool.
    fn pipe_flush(&mut self, pipe: &mut PipeState) -> Result<()> {
        for h in pipe.sends.drain(..) {
            let buf = h.wait()??;
            self.pool.give(buf);
        }
        Ok(())
    }

    /// One step's forward and backward passes on this pipeline stage, in the
    /// schedule's order; gradients end where [`Trainer::optimizer_step`] expects them
    /// once [`Trainer::sum_tied_embedding`] has run.
    /// Returns the summed loss of the step's micro-batches (the last stage's; 0 elsewhere).
    /// On a device the passes run there (gpu.rs); the messages go through the same links.
    pub(crate) fn pipeline_step(&mut self, grad_scale: f32, times: &mut StepTimes) -> Result<f64> {
        self.with_pipe(|t, pipe| if t.gpu.is_some() { t.device_pipeline_ops(pipe, grad_scale, times) } else { t.pipeline_ops(pipe, grad_scale, times) })
    }

    /// Runs `f` on the pipeline state lent out of the trainer, then waits for the
    /// stage's sends; micro-batches a failed pass left in flight become free again.
    fn with_pipe<R>(&mut self, f: impl FnOnce(&mut Trainer, &mut PipeState) -> Result<R>) -> Result<R> {
        let mut pipe = self.pipe.take().ok_or_else(|| EngineError::Invalid("no pipeline state".into()))?;
        let res = f(self, &mut pipe);
        let flushed = self.pipe_flush(&mut pipe);
        for ((k, _), s) in pipe.live.drain() {
            pipe.free[k].push(s);
        }
        self.pipe = Some(pipe);
        let out = res?;
        flushed?;
        Ok(out)
    }

    /// The schedule's passes. An error leaves the trainer unusable (the run ends).
    fn pipeline_ops(&mut self, pipe: &mut PipeState, grad_scale: f32, times: &mut StepTimes) -> Result<f64> {
        let par = &self.cfg.raw.parallel;
        let (pp, p, v, m) = (self.rank.pp, self.rank.pp_rank, par.virtual_stages, self.cfg.raw.train.grad_accum);
        let n = pp * v;
        let mut loss = 0.0;
        for op in ops(par.schedule, pp, v, m, p) {
            let mut wait = 0.0;
            match op {
                PipeOp::Fwd { k, m: mb } => {
                    let (chunk, c) = (pipe.chunks[k].clone(), global_chunk(pp, p, k));
                    let mut saved = pipe.take(k)?;
                    self.acts.swap_saved(&mut saved);
                    if chunk.first {
                        self.fill(self.sample_index(mb), false);
                    } else {
                        let mut input = std::mem::take(&mut self.acts.resid[chunk.layers.start]);
                        wait = self.pipe_recv(pipe, false, &mut input, tag(n, c, mb))?;
                        self.acts.resid[chunk.layers.start] = input;
                    }
                    let plan = Prefetch::new(self.gpt.chunk_use_order(&chunk, false));
                    let t1 = Instant::now();
                    self.drive(plan, false, false, |gpt, d, acts, x, _| gpt.chunk_forward(d, acts, &chunk, x))?;
                    times.forward += t1.elapsed().as_secs_f64();
                    if !chunk.last {
                        let out = std::mem::take(&mut self.acts.resid[chunk.layers.end]);
                        let sent = self.pipe_send(pipe, false, &out, tag(n, c + 1, mb));
                        self.acts.resid[chunk.layers.end] = out;
                        sent?;
                    }
                    self.acts.swap_saved(&mut saved);
                    pipe.live.insert((k, mb), saved);
                }
                PipeOp::Bwd { k, m: mb } => {
                    let (chunk, c) = (pipe.chunks[k].clone(), global_chunk(pp, p, k));
                    let mut saved = pipe.live.remove(&(k, mb)).ok_or_else(|| EngineError::Invalid(format!("no activations of micro-batch {mb} on chunk {k}")))?;
                    self.acts.swap_saved(&mut saved);
                    if chunk.last {
                        self.fill(self.sample_index(mb), false);
                    } else {
                        let mut dres = std::mem::take(&mut self.acts.dres);
                        wait = self.pipe_recv(pipe, true, &mut dres, tag(n, c, mb))?;
                        self.acts.dres = dres;
                    }
                    let (first, last) = (mb == 0, mb + 1 == m);
                    let plan = Prefetch::new(self.gpt.chunk_use_order(&chunk, true));
                    let t1 = Instant::now();
                    let (l, pending, _) = self.drive(plan, first, last, |gpt, d, acts, _, y| gpt.chunk_backward(d, acts, &chunk, y, grad_scale))?;
                    let t2 = Instant::now();
                    times.backward += (t2 - t1).as_secs_f64();
                    self.finish(pending, first)?;
                    times.comm += t2.elapsed().as_secs_f64();
                    loss += l;
                    if !chunk.first {
                        let dres = std::mem::take(&mut self.acts.dres);
                        let sent = self.pipe_send(pipe, true, &dres, tag(n, c - 1, mb));
                        self.acts.dres = dres;
                        sent?;
                    }
                    self.acts.swap_saved(&mut saved);
                    pipe.free[k].push(saved);
                }
            }
            times.comm += wait;
            times.pipe_wait += wait;
        }
        Ok(loss)
    }

    /// [`Trainer::pipeline_ops`] on a device: the schedule's passes run there (gpu.rs),
    /// the messages between stages go through the host's links.
    fn device_pipeline_ops(&mut self, pipe: &mut PipeState, grad_scale: f32, times: &mut StepTimes) -> Result<f64> {
        let par = &self.cfg.raw.parallel;
        let (pp, p, v, m) = (self.rank.pp, self.rank.pp_rank, par.virtual_stages, self.cfg.raw.train.grad_accum);
        let n = pp * v;
        let mut loss = 0.0;
        for op in ops(par.schedule, pp, v, m, p) {
            let mut wait = 0.0;
            let t1 = Instant::now();
            match op {
                PipeOp::Fwd { k, m: mb } => {
                    let (chunk, c) = (pipe.chunks[k].clone(), global_chunk(pp, p, k));
                    let mut input = None;
                    if chunk.first {
                        self.fill(self.sample_index(mb), false);
                    } else {
                        let mut buf = vec![0.0; self.pipe_message()];
                        wait = self.pipe_recv(pipe, false, &mut buf, tag(n, c, mb))?;
                        input = Some(buf);
                    }
                    let g = self.gpu.as_mut().ok_or_else(|| EngineError::Invalid("a device pipeline without a device".into()))?;
                    if let Some(out) = g.pipe_forward(k, mb, &self.inputs, input.as_deref())? {
                        self.pipe_send(pipe, false, &out, tag(n, c + 1, mb))?;
                    }
                    times.forward += t1.elapsed().as_secs_f64() - wait;
                }
                PipeOp::Bwd { k, m: mb } => {
                    let (chunk, c) = (pipe.chunks[k].clone(), global_chunk(pp, p, k));
                    let mut dres = None;
                    if chunk.last {
                        self.fill(self.sample_index(mb), false);
                    } else {
                        let mut buf = vec![0.0; self.pipe_message()];
                        wait = self.pipe_recv(pipe, true, &mut buf, tag(n, c, mb))?;
                        dres = Some(buf);
                    }
                    let g = self.gpu.as_mut().ok_or_else(|| EngineError::Invalid("a device pipeline without a device".into()))?;
                    let (l, back) = g.pipe_backward(k, mb, &self.targets, dres.as_deref(), grad_scale)?;
                    loss += l;
                    if let Some(back) = back {
                        self.pipe_send(pipe, true, &back, tag(n, c - 1, mb))?;
                    }
                    times.backward += t1.elapsed().as_secs_f64() - wait;
                }
            }
            times.comm += wait;
            times.pipe_wait += wait;
        }
        Ok(loss)
    }

    /// Floats of one message between stages: the residual stream's rows this rank holds.
    fn pipe_message(&self) -> usize {
        let (b, t, c) = (self.cfg.raw.train.batch_size, self.cfg.raw.model.block_size, self.gpt.spec.hidden);
        let sp = if self.cfg.raw.parallel.sp && self.rank.tp > 1 { self.rank.tp } else { 1 };
        b * t * c / sp
    }

    /// [`Trainer::pipeline_eval_ops`] on a device.
    fn device_pipeline_eval_ops(&mut self, pipe: &mut PipeState, micro: usize) -> Result<f64> {
        let (pp, p, v) = (self.rank.pp, self.rank.pp_rank, self.cfg.raw.parallel.virtual_stages);
        let (n, b, dp, r) = (pp * v, self.cfg.raw.train.batch_size, self.rank.dp, self.rank.rank);
        let mut loss = 0.0;
        for i in 0..micro {
            let index = ((i * dp + r) * b) as u64;
            for k in 0..v {
                let (chunk, c) = (pipe.chunks[k].clone(), global_chunk(pp, p, k));
                let mut input = None;
                if chunk.first || chunk.last {
                    self.fill(index, true);
                }
                if !chunk.first {
                    let mut buf = vec![0.0; self.pipe_message()];
                    self.pipe_recv(pipe, false, &mut buf, tag(n, c, i))?;
                    input = Some(buf);
                }
                let g = self.gpu.as_mut().ok_or_else(|| EngineError::Invalid("a device pipeline without a device".into()))?;
                let (l, out) = g.pipe_eval(k, &self.inputs, &self.targets, input.as_deref())?;
                loss += l;
                if let Some(out) = out {
                    self.pipe_send(pipe, false, &out, tag(n, c + 1, i))?;
                }
            }
        }
        Ok(loss)
    }

    /// The summed validation loss of `micro` micro-batches through the pipeline (the
    /// last stage's; 0 elsewhere): each micro-batch's chunks in order, no backward.
    pub(crate) fn pipeline_eval(&mut self, micro: usize) -> Result<f64> {
        self.with_pipe(|t, pipe| if t.gpu.is_some() { t.device_pipeline_eval_ops(pipe, micro) } else { t.pipeline_eval_ops(pipe, micro) })
    }

    fn pipeline_eval_ops(&mut self, pipe: &mut PipeState, micro: usize) -> Result<f64> {
        let (pp, p, v) = (self.rank.pp, self.rank.pp_rank, self.cfg.raw.parallel.virtual_stages);
        let (n, b, dp, r) = (pp * v, self.cfg.raw.train.batch_size, self.rank.dp, self.rank.rank);
        let mut loss = 0.0;
        for i in 0..micro {
            let index = ((i * dp + r) * b) as u64;
            for k in 0..v {
                let (chunk, c) = (pipe.chunks[k].clone(), global_chunk(pp, p, k));
                let mut saved = pipe.take(k)?;
                self.acts.swap_saved(&mut saved);
                if chunk.first {
                    self.fill(index, true);
                } else {
                    let mut input = std::mem::take(&mut self.acts.resid[chunk.layers.start]);
                    self.pipe_recv(pipe, false, &mut input, tag(n, c, i))?;
                    self.acts.resid[chunk.layers.start] = input;
                }
                let plan = Prefetch::new(self.gpt.chunk_use_order(&chunk, false));
                self.drive(plan, false, false, |gpt, d, acts, x, _| gpt.chunk_forward(d, acts, &chunk, x))?;
                if chunk.last {
                    self.fill(index, true);
                    let order = self.gpt.chunk_use_order(&chunk, true);
                    let plan = Prefetch::new(order[..if self.gpt.tied() { 2 } else { 1 }].to_vec());
                    loss += self.drive(plan, false, false, |gpt, d, acts, _, y| gpt.chunk_loss(d, acts, y))?.0;
                } else {
                    let out = std::mem::take(&mut self.acts.resid[chunk.layers.end]);
                    let sent = self.pipe_send(pipe, false, &out, tag(n, c + 1, i));
                    self.acts.resid[chunk.layers.end] = out;
                    sent?;
                }
                self.acts.swap_saved(&mut saved);
                pipe.free[k].push(saved);
            }
        }
        Ok(loss)
    }

    /// With a tied head, the first stage's embedding and the last stage's copy of it
    /// got different gradient contributions (lookup and head): both take the sum, so
    /// both copies take the same update.
    pub(crate) fn sum_tied_embedding(&mut self) -> Result<()> {
        if let Some(g) = &mut self.gpu {
            return g.sum_tied_embedding();
        }
        if !self.gpt.tied() {
            return Ok(());
        }
        let Some(ends) = self.rank.pipe.as_ref().and_then(|l| l.ends.clone()) else { return Ok(()) };
        if self.cfg.raw.parallel.zero == 0 {
            let numel = self.shards[EMBED].numel;
            ends.all_reduce((&mut self.grads[EMBED][..numel]).into(), comm::ReduceOp::Sum)?;
        } else {
            ends.all_reduce((&mut self.gshard[EMBED][..]).into(), comm::ReduceOp::Sum)?;
        }
        Ok(())
    }

    /// Pipeline parallelism: per local chunk, how many micro-batches' activations this
    /// stage has held at once (the sets it allocated); `None` without a pipeline.
    pub fn pipeline_activation_sets(&self) -> Option<Vec<usize>> {
        self.pipe.as_ref().map(|p| p.sets())
    }

    /// Whether this stage owns bucket `b` (counts it in the global norm and writes it
    /// into checkpoints): not the last stage's copy of a tied embedding, which the first
    /// stage owns.
    pub(crate) fn owns_bucket(&self, b: usize) -> bool {
        !(b == EMBED && self.rank.pp_rank > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_layers_in_order() {
        for (l, c) in [(4, 2), (5, 2), (12, 8), (3, 3)] {
            let parts: Vec<_> = (0..c).map(|i| chunk_layers(l, c, i)).collect();
            assert_eq!(parts[0].start, 0);
            assert_eq!(parts[c - 1].end, l);
            assert!(parts.windows(2).all(|w| w[0].end == w[1].start && !w[0].is_empty()));
        }
    }

    #[test]
    fn every_rank_runs_each_pass_once_backwards_in_micro_order() {
        for (s, v) in [(PipeSchedule::OneFOneB, 1), (PipeSchedule::Interleaved, 2), (PipeSchedule::Interleaved, 3)] {
            for pp in [2, 4] {
                for m in [pp, 2 * pp, 3 * pp] {
                    for p in 0..pp {
                        let list = ops(s, pp, v, m, p);
                        assert_eq!(list.len(), 2 * m * v);
                        for k in 0..v {
                            let f: Vec<usize> = list.iter().filter_map(|o| if let PipeOp::Fwd { k: kk, m } = o { (*kk == k).then_some(*m) } else { None }).collect();
                            let b: Vec<usize> = list.iter().filter_map(|o| if let PipeOp::Bwd { k: kk, m } = o { (*kk == k).then_some(*m) } else { None }).collect();
                            assert_eq!(f, (0..m).collect::<Vec<_>>(), "{s:?} pp {pp} v {v} m {m} rank {p} chunk {k}");
                            assert_eq!(b, (0..m).collect::<Vec<_>>(), "{s:?} pp {pp} v {v} m {m} rank {p} chunk {k}");
                        }
                        // A backward never precedes its forward.
                        for (i, o) in list.iter().enumerate() {
                            if let PipeOp::Bwd { k, m } = o {
                                assert!(list[..i].contains(&PipeOp::Fwd { k: *k, m: *m }));
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn schedules_finish_and_their_bubble_is_the_formula() {
        // With backward = 2 forward, the idle fraction of the step is
        // (pp - 1) / (v m + pp - 1), i.e. a bubble of (pp - 1) / (v m) of the ideal time.
        for (s, v) in [(PipeSchedule::OneFOneB, 1), (PipeSchedule::Interleaved, 2), (PipeSchedule::Interleaved, 4)] {
            for pp in [2, 4, 8] {
                for m in [pp, 2 * pp, 4 * pp] {
                    let sim = simulate(s, pp, v, m, 1.0, 2.0).unwrap_or_else(|e| panic!("{s:?} pp {pp} v {v} m {m}: {e}"));
                    let ideal = (v * m) as f64 * 3.0;
                    let want = (pp - 1) as f64 / (v * m) as f64;
                    let got = sim.makespan / ideal - 1.0;
                    assert!((got - want).abs() < 1e-9, "{s:?} pp {pp} v {v} m {m}: bubble {got}, formula {want}");
                }
            }
        }
    }

    #[test]
    fn one_f_one_b_holds_at_most_pp_minus_rank_micro_batches() {
        for pp in [2, 4, 8] {
            for m in [1, 3, pp, 3 * pp] {
                let sim = simulate(PipeSchedule::OneFOneB, pp, 1, m, 1.0, 2.0).unwrap();
                for p in 0..pp {
                    assert_eq!(sim.max_in_flight[p], (pp - p).min(m), "pp {pp} m {m} rank {p}");
                }
            }
        }
    }
}

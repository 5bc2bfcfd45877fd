//! One data-parallel training step under ZeRO stage 0-3, with communication overlapped
//! with computation: a bucket's gradient reduction is submitted to the background stream
//! as soon as its backward ends, and under stage 3 the next bucket's parameters are
//! all-gathered while the current one computes.

use std::sync::Arc;
use std::time::Instant;

use comm::{Handle, OwnedBuf, ReduceOp};
use model::{Activations, Cpu, Driver, Gpt};

use crate::error::{EngineError, Result};
use crate::optim::clip_factor;
use crate::trainer::{StepTimes, Trainer};

type Gather = Handle<comm::Result<(OwnedBuf, OwnedBuf)>>;

/// What a driven pass leaves: its result, the reductions still in flight, and when the
/// forward ended (with the gather wait until then).
type Driven<R> = (R, Vec<Reduction>, Option<(Instant, f64)>);

/// Gradient reductions a stage 2-3 rank keeps in flight before it waits for the oldest:
/// enough to overlap the next blocks' backward, few enough to bound scratch memory.
const IN_FLIGHT: usize = 2;

/// A bucket reduction in flight.
pub(crate) enum Reduction {
    /// Stage 0: the whole gradient bucket, all-reduced in place.
    AllReduce { bucket: usize, h: Handle<comm::Result<OwnedBuf>> },
    /// Stages 1-3: (whole gradient bucket, this rank's reduced shard).
    ReduceScatter { bucket: usize, h: Handle<comm::Result<(OwnedBuf, OwnedBuf)>> },
}

/// Stage 3's parameter stream: the order in which buckets are used, and the all-gather
/// of the next one, already submitted.
pub(crate) struct Prefetch {
    order: Vec<usize>,
    pos: usize,
    pending: Option<(usize, Gather)>,
}

fn f32s(b: OwnedBuf) -> Vec<f32> {
    match b {
        OwnedBuf::F32(v) => v,
        _ => unreachable!("f32 collectives return f32 buffers"),
    }
}

impl Prefetch {
    /// Stage 3's stream over buckets used in `order`.
    pub(crate) fn new(order: Vec<usize>) -> Prefetch {
        Prefetch { order, pos: 0, pending: None }
    }
}

impl Trainer {
    fn stage(&self) -> u8 {
        self.cfg.raw.parallel.zero
    }

    /// Bucket use order of one forward (+ backward) pass, for stage 3's prefetch
    /// (the model's stage loop acquires buckets in exactly this order).
    pub(crate) fn prefetch_plan(&self, backward: bool) -> Prefetch {
        Prefetch::new(self.gpt.use_order(backward))
    }

    /// Runs one pass of the model's stage loop with this trainer as its [`Driver`]:
    /// the activations and the batch are lent to the pass and put back afterwards.
    /// Returns the pass's result, the reductions still in flight and when the forward
    /// ended (with the gather wait until then).
    pub(crate) fn drive<R>(
        &mut self,
        plan: Prefetch,
        first: bool,
        last: bool,
        pass: impl FnOnce(&Gpt, &mut Stepper<'_>, &mut Activations, &[u32], &[u32]) -> Result<R>,
    ) -> Result<Driven<R>> {
        let gpt = Arc::clone(&self.gpt);
        let mut acts = std::mem::replace(&mut self.acts, Activations::empty());
        let (x, y) = (std::mem::take(&mut self.inputs), std::mem::take(&mut self.targets));
        let mut d = Stepper { t: self, plan, pending: Vec::new(), first, last, forward_end: None };
        let r = pass(&gpt, &mut d, &mut acts, &x, &y);
        let (pending, forward_end) = (d.pending, d.forward_end);
        self.acts = acts;
        self.inputs = x;
        self.targets = y;
        Ok((r?, pending, forward_end))
    }

    fn submit_gather(&mut self, b: usize) -> Gather {
        let shard = std::mem::take(&mut self.params[b]);
        let full = self.pool.take(self.shards[b].padded(self.rank.dp));
        self.rank.stream.all_gather(OwnedBuf::F32(shard), OwnedBuf::F32(full))
    }

    /// The whole parameter bucket `b` for computing. Stages 0-2 lend the stored bucket
    /// (give it back with [`Trainer::release`]); stage 3 gathers it (prefetched) and
    /// starts gathering the next bucket in `plan`.
    pub(crate) fn acquire(&mut self, b: usize, plan: &mut Prefetch) -> Result<Vec<f32>> {
        if self.stage() < 3 {
            return Ok(std::mem::take(&mut self.params[b]));
        }
        debug_assert_eq!(plan.order.get(plan.pos), Some(&b), "bucket use out of plan order");
        let h = match plan.pending.take() {
            Some((pb, h)) if pb == b => h,
            Some(_) => return Err(EngineError::Invalid("prefetch out of order".into())),
            None => self.submit_gather(b),
        };
        let w = Instant::now();
        let (shard, full) = h.wait()??;
        self.gather_wait += w.elapsed().as_secs_f64();
        self.params[b] = f32s(shard);
        plan.pos += 1;
        if let Some(&next) = plan.order.get(plan.pos) {
            let h = self.submit_gather(next);
            plan.pending = Some((next, h));
        }
        Ok(f32s(full))
    }

    pub(crate) fn release(&mut self, b: usize, buf: Vec<f32>) {
        if self.stage() < 3 {
            self.params[b] = buf;
        } else {
            self.pool.give(buf);
        }
    }

    /// The gradient buffer that bucket `b`'s backward adds into.
    fn grad_target(&mut self, b: usize) -> Vec<f32> {
        if self.stage() < 2 {
            std::mem::take(&mut self.grads[b])
        } else {
            self.pool.take(self.shards[b].padded(self.rank.dp))
        }
    }

    /// Bucket `b`'s backward for this micro-batch is complete: start its reduction.
    /// Under stages 2-3 at most [`IN_FLIGHT`] gradient scratch buffers are out at once,
    /// so gradient memory stays a few buckets rather than a whole model.
    fn grad_done(&mut self, b: usize, g: Vec<f32>, first_micro: bool, last_micro: bool, pending: &mut Vec<Reduction>) -> Result<()> {
        let stage = self.stage();
        // One rank at stage 0 keeps its gradient where it is (stage 1 still moves it
        // into the shard the optimizer reads, a copy over a group of one).
        if self.rank.dp == 1 && stage == 0 {
            self.grads[b] = g;
            return Ok(());
        }
        match stage {
            0 if last_micro => {
                pending.push(Reduction::AllReduce { bucket: b, h: self.rank.stream.all_reduce(OwnedBuf::F32(g), ReduceOp::Sum) })
            }
            1 if last_micro => {
                let shard = std::mem::take(&mut self.gshard[b]);
                let h = self.rank.stream.reduce_scatter(OwnedBuf::F32(g), OwnedBuf::F32(shard), ReduceOp::Sum);
                pending.push(Reduction::ReduceScatter { bucket: b, h });
            }
            0 | 1 => self.grads[b] = g,
            _ => {
                let recv = self.pool.take(self.shards[b].shard);
                let h = self.rank.stream.reduce_scatter(OwnedBuf::F32(g), OwnedBuf::F32(recv), ReduceOp::Sum);
                pending.push(Reduction::ReduceScatter { bucket: b, h });
                if pending.len() > IN_FLIGHT {
                    let oldest = pending.remove(0);
                    self.finish(vec![oldest], first_micro)?;
                }
            }
        }
        Ok(())
    }

    /// Waits for reductions and puts their buffers where the optimizer expects them.
    pub(crate) fn finish(&mut self, pending: Vec<Reduction>, first_micro: bool) -> Result<()> {
        for r in pending {
            match r {
                Reduction::AllReduce { bucket, h } => self.grads[bucket] = f32s(h.wait()??),
                Reduction::ReduceScatter { bucket, h } => {
                    let (send, recv) = h.wait()??;
                    let (send, recv) = (f32s(send), f32s(recv));
                    if self.stage() == 1 {
                        self.grads[bucket] = send;
                        self.gshard[bucket] = recv;
                    } else {
                        // Stages 2-3 accumulate micro-batches into the shard.
                        if first_micro {
                            self.gshard[bucket].copy_from_slice(&recv);
                        } else {
                            kernels::add_inplace(&mut self.gshard[bucket], &recv);
                        }
                        self.pool.give(send);
                        self.pool.give(recv);
                    }
                }
            }
        }
        Ok(())
    }

    /// Forward and backward of the micro-batch in `self.inputs`/`targets`, adding this
    /// rank's share of the gradient (scaled by `grad_scale`). Returns the summed loss.
    pub(crate) fn micro_step(&mut self, grad_scale: f32, first: bool, last: bool, times: &mut StepTimes) -> Result<f64> {
        let plan = self.prefetch_plan(true);
        self.gather_wait = 0.0;
        let t0 = Instant::now();
        let (loss, pending, forward_end) = self.drive(plan, first, last, |gpt, d, acts, x, y| gpt.train_micro(d, acts, x, y, grad_scale))?;
        let t2 = Instant::now();
        self.finish(pending, first)?;
        let t3 = Instant::now();
        let (t1, fwd_wait) = forward_end.unwrap_or((t2, 0.0));
        let bwd_wait = std::mem::take(&mut self.gather_wait);
        times.forward += (t1 - t0).as_secs_f64() - fwd_wait;
        times.backward += (t2 - t1).as_secs_f64() - bwd_wait;
        times.comm += (t3 - t2).as_secs_f64() + fwd_wait + bwd_wait;
        Ok(loss)
    }

    /// Sum of squares of `buf`, elements `[base, base + len)` of bucket `b`, counting
    /// every parameter of the whole model once: a tensor replicated across the
    /// tensor-parallel group (norms, row-parallel biases, positions) only on tp rank 0.
    fn sum_squares_once(&self, b: usize, buf: &[f32], base: usize) -> f64 {
        if !self.owns_bucket(b) {
            return 0.0;
        }
        if self.rank.tp == 1 {
            return kernels::sum_squares(buf);
        }
        let end = base + buf.len();
        self.gpt.layout.buckets[b]
            .tensors
            .iter()
            .filter(|t| t.split.is_some() || self.rank.tp_rank == 0)
            .map(|t| {
                let (lo, hi) = (t.range().start.max(base), t.range().end.min(end));
                if lo < hi { kernels::sum_squares(&buf[lo - base..hi - base]) } else { 0.0 }
            })
            .sum()
    }

    /// Global-norm clipping and AdamW on what this rank owns; stages 1-2 then all-gather
    /// the updated parameters. Returns the pre-clip global gradient norm.
    pub(crate) fn optimizer_step(&mut self, times: &mut StepTimes) -> Result<f64> {
        let t0 = Instant::now();
        let (stage, r) = (self.stage(), self.rank.rank);
        let nb = self.params.len();
        let norm = if stage == 0 {
            // All-reduced gradients are the same on every rank of a dp group.
            let local: f64 = (0..nb).map(|b| self.sum_squares_once(b, &self.grads[b][..self.shards[b].numel], 0)).sum();
            self.rank.sum_f64_pp(self.rank.sum_f64_tp(local)?)?.sqrt()
        } else {
            let local: f64 = (0..nb).map(|b| self.sum_squares_once(b, &self.gshard[b], self.shards[b].owned(r).start)).sum();
            self.rank.sum_f64_pp(self.rank.sum_f64_tp(self.rank.sum_f64(local)?)?)?.sqrt()
        };
        if !norm.is_finite() {
            // The numerics guard: no update from a gradient that overflowed (every rank
            // has the same norm, so every rank skips, and no collective is left open).
            times.optimizer += t0.elapsed().as_secs_f64();
            return Ok(norm);
        }
        let clip = clip_factor(norm, self.cfg.raw.optim.grad_clip);
        let lr = self.schedule.at(self.step) as f32;
        let t = self.step + 1;
        let layout = &self.gpt.layout;
        for b in 0..nb {
            let s = self.shards[b];
            if stage == 0 {
                let g = &mut self.grads[b][..s.numel];
                if clip != 1.0 {
                    kernels::scale(g, clip);
                }
                let (p, m, v) = (&mut self.params[b][..s.numel], &mut self.exp_avg[b][..s.numel], &mut self.exp_avg_sq[b][..s.numel]);
                self.adamw.update_range(layout, b, 0..s.numel, p, g, m, v, lr, t);
                continue;
            }
            let real = s.real(r);
            let k = real.len();
            if clip != 1.0 {
                kernels::scale(&mut self.gshard[b], clip);
            }
            let p = if stage == 3 { &mut self.params[b][..k] } else { &mut self.params[b][real.clone()] };
            let (g, m, v) = (&self.gshard[b][..k], &mut self.exp_avg[b][..k], &mut self.exp_avg_sq[b][..k]);
            self.adamw.update_range(layout, b, real, p, g, m, v, lr, t);
        }
        let t1 = Instant::now();
        if stage == 1 || stage == 2 {
            let mut gathers = Vec::with_capacity(nb);
            // Buckets of other pipeline stages are empty here.
            let held: Vec<usize> = (0..nb).filter(|&b| self.shards[b].numel > 0).collect();
            for &b in &held {
                let owned = self.shards[b].owned(r);
                let mut mine = self.pool.take(owned.len());
                mine.copy_from_slice(&self.params[b][owned]);
                let full = std::mem::take(&mut self.params[b]);
                gathers.push(self.rank.stream.all_gather(OwnedBuf::F32(mine), OwnedBuf::F32(full)));
            }
            for (b, h) in held.into_iter().zip(gathers) {
                let (mine, full) = h.wait()??;
                self.params[b] = f32s(full);
                self.pool.give(f32s(mine));
            }
        }
        times.optimizer += (t1 - t0).as_secs_f64();
        times.comm += t1.elapsed().as_secs_f64();
        Ok(norm)
    }
}

/// The trainer as the model's [`Driver`]: buckets are lent (ZeRO-3: gathered, with the
/// next one prefetched) and each gradient bucket's reduction starts as soon as its
/// backward ends.
pub(crate) struct Stepper<'t> {
    t: &'t mut Trainer,
    plan: Prefetch,
    pending: Vec<Reduction>,
    first: bool,
    last: bool,
    forward_end: Option<(Instant, f64)>,
}

impl Driver<Cpu> for Stepper<'_> {
    type Error = EngineError;
    type Params = Vec<f32>;
    type Grads = Vec<f32>;
    fn acquire(&mut self, b: usize) -> Result<Vec<f32>> {
        self.t.acquire(b, &mut self.plan)
    }
    fn release(&mut self, b: usize, p: Vec<f32>) {
        self.t.release(b, p)
    }
    fn grad(&mut self, b: usize) -> Result<Vec<f32>> {
        Ok(self.t.grad_target(b))
    }
    fn grad_done(&mut self, b: usize, g: Vec<f32>) -> Result<()> {
        self.t.grad_done(b, g, self.first, self.last, &mut self.pending)
    }
    fn tp_reduce(&mut self, x: &mut [f32], op: model::TpReduce) -> Result<()> {
        let c = self.t.rank.tp_comm.as_ref().ok_or_else(|| EngineError::Invalid("a tensor-parallel reduction without a tp group".into()))?;
        let op = match op {
            model::TpReduce::Sum => ReduceOp::Sum,
            model::TpReduce::Max => ReduceOp::Max,
        };
        c.all_reduce(x.into(), op)?;
        Ok(())
    }
    fn tp_all_gather(&mut self, shard: &[f32], full: &mut [f32]) -> Result<()> {
        let c = self.t.rank.tp_comm.as_ref().ok_or_else(|| EngineError::Invalid("a sequence-parallel gather without a tp group".into()))?;
        c.all_gather(shard.into(), full.into())?;
        Ok(())
    }
    fn tp_reduce_scatter(&mut self, full: &[f32], shard: &mut [f32]) -> Result<()> {
        let c = self.t.rank.tp_comm.as_ref().ok_or_else(|| EngineError::Invalid("a sequence-parallel scatter without a tp group".into()))?;
        c.reduce_scatter(full.into(), shard.into(), ReduceOp::Sum)?;
        Ok(())
    }
    fn forward_done(&mut self) {
        self.forward_end = Some((Instant::now(), std::mem::take(&mut self.t.gather_wait)));
    }
}

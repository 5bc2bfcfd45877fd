//! `train.device = "cuda"` (or the emulated `"cuda-emu"`, the same code on the host's
//! model of a GPU): a rank's forward and backward on the device (the model on the CUDA
//! backend, crates/cuda), and the optimizer there too: the fp32 masters and Adam moments
//! stay on the device between steps (uploaded at the first step and after the host's
//! copies change, downloaded for checkpoints and sampling); global-norm clipping and
//! AdamW run as kernels, and only the norm's per-block partial sums and the loss come
//! back to the host in a step.
//!
//! `train.dtype = "bf16"`: the model reads a bf16 copy of the masters (written by the
//! AdamW kernel as it updates them) and accumulates bf16 gradients; masters, moments,
//! the loss and every statistic stay fp32, so checkpoints are the same as f32 runs'.
//!


//! uninhabited type and asking for a GPU is an error naming the feature.

use crate::error::{EngineError, Result};

#[cfg(feature = "cuda")]
mod imp {
    use cuda_kernels::backend::{Cuda, DevVec};
    use cuda_kernels::device::{Dims, Dtype};
    use model::backend::Buf;
    use model::{Activations, Backend, Model, ModelSpec};

    use crate::error::{EngineError, Result};

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
        /// The gradient norm's per-block partial sums, `NORM_PARTS` per bucket.
        partials: DevVec,
    }

    const NORM_PARTS: usize = 64;

    impl GpuState {
        pub(crate) fn new(device: &str, dtype: &str, spec: &ModelSpec, (b, t): (usize, usize), recompute: bool, selective: bool) -> Result<GpuState> {
            let be = Cuda::open(device).map_err(|e| EngineError::Invalid(format!("train.device = \"{device}\": {e}")))?;
            let be = be.with_dtype(if dtype == "bf16" { Dtype::Bf16 } else { Dtype::F32 });
            let model = Model::with_backend(be.clone(), spec.clone());
            let acts = Activations::with_backend(&be, spec, b, t, recompute);
            let acts = if selective { acts.recompute_attention(&be) } else { acts };
            let zeros = |dt| model.layout.buckets.iter().map(|k| be.zeros_as(k.numel, dt)).collect::<Vec<_>>();
            let (params, m, v) = (zeros(Dtype::F32), zeros(Dtype::F32), zeros(Dtype::F32));
            let grads = zeros(be.dtype);
            let work = if be.dtype == Dtype::F32 { Vec::new() } else { zeros(be.dtype) };
            // Empty buckets (none on one rank today) leave their partials at zero.
            let partials = be.zeros_as(NORM_PARTS * params.len(), Dtype::F32);
            Ok(GpuState { be, model, acts, params, work, grads, m, v, current: false, partials })
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
            // The bf16 copy from the masters, rounded as the AdamW kernel rounds.
            for (w, p) in self.work.iter_mut().zip(&self.params) {
                if p.len() > 0 {
                    let dims = Dims { grid: (p.len().div_ceil(256).min(4096) as u32, 1, 1), block: (256, 1, 1), shared: 0 };
                    self.be.launch("f32_to_bf16", dims, &[&w.addr(), &p.addr(), &(p.len() as i64)]);
                }
            }
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

        /// Global-norm clipping and AdamW on the device over every bucket (one rank holds
        /// them whole), in the host optimizer's order and form. Only the per-block sums
        /// of squares come to the host (the norm, which is logged and decides clipping
        /// and the numerics guard). Returns the pre-clip norm; a non-finite one updates
        /// nothing.
        pub(crate) fn optimizer_step(&mut self, layout: &model::Layout, adamw: &crate::optim::AdamW, lr: f32, t: u64, max_norm: f64) -> f64 {
            let dims = |blocks: usize| Dims { grid: (blocks as u32, 1, 1), block: (256, 1, 1), shared: 0 };
            // Every bucket's partial sums into one buffer, then one copy to the host.
            for (b, g) in self.grads.iter().enumerate() {
                if g.len() > 0 {
                    let at = self.partials.addr() + (4 * b * NORM_PARTS) as u64;
                    self.be.launch("sum_squares_partial", dims(NORM_PARTS), &[&at, &g.addr(), &(g.len() as i64)]);
                }
            }
            let mut host = vec![0.0f32; self.partials.len()];
            self.be.to_host(&self.partials, &mut host);
            let norm = host.iter().map(|&x| x as f64).sum::<f64>().sqrt();
            if !norm.is_finite() {
                return norm;
            }
            let clip = crate::optim::clip_factor(norm, max_norm);
            // The host's bias corrections, in f64 (kernels::adamw_step's form).
            let tt = t.min(i32::MAX as u64) as i32;
            let step = (lr as f64 / (1.0 - (adamw.beta1 as f64).powi(tt))) as f32;
            let bc2_sqrt = (1.0 - (adamw.beta2 as f64).powi(tt)).sqrt() as f32;
            for (b, bucket) in layout.buckets.iter().enumerate() {
                let g = &self.grads[b];
                for spec in &bucket.tensors {
                    let r = spec.range();
                    if r.is_empty() {
                        continue;
                    }
                    let at = |d: &DevVec| d.slice(r.clone()).addr();
                    let copy = self.work.get(b).map_or(0, at);
                    let decay = 1.0 - lr * adamw.decay_for(spec.kind);
                    self.be.launch(
                        "adamw",
                        dims(r.len().div_ceil(256).min(4096)),
                        &[
                            &at(&self.params[b]),
                            &copy,
                            &at(g),
                            &at(&self.m[b]),
                            &at(&self.v[b]),
                            &(r.len() as i64),
                            &clip,
                            &step,
                            &adamw.beta1,
                            &adamw.beta2,
                            &adamw.eps,
                            &decay,
                            &bc2_sqrt,
                        ],
                    );
                }
            }
            norm
        }

        pub(crate) fn zero_grads(&mut self) {
            for g in &mut self.grads {
                self.be.fill_zero(g);
            }
        }

        /// One micro-batch's forward and backward; gradients accumulate on the device.
        pub(crate) fn micro(&mut self, x: &[u32], y: &[u32], scale: f32) -> f64 {
            let w = if self.work.is_empty() { &self.params } else { &self.work };
            self.model.forward_backward(w, &mut self.grads, &mut self.acts, x, y, scale)
        }

        pub(crate) fn loss(&mut self, x: &[u32], y: &[u32]) -> f64 {
            let w = if self.work.is_empty() { &self.params } else { &self.work };
            self.model.forward_loss(w, &mut self.acts, x, y)
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
        pub(crate) fn new(_device: &str, _dtype: &str, _spec: &ModelSpec, _bt: (usize, usize), _recompute: bool, _selective: bool) -> Result<GpuState> {
            Err(EngineError::Invalid(format!("train.device = \"{_device}\" needs a build with the GPU backend (which holds the emulated device too): cargo build --release --features cuda")))
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
        pub(crate) fn optimizer_step(&mut self, _l: &model::Layout, _a: &crate::optim::AdamW, _lr: f32, _t: u64, _max: f64) -> f64 {
            match *self {}
        }
        pub(crate) fn zero_grads(&mut self) {
            match *self {}
        }
        pub(crate) fn micro(&mut self, _x: &[u32], _y: &[u32], _scale: f32) -> f64 {
            match *self {}
        }
        pub(crate) fn loss(&mut self, _x: &[u32], _y: &[u32]) -> f64 {
            match *self {}
        }
        pub(crate) fn memory(&self) -> (String, usize, usize) {
            match *self {}
        }
        pub(crate) fn recompute(&self) -> (bool, bool) {
            match *self {}
        }
    }
}

pub(crate) use imp::GpuState;

/// The GPU a run asks for (`train.device`), checked against what the GPU path supports.
pub(crate) fn requested(cfg: &config::ResolvedConfig) -> Result<Option<&str>> {
    let Some(_) = config::device_ordinal(&cfg.raw.train.device).map_err(EngineError::Invalid)? else { return Ok(None) };
    let p = &cfg.raw.parallel;
    if p.dp * p.tp * p.pp != 1 || p.zero != 0 {
        return Err(EngineError::Invalid(format!(
            "train.device = \"{}\" runs one rank so far (parallel.dp = tp = pp = 1, parallel.zero = 0); found dp = {}, tp = {}, pp = {}, zero = {}",
            cfg.raw.train.device, p.dp, p.tp, p.pp, p.zero
        )));
    }
    Ok(Some(&cfg.raw.train.device))
}

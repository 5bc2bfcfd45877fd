//! `train.device = "cuda"` (or the emulated `"cuda-emu"`, the same code on the host's
//! model of a GPU): a rank's forward and backward on the device (the model on the CUDA
//! backend, crates/cuda), the optimizer and everything else on the host as before. Each
//! step uploads the parameters (the host keeps the fp32 masters, so checkpoints,
//! sampling and every other path are unchanged) and downloads the gradients.
//!
//! A first step of issue 10: one rank (dp = tp = pp = 1, ZeRO 0); AdamW, the reductions
//! and bf16 stay to be moved to the device. Without the `cuda` feature the state is an
//! uninhabited type and asking for a GPU is an error naming the feature.

use crate::error::{EngineError, Result};

#[cfg(feature = "cuda")]
mod imp {
    use cuda_kernels::backend::{Cuda, DevVec};
    use model::backend::Buf;
    use model::{Activations, Backend, Model, ModelSpec};

    use crate::error::{EngineError, Result};

    pub(crate) struct GpuState {
        be: Cuda,
        model: Model<Cuda>,
        acts: Activations<Cuda>,
        params: Vec<DevVec>,
        grads: Vec<DevVec>,
    }

    impl GpuState {
        pub(crate) fn new(device: &str, spec: &ModelSpec, (b, t): (usize, usize), recompute: bool, selective: bool) -> Result<GpuState> {
            let be = Cuda::open(device).map_err(|e| EngineError::Invalid(format!("train.device = \"{device}\": {e}")))?;
            let model = Model::with_backend(be.clone(), spec.clone());
            let acts = Activations::with_backend(&be, spec, b, t, recompute);
            let acts = if selective { acts.recompute_attention(&be) } else { acts };
            let params = model.layout.buckets.iter().map(|k| be.zeros(k.numel)).collect();
            let grads = model.layout.buckets.iter().map(|k| be.zeros(k.numel)).collect();
            Ok(GpuState { be, model, acts, params, grads })
        }

        /// The host's parameters (whole buckets, maybe padded) onto the device.
        pub(crate) fn upload(&mut self, host: &[Vec<f32>]) {
            for (d, h) in self.params.iter_mut().zip(host) {
                let n = d.len();
                self.be.copy_from_host(d, &h[..n]);
            }
        }

        pub(crate) fn zero_grads(&mut self) {
            for g in &mut self.grads {
                self.be.fill_zero(g);
            }
        }

        /// One micro-batch's forward and backward; gradients accumulate on the device.
        pub(crate) fn micro(&mut self, x: &[u32], y: &[u32], scale: f32) -> f64 {
            self.model.forward_backward(&self.params, &mut self.grads, &mut self.acts, x, y, scale)
        }

        /// The accumulated gradients into the host's (whole) gradient buckets.
        pub(crate) fn download_grads(&self, host: &mut [Vec<f32>]) {
            for (d, h) in self.grads.iter().zip(host) {
                let n = d.len();
                self.be.to_host(d, &mut h[..n]);
            }
        }

        pub(crate) fn loss(&mut self, x: &[u32], y: &[u32]) -> f64 {
            self.model.forward_loss(&self.params, &mut self.acts, x, y)
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
        pub(crate) fn new(_device: &str, _spec: &ModelSpec, _bt: (usize, usize), _recompute: bool, _selective: bool) -> Result<GpuState> {
            Err(EngineError::Invalid(format!("train.device = \"{_device}\" needs a build with the GPU backend (which holds the emulated device too): cargo build --release --features cuda")))
        }
        pub(crate) fn upload(&mut self, _host: &[Vec<f32>]) {
            match *self {}
        }
        pub(crate) fn zero_grads(&mut self) {
            match *self {}
        }
        pub(crate) fn micro(&mut self, _x: &[u32], _y: &[u32], _scale: f32) -> f64 {
            match *self {}
        }
        pub(crate) fn download_grads(&self, _host: &mut [Vec<f32>]) {
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

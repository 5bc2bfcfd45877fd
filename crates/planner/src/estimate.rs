//! One layout of one job on one machine: memory, step time and throughput.

use crate::error::PlanError;
use crate::flops::{iteration_flops, FlopConvention};
use crate::hardware::{Dtype, Machine};
use crate::layout::Layout;
use crate::memory::{memory, MemoryBreakdown};
use crate::models::ModelSpec;
use crate::time::{step_time, Calibration, StepTime};
use serde::Serialize;

/// What to train, where.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub model: ModelSpec,
    pub machine: Machine,
    /// GPUs available (a layout may use fewer).
    pub gpus: u64,
    /// Global batch in sequences.
    pub global_batch: u64,
    /// Sequence length.
    pub seq: u64,
    /// Tokens to train for (for the days estimate).
    pub tokens: f64,
}

impl Job {
    /// Bytes per activation element / 2: fp32 on CPUs, 16-bit on accelerators.
    pub fn act_scale(&self) -> f64 {
        if self.machine.gpu.peak_bf16 == self.machine.gpu.peak_fp32 {
            2.0
        } else {
            1.0
        }
    }

    /// The peak MFU is measured against (bf16 dense; fp32 on CPUs).
    pub fn peak(&self) -> f64 {
        if self.act_scale() > 1.0 {
            self.machine.gpu.peak(Dtype::Fp32)
        } else {
            self.machine.gpu.peak(Dtype::Bf16)
        }
    }
}

/// The prediction for one layout.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub layout: Layout,
    pub layout_text: String,
    pub gpus_used: u64,
    pub micro_batches: u64,
    pub memory: MemoryBreakdown,
    pub fits: bool,
    pub step: StepTime,
    /// Model FLOP/s per GPU (no recompute counted), in TFLOP/s.
    pub model_tflops_per_gpu: f64,
    /// Hardware FLOP/s per GPU counting the recompute forward pass as Megatron's eq. 3.
    pub eq3_tflops_per_gpu: f64,
    /// Model FLOPs utilisation, % of the dense bf16 peak.
    pub mfu_pct: f64,
    pub tokens_per_s: f64,
    pub days: f64,
}

/// Check a layout against the model and batch; name the broken rule.
pub fn check_layout(job: &Job, l: &Layout) -> Result<(), PlanError> {
    let bad = |reason: String| Err(PlanError::InvalidLayout { reason });
    let m = &job.model;
    if l.gpus() > job.gpus {
        return Err(PlanError::DegreeMismatch {
            tp: l.tp,
            pp: l.pp,
            dp: l.dp,
            product: l.gpus(),
            gpus: job.gpus,
        });
    }
    if m.heads as u64 % l.tp != 0 {
        return bad(format!(
            "tp={} does not divide {} attention heads",
            l.tp, m.heads
        ));
    }
    if l.pp > m.layers as u64 {
        return bad(format!("pp={} exceeds {} layers", l.pp, m.layers));
    }
    if job.global_batch % (l.dp * l.mb) != 0 {
        return bad(format!(
            "global batch {} is not a multiple of dp={} x mb={}",
            job.global_batch, l.dp, l.mb
        ));
    }
    if l.interleave > 1 {
        if l.pp == 1 {
            return bad("interleaving needs pp > 1".to_string());
        }
        if l.pp * l.interleave > m.layers as u64 {
            return bad(format!(
                "{} layers do not split into pp={} x v={} chunks",
                m.layers, l.pp, l.interleave
            ));
        }
        if l.micro_batches(job.global_batch) % l.pp != 0 {
            return bad(format!(
                "interleaving needs micro-batches ({}) to be a multiple of pp={}",
                l.micro_batches(job.global_batch),
                l.pp
            ));
        }
    }
    Ok(())
}

/// Predict memory, step time and throughput of a layout (no validity check).
pub fn estimate(job: &Job, l: &Layout, cal: &Calibration) -> Estimate {
    let s = job.seq as f64;
    let scale = job.act_scale();
    let mem = memory(&job.model, l, job.global_batch, s, scale);
    let step = step_time(&job.model, &job.machine, cal, l, job.global_batch, s, scale);
    let n = l.gpus() as f64;
    let b = job.global_batch as f64;
    let model_flops = iteration_flops(&job.model, b, s, FlopConvention::Model);
    let eq3 = iteration_flops(&job.model, b, s, FlopConvention::WithRecompute);
    let per_gpu = model_flops / step.total / n;
    let tokens_per_s = b * s / step.total;
    Estimate {
        layout: *l,
        layout_text: l.short(),
        gpus_used: l.gpus(),
        micro_batches: l.micro_batches(job.global_batch),
        fits: mem.total <= job.machine.gpu.mem_bytes,
        memory: mem,
        step,
        model_tflops_per_gpu: per_gpu / 1e12,
        eq3_tflops_per_gpu: eq3 / (n * 1e12) / (b * s / tokens_per_s),
        mfu_pct: 100.0 * per_gpu / job.peak(),
        tokens_per_s,
        days: if tokens_per_s > 0.0 {
            job.tokens / tokens_per_s / 86_400.0
        } else {
            f64::INFINITY
        },
    }
}

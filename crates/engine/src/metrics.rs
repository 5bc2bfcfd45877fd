//! What a run reports: per-step metrics (to `RUN_DIR/metrics.jsonl`), run facts, memory
//! beside its analytical count, and the machine's measured peak FLOP/s for MFU.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{io, Result};
use crate::trainer::Trainer;

/// The metrics of one optimizer step; one line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StepMetrics {
    pub step: u64,
    /// Not finite on a skipped step (written as JSON `null`, read back as NaN).
    #[serde(deserialize_with = "nan_if_null")]
    pub train_loss: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f64>,
    pub lr: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub mfu: f64,
    pub step_ms: f64,
    pub tokens_seen: u64,
    /// The step's breakdown: computation (forward incl. the fused head, backward),
    /// communication the step waited for (exposed, after overlap), and the optimizer.
    #[serde(default)]
    pub forward_ms: f64,
    #[serde(default)]
    pub backward_ms: f64,
    #[serde(default)]
    pub comm_ms: f64,
    #[serde(default)]
    pub optimizer_ms: f64,
    /// With a data mixture: training tokens drawn from each source so far.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sources: Option<Vec<SourceDraw>>,
    /// Steps skipped by the numerics guard so far in this process (a non-finite loss
    /// or gradient norm: the update was not applied).
    #[serde(skip_serializing_if = "is_zero", default)]
    pub skipped_steps: u64,
    /// Set when the training loss is a spike: its z-score against the previous
    /// `log.spike_window` steps, above `log.spike_z`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub loss_spike_z: Option<f64>,
    /// Pipeline parallelism: the part of `comm_ms` rank 0 waited for its neighbouring
    /// stages (the pipeline bubble and exposed transfers).
    #[serde(skip_serializing_if = "is_zero_f64", default)]
    pub pipe_wait_ms: f64,
}

fn is_zero_f64(x: &f64) -> bool {
    *x == 0.0
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Tokens drawn from one source of a mixture since step 0, and how many passes
/// over that source's training tokens they make.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SourceDraw {
    pub dir: String,
    pub tokens: u64,
    pub epochs: f64,
}

/// Appends records to `RUN_DIR/metrics.jsonl`. On resume, lines past the resumed step
/// are dropped first (they belong to work that was lost), so the file reads as one run.
pub struct MetricsLog {
    file: File,
    path: PathBuf,
}

impl MetricsLog {
    pub fn open(run_dir: &Path, resumed_step: u64) -> Result<MetricsLog> {
        let path = run_dir.join("metrics.jsonl");
        if path.exists() {
            let kept: Vec<String> = read_records(&path)?
                .into_iter()
                .filter(|r| r.step <= resumed_step)
                .map(|r| serde_json::to_string(&r).expect("metrics serialise"))
                .collect();
            let tmp = run_dir.join("metrics.jsonl.tmp");
            let mut text = kept.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            std::fs::write(&tmp, text).map_err(io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        Ok(MetricsLog { file, path })
    }

    pub fn append(&mut self, m: &StepMetrics) -> Result<()> {
        let line = serde_json::to_string(m).expect("metrics serialise");
        writeln!(self.file, "{line}").map_err(io(&self.path))
    }
}

/// Reads `metrics.jsonl`; a malformed line is an error naming the file and line number.
pub fn read_records(path: &Path) -> Result<Vec<StepMetrics>> {
    let f = File::open(path).map_err(io(path))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(io(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let rec = serde_json::from_str(&line).map_err(|e| {
            crate::EngineError::Invalid(format!("{}:{}: not a metrics record: {e}", path.display(), i + 1))
        })?;
        out.push(rec);
    }
    Ok(out)
}

/// Facts about a run, known at its start.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub start_step: u64,
    pub total_steps: u64,
    pub params: usize,
    pub tokens_per_step: u64,
    pub flops_per_token: f64,
    pub peak_flops: f64,
    pub peak_measured: bool,
    pub memory: MemoryReport,
}

impl RunInfo {
    pub fn new(t: &Trainer) -> RunInfo {
        RunInfo {
            start_step: t.step,
            total_steps: t.cfg.raw.train.steps,
            params: t.global.num_params(),
            tokens_per_step: t.cfg.tokens_per_step,
            flops_per_token: t.global.flops_per_token(t.cfg.raw.model.block_size),
            peak_flops: t.peak_flops,
            peak_measured: t.peak_measured,
            memory: t.memory(),
        }
    }
}

/// Heap bytes the counting allocator ([`crate::alloc`]) saw this rank allocate.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Measured {
    pub params: usize,
    pub grads: usize,
    pub optimizer: usize,
    pub activations: usize,
    /// Peak live bytes of the rank's thread over the run so far (model state,
    /// activations, bucket buffers and everything else it allocated).
    pub thread_peak: usize,
}

impl Measured {
    pub fn model_state(&self) -> usize {
        self.params + self.grads + self.optimizer
    }
}

/// Bytes held by each kind of training state on this rank, with the analytical
/// expectation beside them.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    pub params: usize,
    pub grads: usize,
    pub optimizer: usize,
    pub activations: usize,
    /// Reusable bucket buffers (gathered parameters, gradient scratch) idle in the pool.
    pub buffers: usize,
    /// Model-state bytes by the ZeRO formulas for f32 Adam (16 Psi at stage 0, see
    /// [`crate::shard::expected_model_state_bytes`]).
    pub expected_model_state: f64,
    /// Expected model state + activations by formula ([`model::Activations::expected_bytes`]).
    pub expected_total: f64,
    /// What the allocator measured, when the counting allocator is installed.
    pub measured: Option<Measured>,
    /// A rank on a device (`train.device = "cuda..."`): its memory there.
    pub device: Option<DeviceMemory>,
}

/// Device memory of a rank that computes on a GPU (or the emulated device): what is
/// allocated now and at most so far, against the count of what it holds there (16 bytes
/// a parameter: f32 masters, gradients and both Adam moments, or under bf16 f32 masters
/// and moments with bf16 gradients and a bf16 copy of the weights; and the activations
/// by formula in the run's precision).
#[derive(Clone, Debug, Serialize)]
pub struct DeviceMemory {
    pub device: String,
    /// `train.dtype`: "f32" or "bf16".
    pub dtype: String,
    /// What `expected` counts, in words.
    pub counted: String,
    pub now: usize,
    pub peak: usize,
    pub expected: f64,
}

/// Bytes of model state a device holds for `n` parameters (see `gpu.rs`) in buckets of
/// at most `bucket` elements: fp32 masters, gradients in the run's element size `elem`
/// (and under bf16 a bf16 copy of the weights), both fp32 Adam moments. One device, or
/// ZeRO 0: 16 bytes a parameter. ZeRO 1 keeps this rank's 1/dp of the moments with its
/// block of the reduced gradients and of the updated masters; ZeRO 2 no whole gradient
/// but the one bucket in flight; ZeRO 3 also 1/dp of the masters and their copy, with
/// one gathered bucket in use.
pub fn device_state_bytes(n: usize, bucket: usize, dp: usize, zero: u8, elem: usize) -> f64 {
    let (n, bucket, dp, e) = (n as f64, bucket as f64, dp as f64, elem as f64);
    let copy = if elem == 4 { 0.0 } else { e };
    let sharded = n * (8.0 + e + 4.0) / dp;
    match zero {
        _ if dp == 1.0 => n * (4.0 + e + copy) + 8.0 * n,
        0 => n * (4.0 + e + copy) + 8.0 * n,
        1 => n * (4.0 + e + copy) + sharded,
        2 => n * (4.0 + copy) + sharded + bucket * e,
        _ => n * (4.0 + copy + 8.0 + e) / dp + 2.0 * bucket * e,
    }
}

impl MemoryReport {
    pub fn measure(t: &Trainer) -> MemoryReport {
        let bytes = |v: &Vec<Vec<f32>>| v.iter().map(|b| b.capacity() * 4).sum::<usize>();
        let n = t.gpt.layout.num_params();
        let (b, tt) = (t.cfg.raw.train.batch_size, t.cfg.raw.model.block_size);
        let state = crate::shard::expected_model_state_bytes(n, t.rank.dp, t.cfg.raw.parallel.zero);
        MemoryReport {
            params: bytes(&t.params),
            grads: bytes(&t.grads) + bytes(&t.gshard),
            optimizer: bytes(&t.exp_avg) + bytes(&t.exp_avg_sq),
            // A pipeline stage's saved activations of the micro-batches in flight.
            activations: t.acts.bytes() + t.pipe.as_ref().map_or(0, |p| p.bytes()),
            buffers: t.pool.bytes(),
            expected_model_state: state,
            expected_total: state + model::Activations::expected_bytes_with(&t.gpt.spec, b, tt, t.acts.recompute, t.acts.selective, t.acts.sp) as f64,
            measured: t.measured.map(|m| Measured { thread_peak: crate::alloc::thread_peak().unwrap_or(0).max(0) as usize, ..m }),
            device: t.gpu.as_ref().map(|g| {
                let (device, now, peak) = g.memory();
                let (recompute, selective) = g.recompute();
                let elem = if t.cfg.raw.train.dtype == "bf16" { 2 } else { 4 };
                let sp = if t.cfg.raw.parallel.sp && t.rank.tp > 1 { t.rank.tp } else { 1 };
                let acts = model::Activations::expected_bytes_in(&t.gpt.spec, b, tt, recompute, selective, sp, elem) as f64;
                let zero = t.cfg.raw.parallel.zero;
                let bucket = t.gpt.layout.buckets.iter().map(|k| k.numel).max().unwrap_or(0);
                // A pipeline stage holds its chunks' buckets only.
                let held: usize = t.shards.iter().map(|s| s.numel).sum();
                let state = device_state_bytes(held, bucket, t.rank.dp, zero, elem);
                let mut counted = if elem == 2 {
                    "fp32 masters and Adam moments, bf16 gradients and weight copy, bf16 activations with f32 statistics".to_string()
                } else {
                    "f32 parameters, gradients, Adam moments + activations".to_string()
                };
                if zero >= 1 && t.rank.dp > 1 {
                    let what = ["", "moments", "moments and gradients", "moments, gradients and masters"][zero as usize];
                    counted.push_str(&format!("; {what} sharded over {} ranks (ZeRO {zero})", t.rank.dp));
                }
                DeviceMemory { device, dtype: t.cfg.raw.train.dtype.clone(), counted, now, peak, expected: state + acts }
            }),
        }
    }

    pub fn model_state(&self) -> usize {
        self.params + self.grads + self.optimizer
    }

    pub fn total(&self) -> usize {
        self.model_state() + self.activations + self.buffers
    }
}

/// One term of the memory a rank will allocate, computed before anything is.
#[derive(Clone, Debug)]
pub struct PlannedTerm {
    pub what: &'static str,
    pub bytes: f64,
    /// The config keys that drive it (what to change to shrink it).
    pub keys: &'static str,
}

/// The memory one rank of this run allocates, by term, from the config alone (the
/// same formulas as the memory report: [`crate::shard::expected_model_state_bytes`]
/// split into its parts, [`model::Activations::expected_bytes`], and the whole f32
/// copy of the initial weights that exists while each rank takes its part of it).
/// `vocab` is the prepared data's vocabulary size.
pub fn planned_rank_memory(cfg: &config::ResolvedConfig, vocab: usize) -> crate::Result<Vec<PlannedTerm>> {
    let spec = cfg.clone().with_vocab_size(vocab)?.model_spec()?;
    let psi = spec.num_params() as f64;
    let (dp, zero) = (cfg.raw.parallel.dp as f64, cfg.raw.parallel.zero);
    let share = |whole: bool| if whole { psi } else { psi / dp };
    let size = "model.n_layer, model.n_embd, model.vocab_size";
    let recompute = matches!(cfg.raw.parallel.recompute, config::Recompute::Full);
    let (b, t) = (cfg.raw.train.batch_size, cfg.raw.model.block_size);
    Ok(vec![
        PlannedTerm { what: "parameters", bytes: 4.0 * share(zero < 3), keys: size },
        PlannedTerm { what: "gradients", bytes: 4.0 * share(zero < 2) + if zero == 1 { 4.0 * psi / dp } else { 0.0 }, keys: size },
        PlannedTerm { what: "Adam moments", bytes: 8.0 * share(zero == 0), keys: size },
        PlannedTerm {
            what: "activations",
            bytes: model::Activations::expected_bytes_with(&spec, b, t, recompute, matches!(cfg.raw.parallel.recompute, config::Recompute::Selective), 1) as f64,
            keys: "train.batch_size, model.block_size, parallel.recompute",
        },
        PlannedTerm { what: "initial weights (a whole copy while starting)", bytes: 4.0 * psi, keys: size },
    ])
}

/// Bytes the kernel says can be allocated without swapping (`MemAvailable`), if known.
pub fn available_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Best f32 GEMM rate of this machine over a few square multiplies (FLOP/s): the
/// practical peak that MFU is measured against when `log.peak_flops` is not set.
pub fn measure_peak_flops() -> f64 {
    let n = 768;
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let b = a.clone();
    let mut c = vec![0.0f32; n * n];
    let mut best = 0.0f64;
    for _ in 0..6 {
        let t0 = Instant::now();
        kernels::matmul(&mut c, &a, false, &b, false, n, n, n, false);
        let secs = t0.elapsed().as_secs_f64();
        best = best.max(2.0 * (n * n * n) as f64 / secs);
    }
    best
}

//! Time per training step: compute, tensor/pipeline/data-parallel communication,
//! pipeline bubble and optimizer step.
//!
//! Every constant below is physical and global (no per-run fitting); the values and
//! their sources are listed in docs/planner.md.

use crate::hardware::{Dtype, GemmOp, Machine};
use crate::layout::{Layout, Recompute};
use crate::memory::{block_activation_bytes, layers_per_stage};
use crate::models::{Family, Mlp, ModelSpec};
use serde::Serialize;

/// The calibration constants of the time model.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
pub struct Calibration {
    /// GEMM inner-dimension overhead `k0`: a GEMM with inner size K runs at
    /// `K / (K + k0)` of the large-GEMM rate (per-tile prologue/epilogue and
    /// pipeline fill of the tensor-core main loop).
    pub gemm_k0: f64,
    /// Output tile of the BLAS (rows/cols are padded to it: tile quantization).
    pub gemm_tile: f64,
    /// Rate of a fused (flash) attention kernel relative to large GEMMs, on the FLOPs it
    /// computes (a causal kernel half the `s^2` square). Unfused attention is batched
    /// small GEMMs with head-dim inner size, handled by the GEMM model.
    pub flash_rel: f64,
    /// Passes over the stored activations made by memory-bound element-wise kernels
    /// (norms, GELU, dropout, residual, softmax) in forward + backward.
    pub elementwise_passes: f64,
    /// The same with a fused kernel stack (FlashAttention era: fused norm, bias-GELU/
    /// SwiGLU, residual; the `flash` layout flag stands for that stack).
    pub fused_elementwise_passes: f64,
    /// Passes over the unfused attention's `5 a s^2 b` bytes (scores, softmax,
    /// dropout): Megatron's fused scale-mask-softmax reads and writes each once.
    pub score_passes: f64,
    /// Achieved fraction of HBM bandwidth for streaming kernels.
    pub mem_eff: f64,
    /// Achieved fraction of link bandwidth for NCCL collectives (bus bandwidth).
    pub nvlink_eff: f64,
    pub net_eff: f64,
    /// Fraction of data-parallel communication hidden behind backward compute.
    pub dp_overlap: f64,
    /// Fraction of ZeRO-3 parameter gathers / gradient reduce-scatters hidden behind
    /// compute (they are prefetched a block ahead).
    pub zero3_overlap: f64,
    /// Fraction of TP communication hidden when TP comm/GEMM overlap is on.
    pub tp_overlap: f64,
    /// Fixed per-iteration overhead (data loading, logging, launch gaps), seconds.
    pub step_overhead: f64,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration {
            gemm_k0: 119.0,
            gemm_tile: 128.0,
            flash_rel: 0.55,
            elementwise_passes: 7.64,
            fused_elementwise_passes: 5.95,
            score_passes: 2.0,
            mem_eff: 0.55,
            nvlink_eff: 1.0,
            net_eff: 1.0,
            dp_overlap: 0.5,
            tp_overlap: 0.64,
            zero3_overlap: 0.7,
            step_overhead: 0.0,
        }
    }
}

/// Where the time of one step goes (seconds).
#[derive(Debug, Clone, Serialize, Default)]
pub struct StepTime {
    /// Forward + backward (+ recompute) compute of all micro-batches, slowest stage.
    pub compute: f64,
    /// Of which recomputation.
    pub recompute: f64,
    /// Tensor-parallel collectives (not overlapped).
    pub tp_comm: f64,
    /// Pipeline point-to-point sends on the critical path.
    pub pp_comm: f64,
    /// Idle time of the pipeline fill/drain: the other stages' time for one micro-batch
    /// (`(p-1)/v` micro-batch slots of equal stages).
    pub bubble: f64,
    /// Data-parallel / ZeRO collectives left exposed after overlap.
    pub dp_comm: f64,
    /// Memory-bound optimizer update.
    pub optimizer: f64,
    pub overhead: f64,
    pub total: f64,
}

/// Bandwidth streaming kernels reach: the measured one as it is, else the datasheet
/// figure times the achieved fraction.
fn stream_bw(mm: &Machine, cal: &Calibration) -> f64 {
    match mm.gpu.measured {
        Some(_) => mm.gpu.mem_bw,
        None => mm.gpu.mem_bw * cal.mem_eff,
    }
}

/// Achieved fraction of a link's bandwidth: 1 for a measured machine (its file holds
/// the bus bandwidth collectives reached), else the calibration's.
fn link_eff(mm: &Machine, eff: f64) -> f64 {
    if mm.gpu.measured.is_some() {
        1.0
    } else {
        eff
    }
}

/// Time of one GEMM of `2 M N K` FLOPs (roofline with shape-dependent efficiency; on
/// a measured machine the rate measured for that shape).
pub fn gemm_time(mm: &Machine, cal: &Calibration, m: f64, n: f64, k: f64, dtype: Dtype) -> f64 {
    gemm_op_time(mm, cal, GemmOp::Nn, m, n, k, dtype)
}

/// [`gemm_time`] for one operand layout (it matters only on a measured machine).
fn gemm_op_time(mm: &Machine, cal: &Calibration, op: GemmOp, m: f64, n: f64, k: f64, dtype: Dtype) -> f64 {
    if let Some(ms) = mm.gpu.measured {
        return 2.0 * m * n * k / ms.gemm(op, m, n, k);
    }
    let quant = |x: f64| x / ((x / cal.gemm_tile).ceil() * cal.gemm_tile);
    let eff = mm.gpu.gemm_eff * k / (k + cal.gemm_k0) * quant(m) * quant(n);
    let compute = 2.0 * m * n * k / (mm.gpu.peak(dtype) * eff);
    let bytes = 2.0 * (m * k + k * n + m * n);
    compute.max(bytes / (mm.gpu.mem_bw * cal.mem_eff))
}

/// Forward, backward, the two directions of a linear layer: `y (M x N) = x (M x K) W`.
/// Backward = dX (M x K, inner N) + dW (inner M). `out_in`: W stored (N, K), as
/// `nn.Linear` and an output head store it, so the forward reads it transposed, dX does
/// not, and dW is `dy^T x` (N x K); else W is (K, N) (GPT-2's Conv1D) and dW `x^T dy`.
/// The layouts differ only in the operand order a measured machine times.
fn linear_times(
    mm: &Machine,
    cal: &Calibration,
    m: f64,
    k: f64,
    n: f64,
    dtype: Dtype,
    out_in: bool,
) -> (f64, f64) {
    if out_in {
        let f = gemm_op_time(mm, cal, GemmOp::Nt, m, n, k, dtype);
        let b = gemm_op_time(mm, cal, GemmOp::Nn, m, k, n, dtype) + gemm_op_time(mm, cal, GemmOp::Tn, n, k, m, dtype);
        return (f, b);
    }
    let f = gemm_op_time(mm, cal, GemmOp::Nn, m, n, k, dtype);
    let b = gemm_op_time(mm, cal, GemmOp::Nt, m, k, n, dtype) + gemm_op_time(mm, cal, GemmOp::Tn, k, n, m, dtype);
    (f, b)
}

/// Per-block times for one micro-batch: (forward, backward, attention-core forward).
fn block_times(
    m: &ModelSpec,
    mm: &Machine,
    cal: &Calibration,
    l: &Layout,
    s: f64,
    act_scale: f64,
) -> (f64, f64, f64) {
    let t = l.tp as f64;
    let rows = l.mb as f64 * s;
    let h = m.hidden as f64;
    let f = m.ffn as f64;
    let lin_dtype = if l.fp8 {
        Dtype::Fp8
    } else if act_scale > 1.0 {
        Dtype::Fp32
    } else {
        Dtype::Bf16
    };
    let up = match m.mlp {
        Mlp::Gelu => f,
        Mlp::SwiGlu => 2.0 * f,
    };
    let mut fwd = 0.0;
    let mut bwd = 0.0;
    let (q, kv) = (m.q_width() as f64, m.kv_width() as f64);
    for (k, n) in [(h, (q + 2.0 * kv) / t), (q / t, h), (h, up / t), (f / t, h)] {
        // Llama checkpoints store their linears (out, in); GPT-2's are (in, out).
        let (a, b) = linear_times(mm, cal, rows, k, n, lin_dtype, m.family == Family::Llama);
        fwd += a;
        bwd += b;
    }
    // Attention core: 4 b s^2 q / t FLOPs forward over the full square (unfused: the
    // masked half is computed too); a fused causal kernel computes half of it.
    let heads = (m.heads as f64 / t).max(1.0);
    let d = m.head_dim as f64;
    let batch = l.mb as f64 * heads;
    let attn_dtype = if act_scale > 1.0 {
        Dtype::Fp32
    } else {
        Dtype::Bf16
    };
    let measured_attn = mm.gpu.measured.map(|ms| {
        let (f, b) = ms.attention(s);
        let flops = 4.0 * batch * s * s * d;
        (flops / f, 2.0 * flops / b)
    });
    let attn_fwd = if let Some((f, _)) = measured_attn {
        f
    } else if l.flash {
        // A stack running FlashAttention-2 on a later part gets FA2's rate there.
        let kernel = if l.stack.fa2_attention { mm.gpu.fa2_attention_rel } else { 1.0 };
        // A causal fused kernel skips the tiles above the diagonal: half the square.
        2.0 * batch * s * s * d / (mm.gpu.peak(attn_dtype) * mm.gpu.gemm_eff * cal.flash_rel * kernel)
    } else {
        batch * (gemm_time(mm, cal, s, s, d, attn_dtype) + gemm_time(mm, cal, s, d, s, attn_dtype))
    };
    // Flash backward recomputes the scores inside the kernel: 2.5x forward (Dao 2023).
    let attn_bwd = match measured_attn {
        Some((_, b)) => b,
        None => attn_fwd * if l.flash { 2.5 } else { 2.0 },
    };
    // Memory-bound element-wise work scales with what the block stores (no recompute).
    // (The s^2 score tensors are counted apart: they move at `score_passes`.)
    let act = block_activation_bytes(m, l.mb as f64, s, t, Recompute::Selective, l.sp, l.flash, false)
        * act_scale;
    let passes = if l.flash {
        cal.fused_elementwise_passes
    } else {
        cal.elementwise_passes
    };
    let score_bytes = if l.flash || measured_attn.is_some() {
        // Fused, or inside the measured attention rate.
        0.0
    } else {
        5.0 * m.heads as f64 * s * s * l.mb as f64 / t * act_scale
    };
    let scores = cal.score_passes * score_bytes / stream_bw(mm, cal);
    let elem = match mm.gpu.measured {
        Some(ms) => {
            act / match m.mlp {
                Mlp::Gelu => ms.elementwise_bw,
                Mlp::SwiGlu => ms.elementwise_llama_bw,
            }
        }
        None => passes * act / stream_bw(mm, cal),
    } + scores;
    // One third of element-wise traffic in forward, two thirds in backward.
    (
        fwd + attn_fwd + elem / 3.0,
        bwd + attn_bwd + 2.0 * elem / 3.0,
        attn_fwd + scores / 3.0,
    )
}

/// Ring all-reduce of `bytes` over `n` ranks: `2 (n-1)/n bytes / bw + 2 (n-1) alpha`;
/// double binary tree: `2 bytes / bw + 2 log2(n) alpha` (NCCL's two algorithms; the
/// faster is used). `bw` is the per-rank one-direction bus bandwidth.
pub fn allreduce_time(bytes: f64, n: u64, bw: f64, alpha: f64) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    let nf = n as f64;
    let ring = 2.0 * (nf - 1.0) / nf * bytes / bw + 2.0 * (nf - 1.0) * alpha;
    let tree = 2.0 * bytes / bw + 2.0 * nf.log2().ceil() * alpha;
    ring.min(tree)
}

/// Ring reduce-scatter or all-gather: half an all-reduce.
pub fn gather_time(bytes: f64, n: u64, bw: f64, alpha: f64) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    let nf = n as f64;
    (nf - 1.0) / nf * bytes / bw + (nf - 1.0) * alpha
}

/// Step time of `layout` for `global_batch` sequences of length `s`.
pub fn step_time(
    m: &ModelSpec,
    mm: &Machine,
    cal: &Calibration,
    l: &Layout,
    global_batch: u64,
    s: f64,
    act_scale: f64,
) -> StepTime {
    let t = l.tp as f64;
    let p = l.pp;
    let micro = l.micro_batches(global_batch).max(1) as f64;
    let lps = layers_per_stage(m, p, l.interleave);
    let h = m.hidden as f64;
    let (bf, bb, battn) = block_times(m, mm, cal, l, s, act_scale);
    let rec_per_block = match l.recompute {
        Recompute::None => 0.0,
        Recompute::Selective => {
            if l.flash {
                0.0
            } else {
                battn
            }
        }
        Recompute::Full => bf,
    };

    // TP: 2 all-reduces of (b, s, h) per block forward, 2 backward, 2 more in a full
    // recompute (Megatron-LM 2019 §3); with SP each becomes reduce-scatter +
    // all-gather, the same traffic. Inside a node when t <= GPUs per node.
    let (tp_bw, tp_alpha) = if l.tp <= mm.gpus_per_node {
        (mm.intra_bw * link_eff(mm, cal.nvlink_eff), mm.intra_latency)
    } else {
        (mm.net_bw_per_gpu() * link_eff(mm, cal.net_eff), mm.net_latency)
    };
    let act_bytes = 2.0 * act_scale * l.mb as f64 * s * h;
    let ar = allreduce_time(act_bytes, l.tp, tp_bw, tp_alpha);
    let n_ar = 4.0
        + if l.recompute == Recompute::Full {
            2.0
        } else {
            0.0
        };
    let tp_block = n_ar
        * ar
        * if l.tp_overlap {
            1.0 - cal.tp_overlap
        } else {
            1.0
        };

    // Logits + loss on the last stage (vocab-parallel): 2 b s h V / t forward; the
    // engine of a measured machine runs it in chunks of rows (each chunk's weight
    // gradient a GEMM with that many rows inside).
    let rows = l.mb as f64 * s;
    let vt = m.vocab as f64 / t;
    let chunk = match mm.gpu.measured {
        Some(ms) => (ms.head_chunk_floats / vt).floor().max(rows.min(64.0)).min(rows).max(1.0),
        None => rows,
    };
    let (full, rest) = ((rows / chunk).floor(), rows % chunk);
    let head_dtype = if act_scale > 1.0 { Dtype::Fp32 } else { Dtype::Bf16 };
    // The head's weight is (vocab, hidden), tied or not.
    let (cf, cb) = linear_times(mm, cal, chunk, h, vt, head_dtype, true);
    let (rf, rb) = if rest > 0.0 { linear_times(mm, cal, rest, h, vt, head_dtype, true) } else { (0.0, 0.0) };
    let (lf, lb) = (full * cf + rf, full * cb + rb);
    // Softmax cross-entropy over the vocabulary is memory-bound: fp32 logits are
    // written, read for the max/sum, and the gradient written and read (4 passes).
    let ce = 4.0 * 4.0 * l.mb as f64 * s * m.vocab as f64
        / t
        / match mm.gpu.measured {
            Some(ms) if l.tp > 1 => ms.xent_tp_bw,
            Some(ms) => ms.xent_bw,
            None => stream_bw(mm, cal),
        };
    let head = lf + lb + ce;
    let stage_compute = lps * (bf + bb + rec_per_block);
    // A measured machine's ranks lose time at every TP synchronisation waiting for
    // the one slowed down (its measured fraction of the compute in between).
    let sync = match mm.gpu.measured {
        Some(ms) if l.tp > 1 => ms.sync_overhead,
        _ => 0.0,
    };
    let tp_block = tp_block + sync * (bf + bb + rec_per_block);
    let head_sync = sync * head;
    // The last stage also runs the head (the embedding lookup on the first is
    // negligible): the pipeline runs at the pace of this slowest stage.
    let per_micro = stage_compute + lps * tp_block + head + head_sync;

    // PP: a (b, s, h) activation forward and its gradient backward per micro-batch
    // per chunk boundary; scatter/gather splits it over the TP group (2021 §4.1).
    let v = if p > 1 {
        l.interleave.max(1) as f64
    } else {
        1.0
    };
    let pp_cross_node = l.tp * p > mm.gpus_per_node;
    let pp_bw = if pp_cross_node {
        mm.net_bw_per_gpu() * link_eff(mm, cal.net_eff)
    } else {
        mm.intra_bw * link_eff(mm, cal.nvlink_eff)
    };
    let pp_alpha = if pp_cross_node {
        mm.net_latency
    } else {
        mm.intra_latency
    };
    let p2p = if p > 1 {
        act_bytes / t / pp_bw + pp_alpha
    } else {
        0.0
    };
    let pp_comm = if p > 1 {
        2.0 * v * (p as f64 - 1.0 + micro) * p2p / p as f64
    } else {
        0.0
    };

    // 1F1B runs at the pace of the slowest stage (the last, with the head); the fill
    // and drain are the other stages' forward and backward of one micro-batch each
    // (bubble = the sum of the other stages' times; `(p-1)/(v m)` of the busy time
    // when the stages are equal), split over `v` chunks when interleaved.
    let busy = micro * per_micro;
    let bubble = (p as f64 - 1.0) / v * (per_micro - head - head_sync);

    // DP / ZeRO over the dp axis. Parameters of this GPU's stage:
    let vh = m.vocab as f64 * h;
    let psi = (lps * m.block_params()
        + if p == 1 {
            m.embedding_params() + m.head_params()
        } else {
            vh
        })
        / t;
    let dp_in_node = l.tp * l.dp <= mm.gpus_per_node;
    let (dp_bw, dp_alpha) = if dp_in_node {
        (mm.intra_bw * link_eff(mm, cal.nvlink_eff), mm.intra_latency)
    } else {
        (mm.net_bw_per_gpu() * link_eff(mm, cal.net_eff), mm.net_latency)
    };
    // 16-bit gradients (fp32 where the framework reduces them in fp32).
    let grad_bytes = if l.stack.grad_fp32 { 4.0 } else { 2.0 } * act_scale * psi;
    let param_bytes = 2.0 * act_scale * psi;
    let dp_overlap = if l.stack.dp_exposed { 0.0 } else { cal.dp_overlap };
    let (dp_total, overlap, overlappable) = match l.zero {
        // Gradient all-reduce; ZeRO-1/2 reduce-scatter the gradients and all-gather the
        // 16-bit parameters (half an all-reduce each). Either overlaps only with the
        // backward of the last micro-batch (and the next forward with
        // `param_gather_overlap`).
        0 => (allreduce_time(grad_bytes, l.dp, dp_bw, dp_alpha), dp_overlap, lps * bb),
        1 | 2 => (
            allreduce_time((grad_bytes + param_bytes) / 2.0, l.dp, dp_bw, dp_alpha),
            dp_overlap,
            lps * if l.stack.param_gather_overlap { bb + bf } else { bb },
        ),
        // ZeRO-3 / FSDP: all-gather in forward and in backward, reduce-scatter of
        // gradients, every micro-batch: 3 psi per micro-batch; overlaps with all compute.
        // One collective per block (DeepSpeed/FSDP gather per module), so the
        // latency term counts `3 x blocks` collectives per micro-batch.
        // A framework that re-gathers for the recomputed forward (DeepSpeed) moves a
        // fourth `psi` per micro-batch under full recompute.
        _ => (
            micro
                * lps
                * (gather_time(grad_bytes / lps, l.dp, dp_bw, dp_alpha)
                    + if l.stack.zero3_regather && l.recompute == Recompute::Full { 3.0 } else { 2.0 }
                        * gather_time(param_bytes / lps, l.dp, dp_bw, dp_alpha)),
            cal.zero3_overlap,
            busy,
        ),
    };
    let dp_comm = (dp_total - overlap * overlappable).max(0.0);

    // Optimizer: read grad (4), master/m/v read+write (24), write bf16 weights (2).
    let shard = if l.zero >= 1 { psi / l.dp as f64 } else { psi };
    let optimizer = 30.0 * shard / stream_bw(mm, cal);

    let compute = micro * (stage_compute + head);
    let total = busy + bubble + pp_comm + dp_comm + optimizer + cal.step_overhead;
    StepTime {
        compute,
        recompute: micro * lps * rec_per_block,
        tp_comm: micro * (lps * tp_block + head_sync),
        pp_comm,
        bubble,
        dp_comm,
        optimizer,
        overhead: cal.step_overhead,
        total,
    }
}

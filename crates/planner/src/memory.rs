//! Memory per GPU: model states (ZeRO, Rajbhandari et al. 2020), activations
//! (Korthikanti et al. 2022, Table 2), communication buffers and an allowance for
//! allocator fragmentation.

use crate::layout::{Layout, Recompute};
use crate::models::{Family, Mlp, ModelSpec};
use serde::Serialize;

/// Bytes of mixed-precision Adam state per parameter: fp32 master weights,
/// momentum and variance (the ZeRO paper's `K = 12`).
pub const OPTIMIZER_BYTES: f64 = 12.0;
/// 16-bit weights and gradients.
pub const WEIGHT_BYTES: f64 = 2.0;
/// CUDA context, cuBLAS workspace, NCCL channels: a fixed per-GPU cost (measured
/// ~0.5-1.5 GB on A100/H100 with PyTorch; 1 GB assumed).
pub const CONTEXT_BYTES: f64 = 1.0e9;
/// Allocator fragmentation allowance on activations and buffers, what is allocated and
/// freed every micro-batch (PyTorch's caching allocator typically wastes 5-15%; 10%
/// assumed).
pub const FRAGMENTATION: f64 = 0.10;

/// Model-state bytes per GPU for `psi` parameters under ZeRO stage `zero` over `nd`
/// data-parallel ranks (ZeRO paper §3, Figure 1): DP `16 psi`; ZeRO-1
/// `4 psi + 12 psi / nd`; ZeRO-2 `2 psi + 14 psi / nd`; ZeRO-3 `16 psi / nd`.
/// Returns (weights, gradients, optimizer).
pub fn model_states(psi: f64, zero: u8, nd: u64) -> (f64, f64, f64) {
    let nd = nd.max(1) as f64;
    let w = WEIGHT_BYTES * psi;
    let g = WEIGHT_BYTES * psi;
    let o = OPTIMIZER_BYTES * psi;
    match zero {
        0 => (w, g, o),
        1 => (w, g, o / nd),
        2 => (w, g / nd, o / nd),
        _ => (w / nd, g / nd, o / nd),
    }
}

/// Activation bytes of ONE block for one micro-batch of `b` sequences of length `s`
/// with 16-bit activations (Korthikanti et al. 2022 Table 2, generalised to GQA and
/// SwiGLU):
///  - no parallelism: `s b h (34 + 5 a s / h)`;
///  - TP: `s b h (10 + 24/t + 5 a s/(h t))`; TP+SP: `s b h (34/t + 5 a s/(h t))`;
///  - selective recompute (or fused attention) drops the `5 a s^2 b` term;
///  - full recompute keeps only the block input, `2 s b h` (`/t` with SP).
///
/// The 24 of "24/t" is `4q + 4 kv_width + 16h` for GPT (Q,K,V and the
/// attention-output input, `q = heads * head_dim = h` for GPT, plus GELU's two `4h`
/// tensors); SwiGLU stores three `f` wide tensors instead of two. The replicated `10`
/// is the two norm inputs (4), the two linear inputs they feed (4) and two 1-byte
/// dropout masks (2): Llama-family blocks have no dropout (8).
///
/// `fp8` (Transformer Engine): the inputs of the linear layers are kept as their 1-byte
/// casts: the two normed inputs and the MLP's down-projection input shrink by half; the
/// attention output, which a fused kernel also keeps in 16 bits, adds its 1-byte copy.
#[allow(clippy::too_many_arguments)]
pub fn block_activation_bytes(
    m: &ModelSpec,
    b: f64,
    s: f64,
    t: f64,
    recompute: Recompute,
    sp: bool,
    flash: bool,
    fp8: bool,
) -> f64 {
    let h = m.hidden as f64;
    let sbh = s * b * h;
    if recompute == Recompute::Full {
        return 2.0 * sbh / if sp { t } else { 1.0 };
    }
    let f = m.ffn as f64;
    let (q, kv) = (m.q_width() as f64, m.kv_width() as f64);
    let lin = if fp8 { 1.0 } else { 2.0 };
    let mlp = match m.mlp {
        Mlp::Gelu => 2.0 * f + lin * f,
        Mlp::SwiGlu => 4.0 * f + lin * f,
    };
    let attn = 4.0 * q + 4.0 * kv
        + match (fp8, flash) {
            (false, _) => 0.0,
            (true, true) => q,
            (true, false) => -q,
        };
    let split = s * b * (attn + mlp) / t;
    let masks = match m.family {
        Family::Gpt2 => 2.0,
        Family::Llama => 0.0,
    };
    let replicated = (4.0 + 2.0 * lin + masks) * sbh / if sp { t } else { 1.0 };
    let scores = if recompute == Recompute::None && !flash {
        5.0 * m.heads as f64 * s * s * b / t
    } else {
        0.0
    };
    replicated + split + scores
}

/// Per-GPU memory, bytes, for the stage that needs the most.
#[derive(Debug, Clone, Serialize, Default)]
pub struct MemoryBreakdown {
    pub params_per_gpu: f64,
    pub weights: f64,
    pub gradients: f64,
    pub optimizer: f64,
    pub activations: f64,
    pub comm_buffers: f64,
    pub fragmentation_and_context: f64,
    pub total: f64,
    /// `first` or `last` pipeline stage (`only` without pipelining).
    pub worst_stage: &'static str,
}

/// Layers on the most loaded stage.
/// With `v` interleaved chunks the slowest stage holds `v` chunks of
/// `ceil(l / (p v))` layers.
pub fn layers_per_stage(m: &ModelSpec, pp: u64, v: u64) -> f64 {
    let chunks = pp.max(1) * v.max(1);
    ((m.layers as u64).div_ceil(chunks) * v.max(1)) as f64
}

/// Memory of the worst stage of `layout` (`global_batch` sequences of length `s`).
/// `act_scale` is bytes per activation element / 2 (1 for 16-bit, 2 for fp32).
pub fn memory(
    m: &ModelSpec,
    layout: &Layout,
    global_batch: u64,
    s: f64,
    act_scale: f64,
) -> MemoryBreakdown {
    let t = layout.tp as f64;
    let p = layout.pp;
    let lps = layers_per_stage(m, p, layout.interleave);
    let mb = layout.mb as f64;
    let micro = layout.micro_batches(global_batch).max(1) as f64;
    let h = m.hidden as f64;
    // Parameters per stage. Without pipelining: every parameter, `m.params()`.
    // With it, the first stage holds the embeddings, the last the final norm and the
    // output head; Megatron keeps a copy of a tied embedding there too.
    let tied_copy = if m.tied && p > 1 {
        m.vocab as f64 * h
    } else {
        0.0
    };
    let first_params = (lps * m.block_params() + m.embedding_params()) / t;
    let last_params = if p == 1 {
        (lps * m.block_params() + m.embedding_params() + m.head_params()) / t
    } else {
        (lps * m.block_params() + m.head_params() + tied_copy) / t
    };

    // Activations. 1F1B: stage 1 holds min(p, m) micro-batches in flight, the last
    // stage one; interleaving multiplies by 1 + (p-1)/(p v) (2022 paper §4.2.3).
    let per_block = block_activation_bytes(m, mb, s, t, layout.recompute, layout.sp, layout.flash, layout.fp8);
    let in_flight = (p as f64).min(micro);
    let interleave = if layout.interleave > 1 && p > 1 {
        1.0 + (p as f64 - 1.0) / (p as f64 * layout.interleave as f64)
    } else {
        1.0
    };
    // With full recompute one block's full activations live during its backward.
    let working = if layout.recompute == Recompute::Full {
        block_activation_bytes(m, mb, s, t, Recompute::None, layout.sp, layout.flash, layout.fp8)
    } else {
        0.0
    };
    // Embedding output (dropout mask + value) and, on the last stage, fp32 logits
    // and their gradient: b s V / t x (4 + 4) bytes during the loss.
    let emb_act = 3.0 * s * mb * h / if layout.sp { t } else { 1.0 };
    let logits = 8.0 * s * mb * m.vocab as f64 / t;
    let first_act = (per_block * lps * in_flight * interleave + working + emb_act) * act_scale;
    let last_act = (per_block * lps + working + logits) * act_scale;

    let stage = |psi: f64, act: f64| {
        let (w, g, o) = model_states(psi, layout.zero, layout.dp);
        // A framework reducing gradients in fp32 keeps them in an fp32 buffer.
        let g = if layout.stack.grad_fp32 { 2.0 * g } else { g };
        // Buffers: a 2-bucket gradient reduction (25M elements fp32, PyTorch DDP
        // default), ZeRO-3 prefetch of two full blocks, TP/PP send buffers.
        let mut buf = 0.0;
        if layout.dp > 1 {
            buf += 2.0 * 25e6 * 4.0;
        }
        if layout.zero >= 3 {
            buf += 2.0 * WEIGHT_BYTES * m.block_params() / t * 2.0;
        }
        if layout.tp > 1 || p > 1 {
            buf += 2.0 * 2.0 * s * mb * h;
        }
        // Model states are allocated once, at start; the caching allocator's waste
        // is on what comes and goes every micro-batch.
        let dynamic = act + buf;
        let frag = FRAGMENTATION * dynamic + CONTEXT_BYTES;
        MemoryBreakdown {
            params_per_gpu: psi,
            weights: w,
            gradients: g,
            optimizer: o,
            activations: act,
            comm_buffers: buf,
            fragmentation_and_context: frag,
            total: w + g + o + dynamic + frag,
            worst_stage: "first",
        }
    };
    if p == 1 {
        let mut only = stage(last_params, first_act + logits * act_scale);
        only.worst_stage = "only";
        return only;
    }
    let first = stage(first_params, first_act);
    let mut last = stage(last_params, last_act);
    last.worst_stage = "last";
    if first.total >= last.total {
        first
    } else {
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::model;

    #[test]
    fn zero_paper_worked_example_7_5b_on_64() {
        // ZeRO paper Figure 1: Psi = 7.5B, N_d = 64, K = 12:
        // 120 GB (DP), 31.4 GB (P_os), 16.6 GB (P_os+g), 1.9 GB (P_os+g+p).
        let want = [120.0, 31.4, 16.6, 1.9];
        for (zero, want) in want.iter().enumerate() {
            let (w, g, o) = model_states(7.5e9, zero as u8, 64);
            let gb = (w + g + o) / 1e9;
            assert!((gb - want).abs() < 0.05, "zero {zero}: {gb}");
        }
    }

    #[test]
    fn activation_formulas_of_korthikanti_2022_table_2() {
        // GPT-3 175B shapes: s 2048, b 1, h 12288, a 96, t 8.
        let m = model("gpt3-175b").unwrap();
        let (s, b, h, a, t) = (2048.0, 1.0, 12288.0, 96.0, 8.0);
        let sbh = s * b * h;
        let got = |r, sp, tt| block_activation_bytes(&m, b, s, tt, r, sp, false, false);
        let close = |x: f64, y: f64| (x / y - 1.0).abs() < 1e-12;
        assert!(close(
            got(Recompute::None, false, 1.0),
            sbh * (34.0 + 5.0 * a * s / h)
        ));
        assert!(close(
            got(Recompute::None, false, t),
            sbh * (10.0 + 24.0 / t + 5.0 * a * s / (h * t))
        ));
        assert!(close(
            got(Recompute::None, true, t),
            sbh * (34.0 / t + 5.0 * a * s / (h * t))
        ));
        assert!(close(
            got(Recompute::Selective, false, t),
            sbh * (10.0 + 24.0 / t)
        ));
        assert!(close(got(Recompute::Selective, true, t), sbh * 34.0 / t));
        assert!(close(got(Recompute::Full, false, t), 2.0 * sbh));
        // The paper's headline: selective + SP cuts 175B activations ~5x vs TP alone.
        let ratio = got(Recompute::None, false, t) / got(Recompute::Selective, true, t);
        assert!(ratio > 4.5 && ratio < 6.5, "{ratio}");
        // Fused attention stores no s^2 scores.
        assert!(close(
            block_activation_bytes(&m, b, s, t, Recompute::None, true, true, false),
            sbh * 34.0 / t
        ));
    }

    #[test]
    fn pipeline_stage_holds_p_micro_batches_and_interleave_adds() {
        let m = model("gpt3-175b").unwrap();
        let base = Layout {
            tp: 8,
            pp: 8,
            dp: 1,
            zero: 0,
            mb: 1,
            recompute: Recompute::Selective,
            interleave: 1,
            sp: true,
            flash: false,
            fp8: false,
            tp_overlap: false,
            stack: Default::default(),
        };
        let one = memory(&m, &base, 64, 2048.0, 1.0);
        // 12 layers x 8 micro-batches = all 96 layers' activations on stage 1.
        let per = block_activation_bytes(&m, 1.0, 2048.0, 8.0, Recompute::Selective, true, false, false);
        assert!((one.activations - 96.0 * per) / one.activations < 0.01);
        let il = memory(
            &m,
            &Layout {
                interleave: 3,
                ..base
            },
            64,
            2048.0,
            1.0,
        );
        let want = 1.0 + 7.0 / 24.0;
        assert!(
            ((il.activations / one.activations) - want).abs() < 0.01,
            "{}",
            il.activations / one.activations
        );
        assert!(one.total < 80e9 && one.total > one.weights + one.optimizer);
    }

    #[test]
    fn parameter_bytes_use_the_exact_count_of_every_catalog_entry() {
        let one = Layout {
            tp: 1,
            pp: 1,
            dp: 1,
            zero: 0,
            mb: 1,
            recompute: Recompute::Full,
            interleave: 1,
            sp: false,
            flash: true,
            fp8: false,
            tp_overlap: false,
            stack: Default::default(),
        };
        for m in crate::models::catalog() {
            assert_eq!(m.params(), m.num_params() as f64, "{}", m.name);
            let r = memory(&m, &one, 1, 16.0, 1.0);
            assert_eq!(r.params_per_gpu, m.params(), "{}", m.name);
            assert_eq!(
                r.weights,
                WEIGHT_BYTES * m.num_params() as f64,
                "{}",
                m.name
            );
            assert_eq!(
                r.optimizer,
                OPTIMIZER_BYTES * m.num_params() as f64,
                "{}",
                m.name
            );
            // Two stages hold every parameter once, plus the tied embedding's copy.
            if m.layers % 2 == 0 {
                let two = Layout { pp: 2, ..one };
                let first = (m.layers / 2) as f64 * m.block_params() + m.embedding_params();
                let copy = if m.tied {
                    (m.vocab * m.hidden) as f64
                } else {
                    0.0
                };
                let last = m.params() - first + copy;
                let r = memory(&m, &two, 2, 16.0, 1.0);
                let want = if r.worst_stage == "first" {
                    first
                } else {
                    last
                };
                assert_eq!(r.params_per_gpu, want, "{} {}", m.name, r.worst_stage);
            }
        }
    }
}

//! FLOP counts per training iteration under the conventions papers use.
//!
//! One GEMM `(M x K) @ (K x N)` costs `2 M N K` FLOPs; backward costs twice the
//! forward (activation and weight gradients). Attention scores and their product
//! with V cost `2 b s^2 h` each per layer in the forward pass (the full square,
//! as Megatron-LM counts it, causal mask or not).

use crate::models::ModelSpec;
use serde::Serialize;

/// Which FLOPs a published figure counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlopConvention {
    /// Model FLOPs: forward + backward only (MFU; Korthikanti et al. 2022 eq. 7,
    /// `72 B s l h^2 (1 + s/(6h) + V/(12 l h))` for GPT shapes).
    Model,
    /// Megatron-LM 2021 eq. 3: model FLOPs plus one extra forward of every block
    /// (the full-recompute pass), `96 B s l h^2 (1 + s/(6h) + V/(16 l h))`.
    /// Megatron, DeepSpeed and BLOOM report this whatever recompute was used.
    WithRecompute,
    /// PaLM appendix B: `6 N + 12 L H Q T` per token, N non-embedding parameters.
    Palm,
}

/// FLOPs of one iteration over `batch` sequences of length `s` in a convention,
/// from the model spec's per-token counts ([`ModelSpec::block_fwd_flops`]:
/// `2 b s P_matmul + 4 b s^2 q`, = `24 b s h^2 + 4 b s^2 h` for GPT;
/// [`ModelSpec::logits_fwd_flops`]: `2 b s h V`).
pub fn iteration_flops(m: &ModelSpec, batch: f64, s: f64, conv: FlopConvention) -> f64 {
    let tokens = batch * s;
    let blocks = m.layers as f64 * m.block_fwd_flops(tokens, s);
    let logits = m.logits_fwd_flops(tokens);
    match conv {
        FlopConvention::Model => 3.0 * (blocks + logits),
        FlopConvention::WithRecompute => 4.0 * blocks + 3.0 * logits,
        FlopConvention::Palm => {
            // PaLM's `H Q` is heads x head width: the spec's `q_width` (= h for GPT).
            let per_token =
                6.0 * m.non_embedding_params() + 12.0 * m.layers as f64 * m.q_width() as f64 * s;
            tokens * per_token
        }
    }
}

/// Days to train `tokens` at `flops_per_gpu` achieved FLOP/s on `gpus` GPUs, with the
/// FLOPs per token of the convention (Megatron 2021 §5.1: `8 T P / (n X)` with
/// recompute, `6 T P / (n X)` without).
pub fn days_to_train(
    m: &ModelSpec,
    tokens: f64,
    gpus: f64,
    flops_per_gpu: f64,
    conv: FlopConvention,
) -> f64 {
    let per_token = iteration_flops(m, 1.0, m.seq as f64, conv) / m.seq as f64;
    tokens * per_token / (gpus * flops_per_gpu) / 86_400.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::model;

    #[test]
    fn megatron_eq3_and_eq7_are_reproduced_exactly() {
        let m = model("megatron-1t").unwrap();
        let (b, s, l, h, v) = (3072.0, 2048.0, 128.0, 25600.0, 51200.0);
        let eq3 = 96.0 * b * s * l * h * h * (1.0 + s / (6.0 * h) + v / (16.0 * l * h));
        let eq7 = 72.0 * b * s * l * h * h * (1.0 + s / (6.0 * h) + v / (12.0 * l * h));
        let f3 = iteration_flops(&m, b, s, FlopConvention::WithRecompute);
        let f7 = iteration_flops(&m, b, s, FlopConvention::Model);
        assert!((f3 / eq3 - 1.0).abs() < 1e-12, "{f3} vs {eq3}");
        assert!((f7 / eq7 - 1.0).abs() < 1e-12, "{f7} vs {eq7}");
        // The recompute count is 4/3 of the model count up to the logits term.
        assert!((f3 / f7 - 4.0 / 3.0).abs() < 0.01);
    }

    #[test]
    fn megatron_table1_1t_row_163_tflops_on_3072_gpus() {
        // Table 1, last row: 1008B parameters, batch 3072, 3072 GPUs, 163 TF/GPU,
        // aggregate 502.0 PFLOP/s. The job's 61,302 tokens/s follows from eq. 3.
        let m = model("megatron-1t").unwrap();
        let f = iteration_flops(&m, 3072.0, 2048.0, FlopConvention::WithRecompute);
        let iter_s = f / (3072.0 * 163e12);
        let tokens_per_s = 3072.0 * 2048.0 / iter_s;
        assert!((tokens_per_s - 61_302.0).abs() < 50.0, "{tokens_per_s}");
        assert!((163e12_f64 * 3072.0 / 1e15 - 500.7).abs() < 0.1);
        // §5.1: 1T on 3072 GPUs for 450B tokens at 163 TF takes ~84 days (8TP/(nX)).
        let days = 8.0 * 450e9 * m.params() / (3072.0 * 163e12) / 86_400.0;
        assert!((days - 84.0).abs() < 0.5, "{days}");
        let d2 = days_to_train(&m, 450e9, 3072.0, 163e12, FlopConvention::WithRecompute);
        assert!((d2 - days).abs() / days < 0.03, "{d2} vs {days}");
    }

    #[test]
    fn palm_count_for_gpt3() {
        // PaLM Table 3 puts GPT-3's 24.6 TF/GPU (non-attention) at 21.3% MFU; the
        // attention term is 12 L H Q T = 12 * 96 * 12288 * 2048 per token.
        let m = model("gpt3-175b").unwrap();
        let per_tok = iteration_flops(&m, 1.0, 2048.0, FlopConvention::Palm) / 2048.0;
        let attn = 12.0 * 96.0 * 12288.0 * 2048.0;
        assert!((per_tok - 6.0 * m.non_embedding_params() - attn).abs() < 1.0);
        assert!((m.non_embedding_params() / 1e9 - 174.0).abs() < 1.0);
    }

    #[test]
    fn model_convention_is_the_specs_flops_per_token() {
        for m in crate::models::catalog() {
            let s = m.seq.min(8192);
            let per_token =
                iteration_flops(&m, 4.0, s as f64, FlopConvention::Model) / (4.0 * s as f64);
            assert!(
                (per_token / m.flops_per_token(s) - 1.0).abs() < 1e-12,
                "{}",
                m.name
            );
        }
    }
}

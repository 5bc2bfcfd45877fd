//! A parallel layout and the job it runs.

use crate::error::PlanError;
use serde::Serialize;

/// Activation recomputation policy (Korthikanti et al. 2022).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Recompute {
    None,
    /// Recompute only the attention core (softmax, dropout, scores x V).
    Selective,
    /// Store each block's input; recompute the whole block in backward.
    Full,
}

impl Recompute {
    pub const ALL: [Recompute; 3] = [Recompute::None, Recompute::Selective, Recompute::Full];

    pub fn name(self) -> &'static str {
        match self {
            Recompute::None => "none",
            Recompute::Selective => "selective",
            Recompute::Full => "full",
        }
    }
}

/// How a job is split over GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Layout {
    pub tp: u64,
    pub pp: u64,
    pub dp: u64,
    /// ZeRO stage 0-3 over the dp axis (3 = FSDP full sharding).
    pub zero: u8,
    /// Micro-batch size in sequences.
    pub mb: u64,
    pub recompute: Recompute,
    /// Interleaved pipeline chunks per stage `v` (1 = plain 1F1B).
    pub interleave: u64,
    /// Sequence parallelism inside the TP group.
    pub sp: bool,
    /// Fused (flash) attention: no `s^2` activations, kernel-level recompute.
    pub flash: bool,
    /// Linear layers in fp8 (2x the bf16 peak where the GPU has it).
    pub fp8: bool,
    /// TP collectives overlapped with GEMMs (TE `tp-comm-overlap`, PyTorch AsyncTP).
    pub tp_overlap: bool,
    /// What the training framework does that the layout alone does not say.
    #[serde(skip)]
    pub stack: Stack,
}

/// Framework behaviour that changes the traffic and memory of a layout (read from a
/// published run's source; Hyperion's own engine is the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stack {
    /// Gradients are accumulated and reduced over data parallelism in fp32 (4 bytes an
    /// element): Megatron-LM forces it for bf16 training (`accumulate_allreduce_grads_in_fp32`,
    /// megatron/training/arguments.py), and Megatron-Bridge inherits it (NeMo 1.x's
    /// apex distributed Adam syncs 16-bit gradients).
    pub grad_fp32: bool,
    /// ZeRO-3 gathers a block's parameters again for the forward recomputed in backward
    /// (DeepSpeed's stage-3 hooks release parameters after every forward, the
    /// recomputed one included), so full recompute costs a fourth collective per block.
    pub zero3_regather: bool,
    /// The data-parallel gradient reduction starts after the backward instead of
    /// overlapping it: Megatron-LM before its opt-in `--overlap-grad-reduce` (2023;
    /// still off by default there), and DeepSpeed's pipeline engine.
    pub dp_exposed: bool,
    /// ZeRO-1/2's parameter all-gather overlaps the next step's first forward
    /// (Megatron-Core `--overlap-param-gather`), not only the backward.
    pub param_gather_overlap: bool,
    /// The fused attention is FlashAttention-2 (the `flash-attn` package, PyTorch SDPA
    /// before cuDNN attention): written for Ampere, it runs on later parts at a fraction
    /// of their own kernels' rate (`Gpu::fa2_attention_rel`).
    pub fa2_attention: bool,
}

impl Layout {
    /// GPUs used.
    pub fn gpus(&self) -> u64 {
        self.tp * self.pp * self.dp
    }

    /// Micro-batches per pipeline per step for a global batch.
    pub fn micro_batches(&self, global_batch: u64) -> u64 {
        global_batch / (self.dp * self.mb).max(1)
    }

    /// `tp=8,pp=16,dp=4,zero=1,mb=1,recompute=selective,v=2,sp=1`.
    pub fn short(&self) -> String {
        format!(
            "tp={},pp={},dp={},zero={},mb={},recompute={},v={}{}{}",
            self.tp,
            self.pp,
            self.dp,
            self.zero,
            self.mb,
            self.recompute.name(),
            self.interleave,
            if self.sp { ",sp" } else { "" },
            if self.fp8 { ",fp8" } else { "" }
        ) + if self.tp_overlap { ",tp_overlap" } else { "" }
            + if self.flash && self.stack.fa2_attention { ",fa2" } else { "" }
    }
}

/// A partially specified layout from `--layout`; unset fields are searched.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LayoutSpec {
    pub tp: Option<u64>,
    pub pp: Option<u64>,
    pub dp: Option<u64>,
    pub zero: Option<u8>,
    pub mb: Option<u64>,
    pub recompute: Option<Recompute>,
    pub interleave: Option<u64>,
    pub sp: Option<bool>,
    pub flash: Option<bool>,
    pub fp8: Option<bool>,
    pub tp_overlap: Option<bool>,
    pub stack: Option<Stack>,
    /// Restrict the searched ZeRO stages / recompute policies (e.g. to what a
    /// framework of a given year offered); `None` = all.
    pub zero_choices: Option<&'static [u8]>,
    pub recompute_choices: Option<&'static [Recompute]>,
}

impl LayoutSpec {
    /// Parse `tp=8,pp=16,dp=...,zero=1,mb=1,recompute=selective,v=2,sp=1,flash=1,fp8=0,fa2=1`.
    pub fn parse(text: &str) -> Result<LayoutSpec, PlanError> {
        let bad = |reason: String| PlanError::BadLayout {
            text: text.to_string(),
            reason,
        };
        let mut spec = LayoutSpec::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, val) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("`{part}` is not key=value")))?;
            let num = || {
                val.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| bad(format!("`{key}` needs a positive integer, got `{val}`")))
            };
            let flag = || match val.trim() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(bad(format!("`{key}` needs 0/1, got `{val}`"))),
            };
            match key.trim() {
                "tp" => spec.tp = Some(num()?),
                "pp" => spec.pp = Some(num()?),
                "dp" => spec.dp = Some(num()?),
                "mb" | "micro_batch" => spec.mb = Some(num()?),
                "v" | "interleave" => spec.interleave = Some(num()?),
                "zero" => match val.trim() {
                    "0" | "1" | "2" | "3" => spec.zero = val.trim().parse().ok(),
                    _ => return Err(bad(format!("`zero` is 0, 1, 2 or 3, got `{val}`"))),
                },
                "recompute" => {
                    spec.recompute = Some(match val.trim() {
                        "none" | "no" => Recompute::None,
                        "selective" => Recompute::Selective,
                        "full" => Recompute::Full,
                        _ => return Err(bad(format!("`recompute` is none|selective|full, got `{val}`"))),
                    })
                }
                "sp" => spec.sp = Some(flag()?),
                "flash" => spec.flash = Some(flag()?),
                "fp8" => spec.fp8 = Some(flag()?),
                "tp_overlap" => spec.tp_overlap = Some(flag()?),
                // The fused attention is FlashAttention-2 (slower on Hopper and later).
                "fa2" => {
                    let stack = spec.stack.get_or_insert_with(Stack::default);
                    stack.fa2_attention = flag()?;
                }
                other => return Err(bad(format!("unknown key `{other}` (valid: tp, pp, dp, zero, mb, recompute, v, sp, flash, fp8, tp_overlap, fa2)"))),
            }
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_layouts() {
        let s = LayoutSpec::parse("tp=8,pp=16,zero=1,mb=2,recompute=selective,v=3,sp=1").unwrap();
        assert_eq!(
            (s.tp, s.pp, s.dp, s.zero, s.mb),
            (Some(8), Some(16), None, Some(1), Some(2))
        );
        assert_eq!(
            (s.recompute, s.interleave, s.sp),
            (Some(Recompute::Selective), Some(3), Some(true))
        );
        let fa2 = LayoutSpec::parse("tp=2,fa2=1").unwrap();
        assert!(fa2.stack.unwrap().fa2_attention);
        assert_eq!(LayoutSpec::parse("tp=2").unwrap().stack, None);
        for bad in ["tp=0", "zero=4", "recompute=half", "foo=1", "tp8", "fa2=maybe"] {
            let e = LayoutSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}

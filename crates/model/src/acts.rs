//! Activation buffers, allocated once per (micro-batch, sequence) shape and reused every
//! step: fresh large allocations cost page faults on every step otherwise.

use crate::layout::GptConfig;

/// What one transformer block keeps from its forward for its backward. Shapes per token
/// row (B*T rows): ln (C), qkv (3C), att (C), res2 (C), fc and gelu (4C).
pub struct BlockActs {
    pub ln1: Vec<f32>,       // (B,T,C)
    pub ln1_mean: Vec<f32>,  // (B,T)
    pub ln1_rstd: Vec<f32>,  // (B,T)
    pub qkv: Vec<f32>,       // (B,T,3C)
    pub att: Vec<f32>,       // (B,T,C) attention output before c_proj
    pub att_saved: Vec<f32>, // kernel-defined softmax statistics
    pub res2: Vec<f32>,      // (B,T,C) residual after attention
    pub ln2: Vec<f32>,       // (B,T,C)
    pub ln2_mean: Vec<f32>,
    pub ln2_rstd: Vec<f32>,
    pub fc: Vec<f32>,   // (B,T,4C) before GELU
    pub gelu: Vec<f32>, // (B,T,4C)
}

impl BlockActs {
    fn new(cfg: &GptConfig, b: usize, t: usize) -> Self {
        let (n, c) = (b * t, cfg.n_embd);
        BlockActs {
            ln1: vec![0.0; n * c],
            ln1_mean: vec![0.0; n],
            ln1_rstd: vec![0.0; n],
            qkv: vec![0.0; n * 3 * c],
            att: vec![0.0; n * c],
            att_saved: vec![0.0; kernels::attention_saved_len(b, t, cfg.n_head)],
            res2: vec![0.0; n * c],
            ln2: vec![0.0; n * c],
            ln2_mean: vec![0.0; n],
            ln2_rstd: vec![0.0; n],
            fc: vec![0.0; n * 4 * c],
            gelu: vec![0.0; n * 4 * c],
        }
    }

    fn floats(&self) -> usize {
        [
            &self.ln1, &self.ln1_mean, &self.ln1_rstd, &self.qkv, &self.att, &self.att_saved,
            &self.res2, &self.ln2, &self.ln2_mean, &self.ln2_rstd, &self.fc, &self.gelu,
        ]
        .iter()
        .map(|v| v.len())
        .sum()
    }
}

/// All activations and backward scratch for micro-batches of shape (B, T).
///
/// With `recompute = true` (activation checkpointing, "full") only each block's input
/// (`resid[l]`) is kept; a single [`BlockActs`] is scratch that the backward refills by
/// re-running the block's forward.
pub struct Activations {
    pub b: usize,
    pub t: usize,
    pub recompute: bool,
    pub tokens: Vec<u32>, // (B,T)
    /// `resid[0]` is the embedding output, `resid[l + 1]` block l's output. (L+1, B,T,C)
    pub resid: Vec<Vec<f32>>,
    pub blocks: Vec<BlockActs>,
    pub lnf: Vec<f32>, // (B,T,C)
    pub lnf_mean: Vec<f32>,
    pub lnf_rstd: Vec<f32>,
    /// Logits of `head_rows` rows at a time: the head never materialises (B*T, V).
    pub logits: Vec<f32>,
    pub head_rows: usize,
    pub losses: Vec<f32>, // (B,T)
    // Backward scratch.
    pub dres: Vec<f32>,  // (B,T,C) gradient flowing down the residual stream
    pub d_ln: Vec<f32>,  // (B,T,C)
    pub d_att: Vec<f32>, // (B,T,C)
    pub d_qkv: Vec<f32>, // (B,T,3C)
    pub d_fc: Vec<f32>,  // (B,T,4C)
    pub d_gelu: Vec<f32>,
}

/// Bound on the logits scratch, in floats (64 MiB).
const HEAD_SCRATCH_FLOATS: usize = 1 << 24;

impl Activations {
    pub fn new(cfg: &GptConfig, b: usize, t: usize, recompute: bool) -> Self {
        assert!(t <= cfg.block_size, "sequence {t} longer than block_size {}", cfg.block_size);
        let (n, c) = (b * t, cfg.n_embd);
        let head_rows = (HEAD_SCRATCH_FLOATS / cfg.vocab_size).clamp(1, n).max(n.min(64));
        let stored = if recompute { 1 } else { cfg.n_layer };
        Activations {
            b,
            t,
            recompute,
            tokens: vec![0; n],
            resid: (0..=cfg.n_layer).map(|_| vec![0.0; n * c]).collect(),
            blocks: (0..stored).map(|_| BlockActs::new(cfg, b, t)).collect(),
            lnf: vec![0.0; n * c],
            lnf_mean: vec![0.0; n],
            lnf_rstd: vec![0.0; n],
            logits: vec![0.0; head_rows * cfg.vocab_size],
            head_rows,
            losses: vec![0.0; n],
            dres: vec![0.0; n * c],
            d_ln: vec![0.0; n * c],
            d_att: vec![0.0; n * c],
            d_qkv: vec![0.0; n * 3 * c],
            d_fc: vec![0.0; n * 4 * c],
            d_gelu: vec![0.0; n * 4 * c],
        }
    }

    /// Bytes held, for the memory report.
    pub fn bytes(&self) -> usize {
        let vecs = [
            &self.lnf, &self.lnf_mean, &self.lnf_rstd, &self.logits, &self.losses, &self.dres,
            &self.d_ln, &self.d_att, &self.d_qkv, &self.d_fc, &self.d_gelu,
        ];
        let floats: usize = vecs.iter().map(|v| v.len()).sum::<usize>()
            + self.resid.iter().map(|v| v.len()).sum::<usize>()
            + self.blocks.iter().map(|b| b.floats()).sum::<usize>();
        4 * floats + 4 * self.tokens.len()
    }

    /// Analytical activation bytes for shape (B, T) (equals [`Activations::bytes`]; the
    /// planner and the memory report use this without allocating).
    pub fn expected_bytes(cfg: &GptConfig, b: usize, t: usize, recompute: bool) -> usize {
        let (n, c, l) = (b * t, cfg.n_embd, cfg.n_layer);
        let block = n * (15 * c + 4) + kernels::attention_saved_len(b, t, cfg.n_head);
        let stored = if recompute { 1 } else { l };
        let head_rows = (HEAD_SCRATCH_FLOATS / cfg.vocab_size).clamp(1, n).max(n.min(64));
        let floats = (l + 1) * n * c + stored * block + n * (c + 3) + head_rows * cfg.vocab_size + n * (c * 3 + 3 * c + 8 * c);
        4 * floats + 4 * n
    }
}

//! Activation buffers, allocated once per (micro-batch, sequence) shape and reused every
//! step: fresh large allocations cost page faults on every step otherwise. Buffers are
//! the backend's ([`crate::backend::Backend::Vec`]).

use std::ops::Range;

use crate::backend::{Backend, Cpu};
use crate::layout::ToSpec;
use crate::spec::{Mlp, ModelSpec, Norm, Positions};

/// Floats per row (token) of each activation, from the spec: the allocation and the
/// analytical byte count both read these, so they cannot drift apart.
#[derive(Clone, Copy, Debug)]
struct Widths {
    c: usize,
    /// Packed q|k|v.
    qkv: usize,
    /// Attention output (heads * head_dim).
    att: usize,
    /// MLP input projection output: f (GELU) or 2f (SwiGLU gate|up).
    up: usize,
    /// MLP activation output: f.
    act: usize,
    /// LayerNorm saves a mean per row; RMSNorm does not.
    mean: usize,
}

impl Widths {
    fn of(m: &ModelSpec) -> Widths {
        let up = match m.mlp {
            Mlp::Gelu => m.ffn,
            Mlp::SwiGlu => 2 * m.ffn,
        };
        let mean = usize::from(m.norm == Norm::LayerNorm);
        Widths { c: m.hidden, qkv: m.q_width() + 2 * m.kv_width(), att: m.q_width(), up, act: m.ffn, mean }
    }

    /// Floats per row saved by one block (ln1, stats, qkv, att, res2, ln2, stats, up, act).
    fn block_row(&self) -> usize {
        3 * self.c + 2 * (self.mean + 1) + self.qkv + self.att + self.up + self.act
    }

    /// Floats per row of the backward scratch (dres, d_ln, d_att, d_qkv, d_fc, d_gelu).
    fn scratch_row(&self) -> usize {
        2 * self.c + self.att + self.qkv + self.up + self.act
    }
}

/// What one transformer block keeps from its forward for its backward, per token row
/// (B*T rows). Names follow GPT-2; for Llama `fc` holds the packed gate|up projection
/// and `gelu` the SwiGLU output.
pub struct BlockActs<B: Backend = Cpu> {
    pub ln1: B::Vec,       // (B,T,C)
    pub ln1_mean: B::Vec,  // (B,T) LayerNorm only (empty for RMSNorm)
    pub ln1_rstd: B::Vec,  // (B,T)
    pub qkv: B::Vec,       // (B,T,Q+2KV) after RoPE
    pub att: B::Vec,       // (B,T,Q) attention output before the output projection
    pub att_saved: B::Vec, // kernel-defined softmax statistics
    pub res2: B::Vec,      // (B,T,C) residual after attention
    pub ln2: B::Vec,       // (B,T,C)
    pub ln2_mean: B::Vec,
    pub ln2_rstd: B::Vec,
    pub fc: B::Vec,   // (B,T,F) before GELU, or (B,T,2F) gate|up before SwiGLU
    pub gelu: B::Vec, // (B,T,F)
}

impl<B: Backend> BlockActs<B> {
    /// `ns` rows of the residual stream and norms (B*T, or its sequence-parallel shard).
    fn new(be: &B, w: &Widths, b: usize, t: usize, nh: usize, ns: usize) -> Self {
        let n = b * t;
        BlockActs {
            ln1: be.zeros(ns * w.c),
            ln1_mean: be.stats(ns * w.mean),
            ln1_rstd: be.stats(ns),
            qkv: be.zeros(n * w.qkv),
            att: be.zeros(n * w.att),
            att_saved: be.stats(be.attention_saved_len(b, t, nh)),
            res2: be.zeros(ns * w.c),
            ln2: be.zeros(ns * w.c),
            ln2_mean: be.stats(ns * w.mean),
            ln2_rstd: be.stats(ns),
            fc: be.zeros(n * w.up),
            gelu: be.zeros(n * w.act),
        }
    }

    /// No buffers (a layer another pipeline rank runs).
    fn none(be: &B) -> Self {
        let e = || be.zeros(0);
        BlockActs { ln1: e(), ln1_mean: e(), ln1_rstd: e(), qkv: e(), att: e(), att_saved: e(), res2: e(), ln2: e(), ln2_mean: e(), ln2_rstd: e(), fc: e(), gelu: e() }
    }

    /// Zeroed buffers of the same sizes.
    fn like(o: &Self, be: &B) -> Self {
        let z = |v: &B::Vec| be.zeros(crate::backend::Buf::len(&**v));
        let st = |v: &B::Vec| be.stats(crate::backend::Buf::len(&**v));
        BlockActs {
            ln1: z(&o.ln1),
            ln1_mean: st(&o.ln1_mean),
            ln1_rstd: st(&o.ln1_rstd),
            qkv: z(&o.qkv),
            att: z(&o.att),
            att_saved: st(&o.att_saved),
            res2: z(&o.res2),
            ln2: z(&o.ln2),
            ln2_mean: st(&o.ln2_mean),
            ln2_rstd: st(&o.ln2_rstd),
            fc: z(&o.fc),
            gelu: z(&o.gelu),
        }
    }

    fn floats(&self) -> usize {
        [
            &self.ln1, &self.ln1_mean, &self.ln1_rstd, &self.qkv, &self.att, &self.att_saved, &self.res2, &self.ln2, &self.ln2_mean,
            &self.ln2_rstd, &self.fc, &self.gelu,
        ]
        .iter()
        .map(|v| crate::backend::Buf::len(&***v))
        .sum()
    }
}

/// All activations and backward scratch for micro-batches of shape (B, T).
///
/// With `recompute = true` (activation checkpointing, "full") only each block's input
/// (`resid[l]`) is kept; a single [`BlockActs`] is scratch that the backward refills by
/// re-running the block's forward.
pub struct Activations<B: Backend = Cpu> {
    pub b: usize,
    pub t: usize,
    pub recompute: bool,
    pub tokens: Vec<u32>, // (B,T)
    /// `resid[0]` is the embedding output, `resid[l + 1]` block l's output. (L+1, B,T,C)
    pub resid: Vec<B::Vec>,
    pub blocks: Vec<BlockActs<B>>,
    pub lnf: B::Vec, // (B,T,C)
    pub lnf_mean: B::Vec,
    pub lnf_rstd: B::Vec,
    /// Logits of `head_rows` rows at a time: the head never materialises (B*T, V).
    pub logits: B::Vec,
    pub head_rows: usize,
    pub losses: B::Vec, // (B,T)
    /// Rotary tables for positions 0..T (RoPE models).
    pub rope: Option<B::Rope>,
    // Backward scratch.
    pub dres: B::Vec,  // (B,T,C) gradient flowing down the residual stream
    pub d_ln: B::Vec,  // (B,T,C)
    pub d_att: B::Vec, // (B,T,Q)
    pub d_qkv: B::Vec, // (B,T,Q+2KV)
    pub d_fc: B::Vec,  // (B,T,F) or (B,T,2F)
    pub d_gelu: B::Vec,
    /// Sequence parallelism (Korthikanti et al. 2022): the residual stream, the norms
    /// and `dres` hold `B*T / sp` rows (this rank's shard); 1 = off.
    pub sp: usize,
    /// Sequence parallelism's scratch: a gathered (B*T, C) activation or gradient, the
    /// (B*T/sp, C) shard a reduce-scatter lands in, and one micro-batch's norm weight
    /// gradients (reduced across the group before they are accumulated).
    pub full: B::Vec,
    pub d_sh: B::Vec,
    pub d_norm: B::Vec,
    /// Selective recomputation (Korthikanti et al. 2022): no block keeps its attention
    /// softmax statistics (`att_saved`, O(T^2) per head); the backward recomputes them
    /// from the saved q|k|v into this one buffer. Empty when off.
    pub att_scratch: B::Vec,
    pub selective: bool,
}

/// Bound on the logits scratch, in floats (64 MiB): the head runs over this many
/// logits at a time (the planner models the engine's chunked head with it).
pub const HEAD_SCRATCH_FLOATS: usize = 1 << 24;

fn head_rows(vocab: usize, n: usize) -> usize {
    (HEAD_SCRATCH_FLOATS / vocab.max(1)).clamp(1, n.max(1)).max(n.min(64))
}

impl Activations<Cpu> {
    /// Host activations for shape (B, T) of a model (a [`ModelSpec`] or a `GptConfig`).
    pub fn new(shape: &impl ToSpec, b: usize, t: usize, recompute: bool) -> Self {
        Self::with_backend(&Cpu, &shape.to_spec(), b, t, recompute)
    }

    /// No buffers (a placeholder while the real ones are lent out).
    pub fn empty() -> Self {
        let e = Vec::new;
        Activations {
            b: 0,
            t: 0,
            recompute: false,
            tokens: Vec::new(),
            resid: Vec::new(),
            blocks: Vec::new(),
            lnf: e(),
            lnf_mean: e(),
            lnf_rstd: e(),
            logits: e(),
            head_rows: 0,
            losses: e(),
            rope: None,
            dres: e(),
            d_ln: e(),
            d_att: e(),
            d_qkv: e(),
            d_fc: e(),
            d_gelu: e(),
            sp: 1,
            full: e(),
            d_sh: e(),
            d_norm: e(),
            att_scratch: e(),
            selective: false,
        }
    }

    /// Analytical activation bytes for shape (B, T) (equals [`Activations::bytes`]; the
    /// memory report uses this without allocating).
    pub fn expected_bytes(shape: &impl ToSpec, b: usize, t: usize, recompute: bool) -> usize {
        Self::expected_bytes_sp(shape, b, t, recompute, 1)
    }

    /// [`Activations::expected_bytes`] of one rank of an `sp`-way sequence-parallel group
    /// (the shape is the rank's tensor-parallel part).
    pub fn expected_bytes_sp(shape: &impl ToSpec, b: usize, t: usize, recompute: bool, sp: usize) -> usize {
        Self::expected_bytes_with(shape, b, t, recompute, false, sp)
    }

    /// [`Activations::expected_bytes_sp`], with `selective` recomputation of attention
    /// (see [`Activations::recompute_attention`]).
    pub fn expected_bytes_with(shape: &impl ToSpec, b: usize, t: usize, recompute: bool, selective: bool, sp: usize) -> usize {
        Self::expected_bytes_in(shape, b, t, recompute, selective, sp, 4)
    }

    /// [`Activations::expected_bytes_with`] with activations stored in `elem` bytes an
    /// element (2 for bf16); per-row statistics ([`Backend::stats`]) stay f32.
    #[allow(clippy::too_many_arguments)]
    pub fn expected_bytes_in(shape: &impl ToSpec, b: usize, t: usize, recompute: bool, selective: bool, sp: usize, elem: usize) -> usize {
        let m = shape.to_spec();
        let w = Widths::of(&m);
        let (n, l) = (b * t, m.layers);
        let ns = n / sp.max(1);
        // Per block: ln1, res2, ln2 and their statistics on the rows this rank holds; the
        // rest on every row.
        let sharded_row = 3 * w.c + 2 * (w.mean + 1);
        let probs = Cpu.attention_saved_len(b, t, m.heads);
        let selective = selective && !recompute;
        let block_stats = ns * 2 * (w.mean + 1) + if selective { 0 } else { probs };
        let block = ns * sharded_row + n * (w.block_row() - sharded_row) + if selective { 0 } else { probs };
        let stored = if recompute { 1 } else { l };
        let scratch_probs = if selective { probs } else { 0 };
        // Scratch: dres on this rank's rows, the others on every row.
        let scratch = ns * w.c + n * (w.scratch_row() - w.c);
        let sp_scratch = if sp > 1 { n * w.c + ns * w.c + 4 * w.c } else { 0 };
        let floats = (l + 1) * ns * w.c + stored * block + ns * (w.c + 1 + w.mean) + head_rows(m.vocab, n) * m.vocab + n + scratch + sp_scratch + scratch_probs;
        // Statistics: the blocks', the final norm's, the losses, the recomputed probabilities.
        let stats = stored * block_stats + ns * (1 + w.mean) + n + scratch_probs;
        elem * (floats - stats) + 4 * stats + 4 * n
    }
}

impl<B: Backend> Activations<B> {
    pub fn with_backend(be: &B, m: &ModelSpec, b: usize, t: usize, recompute: bool) -> Self {
        Self::sequence_parallel(be, m, b, t, recompute, 1)
    }

    /// Activations of a rank of an `sp`-way sequence-parallel group (`sp` divides B*T).
    pub fn sequence_parallel(be: &B, m: &ModelSpec, b: usize, t: usize, recompute: bool, sp: usize) -> Self {
        let all = 0..m.layers;
        Self::pipeline(be, m, b, t, recompute, sp, std::slice::from_ref(&all), true)
    }

    /// Activations of a pipeline rank that runs the blocks of `chunks` (and the head when
    /// `head`): the residual stream and saved block activations of other layers are
    /// empty, as are the head's buffers without the head.
    #[allow(clippy::too_many_arguments)]
    pub fn pipeline(be: &B, m: &ModelSpec, b: usize, t: usize, recompute: bool, sp: usize, chunks: &[Range<usize>], head: bool) -> Self {
        assert!(t <= m.seq, "sequence {t} longer than the context length {}", m.seq);
        let w = Widths::of(m);
        let n = b * t;
        assert!(sp >= 1 && n.is_multiple_of(sp), "sequence parallelism over {sp} ranks needs B*T = {n} divisible by it");
        let ns = n / sp;
        let on = |len: usize| if sp > 1 { be.zeros(len) } else { be.zeros(0) };
        let hd = |len: usize| if head { be.zeros(len) } else { be.zeros(0) };
        let head_rows = head_rows(m.vocab, n);
        let input_or_output = |l: usize| chunks.iter().any(|c| c.start <= l && l <= c.end);
        let runs = |l: usize| chunks.iter().any(|c| c.contains(&l));
        let rope = match m.positions {
            Positions::Rope { theta } => Some(be.rope_table(t, m.head_dim, theta)),
            _ => None,
        };
        Activations {
            b,
            t,
            recompute,
            tokens: vec![0; n],
            resid: (0..=m.layers).map(|l| be.zeros(if input_or_output(l) { ns * w.c } else { 0 })).collect(),
            blocks: if recompute {
                vec![BlockActs::new(be, &w, b, t, m.heads, ns)]
            } else {
                (0..m.layers).map(|l| if runs(l) { BlockActs::new(be, &w, b, t, m.heads, ns) } else { BlockActs::none(be) }).collect()
            },
            lnf: hd(ns * w.c),
            lnf_mean: if head { be.stats(ns * w.mean) } else { be.zeros(0) },
            lnf_rstd: if head { be.stats(ns) } else { be.zeros(0) },
            logits: hd(head_rows * m.vocab),
            head_rows,
            losses: if head { be.stats(n) } else { be.zeros(0) },
            rope,
            dres: be.zeros(ns * w.c),
            d_ln: be.zeros(n * w.c),
            d_att: be.zeros(n * w.att),
            d_qkv: be.zeros(n * w.qkv),
            d_fc: be.zeros(n * w.up),
            d_gelu: be.zeros(n * w.act),
            sp,
            full: on(n * w.c),
            d_sh: on(ns * w.c),
            d_norm: on(4 * w.c),
            att_scratch: be.zeros(0),
            selective: false,
        }
    }

    /// Switches to selective recomputation: the blocks' attention statistics are freed
    /// and one buffer serves every block's backward (nothing changes under full
    /// recomputation, which keeps a single block's anyway).
    pub fn recompute_attention(mut self, be: &B) -> Self {
        if self.recompute || self.selective {
            return self;
        }
        for blk in &mut self.blocks {
            let saved = std::mem::replace(&mut blk.att_saved, be.zeros(0));
            if crate::backend::Buf::len(&*self.att_scratch) == 0 {
                self.att_scratch = saved;
            }
        }
        self.selective = true;
        self
    }

    /// Bytes held, for the memory report.
    pub fn bytes(&self) -> usize {
        use crate::backend::Buf;
        let vecs = [
            &self.lnf, &self.lnf_mean, &self.lnf_rstd, &self.logits, &self.losses, &self.dres, &self.d_ln, &self.d_att, &self.d_qkv,
            &self.d_fc, &self.d_gelu, &self.full, &self.d_sh, &self.d_norm, &self.att_scratch,
        ];
        let floats: usize = vecs.iter().map(|v| Buf::len(&***v)).sum::<usize>()
            + self.resid.iter().map(|v| Buf::len(&**v)).sum::<usize>()
            + self.blocks.iter().map(|b| b.floats()).sum::<usize>();
        4 * floats + 4 * self.tokens.len()
    }
}

/// What one micro-batch keeps between a pipeline chunk's forward and its backward: the
/// chunk's residual stream `resid[l0..=l1]`, its blocks' saved activations (none with
/// recompute) and the tokens (for the embedding's backward). While another micro-batch
/// computes, these live here; [`Activations::swap_saved`] moves them in and out of the
/// working activations, so the scratch buffers exist once per rank.
pub struct Saved<B: Backend = Cpu> {
    layers: Range<usize>,
    resid: Vec<B::Vec>,
    blocks: Vec<BlockActs<B>>,
    tokens: Vec<u32>,
}

impl<B: Backend> Saved<B> {
    /// Zeroed buffers shaped like `self` (another micro-batch in flight).
    pub fn like(&self, be: &B) -> Saved<B> {
        Saved {
            layers: self.layers.clone(),
            resid: self.resid.iter().map(|v| be.zeros(crate::backend::Buf::len(&**v))).collect(),
            blocks: self.blocks.iter().map(|b| BlockActs::like(b, be)).collect(),
            tokens: vec![0; self.tokens.len()],
        }
    }

    pub fn bytes(&self) -> usize {
        use crate::backend::Buf;
        4 * (self.resid.iter().map(|v| Buf::len(&**v)).sum::<usize>() + self.blocks.iter().map(|b| b.floats()).sum::<usize>() + self.tokens.len())
    }
}

impl<B: Backend> Activations<B> {
    /// Moves the saved state of blocks `layers` (and the tokens when `tokens`) out of
    /// these activations; the places left are empty until [`Activations::swap_saved`].
    pub fn take_saved(&mut self, be: &B, layers: Range<usize>, tokens: bool) -> Saved<B> {
        let mut s = Saved {
            resid: (layers.start..=layers.end).map(|_| be.zeros(0)).collect(),
            blocks: if self.recompute { Vec::new() } else { layers.clone().map(|_| BlockActs::none(be)).collect() },
            tokens: Vec::new(),
            layers,
        };
        self.swap_saved(&mut s);
        if !tokens {
            // Only the embedding's backward needs the tokens: this chunk leaves them.
            std::mem::swap(&mut self.tokens, &mut s.tokens);
        }
        s
    }

    /// Exchanges `s`'s buffers with the working ones at its layers (an involution: call
    /// again to put them back).
    pub fn swap_saved(&mut self, s: &mut Saved<B>) {
        let l0 = s.layers.start;
        for (i, v) in s.resid.iter_mut().enumerate() {
            std::mem::swap(&mut self.resid[l0 + i], v);
        }
        for (i, b) in s.blocks.iter_mut().enumerate() {
            std::mem::swap(&mut self.blocks[l0 + i], b);
        }
        std::mem::swap(&mut self.tokens, &mut s.tokens);
    }
}

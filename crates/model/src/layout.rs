//! Tensors as specs, packed into flat buckets.
//!
//! Every parameter is a [`TensorSpec`]: its Hugging Face checkpoint key for the family,
//! its global shape, the dim tensor parallelism may split, and its offset in a bucket.
//! A bucket is the unit of communication and sharding (one all-reduce / reduce-scatter /
//! all-gather per bucket; ZeRO shards are contiguous ranges of it; ARCHITECTURE.md
//! decision 3). Buckets are `[embedding, block 0 .. block L-1, head]`; checkpoints, ZeRO
//! shards and the optimizer read the tensor list, never a hand-written field list.
//!
//! | family | block tensors, in bucket order | weights |
//! |---|---|---|
//! | GPT-2 | `ln_1`, `attn.c_attn` (q,k,v fused), `attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj` | `(in, out)` |
//! | Llama | `input_layernorm`, `self_attn.{q,k,v}_proj`, `o_proj`, `post_attention_layernorm`, `mlp.{gate,up}_proj`, `down_proj` | `(out, in)` |
//!
//! Llama's q/k/v (and gate/up) weights are adjacent in the bucket, so in `(out, in)`
//! layout they form one stacked matrix and run as one GEMM, like GPT-2's `c_attn`.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::backend::{Buf, WeightLayout};
use crate::spec::{Family, Mlp, ModelSpec, Norm, Positions};

/// Shape of a GPT-2 model in nanoGPT's names. `bias = false` drops the biases of every
/// linear layer and LayerNorm (nanoGPT's convention); Hugging Face GPT-2 has `bias = true`.
/// Also the family-independent dims of any [`crate::Model`] (`Model::cfg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GptConfig {
    pub vocab_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub block_size: usize,
    pub bias: bool,
}

impl From<GptConfig> for ModelSpec {
    fn from(c: GptConfig) -> ModelSpec {
        ModelSpec { bias: c.bias, ..ModelSpec::gpt("custom", c.n_layer, c.n_embd, c.n_head, c.vocab_size, c.block_size, "config") }
    }
}

impl From<&ModelSpec> for GptConfig {
    fn from(s: &ModelSpec) -> GptConfig {
        GptConfig { vocab_size: s.vocab, n_layer: s.layers, n_head: s.heads, n_embd: s.hidden, block_size: s.seq, bias: s.bias }
    }
}

/// Anything that describes a model's shape.
pub trait ToSpec {
    fn to_spec(&self) -> ModelSpec;
}
impl ToSpec for ModelSpec {
    fn to_spec(&self) -> ModelSpec {
        self.clone()
    }
}
impl ToSpec for GptConfig {
    fn to_spec(&self) -> ModelSpec {
        (*self).into()
    }
}

/// What optimizer treatment a tensor gets; weight decay applies to `Matrix` (and to
/// `Embedding` when configured), never to norms and biases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TensorKind {
    Embedding,
    Matrix,
    NormWeight,
    Bias,
}

/// How tensor parallelism may split a tensor (Megatron-LM, Shoeybi et al. 2019):
/// `dim` is split in `tp` equal parts; with `parts > 1` the dim holds that many
/// stacked sub-tensors (GPT-2's fused q|k|v) and each is split separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub dim: usize,
    pub parts: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Hugging Face name, e.g. `transformer.h.0.attn.c_attn.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    /// Offset of the first element inside its bucket.
    pub offset: usize,
    pub kind: TensorKind,
    /// The split tensor parallelism may apply; `None` = replicated.
    pub split: Option<Split>,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.numel()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketSpec {
    /// `embedding`, `h.{i}` or `head`.
    pub name: String,
    pub tensors: Vec<TensorSpec>,
    pub numel: usize,
}

/// Where each part of a block sits in its bucket (the same for every block). Ranges
/// are in bucket order; `qkv_w` spans the adjacent q, k, v weights, `up_w` the adjacent
/// gate and up weights (SwiGLU) or `c_fc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRoles {
    pub ln1_w: Range<usize>,
    pub ln1_b: Option<Range<usize>>,
    pub qkv_w: Range<usize>,
    pub qkv_b: Option<Range<usize>>,
    pub o_w: Range<usize>,
    pub o_b: Option<Range<usize>>,
    pub ln2_w: Range<usize>,
    pub ln2_b: Option<Range<usize>>,
    pub up_w: Range<usize>,
    pub up_b: Option<Range<usize>>,
    pub down_w: Range<usize>,
    pub down_b: Option<Range<usize>>,
}

/// Where the embedding and head parts sit in their buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndRoles {
    /// Token embedding (embedding bucket).
    pub wte: Range<usize>,
    /// Learned positions (embedding bucket).
    pub wpe: Option<Range<usize>>,
    /// Final norm (head bucket).
    pub norm_w: Range<usize>,
    pub norm_b: Option<Range<usize>>,
    /// Untied output projection (head bucket); `None` = tied to `wte`.
    pub lm_head: Option<Range<usize>>,
}

/// All buckets of a model: `[embedding, block 0, .., block L-1, head]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub buckets: Vec<BucketSpec>,
    pub block: BlockRoles,
    pub ends: EndRoles,
    /// Storage of every linear weight in the blocks.
    pub weights: WeightLayout,
}

/// Index of the embedding bucket.
pub const EMBED: usize = 0;

/// Tensors of one bucket under construction: name, shape, kind, split.
struct Builder {
    tensors: Vec<TensorSpec>,
    offset: usize,
}

impl Builder {
    fn new() -> Builder {
        Builder { tensors: Vec::new(), offset: 0 }
    }
    fn push(&mut self, name: String, shape: Vec<usize>, kind: TensorKind, split: Option<Split>) -> Range<usize> {
        let t = TensorSpec { name, shape, offset: self.offset, kind, split };
        let r = t.range();
        self.offset = r.end;
        self.tensors.push(t);
        r
    }
    fn opt(&mut self, on: bool, name: String, shape: Vec<usize>, kind: TensorKind, split: Option<Split>) -> Option<Range<usize>> {
        on.then(|| self.push(name, shape, kind, split))
    }
    fn finish(self, name: &str) -> BucketSpec {
        BucketSpec { name: name.to_string(), numel: self.offset, tensors: self.tensors }
    }
}

fn split(dim: usize) -> Option<Split> {
    Some(Split { dim, parts: 1 })
}

/// `a.start..b.end` of adjacent ranges.
fn span(a: &Range<usize>, b: &Range<usize>) -> Range<usize> {
    debug_assert!(a.start <= b.end);
    a.start..b.end
}

impl Layout {
    pub fn new(shape: &impl ToSpec) -> Layout {
        let m = shape.to_spec();
        let (c, v) = (m.hidden, m.vocab);
        let (q, kv, f) = (m.q_width(), m.kv_width(), m.ffn);
        let ln_bias = m.bias && m.norm == Norm::LayerNorm;
        let mut buckets = Vec::with_capacity(m.layers + 2);
        let (tok, pos, pre, norm_name, head_name, ln1, ln2) = match m.family {
            Family::Gpt2 => (
                "transformer.wte.weight",
                "transformer.wpe.weight",
                "transformer.h.",
                "transformer.ln_f",
                "lm_head.weight",
                "ln_1",
                "ln_2",
            ),
            Family::Llama => (
                "model.embed_tokens.weight",
                "model.embed_positions.weight",
                "model.layers.",
                "model.norm",
                "lm_head.weight",
                "input_layernorm",
                "post_attention_layernorm",
            ),
        };
        let mut e = Builder::new();
        let wte = e.push(tok.into(), vec![v, c], TensorKind::Embedding, split(0));
        let wpe = e.opt(m.positions == Positions::Learned, pos.into(), vec![m.seq, c], TensorKind::Embedding, None);
        buckets.push(e.finish("embedding"));
        let mut block = None;
        for l in 0..m.layers {
            let p = format!("{pre}{l}.");
            let mut b = Builder::new();
            let ln1_w = b.push(format!("{p}{ln1}.weight"), vec![c], TensorKind::NormWeight, None);
            let ln1_b = b.opt(ln_bias, format!("{p}{ln1}.bias"), vec![c], TensorKind::Bias, None);
            let roles = match m.family {
                Family::Gpt2 => {
                    let fused = Some(Split { dim: 1, parts: 3 });
                    let qkv_w = b.push(format!("{p}attn.c_attn.weight"), vec![c, q + 2 * kv], TensorKind::Matrix, fused);
                    let qkv_b = b.opt(m.bias, format!("{p}attn.c_attn.bias"), vec![q + 2 * kv], TensorKind::Bias, Some(Split { dim: 0, parts: 3 }));
                    let o_w = b.push(format!("{p}attn.c_proj.weight"), vec![q, c], TensorKind::Matrix, split(0));
                    let o_b = b.opt(m.bias, format!("{p}attn.c_proj.bias"), vec![c], TensorKind::Bias, None);
                    let ln2_w = b.push(format!("{p}{ln2}.weight"), vec![c], TensorKind::NormWeight, None);
                    let ln2_b = b.opt(ln_bias, format!("{p}{ln2}.bias"), vec![c], TensorKind::Bias, None);
                    let up_w = b.push(format!("{p}mlp.c_fc.weight"), vec![c, f], TensorKind::Matrix, split(1));
                    let up_b = b.opt(m.bias, format!("{p}mlp.c_fc.bias"), vec![f], TensorKind::Bias, split(0));
                    let down_w = b.push(format!("{p}mlp.c_proj.weight"), vec![f, c], TensorKind::Matrix, split(0));
                    let down_b = b.opt(m.bias, format!("{p}mlp.c_proj.bias"), vec![c], TensorKind::Bias, None);
                    BlockRoles { ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b, up_w, up_b, down_w, down_b }
                }
                Family::Llama => {
                    let a = format!("{p}self_attn.");
                    let qw = b.push(format!("{a}q_proj.weight"), vec![q, c], TensorKind::Matrix, split(0));
                    b.push(format!("{a}k_proj.weight"), vec![kv, c], TensorKind::Matrix, split(0));
                    let vw = b.push(format!("{a}v_proj.weight"), vec![kv, c], TensorKind::Matrix, split(0));
                    let qb = b.opt(m.bias, format!("{a}q_proj.bias"), vec![q], TensorKind::Bias, split(0));
                    b.opt(m.bias, format!("{a}k_proj.bias"), vec![kv], TensorKind::Bias, split(0));
                    let vb = b.opt(m.bias, format!("{a}v_proj.bias"), vec![kv], TensorKind::Bias, split(0));
                    let o_w = b.push(format!("{a}o_proj.weight"), vec![c, q], TensorKind::Matrix, split(1));
                    let o_b = b.opt(m.bias, format!("{a}o_proj.bias"), vec![c], TensorKind::Bias, None);
                    let ln2_w = b.push(format!("{p}{ln2}.weight"), vec![c], TensorKind::NormWeight, None);
                    let ln2_b = b.opt(ln_bias, format!("{p}{ln2}.bias"), vec![c], TensorKind::Bias, None);
                    let (up_w, up_b) = match m.mlp {
                        Mlp::SwiGlu => {
                            let g = b.push(format!("{p}mlp.gate_proj.weight"), vec![f, c], TensorKind::Matrix, split(0));
                            let u = b.push(format!("{p}mlp.up_proj.weight"), vec![f, c], TensorKind::Matrix, split(0));
                            let gb = b.opt(m.bias, format!("{p}mlp.gate_proj.bias"), vec![f], TensorKind::Bias, split(0));
                            let ub = b.opt(m.bias, format!("{p}mlp.up_proj.bias"), vec![f], TensorKind::Bias, split(0));
                            (span(&g, &u), gb.zip(ub).map(|(g, u)| span(&g, &u)))
                        }
                        Mlp::Gelu => {
                            let u = b.push(format!("{p}mlp.up_proj.weight"), vec![f, c], TensorKind::Matrix, split(0));
                            (u, b.opt(m.bias, format!("{p}mlp.up_proj.bias"), vec![f], TensorKind::Bias, split(0)))
                        }
                    };
                    let down_w = b.push(format!("{p}mlp.down_proj.weight"), vec![c, f], TensorKind::Matrix, split(1));
                    let down_b = b.opt(m.bias, format!("{p}mlp.down_proj.bias"), vec![c], TensorKind::Bias, None);
                    let qkv_b = qb.zip(vb).map(|(q, v)| span(&q, &v));
                    BlockRoles { ln1_w, ln1_b, qkv_w: span(&qw, &vw), qkv_b, o_w, o_b, ln2_w, ln2_b, up_w, up_b, down_w, down_b }
                }
            };
            block = Some(roles);
            buckets.push(b.finish(&format!("h.{l}")));
        }
        let mut h = Builder::new();
        let norm_w = h.push(format!("{norm_name}.weight"), vec![c], TensorKind::NormWeight, None);
        let norm_b = h.opt(ln_bias, format!("{norm_name}.bias"), vec![c], TensorKind::Bias, None);
        let lm_head = h.opt(!m.tied, head_name.into(), vec![v, c], TensorKind::Matrix, split(0));
        buckets.push(h.finish("head"));
        let empty = || 0..0;
        let block = block.unwrap_or(BlockRoles {
            ln1_w: empty(),
            ln1_b: None,
            qkv_w: empty(),
            qkv_b: None,
            o_w: empty(),
            o_b: None,
            ln2_w: empty(),
            ln2_b: None,
            up_w: empty(),
            up_b: None,
            down_w: empty(),
            down_b: None,
        });
        let weights = match m.family {
            Family::Gpt2 => WeightLayout::InOut,
            Family::Llama => WeightLayout::OutIn,
        };
        Layout { buckets, block, ends: EndRoles { wte, wpe, norm_w, norm_b, lm_head }, weights }
    }

    /// Index of the head bucket (final norm, untied output projection).
    pub fn head(&self) -> usize {
        self.buckets.len() - 1
    }

    /// Bucket index of transformer block `l`.
    pub fn block(l: usize) -> usize {
        l + 1
    }

    pub fn num_params(&self) -> usize {
        self.buckets.iter().map(|b| b.numel).sum()
    }

    /// Every tensor with its bucket index, in layout order.
    pub fn tensors(&self) -> impl Iterator<Item = (usize, &TensorSpec)> {
        self.buckets.iter().enumerate().flat_map(|(i, b)| b.tensors.iter().map(move |t| (i, t)))
    }

    pub fn find(&self, name: &str) -> Option<(usize, &TensorSpec)> {
        self.tensors().find(|(_, t)| t.name == name)
    }

    /// Copies tensor-parallel rank `rank`'s part of whole buckets (`whole`, in this
    /// layout) into the buckets of `local` (that rank's layout, [`crate::Model::tensor_parallel`]).
    pub fn tp_extract(&self, whole: &[Vec<f32>], local: &Layout, out: &mut [Vec<f32>], tp: usize, rank: usize) {
        for (lb, lt) in local.tensors() {
            let (gb, gt) = self.find(&lt.name).unwrap_or_else(|| panic!("{} is not in the whole layout", lt.name));
            let (src, dst) = (&whole[gb][gt.range()], &mut out[lb][lt.range()]);
            for (from, to, len) in tp_part_runs(gt, lt, tp, rank) {
                dst[to..to + len].copy_from_slice(&src[from..from + len]);
            }
        }
    }
}

/// A box of a whole tensor held in a tensor-parallel rank's part: `slice` is `(start,
/// len)` per dim of the whole tensor; its element `(i, j)` (row-major in the box) is
/// part element `local + i * stride + j` (1-d tensors: one row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartBox {
    pub slice: Vec<(usize, usize)>,
    pub local: usize,
    pub stride: usize,
}

impl PartBox {
    /// Rows and row length of the box (1-d: one row).
    pub fn rows_cols(&self) -> (usize, usize) {
        match self.slice.as_slice() {
            [(_, n)] => (1, *n),
            [(_, r), (_, c)] => (*r, *c),
            _ => unreachable!("tensors are 1-d or 2-d"),
        }
    }
}

/// The boxes of the whole tensor `whole` that hold elements `[a, b)` (flat, row-major)
/// of rank `rank`'s part `part` under `tp`-way tensor parallelism: how a tp rank
/// writes its (ZeRO-sharded) range of a split tensor as N-d slices of the whole one,
/// and reads it back from any checkpoint. At most 3 boxes per stacked sub-tensor.
pub fn tp_part_boxes(whole: &TensorSpec, part: &TensorSpec, tp: usize, rank: usize, a: usize, b: usize) -> Vec<PartBox> {
    let Split { dim, parts } = whole.split.expect("a split tensor");
    let (g, l) = (&whole.shape, &part.shape);
    let (gsub, lsub) = (g[dim] / parts, l[dim] / parts);
    let first = (rank * gsub.div_ceil(tp)).min(gsub);
    // Part-local rows of the range: (row, rows, col, cols), each contiguous in memory.
    let (rows, cols) = if l.len() == 1 { (1, l[0]) } else { (l[0], l[1]) };
    assert!(l.len() <= 2 && b <= rows * cols && a <= b, "{}: range {a}..{b} of a part of shape {l:?}", whole.name);
    let mut blocks = Vec::new();
    let (mut lo, hi) = (a, b);
    while lo < hi {
        let (r, c) = (lo / cols, lo % cols);
        let n = if c == 0 && hi - lo >= cols { (hi - lo) / cols * cols } else { (cols - c).min(hi - lo) };
        let (nr, nc) = if c == 0 && n >= cols { (n / cols, cols) } else { (1, n) };
        blocks.push((r, nr, c, nc));
        lo += n;
    }
    let mut out = Vec::new();
    for (r, nr, c, nc) in blocks {
        // Cut the block where the split dim crosses from one stacked sub-tensor to the next.
        let (s0, sn) = if dim == 0 && l.len() == 2 { (r, nr) } else { (c, nc) };
        for p in 0..parts {
            let (lo, hi) = (s0.max(p * lsub), (s0 + sn).min((p + 1) * lsub));
            if lo >= hi {
                continue;
            }
            let gstart = p * gsub + first + (lo - p * lsub);
            let (slice, local) = match (l.len(), dim) {
                (1, _) => (vec![(gstart, hi - lo)], lo),
                (_, 0) => (vec![(gstart, hi - lo), (c, nc)], lo * cols + c),
                _ => (vec![(r, nr), (gstart, hi - lo)], r * cols + lo),
            };
            out.push(PartBox { slice, local, stride: cols });
        }
    }
    out
}

/// The contiguous runs `(offset in the whole tensor, offset in the part, length)` that
/// make up rank `rank`'s part `part` of the whole tensor `whole` under `tp`-way tensor
/// parallelism: along the split dim, each of its `parts` stacked sub-tensors contributes
/// rows `[rank * ceil(n / tp), ...)` of its `n` (consecutive parts, the last possibly
/// shorter: [`crate::spec::ModelSpec::vocab_part`]). A replicated tensor is one run.
pub fn tp_part_runs(whole: &TensorSpec, part: &TensorSpec, tp: usize, rank: usize) -> Vec<(usize, usize, usize)> {
    let Some(Split { dim, parts }) = whole.split.filter(|_| tp > 1) else {
        assert_eq!(whole.shape, part.shape, "{}: a replicated tensor has one shape", whole.name);
        return vec![(0, 0, whole.numel())];
    };
    let (g, l) = (&whole.shape, &part.shape);
    let outer: usize = g[..dim].iter().product();
    let inner: usize = g[dim + 1..].iter().product();
    let (gsub, lsub) = (g[dim] / parts, l[dim] / parts);
    let first = (rank * gsub.div_ceil(tp)).min(gsub);
    assert!(first + lsub <= gsub, "{}: rank {rank}'s part exceeds the tensor", whole.name);
    let mut runs = Vec::with_capacity(outer * parts);
    for o in 0..outer {
        for p in 0..parts {
            runs.push(((o * g[dim] + p * gsub + first) * inner, (o * l[dim] + p * lsub) * inner, lsub * inner));
        }
    }
    runs
}

/// Views of one block's parameters (or gradients) inside its bucket.
pub struct BlockView<'a, S: ?Sized> {
    pub ln1_w: &'a S,
    pub ln1_b: Option<&'a S>,
    pub qkv_w: &'a S,
    pub qkv_b: Option<&'a S>,
    pub o_w: &'a S,
    pub o_b: Option<&'a S>,
    pub ln2_w: &'a S,
    pub ln2_b: Option<&'a S>,
    pub up_w: &'a S,
    pub up_b: Option<&'a S>,
    pub down_w: &'a S,
    pub down_b: Option<&'a S>,
}

impl<'a, S: ?Sized + Buf> BlockView<'a, S> {
    pub fn new(buf: &'a S, r: &BlockRoles) -> Self {
        let s = |x: &Range<usize>| buf.slice(x.clone());
        let o = |x: &Option<Range<usize>>| x.as_ref().map(|x| buf.slice(x.clone()));
        BlockView {
            ln1_w: s(&r.ln1_w),
            ln1_b: o(&r.ln1_b),
            qkv_w: s(&r.qkv_w),
            qkv_b: o(&r.qkv_b),
            o_w: s(&r.o_w),
            o_b: o(&r.o_b),
            ln2_w: s(&r.ln2_w),
            ln2_b: o(&r.ln2_b),
            up_w: s(&r.up_w),
            up_b: o(&r.up_b),
            down_w: s(&r.down_w),
            down_b: o(&r.down_b),
        }
    }
}

/// Mutable views of one block's gradients: the roles' ranges are disjoint and in
/// increasing order, so the bucket is carved by successive splits.
pub struct BlockViewMut<'a, S: ?Sized> {
    pub ln1_w: &'a mut S,
    pub ln1_b: Option<&'a mut S>,
    pub qkv_w: &'a mut S,
    pub qkv_b: Option<&'a mut S>,
    pub o_w: &'a mut S,
    pub o_b: Option<&'a mut S>,
    pub ln2_w: &'a mut S,
    pub ln2_b: Option<&'a mut S>,
    pub up_w: &'a mut S,
    pub up_b: Option<&'a mut S>,
    pub down_w: &'a mut S,
    pub down_b: Option<&'a mut S>,
}

/// Carves `buf` at increasing, disjoint ranges.
struct Carver<'a, S: ?Sized> {
    rest: Option<&'a mut S>,
    at: usize,
}

impl<'a, S: ?Sized + Buf> Carver<'a, S> {
    fn take(&mut self, r: &Range<usize>) -> &'a mut S {
        assert!(r.start >= self.at, "block roles out of order");
        let rest = self.rest.take().expect("carver holds its tail");
        let (_, rest) = rest.split_at_mut(r.start - self.at);
        let (x, rest) = rest.split_at_mut(r.len());
        self.rest = Some(rest);
        self.at = r.end;
        x
    }
    fn opt(&mut self, r: &Option<Range<usize>>) -> Option<&'a mut S> {
        r.as_ref().map(|r| self.take(r))
    }
}

impl<'a, S: ?Sized + Buf> BlockViewMut<'a, S> {
    pub fn new(buf: &'a mut S, r: &BlockRoles) -> Self {
        let mut c = Carver { rest: Some(buf), at: 0 };
        BlockViewMut {
            ln1_w: c.take(&r.ln1_w),
            ln1_b: c.opt(&r.ln1_b),
            qkv_w: c.take(&r.qkv_w),
            qkv_b: c.opt(&r.qkv_b),
            o_w: c.take(&r.o_w),
            o_b: c.opt(&r.o_b),
            ln2_w: c.take(&r.ln2_w),
            ln2_b: c.opt(&r.ln2_b),
            up_w: c.take(&r.up_w),
            up_b: c.opt(&r.up_b),
            down_w: c.take(&r.down_w),
            down_b: c.opt(&r.down_b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt2() -> GptConfig {
        GptConfig { vocab_size: 50257, n_layer: 12, n_head: 12, n_embd: 768, block_size: 1024, bias: true }
    }

    #[test]
    fn gpt2_small_has_124m_parameters() {
        // Hugging Face reports 124,439,808 parameters for `gpt2` (tied lm_head not counted twice).
        assert_eq!(Layout::new(&gpt2()).num_params(), 124_439_808);
    }

    #[test]
    fn names_and_shapes_match_hugging_face() {
        let layout = Layout::new(&gpt2());
        let (b, t) = layout.find("transformer.h.11.mlp.c_proj.weight").unwrap();
        assert_eq!(b, 12);
        assert_eq!(t.shape, vec![3072, 768]);
        assert_eq!(layout.find("transformer.h.0.attn.c_attn.weight").unwrap().1.shape, vec![768, 2304]);
        assert_eq!(layout.buckets.len(), 14);
        assert_eq!(layout.tensors().count(), 2 + 12 * 12 + 2);
    }

    #[test]
    fn block_views_cover_the_bucket_without_bias() {
        let cfg = GptConfig { bias: false, ..gpt2() };
        let layout = Layout::new(&cfg);
        let mut buf = vec![0.0f32; layout.buckets[1].numel];
        let v = BlockView::new(buf.as_slice(), &layout.block);
        assert!(v.ln1_b.is_none() && v.down_b.is_none());
        assert_eq!(v.down_w.len(), 4 * 768 * 768);
        assert_eq!(layout.buckets[1].numel, 12 * 768 * 768 + 2 * 768);
        let g = BlockViewMut::new(buf.as_mut_slice(), &layout.block);
        assert_eq!(g.ln1_w.len() + g.qkv_w.len() + g.o_w.len() + g.ln2_w.len() + g.up_w.len() + g.down_w.len(), 12 * 768 * 768 + 2 * 768);
    }

    #[test]
    fn llama_names_shapes_and_count_match_hugging_face() {
        let m = crate::spec::get("llama3-8b").unwrap();
        let layout = Layout::new(&m);
        assert_eq!(layout.num_params(), m.num_params());
        assert_eq!(layout.find("model.layers.31.self_attn.k_proj.weight").unwrap().1.shape, vec![1024, 4096]);
        assert_eq!(layout.find("model.layers.0.mlp.down_proj.weight").unwrap().1.shape, vec![4096, 14336]);
        assert_eq!(layout.find("lm_head.weight").unwrap().0, layout.head());
        assert!(layout.find("model.embed_positions.weight").is_none());
        // q, k, v stacked: one (q + 2 kv, C) matrix; gate and up likewise.
        assert_eq!(layout.block.qkv_w.len(), (4096 + 2 * 1024) * 4096);
        assert_eq!(layout.block.up_w.len(), 2 * 14336 * 4096);
        assert_eq!(layout.tensors().count(), 1 + 32 * 9 + 2);
    }

    #[test]
    fn every_preset_allocates_its_spec_count() {
        for m in crate::spec::catalog() {
            if m.positions != Positions::Alibi && m.num_params() < 2_000_000_000 {
                assert_eq!(Layout::new(&m).num_params(), m.num_params(), "{}", m.name);
            }
        }
    }
}

#[cfg(test)]
mod tp_box_tests {
    use super::*;

    /// Every element of every range of every part lands where `tp_part_runs` puts it.
    #[test]
    fn boxes_cover_a_range_exactly_as_the_runs() {
        let t = |shape: Vec<usize>, split| TensorSpec { name: "w".into(), shape, offset: 0, kind: TensorKind::Matrix, split };
        let cases = [
            (t(vec![6, 12], Some(Split { dim: 1, parts: 3 })), 2, vec![6, 6]),
            (t(vec![7, 4], Some(Split { dim: 0, parts: 1 })), 2, vec![4, 4]),
            (t(vec![12], Some(Split { dim: 0, parts: 3 })), 2, vec![6]),
            (t(vec![5, 8], Some(Split { dim: 1, parts: 1 })), 4, vec![5, 2]),
        ];
        for (whole, tp, local_shape) in cases {
            for rank in 0..tp {
                let mut shape = local_shape.clone();
                if whole.split.unwrap().dim == 0 && whole.shape.len() == 2 {
                    let per = whole.shape[0].div_ceil(tp);
                    shape[0] = (whole.shape[0] - (rank * per).min(whole.shape[0])).min(per);
                }
                let part = t(shape, whole.split);
                let n = part.numel();
                let mut want = vec![usize::MAX; n];
                for (from, to, len) in tp_part_runs(&whole, &part, tp, rank) {
                    for k in 0..len {
                        want[to + k] = from + k;
                    }
                }
                let gcols = if whole.shape.len() == 2 { whole.shape[1] } else { whole.numel() };
                for a in 0..=n {
                    for b in a..=n {
                        let mut got = vec![usize::MAX; n];
                        for bx in tp_part_boxes(&whole, &part, tp, rank, a, b) {
                            let (nr, nc) = bx.rows_cols();
                            let (gr, gc) = if bx.slice.len() == 2 { (bx.slice[0].0, bx.slice[1].0) } else { (0, bx.slice[0].0) };
                            for i in 0..nr {
                                for j in 0..nc {
                                    let at = bx.local + i * bx.stride + j;
                                    assert_eq!(got[at], usize::MAX, "element {at} twice");
                                    got[at] = (gr + i) * gcols + gc + j;
                                }
                            }
                        }
                        let expect: Vec<usize> = (0..n).map(|i| if (a..b).contains(&i) { want[i] } else { usize::MAX }).collect();
                        assert_eq!(got, expect, "{:?} rank {rank} range {a}..{b}", whole.shape);
                    }
                }
            }
        }
    }
}

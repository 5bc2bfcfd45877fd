//! A decoder-only transformer as stages over flat parameter buckets: embedding, block
//! 0..L-1, head. Each stage has an explicit forward and backward (llm.c's style) and
//! runs every op through the [`Backend`] seam.
//!
//! One stage loop drives every pass ([`Model::train_micro`], [`Model::eval_micro`]):
//! the engine's data-parallel step (ZeRO-3 gathering a bucket just before its use,
//! reducing a bucket's gradient as soon as its backward ends), the single-rank path
//! ([`Model::forward_backward`]), recompute and evaluation. What differs between them
//! is the [`Driver`]: where a bucket's parameters come from and where its gradient goes.
//!
//! ```text
//! acquire(embed) -> embed fwd -> [release(embed) unless the head is tied]
//! for l in 0..L:  acquire(block l) -> block fwd (saves acts) -> release
//! acquire(head) -> ln_f, logits in row chunks, fused softmax-xent fwd+bwd -> grad_done(head)
//! for l in L-1..0: acquire(block l), grad(block l) -> [recompute fwd] -> block bwd -> grad_done(block l)
//! grad(embed) -> embed bwd -> grad_done(embed)
//! ```

use std::ops::{Deref, DerefMut};

use crate::acts::{Activations, BlockActs};
use crate::backend::{Backend, Buf, Cpu};
use crate::layout::{BlockView, BlockViewMut, GptConfig, Layout, ToSpec, EMBED};
use crate::spec::ModelSpec;

/// The model: its spec, its parameter layout and its backend. Parameters live outside
/// (in the engine's buckets), so one model serves any sharding of them.
pub struct Model<B: Backend = Cpu> {
    /// The shape this rank computes: the whole model, or its tensor-parallel part.
    pub spec: ModelSpec,
    /// The family-independent dims in GPT-2's names (`n_embd`, `block_size`, ...).
    pub cfg: GptConfig,
    pub layout: Layout,
    pub be: B,
    /// This rank's place under tensor parallelism (size 1: the whole model).
    pub tp: TpPart,
}

/// A rank's part of a tensor-parallel model (Megatron-LM): QKV and the MLP's up (and
/// gate) projections split by output columns, the attention output and the MLP's down
/// projection by input rows, heads and key/value heads split, the vocabulary (embedding
/// and head) split by rows; norms, positions and row-parallel biases replicated. Per
/// block the forward sums the two row-parallel outputs over the group, the backward
/// the two column-parallel input gradients ([`Driver::tp_reduce`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpPart {
    pub size: usize,
    pub rank: usize,
    /// The global vocabulary rows this rank holds.
    pub vocab: std::ops::Range<usize>,
}

/// A block's widths: hidden, MLP, query, packed q|k|v, MLP input projection (f or
/// gate|up 2f), heads, key/value heads, head width, norm epsilon.
struct BlockDims {
    c: usize,
    f: usize,
    q: usize,
    qkv: usize,
    up: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    eps: f32,
}

/// What [`Driver::tp_reduce`] combines across the tensor-parallel group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TpReduce {
    Sum,
    Max,
}

/// A pipeline chunk: the blocks `layers`, with the embedding in front when `first` and
/// the head behind when `last` (Narayanan et al. 2021: a pipeline rank runs one chunk,
/// or several with the interleaved schedule).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub layers: std::ops::Range<usize>,
    pub first: bool,
    pub last: bool,
}

/// The CPU model (the name predates Llama support).
pub type Gpt = Model<Cpu>;

/// A stage of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Embed,
    Block(usize),
    Head,
}

/// Where a pass gets parameter buckets and sends gradient buckets (see module docs).
/// Buffers may be longer than the bucket (ZeRO padding): the model uses the prefix.
pub trait Driver<B: Backend> {
    type Error;
    type Params: Deref<Target = B::Buf>;
    type Grads: DerefMut<Target = B::Buf>;
    /// The whole parameter bucket `b`, for computing.
    fn acquire(&mut self, b: usize) -> Result<Self::Params, Self::Error>;
    fn release(&mut self, b: usize, p: Self::Params);
    /// The buffer bucket `b`'s backward adds its gradient into.
    fn grad(&mut self, b: usize) -> Result<Self::Grads, Self::Error>;
    /// Bucket `b`'s gradient for this micro-batch is complete.
    fn grad_done(&mut self, b: usize, g: Self::Grads) -> Result<(), Self::Error>;
    /// The forward (and the head's backward) is done; block backwards start.
    fn forward_done(&mut self) {}
    /// Combines `x` elementwise across the tensor-parallel group, in place, the same
    /// result on every member. Called only when the model's `tp.size > 1`.
    fn tp_reduce(&mut self, _x: &mut B::Buf, _op: TpReduce) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Sequence parallelism: every rank's `shard`, in rank order, into `full`.
    /// Called only when the activations are sequence-parallel.
    fn tp_all_gather(&mut self, _shard: &B::Buf, _full: &mut B::Buf) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Sequence parallelism: sums `full` across the group; this rank keeps its rows.
    fn tp_reduce_scatter(&mut self, _full: &B::Buf, _shard: &mut B::Buf) -> Result<(), Self::Error> {
        Ok(())
    }
}

impl Model<Cpu> {
    pub fn new(shape: impl ToSpec) -> Model<Cpu> {
        Model::with_backend(Cpu, shape.to_spec())
    }

    /// Freshly initialised buckets (see [`crate::init::init_bucket`]).
    pub fn init_params(&self, seed: u64) -> Vec<Vec<f32>> {
        self.layout
            .buckets
            .iter()
            .map(|b| {
                let mut v = vec![0.0; b.numel];
                crate::init::init_bucket(&self.spec, b, seed, &mut v);
                v
            })
            .collect()
    }

    /// Zeroed buffers shaped like the buckets (gradients, optimizer moments).
    pub fn zeros(&self) -> Vec<Vec<f32>> {
        self.layout.buckets.iter().map(|b| vec![0.0; b.numel]).collect()
    }
}

impl<B: Backend> Model<B> {
    pub fn with_backend(be: B, spec: ModelSpec) -> Model<B> {
        let tp = TpPart { size: 1, rank: 0, vocab: 0..spec.vocab };
        Model { cfg: GptConfig::from(&spec), layout: Layout::new(&spec), spec, be, tp }
    }

    /// Rank `rank` of a `size`-way tensor-parallel `global` model (see [`TpPart`]); its
    /// buckets hold this rank's parts of the tensors ([`crate::layout::Split`]).
    pub fn tensor_parallel(be: B, global: &ModelSpec, size: usize, rank: usize) -> Result<Model<B>, String> {
        let mut m = Model::with_backend(be, global.tp_local(size, rank)?);
        m.tp = TpPart { size, rank, vocab: global.vocab_part(size, rank) };
        Ok(m)
    }

    /// One block's widths (this rank's, under tensor parallelism).
    fn block_dims(&self) -> BlockDims {
        let m = &self.spec;
        let (q, kv, f) = (m.q_width(), m.kv_width(), m.ffn);
        BlockDims { c: m.hidden, f, q, qkv: q + 2 * kv, up: f * (m.mlp_matrices() - 1), nh: m.heads, nkv: m.kv_heads, hd: m.head_dim, eps: m.norm_eps as f32 }
    }

    /// Sums or maxes `x` over the tensor-parallel group (nothing on a whole model).
    fn tp_reduce<D: Driver<B>>(&self, d: &mut D, x: &mut B::Buf, op: TpReduce) -> Result<(), D::Error> {
        if self.tp.size > 1 {
            d.tp_reduce(x, op)?;
        }
        Ok(())
    }

    /// Model FLOPs per trained token at sequence length `t` ([`ModelSpec::flops_per_token`]).
    pub fn flops_per_token(&self, t: usize) -> f64 {
        self.spec.flops_per_token(t)
    }

    /// The stages in forward order.
    pub fn stages(&self) -> impl Iterator<Item = Stage> {
        std::iter::once(Stage::Embed).chain((0..self.spec.layers).map(Stage::Block)).chain([Stage::Head])
    }

    /// The parameter bucket a stage owns.
    pub fn bucket_of(&self, s: Stage) -> usize {
        match s {
            Stage::Embed => EMBED,
            Stage::Block(l) => Layout::block(l),
            Stage::Head => self.layout.head(),
        }
    }

    /// True when the output head reuses the token embedding.
    pub fn tied(&self) -> bool {
        self.layout.ends.lm_head.is_none()
    }

    /// Buckets in the order a pass acquires them (for prefetching): the embedding, the
    /// blocks, the head, then (with a backward) the blocks in reverse.
    pub fn use_order(&self, backward: bool) -> Vec<usize> {
        let mut order: Vec<usize> = self.stages().map(|s| self.bucket_of(s)).collect();
        if backward {
            order.extend((0..self.spec.layers).rev().map(Layout::block));
        }
        order
    }

    /// Buckets in the order a pipeline chunk's forward (`backward = false`) or backward
    /// acquires them (for prefetching); [`Model::chunk_loss`] acquires the backward's
    /// first one or two (a tied head's embedding, and the head).
    pub fn chunk_use_order(&self, chunk: &Chunk, backward: bool) -> Vec<usize> {
        let mut order = Vec::new();
        let blocks = chunk.layers.clone().map(Layout::block);
        if backward {
            if chunk.last {
                // A tied head's embedding first (the caller holds it around the head).
                if self.tied() {
                    order.push(EMBED);
                }
                order.push(self.layout.head());
            }
            order.extend(blocks.rev());
        } else {
            if chunk.first {
                order.push(EMBED);
            }
            order.extend(blocks);
        }
        order
    }

    fn part<'a>(&self, buf: &'a B::Buf, b: usize) -> &'a B::Buf {
        buf.slice(0..self.layout.buckets[b].numel)
    }

    fn part_mut<'a>(&self, buf: &'a mut B::Buf, b: usize) -> &'a mut B::Buf {
        buf.slice_mut(0..self.layout.buckets[b].numel)
    }

    /// One micro-batch forward and backward through `d`; gradients are ADDED, scaled by
    /// `grad_scale`. Returns the summed loss over the B*T positions.
    pub fn train_micro<D: Driver<B>>(
        &self,
        d: &mut D,
        acts: &mut Activations<B>,
        tokens: &[u32],
        targets: &[u32],
        grad_scale: f32,
    ) -> Result<f64, D::Error> {
        let emb = self.forward_blocks(d, acts, tokens)?;
        let (loss, g_emb) = self.head_train(d, emb.as_deref().map(|e| self.part(e, EMBED)), acts, targets, grad_scale)?;
        if let Some(e) = emb {
            d.release(EMBED, e);
        }
        d.forward_done();
        self.backward_layers(d, acts, 0..self.spec.layers)?;
        let mut g_emb = match g_emb {
            Some(g) => g,
            None => d.grad(EMBED)?,
        };
        self.embed_backward(d, self.part_mut(&mut g_emb, EMBED), acts)?;
        d.grad_done(EMBED, g_emb)?;
        Ok(loss)
    }

    /// A pipeline chunk's forward: the embedding (first chunk) and the chunk's blocks.
    /// A later chunk finds its input in `acts.resid[layers.start]`; the output is left in
    /// `acts.resid[layers.end]`. The last chunk's head runs with its backward
    /// ([`Model::chunk_backward`]), as the fused cross-entropy produces both.
    pub fn chunk_forward<D: Driver<B>>(&self, d: &mut D, acts: &mut Activations<B>, chunk: &Chunk, tokens: &[u32]) -> Result<(), D::Error> {
        if chunk.first {
            let emb = d.acquire(EMBED)?;
            self.embed_forward(d, self.part(&emb, EMBED), acts, tokens)?;
            d.release(EMBED, emb);
        }
        self.forward_layers(d, acts, chunk.layers.clone())
    }

    /// A pipeline chunk's backward: the head's forward and backward (last chunk; returns
    /// the summed loss, else 0), the blocks in reverse, the embedding (first chunk). A
    /// chunk that is not the last finds d loss / d output in `acts.dres`; on exit `dres`
    /// holds d loss / d input. Each bucket's `grad_done` follows its backward.
    pub fn chunk_backward<D: Driver<B>>(&self, d: &mut D, acts: &mut Activations<B>, chunk: &Chunk, targets: &[u32], grad_scale: f32) -> Result<f64, D::Error> {
        let mut loss = 0.0;
        let mut g_emb = None;
        if chunk.last {
            // A tied head multiplies by the embedding (the last stage's copy of it).
            let emb = if self.tied() { Some(d.acquire(EMBED)?) } else { None };
            (loss, g_emb) = self.head_train(d, emb.as_deref().map(|e| self.part(e, EMBED)), acts, targets, grad_scale)?;
            if let Some(e) = emb {
                d.release(EMBED, e);
            }
            if !chunk.first {
                if let Some(g) = g_emb.take() {
                    d.grad_done(EMBED, g)?;
                }
            }
        }
        self.backward_layers(d, acts, chunk.layers.clone())?;
        if chunk.first {
            let mut g = match g_emb {
                Some(g) => g,
                None => d.grad(EMBED)?,
            };
            self.embed_backward(d, self.part_mut(&mut g, EMBED), acts)?;
            d.grad_done(EMBED, g)?;
        }
        Ok(loss)
    }

    /// The last chunk's summed loss after [`Model::chunk_forward`] (evaluation).
    pub fn chunk_loss<D: Driver<B>>(&self, d: &mut D, acts: &mut Activations<B>, targets: &[u32]) -> Result<f64, D::Error> {
        let emb = if self.tied() { Some(d.acquire(EMBED)?) } else { None };
        self.head_eval(d, emb, acts, targets)
    }

    /// The head's summed loss, no gradients; `emb` is a tied head's embedding bucket,
    /// released here with the head.
    fn head_eval<D: Driver<B>>(&self, d: &mut D, emb: Option<D::Params>, acts: &mut Activations<B>, targets: &[u32]) -> Result<f64, D::Error> {
        let head = self.layout.head();
        let hp = d.acquire(head)?;
        let loss = self.head_loss(d, emb.as_deref().map(|e| self.part(e, EMBED)), self.part(&hp, head), acts, targets)?;
        d.release(head, hp);
        if let Some(e) = emb {
            d.release(EMBED, e);
        }
        Ok(loss)
    }

    /// One micro-batch forward to the summed loss, no gradients.
    pub fn eval_micro<D: Driver<B>>(&self, d: &mut D, acts: &mut Activations<B>, tokens: &[u32], targets: &[u32]) -> Result<f64, D::Error> {
        let emb = self.forward_blocks(d, acts, tokens)?;
        self.head_eval(d, emb, acts, targets)
    }

    /// Embedding and every block; returns the embedding bucket when the tied head needs it.
    fn forward_blocks<D: Driver<B>>(&self, d: &mut D, acts: &mut Activations<B>, tokens: &[u32]) -> Result<Option<D::Params>, D::Error> {
        let emb = d.acquire(EMBED)?;
        self.embed_forward(d, self.part(&emb, EMBED), acts, tokens)?;
        let emb = if self.tied() {
            Some(emb)
        } else {
            d.release(EMBED, emb);
            None
        };
        self.forward_layers(d, acts, 0..self.spec.layers)?;
        Ok(emb)
    }

    /// The forwards of blocks `layers`, in order.
    fn forward_layers<D: Driver<B>>(&self, d: &mut D, acts: &mut Activations<B>, layers: std::ops::Range<usize>) -> Result<(), D::Error> {
        for l in layers {
            let b = Layout::block(l);
            let p = d.acquire(b)?;
            self.block_forward(d, l, self.part(&p, b), acts)?;
            d.release(b, p);
        }
        Ok(())
    }

    /// The backwards of blocks `layers`, last first, each bucket's `grad_done` after its
    /// backward.
    fn backward_layers<D: Driver<B>>(&self, d: &mut D, acts: &mut Activations<B>, layers: std::ops::Range<usize>) -> Result<(), D::Error> {
        for l in layers.rev() {
            let b = Layout::block(l);
            let p = d.acquire(b)?;
            let mut g = d.grad(b)?;
            self.block_backward(d, l, self.part(&p, b), self.part_mut(&mut g, b), acts)?;
            d.release(b, p);
            d.grad_done(b, g)?;
        }
        Ok(())
    }

    /// The head's forward and backward on training rows: acquires the head bucket, and
    /// with a tied head (`emb`: the embedding bucket, held by the caller) also takes the
    /// embedding's gradient buffer, which it returns unfinished (the embedding's own
    /// backward may still add to it). Returns the summed loss.
    fn head_train<D: Driver<B>>(
        &self,
        d: &mut D,
        emb: Option<&B::Buf>,
        acts: &mut Activations<B>,
        targets: &[u32],
        grad_scale: f32,
    ) -> Result<(f64, Option<D::Grads>), D::Error> {
        let head = self.layout.head();
        let hp = d.acquire(head)?;
        let mut g_head = d.grad(head)?;
        let mut g_emb = if emb.is_some() { Some(d.grad(EMBED)?) } else { None };
        let loss = self.head_forward_backward(
            d,
            emb,
            self.part(&hp, head),
            g_emb.as_deref_mut().map(|g| self.part_mut(g, EMBED)),
            self.part_mut(&mut g_head, head),
            acts,
            targets,
            grad_scale,
        )?;
        d.release(head, hp);
        d.grad_done(head, g_head)?;
        Ok((loss, g_emb))
    }

    /// `resid[0] = wte[tokens] (+ wpe[0..T])`. tokens (B,T). Tensor-parallel: each rank
    /// looks up the tokens of its vocabulary rows, the group sums.
    pub fn embed_forward<D: Driver<B>>(&self, d: &mut D, emb: &B::Buf, acts: &mut Activations<B>, tokens: &[u32]) -> Result<(), D::Error> {
        let (b, t, c) = (acts.b, acts.t, self.spec.hidden);
        acts.tokens.copy_from_slice(tokens);
        let e = &self.layout.ends;
        let wpe = e.wpe.as_ref().map(|r| emb.slice(r.clone()));
        let wte = emb.slice(e.wte.clone());
        if self.tp.size == 1 {
            self.be.embedding_forward(&mut acts.resid[0], tokens, wte, wpe, b, t, c);
            return Ok(());
        }
        let wpe = wpe.filter(|_| self.tp.rank == 0);
        if acts.sp > 1 {
            self.be.embedding_part_forward(&mut acts.full, tokens, wte, self.tp.vocab.start, wpe, b, t, c);
            return d.tp_reduce_scatter(&acts.full, &mut acts.resid[0]);
        }
        self.be.embedding_part_forward(&mut acts.resid[0], tokens, wte, self.tp.vocab.start, wpe, b, t, c);
        self.tp_reduce(d, &mut acts.resid[0], TpReduce::Sum)
    }

    /// Adds d wte (and d wpe) from `acts.dres` (d loss / d resid[0]) into `d_emb`.
    pub fn embed_backward<D: Driver<B>>(&self, d: &mut D, d_emb: &mut B::Buf, acts: &mut Activations<B>) -> Result<(), D::Error> {
        let e = &self.layout.ends;
        let (dwte, rest) = d_emb.split_at_mut(e.wte.end);
        let dwte = dwte.slice_mut(e.wte.clone());
        let dwpe = e.wpe.as_ref().map(|r| rest.slice_mut(r.start - e.wte.end..r.end - e.wte.end));
        let (b, t, c) = (acts.b, acts.t, self.spec.hidden);
        if self.tp.size == 1 {
            self.be.embedding_backward(dwte, dwpe, &acts.dres, &acts.tokens, b, t, c);
        } else if acts.sp > 1 {
            d.tp_all_gather(&acts.dres, &mut acts.full)?;
            self.be.embedding_part_backward(dwte, dwpe, &acts.full, &acts.tokens, self.tp.vocab.start, b, t, c);
        } else {
            self.be.embedding_part_backward(dwte, dwpe, &acts.dres, &acts.tokens, self.tp.vocab.start, b, t, c);
        }
        Ok(())
    }

    /// Block `l`: `resid[l+1] = res2 + mlp(norm2(res2))`, `res2 = resid[l] + attn(norm1(resid[l]))`.
    pub fn block_forward<D: Driver<B>>(&self, d: &mut D, l: usize, params: &B::Buf, acts: &mut Activations<B>) -> Result<(), D::Error> {
        let slot = if acts.recompute { 0 } else { l };
        // Selective recomputation: the attention statistics go to the shared buffer.
        if acts.selective {
            std::mem::swap(&mut acts.blocks[slot].att_saved, &mut acts.att_scratch);
        }
        let (input, rest) = acts.resid.split_at_mut(l + 1);
        let (b, t) = (acts.b, acts.t);
        let r = if acts.sp > 1 {
            self.block_fwd_sp(d, params, &mut acts.blocks[slot], &mut acts.full, &input[l], &mut rest[0], acts.rope.as_ref(), b, t)
        } else {
            self.block_fwd(d, params, &mut acts.blocks[slot], &input[l], &mut rest[0], acts.rope.as_ref(), b, t)
        };
        if acts.selective {
            std::mem::swap(&mut acts.blocks[slot].att_saved, &mut acts.att_scratch);
        }
        r
    }

    /// Backward of block `l` with selective recomputation: the attention core runs
    /// again from the saved q|k|v (its output is the same bits as the forward's) into
    /// the shared statistics buffer, lent to the block for its backward.
    fn block_backward_selective<D: Driver<B>>(&self, d: &mut D, l: usize, params: &B::Buf, grads: &mut B::Buf, acts: &mut Activations<B>) -> Result<(), D::Error> {
        let BlockDims { nh, nkv, hd, .. } = self.block_dims();
        let (b, t) = (acts.b, acts.t);
        let a = &mut acts.blocks[l];
        std::mem::swap(&mut a.att_saved, &mut acts.att_scratch);
        self.be.attention_forward(&mut a.att, &mut a.att_saved, &a.qkv, b, t, nh, nkv, hd);
        acts.selective = false;
        let r = self.block_backward(d, l, params, grads, acts);
        acts.selective = true;
        std::mem::swap(&mut acts.blocks[l].att_saved, &mut acts.att_scratch);
        r
    }

    /// [`Model::block_fwd`] with sequence parallelism: the norms and residual adds run on
    /// this rank's rows; each norm's output is all-gathered before its column-parallel
    /// layer and each row-parallel output reduce-scattered (Korthikanti et al. 2022).
    #[allow(clippy::too_many_arguments)]
    fn block_fwd_sp<D: Driver<B>>(
        &self,
        d: &mut D,
        params: &B::Buf,
        a: &mut BlockActs<B>,
        full: &mut B::Buf,
        input: &B::Buf,
        output: &mut B::Buf,
        rope: Option<&B::Rope>,
        b: usize,
        t: usize,
    ) -> Result<(), D::Error> {
        let (m, be, wl) = (&self.spec, &self.be, self.layout.weights);
        let BlockDims { c, f, q, qkv, up, nh, nkv, hd, eps } = self.block_dims();
        let n = b * t;
        let ns = n / self.tp.size;
        let p = BlockView::new(params, &self.layout.block);
        let bias_here = self.tp.rank == 0;
        be.norm_forward(m.norm, eps, &mut a.ln1, &mut a.ln1_mean, &mut a.ln1_rstd, input, p.ln1_w, p.ln1_b, ns, c);
        d.tp_all_gather(&a.ln1, full)?;
        be.linear_forward(&mut a.qkv, full, p.qkv_w, p.qkv_b, wl, n, c, qkv);
        if let Some(r) = rope {
            be.rope_forward(&mut a.qkv, r, b, t, nh, nkv, hd);
        }
        be.attention_forward(&mut a.att, &mut a.att_saved, &a.qkv, b, t, nh, nkv, hd);
        be.linear_forward(full, &a.att, p.o_w, p.o_b.filter(|_| bias_here), wl, n, q, c);
        d.tp_reduce_scatter(full, &mut a.res2)?;
        be.residual_norm_forward(m.norm, eps, &mut a.res2, input, &mut a.ln2, &mut a.ln2_mean, &mut a.ln2_rstd, p.ln2_w, p.ln2_b, ns, c);
        d.tp_all_gather(&a.ln2, full)?;
        be.linear_act_forward(m.mlp, &mut a.fc, &mut a.gelu, full, p.up_w, p.up_b, wl, n, c, up, f);
        be.linear_forward(full, &a.gelu, p.down_w, p.down_b.filter(|_| bias_here), wl, n, f, c);
        d.tp_reduce_scatter(full, output)?;
        be.add_inplace(output, &a.res2);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)] // one block's parameters, saved activations, input and output
    fn block_fwd<D: Driver<B>>(
        &self,
        d: &mut D,
        params: &B::Buf,
        a: &mut BlockActs<B>,
        input: &B::Buf,
        output: &mut B::Buf,
        rope: Option<&B::Rope>,
        b: usize,
        t: usize,
    ) -> Result<(), D::Error> {
        let (m, be, wl) = (&self.spec, &self.be, self.layout.weights);
        let BlockDims { c, f, q, qkv, up, nh, nkv, hd, eps } = self.block_dims();
        let n = b * t;
        let p = BlockView::new(params, &self.layout.block);
        // Row-parallel layers add their (replicated) bias once, on tensor-parallel rank 0.
        let bias_here = self.tp.rank == 0;
        be.norm_forward(m.norm, eps, &mut a.ln1, &mut a.ln1_mean, &mut a.ln1_rstd, input, p.ln1_w, p.ln1_b, n, c);
        be.linear_forward(&mut a.qkv, &a.ln1, p.qkv_w, p.qkv_b, wl, n, c, qkv);
        if let Some(r) = rope {
            be.rope_forward(&mut a.qkv, r, b, t, nh, nkv, hd);
        }
        be.attention_forward(&mut a.att, &mut a.att_saved, &a.qkv, b, t, nh, nkv, hd);
        be.linear_forward(&mut a.res2, &a.att, p.o_w, p.o_b.filter(|_| bias_here), wl, n, q, c);
        self.tp_reduce(d, &mut a.res2, TpReduce::Sum)?;
        be.residual_norm_forward(m.norm, eps, &mut a.res2, input, &mut a.ln2, &mut a.ln2_mean, &mut a.ln2_rstd, p.ln2_w, p.ln2_b, n, c);
        be.linear_act_forward(m.mlp, &mut a.fc, &mut a.gelu, &a.ln2, p.up_w, p.up_b, wl, n, c, up, f);
        be.linear_forward(output, &a.gelu, p.down_w, p.down_b.filter(|_| bias_here), wl, n, f, c);
        self.tp_reduce(d, output, TpReduce::Sum)?;
        be.add_inplace(output, &a.res2);
        Ok(())
    }

    /// Backward of block `l`: on entry `acts.dres` holds d loss / d resid[l+1]; on exit
    /// d loss / d resid[l]. Adds the block's parameter gradients into `grads`. With
    /// recompute, first re-runs the block's forward from `resid[l]`.
    pub fn block_backward<D: Driver<B>>(&self, d: &mut D, l: usize, params: &B::Buf, grads: &mut B::Buf, acts: &mut Activations<B>) -> Result<(), D::Error> {
        if acts.selective {
            return self.block_backward_selective(d, l, params, grads, acts);
        }
        if acts.recompute {
            self.block_forward(d, l, params, acts)?;
        }
        if acts.sp > 1 {
            return self.block_bwd_sp(d, l, params, grads, acts);
        }
        let slot = if acts.recompute { 0 } else { l };
        let (m, be, wl) = (&self.spec, &self.be, self.layout.weights);
        let BlockDims { c, f, q, qkv, up, nh, nkv, hd, .. } = self.block_dims();
        let n = acts.b * acts.t;
        let p = BlockView::new(params, &self.layout.block);
        let g = BlockViewMut::new(grads, &self.layout.block);
        let a = &acts.blocks[slot];
        let input = &acts.resid[l];
        let dres = &mut acts.dres;
        // MLP: resid[l+1] = res2 + down(act(up(norm2(res2))))
        be.fill_zero(&mut acts.d_gelu);
        be.linear_backward(Some(&mut acts.d_gelu), g.down_w, g.down_b, dres, &a.gelu, p.down_w, wl, n, f, c);
        be.fill_zero(&mut acts.d_fc);
        be.mlp_act_backward(m.mlp, &mut acts.d_fc, &acts.d_gelu, &a.fc, n, f);
        be.fill_zero(&mut acts.d_ln);
        be.linear_backward(Some(&mut acts.d_ln), g.up_w, g.up_b, &acts.d_fc, &a.ln2, p.up_w, wl, n, c, up);
        self.tp_reduce(d, &mut acts.d_ln, TpReduce::Sum)?;
        // dres becomes d res2: the residual path plus the norm's input gradient.
        be.norm_backward(m.norm, dres, g.ln2_w, g.ln2_b, &acts.d_ln, &a.res2, p.ln2_w, &a.ln2_mean, &a.ln2_rstd, n, c);
        // Attention: res2 = resid[l] + o(attn(rope(qkv(norm1(resid[l])))))
        be.fill_zero(&mut acts.d_att);
        be.linear_backward(Some(&mut acts.d_att), g.o_w, g.o_b, dres, &a.att, p.o_w, wl, n, q, c);
        be.fill_zero(&mut acts.d_qkv);
        be.attention_backward(&mut acts.d_qkv, &acts.d_att, &a.qkv, &a.att, &a.att_saved, acts.b, acts.t, nh, nkv, hd);
        if let Some(r) = &acts.rope {
            be.rope_backward(&mut acts.d_qkv, r, acts.b, acts.t, nh, nkv, hd);
        }
        be.fill_zero(&mut acts.d_ln);
        be.linear_backward(Some(&mut acts.d_ln), g.qkv_w, g.qkv_b, &acts.d_qkv, &a.ln1, p.qkv_w, wl, n, c, qkv);
        self.tp_reduce(d, &mut acts.d_ln, TpReduce::Sum)?;
        be.norm_backward(m.norm, dres, g.ln1_w, g.ln1_b, &acts.d_ln, input, p.ln1_w, &a.ln1_mean, &a.ln1_rstd, n, c);
        Ok(())
    }

    /// Backward of [`Model::block_fwd_sp`]: each all-gather's conjugate is a
    /// reduce-scatter and the other way round; a norm's output is gathered again rather
    /// than kept whole; the norms' weight gradients, each rank's rows' share, are summed
    /// across the group before they are accumulated.
    fn block_bwd_sp<D: Driver<B>>(&self, d: &mut D, l: usize, params: &B::Buf, grads: &mut B::Buf, acts: &mut Activations<B>) -> Result<(), D::Error> {
        let slot = if acts.recompute { 0 } else { l };
        let (m, be, wl) = (&self.spec, &self.be, self.layout.weights);
        let BlockDims { c, f, q, qkv, up, nh, nkv, hd, .. } = self.block_dims();
        let n = acts.b * acts.t;
        let ns = n / self.tp.size;
        let p = BlockView::new(params, &self.layout.block);
        let g = BlockViewMut::new(grads, &self.layout.block);
        let a = &acts.blocks[slot];
        let input = &acts.resid[l];
        let dres = &mut acts.dres;
        let full = &mut acts.full;
        be.fill_zero(&mut acts.d_norm);
        let (dn1, dn2) = acts.d_norm.split_at_mut(2 * c);
        let (dn1w, dn1b) = dn1.split_at_mut(c);
        let (dn2w, dn2b) = dn2.split_at_mut(c);
        let biased = g.ln1_b.is_some();
        // MLP, from d out gathered whole.
        d.tp_all_gather(dres, full)?;
        be.fill_zero(&mut acts.d_gelu);
        be.linear_backward(Some(&mut acts.d_gelu), g.down_w, g.down_b, full, &a.gelu, p.down_w, wl, n, f, c);
        be.fill_zero(&mut acts.d_fc);
        be.mlp_act_backward(m.mlp, &mut acts.d_fc, &acts.d_gelu, &a.fc, n, f);
        d.tp_all_gather(&a.ln2, full)?;
        be.fill_zero(&mut acts.d_ln);
        be.linear_backward(Some(&mut acts.d_ln), g.up_w, g.up_b, &acts.d_fc, full, p.up_w, wl, n, c, up);
        d.tp_reduce_scatter(&acts.d_ln, &mut acts.d_sh)?;
        let dn2b = biased.then_some(dn2b);
        be.norm_backward(m.norm, dres, dn2w, dn2b, &acts.d_sh, &a.res2, p.ln2_w, &a.ln2_mean, &a.ln2_rstd, ns, c);
        // Attention, from d res2 gathered whole.
        d.tp_all_gather(dres, full)?;
        be.fill_zero(&mut acts.d_att);
        be.linear_backward(Some(&mut acts.d_att), g.o_w, g.o_b, full, &a.att, p.o_w, wl, n, q, c);
        be.fill_zero(&mut acts.d_qkv);
        be.attention_backward(&mut acts.d_qkv, &acts.d_att, &a.qkv, &a.att, &a.att_saved, acts.b, acts.t, nh, nkv, hd);
        if let Some(r) = &acts.rope {
            be.rope_backward(&mut acts.d_qkv, r, acts.b, acts.t, nh, nkv, hd);
        }
        d.tp_all_gather(&a.ln1, full)?;
        be.fill_zero(&mut acts.d_ln);
        be.linear_backward(Some(&mut acts.d_ln), g.qkv_w, g.qkv_b, &acts.d_qkv, full, p.qkv_w, wl, n, c, qkv);
        d.tp_reduce_scatter(&acts.d_ln, &mut acts.d_sh)?;
        let dn1b = biased.then_some(dn1b);
        be.norm_backward(m.norm, dres, dn1w, dn1b, &acts.d_sh, input, p.ln1_w, &a.ln1_mean, &a.ln1_rstd, ns, c);
        d.tp_reduce(&mut acts.d_norm, TpReduce::Sum)?;
        let dn = &acts.d_norm;
        be.add_inplace(g.ln1_w, dn.slice(0..c));
        be.add_inplace(g.ln2_w, dn.slice(2 * c..3 * c));
        if let (Some(b1), Some(b2)) = (g.ln1_b, g.ln2_b) {
            be.add_inplace(b1, dn.slice(c..2 * c));
            be.add_inplace(b2, dn.slice(3 * c..4 * c));
        }
        Ok(())
    }

    fn final_norm(&self, head: &B::Buf, acts: &mut Activations<B>) {
        let e = &self.layout.ends;
        let n = acts.b * acts.t / acts.sp;
        let b = e.norm_b.as_ref().map(|r| head.slice(r.clone()));
        let last = &acts.resid[self.spec.layers];
        let eps = self.spec.norm_eps as f32;
        self.be.norm_forward(self.spec.norm, eps, &mut acts.lnf, &mut acts.lnf_mean, &mut acts.lnf_rstd, last, head.slice(e.norm_w.clone()), b, n, self.spec.hidden);
    }

    /// The output projection `(V, C)`: `lm_head` in the head bucket, or the tied `wte`.
    fn head_weight<'a>(&self, emb: Option<&'a B::Buf>, head: &'a B::Buf) -> &'a B::Buf {
        let e = &self.layout.ends;
        match (&e.lm_head, emb) {
            (Some(r), _) => head.slice(r.clone()),
            (None, Some(emb)) => emb.slice(e.wte.clone()),
            (None, None) => panic!("a tied head needs the embedding bucket"),
        }
    }

    /// Head on training rows: final norm, logits = x W^T, fused softmax cross-entropy and
    /// its backward, in chunks of rows. Fills `acts.dres` with d loss / d resid[L] and
    /// adds the head's gradients into `d_head` (norm, untied `lm_head`) and `d_emb` (tied
    /// `wte`). `emb`/`d_emb` are needed only for a tied head. Returns the summed loss
    /// over the B*T positions; gradients are scaled by `grad_scale`.
    #[allow(clippy::too_many_arguments)] // parameters, gradients, activations and targets of the head
    pub fn head_forward_backward<D: Driver<B>>(
        &self,
        d: &mut D,
        emb: Option<&B::Buf>,
        head: &B::Buf,
        d_emb: Option<&mut B::Buf>,
        d_head: &mut B::Buf,
        acts: &mut Activations<B>,
        targets: &[u32],
        grad_scale: f32,
    ) -> Result<f64, D::Error> {
        let (c, v, be) = (self.spec.hidden, self.spec.vocab, &self.be);
        let (n, sp) = (acts.b * acts.t, acts.sp);
        self.final_norm(head, acts);
        if sp > 1 {
            // The final norm ran on this rank's rows; the logits need all of them.
            d.tp_all_gather(&acts.lnf, &mut acts.full)?;
        }
        let w = self.head_weight(emb, head);
        let e = &self.layout.ends;
        let (d_norm, dw) = match (&e.lm_head, d_emb) {
            (Some(r), _) => {
                let (norm, lm) = d_head.split_at_mut(r.start);
                (norm, lm.slice_mut(0..r.len()))
            }
            (None, Some(d_emb)) => (d_head, d_emb.slice_mut(e.wte.clone())),
            (None, None) => panic!("a tied head needs the embedding gradient"),
        };
        be.fill_zero(&mut acts.d_ln);
        let mut loss = 0.0;
        let mut r0 = 0;
        while r0 < n {
            let rows = acts.head_rows.min(n - r0);
            let logits = acts.logits.slice_mut(0..rows * v);
            let x = if sp > 1 { &acts.full } else { &acts.lnf }.slice(r0 * c..(r0 + rows) * c);
            // (rows, V) = (rows, C) @ W^T
            be.matmul(logits, x, false, w, true, rows, v, c, false);
            let tg = &targets[r0..r0 + rows];
            loss += if self.tp.size == 1 {
                be.xent_forward_backward(logits, acts.losses.slice_mut(r0..r0 + rows), tg, rows, v, grad_scale)
            } else {
                let (l, sum) = self.parallel_xent(d, logits, tg, rows)?;
                be.xent_parallel_grad(logits, &sum, tg, self.tp.vocab.start, rows, v, grad_scale);
                l
            };
            // d x (rows, C) += dlogits (rows, V) @ W (V, C)
            be.matmul(acts.d_ln.slice_mut(r0 * c..(r0 + rows) * c), logits, false, w, false, rows, c, v, true);
            // d W (V, C) += dlogits^T (V, rows) @ x (rows, C)
            be.matmul(dw, logits, true, x, false, v, c, rows, true);
            r0 += rows;
        }
        let (dnw, dnb) = match &e.norm_b {
            Some(rb) => {
                let (w, b) = d_norm.split_at_mut(rb.start);
                (w.slice_mut(e.norm_w.clone()), Some(b.slice_mut(0..rb.len())))
            }
            None => (d_norm.slice_mut(e.norm_w.clone()), None),
        };
        be.fill_zero(&mut acts.dres);
        let last = &acts.resid[self.spec.layers];
        let nw = head.slice(e.norm_w.clone());
        if sp == 1 {
            // Each rank's vocabulary rows gave part of d x.
            self.tp_reduce(d, &mut acts.d_ln, TpReduce::Sum)?;
            be.norm_backward(self.spec.norm, &mut acts.dres, dnw, dnb, &acts.d_ln, last, nw, &acts.lnf_mean, &acts.lnf_rstd, n, c);
            return Ok(loss);
        }
        // Sequence parallel: d x summed and scattered to the rows' owners; the norm's
        // weight gradient is this rank's rows' share, summed across the group.
        d.tp_reduce_scatter(&acts.d_ln, &mut acts.d_sh)?;
        be.fill_zero(&mut acts.d_norm);
        let (sw, sb) = acts.d_norm.split_at_mut(c);
        let sb = dnb.is_some().then(|| sb.slice_mut(0..c));
        be.norm_backward(self.spec.norm, &mut acts.dres, sw, sb, &acts.d_sh, last, nw, &acts.lnf_mean, &acts.lnf_rstd, n / sp, c);
        d.tp_reduce(&mut acts.d_norm, TpReduce::Sum)?;
        be.add_inplace(dnw, acts.d_norm.slice(0..c));
        if let Some(dnb) = dnb {
            be.add_inplace(dnb, acts.d_norm.slice(c..2 * c));
        }
        Ok(loss)
    }

    /// The vocabulary-parallel cross-entropy of `rows` rows of this rank's logit columns:
    /// the maxima, the targets' logits and the sums of exponentials are reduced across
    /// the group, so no rank holds all the logits. Leaves `exp(logit - max)` in `logits`;
    /// returns the summed loss (the same on every rank) and the global sums.
    fn parallel_xent<D: Driver<B>>(&self, d: &mut D, logits: &mut B::Buf, targets: &[u32], rows: usize) -> Result<(f64, B::Vec), D::Error> {
        let (be, v, first) = (&self.be, self.spec.vocab, self.tp.vocab.start);
        let (mut max, mut picked, mut sum) = (be.stats(rows), be.stats(rows), be.stats(rows));
        be.xent_parallel_stats(logits, targets, first, rows, v, &mut max, &mut picked);
        d.tp_reduce(&mut max, TpReduce::Max)?;
        d.tp_reduce(&mut picked, TpReduce::Sum)?;
        be.xent_parallel_exp(logits, &max, rows, v, &mut sum);
        d.tp_reduce(&mut sum, TpReduce::Sum)?;
        let mut host = vec![0.0f32; 3 * rows];
        be.to_host(&max, &mut host[..rows]);
        be.to_host(&picked, &mut host[rows..2 * rows]);
        be.to_host(&sum, &mut host[2 * rows..]);
        // As the fused kernel: (ln(sum) + max) - target logit, in f32, summed in f64.
        let loss = (0..rows).map(|r| ((host[2 * rows + r].ln() + host[r]) - host[rows + r]) as f64).sum();
        Ok((loss, sum))
    }

    /// Head for evaluation: summed loss over the B*T positions, no gradients.
    pub fn head_loss<D: Driver<B>>(&self, d: &mut D, emb: Option<&B::Buf>, head: &B::Buf, acts: &mut Activations<B>, targets: &[u32]) -> Result<f64, D::Error> {
        let (c, v, be) = (self.spec.hidden, self.spec.vocab, &self.be);
        let (n, sp) = (acts.b * acts.t, acts.sp);
        self.final_norm(head, acts);
        if sp > 1 {
            d.tp_all_gather(&acts.lnf, &mut acts.full)?;
        }
        let w = self.head_weight(emb, head);
        let mut loss = 0.0;
        let mut r0 = 0;
        while r0 < n {
            let rows = acts.head_rows.min(n - r0);
            let logits = acts.logits.slice_mut(0..rows * v);
            let x = if sp > 1 { &acts.full } else { &acts.lnf }.slice(r0 * c..(r0 + rows) * c);
            be.matmul(logits, x, false, w, true, rows, v, c, false);
            let tg = &targets[r0..r0 + rows];
            loss += if self.tp.size == 1 {
                be.xent_forward(logits, acts.losses.slice_mut(r0..r0 + rows), tg, rows, v)
            } else {
                self.parallel_xent(d, logits, tg, rows)?.0
            };
            r0 += rows;
        }
        Ok(loss)
    }

    /// Logits (V) of one position `pos` of sequence `seq` into host `out` (sampling, tests).
    /// `emb` and `head` are the embedding and head buckets.
    pub fn head_logits(&self, emb: &B::Buf, head: &B::Buf, acts: &mut Activations<B>, seq: usize, pos: usize, out: &mut [f32]) {
        assert_eq!(self.tp.size, 1, "head_logits needs the whole model");
        let (c, v) = (self.spec.hidden, self.spec.vocab);
        self.final_norm(head, acts);
        let row = seq * acts.t + pos;
        let w = self.head_weight(Some(emb), head);
        let logits = acts.logits.slice_mut(0..v);
        self.be.matmul(logits, acts.lnf.slice(row * c..(row + 1) * c), false, w, true, 1, v, c, false);
        self.be.to_host(logits, &mut out[..v]);
    }

    /// Whole forward, then backward, of one micro-batch on one rank. `params` and `grads`
    /// are the buckets in layout order; gradients are ADDED into `grads`, scaled by
    /// `grad_scale` (e.g. 1 / (B*T*accumulation) for the mean loss). Returns the summed loss.
    pub fn forward_backward(
        &self,
        params: &[B::Vec],
        grads: &mut [B::Vec],
        acts: &mut Activations<B>,
        tokens: &[u32],
        targets: &[u32],
        grad_scale: f32,
    ) -> f64 {
        let mut d = Whole { be: &self.be, params, grads: Some(grads) };
        match self.train_micro(&mut d, acts, tokens, targets, grad_scale) {
            Ok(loss) => loss,
            Err(never) => match never {},
        }
    }

    /// Whole forward to the summed loss, no gradients (evaluation).
    pub fn forward_loss(&self, params: &[B::Vec], acts: &mut Activations<B>, tokens: &[u32], targets: &[u32]) -> f64 {
        let mut d = Whole { be: &self.be, params, grads: None };
        match self.eval_micro(&mut d, acts, tokens, targets) {
            Ok(loss) => loss,
            Err(never) => match never {},
        }
    }

    /// Embedding and every block: leaves the last hidden state in `acts.resid[L]`.
    pub fn forward_hidden(&self, params: &[B::Vec], acts: &mut Activations<B>, tokens: &[u32]) {
        let mut d = Whole { be: &self.be, params, grads: None };
        match self.forward_blocks(&mut d, acts, tokens) {
            Ok(_) => {}
            Err(never) => match never {},
        }
    }
}

/// The single-rank driver: whole buckets held by the caller.
struct Whole<'a, B: Backend> {
    be: &'a B,
    params: &'a [B::Vec],
    grads: Option<&'a mut [B::Vec]>,
}

impl<'a, B: Backend> Driver<B> for Whole<'a, B> {
    type Error = std::convert::Infallible;
    type Params = &'a B::Buf;
    type Grads = B::Vec;
    fn acquire(&mut self, b: usize) -> Result<&'a B::Buf, Self::Error> {
        Ok(&*self.params[b])
    }
    fn release(&mut self, _b: usize, _p: &'a B::Buf) {}
    fn grad(&mut self, b: usize) -> Result<B::Vec, Self::Error> {
        let grads = self.grads.as_deref_mut().expect("gradients requested in a forward-only pass");
        Ok(std::mem::replace(&mut grads[b], self.be.zeros(0)))
    }
    fn grad_done(&mut self, b: usize, g: B::Vec) -> Result<(), Self::Error> {
        let grads = self.grads.as_deref_mut().expect("gradients requested in a forward-only pass");
        grads[b] = g;
        Ok(())
    }
}

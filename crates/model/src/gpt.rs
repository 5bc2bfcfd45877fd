//! GPT-2 forward and backward, stage by stage, over flat parameter buckets.
//!
//! The stages are exposed one by one (embedding, block l, head) so that the engine can
//! act between them: gather a ZeRO-3 bucket just before its use, start reducing a
//! bucket's gradient as soon as its backward ends. [`Gpt::forward_backward`] strings them
//! together for the plain single-rank case.

use crate::acts::{Activations, BlockActs};
use crate::layout::{split_embedding, split_embedding_mut, split_head, split_head_mut, BlockView, GptConfig, Layout};
use kernels as k;

pub struct Gpt {
    pub cfg: GptConfig,
    pub layout: Layout,
}

impl Gpt {
    pub fn new(cfg: GptConfig) -> Gpt {
        Gpt { layout: Layout::new(&cfg), cfg }
    }

    /// Model FLOPs per token for training, `6N + 12 L C T` (PaLM, appendix B), with N the
    /// parameters less the position embeddings (the tied `wte` is used by the head's matmul).
    pub fn flops_per_token(&self, t: usize) -> f64 {
        let n = (self.layout.num_params() - self.cfg.block_size * self.cfg.n_embd) as f64;
        6.0 * n + 12.0 * (self.cfg.n_layer * self.cfg.n_embd * t) as f64
    }

    /// `resid[0] = wte[tokens] + wpe[0..T]`. tokens (B,T).
    pub fn embed_forward(&self, emb: &[f32], acts: &mut Activations, tokens: &[u32]) {
        let (b, t, c) = (acts.b, acts.t, self.cfg.n_embd);
        acts.tokens.copy_from_slice(tokens);
        let (wte, wpe) = split_embedding(emb, &self.cfg);
        k::embedding_forward(&mut acts.resid[0], tokens, wte, wpe, b, t, c);
    }

    /// Block `l`: `resid[l+1] = res2 + mlp(ln2(res2))`, `res2 = resid[l] + attn(ln1(resid[l]))`.
    pub fn block_forward(&self, l: usize, params: &[f32], acts: &mut Activations) {
        let slot = if acts.recompute { 0 } else { l };
        let (input, output) = split_pair(&mut acts.resid, l);
        block_forward(&self.cfg, params, &mut acts.blocks[slot], input, output, acts.b, acts.t);
    }

    /// Head on training rows: ln_f, logits = x wte^T, fused softmax cross-entropy and its
    /// backward, in chunks of rows. Fills `acts.dres` with d loss / d resid[L] and adds the
    /// head's gradients into `d_emb` (wte) and `d_head` (ln_f). Returns the summed loss
    /// over the B*T positions; gradients are scaled by `grad_scale`.
    #[allow(clippy::too_many_arguments)] // parameters, gradients, activations and targets of a tied head
    pub fn head_forward_backward(
        &self,
        emb: &[f32],
        head: &[f32],
        d_emb: &mut [f32],
        d_head: &mut [f32],
        acts: &mut Activations,
        targets: &[u32],
        grad_scale: f32,
    ) -> f64 {
        let (c, v) = (self.cfg.n_embd, self.cfg.vocab_size);
        let n = acts.b * acts.t;
        self.final_norm(head, acts);
        let (wte, _) = split_embedding(emb, &self.cfg);
        let (dwte, _) = split_embedding_mut(d_emb, &self.cfg);
        acts.d_ln.fill(0.0);
        let mut loss = 0.0;
        let mut r0 = 0;
        while r0 < n {
            let rows = acts.head_rows.min(n - r0);
            let logits = &mut acts.logits[..rows * v];
            let x = &acts.lnf[r0 * c..(r0 + rows) * c];
            // (rows, V) = (rows, C) @ wte^T
            k::matmul(logits, x, false, wte, true, rows, v, c, false);
            loss += k::softmax_xent_forward_backward(
                logits, &mut acts.losses[r0..r0 + rows], &targets[r0..r0 + rows], rows, v, grad_scale,
            );
            // d x (rows, C) += dlogits (rows, V) @ wte (V, C)
            k::matmul(&mut acts.d_ln[r0 * c..(r0 + rows) * c], logits, false, wte, false, rows, c, v, true);
            // d wte (V, C) += dlogits^T (V, rows) @ x (rows, C)
            k::matmul(dwte, logits, true, x, false, v, c, rows, true);
            r0 += rows;
        }
        let (w, _) = split_head(head, &self.cfg);
        let (dw, db) = split_head_mut(d_head, &self.cfg);
        acts.dres.fill(0.0);
        let last = &acts.resid[self.cfg.n_layer];
        k::layernorm_backward(&mut acts.dres, dw, db, &acts.d_ln, last, w, &acts.lnf_mean, &acts.lnf_rstd, n, c);
        loss
    }

    /// Head for evaluation: summed loss over the B*T positions, no gradients.
    pub fn head_loss(&self, emb: &[f32], head: &[f32], acts: &mut Activations, targets: &[u32]) -> f64 {
        let (c, v) = (self.cfg.n_embd, self.cfg.vocab_size);
        let n = acts.b * acts.t;
        self.final_norm(head, acts);
        let (wte, _) = split_embedding(emb, &self.cfg);
        let mut loss = 0.0;
        let mut r0 = 0;
        while r0 < n {
            let rows = acts.head_rows.min(n - r0);
            let logits = &mut acts.logits[..rows * v];
            k::matmul(logits, &acts.lnf[r0 * c..(r0 + rows) * c], false, wte, true, rows, v, c, false);
            loss += k::softmax_xent_forward(logits, &mut acts.losses[r0..r0 + rows], &targets[r0..r0 + rows], rows, v);
            r0 += rows;
        }
        loss
    }

    /// Logits (V) of one position `pos` of sequence `seq` (for sampling and tests).
    pub fn head_logits(&self, emb: &[f32], head: &[f32], acts: &mut Activations, seq: usize, pos: usize, out: &mut [f32]) {
        let (c, v) = (self.cfg.n_embd, self.cfg.vocab_size);
        self.final_norm(head, acts);
        let row = seq * acts.t + pos;
        let (wte, _) = split_embedding(emb, &self.cfg);
        k::matmul(&mut out[..v], &acts.lnf[row * c..(row + 1) * c], false, wte, true, 1, v, c, false);
    }

    fn final_norm(&self, head: &[f32], acts: &mut Activations) {
        let (w, b) = split_head(head, &self.cfg);
        let n = acts.b * acts.t;
        let last = &acts.resid[self.cfg.n_layer];
        k::layernorm_forward(&mut acts.lnf, &mut acts.lnf_mean, &mut acts.lnf_rstd, last, w, b, n, self.cfg.n_embd);
    }

    /// Backward of block `l`: on entry `acts.dres` holds d loss / d resid[l+1]; on exit
    /// d loss / d resid[l]. Adds the block's parameter gradients into `grads`. With
    /// recompute, first re-runs the block's forward from `resid[l]`.
    pub fn block_backward(&self, l: usize, params: &[f32], grads: &mut [f32], acts: &mut Activations) {
        if acts.recompute {
            self.block_forward(l, params, acts);
        }
        let slot = if acts.recompute { 0 } else { l };
        let (cfg, n) = (&self.cfg, acts.b * acts.t);
        let c = cfg.n_embd;
        let p = BlockView::new(params, c, cfg.bias);
        let g = BlockView::new_mut(grads, c, cfg.bias);
        let a = &acts.blocks[slot];
        let input = &acts.resid[l];
        let dres = &mut acts.dres;
        // MLP: resid[l+1] = res2 + c_proj(gelu(c_fc(ln2(res2))))
        acts.d_gelu.fill(0.0);
        k::linear_backward(Some(&mut acts.d_gelu), g.fc_proj_w, g.fc_proj_b, dres, &a.gelu, p.fc_proj_w, n, 4 * c, c);
        acts.d_fc.fill(0.0);
        k::gelu_backward(&mut acts.d_fc, &a.fc, &acts.d_gelu);
        acts.d_ln.fill(0.0);
        k::linear_backward(Some(&mut acts.d_ln), g.fc_w, g.fc_b, &acts.d_fc, &a.ln2, p.fc_w, n, c, 4 * c);
        // dres becomes d res2: the residual path plus the LayerNorm's input gradient.
        k::layernorm_backward(dres, g.ln2_w, g.ln2_b, &acts.d_ln, &a.res2, p.ln2_w, &a.ln2_mean, &a.ln2_rstd, n, c);
        // Attention: res2 = resid[l] + c_proj(attn(c_attn(ln1(resid[l]))))
        acts.d_att.fill(0.0);
        k::linear_backward(Some(&mut acts.d_att), g.attn_proj_w, g.attn_proj_b, dres, &a.att, p.attn_proj_w, n, c, c);
        acts.d_qkv.fill(0.0);
        k::attention_backward(&mut acts.d_qkv, &acts.d_att, &a.qkv, &a.att, &a.att_saved, acts.b, acts.t, c, cfg.n_head);
        acts.d_ln.fill(0.0);
        k::linear_backward(Some(&mut acts.d_ln), g.attn_w, g.attn_b, &acts.d_qkv, &a.ln1, p.attn_w, n, c, 3 * c);
        k::layernorm_backward(dres, g.ln1_w, g.ln1_b, &acts.d_ln, input, p.ln1_w, &a.ln1_mean, &a.ln1_rstd, n, c);
    }

    /// Adds d wte, d wpe from `acts.dres` (d loss / d resid[0]) into `d_emb`.
    pub fn embed_backward(&self, d_emb: &mut [f32], acts: &Activations) {
        let (dwte, dwpe) = split_embedding_mut(d_emb, &self.cfg);
        k::embedding_backward(dwte, dwpe, &acts.dres, &acts.tokens, acts.b, acts.t, self.cfg.n_embd);
    }

    /// Whole forward, then backward, of one micro-batch on one rank. `params` and `grads`
    /// are the buckets in layout order; gradients are ADDED into `grads`, scaled by
    /// `grad_scale` (e.g. 1 / (B*T*accumulation) for the mean loss). Returns the summed loss.
    pub fn forward_backward(
        &self,
        params: &[Vec<f32>],
        grads: &mut [Vec<f32>],
        acts: &mut Activations,
        tokens: &[u32],
        targets: &[u32],
        grad_scale: f32,
    ) -> f64 {
        let (nl, head) = (self.cfg.n_layer, self.layout.head());
        self.embed_forward(&params[0], acts, tokens);
        for l in 0..nl {
            self.block_forward(l, &params[l + 1], acts);
        }
        let (d_emb, rest) = grads.split_first_mut().expect("layout has buckets");
        let loss = self.head_forward_backward(&params[0], &params[head], d_emb, &mut rest[head - 1], acts, targets, grad_scale);
        for l in (0..nl).rev() {
            self.block_backward(l, &params[l + 1], &mut rest[l], acts);
        }
        self.embed_backward(d_emb, acts);
        loss
    }

    /// Whole forward to the summed loss, no gradients (evaluation).
    pub fn forward_loss(&self, params: &[Vec<f32>], acts: &mut Activations, tokens: &[u32], targets: &[u32]) -> f64 {
        self.forward_hidden(params, acts, tokens);
        self.head_loss(&params[0], &params[self.layout.head()], acts, targets)
    }

    /// Embedding and every block: leaves the last hidden state in `acts.resid[L]`.
    pub fn forward_hidden(&self, params: &[Vec<f32>], acts: &mut Activations, tokens: &[u32]) {
        self.embed_forward(&params[0], acts, tokens);
        for l in 0..self.cfg.n_layer {
            self.block_forward(l, &params[l + 1], acts);
        }
    }
}

/// `(&v[i], &mut v[i + 1])`.
fn split_pair(v: &mut [Vec<f32>], i: usize) -> (&[f32], &mut [f32]) {
    let (a, b) = v.split_at_mut(i + 1);
    (&a[i], &mut b[0])
}

fn block_forward(cfg: &GptConfig, params: &[f32], a: &mut BlockActs, input: &[f32], output: &mut [f32], b: usize, t: usize) {
    let (n, c) = (b * t, cfg.n_embd);
    let p = BlockView::new(params, c, cfg.bias);
    k::layernorm_forward(&mut a.ln1, &mut a.ln1_mean, &mut a.ln1_rstd, input, p.ln1_w, p.ln1_b, n, c);
    k::linear_forward(&mut a.qkv, &a.ln1, p.attn_w, p.attn_b, n, c, 3 * c);
    k::attention_forward(&mut a.att, &mut a.att_saved, &a.qkv, b, t, c, cfg.n_head);
    k::linear_forward(&mut a.res2, &a.att, p.attn_proj_w, p.attn_proj_b, n, c, c);
    k::add_inplace(&mut a.res2, input);
    k::layernorm_forward(&mut a.ln2, &mut a.ln2_mean, &mut a.ln2_rstd, &a.res2, p.ln2_w, p.ln2_b, n, c);
    k::linear_forward(&mut a.fc, &a.ln2, p.fc_w, p.fc_b, n, c, 4 * c);
    k::gelu_forward(&mut a.gelu, &a.fc);
    k::linear_forward(output, &a.gelu, p.fc_proj_w, p.fc_proj_b, n, 4 * c, c);
    k::add_inplace(output, &a.res2);
}

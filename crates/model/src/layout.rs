//! Parameter layout: GPT-2's tensors, named and shaped as in Hugging Face's `GPT2LMHeadModel`,
//! packed into flat buckets (embedding, one per block, head).
//!
//! A bucket is the unit of communication and sharding: one all-reduce / reduce-scatter /
//! all-gather per bucket, and ZeRO shards are contiguous ranges of it (ARCHITECTURE.md,
//! decision 3). Named tensors are views at fixed offsets.

use serde::{Deserialize, Serialize};

/// Shape of a GPT-2 model. `bias = false` drops the biases of every linear layer and
/// LayerNorm (nanoGPT's convention); Hugging Face GPT-2 checkpoints have `bias = true`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GptConfig {
    pub vocab_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub block_size: usize,
    pub bias: bool,
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Hugging Face name, e.g. `transformer.h.0.attn.c_attn.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    /// Offset of the first element inside its bucket.
    pub offset: usize,
    pub kind: TensorKind,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn range(&self) -> std::ops::Range<usize> {
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

/// All buckets of a model: `[embedding, h.0, .., h.{L-1}, head]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub buckets: Vec<BucketSpec>,
}

/// Index of the embedding bucket (wte, wpe).
pub const EMBED: usize = 0;

impl Layout {
    pub fn new(cfg: &GptConfig) -> Layout {
        let c = cfg.n_embd;
        let mut buckets = Vec::with_capacity(cfg.n_layer + 2);
        buckets.push(bucket(
            "embedding",
            &[
                ("transformer.wte.weight", vec![cfg.vocab_size, c], TensorKind::Embedding),
                ("transformer.wpe.weight", vec![cfg.block_size, c], TensorKind::Embedding),
            ],
        ));
        for l in 0..cfg.n_layer {
            let p = format!("transformer.h.{l}.");
            let mut t: Vec<(String, Vec<usize>, TensorKind)> = Vec::new();
            let mut lin = |name: &str, shape: Vec<usize>, kind: TensorKind| {
                if kind == TensorKind::Bias && !cfg.bias {
                    return;
                }
                t.push((format!("{p}{name}"), shape, kind));
            };
            lin("ln_1.weight", vec![c], TensorKind::NormWeight);
            lin("ln_1.bias", vec![c], TensorKind::Bias);
            lin("attn.c_attn.weight", vec![c, 3 * c], TensorKind::Matrix);
            lin("attn.c_attn.bias", vec![3 * c], TensorKind::Bias);
            lin("attn.c_proj.weight", vec![c, c], TensorKind::Matrix);
            lin("attn.c_proj.bias", vec![c], TensorKind::Bias);
            lin("ln_2.weight", vec![c], TensorKind::NormWeight);
            lin("ln_2.bias", vec![c], TensorKind::Bias);
            lin("mlp.c_fc.weight", vec![c, 4 * c], TensorKind::Matrix);
            lin("mlp.c_fc.bias", vec![4 * c], TensorKind::Bias);
            lin("mlp.c_proj.weight", vec![4 * c, c], TensorKind::Matrix);
            lin("mlp.c_proj.bias", vec![c], TensorKind::Bias);
            let refs: Vec<(&str, Vec<usize>, TensorKind)> =
                t.iter().map(|(n, s, k)| (n.as_str(), s.clone(), *k)).collect();
            buckets.push(bucket(&format!("h.{l}"), &refs));
        }
        let mut head = vec![("transformer.ln_f.weight", vec![c], TensorKind::NormWeight)];
        if cfg.bias {
            head.push(("transformer.ln_f.bias", vec![c], TensorKind::Bias));
        }
        buckets.push(bucket("head", &head));
        Layout { buckets }
    }

    /// Index of the head bucket (ln_f).
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
        self.buckets
            .iter()
            .enumerate()
            .flat_map(|(i, b)| b.tensors.iter().map(move |t| (i, t)))
    }

    pub fn find(&self, name: &str) -> Option<(usize, &TensorSpec)> {
        self.tensors().find(|(_, t)| t.name == name)
    }
}

fn bucket(name: &str, tensors: &[(&str, Vec<usize>, TensorKind)]) -> BucketSpec {
    let mut offset = 0;
    let tensors = tensors
        .iter()
        .map(|(n, shape, kind)| {
            let t = TensorSpec { name: n.to_string(), shape: shape.clone(), offset, kind: *kind };
            offset += t.numel();
            t
        })
        .collect();
    BucketSpec { name: name.to_string(), tensors, numel: offset }
}

/// Views of one block's parameters (or gradients) inside its bucket, in layout order.
pub struct BlockView<S> {
    pub ln1_w: S,
    pub ln1_b: Option<S>,
    pub attn_w: S,
    pub attn_b: Option<S>,
    pub attn_proj_w: S,
    pub attn_proj_b: Option<S>,
    pub ln2_w: S,
    pub ln2_b: Option<S>,
    pub fc_w: S,
    pub fc_b: Option<S>,
    pub fc_proj_w: S,
    pub fc_proj_b: Option<S>,
}

macro_rules! carve_block {
    ($buf:expr, $c:expr, $bias:expr, $split:ident) => {{
        let c = $c;
        let rest = $buf;
        let (ln1_w, rest) = rest.$split(c);
        let (ln1_b, rest) = opt(rest, c, $bias, |r, n| r.$split(n));
        let (attn_w, rest) = rest.$split(3 * c * c);
        let (attn_b, rest) = opt(rest, 3 * c, $bias, |r, n| r.$split(n));
        let (attn_proj_w, rest) = rest.$split(c * c);
        let (attn_proj_b, rest) = opt(rest, c, $bias, |r, n| r.$split(n));
        let (ln2_w, rest) = rest.$split(c);
        let (ln2_b, rest) = opt(rest, c, $bias, |r, n| r.$split(n));
        let (fc_w, rest) = rest.$split(4 * c * c);
        let (fc_b, rest) = opt(rest, 4 * c, $bias, |r, n| r.$split(n));
        let (fc_proj_w, rest) = rest.$split(4 * c * c);
        let (fc_proj_b, rest) = opt(rest, c, $bias, |r, n| r.$split(n));
        assert!(rest.is_empty(), "block bucket has {} extra elements", rest.len());
        BlockView {
            ln1_w, ln1_b, attn_w, attn_b, attn_proj_w, attn_proj_b,
            ln2_w, ln2_b, fc_w, fc_b, fc_proj_w, fc_proj_b,
        }
    }};
}

fn opt<S, F: FnOnce(S, usize) -> (S, S)>(rest: S, n: usize, present: bool, split: F) -> (Option<S>, S) {
    if present {
        let (a, b) = split(rest, n);
        (Some(a), b)
    } else {
        (None, rest)
    }
}

impl<'a> BlockView<&'a [f32]> {
    pub fn new(bucket: &'a [f32], c: usize, bias: bool) -> Self {
        carve_block!(bucket, c, bias, split_at)
    }
}

impl<'a> BlockView<&'a mut [f32]> {
    pub fn new_mut(bucket: &'a mut [f32], c: usize, bias: bool) -> Self {
        carve_block!(bucket, c, bias, split_at_mut)
    }
}

/// `(wte, wpe)` views of the embedding bucket.
pub fn split_embedding<'a>(bucket: &'a [f32], cfg: &GptConfig) -> (&'a [f32], &'a [f32]) {
    bucket.split_at(cfg.vocab_size * cfg.n_embd)
}

pub fn split_embedding_mut<'a>(bucket: &'a mut [f32], cfg: &GptConfig) -> (&'a mut [f32], &'a mut [f32]) {
    bucket.split_at_mut(cfg.vocab_size * cfg.n_embd)
}

/// `(ln_f.weight, ln_f.bias)` views of the head bucket.
pub fn split_head<'a>(bucket: &'a [f32], cfg: &GptConfig) -> (&'a [f32], Option<&'a [f32]>) {
    let (w, b) = bucket.split_at(cfg.n_embd);
    (w, cfg.bias.then_some(b))
}

pub fn split_head_mut<'a>(bucket: &'a mut [f32], cfg: &GptConfig) -> (&'a mut [f32], Option<&'a mut [f32]>) {
    let (w, b) = bucket.split_at_mut(cfg.n_embd);
    (w, cfg.bias.then_some(b))
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
        let buf = vec![0.0f32; layout.buckets[1].numel];
        let v = BlockView::new(&buf, cfg.n_embd, cfg.bias);
        assert!(v.ln1_b.is_none() && v.fc_proj_b.is_none());
        assert_eq!(v.fc_proj_w.len(), 4 * 768 * 768);
        assert_eq!(layout.buckets[1].numel, 12 * 768 * 768 + 2 * 768);
    }
}

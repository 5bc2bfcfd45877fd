//! One description of a decoder-only transformer: [`ModelSpec`].
//!
//! Everything that needs a model's shape reads it from here: the engine (which tensors
//! to allocate, see [`crate::tensors`]), the config (presets name a catalog entry), and
//! the planner (parameter counts, FLOPs, memory). The counts are exact: for every
//! engine preset the planner's parameter count equals what the engine allocates
//! (a test in the hyperion crate checks it).
//!
//! ```
//! let m = model::spec::get("llama3-8b").unwrap();
//! assert_eq!(m.num_params(), 8_030_261_248); // Hugging Face's count for Meta-Llama-3-8B
//! assert_eq!(model::spec::get("gpt2").unwrap().num_params(), 124_439_808);
//! ```

use serde::{Deserialize, Serialize};

/// Architecture family: decides tensor names (Hugging Face keys) and layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// GPT-2 (Radford et al. 2019): `transformer.h.{i}.*`, Conv1D `(in, out)` weights.
    Gpt2,
    /// Llama (Touvron et al. 2023): `model.layers.{i}.*`, nn.Linear `(out, in)` weights.
    Llama,
}

/// Normalisation (the eps is [`ModelSpec::norm_eps`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// Ba et al. 2016; carries a bias when [`ModelSpec::bias`].
    LayerNorm,
    /// Zhang & Sennrich 2019; weight only.
    RmsNorm,
}

/// Feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mlp {
    /// `fc (h -> f)`, GELU (tanh approximation, GPT-2's `gelu_new`), `proj (f -> h)`.
    Gelu,
    /// Gate and up `(h -> f)`, `silu(gate) * up`, down `(f -> h)` (Shazeer 2020).
    SwiGlu,
}

/// Position information.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Positions {
    /// Learned absolute position embeddings (GPT-2/3).
    Learned,
    /// Rotary embeddings (Su et al. 2021), Hugging Face's `rotate_half` layout.
    Rope { theta: f64 },
    /// ALiBi (Press et al. 2022): no parameters. Planned, not trained by the engine.
    Alibi,
}

/// A model's shape. `seq` is the context length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    pub family: Family,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    /// Key/value heads (`= heads` without grouped-query attention); divides `heads`.
    pub kv_heads: usize,
    /// Width of one attention head (usually `hidden / heads`).
    pub head_dim: usize,
    /// Feed-forward width `f`.
    pub ffn: usize,
    pub vocab: usize,
    pub seq: usize,
    pub norm: Norm,
    pub norm_eps: f64,
    pub mlp: Mlp,
    pub positions: Positions,
    /// Linear layers (and LayerNorms) carry biases.
    pub bias: bool,
    /// The output head shares the token embedding.
    pub tied: bool,
    pub source: String,
}

impl ModelSpec {
    /// A GPT-2/3 style model (`f = 4h`, GELU, LayerNorm, biases, learned positions, tied).
    pub fn gpt(name: &str, layers: usize, hidden: usize, heads: usize, vocab: usize, seq: usize, source: &str) -> ModelSpec {
        ModelSpec {
            name: name.to_string(),
            family: Family::Gpt2,
            layers,
            hidden,
            heads,
            kv_heads: heads,
            head_dim: hidden / heads.max(1),
            ffn: 4 * hidden,
            vocab,
            seq,
            norm: Norm::LayerNorm,
            norm_eps: 1e-5,
            mlp: Mlp::Gelu,
            positions: Positions::Learned,
            bias: true,
            tied: true,
            source: source.to_string(),
        }
    }

    /// A Llama style model (GQA, SwiGLU, RMSNorm, RoPE theta 10000, no biases, untied head).
    #[allow(clippy::too_many_arguments)]
    pub fn llama(
        name: &str,
        layers: usize,
        hidden: usize,
        heads: usize,
        kv_heads: usize,
        ffn: usize,
        vocab: usize,
        seq: usize,
        source: &str,
    ) -> ModelSpec {
        ModelSpec {
            name: name.to_string(),
            family: Family::Llama,
            layers,
            hidden,
            heads,
            kv_heads,
            head_dim: hidden / heads.max(1),
            ffn,
            vocab,
            seq,
            norm: Norm::RmsNorm,
            norm_eps: 1e-5,
            mlp: Mlp::SwiGlu,
            positions: Positions::Rope { theta: 10_000.0 },
            bias: false,
            tied: false,
            source: source.to_string(),
        }
    }

    /// Width of the query projection: `heads * head_dim`.
    pub fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of the key (= value) projection: `kv_heads * head_dim`.
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Matrices of the MLP: 2 (GELU) or 3 (SwiGLU).
    pub fn mlp_matrices(&self) -> usize {
        match self.mlp {
            Mlp::Gelu => 2,
            Mlp::SwiGlu => 3,
        }
    }

    /// Parameters of one norm.
    pub fn norm_params(&self) -> usize {
        match self.norm {
            Norm::LayerNorm if self.bias => 2 * self.hidden,
            _ => self.hidden,
        }
    }

    /// Weights of the matrices of one block (no biases, no norms): attention
    /// `h (q + 2 kv) + q h`, MLP `2 h f` (GELU) or `3 h f` (SwiGLU).
    /// GPT (f = 4h, no GQA): `12 h^2`, the leading term of Megatron-LM 2021 eq. 2.
    pub fn block_matrix_params(&self) -> usize {
        let (h, q, kv) = (self.hidden, self.q_width(), self.kv_width());
        h * (q + 2 * kv) + q * h + self.mlp_matrices() * h * self.ffn
    }

    /// Biases of one block (0 without biases).
    pub fn block_bias_params(&self) -> usize {
        if !self.bias {
            return 0;
        }
        (self.q_width() + 2 * self.kv_width()) + self.hidden + (self.mlp_matrices() - 1) * self.ffn + self.hidden
    }

    /// All parameters of one block: matrices, biases, two norms.
    pub fn block_params_exact(&self) -> usize {
        self.block_matrix_params() + self.block_bias_params() + 2 * self.norm_params()
    }

    /// Embedding parameters: tokens (and learned positions).
    pub fn embedding_params_exact(&self) -> usize {
        let pos = if self.positions == Positions::Learned { self.seq * self.hidden } else { 0 };
        self.vocab * self.hidden + pos
    }

    /// Final norm plus the output head (0 when tied).
    pub fn head_params_exact(&self) -> usize {
        self.norm_params() + if self.tied { 0 } else { self.vocab * self.hidden }
    }

    /// Every parameter the engine allocates (a tied head counted once).
    pub fn num_params(&self) -> usize {
        self.layers * self.block_params_exact() + self.embedding_params_exact() + self.head_params_exact()
    }

    // f64 forms for the planner's formulas (1e12-parameter models overflow nothing, but
    // the planner's arithmetic is in f64 throughout).

    pub fn block_matmul_params(&self) -> f64 {
        self.block_matrix_params() as f64
    }
    pub fn block_params(&self) -> f64 {
        self.block_params_exact() as f64
    }
    pub fn embedding_params(&self) -> f64 {
        self.embedding_params_exact() as f64
    }
    pub fn head_params(&self) -> f64 {
        self.head_params_exact() as f64
    }
    /// Total parameters. For GPT shapes this is Megatron-LM 2021 eq. 2,
    /// `12 l h^2 (1 + 13/(12h) + (V+s)/(12 l h))`, plus the final LayerNorm.
    pub fn params(&self) -> f64 {
        self.num_params() as f64
    }

    /// Parameters outside the embeddings and the output head (PaLM's `N` in
    /// `6N + 12 L H Q T`).
    pub fn non_embedding_params(&self) -> f64 {
        let head = if self.tied { 0 } else { self.vocab * self.hidden };
        (self.num_params() - self.embedding_params_exact() - head) as f64
    }

    /// Forward FLOPs of one block for `tokens` tokens in sequences of length `s`:
    /// `2 tokens P_matrix + 4 tokens s q` (QK^T and PV over the full square, as
    /// Megatron-LM counts them; `24 b s h^2 + 4 b s^2 h` for GPT).
    pub fn block_fwd_flops(&self, tokens: f64, s: f64) -> f64 {
        2.0 * tokens * self.block_matmul_params() + 4.0 * tokens * s * self.q_width() as f64
    }

    /// Forward FLOPs of the output logits: `2 tokens h V`.
    pub fn logits_fwd_flops(&self, tokens: f64) -> f64 {
        2.0 * tokens * self.hidden as f64 * self.vocab as f64
    }

    /// Model FLOPs per trained token (forward + backward = 3 forwards, no recompute) at
    /// sequence length `s`: `6 (L P_matrix + h V) + 12 L q s` (Korthikanti et al. 2022
    /// eq. 7 per token; PaLM appendix B with the head's matmul counted). The engine's
    /// MFU and the planner's model-FLOP convention both use this.
    pub fn flops_per_token(&self, s: usize) -> f64 {
        3.0 * (self.layers as f64 * self.block_fwd_flops(1.0, s as f64) + self.logits_fwd_flops(1.0))
    }

    /// Rows `[start, end)` of the vocabulary that tensor-parallel rank `rank` of `tp`
    /// holds: consecutive parts of `ceil(vocab / tp)` rows (the last may be shorter).
    pub fn vocab_part(&self, tp: usize, rank: usize) -> std::ops::Range<usize> {
        let per = self.vocab.div_ceil(tp.max(1));
        let start = (rank * per).min(self.vocab);
        start..(start + per).min(self.vocab)
    }

    /// The part of this model that rank `rank` of `tp` tensor-parallel ranks computes
    /// (Megatron-LM, Shoeybi et al. 2019): its heads, key/value heads and MLP width
    /// divided by `tp`, its rows of the vocabulary ([`ModelSpec::vocab_part`]); the
    /// hidden size stays whole. An error names what `tp` does not divide.
    pub fn tp_local(&self, tp: usize, rank: usize) -> Result<ModelSpec, String> {
        if tp == 0 || rank >= tp {
            return Err(format!("tensor-parallel rank {rank} of {tp} does not exist"));
        }
        for (what, n) in [("attention heads", self.heads), ("key/value heads", self.kv_heads), ("the MLP width", self.ffn)] {
            if !n.is_multiple_of(tp) {
                return Err(format!("parallel.tp = {tp} must divide {what} ({n}) of {}", self.name));
            }
        }
        let vocab = self.vocab_part(tp, rank).len();
        if vocab == 0 {
            return Err(format!("parallel.tp = {tp} leaves rank {rank} no rows of the {}-token vocabulary", self.vocab));
        }
        Ok(ModelSpec { heads: self.heads / tp, kv_heads: self.kv_heads / tp, ffn: self.ffn / tp, vocab, ..self.clone() })
    }

    /// Checks what the engine needs of a shape; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let pos = |v: usize, what: &str| if v == 0 { Err(format!("{what} must be at least 1")) } else { Ok(()) };
        pos(self.layers, "layers")?;
        pos(self.hidden, "hidden")?;
        pos(self.heads, "heads")?;
        pos(self.kv_heads, "kv_heads")?;
        pos(self.head_dim, "head_dim")?;
        pos(self.ffn, "ffn")?;
        pos(self.vocab, "vocab")?;
        pos(self.seq, "seq")?;
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!("kv_heads = {} must divide heads = {}", self.kv_heads, self.heads));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return Err(format!("norm_eps = {} must be a positive number", self.norm_eps));
        }
        match self.positions {
            Positions::Rope { theta } => {
                if !(theta > 1.0 && theta.is_finite()) {
                    return Err(format!("rope_theta = {theta} must be a finite number above 1"));
                }
                if !self.head_dim.is_multiple_of(2) {
                    return Err(format!("head_dim = {} must be even for rotary embeddings", self.head_dim));
                }
            }
            Positions::Alibi => return Err("ALiBi positions are not implemented by the engine (planner only)".into()),
            Positions::Learned => {}
        }
        Ok(())
    }
}

const GPT3: &str = "Brown et al. 2020, GPT-3, Table 2.1 (vocab 50257, n_ctx 2048)";
const GPT2: &str = "Radford et al. 2019 / Hugging Face gpt2 configs (vocab 50257, n_ctx 1024)";
const MEG21: &str = "Narayanan et al. 2021 (Megatron-LM, SC21) Table 1 (vocab 51200, seq 2048)";
const PRESET: &str = "hyperion preset";

/// The catalog: the engine's presets' shapes and published models (names are lowercase).
/// Char-level presets carry nanoGPT's tiny-shakespeare vocabulary (65) for planning; the
/// engine takes the vocabulary from the prepared data (84 characters for the shipped corpus).
pub fn catalog() -> Vec<ModelSpec> {
    let nobias = |m: ModelSpec| ModelSpec { bias: false, ..m };
    let mut m = vec![
        nobias(ModelSpec::gpt("shakespeare-char", 6, 384, 6, 65, 256, "hyperion preset (nanoGPT shakespeare_char)")),
        nobias(ModelSpec::gpt("shakespeare-char-cpu", 4, 128, 4, 65, 64, "hyperion preset (CPU-sized)")),
        ModelSpec::gpt("gpt2-mini", 4, 256, 4, 50257, 128, PRESET),
        ModelSpec::gpt("tiny", 2, 32, 2, 65, 16, "hyperion preset (tests)"),
        ModelSpec::gpt("gpt2", 12, 768, 12, 50257, 1024, GPT2),
        ModelSpec::gpt("gpt2-medium", 24, 1024, 16, 50257, 1024, GPT2),
        ModelSpec::gpt("gpt2-large", 36, 1280, 20, 50257, 1024, GPT2),
        ModelSpec::gpt("gpt2-xl", 48, 1600, 25, 50257, 1024, GPT2),
        ModelSpec::gpt("gpt3-125m", 12, 768, 12, 50257, 2048, GPT3),
        ModelSpec::gpt("gpt3-350m", 24, 1024, 16, 50257, 2048, GPT3),
        ModelSpec::gpt("gpt3-760m", 24, 1536, 16, 50257, 2048, GPT3),
        // Table 2.1 prints 24 heads of d_head 128 for d_model 2048 (24 x 128 != 2048);
        // modelled as 16 heads of 128 so that q/k/v are d_model wide, as in the paper's
        // parameter count (and GPT-Neo 1.3B).
        ModelSpec::gpt("gpt3-1.3b", 24, 2048, 16, 50257, 2048, GPT3),
        ModelSpec::gpt("gpt3-2.7b", 32, 2560, 32, 50257, 2048, GPT3),
        ModelSpec::gpt("gpt3-6.7b", 32, 4096, 32, 50257, 2048, GPT3),
        // Table 2.1 prints d_model = 5140 for 13B (40 heads of 128 would be 5120); kept as printed.
        ModelSpec { head_dim: 128, ..ModelSpec::gpt("gpt3-13b", 40, 5140, 40, 50257, 2048, GPT3) },
        ModelSpec::gpt("gpt3-175b", 96, 12288, 96, 50257, 2048, GPT3),
        ModelSpec::gpt("megatron-1.7b", 24, 2304, 24, 51200, 2048, MEG21),
        ModelSpec::gpt("megatron-3.6b", 30, 3072, 32, 51200, 2048, MEG21),
        ModelSpec::gpt("megatron-7.5b", 36, 4096, 32, 51200, 2048, MEG21),
        ModelSpec::gpt("megatron-18.4b", 40, 6144, 48, 51200, 2048, MEG21),
        ModelSpec::gpt("megatron-39.1b", 48, 8192, 64, 51200, 2048, MEG21),
        ModelSpec::gpt("megatron-76.1b", 60, 10240, 80, 51200, 2048, MEG21),
        ModelSpec::gpt("megatron-145.6b", 80, 12288, 96, 51200, 2048, MEG21),
        ModelSpec::gpt("megatron-310.1b", 96, 16384, 128, 51200, 2048, MEG21),
        ModelSpec::gpt("megatron-529.6b", 105, 20480, 128, 51200, 2048, MEG21),
        ModelSpec::gpt("megatron-1t", 128, 25600, 160, 51200, 2048, MEG21),
        ModelSpec::gpt("mt-nlg-530b", 105, 20480, 128, 50257, 2048, "Smith et al. 2022, MT-NLG §3 (GPT-2 BPE vocab)"),
        ModelSpec {
            positions: Positions::Alibi,
            ..ModelSpec::gpt("bloom-176b", 70, 14336, 112, 250880, 2048, "BigScience 2022, BLOOM: 70 layers, 14336 wide, 112 heads, ALiBi, vocab 250880 (padded)")
        },
        ModelSpec::llama("llama2-7b", 32, 4096, 32, 32, 11008, 32000, 4096, "Touvron et al. 2023, Llama 2 / HF config"),
        ModelSpec::llama("llama2-13b", 40, 5120, 40, 40, 13824, 32000, 4096, "Touvron et al. 2023, Llama 2 / HF config"),
        ModelSpec::llama("llama2-70b", 80, 8192, 64, 8, 28672, 32000, 4096, "Touvron et al. 2023, Llama 2 / HF config (GQA 8)"),
        llama3(ModelSpec::llama("llama3-8b", 32, 4096, 32, 8, 14336, 128256, 8192, "Llama 3 herd (Dubey et al. 2024) Table 3 / HF config")),
        llama3(ModelSpec::llama("llama3-70b", 80, 8192, 64, 8, 28672, 128256, 8192, "Llama 3 herd (Dubey et al. 2024) Table 3 / HF config")),
        // seq = 8192: the pre-training length (the 128K context comes from a later
        // long-context stage with scaled RoPE, which the engine does not implement).
        llama3(ModelSpec::llama("llama3.1-405b", 126, 16384, 128, 8, 53248, 128256, 8192, "Llama 3 herd (Dubey et al. 2024) Table 3 / HF config of Llama-3.1-405B (rope_scaling not modelled)")),
        // LLaMA 1 (Touvron et al. 2023a, Table 2): multi-head attention, SwiGLU at 8/3 d
        // rounded to 256, 2048 context. After Llama 2/3, which share its shapes: a name
        // that says "Llama 2" or "Llama 3" finds those first.
        ModelSpec::llama("llama-7b", 32, 4096, 32, 32, 11008, 32000, 2048, "Touvron et al. 2023a, LLaMA Table 2 / HF config"),
        ModelSpec::llama("llama-13b", 40, 5120, 40, 40, 13824, 32000, 2048, "Touvron et al. 2023a, LLaMA Table 2 / HF config"),
        ModelSpec::llama("llama-33b", 60, 6656, 52, 52, 17920, 32000, 2048, "Touvron et al. 2023a, LLaMA Table 2 / HF config"),
        ModelSpec::llama("llama-65b", 80, 8192, 64, 64, 22016, 32000, 2048, "Touvron et al. 2023a, LLaMA Table 2 / HF config"),
        // Llama presets of the engine: the GPT presets' sizes with Llama's blocks. GQA with
        // 2 key/value heads; SwiGLU width chosen so a block has a GPT block's parameters.
        ModelSpec::llama("llama-char-cpu", 4, 128, 4, 2, 384, 65, 64, "hyperion preset (shakespeare-char-cpu's size, Llama blocks)"),
        ModelSpec::llama("llama-mini", 4, 256, 4, 2, 768, 50257, 128, "hyperion preset (gpt2-mini's blocks, Llama style, untied head)"),
        ModelSpec::llama("tinyllama-1.1b", 22, 2048, 32, 4, 5632, 32000, 2048, "Zhang et al. 2024, TinyLlama 1.1B / HF config"),
    ];
    // Short aliases for the README questions and earlier names.
    for (alias, of) in [("gpt3", "gpt3-175b"), ("llama3-405b", "llama3.1-405b")] {
        if let Some(x) = m.iter().find(|x| x.name == of).cloned() {
            m.push(ModelSpec { name: alias.to_string(), ..x });
        }
    }
    m
}

/// Llama 3's RoPE theta (500000) and RMSNorm eps (1e-5), from the HF configs.
fn llama3(m: ModelSpec) -> ModelSpec {
    ModelSpec { positions: Positions::Rope { theta: 500_000.0 }, ..m }
}

/// Looks a model up by name (case-insensitive; spaces and `_` read as `-`).
pub fn get(name: &str) -> Option<ModelSpec> {
    let key = normalize(name);
    catalog().into_iter().find(|m| normalize(&m.name) == key)
}

/// Every catalog name, comma-separated (for error messages).
pub fn names() -> String {
    catalog().iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// Lowercase, with spaces and underscores turned to `-`.
pub fn normalize(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace([' ', '_'], "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_parameter_counts() {
        // Hugging Face model cards / `sum(p.numel())` of the released checkpoints.
        for (name, want) in [
            ("gpt2", 124_439_808usize),
            ("gpt2-xl", 1_557_611_200),
            ("llama2-7b", 6_738_415_616),
            ("llama3-8b", 8_030_261_248),
            ("llama3-70b", 70_553_706_496),
            ("tinyllama-1.1b", 1_100_048_384),
            // LLaMA 1 7B has Llama 2 7B's shape and size (its context is 2048).
            ("llama-7b", 6_738_415_616),
        ] {
            assert_eq!(get(name).unwrap().num_params(), want, "{name}");
        }
        // 405B: 405,853,388,800 per the HF safetensors index (total_size / 2 bytes).
        assert_eq!(get("llama3.1-405b").unwrap().num_params(), 405_853_388_800);
    }

    #[test]
    fn presets_have_the_sizes_they_claim() {
        let g = get("shakespeare-char-cpu").unwrap();
        let l = get("llama-char-cpu").unwrap();
        assert_eq!(g.block_matrix_params(), l.block_matrix_params());
        assert_eq!(get("gpt2-mini").unwrap().block_matrix_params(), get("llama-mini").unwrap().block_matrix_params());
        for m in catalog() {
            if m.positions != Positions::Alibi {
                m.validate().unwrap_or_else(|e| panic!("{}: {e}", m.name));
            }
        }
    }

    #[test]
    fn flops_per_token_is_6n_plus_attention_for_gpt() {
        let m = get("gpt2").unwrap();
        let n = (m.block_matrix_params() * m.layers + m.vocab * m.hidden) as f64;
        let want = 6.0 * n + 12.0 * (m.layers * m.hidden * 1024) as f64;
        assert!((m.flops_per_token(1024) - want).abs() < 1.0);
    }

    #[test]
    fn validate_names_the_field() {
        let mut m = get("llama-mini").unwrap();
        m.kv_heads = 3;
        assert!(m.validate().unwrap_err().contains("kv_heads = 3"));
        m.kv_heads = 2;
        m.head_dim = 63;
        assert!(m.validate().unwrap_err().contains("head_dim"));
    }
}

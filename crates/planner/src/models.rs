//! Model catalog: decoder-only transformer shapes, with their sources, and exact
//! parameter counts.

use crate::error::PlanError;
use serde::Serialize;

/// Feed-forward block kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mlp {
    /// `fc1 (h -> f)`, GELU, `fc2 (f -> h)`: 2 matrices.
    Gelu,
    /// Gate and up `(h -> f)`, SiLU product, down `(f -> h)`: 3 matrices (Shazeer 2020).
    SwiGlu,
}

/// Normalisation kind (LayerNorm has a bias, RMSNorm does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    LayerNorm,
    RmsNorm,
}

/// A model's shape. `seq` is the training context length.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSpec {
    pub name: String,
    pub layers: u64,
    pub hidden: u64,
    pub heads: u64,
    /// Key/value heads (= `heads` without grouped-query attention).
    pub kv_heads: u64,
    /// Feed-forward width `f`.
    pub ffn: u64,
    pub vocab: u64,
    pub seq: u64,
    pub mlp: Mlp,
    pub norm: Norm,
    /// Linear layers carry biases (GPT-2/3, BLOOM) or not (Llama, nanoGPT presets).
    pub bias: bool,
    /// Learned absolute position embeddings (GPT-2/3) instead of rotary/ALiBi.
    pub learned_pos: bool,
    /// Output head shares the token embedding.
    pub tied: bool,
    pub source: String,
}

impl ModelSpec {
    /// A GPT-2/3 style model (`f = 4h`, GELU, LayerNorm, biases, learned positions, tied).
    pub fn gpt(
        name: &str,
        layers: u64,
        hidden: u64,
        heads: u64,
        vocab: u64,
        seq: u64,
        source: &str,
    ) -> ModelSpec {
        ModelSpec {
            name: name.to_string(),
            layers,
            hidden,
            heads,
            kv_heads: heads,
            ffn: 4 * hidden,
            vocab,
            seq,
            mlp: Mlp::Gelu,
            norm: Norm::LayerNorm,
            bias: true,
            learned_pos: true,
            tied: true,
            source: source.to_string(),
        }
    }

    /// A Llama style model (GQA, SwiGLU, RMSNorm, rotary, no biases, untied head).
    #[allow(clippy::too_many_arguments)]
    pub fn llama(
        name: &str,
        layers: u64,
        hidden: u64,
        heads: u64,
        kv_heads: u64,
        ffn: u64,
        vocab: u64,
        seq: u64,
        source: &str,
    ) -> ModelSpec {
        ModelSpec {
            name: name.to_string(),
            layers,
            hidden,
            heads,
            kv_heads,
            ffn,
            vocab,
            seq,
            mlp: Mlp::SwiGlu,
            norm: Norm::RmsNorm,
            bias: false,
            learned_pos: false,
            tied: false,
            source: source.to_string(),
        }
    }

    /// Head dimension `d = h / a`.
    pub fn head_dim(&self) -> f64 {
        self.hidden as f64 / self.heads as f64
    }

    /// Width of the key (= value) projection: `kv_heads * d`.
    pub fn kv_width(&self) -> f64 {
        self.kv_heads as f64 * self.head_dim()
    }

    /// Weights of the matrices of one block (no biases, no norms): attention
    /// `h (h + 2 kv d) + h h`, MLP `2 h f` (GELU) or `3 h f` (SwiGLU).
    /// GPT (f = 4h, no GQA): `12 h^2`, the leading term of Megatron's eq. 2.
    pub fn block_matmul_params(&self) -> f64 {
        let h = self.hidden as f64;
        let attn = h * (h + 2.0 * self.kv_width()) + h * h;
        let mats = match self.mlp {
            Mlp::Gelu => 2.0,
            Mlp::SwiGlu => 3.0,
        };
        attn + mats * h * self.ffn as f64
    }

    /// All parameters of one block, biases and norms included.
    pub fn block_params(&self) -> f64 {
        let h = self.hidden as f64;
        let bias = if self.bias {
            h + 2.0 * self.kv_width() + h + self.ffn as f64 + h
        } else {
            0.0
        };
        let norms = match self.norm {
            Norm::LayerNorm => 4.0 * h,
            Norm::RmsNorm => 2.0 * h,
        };
        self.block_matmul_params() + bias + norms
    }

    /// Embedding parameters: tokens (and learned positions).
    pub fn embedding_params(&self) -> f64 {
        let h = self.hidden as f64;
        let pos = if self.learned_pos {
            self.seq as f64 * h
        } else {
            0.0
        };
        self.vocab as f64 * h + pos
    }

    /// Output head parameters (0 when tied) plus the final norm.
    pub fn head_params(&self) -> f64 {
        let h = self.hidden as f64;
        let norm = match self.norm {
            Norm::LayerNorm => 2.0 * h,
            Norm::RmsNorm => h,
        };
        norm + if self.tied {
            0.0
        } else {
            self.vocab as f64 * h
        }
    }

    /// Total parameters. For GPT shapes this is Megatron-LM 2021 eq. 2,
    /// `12 l h^2 (1 + 13/(12h) + (V+s)/(12 l h))`.
    pub fn params(&self) -> f64 {
        self.layers as f64 * self.block_params() + self.embedding_params() + self.head_params()
    }

    /// Parameters outside the embeddings (PaLM's `N` in `6N + 12 L H Q T`).
    pub fn non_embedding_params(&self) -> f64 {
        self.params()
            - self.embedding_params()
            - if self.tied {
                0.0
            } else {
                self.vocab as f64 * self.hidden as f64
            }
    }
}

const GPT3: &str = "Brown et al. 2020, GPT-3, Table 2.1 (vocab 50257, n_ctx 2048)";
const GPT2: &str = "Radford et al. 2019 / Hugging Face gpt2 configs (vocab 50257, n_ctx 1024)";
const MEG21: &str = "Narayanan et al. 2021 (Megatron-LM, SC21) Table 1 (vocab 51200, seq 2048)";

/// The model catalog (names are lowercase).
pub fn catalog() -> Vec<ModelSpec> {
    let mut m = vec![
        // Engine presets (mirrored from the config crate's presets; see crate docs).
        ModelSpec { bias: false, ..ModelSpec::gpt("shakespeare-char", 6, 384, 6, 65, 256, "hyperion preset (nanoGPT shakespeare_char)") },
        ModelSpec { bias: false, ..ModelSpec::gpt("shakespeare-char-cpu", 4, 128, 4, 65, 64, "hyperion preset (CPU-sized)") },
        ModelSpec::gpt("gpt2-mini", 4, 256, 4, 50257, 128, "hyperion preset"),
        ModelSpec::gpt("gpt2", 12, 768, 12, 50257, 1024, GPT2),
        ModelSpec::gpt("gpt2-medium", 24, 1024, 16, 50257, 1024, GPT2),
        ModelSpec::gpt("gpt2-large", 36, 1280, 20, 50257, 1024, GPT2),
        ModelSpec::gpt("gpt2-xl", 48, 1600, 25, 50257, 1024, GPT2),
        ModelSpec::gpt("gpt3-125m", 12, 768, 12, 50257, 2048, GPT3),
        ModelSpec::gpt("gpt3-350m", 24, 1024, 16, 50257, 2048, GPT3),
        ModelSpec::gpt("gpt3-760m", 24, 1536, 16, 50257, 2048, GPT3),
        ModelSpec::gpt("gpt3-1.3b", 24, 2048, 24, 50257, 2048, GPT3),
        ModelSpec::gpt("gpt3-2.7b", 32, 2560, 32, 50257, 2048, GPT3),
        ModelSpec::gpt("gpt3-6.7b", 32, 4096, 32, 50257, 2048, GPT3),
        // Table 2.1 prints d_model = 5140 for 13B (40 heads of 128 would be 5120); kept as printed.
        ModelSpec::gpt("gpt3-13b", 40, 5140, 40, 50257, 2048, GPT3),
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
        ModelSpec { learned_pos: false, tied: true, ..ModelSpec::gpt("bloom-176b", 70, 14336, 112, 250880, 2048, "BigScience 2022, BLOOM: 70 layers, 14336 wide, 112 heads, ALiBi, vocab 250880 (padded)") },
        ModelSpec::llama("llama2-7b", 32, 4096, 32, 32, 11008, 32000, 4096, "Touvron et al. 2023, Llama 2 / HF config"),
        ModelSpec::llama("llama2-13b", 40, 5120, 40, 40, 13824, 32000, 4096, "Touvron et al. 2023, Llama 2 / HF config"),
        ModelSpec::llama("llama2-70b", 80, 8192, 64, 8, 28672, 32000, 4096, "Touvron et al. 2023, Llama 2 / HF config (GQA 8)"),
        ModelSpec::llama("llama3-8b", 32, 4096, 32, 8, 14336, 128256, 8192, "Llama 3 herd (Dubey et al. 2024) Table 3 / HF config"),
        ModelSpec::llama("llama3-70b", 80, 8192, 64, 8, 28672, 128256, 8192, "Llama 3 herd (Dubey et al. 2024) Table 3 / HF config"),
        ModelSpec::llama("llama3-405b", 126, 16384, 128, 8, 53248, 128256, 8192, "Llama 3 herd (Dubey et al. 2024) Table 3 / HF config"),
    ];
    // Short aliases for the README questions.
    let mut alias = m
        .iter()
        .find(|x| x.name == "gpt3-175b")
        .cloned()
        .into_iter()
        .collect::<Vec<_>>();
    for a in alias.iter_mut() {
        a.name = "gpt3".to_string();
    }
    m.extend(alias);
    m
}

/// Look up a model by name (case-insensitive; `.` and `_` are accepted for `-`).
pub fn model(name: &str) -> Result<ModelSpec, PlanError> {
    let key = normalize(name);
    let all = catalog();
    all.iter()
        .find(|m| normalize(&m.name) == key)
        .cloned()
        .ok_or_else(|| PlanError::UnknownName {
            kind: "model",
            name: name.to_string(),
            valid: all
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Lowercase, with spaces and underscores turned to `-`.
pub fn normalize(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace([' ', '_'], "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn megatron_eq2_parameter_counts_match_table_1() {
        // Table 1 prints 1.7, 7.5, 145.6, 529.6 and 1008.0 billion parameters (1.7 is
        // 1.65 rounded).
        for (name, want) in [
            ("megatron-1.7b", 1.7),
            ("megatron-7.5b", 7.5),
            ("megatron-145.6b", 145.6),
            ("megatron-529.6b", 529.6),
            ("megatron-1t", 1008.0),
        ] {
            let p = model(name).unwrap().params() / 1e9;
            assert!((p - want).abs() / want < 0.03, "{name}: {p}");
        }
        // eq. 2 literally: P = 12 l h^2 (1 + 13/(12h) + (V+s)/(12 l h)).
        let m = model("megatron-1t").unwrap();
        let (l, h, v, s) = (128.0, 25600.0, 51200.0, 2048.0);
        let eq2 = 12.0 * l * h * h * (1.0 + 13.0 / (12.0 * h) + (v + s) / (12.0 * l * h));
        // Equal up to the final LayerNorm (2h), which eq. 2 leaves out.
        assert!(
            (m.params() - eq2 - 2.0 * h).abs() < 1.0,
            "{} vs {eq2}",
            m.params()
        );
    }

    #[test]
    fn published_sizes_of_other_families() {
        for (name, want) in [
            ("gpt2", 0.124),
            ("gpt2-xl", 1.558),
            ("gpt3-175b", 174.6),
            ("llama2-7b", 6.74),
            ("llama2-70b", 68.98),
            ("llama3-8b", 8.03),
            ("llama3-70b", 70.55),
            ("llama3-405b", 405.8),
            ("bloom-176b", 176.2),
        ] {
            let p = model(name).unwrap().params() / 1e9;
            assert!((p - want).abs() / want < 0.01, "{name}: {p} vs {want}");
        }
        assert!(model("GPT3_175B").is_ok());
        let e = model("gpt5").unwrap_err().to_string();
        assert!(
            e.contains("llama3-405b") && e.contains("shakespeare-char"),
            "{e}"
        );
    }
}

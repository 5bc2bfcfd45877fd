//! Model catalog: the model crate's [`model::spec`] (one description of a shape for
//! the engine, the config and the planner), with the planner's error on unknown names.

use crate::error::PlanError;
pub use model::spec::{catalog, normalize, Family, Mlp, ModelSpec, Norm, Positions};

/// Look up a model by name (case-insensitive; spaces and `_` are accepted for `-`).
pub fn model(name: &str) -> Result<ModelSpec, PlanError> {
    ::model::spec::get(name).ok_or_else(|| PlanError::UnknownName {
        kind: "model",
        name: name.to_string(),
        valid: ::model::spec::names(),
    })
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
            ("llama3.1-405b", 405.8),
            ("llama3-405b", 405.8),
            ("tinyllama-1.1b", 1.10),
            ("bloom-176b", 176.2),
        ] {
            let p = model(name).unwrap().params() / 1e9;
            assert!((p - want).abs() / want < 0.01, "{name}: {p} vs {want}");
        }
        assert!(model("GPT3_175B").is_ok());
        assert_eq!(
            model("Llama3-405B").unwrap(),
            ModelSpec {
                name: "llama3-405b".to_string(),
                ..model("llama3.1-405b").unwrap()
            }
        );
        let e = model("gpt5").unwrap_err().to_string();
        assert!(
            e.contains("unknown model `gpt5`")
                && e.contains("llama3.1-405b")
                && e.contains("llama3-405b")
                && e.contains("shakespeare-char"),
            "{e}"
        );
    }

    #[test]
    fn params_is_the_exact_count_for_every_entry() {
        for m in catalog() {
            assert_eq!(m.params(), m.num_params() as f64, "{}", m.name);
            let split = m.layers as f64 * m.block_params() + m.embedding_params() + m.head_params();
            assert_eq!(split, m.params(), "{}", m.name);
        }
    }
}

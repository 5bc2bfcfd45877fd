//! Hugging Face `config.json` <-> [`ModelSpec`], for `GPT2LMHeadModel` and
//! `LlamaForCausalLM`.
//!
//! Export writes every field `transformers` reads for the family; import reads them back
//! and refuses, naming the field, any setting the engine does not implement (a
//! `rope_scaling` type, another activation, an untied GPT-2 head, ...). Parameter names
//! need no mapping: [`crate::Layout`] names every tensor with its Hugging Face key.

use serde_json::{json, Map, Value};

use crate::spec::{Family, Mlp, ModelSpec, Norm, Positions};

/// The `config.json` of `spec` (f32 weights), with the tokenizer's BOS/EOS ids.
pub fn to_config(spec: &ModelSpec, bos: Option<u32>, eos: Option<u32>) -> Value {
    match spec.family {
        Family::Gpt2 => json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": spec.vocab,
            "n_positions": spec.seq,
            "n_ctx": spec.seq,
            "n_embd": spec.hidden,
            "n_layer": spec.layers,
            "n_head": spec.heads,
            "n_inner": if spec.ffn == 4 * spec.hidden { Value::Null } else { json!(spec.ffn) },
            "activation_function": "gelu_new",
            "layer_norm_epsilon": spec.norm_eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "initializer_range": 0.02,
            "scale_attn_weights": true,
            "scale_attn_by_inverse_layer_idx": false,
            "reorder_and_upcast_attn": false,
            "tie_word_embeddings": true,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "torch_dtype": "float32",
            "use_cache": true,
        }),
        Family::Llama => {
            let theta = match spec.positions {
                Positions::Rope { theta } => theta,
                _ => 10_000.0,
            };
            json!({
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "vocab_size": spec.vocab,
                "hidden_size": spec.hidden,
                "intermediate_size": spec.ffn,
                "num_hidden_layers": spec.layers,
                "num_attention_heads": spec.heads,
                "num_key_value_heads": spec.kv_heads,
                "head_dim": spec.head_dim,
                "max_position_embeddings": spec.seq,
                "rms_norm_eps": spec.norm_eps,
                "rope_theta": theta,
                "rope_scaling": null,
                "rope_parameters": { "rope_theta": theta, "rope_type": "default" },
                "hidden_act": "silu",
                "attention_bias": spec.bias,
                "attention_dropout": 0.0,
                "mlp_bias": spec.bias,
                "pretraining_tp": 1,
                "initializer_range": 0.02,
                "tie_word_embeddings": spec.tied,
                "bos_token_id": bos,
                "eos_token_id": eos,
                "torch_dtype": "float32",
                "use_cache": true,
            })
        }
    }
}

/// `generation_config.json`.
pub fn to_generation_config(bos: Option<u32>, eos: Option<u32>) -> Value {
    json!({ "_from_model_config": true, "bos_token_id": bos, "eos_token_id": eos })
}

/// Reads a `config.json`. Errors name the field and what is wrong.
pub fn from_config(cfg: &Value) -> Result<ModelSpec, String> {
    let obj = cfg.as_object().ok_or("config.json is not a JSON object")?;
    let r = Reader(obj);
    let model_type = r.str("model_type")?;
    match model_type.as_str() {
        "gpt2" => gpt2(&r),
        "llama" => llama(&r),
        other => Err(format!("model_type `{other}` is not supported (supported: gpt2, llama)")),
    }
}

struct Reader<'a>(&'a Map<String, Value>);

impl Reader<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }
    fn str(&self, k: &str) -> Result<String, String> {
        match self.get(k) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(format!("field `{k}` must be a string, found {v}")),
            None => Err(format!("field `{k}` is missing")),
        }
    }
    fn usize(&self, k: &str) -> Result<usize, String> {
        self.opt_usize(k)?.ok_or_else(|| format!("field `{k}` is missing"))
    }
    fn opt_usize(&self, k: &str) -> Result<Option<usize>, String> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| format!("field `{k}` must be a non-negative integer, found {v}")),
        }
    }
    fn f64_or(&self, k: &str, default: f64) -> Result<f64, String> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| format!("field `{k}` must be a number, found {v}")),
        }
    }
    fn bool_or(&self, k: &str, default: bool) -> Result<bool, String> {
        match self.get(k) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(format!("field `{k}` must be true or false, found {v}")),
        }
    }
    /// A setting the engine implements only at `ok` values.
    fn require(&self, k: &str, ok: &[Value], what: &str) -> Result<(), String> {
        match self.get(k) {
            Some(v) if !ok.contains(v) => Err(format!("unsupported `{k}` = {v}: {what}")),
            _ => Ok(()),
        }
    }
}

fn gpt2(r: &Reader) -> Result<ModelSpec, String> {
    let hidden = r.usize("n_embd")?;
    let heads = r.usize("n_head")?;
    let seq = match r.opt_usize("n_positions")? {
        Some(s) => s,
        None => r.usize("n_ctx")?,
    };
    r.require("activation_function", &[json!("gelu_new"), json!("gelu_pytorch_tanh")], "only GELU with the tanh approximation is implemented")?;
    r.require("scale_attn_by_inverse_layer_idx", &[json!(false)], "not implemented")?;
    r.require("scale_attn_weights", &[json!(true)], "unscaled attention is not implemented")?;
    r.require("add_cross_attention", &[json!(false)], "cross-attention is not implemented")?;
    if !r.bool_or("tie_word_embeddings", true)? {
        return Err("unsupported `tie_word_embeddings` = false: GPT-2's head is tied to wte".into());
    }
    let mut m = ModelSpec::gpt("hf-gpt2", r.usize("n_layer")?, hidden, heads, r.usize("vocab_size")?, seq, "Hugging Face config.json");
    m.ffn = r.opt_usize("n_inner")?.unwrap_or(4 * hidden);
    m.norm_eps = r.f64_or("layer_norm_epsilon", 1e-5)?;
    check(m)
}

fn llama(r: &Reader) -> Result<ModelSpec, String> {
    let hidden = r.usize("hidden_size")?;
    let heads = r.usize("num_attention_heads")?;
    // transformers 4 writes `rope_theta` and `rope_scaling`; 5 writes `rope_parameters`
    // = {rope_theta, rope_type, ...}. Anything but the default (unscaled) type is refused.
    let mut theta = r.f64_or("rope_theta", 10_000.0)?;
    for key in ["rope_scaling", "rope_parameters"] {
        if let Some(v) = r.get(key) {
            let kind = v.get("rope_type").or_else(|| v.get("type")).map(|t| t.to_string()).unwrap_or_else(|| v.to_string());
            if kind != "\"default\"" {
                return Err(format!("unsupported `{key}` of type {kind}: only plain RoPE is implemented"));
            }
            if let Some(t) = v.get("rope_theta") {
                theta = t.as_f64().ok_or_else(|| format!("field `{key}.rope_theta` must be a number, found {t}"))?;
            }
        }
    }
    r.require("hidden_act", &[json!("silu")], "only SwiGLU (silu) is implemented")?;
    r.require("pretraining_tp", &[json!(1)], "only pretraining_tp = 1 is implemented")?;
    let (ab, mb) = (r.bool_or("attention_bias", false)?, r.bool_or("mlp_bias", false)?);
    if ab != mb {
        return Err(format!("unsupported `attention_bias` = {ab} with `mlp_bias` = {mb}: both or neither"));
    }
    let mut m = ModelSpec::llama(
        "hf-llama",
        r.usize("num_hidden_layers")?,
        hidden,
        heads,
        r.opt_usize("num_key_value_heads")?.unwrap_or(heads),
        r.usize("intermediate_size")?,
        r.usize("vocab_size")?,
        r.opt_usize("max_position_embeddings")?.unwrap_or(2048),
        "Hugging Face config.json",
    );
    m.head_dim = r.opt_usize("head_dim")?.unwrap_or(hidden / heads.max(1));
    m.norm_eps = r.f64_or("rms_norm_eps", 1e-6)?;
    m.positions = Positions::Rope { theta };
    m.bias = ab;
    m.tied = r.bool_or("tie_word_embeddings", false)?;
    check(m)
}

fn check(m: ModelSpec) -> Result<ModelSpec, String> {
    debug_assert!(matches!((m.family, m.norm, m.mlp), (Family::Gpt2, Norm::LayerNorm, Mlp::Gelu) | (Family::Llama, Norm::RmsNorm, Mlp::SwiGlu)));
    m.validate()?;
    Ok(m)
}

/// Tensors a Hugging Face checkpoint may hold that are not parameters of the spec:
/// GPT-2's causal-mask buffers, a tied head's copy, Llama's rotary cache.
pub fn ignorable(spec: &ModelSpec, name: &str) -> bool {
    // `….attn.bias` is the mask buffer; the parameter is `….attn.c_attn.bias`.
    (spec.family == Family::Gpt2 && name.ends_with(".attn.bias"))
        || name.ends_with(".attn.masked_bias")
        || name.ends_with("rotary_emb.inv_freq")
        || (spec.tied && name == "lm_head.weight")
}

/// The spec's name for a checkpoint key: old GPT-2 checkpoints (the original `gpt2`
/// repository) omit the `transformer.` prefix.
pub fn canonical_name(spec: &ModelSpec, name: &str) -> String {
    if spec.family == Family::Gpt2 && !name.starts_with("transformer.") && name != "lm_head.weight" {
        format!("transformer.{name}")
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_for_every_trainable_preset() {
        for name in ["gpt2", "gpt2-mini", "llama-mini", "llama3-8b", "tinyllama-1.1b", "llama-char-cpu"] {
            let m = crate::spec::get(name).unwrap();
            let back = from_config(&to_config(&m, Some(1), Some(2))).unwrap();
            assert_eq!(ModelSpec { name: m.name.clone(), source: m.source.clone(), ..back }, m, "{name}");
        }
    }

    #[test]
    fn unsupported_settings_are_named() {
        let mut c = to_config(&crate::spec::get("llama3-8b").unwrap(), None, None);
        c["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0});
        let e = from_config(&c).unwrap_err();
        assert!(e.contains("rope_scaling") && e.contains("llama3"), "{e}");
        c["rope_scaling"] = json!(null);
        c["rope_parameters"] = json!({"rope_type": "yarn", "rope_theta": 1e6});
        assert!(from_config(&c).unwrap_err().contains("rope_parameters"));
        let mut c = to_config(&crate::spec::get("gpt2").unwrap(), None, None);
        c["activation_function"] = json!("relu");
        assert!(from_config(&c).unwrap_err().contains("activation_function"));
        c["model_type"] = json!("mistral");
        assert!(from_config(&c).unwrap_err().contains("mistral"));
        let mut c = to_config(&crate::spec::get("llama-mini").unwrap(), None, None);
        c.as_object_mut().unwrap().remove("hidden_size");
        assert!(from_config(&c).unwrap_err().contains("`hidden_size` is missing"));
    }
}

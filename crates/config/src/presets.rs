//! Named starting points for `hyperion train --preset NAME`.
//!
//! The numbers are nanoGPT's recipes (`config/train_shakespeare_char.py`,
//! `config/train_gpt2.py` and the GPT-2 family's shapes from Radford et al. 2019):
//!
//! | preset | layers | heads | width | block | notes |
//! |---|---|---|---|---|---|
//! | `shakespeare-char` | 6 | 6 | 384 | 256 | char-level, ~10.7M params |
//! | `shakespeare-char-cpu` | 4 | 4 | 128 | 64 | the defaults; trains on a laptop CPU |
//! | `gpt2` | 12 | 12 | 768 | 1024 | 124M |
//! | `gpt2-medium` | 24 | 16 | 1024 | 1024 | 350M |
//! | `gpt2-large` | 36 | 20 | 1280 | 1024 | 774M |
//! | `gpt2-xl` | 48 | 25 | 1600 | 1024 | 1558M |
//! | `gpt2-mini` | 4 | 4 | 256 | 128 | GPT-2 tokenizer, tiny model |
//! | `tiny` | 2 | 2 | 32 | 16 | for tests: 20 steps |
//! | `llama-char-cpu` | 4 | 4 (2 kv) | 128 | 64 | Llama blocks, `shakespeare-char-cpu`'s size |
//! | `llama-mini` | 4 | 4 (2 kv) | 256 | 128 | Llama blocks, GPT-2 tokenizer, untied head |
//! | `tinyllama-1.1b`, `llama3-8b`, `llama3-70b`, `llama3.1-405b` | | | | | published shapes, to plan and check memory |
//!
//! The model shapes are not written here: each preset names its entry in the model
//! catalog (`model::spec::catalog`), which the planner reads too.

use std::path::PathBuf;

use model::spec::{Family, ModelSpec};

use crate::{Arch, ModelConfig, RunConfig, TokenizerKind};

const NAMES: &[&str] = &[
    "shakespeare-char",
    "shakespeare-char-cpu",
    "gpt2",
    "gpt2-medium",
    "gpt2-large",
    "gpt2-xl",
    "gpt2-mini",
    "tiny",
    "llama-char-cpu",
    "llama-mini",
    "tinyllama-1.1b",
    "llama3-8b",
    "llama3-70b",
    "llama3.1-405b",
];

/// The names [`get`] accepts.
pub fn names() -> &'static [&'static str] {
    NAMES
}

/// The full raw config of a preset, or `None` for an unknown name.
pub fn get(name: &str) -> Option<RunConfig> {
    let mut c = match name {
        "shakespeare-char" => shakespeare_char(),
        // The crate's defaults are this preset, so that `hyperion train` with no
        // arguments is a run that finishes on a CPU.
        "shakespeare-char-cpu" | "llama-char-cpu" => RunConfig::default(),
        "gpt2" | "gpt2-medium" | "gpt2-large" | "gpt2-xl" | "gpt2-mini" | "llama-mini" | "tinyllama-1.1b" | "llama3-8b" | "llama3-70b"
        | "llama3.1-405b" => gpt2(),
        "tiny" => tiny(),
        _ => return None,
    };
    let spec = model::spec::get(name)?;
    // Character-level presets take the vocabulary from the prepared data.
    let from_data = c.data.tokenizer != TokenizerKind::Gpt2;
    c.model = model_config(&spec, from_data);
    Some(c)
}

/// The `[model]` section that resolves back into `spec` (see
/// `ResolvedConfig::model_spec`; a test checks the round trip for every preset).
pub fn model_config(spec: &ModelSpec, vocab_from_data: bool) -> ModelConfig {
    let d = ModelConfig::default();
    let theta = match spec.positions {
        model::spec::Positions::Rope { theta } => theta,
        _ => d.rope_theta,
    };
    ModelConfig {
        arch: match spec.family {
            Family::Gpt2 => Arch::Gpt2,
            Family::Llama => Arch::Llama,
        },
        n_layer: spec.layers,
        n_head: spec.heads,
        n_embd: spec.hidden,
        block_size: spec.seq,
        vocab_size: (!vocab_from_data).then_some(spec.vocab),
        bias: spec.bias,
        n_kv_head: if spec.kv_heads == spec.heads { 0 } else { spec.kv_heads },
        head_dim: if spec.head_dim * spec.heads == spec.hidden { 0 } else { spec.head_dim },
        ffn_hidden: if spec.family == Family::Gpt2 && spec.ffn == 4 * spec.hidden { 0 } else { spec.ffn },
        norm_eps: spec.norm_eps,
        rope_theta: theta,
        tie_embeddings: spec.tied,
    }
}

/// nanoGPT's `train_shakespeare_char.py`: a "baby GPT" that reaches ~1.47 val loss.
fn shakespeare_char() -> RunConfig {
    let mut c = RunConfig::default();
    c.train.batch_size = 64;
    c.train.steps = 5000;
    (
        c.train.eval_interval,
        c.train.eval_batches,
        c.train.log_interval,
    ) = (250, 20, 10);
    (c.optim.lr, c.optim.min_lr, c.optim.warmup_steps) = (1e-3, 1e-4, 100);
    // Small models see few tokens per step, so a larger beta2 (nanoGPT's comment).
    c.optim.beta2 = 0.99;
    (c.optim.weight_decay, c.optim.grad_clip) = (0.1, 1.0);
    c.data.dir = PathBuf::from("data/prepared/shakespeare-char");
    c.data.inputs = vec![PathBuf::from("data/shakespeare")];
    c.data.tokenizer = TokenizerKind::Char;
    c.data.val_fraction = 0.1;
    c.checkpoint.interval = 1000;
    c
}

/// GPT-2 family (nanoGPT's `train_gpt2.py` optimizer settings, GPT-3 paper's beta2 0.95)
/// fine-tuned on Shakespeare with the GPT-2 tokenizer.
fn gpt2() -> RunConfig {
    let mut c = RunConfig::default();
    c.train.batch_size = 8;
    c.train.steps = 5000;
    (c.optim.lr, c.optim.min_lr, c.optim.warmup_steps) = (6e-4, 6e-5, 200);
    c.optim.beta2 = 0.95;
    (c.optim.weight_decay, c.optim.grad_clip) = (0.1, 1.0);
    c.data.dir = PathBuf::from("data/prepared/shakespeare-gpt2");
    c.data.inputs = vec![PathBuf::from("data/shakespeare")];
    c.data.tokenizer = TokenizerKind::Gpt2;
    c
}

/// The smallest useful run, for tests: a few seconds on one core.
fn tiny() -> RunConfig {
    let mut c = RunConfig::default();
    c.train.batch_size = 4;
    c.train.steps = 20;
    (
        c.train.eval_interval,
        c.train.eval_batches,
        c.train.log_interval,
    ) = (10, 2, 1);
    (c.optim.lr, c.optim.warmup_steps) = (1e-3, 2);
    c.data.tokenizer = TokenizerKind::Char;
    c.checkpoint.interval = 10;
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_has_a_preset_and_unknown_is_none() {
        for name in names() {
            assert!(get(name).is_some(), "{name}");
        }
        assert!(get("gpt3").is_none());
    }

    #[test]
    fn presets_resolve_to_their_catalog_spec() {
        for name in names() {
            let spec = model::spec::get(name).unwrap();
            let mut r = crate::ResolvedConfig::new(get(name).unwrap()).unwrap();
            r.preset = Some(name.to_string());
            let r = r.with_vocab_size(spec.vocab).unwrap();
            let got = r.model_spec().unwrap();
            assert_eq!(ModelSpec { source: spec.source.clone(), ..got }, spec, "{name}");
        }
        let l = get("llama-char-cpu").unwrap();
        assert_eq!((l.model.arch, l.model.n_kv_head, l.model.ffn_hidden, l.model.tie_embeddings), (Arch::Llama, 2, 384, false));
        assert_eq!(l.data.tokenizer, TokenizerKind::Char);
        assert_eq!(get("llama-mini").unwrap().data.tokenizer, TokenizerKind::Gpt2);
    }

    #[test]
    fn preset_numbers() {
        let c = get("shakespeare-char").unwrap();
        assert_eq!(
            (
                c.model.n_layer,
                c.model.n_head,
                c.model.n_embd,
                c.model.block_size
            ),
            (6, 6, 384, 256)
        );
        assert_eq!(
            (c.train.batch_size, c.train.steps, c.checkpoint.interval),
            (64, 5000, 1000)
        );
        let c = get("shakespeare-char-cpu").unwrap();
        assert_eq!(
            (
                c.model.n_layer,
                c.model.n_head,
                c.model.n_embd,
                c.model.block_size
            ),
            (4, 4, 128, 64)
        );
        assert_eq!(
            (c.train.batch_size, c.train.steps, c.checkpoint.interval),
            (12, 2000, 500)
        );
        assert_eq!(
            (c.optim.lr, c.optim.min_lr, c.optim.beta2),
            (1e-3, 1e-4, 0.99)
        );
        let xl = get("gpt2-xl").unwrap();
        assert_eq!(
            (xl.model.n_layer, xl.model.n_head, xl.model.n_embd),
            (48, 25, 1600)
        );
        assert_eq!(
            (xl.model.vocab_size, xl.model.bias, xl.data.tokenizer),
            (Some(50257), true, TokenizerKind::Gpt2)
        );
        assert_eq!(
            (
                xl.optim.lr,
                xl.optim.min_lr,
                xl.optim.warmup_steps,
                xl.optim.beta2
            ),
            (6e-4, 6e-5, 200, 0.95)
        );
        let mini = get("gpt2-mini").unwrap();
        assert_eq!(
            (
                mini.model.n_layer,
                mini.model.n_embd,
                mini.model.block_size,
                mini.train.batch_size
            ),
            (4, 256, 128, 8)
        );
        let t = get("tiny").unwrap();
        assert_eq!(
            (
                t.model.n_embd,
                t.model.block_size,
                t.train.steps,
                t.train.log_interval
            ),
            (32, 16, 20, 1)
        );
    }
}

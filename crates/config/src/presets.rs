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

use std::path::PathBuf;

use crate::{RunConfig, TokenizerKind};

const NAMES: &[&str] = &[
    "shakespeare-char",
    "shakespeare-char-cpu",
    "gpt2",
    "gpt2-medium",
    "gpt2-large",
    "gpt2-xl",
    "gpt2-mini",
    "tiny",
];

/// The names [`get`] accepts.
pub fn names() -> &'static [&'static str] {
    NAMES
}

/// The full raw config of a preset, or `None` for an unknown name.
pub fn get(name: &str) -> Option<RunConfig> {
    Some(match name {
        "shakespeare-char" => shakespeare_char(),
        // The crate's defaults are this preset, so that `hyperion train` with no
        // arguments is a run that finishes on a CPU.
        "shakespeare-char-cpu" => RunConfig::default(),
        "gpt2" => gpt2(12, 12, 768),
        "gpt2-medium" => gpt2(24, 16, 1024),
        "gpt2-large" => gpt2(36, 20, 1280),
        "gpt2-xl" => gpt2(48, 25, 1600),
        "gpt2-mini" => {
            let mut c = gpt2(4, 4, 256);
            c.model.block_size = 128;
            c
        }
        "tiny" => tiny(),
        _ => return None,
    })
}

/// nanoGPT's `train_shakespeare_char.py`: a "baby GPT" that reaches ~1.47 val loss.
fn shakespeare_char() -> RunConfig {
    let mut c = RunConfig::default();
    (
        c.model.n_layer,
        c.model.n_head,
        c.model.n_embd,
        c.model.block_size,
    ) = (6, 6, 384, 256);
    c.model.bias = false;
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
fn gpt2(n_layer: usize, n_head: usize, n_embd: usize) -> RunConfig {
    let mut c = RunConfig::default();
    (
        c.model.n_layer,
        c.model.n_head,
        c.model.n_embd,
        c.model.block_size,
    ) = (n_layer, n_head, n_embd, 1024);
    c.model.vocab_size = Some(50257);
    c.model.bias = true;
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
    (
        c.model.n_layer,
        c.model.n_head,
        c.model.n_embd,
        c.model.block_size,
    ) = (2, 2, 32, 16);
    c.model.bias = true;
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

//! `hyperion generate`: sample text from a checkpoint.

use std::path::PathBuf;

use anyhow::{Context, Result};
use engine::sample::{generate, SampleOptions};

use super::common::load_checkpoint;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// A run directory (its latest checkpoint) or one checkpoint folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Text to continue.
    #[arg(long, default_value = "\n")]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 300)]
    pub tokens: usize,
    /// Softmax temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample among the k most likely tokens only; 0 = all.
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Random seed: the same seed gives the same text.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    if !(a.temperature.is_finite() && a.temperature >= 0.0) {
        anyhow::bail!("--temperature must be a finite number >= 0, got {}", a.temperature);
    }
    let m = load_checkpoint(&a.checkpoint)?;
    let tok = data::Tokenizer::from_meta(&m.meta)?;
    let prompt = tok.encode(&a.prompt).context("encoding --prompt")?;
    if prompt.is_empty() {
        anyhow::bail!("--prompt must not be empty");
    }
    let out = generate(&m.gpt, &m.params, &prompt, &SampleOptions { tokens: a.tokens, temperature: a.temperature, top_k: a.top_k, seed: a.seed });
    println!("{}{}", a.prompt, tok.decode(&out));
    Ok(())
}

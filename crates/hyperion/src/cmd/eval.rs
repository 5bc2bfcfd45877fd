//! `hyperion eval`: validation loss and perplexity of a checkpoint.

use std::path::PathBuf;

use anyhow::Result;

use super::common::load_checkpoint;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A run directory (its latest checkpoint) or one checkpoint folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Number of validation batches (default: the run's train.eval_batches).
    #[arg(long)]
    pub batches: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let m = load_checkpoint(&a.checkpoint)?;
    // Never prepare as a side effect: eval reads the run's prepared data (or mixture).
    let d = &m.cfg.raw.data;
    let data = if d.sources.is_empty() {
        data::Dataset::open(&d.dir)
    } else {
        data::Dataset::open_mixture(&d.sources.iter().map(|s| (s.dir.clone(), s.weight)).collect::<Vec<_>>())
    }
    .map_err(|e| anyhow::anyhow!("{e} (eval reads the data the run was trained on; it does not prepare any)"))?;
    if let Some(why) = m.meta.tokenizer_differs(&data.meta) {
        anyhow::bail!("the checkpoint's data and {} are tokenized differently: {why}", d.dir.display());
    }
    if data.meta.vocab_size != m.gpt.cfg.vocab_size {
        anyhow::bail!(
            "vocabulary mismatch: the checkpoint's model has {} tokens, data {} has {}",
            m.gpt.cfg.vocab_size,
            m.cfg.raw.data.dir.display(),
            data.meta.vocab_size
        );
    }
    let batches = a.batches.unwrap_or(m.cfg.raw.train.eval_batches).max(1);
    let (b, t) = (m.cfg.raw.train.batch_size, m.cfg.raw.model.block_size);
    let loss = engine::evaluate(&m.gpt, &m.params, &data, m.cfg.raw.train.seed, b, t, batches);
    if a.json {
        println!("{}", serde_json::json!({"step": m.step, "val_loss": loss, "perplexity": loss.exp(), "batches": batches, "tokens": batches * b * t}));
    } else {
        println!("checkpoint {} (step {}): validation loss {loss:.4}, perplexity {:.3} over {} tokens", m.dir.display(), m.step, loss.exp(), batches * b * t);
    }
    Ok(())
}

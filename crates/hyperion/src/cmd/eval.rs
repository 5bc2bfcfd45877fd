//! `hyperion eval`: validation loss and perplexity of a checkpoint.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::common::load_checkpoint;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A run directory (its latest checkpoint) or one checkpoint folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Validation batches of the run's global batch (default: the run's
    /// train.eval_batches, i.e. what training evaluates, whatever its layout).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub batches: Option<u64>,
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
    let batches = a.batches.map_or(m.cfg.raw.train.eval_batches, |n| n as usize).max(1);
    // Sequences 0 .. batches x global batch, in micro-batches of the run's size: the
    // same tokens for every layout that trained the run.
    let (b, t) = (m.cfg.raw.train.batch_size, m.cfg.raw.model.block_size);
    let micro = batches
        .checked_mul(m.cfg.global_batch / b)
        .filter(|&n| n.checked_mul(b * t).is_some())
        .with_context(|| format!("--batches {batches} is too large"))?;
    let tokens = micro * b * t;
    let bar = if micro >= 20 && !a.json { indicatif::ProgressBar::new(micro as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(indicatif::ProgressStyle::with_template("{bar:30} batch {pos}/{len} eta {eta}").expect("static template"));
    let loss = engine::evaluate(&m.gpt, &m.params, &data, m.cfg.raw.train.seed, (b, t), micro, &mut |i| bar.set_position(i as u64));
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::json!({"step": m.step, "val_loss": loss, "perplexity": loss.exp(), "batches": batches, "tokens": tokens}));
    } else {
        println!("checkpoint {} (step {}): validation loss {loss:.4}, perplexity {:.3} over {tokens} tokens", m.dir.display(), m.step, loss.exp());
    }
    Ok(())
}

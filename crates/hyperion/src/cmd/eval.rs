//! `hyperion eval`: validation loss and perplexity of a checkpoint.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::common::{self, load_checkpoint};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A run directory (its latest checkpoint) or one checkpoint folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Validation batches of the run's global batch (default: the run's
    /// train.eval_batches, i.e. what training evaluates, whatever its layout).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub batches: Option<u64>,
    /// A prepared data folder to evaluate on instead of the run's own (same tokenizer).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let m = load_checkpoint(&a.checkpoint)?;
    // Never prepare as a side effect: eval reads the run's prepared data (or mixture),
    // at the absolute paths its config recorded, or the prepared folder given by --data.
    let d = &m.cfg.raw.data;
    let (data, location) = match &a.data {
        Some(dir) => (data::Dataset::open(dir), dir.display().to_string()),
        None if d.sources.is_empty() => (data::Dataset::open(&d.dir), common::data_location(d)),
        None => (
            data::Dataset::open_mixture(&d.sources.iter().map(|s| (s.dir.clone(), s.weight)).collect::<Vec<_>>()),
            common::data_location(d),
        ),
    };
    let data = data.map_err(|e| {
        let hint = if a.data.is_some() { "" } else { "; --data DIR evaluates on another prepared folder" };
        anyhow::anyhow!("{e} (eval reads the data the run was trained on and does not prepare any{hint})")
    })?;
    if let Some(why) = m.meta.tokenizer_differs(&data.meta) {
        anyhow::bail!("the checkpoint's data and {location} are tokenized differently: {why}");
    }
    if a.data.is_none() {
        if let Some(why) = m.meta.data_differs(&data.meta) {
            anyhow::bail!("{location} holds other tokens than the checkpoint was trained on ({why}); --data DIR evaluates on a prepared folder of your choice");
        }
    }
    if data.meta.vocab_size != m.gpt.cfg.vocab_size {
        anyhow::bail!(
            "vocabulary mismatch: the checkpoint's model has {} tokens, data {location} has {}",
            m.gpt.cfg.vocab_size,
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

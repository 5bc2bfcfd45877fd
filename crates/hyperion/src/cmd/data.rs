//! `hyperion data prepare`: a progress bar and a summary around `data::prepare`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Tokenize text files into train.bin / val.bin / meta.json.
    ///
    /// Folders are searched recursively for *.txt files; files named explicitly are
    /// taken whatever their extension. Files are read in sorted path order, and the
    /// last --val-fraction of each file's tokens goes to val.bin.
    Prepare {
        /// Text files or folders (UTF-8).
        #[arg(long = "input", required = true, num_args = 1..)]
        inputs: Vec<PathBuf>,
        /// gpt2 (GPT-2 BPE, r50k_base) or char (the corpus's character set).
        #[arg(long, value_parser = parse_tokenizer)]
        tokenizer: data::TokenizerKind,
        /// Output folder (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// Fraction of each file's tokens kept for validation, in (0, 1).
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f64,
    },
}

fn parse_tokenizer(s: &str) -> Result<data::TokenizerKind, String> {
    s.parse().map_err(|e: data::DataError| e.to_string())
}

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Prepare { inputs, tokenizer, out, val_fraction } => prepare(&inputs, tokenizer, out, val_fraction),
    }
}

fn prepare(inputs: &[PathBuf], kind: data::TokenizerKind, out: PathBuf, val_fraction: f64) -> anyhow::Result<()> {
    let started = Instant::now();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(format!("prepare ({kind})"));
    let result = data::prepare(inputs, kind, &out, val_fraction, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let meta = result.with_context(|| format!("data prepare into {} failed", out.display()))?;
    let secs = started.elapsed().as_secs_f64();
    let bytes: u64 = meta.inputs.iter().map(|f| f.bytes).sum();
    println!(
        "prepared {} ({} tokenizer, vocab {}, {}) from {} file{}, {} bytes in {:.2} s",
        out.display(),
        meta.tokenizer,
        meta.vocab_size,
        meta.dtype,
        meta.inputs.len(),
        if meta.inputs.len() == 1 { "" } else { "s" },
        bytes,
        secs
    );
    println!("  train.bin: {} tokens", meta.train_tokens);
    println!("  val.bin:   {} tokens (val fraction {})", meta.val_tokens, meta.val_fraction);
    Ok(())
}

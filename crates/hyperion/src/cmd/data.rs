//! `hyperion data prepare`: a progress bar and a summary around `data::prepare_with`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Tokenize text, JSONL or Parquet inputs into token shards + meta.json.
    ///
    /// Inputs are files, folders (searched recursively for *.txt, *.jsonl, *.parquet,
    /// each optionally .gz or .zst) and quoted globs ("corpus/*.jsonl.zst"); files
    /// named explicitly are read as text when their extension is not recognised.
    /// One text file, JSONL line or Parquet row is one document. Validation takes
    /// every round(1/f)-th document. A killed prepare, rerun with the same
    /// arguments, resumes where it stopped.
    Prepare(PrepareArgs),
}

#[derive(clap::Args)]
pub struct PrepareArgs {
    /// Input files, folders or globs.
    #[arg(long = "input", required = true, num_args = 1..)]
    inputs: Vec<PathBuf>,
    /// gpt2 (GPT-2 BPE, r50k_base), char (the corpus's characters), or a
    /// Hugging Face tokenizer.json (or a folder holding one).
    #[arg(long, value_parser = parse_tokenizer)]
    tokenizer: data::TokenizerChoice,
    /// Output folder (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// Fraction of documents kept for validation, in (0, 1).
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Validation inputs given separately (then every --input document trains).
    #[arg(long = "val-input", num_args = 1..)]
    val_inputs: Vec<PathBuf>,
    /// documents (every round(1/f)-th document) or tail (the last fraction of
    /// every document's tokens, for a corpus of very few documents).
    #[arg(long, default_value = "documents")]
    split: data::SplitMode,
    /// JSONL field or Parquet column holding the text.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// What a malformed record (bad JSON, missing field, not a string, null,
    /// invalid UTF-8) does: fail (naming it) or skip (counted in meta.json).
    #[arg(long, default_value = "fail")]
    on_error: data::OnError,
    /// Tokens per shard file.
    #[arg(long, default_value_t = data::DEFAULT_SHARD_TOKENS)]
    shard_tokens: u64,
    /// End-of-document token of a tokenizer.json ("none": no separator);
    /// default: eos_token of its tokenizer_config.json, or a usual name.
    #[arg(long)]
    eod_token: Option<String>,
    /// Do not apply the tokenizer.json's post-processor (e.g. Llama's BOS).
    #[arg(long)]
    no_special_tokens: bool,
    /// Worker threads (default: all cores). The output does not depend on it.
    #[arg(long)]
    threads: Option<usize>,
    /// Replace a dataset already prepared in --out (otherwise refused).
    #[arg(long)]
    force: bool,
}

fn parse_tokenizer(s: &str) -> Result<data::TokenizerChoice, String> {
    s.parse().map_err(|e: data::DataError| e.to_string())
}

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    let DataCommand::Prepare(a) = cmd;
    if a.out.join(data::META_FILE).is_file() && !a.force {
        anyhow::bail!(
            "{} already holds a prepared dataset; pass --force to replace it (it stays intact until the new one is complete)",
            a.out.display()
        );
    }
    let opts = data::PrepareOptions {
        tokenizer: a.tokenizer,
        val_fraction: a.val_fraction,
        val_inputs: a.val_inputs,
        split: a.split,
        text_field: a.text_field,
        on_error: a.on_error,
        shard_tokens: a.shard_tokens,
        eod_token: a.eod_token,
        add_special_tokens: !a.no_special_tokens,
        batch_bytes: data::BATCH_BYTES,
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(a.threads.unwrap_or(0)).build().context("starting the worker threads")?;
    pool.install(|| prepare(&a.inputs, &opts, a.out))
}

/// A bar over input bytes with MB/s, tokens/s and ETA.
pub fn prepare_bar() -> impl FnMut(&data::Progress) {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut first: Option<data::Progress> = None;
    move |p: &data::Progress| {
        let f = *first.get_or_insert(*p);
        bar.set_prefix(p.pass);
        bar.set_length(p.total_bytes);
        bar.set_position(p.bytes);
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let rate = (p.tokens - f.tokens.min(p.tokens)) as f64 / secs;
        bar.set_message(format!("{} tokens, {:.2} M tok/s", p.tokens, rate / 1e6));
        if p.pass == "encode" && p.bytes >= p.total_bytes {
            bar.finish_and_clear();
        }
    }
}

fn prepare(inputs: &[PathBuf], opts: &data::PrepareOptions, out: PathBuf) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut resumed = 0u64;
    let mut bar = prepare_bar();
    let result = data::prepare_with(inputs, opts, &out, &mut |p| {
        resumed = p.resumed_bytes;
        bar(p)
    });
    let meta = result.with_context(|| format!("data prepare into {} failed", out.display()))?;
    let secs = started.elapsed().as_secs_f64();
    let bytes: u64 = meta.inputs.iter().map(|f| f.bytes).sum();
    let docs = meta.documents.unwrap_or(data::DocCounts { train: 0, val: 0 });
    let shards = meta.shards.as_ref().map_or((0, 0), |s| (s.train.len(), s.val.len()));
    println!(
        "prepared {} ({} tokenizer, vocab {}, {}) from {} file{}, {} bytes in {:.2} s ({:.1} MB/s{})",
        out.display(),
        meta.tokenizer,
        meta.vocab_size,
        meta.dtype,
        meta.inputs.len(),
        if meta.inputs.len() == 1 { "" } else { "s" },
        bytes,
        secs,
        (bytes - resumed.min(bytes)) as f64 / secs.max(1e-9) / 1e6,
        if resumed > 0 { format!("; resumed after {resumed} bytes") } else { String::new() },
    );
    println!("  train: {} tokens, {} documents, {} shard(s)", meta.train_tokens, docs.train, shards.0);
    println!(
        "  val:   {} tokens, {} documents, {} shard(s) (split: {})",
        meta.val_tokens,
        docs.val,
        shards.1,
        meta.split.as_deref().unwrap_or("?")
    );
    if !meta.bad_records.is_empty() {
        let list: Vec<String> = meta.bad_records.iter().map(|(k, n)| format!("{n} {k}")).collect();
        println!("  skipped records: {}", list.join(", "));
        for e in &meta.bad_record_examples {
            println!("    {e}");
        }
        let named = meta.bad_record_examples.len() as u64;
        let total: u64 = meta.bad_records.values().sum();
        if total > named {
            println!("    ... and {} more (counted in meta.json)", total - named);
        }
    }
    Ok(())
}

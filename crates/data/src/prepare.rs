//! `prepare`: text, JSONL and Parquet inputs -> token shards + `meta.json`,
//! streaming in bounded memory, on all cores, resumable.
//!
//! **Pipeline.** A reader thread walks the inputs in sorted order and cuts
//! their records into batches of about [`BATCH_BYTES`] of text; the calling
//! thread parses and tokenizes each batch on the rayon pool (results kept in
//! record order) and appends the documents to the shard writers. Only the
//! writers decide where tokens go, in record order, so the shards are the
//! same bytes for any thread count.
//!
//! **Memory.** At most [`QUEUED_BATCHES`] batches wait in the queue, one is
//! being read and one tokenized: about `(QUEUED_BATCHES + 2) x BATCH_BYTES` of
//! text plus its tokens (4 bytes each), about 100 MB whatever the corpus size,
//! plus for GPT-2 one copy of the BPE tables per tokenizing thread (~10 MB each,
//! see `Gpt2::with_thread_bpe`);
//! a document is held whole, so a single document larger than a batch (a
//! big `.txt` file) adds its own size (a compressed Parquet file is inflated in
//! memory; an uncompressed one is read column chunk by column chunk).
//!
//! **Documents.** Each record is one document: `[tokens] [end-of-document]`
//! (GPT-2: `<|endoftext|>`; char: "\n\n"; a `tokenizer.json`: see
//! [`crate::HfTokenizer`]). Empty documents are dropped. Validation takes, by
//! default, every document `d` (0-based, counting the documents of the
//! training inputs) with `floor((d + 1) f) > floor(d f)`: exactly
//! `floor(n f)` evenly spread documents, decided from `d` alone. `--val-input`
//! takes validation from separate files instead, and `--split tail` keeps the
//! older rule (the last `round(n f)` tokens of every document).
//!
//! **Shards.** Each split is cut into `<split>-NNNNNN.bin` files of exactly
//! `shard_tokens` tokens (the last one shorter), each with a `.idx` of the
//! offsets of the documents that start in it, and its sha256 in `meta.json`.
//!
//! **Resume and atomicity.** Everything is written under `OUT/.prepare/`.
//! After every batch the open shards are synced and `state.json` records the
//! input position, the finished shards and the open shards' lengths. A
//! prepare killed at any point, rerun with the same inputs and settings,
//! truncates the open shards to the recorded lengths and goes on from the
//! recorded record: finished shards are not redone, and the result is
//! byte-identical to an uninterrupted run. Other settings or changed inputs
//! start over. The dataset in `OUT` is replaced only at the end: its
//! `meta.json` is removed, the shards moved in, and the new `meta.json`
//! written last, so a folder never pairs a `meta.json` with other shards.
//! One prepare runs per folder at a time (an OS lock on `OUT/.prepare.lock`;
//! a second one waits, then finds the dataset made).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::input::{self, hex, BadRecord, FileDone, Format, Input, RawRecord};
use crate::tokenizer::{CharVocab, CHAR_SEPARATOR};
use crate::{
    DataError, Dataset, DocCounts, HfTokenizer, InputFile, Meta, Shard, Shards, TokenDtype, Tokenizer, TokenizerKind,
    META_FILE, TOKENIZER_JSON,
};

/// Text per batch handed to the tokenizer threads.
pub const BATCH_BYTES: usize = 8 << 20;
/// Batches read ahead of the tokenizer.
pub const QUEUED_BATCHES: usize = 2;
/// Default shard size in tokens (as nanoGPT's and llm.c's FineWeb scripts).
pub const DEFAULT_SHARD_TOKENS: u64 = 100_000_000;
const STAGING: &str = ".prepare";
const STATE: &str = "state.json";
const LOCK: &str = ".prepare.lock";
const STATE_VERSION: u32 = 1;
/// Skipped records named (file, line/row, why) in `meta.json`; the rest are counted.
const MAX_BAD_EXAMPLES: usize = 10;

/// Which tokenizer to prepare with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerChoice {
    Gpt2,
    Char,
    /// A `tokenizer.json`, or a folder holding one.
    Hf(PathBuf),
}

impl FromStr for TokenizerChoice {
    type Err = DataError;
    /// `gpt2`, `char`, or a path to a `tokenizer.json` / a folder with one.
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s {
            "gpt2" => Ok(TokenizerChoice::Gpt2),
            "char" => Ok(TokenizerChoice::Char),
            _ if s.ends_with(".json") || Path::new(s).exists() => Ok(TokenizerChoice::Hf(PathBuf::from(s))),
            _ => Err(DataError::UnknownTokenizer { name: s.to_string() }),
        }
    }
}

impl From<TokenizerKind> for TokenizerChoice {
    fn from(k: TokenizerKind) -> Self {
        match k {
            TokenizerKind::Gpt2 => TokenizerChoice::Gpt2,
            TokenizerKind::Char => TokenizerChoice::Char,
            TokenizerKind::Hf => TokenizerChoice::Hf(PathBuf::from(TOKENIZER_JSON)),
        }
    }
}

/// How validation documents are chosen (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitMode {
    Documents,
    Tail,
}

impl FromStr for SplitMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "documents" => Ok(SplitMode::Documents),
            "tail" => Ok(SplitMode::Tail),
            other => Err(format!("unknown split {other:?}: expected \"documents\" or \"tail\"")),
        }
    }
}

/// What a malformed record does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Stop at the first one, naming it.
    Fail,
    /// Count it (by kind, in `meta.json`) and go on.
    Skip,
}

impl FromStr for OnError {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fail" => Ok(OnError::Fail),
            "skip" => Ok(OnError::Skip),
            other => Err(format!("unknown --on-error {other:?}: expected \"fail\" or \"skip\"")),
        }
    }
}

/// Everything `prepare` can be told besides its inputs and output folder.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepareOptions {
    pub tokenizer: TokenizerChoice,
    /// Fraction of documents (or of each document's tokens with `Tail`) for validation.
    pub val_fraction: f64,
    /// Separate validation inputs; when given, all of the main inputs train.
    pub val_inputs: Vec<PathBuf>,
    pub split: SplitMode,
    /// JSONL field / Parquet column holding the text.
    pub text_field: String,
    pub on_error: OnError,
    pub shard_tokens: u64,
    /// A `tokenizer.json`'s end-of-document token (`"none"`: no separator).
    pub eod_token: Option<String>,
    /// Apply a `tokenizer.json`'s post-processor (BOS...) to each document.
    pub add_special_tokens: bool,
    /// Text per tokenizer batch ([`BATCH_BYTES`]); the output does not depend on it,
    /// but a resume can only restart at a batch boundary.
    pub batch_bytes: usize,
}

impl PrepareOptions {
    /// Defaults: val fraction 0.1 by document, field `text`, fail on bad records,
    /// 100M-token shards.
    pub fn new(tokenizer: TokenizerChoice) -> Self {
        PrepareOptions {
            tokenizer,
            val_fraction: 0.1,
            val_inputs: Vec::new(),
            split: SplitMode::Documents,
            text_field: "text".into(),
            on_error: OnError::Fail,
            shard_tokens: DEFAULT_SHARD_TOKENS,
            eod_token: None,
            add_special_tokens: true,
            batch_bytes: BATCH_BYTES,
        }
    }
}

/// Where a prepare stands, for a progress bar.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// "scan" (char vocabulary) or "encode".
    pub pass: &'static str,
    /// Input bytes (as on disk) done in this pass and in all.
    pub bytes: u64,
    pub total_bytes: u64,
    /// Tokens and documents written so far (encode pass).
    pub tokens: u64,
    pub documents: u64,
    /// Bytes that a resumed prepare did not redo.
    pub resumed_bytes: u64,
}

/// [`prepare_with`] with a tokenizer kind and a val fraction, splitting as
/// earlier versions did (`SplitMode::Tail`: the last fraction of every
/// document's tokens), other options default; `progress(done, total)` in input bytes.
pub fn prepare(
    inputs: &[PathBuf],
    kind: TokenizerKind,
    out: &Path,
    val_fraction: f64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Meta, DataError> {
    // The per-document tail split of earlier versions (each file's last tokens).
    let opts = PrepareOptions { val_fraction, split: SplitMode::Tail, ..PrepareOptions::new(kind.into()) };
    prepare_with(inputs, &opts, out, &mut |p: &Progress| progress(p.bytes, p.total_bytes))
}

/// Returns the dataset in `dir` if it exists and was made with `opts`'s
/// tokenizer; otherwise prepares it from `inputs`. An existing dataset is never
/// silently overwritten: a tokenizer mismatch is an error naming both.
pub fn ensure_prepared(
    dir: &Path,
    inputs: &[PathBuf],
    opts: &PrepareOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Meta, DataError> {
    let meta_path = dir.join(META_FILE);
    if !meta_path.is_file() {
        if dir.is_dir() {
            // Another process (an MPI rank) may be preparing it: wait for it.
            let _lock = lock_folder(dir)?;
            if !meta_path.is_file() {
                drop(_lock);
                return prepare_with(inputs, opts, dir, progress);
            }
        } else {
            return prepare_with(inputs, opts, dir, progress);
        }
    }
    let meta = Dataset::open(dir)?.meta;
    let wanted = match &opts.tokenizer {
        TokenizerChoice::Gpt2 => TokenizerKind::Gpt2,
        TokenizerChoice::Char => TokenizerKind::Char,
        TokenizerChoice::Hf(_) => TokenizerKind::Hf,
    };
    let mismatch = |found: String, wanted: String| DataError::TokenizerMismatch { path: meta_path.clone(), found, wanted };
    if meta.tokenizer != wanted {
        return Err(mismatch(meta.tokenizer.to_string(), wanted.to_string()));
    }
    if let (TokenizerChoice::Hf(p), Some(hf)) = (&opts.tokenizer, &meta.hf) {
        let file = crate::tokenizer_json::tokenizer_file(p);
        let sha = input::file_sha256(&file)?;
        if sha != hf.sha256 {
            return Err(mismatch(format!("a tokenizer.json with sha256 {}", hf.sha256), format!("{} (sha256 {sha})", file.display())));
        }
    }
    Ok(meta)
}

/// Tokenizes `inputs` (files, folders, globs: see [`crate::input::expand`])
/// into shards in `out` (created if needed). See the module doc.
pub fn prepare_with(
    inputs: &[PathBuf],
    opts: &PrepareOptions,
    out: &Path,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Meta, DataError> {
    if opts.val_inputs.is_empty() && !(opts.val_fraction > 0.0 && opts.val_fraction < 1.0) {
        return Err(DataError::BadValFraction { value: opts.val_fraction });
    }
    if opts.shard_tokens == 0 {
        return Err(DataError::MetaValue { path: out.to_path_buf(), key: "shard_tokens", reason: "must be at least 1".into() });
    }
    let mut files: Vec<(Input, bool)> = input::expand(inputs)?.into_iter().map(|i| (i, false)).collect();
    let n_train_files = files.len();
    if !opts.val_inputs.is_empty() {
        let val = input::expand(&opts.val_inputs)?;
        if val.iter().map(|i| i.bytes).sum::<u64>() == 0 {
            return Err(DataError::EmptyCorpus { inputs: join_paths(&opts.val_inputs) });
        }
        files.extend(val.into_iter().map(|i| (i, true)));
    }
    if files[..n_train_files].iter().map(|f| f.0.bytes).sum::<u64>() == 0 {
        return Err(DataError::EmptyCorpus { inputs: join_paths(inputs) });
    }

    let mut tokenizer = match &opts.tokenizer {
        TokenizerChoice::Gpt2 => Some(Tokenizer::gpt2()?),
        TokenizerChoice::Char => None,
        TokenizerChoice::Hf(p) => Some(Tokenizer::Hf(HfTokenizer::load(p, opts.eod_token.as_deref(), opts.add_special_tokens)?)),
    };
    let hf_sha = match &tokenizer {
        Some(Tokenizer::Hf(h)) => Some(h.meta.sha256.clone()),
        _ => None,
    };

    fs::create_dir_all(out).map_err(DataError::io(out))?;
    let _lock = lock_folder(out)?;
    let staging = out.join(STAGING);
    let fingerprint = fingerprint(&files, opts, hf_sha.as_deref())?;
    let mut state = match State::load(&staging) {
        Some(s) if s.fingerprint == fingerprint => s,
        _ => {
            match fs::remove_dir_all(&staging) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(DataError::io(&staging)(e)),
            }
            fs::create_dir_all(&staging).map_err(DataError::io(&staging))?;
            State::new(fingerprint)
        }
    };

    let total_bytes: u64 = files.iter().map(|f| f.0.bytes).sum();
    let scan = tokenizer.is_none() && state.chars.is_none();
    let total = total_bytes * if scan { 2 } else { 1 };
    let mut prog = Progress { pass: "encode", total_bytes: total, ..Progress::default() };
    if scan {
        prog.pass = "scan";
        progress(&prog);
        let chars = scan_chars(&files, opts, &mut |bytes| {
            prog.bytes = bytes;
            progress(&prog);
        })?;
        state.chars = Some(chars.as_string());
        prog.pass = "encode";
    }
    let tokenizer = match tokenizer.take() {
        Some(t) => t,
        None => Tokenizer::Char(CharVocab::new(state.chars.as_deref().unwrap_or_default().chars())),
    };
    let vocab_size = tokenizer.vocab_size();
    let dtype = TokenDtype::for_vocab(vocab_size);
    let separator = tokenizer.separator()?;

    let mut train = Writer::open(&staging, "train", dtype, opts.shard_tokens, &state.train)?;
    let mut val = Writer::open(&staging, "val", dtype, opts.shard_tokens, &state.val)?;
    let file_start: Vec<u64> = files
        .iter()
        .scan(0u64, |acc, f| {
            let s = *acc;
            *acc += f.0.bytes;
            Some(s)
        })
        .collect();
    let base = if scan { total_bytes } else { 0 };
    prog.resumed_bytes = file_start.get(state.cursor_file).copied().unwrap_or(total_bytes);
    prog.bytes = base + prog.resumed_bytes;
    prog.tokens = train.total_tokens() + val.total_tokens();
    prog.documents = state.docs.train + state.docs.val;
    progress(&prog);

    let field = opts.text_field.as_str();
    let frac = opts.val_fraction;
    let start = (state.cursor_file, state.cursor_next);
    stream(&files, start, field, opts.batch_bytes, &mut |event| {
        match event {
            Event::Batch(items, file_bytes) => {
                let encoded: Vec<Outcome> = items
                    .into_par_iter()
                    .map(|it| match it.raw.parse(field) {
                        Err(bad) => Outcome::Bad(it.file, it.number, bad),
                        Ok(text) => match tokenizer.encode_ordinary_parallel(&text, &|_| {}) {
                            Ok(t) => Outcome::Doc(it.file, it.number, t),
                            Err(e) => Outcome::Fail(e),
                        },
                    })
                    .collect();
                let mut last = None;
                for outcome in encoded {
                    let (file, number, tokens) = match outcome {
                        Outcome::Fail(e) => return Err(e),
                        Outcome::Bad(file, number, bad) => {
                            if opts.on_error == OnError::Fail {
                                return Err(bad_record_error(&files[file].0, number, &bad));
                            }
                            *state.bad.entry(bad.kind().to_string()).or_default() += 1;
                            if state.bad_examples.len() < MAX_BAD_EXAMPLES {
                                state.bad_examples.push(bad_record_error(&files[file].0, number, &bad).to_string());
                            }
                            last = Some((file, number));
                            continue;
                        }
                        Outcome::Doc(file, number, tokens) => (file, number, tokens),
                    };
                    last = Some((file, number));
                    if tokens.is_empty() {
                        continue;
                    }
                    if files[file].1 {
                        val.document(&tokens, &separator)?;
                        state.docs.val += 1;
                        continue;
                    }
                    if !opts.val_inputs.is_empty() {
                        train.document(&tokens, &separator)?;
                        state.docs.train += 1;
                        continue;
                    }
                    match opts.split {
                        SplitMode::Documents => {
                            let d = state.train_input_docs;
                            state.train_input_docs += 1;
                            if ((d + 1) as f64 * frac).floor() > (d as f64 * frac).floor() {
                                val.document(&tokens, &separator)?;
                                state.docs.val += 1;
                            } else {
                                train.document(&tokens, &separator)?;
                                state.docs.train += 1;
                            }
                        }
                        SplitMode::Tail => {
                            let n_val = ((tokens.len() as f64 * frac).round() as usize).min(tokens.len());
                            let (head, tail) = tokens.split_at(tokens.len() - n_val);
                            if !head.is_empty() {
                                train.document(head, &separator)?;
                                state.docs.train += 1;
                            }
                            if !tail.is_empty() {
                                val.document(tail, &separator)?;
                                state.docs.val += 1;
                            }
                        }
                    }
                }
                if let Some((file, number)) = last {
                    (state.cursor_file, state.cursor_next) = (file, number + 1);
                    prog.bytes = base + file_start[file] + file_bytes;
                }
            }
            Event::FileDone(file, done) => {
                let (f, _) = &files[file];
                state.inputs.push(InputFile { path: f.path.display().to_string(), bytes: f.bytes, sha256: done.sha256 });
                (state.cursor_file, state.cursor_next) = (file + 1, 0);
                prog.bytes = base + file_start[file] + f.bytes;
            }
        }
        state.train = train.sync()?;
        state.val = val.sync()?;
        state.save(&staging)?;
        prog.tokens = train.total_tokens() + val.total_tokens();
        prog.documents = state.docs.train + state.docs.val;
        progress(&prog);
        Ok(())
    })?;

    let train_shards = train.finish()?;
    let val_shards = val.finish()?;
    let train_tokens: u64 = train_shards.iter().map(|s| s.tokens).sum();
    let val_tokens: u64 = val_shards.iter().map(|s| s.tokens).sum();
    if state.docs.train + state.docs.val == 0 {
        let detail = if state.bad.is_empty() {
            "every record is empty".to_string()
        } else {
            format!("every record was skipped ({})", describe_bad(&state.bad))
        };
        return Err(DataError::NoDocuments { inputs: join_paths(inputs), detail });
    }
    for (split, n) in [("train", train_tokens), ("val", val_tokens)] {
        if n == 0 {
            return Err(DataError::EmptySplit {
                split,
                total_tokens: train_tokens + val_tokens,
                val_fraction: opts.val_fraction,
                documents: state.docs.train + state.docs.val,
            });
        }
    }
    let mut meta = Meta::new(tokenizer.kind(), vocab_size, state.chars.clone());
    meta.train_tokens = train_tokens;
    meta.val_tokens = val_tokens;
    meta.val_fraction = opts.val_fraction;
    meta.inputs = state.inputs.clone();
    meta.shards = Some(Shards { train: train_shards, val: val_shards });
    meta.split = Some(
        match (opts.val_inputs.is_empty(), opts.split) {
            (false, _) => "inputs",
            (true, SplitMode::Documents) => "documents",
            (true, SplitMode::Tail) => "tail",
        }
        .to_string(),
    );
    meta.documents = Some(state.docs);
    meta.bad_records = state.bad.clone();
    meta.bad_record_examples = state.bad_examples.clone();
    if files.iter().any(|f| f.0.format != Format::Text) {
        meta.text_field = Some(opts.text_field.clone());
    }
    if let Tokenizer::Hf(h) = &tokenizer {
        meta.hf = Some(h.meta.clone());
        meta.tokenizer_json = Some(h.json.clone());
    }
    commit(out, &staging, &meta)?;
    Ok(meta)
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

fn describe_bad(bad: &BTreeMap<String, u64>) -> String {
    bad.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")
}

fn record_unit(input: &Input) -> &'static str {
    match input.format {
        Format::Text => "file",
        Format::Jsonl => "line",
        Format::Parquet => "row",
    }
}

fn bad_record_error(input: &Input, number: u64, bad: &BadRecord) -> DataError {
    if let (Format::Text, BadRecord::NotUtf8(offset)) = (input.format, bad) {
        return DataError::NotUtf8 { path: input.path.clone(), offset: *offset };
    }
    DataError::BadRecord { path: input.path.clone(), unit: record_unit(input), number, reason: bad.to_string() }
}

/// Takes `OUT/.prepare.lock` (blocking while another prepare holds it).
fn lock_folder(out: &Path) -> Result<File, DataError> {
    let path = out.join(LOCK);
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(DataError::io(&path))?;
    file.lock().map_err(|e| DataError::Locked { path: path.clone(), reason: format!("cannot take the prepare lock: {e}") })?;
    Ok(file)
}

/// A hash of everything that decides the output: a resume needs the same.
fn fingerprint(files: &[(Input, bool)], opts: &PrepareOptions, hf_sha: Option<&str>) -> Result<String, DataError> {
    let mut h = Sha256::new();
    let mut line = |s: String| {
        h.update(s.as_bytes());
        h.update(b"\n");
    };
    line(format!("state v{STATE_VERSION}"));
    for (f, val) in files {
        let m = fs::metadata(&f.path).map_err(DataError::io(&f.path))?;
        let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        line(format!("{} {} {} {}", f.path.display(), f.bytes, mtime, val));
    }
    line(format!(
        "{:?} {} {:?} {} {:?} {} {:?} {} {:?}",
        opts.tokenizer, opts.val_fraction, opts.split, opts.text_field, opts.on_error, opts.shard_tokens, opts.eod_token, opts.add_special_tokens, hf_sha
    ));
    Ok(hex(&h.finalize()))
}

/// What `state.json` keeps between a killed prepare and its rerun.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    version: u32,
    fingerprint: String,
    chars: Option<String>,
    /// The next record to read: file index and record number (see `input::read_records`).
    cursor_file: usize,
    cursor_next: u64,
    /// Documents of the training inputs seen (the split rule's `d`).
    train_input_docs: u64,
    docs: DocCounts,
    bad: BTreeMap<String, u64>,
    #[serde(default)]
    bad_examples: Vec<String>,
    inputs: Vec<InputFile>,
    train: WriterState,
    val: WriterState,
}

impl State {
    fn new(fingerprint: String) -> Self {
        State {
            version: STATE_VERSION,
            fingerprint,
            chars: None,
            cursor_file: 0,
            cursor_next: 0,
            train_input_docs: 0,
            docs: DocCounts { train: 0, val: 0 },
            bad: BTreeMap::new(),
            bad_examples: Vec::new(),
            inputs: Vec::new(),
            train: WriterState::default(),
            val: WriterState::default(),
        }
    }

    /// The saved state, if any and readable (an unreadable one means starting over).
    fn load(staging: &Path) -> Option<State> {
        let text = fs::read_to_string(staging.join(STATE)).ok()?;
        serde_json::from_str::<State>(&text).ok().filter(|s| s.version == STATE_VERSION)
    }

    fn save(&self, staging: &Path) -> Result<(), DataError> {
        let tmp = staging.join(format!("{STATE}.tmp"));
        let text = serde_json::to_string(self).unwrap_or_default();
        let mut f = File::create(&tmp).map_err(DataError::io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(DataError::io(&tmp))?;
        f.sync_all().map_err(DataError::io(&tmp))?;
        fs::rename(&tmp, staging.join(STATE)).map_err(DataError::io(staging.join(STATE)))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct WriterState {
    shards: Vec<Shard>,
    open_tokens: u64,
    open_docs: u64,
}

fn shard_name(split: &str, i: usize) -> (String, String) {
    (format!("{split}-{i:06}.bin"), format!("{split}-{i:06}.idx"))
}

/// Appends one split's documents to fixed-size shards.
struct Writer {
    split: &'static str,
    dir: PathBuf,
    dtype: TokenDtype,
    shard_tokens: u64,
    shards: Vec<Shard>,
    bin: BufWriter<File>,
    idx: BufWriter<File>,
    /// The open shard's two files.
    bin_path: PathBuf,
    idx_path: PathBuf,
    tokens: u64,
    docs: u64,
    buf: Vec<u8>,
}

impl Writer {
    fn open_paths(dir: &Path, split: &str) -> (PathBuf, PathBuf) {
        (dir.join(format!("{split}.open.bin")), dir.join(format!("{split}.open.idx")))
    }

    /// Opens the split's open shard as `st` recorded it: a shard finished after
    /// the last save is reopened, anything written after the save is cut off.
    fn open(dir: &Path, split: &'static str, dtype: TokenDtype, shard_tokens: u64, st: &WriterState) -> Result<Self, DataError> {
        let (bin_path, idx_path) = Self::open_paths(dir, split);
        let n = st.shards.len();
        let (next_bin, next_idx) = shard_name(split, n);
        // A shard closed after the last save is the open shard the save knows: put
        // it back (over a new, empty open file if `cut` got that far), each file on
        // its own since a kill may fall between the two renames.
        for (open, done) in [(&bin_path, dir.join(&next_bin)), (&idx_path, dir.join(&next_idx))] {
            if done.exists() {
                fs::rename(&done, open).map_err(DataError::io(open))?;
            }
        }
        for i in n.. {
            let (b, x) = shard_name(split, i);
            if !dir.join(&b).exists() && !dir.join(&x).exists() {
                break;
            }
            let _ = fs::remove_file(dir.join(b));
            let _ = fs::remove_file(dir.join(x));
        }
        let open = |path: &Path, len: u64| -> Result<BufWriter<File>, DataError> {
            let mut f = OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(DataError::io(path))?;
            let have = f.metadata().map_err(DataError::io(path))?.len();
            if have < len {
                return Err(DataError::SizeMismatch {
                    path: path.to_path_buf(),
                    actual_bytes: have,
                    expected_bytes: len,
                    tokens: len,
                    bytes_per_token: 1,
                });
            }
            f.set_len(len).map_err(DataError::io(path))?;
            f.seek(SeekFrom::End(0)).map_err(DataError::io(path))?;
            Ok(BufWriter::with_capacity(1 << 20, f))
        };
        let bin = open(&bin_path, st.open_tokens * dtype.size() as u64)?;
        let idx = open(&idx_path, st.open_docs * 8)?;
        Ok(Writer {
            split,
            dir: dir.to_path_buf(),
            dtype,
            shard_tokens,
            shards: st.shards.clone(),
            bin,
            idx,
            bin_path,
            idx_path,
            tokens: st.open_tokens,
            docs: st.open_docs,
            buf: Vec::new(),
        })
    }

    fn total_tokens(&self) -> u64 {
        self.shards.iter().map(|s| s.tokens).sum::<u64>() + self.tokens
    }

    /// One document: its tokens, then the separator.
    fn document(&mut self, tokens: &[u32], separator: &[u32]) -> Result<(), DataError> {
        self.idx.write_all(&self.tokens.to_le_bytes()).map_err(DataError::io(&self.idx_path))?;
        self.docs += 1;
        self.write(tokens)?;
        self.write(separator)
    }

    fn write(&mut self, mut tokens: &[u32]) -> Result<(), DataError> {
        while !tokens.is_empty() {
            let room = (self.shard_tokens - self.tokens) as usize;
            let (now, rest) = tokens.split_at(room.min(tokens.len()));
            self.buf.clear();
            match self.dtype {
                // The dtype was chosen from the vocabulary size, so every id fits.
                TokenDtype::U16 => now.iter().for_each(|&t| self.buf.extend_from_slice(&(t as u16).to_le_bytes())),
                TokenDtype::U32 => now.iter().for_each(|&t| self.buf.extend_from_slice(&t.to_le_bytes())),
            }
            self.bin.write_all(&self.buf).map_err(DataError::io(&self.bin_path))?;
            self.tokens += now.len() as u64;
            if self.tokens == self.shard_tokens {
                self.cut()?;
            }
            tokens = rest;
        }
        Ok(())
    }

    /// Flushes and syncs the open shard; returns what a resume needs.
    fn sync(&mut self) -> Result<WriterState, DataError> {
        for (w, p) in [(&mut self.bin, &self.bin_path), (&mut self.idx, &self.idx_path)] {
            w.flush().map_err(DataError::io(p))?;
            w.get_ref().sync_all().map_err(DataError::io(p))?;
        }
        Ok(WriterState { shards: self.shards.clone(), open_tokens: self.tokens, open_docs: self.docs })
    }

    /// Closes the open shard under its final name and opens the next one.
    fn cut(&mut self) -> Result<(), DataError> {
        self.sync()?;
        let (bin_path, idx_path) = (self.bin_path.clone(), self.idx_path.clone());
        let sha256 = input::file_sha256(&bin_path)?;
        let (file, index) = shard_name(self.split, self.shards.len());
        fs::rename(&bin_path, self.dir.join(&file)).map_err(DataError::io(self.dir.join(&file)))?;
        fs::rename(&idx_path, self.dir.join(&index)).map_err(DataError::io(self.dir.join(&index)))?;
        self.shards.push(Shard { file, index, tokens: self.tokens, documents: self.docs, sha256 });
        let create = |p: &Path| File::create(p).map(|f| BufWriter::with_capacity(1 << 20, f)).map_err(DataError::io(p));
        self.bin = create(&bin_path)?;
        self.idx = create(&idx_path)?;
        self.tokens = 0;
        self.docs = 0;
        Ok(())
    }

    /// Closes the last (short) shard; returns every shard.
    fn finish(mut self) -> Result<Vec<Shard>, DataError> {
        if self.tokens > 0 {
            self.cut()?;
        }
        let _ = fs::remove_file(&self.bin_path);
        let _ = fs::remove_file(&self.idx_path);
        Ok(self.shards)
    }
}

/// Moves the finished dataset from `staging` into `out` (see the module doc).
fn commit(out: &Path, staging: &Path, meta: &Meta) -> Result<(), DataError> {
    // From here a crash means starting over, never a half-moved dataset resumed.
    fs::remove_file(staging.join(STATE)).map_err(DataError::io(staging.join(STATE)))?;
    let meta_path = out.join(META_FILE);
    match fs::remove_file(&meta_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(DataError::io(&meta_path)(e)),
    }
    // The previous dataset's files (format 1 or 2).
    for entry in fs::read_dir(out).map_err(DataError::io(out))? {
        let path = entry.map_err(DataError::io(out))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if is_dataset_file(name) {
            fs::remove_file(&path).map_err(DataError::io(&path))?;
        }
    }
    let shards = meta.shards.as_ref().map(|s| s.train.iter().chain(&s.val).collect::<Vec<_>>()).unwrap_or_default();
    for s in shards {
        for name in [&s.file, &s.index] {
            fs::rename(staging.join(name), out.join(name)).map_err(DataError::io(out.join(name)))?;
        }
    }
    if let Some(json) = &meta.tokenizer_json {
        write_atomic(&out.join(TOKENIZER_JSON), json.as_bytes())?;
    }
    write_atomic(&meta_path, meta.to_json().as_bytes())?;
    if let Ok(d) = File::open(out) {
        let _ = d.sync_all();
    }
    let _ = fs::remove_dir_all(staging);
    Ok(())
}

/// Files a prepare owns in its output folder.
fn is_dataset_file(name: &str) -> bool {
    if matches!(name, "train.bin" | "val.bin" | TOKENIZER_JSON) {
        return true;
    }
    let Some((split, rest)) = name.split_once('-') else { return false };
    let Some((num, ext)) = rest.split_once('.') else { return false };
    matches!(split, "train" | "val") && num.len() == 6 && num.bytes().all(|b| b.is_ascii_digit()) && matches!(ext, "bin" | "idx")
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(DataError::io(&tmp))?;
    f.write_all(bytes).map_err(DataError::io(&tmp))?;
    f.sync_all().map_err(DataError::io(&tmp))?;
    fs::rename(&tmp, path).map_err(DataError::io(path))
}

/// First pass for char: the char set of every document, plus '\n' (the
/// separator's char, so it is always encodable).
fn scan_chars(files: &[(Input, bool)], opts: &PrepareOptions, progress: &mut dyn FnMut(u64)) -> Result<CharVocab, DataError> {
    let mut all = BTreeSet::new();
    all.extend(CHAR_SEPARATOR.chars());
    let field = opts.text_field.as_str();
    let mut before = 0u64;
    let mut current = 0usize;
    stream(files, (0, 0), field, opts.batch_bytes, &mut |event| {
        match event {
            Event::Batch(items, file_bytes) => {
                let file = items.last().map_or(current, |i| i.file);
                let sets: Vec<Result<BTreeSet<char>, DataError>> = items
                    .into_par_iter()
                    .map(|it| match it.raw.parse(field) {
                        Ok(text) => Ok(text.chars().collect()),
                        Err(_) if opts.on_error == OnError::Skip => Ok(BTreeSet::new()),
                        Err(bad) => Err(bad_record_error(&files[it.file].0, it.number, &bad)),
                    })
                    .collect();
                for s in sets {
                    all.extend(s?);
                }
                if file != current {
                    before += files[current..file].iter().map(|f| f.0.bytes).sum::<u64>();
                    current = file;
                }
                progress(before + file_bytes);
            }
            Event::FileDone(file, _) => {
                before = files[..=file].iter().map(|f| f.0.bytes).sum();
                current = file + 1;
                progress(before);
            }
        }
        Ok(())
    })?;
    Ok(CharVocab::new(all))
}

struct Item {
    file: usize,
    number: u64,
    raw: RawRecord,
}

enum Event {
    /// Records in order, and the raw bytes read of the last record's file.
    Batch(Vec<Item>, u64),
    /// A file was read to its end.
    FileDone(usize, FileDone),
}

enum Outcome {
    Doc(usize, u64, Vec<u32>),
    Bad(usize, u64, BadRecord),
    Fail(DataError),
}

/// Reads `files` from record `start` on a reader thread, handing `sink`
/// batches of about `batch_bytes` in order. Stops at the first error of
/// either side.
fn stream(
    files: &[(Input, bool)],
    start: (usize, u64),
    field: &str,
    batch_bytes: usize,
    sink: &mut dyn FnMut(Event) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let (tx, rx) = mpsc::sync_channel::<Result<Event, DataError>>(QUEUED_BATCHES);
    std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let cancelled = || DataError::Unreadable { path: PathBuf::new(), reason: "cancelled".into() };
            for (i, (f, _)) in files.iter().enumerate().skip(start.0) {
                let skip = if i == start.0 { start.1 } else { 0 };
                let mut batch = Vec::new();
                let mut bytes = 0usize;
                let result = input::read_records(f, field, skip, &mut |number, raw, file_bytes| {
                    bytes += raw.len();
                    batch.push(Item { file: i, number, raw });
                    if bytes >= batch_bytes {
                        bytes = 0;
                        tx.send(Ok(Event::Batch(std::mem::take(&mut batch), file_bytes))).map_err(|_| cancelled())?;
                    }
                    Ok(())
                });
                let done = match result {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                if !batch.is_empty() && tx.send(Ok(Event::Batch(batch, f.bytes))).is_err() {
                    return;
                }
                if tx.send(Ok(Event::FileDone(i, done))).is_err() {
                    return;
                }
            }
        });
        let mut result = Ok(());
        for event in rx.iter() {
            result = event.and_then(&mut *sink);
            if result.is_err() {
                break;
            }
        }
        // Dropping the receiver (by leaving the loop above) makes the reader's
        // next send fail, so it stops; join it.
        drop(rx);
        if let Err(panic) = reader.join() {
            std::panic::resume_unwind(panic);
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_files_are_recognised() {
        for yes in ["train.bin", "val.bin", "train-000000.bin", "val-000123.idx", "tokenizer.json"] {
            assert!(is_dataset_file(yes), "{yes}");
        }
        for no in ["meta.json", "train-0.bin", "train-000000.txt", "notes.bin", "val-00000a.idx", ".prepare"] {
            assert!(!is_dataset_file(no), "{no}");
        }
    }

    #[test]
    fn document_split_takes_every_kth() {
        let pick = |d: u64, f: f64| ((d + 1) as f64 * f).floor() > (d as f64 * f).floor();
        let val: Vec<u64> = (0..42).filter(|&d| pick(d, 0.1)).collect();
        assert_eq!(val, vec![9, 19, 29, 39]);
        assert_eq!((0..1000).filter(|&d| pick(d, 0.25)).count(), 250);
        assert_eq!((0..3).filter(|&d| pick(d, 0.1)).count(), 0);
    }
}

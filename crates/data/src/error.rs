//! The crate's one error type. Every variant names the file (and, where it
//! applies, the byte offset, key or token) so a user can fix the input without
//! reading code.

use std::path::PathBuf;

/// Everything that can go wrong while preparing, opening or reading a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An `--input` path does not exist.
    #[error("input {path} does not exist")]
    InputNotFound { path: PathBuf },

    /// An input is neither a regular file nor a folder (a socket, a fifo...).
    #[error("input {path} is not a regular file or a folder")]
    InputNotRegular { path: PathBuf },

    /// No input text at all: no `.txt` file in the folders, or only empty files.
    #[error("empty corpus: no text found in {inputs} (folders contribute their *.txt files, recursively)")]
    EmptyCorpus { inputs: String },

    /// The corpus is too small to give both splits at least one token.
    #[error("the {split} split would be empty ({documents} documents, {total_tokens} tokens in all, val fraction {val_fraction}: validation takes every round(1/f)-th document); give more documents, change --val-fraction, give --val-input FILES, or use --split tail to cut every document's tokens")]
    EmptySplit { split: &'static str, total_tokens: u64, val_fraction: f64, documents: u64 },

    /// An input file is not valid UTF-8.
    #[error("{path}: not valid UTF-8 at byte offset {offset}")]
    NotUtf8 { path: PathBuf, offset: u64 },

    /// `--val-fraction` must lie strictly between 0 and 1.
    #[error("val fraction must be in the open interval (0, 1), got {value}")]
    BadValFraction { value: f64 },

    /// A tokenizer name that is neither `gpt2` nor `char`.
    #[error("unknown tokenizer {name:?}: expected \"gpt2\", \"char\" or a path to a tokenizer.json (or a folder holding one)")]
    UnknownTokenizer { name: String },

    /// The char tokenizer met a character that is not in its vocabulary.
    #[error("character {ch:?} (U+{code:04X}) at byte offset {offset} is not in the char vocabulary")]
    UnknownChar { ch: char, code: u32, offset: usize },

    /// The tokenizers library failed on a text.
    #[error("tokenizer failed: {reason}")]
    Encode { reason: String },

    /// The embedded GPT-2 vocabulary failed to load (a broken build of tiktoken-rs).
    #[error("cannot load the GPT-2 (r50k_base) vocabulary: {reason}")]
    Gpt2Vocab { reason: String },

    /// `meta.json` lists no char vocabulary although the tokenizer is `char`.
    #[error("{path}: tokenizer is \"char\" but the key \"chars\" is missing or has {found} characters for vocab_size {vocab_size}")]
    BadCharVocab { path: PathBuf, found: usize, vocab_size: usize },

    /// The dataset folder does not exist.
    #[error("dataset folder {dir} does not exist; create it with `hyperion data prepare --input data/shakespeare --tokenizer char --out {dir}`")]
    NotPrepared { dir: PathBuf },

    /// The folder exists but has no `meta.json` (never prepared, or a prepare failed).
    #[error("{path} is missing: the folder was never prepared or a prepare failed; run `hyperion data prepare --input PATH... --tokenizer gpt2|char --out {dir}`")]
    MissingMeta { path: PathBuf, dir: PathBuf },

    /// `meta.json` is not valid JSON or misses a key.
    #[error("{path}: corrupt meta.json at line {line}, column {column}: {reason}")]
    BadMeta { path: PathBuf, line: usize, column: usize, reason: String },

    /// `meta.json` parses but a value is impossible.
    #[error("{path}: key \"{key}\": {reason}")]
    MetaValue { path: PathBuf, key: &'static str, reason: String },

    /// A token file's size disagrees with `meta.json` (token count x bytes per token).
    #[error("{path}: size is {actual_bytes} bytes but meta.json says {tokens} tokens x {bytes_per_token} bytes = {expected_bytes} bytes")]
    SizeMismatch { path: PathBuf, actual_bytes: u64, expected_bytes: u64, tokens: u64, bytes_per_token: u64 },

    /// A token file has too few tokens for one training window.
    #[error("{path}: {tokens} tokens is too short for block size {block} (needs at least {needed}: a window plus its shifted target)")]
    TooShort { path: PathBuf, tokens: usize, block: usize, needed: usize },

    /// A token id at or above the vocabulary size (a corrupt or foreign `.bin`).
    #[error("{path}: token {token} at byte offset {offset} is outside the vocabulary (size {vocab_size})")]
    BadToken { path: PathBuf, offset: u64, token: u32, vocab_size: usize },

    /// An existing dataset was prepared with another tokenizer.
    #[error("{path} was prepared with tokenizer {found}, but {wanted} was requested; delete the folder or pick another --out")]
    TokenizerMismatch { path: PathBuf, found: String, wanted: String },

    /// A file that cannot be decoded as a whole (corrupt compression, a Parquet
    /// file that does not parse).
    #[error("{path}: cannot read: {reason}")]
    Unreadable { path: PathBuf, reason: String },

    /// A Parquet file without the configured text column.
    #[error("{path}: no column {column:?} (columns: {columns}); choose one with --text-field")]
    NoTextColumn { path: PathBuf, column: String, columns: String },

    /// The Parquet text column holds something else than strings.
    #[error("{path}: column {column:?} is {found}, not text; choose a string column with --text-field")]
    ColumnNotText { path: PathBuf, column: String, found: String },

    /// A record gives no document and `--on-error fail` is in force.
    #[error("{path}: {unit} {number}: {reason} (pass --on-error skip to count and skip such records)")]
    BadRecord { path: PathBuf, unit: &'static str, number: u64, reason: String },

    /// Every record was empty or malformed.
    #[error("no document in {inputs}: {detail}")]
    NoDocuments { inputs: String, detail: String },

    /// A `tokenizer.json` that the tokenizers library does not accept.
    #[error("{path}: not a usable Hugging Face tokenizer.json: {reason}")]
    BadTokenizerFile { path: PathBuf, reason: String },

    /// No end-of-document token could be told for a Hugging Face tokenizer.
    #[error("{path}: {reason}; name it with --eod-token TEXT (or --eod-token none)")]
    NoEodToken { path: PathBuf, reason: String },

    /// A tokenizer file that disagrees with the sha256 recorded for it.
    #[error("{path}: sha256 {found} differs from {expected} recorded in meta.json; the tokenizer file was changed after prepare")]
    TokenizerChanged { path: PathBuf, expected: String, found: String },

    /// Datasets mixed together that were not made with the same tokenizer.
    #[error("data sources {first} and {other} were prepared with different tokenizers ({first_desc} vs {other_desc}); a mixture needs one vocabulary")]
    MixedTokenizers { first: PathBuf, other: PathBuf, first_desc: String, other_desc: String },

    /// A bad mixture weight.
    #[error("data source {dir}: weight {weight} must be a positive finite number")]
    BadWeight { dir: PathBuf, weight: f64 },

    /// Another process holds the prepare lock of the folder.
    #[error("{path}: {reason}")]
    Locked { path: PathBuf, reason: String },

    /// Any other I/O failure, with the file it happened on.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DataError {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DataError {
        let path = path.into();
        move |source| DataError::Io { path, source }
    }
}

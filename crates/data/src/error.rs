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
    #[error("the {split} split would be empty ({total_tokens} tokens in all, val fraction {val_fraction}); give more text or change --val-fraction")]
    EmptySplit { split: &'static str, total_tokens: u64, val_fraction: f64 },

    /// An input file is not valid UTF-8.
    #[error("{path}: not valid UTF-8 at byte offset {offset}")]
    NotUtf8 { path: PathBuf, offset: u64 },

    /// `--val-fraction` must lie strictly between 0 and 1.
    #[error("val fraction must be in the open interval (0, 1), got {value}")]
    BadValFraction { value: f64 },

    /// A tokenizer name that is neither `gpt2` nor `char`.
    #[error("unknown tokenizer {name:?}: expected \"gpt2\" or \"char\"")]
    UnknownTokenizer { name: String },

    /// The char tokenizer met a character that is not in its vocabulary.
    #[error("character {ch:?} (U+{code:04X}) at byte offset {offset} is not in the char vocabulary")]
    UnknownChar { ch: char, code: u32, offset: usize },

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

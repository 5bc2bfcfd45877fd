//! `meta.json`: what a prepared dataset folder holds and how it was made.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::DataError;

/// File name of the metadata written last by [`crate::prepare`].
pub const META_FILE: &str = "meta.json";
/// File name of the training token stream.
pub const TRAIN_FILE: &str = "train.bin";
/// File name of the validation token stream.
pub const VAL_FILE: &str = "val.bin";

/// Which tokenizer turns text into token ids (mirrors the config crate's enum;
/// `data` sits below `config` in the crate graph, so it keeps its own copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// GPT-2's byte-level BPE (tiktoken's `r50k_base`, 50257 tokens).
    Gpt2,
    /// One token per Unicode scalar value; the vocabulary is the corpus's sorted char set.
    Char,
    /// A Hugging Face `tokenizer.json` (kept in the prepared folder).
    Hf,
}

impl TokenizerKind {
    /// The name used on the command line and in `meta.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenizerKind::Gpt2 => "gpt2",
            TokenizerKind::Char => "char",
            TokenizerKind::Hf => "hf",
        }
    }
}

impl fmt::Display for TokenizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TokenizerKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s {
            "gpt2" => Ok(TokenizerKind::Gpt2),
            "char" => Ok(TokenizerKind::Char),
            "hf" => Ok(TokenizerKind::Hf),
            other => Err(DataError::UnknownTokenizer { name: other.to_string() }),
        }
    }
}

/// Width of one token on disk (little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenDtype {
    U16,
    U32,
}

impl TokenDtype {
    /// The narrowest width that holds every id of a `vocab_size` vocabulary:
    /// ids are `0..vocab_size`, so u16 suffices up to 65536 entries.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            TokenDtype::U16
        } else {
            TokenDtype::U32
        }
    }

    /// The name used in `meta.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenDtype::U16 => "u16",
            TokenDtype::U32 => "u32",
        }
    }

    /// Bytes per token on disk.
    pub fn size(self) -> usize {
        match self {
            TokenDtype::U16 => 2,
            TokenDtype::U32 => 4,
        }
    }
}

impl fmt::Display for TokenDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One input file as read by `prepare`, recorded so a dataset can be traced back
/// to (and checked against) its exact source text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    /// The path as found (an explicit input, or a folder input joined with the relative path).
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file's bytes, lowercase hex.
    pub sha256: String,
}

/// Contents of `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub tokenizer: TokenizerKind,
    pub vocab_size: usize,
    pub dtype: TokenDtype,
    pub train_tokens: u64,
    pub val_tokens: u64,
    pub val_fraction: f64,
    /// The char vocabulary in id order (token id = index in this string's chars);
    /// `None` for GPT-2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chars: Option<String>,
    /// Every input file, in the order their tokens appear in the splits.
    pub inputs: Vec<InputFile>,
    /// 1: `train.bin` + `val.bin`; 2: shards listed in [`Meta::shards`].
    #[serde(default = "format_v1")]
    pub format: u32,
    /// The Hugging Face tokenizer's record (`tokenizer: "hf"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf: Option<crate::HfTokenizerMeta>,
    /// Format 2: the token shards of each split, in stream order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<Shards>,
    /// How validation was split off: "documents" (every round(1/f)-th document),
    /// "tail" (the last fraction of each document's tokens) or "inputs" (separate files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// Documents per split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents: Option<DocCounts>,
    /// Records skipped (`--on-error skip`), by kind.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub bad_records: std::collections::BTreeMap<String, u64>,
    /// The first skipped records, each with its file, line or row, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_record_examples: Vec<String>,
    /// The JSONL field / Parquet column the text came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_field: Option<String>,
    /// The `tokenizer.json` text of an hf dataset, attached when the dataset or a
    /// checkpoint is opened (never written into `meta.json`: the file sits beside it).
    #[serde(skip)]
    pub tokenizer_json: Option<std::sync::Arc<String>>,
}

fn format_v1() -> u32 {
    1
}

/// Documents in each split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocCounts {
    pub train: u64,
    pub val: u64,
}

/// One token shard: `<split>-NNNNNN.bin` (tokens) and `.idx` (little-endian
/// u64 offsets, within the shard, of every document that starts in it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    pub file: String,
    pub index: String,
    pub tokens: u64,
    pub documents: u64,
    /// SHA-256 of the `.bin` file.
    pub sha256: String,
}

/// The shards of both splits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shards {
    pub train: Vec<Shard>,
    pub val: Vec<Shard>,
}

impl Meta {
    /// A description with no tokens yet: the tokenizer, its vocabulary and the
    /// narrowest dtype; everything else empty (format 2).
    pub fn new(tokenizer: TokenizerKind, vocab_size: usize, chars: Option<String>) -> Meta {
        Meta {
            tokenizer,
            vocab_size,
            dtype: TokenDtype::for_vocab(vocab_size),
            train_tokens: 0,
            val_tokens: 0,
            val_fraction: 0.1,
            chars,
            inputs: Vec::new(),
            format: 2,
            hf: None,
            shards: None,
            split: None,
            documents: None,
            bad_records: Default::default(),
            bad_record_examples: Vec::new(),
            text_field: None,
            tokenizer_json: None,
        }
    }

    /// Reads and parses `path` (a `meta.json`).
    pub fn read(path: &Path) -> Result<Meta, DataError> {
        let text = std::fs::read_to_string(path).map_err(DataError::io(path))?;
        let meta: Meta = serde_json::from_str(&text).map_err(|e| DataError::BadMeta {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            reason: e.to_string(),
        })?;
        meta.check(path)?;
        Ok(meta)
    }

    /// Consistency checks that serde cannot express.
    fn check(&self, path: &Path) -> Result<(), DataError> {
        // u32 for a small vocabulary wastes space but reads correctly; u16 for a
        // large one would have truncated ids.
        if self.dtype == TokenDtype::U16 && TokenDtype::for_vocab(self.vocab_size) == TokenDtype::U32 {
            return Err(DataError::MetaValue {
                path: path.to_path_buf(),
                key: "dtype",
                reason: format!("u16 cannot hold the ids of vocab_size {}", self.vocab_size),
            });
        }
        if self.vocab_size == 0 {
            return Err(DataError::MetaValue { path: path.to_path_buf(), key: "vocab_size", reason: "is 0".into() });
        }
        if self.tokenizer == TokenizerKind::Hf && self.hf.is_none() {
            return Err(DataError::MetaValue { path: path.to_path_buf(), key: "hf", reason: "missing for tokenizer \"hf\"".into() });
        }
        if let Some(sh) = &self.shards {
            for (split, list, total) in [("train", &sh.train, self.train_tokens), ("val", &sh.val, self.val_tokens)] {
                let sum: u64 = list.iter().map(|s| s.tokens).sum();
                if sum != total {
                    return Err(DataError::MetaValue {
                        path: path.to_path_buf(),
                        key: "shards",
                        reason: format!("the {split} shards hold {sum} tokens but {split}_tokens is {total}"),
                    });
                }
                if let Some(bad) = list.iter().find(|s| s.file.contains(['/', '\\']) || s.index.contains(['/', '\\'])) {
                    return Err(DataError::MetaValue { path: path.to_path_buf(), key: "shards", reason: format!("{:?} is not a file name", bad.file) });
                }
            }
        }
        if self.tokenizer == TokenizerKind::Char {
            let found = self.chars.as_deref().map_or(0, |c| c.chars().count());
            if found != self.vocab_size {
                return Err(DataError::BadCharVocab { path: path.to_path_buf(), found, vocab_size: self.vocab_size });
            }
        }
        Ok(())
    }

    /// A short description of the tokenizer (kind, vocabulary, tokenizer.json hash).
    pub fn tokenizer_desc(&self) -> String {
        let hf = self.hf.as_ref().map(|h| format!(" (tokenizer.json sha256 {})", &h.sha256[..12.min(h.sha256.len())])).unwrap_or_default();
        format!("{} vocab {}{hf}", self.tokenizer, self.vocab_size)
    }

    /// Why data described by `other` is not tokenized like this (`None` if it is):
    /// another tokenizer kind, vocabulary, char set or tokenizer.json.
    pub fn tokenizer_differs(&self, other: &Meta) -> Option<String> {
        let same = self.tokenizer == other.tokenizer
            && self.vocab_size == other.vocab_size
            && self.chars == other.chars
            && self.hf.as_ref().map(|h| &h.sha256) == other.hf.as_ref().map(|h| &h.sha256);
        (!same).then(|| format!("{} vs {}", self.tokenizer_desc(), other.tokenizer_desc()))
    }

    /// Why the tokens described by `other` are not the tokens described by `self`
    /// (token counts, or the checksum of a shard or of an input file), if they differ.
    pub fn data_differs(&self, other: &Meta) -> Option<String> {
        if (self.train_tokens, self.val_tokens) != (other.train_tokens, other.val_tokens) {
            return Some(format!(
                "{} + {} train + val tokens vs {} + {}",
                self.train_tokens, self.val_tokens, other.train_tokens, other.val_tokens
            ));
        }
        if let (Some(a), Some(b)) = (&self.shards, &other.shards) {
            for (split, a, b) in [("train", &a.train, &b.train), ("val", &a.val, &b.val)] {
                if let Some((x, y)) = a.iter().zip(b).find(|(x, y)| x.sha256 != y.sha256) {
                    return Some(format!("{split} shard {} has sha256 {} vs {}", y.file, short(&x.sha256), short(&y.sha256)));
                }
                if a.len() != b.len() {
                    return Some(format!("{} vs {} {split} shards", a.len(), b.len()));
                }
            }
        }
        let sums = |m: &Meta| m.inputs.iter().map(|i| i.sha256.clone()).collect::<Vec<_>>();
        (sums(self) != sums(other)).then(|| "the input files' sha256 differ".to_string())
    }

    /// Serializes to pretty JSON (the form written to disk).
    pub fn to_json(&self) -> String {
        // Meta holds only strings, numbers and enums: serialization cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}

/// The first 12 hex digits of a checksum, for messages.
fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

//! Any Hugging Face `tokenizer.json` (Llama 3, Mistral, Qwen, GPT-NeoX...),
//! through Hugging Face's own `tokenizers` crate, so ids equal the Python
//! library's.
//!
//! Conventions. A document is encoded with `add_special_tokens` on by default,
//! which applies the file's post-processor exactly as `transformers` does for
//! one sequence (Llama and Mistral put BOS in front; GPT-2 and NeoX add
//! nothing), then the end-of-document token is appended. That token is, in
//! order: the one given (`--eod-token`), `eos_token` of a
//! `tokenizer_config.json` next to the file, or the first of the special
//! tokens `<|endoftext|>`, `<|end_of_text|>`, `</s>`, `<eos>`, `<|im_end|>` the
//! vocabulary holds; otherwise prepare stops and asks for one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::input::hex;
use crate::DataError;

/// The file name a prepared folder, a checkpoint and an export keep it under.
pub const TOKENIZER_JSON: &str = "tokenizer.json";

const EOD_CANDIDATES: [&str; 5] = ["<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>"];

/// What `meta.json` records about a Hugging Face tokenizer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HfTokenizerMeta {
    /// SHA-256 of the `tokenizer.json` bytes (the copy in the prepared folder).
    pub sha256: String,
    /// Whether documents were encoded with the post-processor's special tokens.
    pub add_special_tokens: bool,
    /// The end-of-document token's text, `None` when documents are not separated.
    pub eod_token: Option<String>,
    /// Its id(s).
    pub eod: Vec<u32>,
    /// `tokenizer_config.json` found next to the source file, kept for exports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

/// A loaded `tokenizer.json` with its conventions.
#[derive(Clone)]
pub struct HfTokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    /// The file's exact bytes (they travel with the data, checkpoints, exports).
    pub json: Arc<String>,
    pub meta: HfTokenizerMeta,
    vocab_size: usize,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HfTokenizer(sha256 {}, vocab {})", &self.meta.sha256[..12], self.vocab_size)
    }
}

/// `path` itself, or `path/tokenizer.json` for a folder.
pub fn tokenizer_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(TOKENIZER_JSON)
    } else {
        path.to_path_buf()
    }
}

impl HfTokenizer {
    /// Loads `path` (a `tokenizer.json` or a folder holding one). `eod` names
    /// the end-of-document token (`Some("none")`: no separator); `None` finds it
    /// as the module doc says.
    pub fn load(path: &Path, eod: Option<&str>, add_special_tokens: bool) -> Result<Self, DataError> {
        let file = tokenizer_file(path);
        if !file.is_file() {
            return Err(DataError::InputNotFound { path: file });
        }
        let json = std::fs::read_to_string(&file).map_err(|e| DataError::BadTokenizerFile { path: file.clone(), reason: e.to_string() })?;
        let config = file.parent().map(|d| d.join("tokenizer_config.json")).filter(|p| p.is_file());
        let config = match config {
            Some(p) => Some(std::fs::read_to_string(&p).map_err(DataError::io(&p))?),
            None => None,
        };
        let mut tok = Self::from_json(&file, json, None)?;
        let eod_token = match eod {
            Some("none") => None,
            Some(t) => Some(t.to_string()),
            None => Some(tok.find_eod(&file, config.as_deref())?),
        };
        let eod_ids = match &eod_token {
            None => Vec::new(),
            Some(t) => match tok.inner.token_to_id(t) {
                Some(id) => vec![id],
                None => {
                    return Err(DataError::NoEodToken {
                        path: file,
                        reason: format!("the end-of-document token {t:?} is not in the vocabulary"),
                    })
                }
            },
        };
        tok.meta = HfTokenizerMeta { sha256: tok.meta.sha256.clone(), add_special_tokens, eod_token, eod: eod_ids, config };
        Ok(tok)
    }

    /// Parses `json` (the contents of `origin`); `meta`, when given, must match
    /// its sha256 (a tokenizer stored with data or a checkpoint).
    pub fn from_json(origin: &Path, json: String, meta: Option<&HfTokenizerMeta>) -> Result<Self, DataError> {
        let sha256 = hex(&Sha256::digest(json.as_bytes()));
        if let Some(m) = meta {
            if m.sha256 != sha256 {
                return Err(DataError::TokenizerChanged { path: origin.to_path_buf(), expected: m.sha256.clone(), found: sha256 });
            }
        }
        let inner = tokenizers::Tokenizer::from_bytes(json.as_bytes())
            .map_err(|e| DataError::BadTokenizerFile { path: origin.to_path_buf(), reason: e.to_string() })?;
        let vocab_size = inner.get_vocab(true).values().map(|&id| id as usize + 1).max().unwrap_or(0);
        if vocab_size == 0 {
            return Err(DataError::BadTokenizerFile { path: origin.to_path_buf(), reason: "the vocabulary is empty".into() });
        }
        let meta = meta.cloned().unwrap_or(HfTokenizerMeta {
            sha256,
            add_special_tokens: true,
            eod_token: None,
            eod: Vec::new(),
            config: None,
        });
        Ok(HfTokenizer { inner: Arc::new(inner), json: Arc::new(json), meta, vocab_size })
    }

    fn find_eod(&self, file: &Path, config: Option<&str>) -> Result<String, DataError> {
        if let Some(text) = config {
            let v: serde_json::Value = serde_json::from_str(text).map_err(|e| DataError::BadTokenizerFile {
                path: file.with_file_name("tokenizer_config.json"),
                reason: e.to_string(),
            })?;
            let eos = match v.get("eos_token") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Object(o)) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
                _ => None,
            };
            if let Some(eos) = eos {
                return Ok(eos);
            }
        }
        EOD_CANDIDATES
            .iter()
            .find(|t| self.inner.token_to_id(t).is_some())
            .map(|t| t.to_string())
            .ok_or_else(|| DataError::NoEodToken {
                path: file.to_path_buf(),
                reason: format!(
                    "no tokenizer_config.json with eos_token next to it, and none of {} is in the vocabulary",
                    EOD_CANDIDATES.join(" ")
                ),
            })
    }

    /// One document's ids, with the post-processor's special tokens when
    /// `add_special_tokens` (no end-of-document token: the caller adds it).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        self.inner
            .encode_fast(text, self.meta.add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| DataError::Encode { reason: e.to_string() })
    }

    /// Ids to text (special tokens kept, so a sample shows document bounds).
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_else(|e| format!("<decode failed: {e}>"))
    }

    /// The id of a token's text, if the vocabulary holds it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of ids (one past the largest id, added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

//! Tokenizers: GPT-2 byte-level BPE and a character vocabulary.
//!
//! GPT-2 uses tiktoken's `r50k_base` ranks through the `tiktoken-rs` crate, which
//! embeds the vocabulary file in the binary (`include_str!`), so nothing is
//! downloaded. BPE as in Radford et al. 2019, "Language Models are Unsupervised
//! Multitask Learners", sec. 2.2 (byte-level BPE over a regex pre-split).
//!
//! Special tokens: [`Tokenizer::encode`] recognizes the literal text
//! `<|endoftext|>` as token 50256, so a prompt can open a fresh document and
//! `decode(encode(s)) == s` for every string. `prepare` does NOT use this
//! path for file contents: it encodes each file with [`Tokenizer::encode_ordinary`]
//! (the literal text becomes ordinary tokens) and inserts 50256 itself between
//! documents, so text that merely mentions the marker cannot split a document.

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

use crate::{DataError, Meta, TokenizerKind};

/// GPT-2's end-of-text token id, the document separator of the gpt2 datasets.
pub const GPT2_EOT: u32 = 50256;
/// GPT-2's vocabulary size (50000 merges + 256 bytes + `<|endoftext|>`).
pub const GPT2_VOCAB_SIZE: usize = 50257;
/// Document separator of the char datasets (a blank line, as between scenes).
pub const CHAR_SEPARATOR: &str = "\n\n";
const EOT_TEXT: &str = "<|endoftext|>";

/// The GPT-2 BPE tables, built once per process (about 50 ms: parsing the
/// embedded rank file).
fn gpt2_bpe() -> Result<&'static CoreBPE, DataError> {
    static BPE: OnceLock<Result<CoreBPE, String>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::r50k_base().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|reason| DataError::Gpt2Vocab { reason: reason.clone() })
}

/// A tokenizer, built from a dataset's [`Meta`] (or directly for tests).
#[derive(Debug, Clone)]
pub enum Tokenizer {
    /// GPT-2 BPE (`r50k_base`).
    Gpt2(Gpt2),
    /// Characters; id = index in the sorted vocabulary.
    Char(CharVocab),
}

/// Handle to the process-wide GPT-2 tables.
#[derive(Clone)]
pub struct Gpt2 {
    bpe: &'static CoreBPE,
}

impl std::fmt::Debug for Gpt2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gpt2(r50k_base)")
    }
}

/// A character vocabulary: the sorted, de-duplicated chars of a corpus.
#[derive(Debug, Clone)]
pub struct CharVocab {
    chars: Vec<char>,
    ids: HashMap<char, u32>,
}

impl CharVocab {
    /// The vocabulary of `chars` (sorted by code point, duplicates removed).
    pub fn new(chars: impl IntoIterator<Item = char>) -> Self {
        let set: BTreeSet<char> = chars.into_iter().collect();
        let chars: Vec<char> = set.into_iter().collect();
        let ids = chars.iter().enumerate().map(|(i, &c)| (c, i as u32)).collect();
        CharVocab { chars, ids }
    }

    /// The vocabulary as one string, in id order (the form kept in `meta.json`).
    pub fn as_string(&self) -> String {
        self.chars.iter().collect()
    }

    /// Number of distinct chars.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// True when the vocabulary has no chars.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    fn encode_into(&self, text: &str, out: &mut Vec<u32>) -> Result<(), DataError> {
        out.reserve(text.len());
        for (offset, ch) in text.char_indices() {
            match self.ids.get(&ch) {
                Some(&id) => out.push(id),
                None => return Err(DataError::UnknownChar { ch, code: ch as u32, offset }),
            }
        }
        Ok(())
    }
}

impl Tokenizer {
    /// GPT-2 BPE.
    pub fn gpt2() -> Result<Self, DataError> {
        Ok(Tokenizer::Gpt2(Gpt2 { bpe: gpt2_bpe()? }))
    }

    /// A char tokenizer over the chars of `vocab`.
    pub fn char(vocab: &str) -> Self {
        Tokenizer::Char(CharVocab::new(vocab.chars()))
    }

    /// The tokenizer a prepared dataset was made with.
    pub fn from_meta(meta: &Meta) -> Result<Self, DataError> {
        match meta.tokenizer {
            TokenizerKind::Gpt2 => Self::gpt2(),
            TokenizerKind::Char => {
                let chars = meta.chars.as_deref().unwrap_or("");
                let tok = Self::char(chars);
                if tok.vocab_size() != meta.vocab_size || tok.vocab_size() == 0 {
                    return Err(DataError::BadCharVocab {
                        path: crate::META_FILE.into(),
                        found: tok.vocab_size(),
                        vocab_size: meta.vocab_size,
                    });
                }
                Ok(tok)
            }
        }
    }

    /// Which kind this is.
    pub fn kind(&self) -> TokenizerKind {
        match self {
            Tokenizer::Gpt2(_) => TokenizerKind::Gpt2,
            Tokenizer::Char(_) => TokenizerKind::Char,
        }
    }

    /// Encodes `text`. GPT-2: the literal `<|endoftext|>` becomes token 50256
    /// (see the module doc). Char: a char outside the vocabulary is an error
    /// naming it and its byte offset.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        match self {
            Tokenizer::Gpt2(g) => {
                let allowed = std::collections::HashSet::from([EOT_TEXT]);
                // Only `<|endoftext|>` is special in r50k_base and it is allowed,
                // so tiktoken has no disallowed special token to reject.
                g.bpe.encode(text, &allowed).map(|(tokens, _)| tokens).map_err(|e| DataError::Gpt2Vocab {
                    reason: format!("encode failed: {e:?}"),
                })
            }
            Tokenizer::Char(v) => {
                let mut out = Vec::new();
                v.encode_into(text, &mut out)?;
                Ok(out)
            }
        }
    }

    /// Encodes `text` with no special-token handling (what `prepare` uses on file
    /// contents). For char this equals [`Tokenizer::encode`].
    pub fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>, DataError> {
        match self {
            Tokenizer::Gpt2(g) => Ok(g.bpe.encode_ordinary(text)),
            Tokenizer::Char(_) => self.encode(text),
        }
    }

    /// Decodes `tokens` to text. Ids outside the vocabulary decode to U+FFFD, and so
    /// do GPT-2 byte sequences that are not valid UTF-8 (a window cut mid-character).
    pub fn decode(&self, tokens: &[u32]) -> String {
        match self {
            Tokenizer::Gpt2(g) => {
                let mut bytes = Vec::with_capacity(tokens.len() * 4);
                // Decode runs of valid ids at once; an invalid id becomes U+FFFD.
                for run in tokens.split_inclusive(|&t| t as usize >= GPT2_VOCAB_SIZE) {
                    let (valid, bad) = match run.last() {
                        Some(&t) if t as usize >= GPT2_VOCAB_SIZE => (&run[..run.len() - 1], true),
                        _ => (run, false),
                    };
                    // Every id below GPT2_VOCAB_SIZE is in r50k_base's decoder.
                    if let Ok(b) = g.bpe.decode_bytes(valid) {
                        bytes.extend_from_slice(&b);
                    }
                    if bad {
                        bytes.extend_from_slice("\u{FFFD}".as_bytes());
                    }
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Tokenizer::Char(v) => {
                tokens.iter().map(|&t| v.chars.get(t as usize).copied().unwrap_or('\u{FFFD}')).collect()
            }
        }
    }

    /// Number of token ids (ids are `0..vocab_size`).
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Gpt2(_) => GPT2_VOCAB_SIZE,
            Tokenizer::Char(v) => v.len(),
        }
    }

    /// The tokens inserted between documents: `<|endoftext|>` for GPT-2, the ids
    /// of "\n\n" for char (the caller guarantees '\n' is in the vocabulary).
    pub(crate) fn separator(&self) -> Result<Vec<u32>, DataError> {
        match self {
            Tokenizer::Gpt2(_) => Ok(vec![GPT2_EOT]),
            Tokenizer::Char(_) => self.encode(CHAR_SEPARATOR),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_hello_world() {
        let t = Tokenizer::gpt2().unwrap();
        assert_eq!(t.encode("Hello world").unwrap(), vec![15496, 995]);
        assert_eq!(t.decode(&[15496, 995]), "Hello world");
        assert_eq!(t.vocab_size(), 50257);
    }

    #[test]
    fn gpt2_special_token_only_in_encode() {
        let t = Tokenizer::gpt2().unwrap();
        let s = "a<|endoftext|>b";
        let special = t.encode(s).unwrap();
        assert_eq!(special, vec![64, GPT2_EOT, 65]);
        assert_eq!(t.decode(&special), s);
        let ordinary = t.encode_ordinary(s).unwrap();
        assert!(!ordinary.contains(&GPT2_EOT));
        assert_eq!(t.decode(&ordinary), s);
    }

    #[test]
    fn gpt2_decode_invalid_id_is_replacement() {
        let t = Tokenizer::gpt2().unwrap();
        assert_eq!(t.decode(&[15496, 60000, 995]), "Hello\u{FFFD} world");
    }

    #[test]
    fn char_round_trip_and_unknown() {
        let t = Tokenizer::char("cab\n");
        assert_eq!(t.vocab_size(), 4);
        // sorted: '\n' < 'a' < 'b' < 'c'
        assert_eq!(t.encode("abc\n").unwrap(), vec![1, 2, 3, 0]);
        assert_eq!(t.decode(&[3, 2, 1, 9]), "cba\u{FFFD}");
        let err = t.encode("ab z").unwrap_err();
        assert!(matches!(err, DataError::UnknownChar { ch: ' ', offset: 2, .. }), "{err}");
        assert!(err.to_string().contains("' '"), "{err}");
    }
}

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

use rayon::prelude::*;

use tiktoken_rs::CoreBPE;

use crate::{DataError, Meta, TokenizerKind};

/// GPT-2's end-of-text token id, the document separator of the gpt2 datasets.
pub const GPT2_EOT: u32 = 50256;
/// GPT-2's vocabulary size (50000 merges + 256 bytes + `<|endoftext|>`).
pub const GPT2_VOCAB_SIZE: usize = 50257;
/// Document separator of the char datasets (a blank line, as between scenes).
pub const CHAR_SEPARATOR: &str = "\n\n";
const EOT_TEXT: &str = "<|endoftext|>";

/// The GPT-2 BPE tables, built once per process (parsing the embedded rank
/// file) and shared by every `Tokenizer::Gpt2`.
pub(crate) fn gpt2_bpe() -> Result<&'static CoreBPE, DataError> {
    static BPE: OnceLock<Result<CoreBPE, String>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::r50k_base().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|reason| DataError::Gpt2Vocab { reason: reason.clone() })
}

/// Target chunk size for [`Tokenizer::encode_ordinary_parallel`]: large enough
/// that rayon's per-task cost is noise, small enough to spread one big file
/// over all cores and to move a progress bar.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Cut points `0 = c_0 < c_1 < ... < c_k = text.len()` with chunks of about
/// `target` bytes, each cut placed right after a lone '\n': one whose neighbours
/// on both sides are not whitespace.
///
/// Why such a cut cannot change the GPT-2 encoding: BPE merges never cross the
/// pieces of the pre-split regex `'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+|
/// ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` (Radford et al. 2019, sec. 2.2). Only the
/// whitespace alternatives can hold the '\n', and with non-whitespace on both
/// sides the piece is exactly "\n" in the whole text and at the chunk's end
/// alike; the next piece starts at the following char x in both cases, since a
/// piece can reach back over at most one ' ' and the char before x is '\n'.
/// A longer whitespace run would not do: at the end of a chunk `\s+(?!\S)` takes
/// all of "\n\n" (one token, 628) where the whole text splits it ("\n", "\n").
/// Rust's `char::is_whitespace` and the regex's `\s` are both Unicode
/// White_Space. (CRLF text has no lone '\n' and stays one chunk.)
pub(crate) fn chunk_bounds(text: &str, target: usize) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut cuts = vec![0];
    let mut from = target.max(1);
    'outer: while from < text.len() {
        let mut i = from;
        while let Some(off) = bytes[i..].iter().position(|&b| b == b'\n') {
            let cut = i + off + 1;
            // `cut` and `cut - 1` follow / are an ASCII byte: char boundaries.
            let before = text[..cut - 1].chars().next_back();
            match text[cut..].chars().next() {
                Some(c) if !c.is_whitespace() && before.is_some_and(|b| !b.is_whitespace()) => {
                    cuts.push(cut);
                    from = cut + target.max(1);
                    continue 'outer;
                }
                Some(_) => i = cut,
                None => break 'outer,
            }
        }
        break;
    }
    cuts.push(text.len());
    cuts.dedup();
    cuts
}

/// A tokenizer, built from a dataset's [`Meta`] (or directly for tests).
#[derive(Debug, Clone)]
pub enum Tokenizer {
    /// GPT-2 BPE (`r50k_base`).
    Gpt2(Gpt2),
    /// Characters; id = index in the sorted vocabulary.
    Char(CharVocab),
    /// A Hugging Face `tokenizer.json`.
    Hf(crate::HfTokenizer),
}

/// Handle to the process-wide GPT-2 tables.
#[derive(Clone)]
pub struct Gpt2 {
    bpe: &'static CoreBPE,
}

impl Gpt2 {
    /// Runs `f` on this thread's own copy of the GPT-2 tables (built on the
    /// thread's first call), or on the shared one if building it fails.
    ///
    /// Why a copy per thread: tiktoken-rs clones one compiled `fancy_regex` for
    /// its threads, and the clones share the inner regex engine's scratch pool,
    /// so rayon workers encoding at once queue on it (`data prepare` on 2 threads ran
    /// at 0.76x a 2-process Python tiktoken pool with one shared copy, 1.12x with a
    /// copy per thread: docs/benchmarks.md). A freshly built `CoreBPE` compiles its
    /// own regex. The cost is the tables once per thread (~10 MiB).
    fn with_thread_bpe<R>(&self, f: impl FnOnce(&CoreBPE) -> R) -> R {
        thread_local! {
            static BPE: std::cell::OnceCell<Option<CoreBPE>> = const { std::cell::OnceCell::new() };
        }
        let mut f = Some(f);
        let local = BPE.with(|cell| cell.get_or_init(|| tiktoken_rs::r50k_base().ok()).as_ref().map(|b| (f.take().unwrap())(b)));
        match local {
            Some(r) => r,
            None => (f.take().unwrap())(self.bpe),
        }
    }
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

    /// The tokenizer a prepared dataset was made with (a Hugging Face one from
    /// the `tokenizer.json` text attached to `meta` by [`crate::Dataset::open`]
    /// or a checkpoint).
    pub fn from_meta(meta: &Meta) -> Result<Self, DataError> {
        Self::from_meta_and_json(meta, meta.tokenizer_json.as_deref().map(String::as_str))
    }

    /// [`Tokenizer::from_meta`], with the `tokenizer.json` text (from a
    /// prepared folder or a checkpoint) checked against the recorded sha256.
    pub fn from_meta_and_json(meta: &Meta, json: Option<&str>) -> Result<Self, DataError> {
        match meta.tokenizer {
            TokenizerKind::Hf => {
                let (Some(hf), Some(json)) = (meta.hf.as_ref(), json) else {
                    return Err(DataError::MetaValue {
                        path: crate::META_FILE.into(),
                        key: "hf",
                        reason: "a Hugging Face tokenizer needs its tokenizer.json and its \"hf\" record".into(),
                    });
                };
                let tok = crate::HfTokenizer::from_json(std::path::Path::new(crate::TOKENIZER_JSON), json.to_string(), Some(hf))?;
                if tok.vocab_size() != meta.vocab_size {
                    return Err(DataError::MetaValue {
                        path: crate::META_FILE.into(),
                        key: "vocab_size",
                        reason: format!("{} but the tokenizer has {}", meta.vocab_size, tok.vocab_size()),
                    });
                }
                Ok(Tokenizer::Hf(tok))
            }
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
            Tokenizer::Hf(_) => TokenizerKind::Hf,
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
            Tokenizer::Hf(h) => h.encode(text),
        }
    }

    /// Encodes `text` with no special-token handling (what `prepare` uses on file
    /// contents). For char this equals [`Tokenizer::encode`].
    pub fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>, DataError> {
        match self {
            Tokenizer::Gpt2(g) => Ok(g.with_thread_bpe(|bpe| bpe.encode_ordinary(text))),
            Tokenizer::Char(_) | Tokenizer::Hf(_) => self.encode(text),
        }
    }

    /// [`Tokenizer::encode_ordinary`] on chunks of about [`CHUNK_BYTES`] in
    /// parallel (rayon), calling `done(bytes)` as each chunk finishes. The result
    /// equals the sequential encoding: chunks are cut only where BPE pieces must
    /// break anyway (a lone '\n', see `chunk_bounds`).
    pub fn encode_ordinary_parallel(&self, text: &str, done: &(dyn Fn(u64) + Sync)) -> Result<Vec<u32>, DataError> {
        self.encode_chunked(text, CHUNK_BYTES, done)
    }

    pub(crate) fn encode_chunked(&self, text: &str, target: usize, done: &(dyn Fn(u64) + Sync)) -> Result<Vec<u32>, DataError> {
        if let Tokenizer::Hf(h) = self {
            // A tokenizer.json may normalise or add tokens at the text's start:
            // only the whole document encodes like the Python library.
            let ids = h.encode(text)?;
            done(text.len() as u64);
            return Ok(ids);
        }
        let cuts = chunk_bounds(text, target);
        let parts = cuts
            .par_windows(2)
            .map(|w| {
                let tokens = self.encode_ordinary(&text[w[0]..w[1]]);
                done((w[1] - w[0]) as u64);
                tokens
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(parts.concat())
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
            Tokenizer::Hf(h) => h.decode(tokens),
        }
    }

    /// Number of token ids (ids are `0..vocab_size`).
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Gpt2(_) => GPT2_VOCAB_SIZE,
            Tokenizer::Char(v) => v.len(),
            Tokenizer::Hf(h) => h.vocab_size(),
        }
    }

    /// The tokens inserted between documents: `<|endoftext|>` for GPT-2, the ids
    /// of "\n\n" for char (the caller guarantees '\n' is in the vocabulary).
    pub(crate) fn separator(&self) -> Result<Vec<u32>, DataError> {
        match self {
            Tokenizer::Gpt2(_) => Ok(vec![GPT2_EOT]),
            Tokenizer::Char(_) => self.encode(CHAR_SEPARATOR),
            Tokenizer::Hf(h) => Ok(h.meta.eod.clone()),
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
    fn chunk_bounds_cut_after_newline_before_text() {
        let text = "ab\n cd\n\nef\n\u{3000}gh\nij";
        // Only the '\n' between "gh" and "ij" is lone: the others touch ' ',
        // another '\n' or U+3000.
        assert_eq!(chunk_bounds(text, 1), vec![0, 17, text.len()]);
        assert_eq!(chunk_bounds("ab\ncd\nef", 1), vec![0, 3, 6, 8]);
        assert_eq!(chunk_bounds("ab\ncd\nef", 4), vec![0, 6, 8]);
        assert_eq!(chunk_bounds("\nab", 0), vec![0, 3]);
        assert_eq!(chunk_bounds(text, 100), vec![0, text.len()]);
        assert_eq!(chunk_bounds("", 4), vec![0]);
        assert_eq!(chunk_bounds("no newline at all, long", 2), vec![0, 23]);
    }

    #[test]
    fn chunked_encoding_equals_sequential() {
        let play = include_str!("../../../data/shakespeare/hamlet.txt");
        let tricky = "x\n's a\n\n 1\n\n\nword\r\nnext\n\u{00A0}nbsp\n\u{2028}sep\n!?\n42\n";
        let done = std::sync::atomic::AtomicU64::new(0);
        let count = |b: u64| {
            done.fetch_add(b, std::sync::atomic::Ordering::Relaxed);
        };
        for tok in [Tokenizer::gpt2().unwrap(), Tokenizer::char(&format!("{play}{tricky}"))] {
            for text in [play, tricky] {
                let whole = tok.encode_ordinary(text).unwrap();
                for target in [1, 7, 4096] {
                    done.store(0, std::sync::atomic::Ordering::Relaxed);
                    assert_eq!(tok.encode_chunked(text, target, &count).unwrap(), whole, "{:?} {target}", tok.kind());
                    assert_eq!(done.load(std::sync::atomic::Ordering::Relaxed), text.len() as u64);
                }
            }
        }
    }

    #[test]
    fn chunked_gpt2_equals_sequential_on_every_shipped_play() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/shakespeare");
        let tok = Tokenizer::gpt2().unwrap();
        let mut plays = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "txt") {
                let text = std::fs::read_to_string(&path).unwrap();
                let chunked = tok.encode_chunked(&text, 4096, &|_| {}).unwrap();
                assert_eq!(chunked, tok.encode_ordinary(&text).unwrap(), "{}", path.display());
                plays += 1;
            }
        }
        assert_eq!(plays, 42);
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

//! `hyperion-data`: text -> token files -> training windows.
//!
//! * [`prepare`] tokenizes text files (GPT-2 BPE or characters) into a folder
//!   holding `train.bin`, `val.bin` (little-endian u16, or u32 for vocabularies
//!   above 65536) and `meta.json` ([`Meta`]), written atomically.
//! * [`Dataset::open`] memory-maps a prepared folder; [`TokenFile::fill_batch`]
//!   cuts `(B, T)` input/target windows.
//! * [`sample_start`] maps a global sample index to a window start as a pure
//!   function of `(seed, index)`, so resuming and data-parallel sharding replay
//!   exactly the windows of a single uninterrupted run.
//! * [`Tokenizer`] encodes prompts and decodes samples.
//!
//! ```
//! use data::{prepare, Dataset, Tokenizer, TokenizerKind};
//! # fn main() -> Result<(), data::DataError> {
//! let tmp = std::env::temp_dir().join(format!("hyperion-data-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&tmp).unwrap();
//! let text = tmp.join("poem.txt");
//! std::fs::write(&text, "to be or not to be, that is the question").unwrap();
//!
//! let out = tmp.join("ds");
//! let meta = prepare(&[text], TokenizerKind::Char, &out, 0.25, &mut |_done, _total| {})?;
//! // 40 chars: round(40 * 0.25) = 10 go to val; each split ends with "\n\n".
//! assert_eq!((meta.train_tokens, meta.val_tokens), (30 + 2, 10 + 2));
//!
//! let ds = Dataset::open(&out)?;
//! ds.check_block(8)?;
//! let (mut x, mut y) = (vec![0; 2 * 8], vec![0; 2 * 8]);
//! ds.train.fill_batch(1234, 0, 2, 8, &mut x, &mut y);
//! assert_eq!(&x[1..8], &y[0..7]); // targets are the inputs shifted by one
//!
//! let tok = Tokenizer::from_meta(&ds.meta)?;
//! assert_eq!(tok.decode(&tok.encode("to be")?), "to be");
//! # std::fs::remove_dir_all(&tmp).unwrap();
//! # Ok(())
//! # }
//! ```

mod error;
mod hf_tokenizer;
pub mod input;
mod meta;
mod mixture;
mod prepare;
mod sampler;
mod tokenizer;
mod tokenizer_json;
mod tokens;

pub use error::DataError;
pub use hf_tokenizer::{
    gpt2_bytes_to_unicode, gpt2_tokenizer_json, hf_tokenizer_files, hf_tokenizer_files_with_max_length, special_ids, CHAR_SPLIT_REGEX,
    HF_DEFAULT_MODEL_MAX_LENGTH,
};
pub use meta::{DocCounts, InputFile, Meta, Shard, Shards, TokenDtype, TokenizerKind, META_FILE, TRAIN_FILE, VAL_FILE};
pub use mixture::{Source, Split};
pub use prepare::{
    ensure_prepared, prepare, prepare_with, OnError, PrepareOptions, Progress, SplitMode, TokenizerChoice, BATCH_BYTES,
    DEFAULT_SHARD_TOKENS, QUEUED_BATCHES,
};
pub use tokenizer_json::{tokenizer_file, HfTokenizer, HfTokenizerMeta, TOKENIZER_JSON};
pub use sampler::{hash2, sample_start};
pub use tokenizer::{CharVocab, Gpt2, Tokenizer, CHAR_SEPARATOR, CHUNK_BYTES, GPT2_EOT, GPT2_VOCAB_SIZE};
pub use tokens::{Dataset, TokenFile, Tokens};

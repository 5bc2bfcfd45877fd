//! Tokenizer files for a Hugging Face model folder, so that
//! `transformers.AutoTokenizer.from_pretrained(DIR)` encodes exactly like
//! [`crate::Tokenizer`].
//!
//! **GPT-2** (`r50k_base`): the classic `vocab.json` + `merges.txt` pair of
//! GPT-2's byte-level BPE, plus `tokenizer_config.json` and
//! `special_tokens_map.json`. Both tables are derived from tiktoken's ranks
//! (nothing is downloaded):
//!
//! * `vocab.json`: every rank's bytes, written in GPT-2's `bytes_to_unicode`
//!   alphabet, mapped to the rank; `<|endoftext|>` is 50256.
//! * `merges.txt`: `#version: 0.2`, then for every multi-byte token in rank
//!   order the one pair of tokens that tiktoken's BPE joins last when it builds
//!   that token: BPE over the token's bytes using only ranks below its own
//!   stops at exactly two parts, and those are the merge. This gives one merge
//!   per non-byte token (50000, merge `i` makes token `256 + i`), so the HF
//!   pair-ranked BPE applies merges in the same order as tiktoken's
//!   byte-string-ranked BPE. This is the conversion `transformers` uses for
//!   tiktoken models (`TikTokenConverter`), and it reproduces GPT-2's published
//!   `encoder.json` / `vocab.bpe`.
//!
//! **Char**: a `tokenizer.json` (loaded by `PreTrainedTokenizerFast`) with a
//! WordLevel model over the single characters (id = index in `meta.chars`), a
//! pre-tokenizer that isolates every character (`Split` on the regex
//! [`CHAR_SPLIT_REGEX`]), no normalizer and a `Fuse` decoder (tokens are
//! concatenated), plus a `tokenizer_config.json`. A character outside the
//! vocabulary has no id: Hyperion rejects it, and the HF tokenizer reports its
//! unknown-token error (the vocabulary holds no `<unk>`).
//!
//! Both configs set `clean_up_tokenization_spaces: false`, so HF `decode`
//! returns the exact text like [`crate::Tokenizer::decode`] (the hub's gpt2
//! config has `true`, which rewrites e.g. `" ,"` to `","` on decode).

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::json;

use crate::tokenizer::gpt2_bpe;
use crate::{DataError, Meta, TokenizerKind, GPT2_EOT, GPT2_VOCAB_SIZE};

/// `model_max_length` written by [`hf_tokenizer_files`]: GPT-2's context
/// length. Use [`hf_tokenizer_files_with_max_length`] to write the model's own
/// block size.
pub const HF_DEFAULT_MODEL_MAX_LENGTH: usize = 1024;

/// The pre-tokenizer regex of the char `tokenizer.json`: any one code point,
/// newlines included (Oniguruma's `.` does not match `\n`).
pub const CHAR_SPLIT_REGEX: &str = r"[\s\S]";

const EOT_TEXT: &str = "<|endoftext|>";

/// The files to write into a Hugging Face model folder (name, contents) so that
/// `AutoTokenizer.from_pretrained` encodes like Hyperion's tokenizer for `meta`,
/// with `model_max_length` [`HF_DEFAULT_MODEL_MAX_LENGTH`].
///
/// GPT-2: `vocab.json`, `merges.txt`, `tokenizer_config.json`,
/// `special_tokens_map.json`. Char: `tokenizer.json`, `tokenizer_config.json`.
pub fn hf_tokenizer_files(meta: &Meta) -> Result<Vec<(String, Vec<u8>)>, DataError> {
    hf_tokenizer_files_with_max_length(meta, HF_DEFAULT_MODEL_MAX_LENGTH)
}

/// [`hf_tokenizer_files`] with an explicit `model_max_length` (the model's
/// block size, the longest input it accepts).
pub fn hf_tokenizer_files_with_max_length(
    meta: &Meta,
    model_max_length: usize,
) -> Result<Vec<(String, Vec<u8>)>, DataError> {
    match meta.tokenizer {
        TokenizerKind::Gpt2 => gpt2_files(model_max_length),
        TokenizerKind::Char => char_files(meta, model_max_length),
        TokenizerKind::Hf => hf_json_files(meta, model_max_length),
    }
}

/// A Hugging Face tokenizer travels as it came: its `tokenizer.json` bytes and
/// the `tokenizer_config.json` found next to it (or a minimal one naming the
/// end-of-document token as EOS).
fn hf_json_files(meta: &Meta, model_max_length: usize) -> Result<Vec<(String, Vec<u8>)>, DataError> {
    let tok = crate::Tokenizer::from_meta(meta)?;
    let crate::Tokenizer::Hf(h) = tok else { unreachable!("from_meta of an hf meta") };
    let config = match &h.meta.config {
        Some(c) => c.clone().into_bytes(),
        None => {
            let mut v = json!({
                "tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": model_max_length,
                "clean_up_tokenization_spaces": false,
            });
            if let Some(eod) = &h.meta.eod_token {
                v["eos_token"] = json!(eod);
            }
            (serde_json::to_string_pretty(&v).unwrap_or_default() + "\n").into_bytes()
        }
    };
    Ok(vec![(crate::TOKENIZER_JSON.to_string(), h.json.as_bytes().to_vec()), ("tokenizer_config.json".into(), config)])
}

/// BOS and EOS token ids: `<|endoftext|>` (50256) for both with GPT-2; none
/// for char (its datasets separate documents with "\n\n", not a special token).
pub fn special_ids(meta: &Meta) -> (Option<u32>, Option<u32>) {
    match meta.tokenizer {
        TokenizerKind::Gpt2 => (Some(GPT2_EOT), Some(GPT2_EOT)),
        TokenizerKind::Char => (None, None),
        TokenizerKind::Hf => match crate::Tokenizer::from_meta(meta) {
            Ok(crate::Tokenizer::Hf(h)) => {
                let bos = h.meta.config.as_deref().and_then(|c| {
                    let v: serde_json::Value = serde_json::from_str(c).ok()?;
                    let t = match v.get("bos_token")? {
                        serde_json::Value::String(s) => s.clone(),
                        o => o.get("content")?.as_str()?.to_string(),
                    };
                    h.token_id(&t)
                });
                (bos, h.meta.eod.first().copied())
            }
            _ => (None, None),
        },
    }
}

/// GPT-2's reversible byte -> char map (`bytes_to_unicode` in GPT-2's
/// `encoder.py`): printable Latin-1 bytes map to themselves, the other 68 bytes
/// to U+0100.. in byte order, so every token is a printable string.
pub fn gpt2_bytes_to_unicode() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        // Every value is below 0x200: a valid scalar value.
        table[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    table
}

/// GPT-2's BPE tables in tiktoken form: each rank's bytes (index = rank, ranks
/// `0..50256`, `<|endoftext|>` excluded), and the merges as pairs of ranks in
/// merge order (merge `i` makes rank `256 + i`).
pub(crate) struct Gpt2Tables {
    pub(crate) tokens: Vec<Vec<u8>>,
    pub(crate) merges: Vec<(u32, u32)>,
}

pub(crate) fn gpt2_tables() -> Result<Gpt2Tables, DataError> {
    let bpe = gpt2_bpe()?;
    let bad = |reason: String| DataError::Gpt2Vocab { reason };
    let n = GPT2_EOT as usize;
    let mut tokens = Vec::with_capacity(n);
    let mut ranks: HashMap<&[u8], u32> = HashMap::with_capacity(n);
    for r in 0..GPT2_EOT {
        let bytes = bpe.decode_bytes(&[r]).map_err(|e| bad(format!("rank {r} has no bytes: {e:?}")))?;
        tokens.push(bytes);
    }
    for (r, t) in tokens.iter().enumerate() {
        if ranks.insert(t.as_slice(), r as u32).is_some() {
            return Err(bad(format!("rank {r} repeats the bytes of an earlier rank")));
        }
        // The first 256 ranks are the 256 single bytes (in GPT-2's order), all
        // later ones are longer: then merge `i` makes rank `256 + i`.
        if (r < 256) != (t.len() == 1) {
            return Err(bad(format!("rank {r} has {} bytes", t.len())));
        }
    }
    let mut merges = Vec::with_capacity(n - 256);
    for r in 256..GPT2_EOT {
        let t = &tokens[r as usize];
        let parts = bpe_parts(t, &ranks, r);
        match parts.as_slice() {
            &[(0, mid), (_, end)] if end == t.len() => {
                // Both halves are tokens of lower rank (else BPE would not have made them).
                merges.push((ranks[&t[..mid]], ranks[&t[mid..]]));
            }
            _ => return Err(bad(format!("token {r} ({t:?}) is not one merge of two lower-rank tokens"))),
        }
    }
    Ok(Gpt2Tables { tokens, merges })
}

/// tiktoken's BPE on `piece` using only ranks below `max_rank`: repeatedly join
/// the adjacent pair whose concatenation has the lowest rank (leftmost on a
/// tie). Returns the parts as `(start, end)` byte ranges.
fn bpe_parts(piece: &[u8], ranks: &HashMap<&[u8], u32>, max_rank: u32) -> Vec<(usize, usize)> {
    let mut parts: Vec<(usize, usize)> = (0..piece.len()).map(|i| (i, i + 1)).collect();
    loop {
        let mut best: Option<(u32, usize)> = None;
        for i in 0..parts.len().saturating_sub(1) {
            if let Some(&r) = ranks.get(&piece[parts[i].0..parts[i + 1].1]) {
                if r < max_rank && best.is_none_or(|(b, _)| r < b) {
                    best = Some((r, i));
                }
            }
        }
        match best {
            Some((_, i)) => {
                parts[i].1 = parts[i + 1].1;
                parts.remove(i + 1);
            }
            None => return parts,
        }
    }
}

/// GPT-2's tokenizer as one Hugging Face `tokenizer.json` (the same vocabulary
/// and merges as [`hf_tokenizer_files`]: ByteLevel pre-tokenizer and decoder,
/// BPE model, `<|endoftext|>` an added special token), for tools that read
/// only that form and for `--tokenizer gpt2.json` round trips.
pub fn gpt2_tokenizer_json() -> Result<String, DataError> {
    let tables = gpt2_tables()?;
    let alphabet = gpt2_bytes_to_unicode();
    let show = |bytes: &[u8]| -> String { bytes.iter().map(|&b| alphabet[b as usize]).collect() };
    let mut vocab = serde_json::Map::new();
    for (id, t) in tables.tokens.iter().enumerate() {
        vocab.insert(show(t), json!(id));
    }
    vocab.insert(EOT_TEXT.to_string(), json!(GPT2_EOT));
    let merges: Vec<serde_json::Value> = tables
        .merges
        .iter()
        .map(|&(a, b)| json!([show(&tables.tokens[a as usize]), show(&tables.tokens[b as usize])]))
        .collect();
    let byte_level = json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true });
    let v = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": GPT2_EOT, "content": EOT_TEXT, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": true, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    });
    Ok(serde_json::to_string(&v).unwrap_or_default())
}

fn gpt2_files(model_max_length: usize) -> Result<Vec<(String, Vec<u8>)>, DataError> {
    let tables = gpt2_tables()?;
    let alphabet = gpt2_bytes_to_unicode();
    let show = |bytes: &[u8]| -> String { bytes.iter().map(|&b| alphabet[b as usize]).collect() };

    // vocab.json in id order, one entry a line.
    let mut vocab = String::from("{\n");
    for (id, t) in tables.tokens.iter().enumerate() {
        let _ = writeln!(vocab, "  {}: {id},", json_str(&show(t)));
    }
    let _ = writeln!(vocab, "  {}: {GPT2_EOT}\n}}", json_str(EOT_TEXT));

    let mut merges = String::from("#version: 0.2\n");
    for &(a, b) in &tables.merges {
        let _ = writeln!(merges, "{} {}", show(&tables.tokens[a as usize]), show(&tables.tokens[b as usize]));
    }
    debug_assert_eq!(tables.tokens.len() + 1, GPT2_VOCAB_SIZE);

    let config = json!({
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": EOT_TEXT,
        "eos_token": EOT_TEXT,
        "unk_token": EOT_TEXT,
        "model_max_length": model_max_length,
        "add_prefix_space": false,
        "add_bos_token": false,
        "clean_up_tokenization_spaces": false,
        "errors": "replace",
        "added_tokens_decoder": {
            GPT2_EOT.to_string(): {
                "content": EOT_TEXT,
                "lstrip": false,
                "normalized": true,
                "rstrip": false,
                "single_word": false,
                "special": true
            }
        }
    });
    let special = json!({ "bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT });
    Ok(vec![
        ("vocab.json".into(), vocab.into_bytes()),
        ("merges.txt".into(), merges.into_bytes()),
        ("tokenizer_config.json".into(), pretty(&config)),
        ("special_tokens_map.json".into(), pretty(&special)),
    ])
}

fn char_files(meta: &Meta, model_max_length: usize) -> Result<Vec<(String, Vec<u8>)>, DataError> {
    let chars: Vec<char> = meta.chars.as_deref().unwrap_or("").chars().collect();
    // The same check as `Tokenizer::from_meta`: ids are indices in `chars`, so
    // a duplicate or a count off vocab_size would shift them.
    let distinct: std::collections::BTreeSet<char> = chars.iter().copied().collect();
    if chars.is_empty() || chars.len() != meta.vocab_size || distinct.len() != chars.len() {
        return Err(DataError::BadCharVocab {
            path: crate::META_FILE.into(),
            found: distinct.len(),
            vocab_size: meta.vocab_size,
        });
    }
    let mut vocab = String::from("{");
    for (id, c) in chars.iter().enumerate() {
        let sep = if id == 0 { "" } else { "," };
        let _ = write!(vocab, "{sep}\n      {}: {id}", json_str(&c.to_string()));
    }
    vocab.push_str("\n    }");
    // serde_json without `preserve_order` would sort the vocabulary by key; the
    // model object is spliced in by hand to keep id order.
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Split",
            "pattern": { "Regex": CHAR_SPLIT_REGEX },
            "behavior": "Isolated",
            "invert": false
        },
        "post_processor": null,
        "decoder": { "type": "Fuse" },
        "model": "@MODEL@"
    });
    let model = format!("{{\n    \"type\": \"WordLevel\",\n    \"vocab\": {vocab},\n    \"unk_token\": \"<unk>\"\n  }}");
    let text = String::from_utf8(pretty(&tokenizer)).unwrap_or_default().replacen("\"@MODEL@\"", &model, 1);
    let config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": false
    });
    Ok(vec![("tokenizer.json".into(), text.into_bytes()), ("tokenizer_config.json".into(), pretty(&config))])
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn pretty(v: &serde_json::Value) -> Vec<u8> {
    // Values built from strings, numbers and booleans always serialize.
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TokenDtype, Tokenizer};

    fn meta(kind: TokenizerKind, chars: Option<&str>) -> Meta {
        let mut m = Meta::new(kind, chars.map_or(GPT2_VOCAB_SIZE, |c| c.chars().count()), chars.map(str::to_string));
        (m.train_tokens, m.val_tokens, m.dtype) = (1, 1, TokenDtype::U16);
        m
    }

    /// HF-style BPE (pair-ranked merges, as in `tokenizers`' BPE model) over
    /// the derived merges: the ids of `piece`.
    fn hf_bpe(piece: &[u8], merge_rank: &HashMap<(u32, u32), u32>, byte_id: &[u32; 256]) -> Vec<u32> {
        let mut ids: Vec<u32> = piece.iter().map(|&b| byte_id[b as usize]).collect();
        loop {
            let best = (0..ids.len().saturating_sub(1))
                .filter_map(|i| merge_rank.get(&(ids[i], ids[i + 1])).map(|&m| (m, i)))
                .min();
            match best {
                Some((m, i)) => {
                    ids[i] = 256 + m;
                    ids.remove(i + 1);
                }
                None => return ids,
            }
        }
    }

    struct Hf {
        merge_rank: HashMap<(u32, u32), u32>,
        byte_id: [u32; 256],
    }

    fn hf() -> (Gpt2Tables, Hf) {
        let t = gpt2_tables().unwrap();
        let merge_rank = t.merges.iter().enumerate().map(|(i, &p)| (p, i as u32)).collect();
        let mut byte_id = [0u32; 256];
        for (r, tok) in t.tokens[..256].iter().enumerate() {
            byte_id[tok[0] as usize] = r as u32;
        }
        (t, Hf { merge_rank, byte_id })
    }

    /// Pieces roughly like GPT-2's pre-split regex: runs of letters, digits,
    /// whitespace or other chars, a single space before a non-space run joining
    /// that run. They need not match the regex exactly: both BPEs below run on
    /// the same pieces.
    fn pieces(text: &str) -> Vec<&str> {
        let class = |c: char| match c {
            _ if c.is_alphabetic() => 0,
            _ if c.is_numeric() => 1,
            _ if c.is_whitespace() => 2,
            _ => 3,
        };
        let mut runs: Vec<(usize, usize)> = Vec::new();
        let mut last = None;
        for (i, c) in text.char_indices() {
            if last != Some(class(c)) {
                runs.push((i, i));
                last = Some(class(c));
            }
            runs.last_mut().unwrap().1 = i + c.len_utf8();
        }
        for k in 1..runs.len() {
            let (s, e) = runs[k - 1];
            if text[s..e].ends_with(' ') && !text[runs[k].0..].starts_with(char::is_whitespace) {
                runs[k - 1].1 = e - 1;
                runs[k].0 = e - 1;
            }
        }
        runs.into_iter().filter(|(s, e)| s < e).map(|(s, e)| &text[s..e]).collect()
    }

    #[test]
    fn bytes_to_unicode_matches_gpt2() {
        let t = gpt2_bytes_to_unicode();
        assert_eq!(t[b'!' as usize], '!');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[0xAD], 'Ń');
        let distinct: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn one_merge_per_token_and_every_token_is_its_own_bpe() {
        let (t, h) = hf();
        assert_eq!(t.tokens.len(), 50256);
        assert_eq!(t.merges.len(), 50000);
        for (i, &(a, b)) in t.merges.iter().enumerate() {
            let r = 256 + i;
            assert!((a as usize) < r && (b as usize) < r);
            assert_eq!([&t.tokens[a as usize][..], &t.tokens[b as usize][..]].concat(), t.tokens[r]);
        }
        // HF BPE over the merges turns each token's bytes back into that token.
        for (r, tok) in t.tokens.iter().enumerate() {
            assert_eq!(hf_bpe(tok, &h.merge_rank, &h.byte_id), vec![r as u32], "{tok:?}");
        }
        // GPT-2's published first merges (vocab.bpe): "Ġ t", "Ġ a", "h e".
        let a = gpt2_bytes_to_unicode();
        let show = |r: u32| t.tokens[r as usize].iter().map(|&b| a[b as usize]).collect::<String>();
        let first: Vec<String> = t.merges[..3].iter().map(|&(x, y)| format!("{} {}", show(x), show(y))).collect();
        assert_eq!(first, ["Ġ t", "Ġ a", "h e"]);
    }

    #[test]
    fn hf_bpe_over_merges_equals_tiktoken() {
        let (t, h) = hf();
        // tiktoken's own BPE wants its FxHashMap; the hasher type is inferred
        // from the `byte_pair_split` call (rustc-hash is not our dependency).
        let mut ranks = HashMap::with_hasher(Default::default());
        ranks.extend(t.tokens.iter().enumerate().map(|(r, b)| (b.clone(), r as u32)));
        let play = include_str!("../../../data/shakespeare/hamlet.txt");
        let edge = "héllo wörld naïve café 東京 日本語のテキスト 😀👍🏽 👨‍👩‍👧 e\u{301} \u{200B}x \t\ttab  \r\n\
                    ｆｕｌｌ 1234567 3.14159 ---==>> ''' don't I'LL we've \u{FFFD} ÿþ \u{10FFFF}";
        let mut n = 0;
        for text in [play, edge] {
            for p in pieces(text) {
                let want: Vec<u32> = if p.len() == 1 {
                    vec![ranks[&p.as_bytes().to_vec()]]
                } else {
                    tiktoken_rs::byte_pair_split(p.as_bytes(), &ranks).into_iter().map(|s| ranks[s]).collect()
                };
                assert_eq!(hf_bpe(p.as_bytes(), &h.merge_rank, &h.byte_id), want, "{p:?}");
                // and both agree with Hyperion's encoder on a piece it keeps whole
                if !p.trim_start_matches(' ').starts_with(char::is_whitespace) && !p.contains('\'') {
                    assert_eq!(Tokenizer::gpt2().unwrap().encode_ordinary(p).unwrap(), want, "{p:?}");
                }
                n += 1;
            }
        }
        assert!(n > 30_000, "{n}");
    }

    #[test]
    fn gpt2_files_shape() {
        let files = hf_tokenizer_files(&meta(TokenizerKind::Gpt2, None)).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"]);
        let vocab: HashMap<String, u32> = serde_json::from_slice(&files[0].1).unwrap();
        assert_eq!(vocab.len(), GPT2_VOCAB_SIZE);
        assert_eq!(vocab["<|endoftext|>"], 50256);
        assert_eq!(vocab["Hello"], 15496);
        assert_eq!(vocab["Ġworld"], 995);
        assert_eq!(vocab["!"], 0);
        let merges = std::str::from_utf8(&files[1].1).unwrap();
        assert!(merges.starts_with("#version: 0.2\nĠ t\n") && merges.ends_with('\n'));
        assert_eq!(merges.lines().count(), 50001);
        let config: serde_json::Value = serde_json::from_slice(&files[2].1).unwrap();
        assert_eq!(config["tokenizer_class"], "GPT2Tokenizer");
        assert_eq!(config["model_max_length"], 1024);
        assert_eq!(config["eos_token"], "<|endoftext|>");
        let files = hf_tokenizer_files_with_max_length(&meta(TokenizerKind::Gpt2, None), 256).unwrap();
        let config: serde_json::Value = serde_json::from_slice(&files[2].1).unwrap();
        assert_eq!(config["model_max_length"], 256);
    }

    #[test]
    fn char_files_shape_and_special_ids() {
        let m = meta(TokenizerKind::Char, Some("\n !\"ab\u{e9}"));
        let files = hf_tokenizer_files(&m).unwrap();
        assert_eq!(files[0].0, "tokenizer.json");
        let tok: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
        assert_eq!(tok["model"]["type"], "WordLevel");
        assert_eq!(tok["model"]["vocab"]["\n"], 0);
        assert_eq!(tok["model"]["vocab"]["\""], 3);
        assert_eq!(tok["model"]["vocab"]["\u{e9}"], 6);
        assert_eq!(tok["pre_tokenizer"]["pattern"]["Regex"], CHAR_SPLIT_REGEX);
        // id order is kept in the file
        let text = std::str::from_utf8(&files[0].1).unwrap();
        assert!(text.find("\"\\n\": 0").unwrap() < text.find("\"a\": 4").unwrap());
        assert_eq!(special_ids(&m), (None, None));
        assert_eq!(special_ids(&meta(TokenizerKind::Gpt2, None)), (Some(50256), Some(50256)));
        let mut bad = m.clone();
        bad.chars = Some("aab".into());
        bad.vocab_size = 3;
        assert!(matches!(hf_tokenizer_files(&bad), Err(DataError::BadCharVocab { .. })));
    }
}

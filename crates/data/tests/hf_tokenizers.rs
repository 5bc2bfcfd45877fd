//! Hugging Face `tokenizer.json` support against ids made by the Python
//! `tokenizers` library and tiktoken (fixtures committed with the script that
//! made them: `scripts/make_tokenizer_fixtures.py`).

use std::fs;
use std::path::{Path, PathBuf};

use data::{prepare_with, Dataset, HfTokenizer, PrepareOptions, Tokenizer, TokenizerChoice, TokenizerKind};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers")
}

fn load_json(name: &str) -> Value {
    serde_json::from_str(&fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn ids_equal_the_python_tokenizers_library() {
    let texts = load_json("texts.json");
    let expected = load_json("expected_ids.json");
    let texts: Vec<&str> = texts.as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(texts.len(), expected.as_array().unwrap().len());
    for name in ["bpe-bytelevel", "bpe-llamalike"] {
        for (with_special, key) in [(true, "with_special"), (false, "without_special")] {
            let tok = HfTokenizer::load(&fixtures().join(name), None, with_special).unwrap();
            for (i, text) in texts.iter().enumerate() {
                assert_eq!(tok.encode(text).unwrap(), ids(&expected[i][name][key]), "{name} {key} text {i}: {text:?}");
            }
        }
    }
    // Decoding keeps special tokens (a sample shows where documents start); the
    // text after them is the fixture's decode.
    let tok = HfTokenizer::load(&fixtures().join("bpe-llamalike"), None, true).unwrap();
    let decoded = tok.decode(&ids(&expected[0]["bpe-llamalike"]["with_special"]));
    assert_eq!(decoded, format!("<s> {}", expected[0]["bpe-llamalike-decoded"].as_str().unwrap()));
}

#[test]
fn conventions_come_from_tokenizer_config() {
    let byte = HfTokenizer::load(&fixtures().join("bpe-bytelevel"), None, true).unwrap();
    assert_eq!((byte.meta.eod_token.as_deref(), byte.meta.eod.as_slice(), byte.vocab_size()), (Some("<|endoftext|>"), &[999][..], 1000));
    let llama = HfTokenizer::load(&fixtures().join("bpe-llamalike/tokenizer.json"), None, true).unwrap();
    assert_eq!((llama.meta.eod_token.as_deref(), llama.meta.eod.as_slice(), llama.vocab_size()), (Some("</s>"), &[2][..], 800));
    assert_eq!(llama.encode("hi").unwrap()[0], 1, "BOS from the post-processor");
    let none = HfTokenizer::load(&fixtures().join("bpe-llamalike"), Some("none"), true).unwrap();
    assert!(none.meta.eod.is_empty());
    let err = HfTokenizer::load(&fixtures().join("bpe-llamalike"), Some("<nope>"), true).unwrap_err();
    assert!(err.to_string().contains("<nope>") && err.to_string().contains("--eod-token"), "{err}");
    // Without a tokenizer_config.json the usual names are tried.
    let tmp = tempfile::tempdir().unwrap();
    fs::copy(fixtures().join("bpe-llamalike/tokenizer.json"), tmp.path().join("tokenizer.json")).unwrap();
    let bare = HfTokenizer::load(tmp.path(), None, true).unwrap();
    assert_eq!(bare.meta.eod_token.as_deref(), Some("</s>"));
}

#[test]
fn gpt2_as_tokenizer_json_equals_tiktoken() {
    let texts = load_json("texts.json");
    let expected = load_json("expected_ids.json");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tokenizer.json");
    fs::write(&path, data::gpt2_tokenizer_json().unwrap()).unwrap();
    let tok = HfTokenizer::load(&path, None, true).unwrap();
    assert_eq!((tok.vocab_size(), tok.meta.eod.as_slice()), (50257, &[50256][..]));
    for (i, text) in texts.as_array().unwrap().iter().enumerate() {
        let text = text.as_str().unwrap();
        // tokenizers matches special tokens in the text: compare with tiktoken's
        // "allowed_special" encoding (equal to encode_ordinary when there is none).
        let want = ids(&expected[i]["gpt2_tiktoken_allowed_special"]);
        assert_eq!(tok.encode(text).unwrap(), want, "text {i}: {text:?}");
        if !text.contains("<|endoftext|>") {
            assert_eq!(Tokenizer::gpt2().unwrap().encode_ordinary(text).unwrap(), want, "text {i}");
        }
    }
}

#[test]
fn prepare_with_a_tokenizer_json_keeps_it_with_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("c.jsonl");
    let docs: Vec<String> = (0..30).map(|i| format!("Line {i}: to be, or not to be, that is the question.")).collect();
    fs::write(&corpus, docs.iter().map(|d| serde_json::json!({ "text": d }).to_string() + "\n").collect::<String>()).unwrap();
    let out = tmp.path().join("ds");
    let o = PrepareOptions::new(TokenizerChoice::Hf(fixtures().join("bpe-llamalike")));
    let meta = prepare_with(&[corpus], &o, &out, &mut |_| {}).unwrap();
    assert_eq!((meta.tokenizer, meta.vocab_size), (TokenizerKind::Hf, 800));
    let hf = meta.hf.clone().unwrap();
    let copied = fs::read(out.join("tokenizer.json")).unwrap();
    assert_eq!(copied, fs::read(fixtures().join("bpe-llamalike/tokenizer.json")).unwrap());
    assert!(hf.config.as_deref().unwrap().contains("LlamaTokenizerFast"));
    // Each document: <s> ids </s>.
    let ds = Dataset::open(&out).unwrap();
    let tok = Tokenizer::from_meta(&ds.meta).unwrap();
    let t = &ds.train.sources[0].tokens;
    let mut stream = vec![0; t.len()];
    t.copy_range(0, &mut stream);
    let first = tok.encode(&docs[0]).unwrap();
    assert_eq!(first[0], 1);
    assert_eq!(&stream[..first.len() + 1], [&first[..], &[2]].concat().as_slice());
    // A changed tokenizer.json is refused.
    let mut changed = String::from_utf8(copied).unwrap();
    changed.push(' ');
    fs::write(out.join("tokenizer.json"), changed).unwrap();
    let err = Dataset::open(&out).unwrap_err();
    assert!(matches!(err, data::DataError::TokenizerChanged { .. }), "{err}");
}

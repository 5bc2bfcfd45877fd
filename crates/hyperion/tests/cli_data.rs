//! `hyperion data prepare` run as a process: success output and files, and each
//! error's exit code and message.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn hyperion(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hyperion")).args(args).output().unwrap()
}

fn prepare(args: &[&str]) -> Output {
    let mut all = vec!["data", "prepare"];
    all.extend_from_slice(args);
    hyperion(&all)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts a failed run with a non-zero exit and a stderr containing every `needle`.
fn assert_fails(o: &Output, needles: &[&str]) {
    assert!(!o.status.success(), "expected failure, stdout: {}", String::from_utf8_lossy(&o.stdout));
    let err = stderr(o);
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

#[test]
fn char_prepare_writes_dataset_and_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    fs::create_dir(&corpus).unwrap();
    fs::write(corpus.join("a.txt"), "abcdefghij").unwrap();
    fs::write(corpus.join("b.txt"), "0123456789").unwrap();
    fs::write(corpus.join("SOURCE.md"), "skipped").unwrap();
    let out = tmp.path().join("ds");
    let o = prepare(&["--input", s(&corpus), "--tokenizer", "char", "--out", s(&out), "--val-fraction", "0.2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    // Per file: 8 train + "\n\n", 2 val + "\n\n".
    assert!(stdout.contains("train.bin: 20 tokens"), "{stdout}");
    assert!(stdout.contains("val.bin:   8 tokens"), "{stdout}");
    assert!(stdout.contains("from 2 files"), "{stdout}");
    let ds = data::Dataset::open(&out).unwrap();
    assert_eq!((ds.meta.train_tokens, ds.meta.val_tokens, ds.meta.vocab_size), (20, 8, 21));
}

#[test]
fn gpt2_prepare_with_default_val_fraction_and_two_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.txt");
    let b = tmp.path().join("b.md");
    fs::write(&a, "Hello world. ".repeat(10)).unwrap();
    fs::write(&b, "An explicitly named file of any extension is read.").unwrap();
    let out = tmp.path().join("ds");
    let o = prepare(&["--input", s(&a), s(&b), "--tokenizer", "gpt2", "--out", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let meta = data::Dataset::open(&out).unwrap().meta;
    assert_eq!((meta.tokenizer, meta.val_fraction, meta.inputs.len()), (data::TokenizerKind::Gpt2, 0.1, 2));
    let tok = data::Tokenizer::gpt2().unwrap();
    let (na, nb) = (tok.encode(&"Hello world. ".repeat(10)).unwrap().len() as u64, 10u64);
    assert_eq!(tok.encode(&fs::read_to_string(&b).unwrap()).unwrap().len() as u64, nb);
    let val = |n: u64| (n as f64 * 0.1).round() as u64;
    assert_eq!(meta.val_tokens, val(na) + 1 + val(nb) + 1);
    assert_eq!(meta.train_tokens, na - val(na) + 1 + nb - val(nb) + 1);
}

#[test]
fn missing_input_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-play.txt");
    let o = prepare(&["--input", s(&missing), "--tokenizer", "char", "--out", s(&tmp.path().join("ds"))]);
    assert_fails(&o, &["no-such-play.txt", "does not exist"]);
    assert!(!tmp.path().join("ds").exists());
}

#[test]
fn non_utf8_input_fails_naming_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("latin1.txt");
    fs::write(&bad, b"caf\xe9 au lait").unwrap();
    let out = tmp.path().join("ds");
    let o = prepare(&["--input", s(&bad), "--tokenizer", "gpt2", "--out", s(&out)]);
    assert_fails(&o, &["latin1.txt", "not valid UTF-8", "byte offset 3"]);
    assert!(!out.join("meta.json").exists());
}

#[test]
fn empty_corpus_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    fs::create_dir(&corpus).unwrap();
    fs::write(corpus.join("README.md"), "no txt here").unwrap();
    let o = prepare(&["--input", s(&corpus), "--tokenizer", "char", "--out", s(&tmp.path().join("ds"))]);
    assert_fails(&o, &["empty corpus", "corpus"]);
}

#[test]
fn val_fraction_out_of_range_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.txt");
    fs::write(&a, "some text").unwrap();
    for v in ["0", "1", "1.5", "-0.5", "NaN"] {
        let arg = format!("--val-fraction={v}");
        let o = prepare(&["--input", s(&a), "--tokenizer", "char", "--out", s(&tmp.path().join("ds")), &arg]);
        assert_fails(&o, &["val fraction", "(0, 1)"]);
    }
}

#[test]
fn unknown_tokenizer_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.txt");
    fs::write(&a, "some text").unwrap();
    let o = prepare(&["--input", s(&a), "--tokenizer", "bpe", "--out", s(&tmp.path().join("ds"))]);
    assert_fails(&o, &["unknown tokenizer", "\"bpe\"", "gpt2"]);
}

#[test]
fn unwritable_out_dir_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.txt");
    fs::write(&a, "some text long enough to split").unwrap();
    // A path below a regular file can never be created (even as root).
    let out = a.join("ds");
    let o = prepare(&["--input", s(&a), "--tokenizer", "char", "--out", s(&out)]);
    assert_fails(&o, &["data prepare into", "a.txt/ds"]);
}

#[test]
fn missing_required_flags_fail() {
    let o = prepare(&["--tokenizer", "char", "--out", "x"]);
    assert_fails(&o, &["--input"]);
    let o = prepare(&["--input", "x.txt", "--out", "x"]);
    assert_fails(&o, &["--tokenizer"]);
}

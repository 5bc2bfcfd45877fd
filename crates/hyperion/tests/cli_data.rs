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
    let o = prepare(&["--input", s(&corpus), "--tokenizer", "char", "--out", s(&out), "--val-fraction", "0.2", "--split", "tail"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    // Per file: 8 train + "\n\n", 2 val + "\n\n".
    assert!(stdout.contains("train: 20 tokens, 2 documents, 1 shard(s)"), "{stdout}");
    assert!(stdout.contains("val:   8 tokens, 2 documents, 1 shard(s) (split: tail)"), "{stdout}");
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
    let o = prepare(&["--input", s(&a), s(&b), "--tokenizer", "gpt2", "--out", s(&out), "--split", "tail"]);
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
fn an_existing_dataset_is_replaced_only_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.txt");
    fs::write(&a, "first corpus text ".repeat(20)).unwrap();
    let out = tmp.path().join("ds");
    let args = ["--input", s(&a), "--tokenizer", "char", "--out", s(&out), "--split", "tail"];
    assert!(prepare(&args).status.success());
    let before = fs::read(out.join("meta.json")).unwrap();
    fs::write(&a, "second, different corpus ".repeat(20)).unwrap();
    assert_fails(&prepare(&args), &["already holds a prepared dataset", "--force"]);
    assert_eq!(fs::read(out.join("meta.json")).unwrap(), before);
    let mut forced = args.to_vec();
    forced.push("--force");
    assert!(prepare(&forced).status.success());
    assert_ne!(fs::read(out.join("meta.json")).unwrap(), before);
}

#[test]
fn missing_input_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-play.txt");
    let o = prepare(&["--input", s(&missing), "--tokenizer", "char", "--out", s(&tmp.path().join("ds"))]);
    assert_fails(&o, &["no-such-play.txt", "does not exist"]);
    assert!(!tmp.path().join("ds").exists());
}

fn jsonl(n: usize, words: usize) -> String {
    (0..n)
        .map(|i| serde_json::json!({ "text": format!("Document {i}: {}", "some words in a line ".repeat(words + i % 5)) }).to_string() + "\n")
        .collect()
}

fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn jsonl_prepare_reports_documents_shards_and_skipped_records() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("c.jsonl");
    fs::write(&f, jsonl(100, 3) + "{\"text\": 5}\n").unwrap();
    let out = tmp.path().join("ds");
    let o = prepare(&["--input", s(&f), "--tokenizer", "gpt2", "--out", s(&out), "--shard-tokens", "500"]);
    assert_fails(&o, &["c.jsonl", "line 101", "not a string", "--on-error skip"]);
    let o = prepare(&["--input", s(&f), "--tokenizer", "gpt2", "--out", s(&out), "--shard-tokens", "500", "--on-error", "skip", "--threads", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("90 documents") && stdout.contains("10 documents") && stdout.contains("skipped records: 1 not_a_string"), "{stdout}");
    assert!(stdout.contains("c.jsonl: line 101: the text is a JSON number"), "{stdout}");
    let meta = data::Dataset::open(&out).unwrap().meta;
    assert!(meta.shards.as_ref().unwrap().train.len() > 2);
    let again = tmp.path().join("ds2");
    let o = prepare(&["--input", s(&f), "--tokenizer", "gpt2", "--out", s(&again), "--shard-tokens", "500", "--on-error", "skip", "--threads", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(listing(&out), listing(&again), "thread count changed the output");
    for (args, needles) in [
        (vec!["--split", "halves"], vec!["halves", "documents"]),
        (vec!["--on-error", "ignore"], vec!["ignore", "skip"]),
        (vec!["--shard-tokens", "0"], vec!["shard_tokens", "at least 1"]),
        (vec!["--text-field", "body"], vec!["c.jsonl", "line 1", "no field \"body\""]),
    ] {
        let mut all = vec!["--input", s(&f), "--tokenizer", "gpt2", "--out"];
        let bad = tmp.path().join("bad");
        all.push(s(&bad));
        all.extend(args);
        assert_fails(&prepare(&all), &needles);
    }
}

/// A prepare killed with SIGKILL at several moments, then rerun, gives the
/// bytes of an uninterrupted prepare.
#[cfg(unix)]
#[test]
fn a_prepare_killed_mid_way_resumes_byte_identical() {
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    fs::create_dir(&corpus).unwrap();
    for i in 0..4 {
        fs::write(corpus.join(format!("part-{i}.jsonl")), jsonl(6000, 30)).unwrap();
    }
    let whole = tmp.path().join("whole");
    let args = |out: &Path| -> Vec<String> {
        // --force: a kill may land after the commit; the rerun then replaces it.
        ["data", "prepare", "--input", s(&corpus), "--tokenizer", "gpt2", "--shard-tokens", "200000", "--force", "--out", s(out)]
            .iter()
            .map(|a| a.to_string())
            .collect()
    };
    let t0 = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_hyperion")).args(args(&whole)).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let full = t0.elapsed();
    let out = tmp.path().join("killed");
    let mut kills = 0;
    for frac in [0.25, 0.5, 0.8] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hyperion"))
            .args(args(&out))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64(frac));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        if out.join("meta.json").exists() {
            break;
        }
    }
    let o = Command::new(env!("CARGO_BIN_EXE_hyperion")).args(args(&out)).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(listing(&out), listing(&whole), "after {kills} kill(s)");
    assert!(!out.join(".prepare").exists());
    let _ = Duration::ZERO;
}

/// A full disk (simulated with a file-size limit) fails naming the file; the
/// rerun finishes with the same bytes as an uninterrupted prepare.
#[cfg(unix)]
#[test]
fn a_full_disk_fails_cleanly_and_the_rerun_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("c.jsonl");
    fs::write(&f, jsonl(3000, 20)).unwrap();
    let whole = tmp.path().join("whole");
    let o = prepare(&["--input", s(&f), "--tokenizer", "gpt2", "--out", s(&whole), "--shard-tokens", "200000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = tmp.path().join("ds");
    // ulimit -f counts 1024-byte blocks: no file may pass 300 KB, so the first
    // 400 KB shard cannot be written (the write fails with EFBIG).
    let script = format!(
        "ulimit -f 300; trap '' XFSZ; exec {} data prepare --input {} --tokenizer gpt2 --out {} --shard-tokens 200000",
        env!("CARGO_BIN_EXE_hyperion"),
        s(&f),
        s(&out)
    );
    let o = Command::new("bash").arg("-c").arg(&script).output().unwrap();
    assert_fails(&o, &["data prepare into", ".prepare"]);
    assert!(!out.join("meta.json").exists());
    let o = prepare(&["--input", s(&f), "--tokenizer", "gpt2", "--out", s(&out), "--shard-tokens", "200000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(listing(&out), listing(&whole));
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

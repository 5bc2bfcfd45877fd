//! `prepare` on small temp corpora: exact token counts, the per-file split,
//! dtypes, meta.json contents, input discovery, errors and atomicity.

use std::fs;
use std::path::{Path, PathBuf};

use data::{ensure_prepared, prepare, DataError, Dataset, Meta, TokenDtype, Tokenizer, TokenizerKind, GPT2_EOT};

fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&p, text).unwrap();
    p
}

fn no_progress() -> impl FnMut(u64, u64) {
    |_, _| {}
}

fn all_tokens(f: &data::Split) -> Vec<u32> {
    let t = &f.sources[0].tokens;
    (0..t.len()).map(|i| t.get(i)).collect()
}

#[test]
fn char_counts_split_per_file_and_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    // 10 and 20 chars; val 0.1 -> 1 and 2 chars to val.
    let a = write(tmp.path(), "a.txt", "abcdefghij");
    let b = write(tmp.path(), "b.txt", "hello world, hi!!!!?");
    let out = tmp.path().join("ds");
    let meta = prepare(&[b.clone(), a.clone()], TokenizerKind::Char, &out, 0.1, &mut no_progress()).unwrap();

    // (9 + "\n\n") + (18 + "\n\n"); (1 + 2) + (2 + 2).
    assert_eq!(meta.train_tokens, 31);
    assert_eq!(meta.val_tokens, 7);
    assert_eq!(meta.tokenizer, TokenizerKind::Char);
    assert_eq!(meta.dtype, TokenDtype::U16);
    assert_eq!(meta.chars.as_deref(), Some("\n !,?abcdefghijlorw"));
    assert_eq!(meta.vocab_size, 19);
    // Inputs in sorted path order whatever the argument order.
    let paths: Vec<&str> = meta.inputs.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, vec![a.to_str().unwrap(), b.to_str().unwrap()]);

    let ds = Dataset::open(&out).unwrap();
    assert_eq!(ds.meta, meta);
    let tok = Tokenizer::from_meta(&ds.meta).unwrap();
    assert_eq!(tok.decode(&all_tokens(&ds.train)), "abcdefghi\n\nhello world, hi!!!\n\n");
    assert_eq!(tok.decode(&all_tokens(&ds.val)), "j\n\n!?\n\n");
    // Each file: train part + val part = the file (the split covers every file).
    assert_eq!(fs::metadata(out.join("train-000000.bin")).unwrap().len(), 31 * 2);
    ds.verify_tokens().unwrap();
}

#[test]
fn gpt2_counts_and_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let hello = write(tmp.path(), "hello.txt", "Hello world");
    let out = tmp.path().join("ds");
    let meta = prepare(&[hello], TokenizerKind::Gpt2, &out, 0.5, &mut no_progress()).unwrap();
    assert_eq!((meta.vocab_size, meta.dtype, meta.chars.clone()), (50257, TokenDtype::U16, None));
    let ds = Dataset::open(&out).unwrap();
    assert_eq!(all_tokens(&ds.train), vec![15496, GPT2_EOT]);
    assert_eq!(all_tokens(&ds.val), vec![995, GPT2_EOT]);

    // A longer ASCII text: train part + val part decode back to the file.
    let text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n";
    let f = write(tmp.path(), "c.txt", text);
    let out2 = tmp.path().join("ds2");
    let meta = prepare(&[f], TokenizerKind::Gpt2, &out2, 0.2, &mut no_progress()).unwrap();
    let tok = Tokenizer::gpt2().unwrap();
    let n = tok.encode(text).unwrap().len() as u64;
    let n_val = (n as f64 * 0.2).round() as u64;
    assert_eq!((meta.train_tokens, meta.val_tokens), (n - n_val + 1, n_val + 1));
    let ds = Dataset::open(&out2).unwrap();
    let (train, val) = (all_tokens(&ds.train), all_tokens(&ds.val));
    assert_eq!((train.last(), val.last()), (Some(&GPT2_EOT), Some(&GPT2_EOT)));
    let joined = tok.decode(&train[..train.len() - 1]) + &tok.decode(&val[..val.len() - 1]);
    assert_eq!(joined, text);
}

#[test]
fn gpt2_literal_endoftext_in_a_file_is_not_a_separator() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(tmp.path(), "a.txt", "one <|endoftext|> two three four five six seven eight nine");
    let out = tmp.path().join("ds");
    prepare(&[f], TokenizerKind::Gpt2, &out, 0.1, &mut no_progress()).unwrap();
    let ds = Dataset::open(&out).unwrap();
    let train = all_tokens(&ds.train);
    assert_eq!(train.iter().filter(|&&t| t == GPT2_EOT).count(), 1, "only the appended separator");
}

/// A string of `n` distinct chars, none of them '\n'.
fn distinct_chars(n: usize) -> String {
    (0x20u32..).filter_map(char::from_u32).take(n).collect()
}

#[test]
fn dtype_is_u16_up_to_65536_and_u32_above() {
    let tmp = tempfile::tempdir().unwrap();
    // 65535 chars + '\n' (always in the char vocabulary) = 65536 ids 0..=65535.
    let f = write(tmp.path(), "edge/a.txt", distinct_chars(65535));
    let meta = prepare(&[f], TokenizerKind::Char, &tmp.path().join("u16"), 0.1, &mut no_progress()).unwrap();
    assert_eq!((meta.vocab_size, meta.dtype), (65536, TokenDtype::U16));
    let ds = Dataset::open(&tmp.path().join("u16")).unwrap();
    assert_eq!(all_tokens(&ds.val).iter().max(), Some(&65535));

    let text = distinct_chars(65536);
    let f = write(tmp.path(), "big/a.txt", &text);
    let out = tmp.path().join("u32");
    let meta = prepare(&[f], TokenizerKind::Char, &out, 0.1, &mut no_progress()).unwrap();
    assert_eq!((meta.vocab_size, meta.dtype), (65537, TokenDtype::U32));
    assert_eq!(fs::metadata(out.join("val-000000.bin")).unwrap().len(), meta.val_tokens * 4);
    let ds = Dataset::open(&out).unwrap();
    let tok = Tokenizer::from_meta(&ds.meta).unwrap();
    let train = all_tokens(&ds.train);
    assert_eq!(all_tokens(&ds.val).iter().max(), Some(&65536));
    assert_eq!(tok.decode(&train[..train.len() - 2]), text.chars().take(train.len() - 2).collect::<String>());
}

#[test]
fn meta_records_sha256_bytes_and_is_written_as_json() {
    let tmp = tempfile::tempdir().unwrap();
    let abc = write(tmp.path(), "c/abc.txt", "abc");
    let empty = write(tmp.path(), "c/empty.txt", "");
    let long = write(tmp.path(), "c/long.txt", "a long enough line of text");
    let out = tmp.path().join("ds");
    let meta = prepare(&[tmp.path().join("c")], TokenizerKind::Char, &out, 0.1, &mut no_progress()).unwrap();
    let by_path = |p: &Path| meta.inputs.iter().find(|f| f.path == p.to_str().unwrap()).unwrap().clone();
    // FIPS 180-2 test vector and the empty-string digest.
    assert_eq!(by_path(&abc).sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(by_path(&empty).sha256, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_eq!((by_path(&abc).bytes, by_path(&empty).bytes, by_path(&long).bytes), (3, 0, 26));
    let on_disk = Meta::read(&out.join("meta.json")).unwrap();
    assert_eq!(on_disk, meta);
    let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(out.join("meta.json")).unwrap()).unwrap();
    assert_eq!(json["tokenizer"], "char");
    assert_eq!(json["dtype"], "u16");
    assert_eq!(json["val_fraction"], 0.1);
}

#[test]
fn folders_give_sorted_txt_files_recursively() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("corpus");
    write(&root, "z.txt", "zzzz zzzz zz");
    write(&root, "sub/b.txt", "bbbb bbbb bb");
    write(&root, "SOURCE.md", "not text for training");
    write(&root, "sub/notes.md", "skipped too");
    let md = write(tmp.path(), "README.md", "an explicit file is always taken");
    let out = tmp.path().join("ds");
    // The explicit file appears twice (directly and not in the folder): deduplicated.
    let meta = prepare(&[root.clone(), md.clone(), md.clone()], TokenizerKind::Char, &out, 0.1, &mut no_progress())
        .unwrap();
    let paths: Vec<String> = meta.inputs.iter().map(|f| f.path.clone()).collect();
    let mut expected =
        vec![md.display().to_string(), root.join("sub/b.txt").display().to_string(), root.join("z.txt").display().to_string()];
    expected.sort();
    assert_eq!(paths, expected);
}

#[test]
fn prepare_is_deterministic_and_reports_progress() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..6 {
        write(tmp.path(), &format!("in/{i}.txt"), format!("document number {i} says hello to the tokenizer\n").repeat(5));
    }
    let mut calls = Vec::new();
    let a = tmp.path().join("a");
    prepare(&[tmp.path().join("in")], TokenizerKind::Gpt2, &a, 0.1, &mut |d, t| calls.push((d, t))).unwrap();
    let b = tmp.path().join("b");
    prepare(&[tmp.path().join("in")], TokenizerKind::Gpt2, &b, 0.1, &mut no_progress()).unwrap();
    for name in ["train-000000.bin", "val-000000.bin"] {
        assert_eq!(fs::read(a.join(name)).unwrap(), fs::read(b.join(name)).unwrap(), "{name}");
    }
    let total: u64 = (0..6).map(|i| format!("document number {i} says hello to the tokenizer\n").len() as u64 * 5).sum();
    assert_eq!(calls.first(), Some(&(0, total)));
    assert_eq!(calls.last(), Some(&(total, total)));
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0));
    assert!(calls.len() >= 7, "one call at start, at least one per file");

    // char makes two passes (vocabulary, then encoding): total counts both.
    let mut last = (0, 0);
    prepare(&[tmp.path().join("in")], TokenizerKind::Char, &b, 0.1, &mut |d, t| last = (d, t)).unwrap();
    assert_eq!(last, (2 * total, 2 * total));
}

#[cfg(unix)]
#[test]
fn folder_walk_follows_file_links_but_not_folder_links() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("corpus");
    let outside = write(tmp.path(), "outside.txt", "text reached through a link");
    write(&root, "a.txt", "plain file in the folder");
    std::os::unix::fs::symlink(&outside, root.join("link.txt")).unwrap();
    // A link back to the folder itself would loop forever if followed.
    std::os::unix::fs::symlink(&root, root.join("loop")).unwrap();
    let meta = prepare(&[root], TokenizerKind::Char, &tmp.path().join("ds"), 0.1, &mut no_progress()).unwrap();
    let names: Vec<&str> = meta.inputs.iter().map(|f| f.path.rsplit('/').next().unwrap()).collect();
    assert_eq!(names, ["a.txt", "link.txt"]);
    assert_eq!(meta.inputs[1].bytes, 27);
}

#[test]
fn non_utf8_is_an_error_naming_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "in/good.txt", "fine text");
    let bad = write(tmp.path(), "in/bad.txt", b"hello \xff world");
    for kind in [TokenizerKind::Char, TokenizerKind::Gpt2] {
        let err = prepare(&[tmp.path().join("in")], kind, &tmp.path().join("ds"), 0.1, &mut no_progress()).unwrap_err();
        assert!(matches!(&err, DataError::NotUtf8 { path, offset: 6 } if path == &bad), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("bad.txt") && msg.contains("byte offset 6"), "{msg}");
    }
}

#[test]
fn input_and_argument_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(tmp.path(), "a.txt", "some text to split in two parts");
    let out = tmp.path().join("ds");
    let missing = tmp.path().join("nope.txt");
    let err = prepare(&[f.clone(), missing.clone()], TokenizerKind::Char, &out, 0.1, &mut no_progress()).unwrap_err();
    assert!(matches!(&err, DataError::InputNotFound { path } if path == &missing), "{err:?}");
    assert!(err.to_string().contains("nope.txt"));

    for v in [0.0, 1.0, -0.1, 1.5, f64::NAN] {
        let err = prepare(std::slice::from_ref(&f), TokenizerKind::Char, &out, v, &mut no_progress()).unwrap_err();
        assert!(matches!(err, DataError::BadValFraction { .. }), "{v}: {err:?}");
    }

    // A folder with no *.txt, and a folder of empty files: empty corpus.
    write(tmp.path(), "docs/SOURCE.md", "metadata only");
    write(tmp.path(), "empty/a.txt", "");
    for dir in ["docs", "empty"] {
        let err = prepare(&[tmp.path().join(dir)], TokenizerKind::Gpt2, &out, 0.1, &mut no_progress()).unwrap_err();
        assert!(matches!(err, DataError::EmptyCorpus { .. }), "{dir}: {err:?}");
        assert!(err.to_string().contains(dir), "{err}");
    }

    // Too little text for a val token: round(3 * 0.1) = 0.
    let tiny = write(tmp.path(), "tiny.txt", "abc");
    let err = prepare(&[tiny], TokenizerKind::Char, &out, 0.1, &mut no_progress()).unwrap_err();
    assert!(matches!(err, DataError::EmptySplit { split: "val", total_tokens: 5, .. }), "{err:?}");

    // A device is neither a file nor a folder.
    #[cfg(unix)]
    {
        let err = prepare(&[PathBuf::from("/dev/null")], TokenizerKind::Char, &out, 0.1, &mut no_progress()).unwrap_err();
        assert!(matches!(err, DataError::InputNotRegular { .. }), "{err:?}");
    }

    // Output under a regular file: cannot be created.
    let blocker = write(tmp.path(), "blocker", "a file");
    let err = prepare(&[f], TokenizerKind::Char, &blocker.join("ds"), 0.1, &mut no_progress()).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("blocker"), "{err}");
    assert!(!out.join("meta.json").exists());
}

#[test]
fn failed_prepare_keeps_the_old_dataset_and_leaves_no_temp_files() {
    let tmp = tempfile::tempdir().unwrap();
    let good = write(tmp.path(), "good.txt", "a perfectly fine corpus of text");
    let out = tmp.path().join("ds");
    let meta = prepare(std::slice::from_ref(&good), TokenizerKind::Char, &out, 0.1, &mut no_progress()).unwrap();
    let before = fs::read(out.join("train-000000.bin")).unwrap();
    // Temp files already exist when the bad file (sorted after the good one) fails.
    write(tmp.path(), "zz_bad.txt", b"ok \xc3\x28");
    for kind in [TokenizerKind::Char, TokenizerKind::Gpt2] {
        let inputs = [good.clone(), tmp.path().join("zz_bad.txt")];
        let err = prepare(&inputs, kind, &out, 0.1, &mut no_progress());
        assert!(matches!(err, Err(DataError::NotUtf8 { offset: 3, .. })), "{err:?}");
        assert_eq!(Dataset::open(&out).unwrap().meta, meta);
        assert_eq!(fs::read(out.join("train-000000.bin")).unwrap(), before);
        let mut names: Vec<String> =
            fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        // The dataset's files, plus the staging folder a rerun resumes from.
        assert_eq!(names, [".prepare", ".prepare.lock", "meta.json", "train-000000.bin", "train-000000.idx", "val-000000.bin", "val-000000.idx"]);
    }
}

#[test]
fn ensure_prepared_reuses_and_checks_the_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(tmp.path(), "a.txt", "enough text for both of the splits");
    let out = tmp.path().join("ds");
    let o = |k: TokenizerKind| data::PrepareOptions { split: data::SplitMode::Tail, ..data::PrepareOptions::new(k.into()) };
    let first = ensure_prepared(&out, std::slice::from_ref(&f), &o(TokenizerKind::Char), &mut |_| {}).unwrap();
    fs::remove_file(&f).unwrap(); // a second call must not need the inputs
    let second = ensure_prepared(&out, std::slice::from_ref(&f), &o(TokenizerKind::Char), &mut |_| {}).unwrap();
    assert_eq!(first.train_tokens, second.train_tokens);
    assert_eq!(first.shards, second.shards);
    let err = ensure_prepared(&out, &[f], &o(TokenizerKind::Gpt2), &mut |_| {}).unwrap_err();
    assert!(matches!(err, DataError::TokenizerMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("char") && msg.contains("gpt2"), "{msg}");
}

#[test]
fn shipped_shakespeare_char() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/shakespeare");
    let tmp = tempfile::tempdir().unwrap();
    let meta = prepare(&[corpus], TokenizerKind::Char, tmp.path(), 0.1, &mut no_progress()).unwrap();
    assert_eq!(meta.inputs.len(), 42, "42 plays, SOURCE.md skipped");
    assert!(meta.inputs.iter().all(|f| f.path.ends_with(".txt")));
    let bytes: u64 = meta.inputs.iter().map(|f| f.bytes).sum();
    // Mostly ASCII: tokens (chars + 2 separators per split per file) are close to bytes.
    let tokens = meta.train_tokens + meta.val_tokens;
    assert!(tokens <= bytes + 4 * 42 && tokens > bytes * 9 / 10, "{tokens} tokens, {bytes} bytes");
    let frac = meta.val_tokens as f64 / tokens as f64;
    assert!((0.095..0.105).contains(&frac), "val share {frac}");
    assert!(meta.vocab_size < 256 && meta.dtype == TokenDtype::U16);
}

//! `Dataset::open` errors, `TokenFile` reads and `fill_batch` windows.

use std::fs;
use std::path::{Path, PathBuf};

use data::{prepare, sample_start, DataError, Dataset, TokenDtype, TokenFile, TokenizerKind};

/// A char dataset over the text "0123456789" repeated, so token values are easy
/// to predict: every window is a run of consecutive digits mod 10 (ids 1..=10
/// since '\n' is id 0).
fn digits_dataset(dir: &Path, repeats: usize) -> PathBuf {
    let f = dir.join("digits.txt");
    fs::write(&f, "0123456789".repeat(repeats)).unwrap();
    let out = dir.join("ds");
    prepare(&[f], TokenizerKind::Char, &out, 0.2, &mut |_, _| {}).unwrap();
    out
}

#[test]
fn open_reports_missing_folder_and_meta() {
    let tmp = tempfile::tempdir().unwrap();
    let nowhere = tmp.path().join("not-here");
    let err = Dataset::open(&nowhere).unwrap_err();
    assert!(matches!(&err, DataError::NotPrepared { dir } if dir == &nowhere), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("hyperion data prepare") && msg.contains("not-here"), "{msg}");

    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let err = Dataset::open(&empty).unwrap_err();
    assert!(matches!(err, DataError::MissingMeta { .. }), "{err:?}");
    assert!(err.to_string().contains("meta.json"), "{err}");
}

#[test]
fn open_reports_corrupt_meta() {
    let tmp = tempfile::tempdir().unwrap();
    let out = digits_dataset(tmp.path(), 10);
    let meta_path = out.join("meta.json");
    let good = fs::read_to_string(&meta_path).unwrap();

    fs::write(&meta_path, "{\n  \"tokenizer\": \"char\",\n  oops").unwrap();
    let err = Dataset::open(&out).unwrap_err();
    assert!(matches!(err, DataError::BadMeta { line: 3, .. }), "{err:?}");
    assert!(err.to_string().contains("meta.json"), "{err}");

    fs::write(&meta_path, good.replace("\"char\"", "\"bpe\"")).unwrap();
    assert!(matches!(Dataset::open(&out).unwrap_err(), DataError::BadMeta { .. }));

    // u16 cannot hold the ids of a 70000-entry vocabulary.
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["vocab_size"] = 70000.into();
    fs::write(&meta_path, v.to_string()).unwrap();
    let err = Dataset::open(&out).unwrap_err();
    assert!(matches!(err, DataError::MetaValue { key: "dtype", .. }), "{err:?}");
    assert!(err.to_string().contains("70000"), "{err}");

    // A char dataset without its vocabulary cannot be decoded.
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v.as_object_mut().unwrap().remove("chars");
    fs::write(&meta_path, v.to_string()).unwrap();
    assert!(matches!(Dataset::open(&out).unwrap_err(), DataError::BadCharVocab { found: 0, vocab_size: 11, .. }));
}

#[test]
fn open_reports_size_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let out = digits_dataset(tmp.path(), 10);
    let train = out.join("train-000000.bin");
    let mut bytes = fs::read(&train).unwrap();
    let tokens = bytes.len() as u64 / 2;
    bytes.pop();
    fs::write(&train, &bytes).unwrap();
    let err = Dataset::open(&out).unwrap_err();
    match &err {
        DataError::SizeMismatch { path, actual_bytes, expected_bytes, tokens: t, bytes_per_token } => {
            assert_eq!(path, &train);
            assert_eq!((*actual_bytes, *expected_bytes, *t, *bytes_per_token), (tokens * 2 - 1, tokens * 2, tokens, 2));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("train-000000.bin"), "{err}");
}

#[test]
fn check_block_and_verify_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    // 100 chars: val = 20 + 2, train = 80 + 2.
    let out = digits_dataset(tmp.path(), 10);
    let ds = Dataset::open(&out).unwrap();
    assert_eq!((ds.train.len(), ds.val.len()), (82, 22));
    ds.check_block(21).unwrap();
    let err = ds.check_block(22).unwrap_err();
    assert!(matches!(&err, DataError::TooShort { tokens: 22, block: 22, needed: 23, path } if path.ends_with("val-000000.bin")));
    assert!(err.to_string().contains("val-000000.bin"), "{err}");
    assert!(ds.check_block(0).is_err());
    ds.verify_tokens().unwrap();

    // A token id at or above the vocabulary is reported with its byte offset.
    let mut bytes = fs::read(out.join("val-000000.bin")).unwrap();
    bytes[6..8].copy_from_slice(&11u16.to_le_bytes());
    fs::write(out.join("val-000000.bin"), &bytes).unwrap();
    let err = Dataset::open(&out).unwrap().verify_tokens().unwrap_err();
    assert!(matches!(err, DataError::BadToken { offset: 6, token: 11, vocab_size: 11, .. }), "{err:?}");
}

#[test]
fn fill_batch_windows_match_sample_start_and_shift_by_one() {
    let tmp = tempfile::tempdir().unwrap();
    let out = digits_dataset(tmp.path(), 50);
    let ds = Dataset::open(&out).unwrap();
    let (batch, block, seed) = (4, 16, 2024);
    let mut x = vec![0; batch * block];
    let mut y = vec![0; batch * block];
    ds.train.fill_batch(seed, 10, batch, block, &mut x, &mut y);
    for b in 0..batch {
        let s = sample_start(seed, 10 + b as u64, ds.train.len(), block);
        for t in 0..block {
            assert_eq!(x[b * block + t], ds.train.sources[0].tokens.get(s + t));
            assert_eq!(y[b * block + t], ds.train.sources[0].tokens.get(s + t + 1));
        }
        assert_eq!(&x[b * block + 1..(b + 1) * block], &y[b * block..(b + 1) * block - 1]);
    }
    // Sharding: two ranks taking samples 10..12 and 12..14 see the same rows.
    let (mut x0, mut y0) = (vec![0; 2 * block], vec![0; 2 * block]);
    let (mut x1, mut y1) = (vec![0; 2 * block], vec![0; 2 * block]);
    ds.train.fill_batch(seed, 10, 2, block, &mut x0, &mut y0);
    ds.train.fill_batch(seed, 12, 2, block, &mut x1, &mut y1);
    assert_eq!([x0, x1].concat(), x);
    assert_eq!([y0, y1].concat(), y);
}

#[test]
fn fill_batch_at_the_block_equals_len_minus_one_edge() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("t.bin");
    let tokens: Vec<u32> = (0..9).map(|i| 70_000 + i).collect();
    fs::write(&path, tokens.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let f = TokenFile::open(&path, TokenDtype::U32, 9).unwrap();
    assert_eq!((f.len(), f.get(8)), (9, 70_008));
    let (mut x, mut y) = (vec![0; 3 * 8], vec![0; 3 * 8]);
    f.fill_batch(5, 0, 3, 8, &mut x, &mut y);
    for b in 0..3 {
        assert_eq!(&x[b * 8..(b + 1) * 8], &tokens[0..8]);
        assert_eq!(&y[b * 8..(b + 1) * 8], &tokens[1..9]);
    }
    let err = TokenFile::open(&path, TokenDtype::U32, 10).unwrap_err();
    assert!(matches!(err, DataError::SizeMismatch { actual_bytes: 36, expected_bytes: 40, .. }), "{err:?}");
}

#[test]
#[should_panic(expected = "cannot hold a window")]
fn fill_batch_panics_when_too_short() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("t.bin");
    fs::write(&path, [1u8, 0, 2, 0]).unwrap();
    let f = TokenFile::open(&path, TokenDtype::U16, 2).unwrap();
    let (mut x, mut y) = (vec![0; 2], vec![0; 2]);
    f.fill_batch(0, 0, 1, 2, &mut x, &mut y);
}

#[test]
fn format_1_folders_still_open() {
    // A folder as earlier versions wrote it: train.bin, val.bin and a meta.json
    // without "format" or "shards".
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let train: Vec<u16> = (0..40).map(|i| i % 5).collect();
    let val: Vec<u16> = vec![4, 3, 2, 1, 0, 1, 2, 3];
    fs::write(dir.join("train.bin"), train.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    fs::write(dir.join("val.bin"), val.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let meta = r#"{"tokenizer": "char", "vocab_size": 5, "dtype": "u16", "train_tokens": 40, "val_tokens": 8,
        "val_fraction": 0.1, "chars": "abcde", "inputs": []}"#;
    fs::write(dir.join("meta.json"), meta).unwrap();
    let ds = Dataset::open(dir).unwrap();
    assert_eq!((ds.meta.format, ds.train.len(), ds.val.len()), (1, 40, 8));
    let t = &ds.val.sources[0].tokens;
    assert_eq!((0..8).map(|i| t.get(i) as u16).collect::<Vec<_>>(), val);
    assert!(t.path().ends_with("val.bin"));
    ds.verify_tokens().unwrap();
}

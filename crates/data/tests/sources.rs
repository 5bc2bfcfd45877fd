//! `prepare_with` on JSONL, Parquet and text inputs (plain, gzip, zstd),
//! shards, malformed records, thread-count independence, resume after a kill,
//! validation by document, and mixtures.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use data::{
    prepare_with, DataError, Dataset, OnError, PrepareOptions, SplitMode, Tokenizer, TokenizerChoice, TokenizerKind,
};
use parquet::arrow::ArrowWriter;

fn docs(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("Document {i}: {} the end.", "words and more words ".repeat(i % 7 + 1))).collect()
}

fn jsonl(docs: &[String]) -> String {
    docs.iter().map(|d| serde_json::json!({ "id": 1, "text": d }).to_string() + "\n").collect()
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn zst(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

fn write_parquet(path: &Path, texts: &[Option<&str>], column: &str) {
    let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(0..texts.len() as i64));
    let text: ArrayRef = Arc::new(StringArray::from(texts.to_vec()));
    let batch = RecordBatch::try_from_iter([("id", ids), (column, text)]).unwrap();
    let mut w = ArrowWriter::try_new(fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn opts(tok: TokenizerChoice) -> PrepareOptions {
    PrepareOptions::new(tok)
}

fn run(inputs: &[PathBuf], o: &PrepareOptions, out: &Path) -> Result<data::Meta, DataError> {
    prepare_with(inputs, o, out, &mut |_| {})
}

fn all(split: &data::Split) -> Vec<u32> {
    let t = &split.sources[0].tokens;
    let mut v = vec![0; t.len()];
    t.copy_range(0, &mut v);
    v
}

/// The token stream a prepare must produce for `docs` (documents split by the
/// every-k-th rule), encoded one by one with `tok`.
fn expected(tok: &Tokenizer, docs: &[String], frac: f64) -> (Vec<u32>, Vec<u32>) {
    let sep = match tok {
        Tokenizer::Gpt2(_) => vec![data::GPT2_EOT],
        _ => tok.encode("\n\n").unwrap(),
    };
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (d, text) in docs.iter().enumerate() {
        let to_val = ((d + 1) as f64 * frac).floor() > (d as f64 * frac).floor();
        let out = if to_val { &mut val } else { &mut train };
        out.extend(tok.encode_ordinary(text).unwrap());
        out.extend(&sep);
    }
    (train, val)
}

#[test]
fn jsonl_parquet_and_text_in_every_compression_give_the_same_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let d = docs(40);
    let text = jsonl(&d);
    let inputs = tmp.path().join("in");
    fs::create_dir_all(&inputs).unwrap();
    let variants: Vec<(&str, Vec<u8>)> =
        vec![("a.jsonl", text.clone().into_bytes()), ("a.jsonl.gz", gz(text.as_bytes())), ("a.jsonl.zst", zst(text.as_bytes()))];
    let gpt2 = Tokenizer::gpt2().unwrap();
    let (train, val) = expected(&gpt2, &d, 0.1);
    for (name, bytes) in variants {
        let f = inputs.join(name);
        fs::write(&f, bytes).unwrap();
        let out = tmp.path().join(format!("ds-{name}"));
        let meta = run(&[f], &opts(TokenizerChoice::Gpt2), &out).unwrap();
        let ds = Dataset::open(&out).unwrap();
        assert_eq!(all(&ds.train), train, "{name}");
        assert_eq!(all(&ds.val), val, "{name}");
        assert_eq!(meta.documents, Some(data::DocCounts { train: 36, val: 4 }), "{name}");
        assert_eq!(meta.split.as_deref(), Some("documents"));
    }
    // Parquet (plain and compressed as a whole file), text column "content".
    let texts: Vec<Option<&str>> = d.iter().map(|s| Some(s.as_str())).collect();
    let pq = inputs.join("b.parquet");
    write_parquet(&pq, &texts, "content");
    let raw = fs::read(&pq).unwrap();
    fs::write(inputs.join("b.parquet.zst"), zst(&raw)).unwrap();
    for name in ["b.parquet", "b.parquet.zst"] {
        let o = PrepareOptions { text_field: "content".into(), ..opts(TokenizerChoice::Gpt2) };
        let out = tmp.path().join(format!("pq-{name}"));
        run(&[inputs.join(name)], &o, &out).unwrap();
        let ds = Dataset::open(&out).unwrap();
        assert_eq!((all(&ds.train), all(&ds.val)), (train.clone(), val.clone()), "{name}");
    }
    // Text files: one document each, in sorted path order.
    let tdir = tmp.path().join("txt");
    fs::create_dir_all(&tdir).unwrap();
    for (i, doc) in d.iter().enumerate() {
        fs::write(tdir.join(format!("{i:03}.txt")), zst(doc.as_bytes())).unwrap();
        fs::rename(tdir.join(format!("{i:03}.txt")), tdir.join(format!("{i:03}.txt.zst"))).unwrap();
    }
    fs::write(tdir.join("README.md"), "not a document").unwrap();
    let out = tmp.path().join("txt-ds");
    let meta = run(&[tdir], &opts(TokenizerChoice::Gpt2), &out).unwrap();
    assert_eq!(meta.inputs.len(), 40);
    let ds = Dataset::open(&out).unwrap();
    assert_eq!((all(&ds.train), all(&ds.val)), (train, val));
}

#[test]
fn globs_select_files_and_a_glob_that_matches_nothing_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("corpus/part");
    fs::create_dir_all(&dir).unwrap();
    let d = docs(20);
    fs::write(dir.join("x-1.jsonl"), jsonl(&d[..10])).unwrap();
    fs::write(dir.join("x-2.jsonl"), jsonl(&d[10..])).unwrap();
    fs::write(dir.join("y-1.jsonl"), "garbage that is not JSON\n").unwrap();
    let pattern = tmp.path().join("corpus/**/x-?.jsonl");
    let meta = run(&[pattern], &opts(TokenizerChoice::Gpt2), &tmp.path().join("ds")).unwrap();
    assert_eq!(meta.inputs.len(), 2);
    assert!(meta.inputs[0].path.ends_with("x-1.jsonl") && meta.inputs[1].path.ends_with("x-2.jsonl"));
    let none = tmp.path().join("corpus/*.parquet");
    let err = run(std::slice::from_ref(&none), &opts(TokenizerChoice::Gpt2), &tmp.path().join("ds2")).unwrap_err();
    assert!(matches!(&err, DataError::InputNotFound { path } if *path == none), "{err}");
}

#[test]
fn bad_records_fail_naming_file_and_line_or_are_counted_when_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("mixed.jsonl");
    let mut text = jsonl(&docs(30));
    text.push_str("{\"text\": 42}\n\n{\"body\": \"x\"}\n{not json\n{\"text\": null}\n[1,2]\n");
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(b"{\"text\": \"bad \xff byte\"}\n");
    bytes.extend_from_slice(jsonl(&docs(5)).as_bytes());
    fs::write(&f, &bytes).unwrap();
    let err = run(std::slice::from_ref(&f), &opts(TokenizerChoice::Gpt2), &tmp.path().join("a")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::BadRecord { number: 31, unit: "line", .. }), "{msg}");
    assert!(msg.contains("mixed.jsonl") && msg.contains("line 31") && msg.contains("number"), "{msg}");
    assert!(!tmp.path().join("a/meta.json").exists());

    let o = PrepareOptions { on_error: OnError::Skip, ..opts(TokenizerChoice::Gpt2) };
    let meta = run(&[f], &o, &tmp.path().join("b")).unwrap();
    let kinds: Vec<(&str, u64)> = meta.bad_records.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    assert_eq!(
        kinds,
        vec![("bad_json", 1), ("missing_field", 1), ("not_a_string", 1), ("not_an_object", 1), ("not_utf8", 1), ("null", 1)]
    );
    let docs = meta.documents.unwrap();
    assert_eq!(docs.train + docs.val, 35);
    // Each skipped record is named with its file and line.
    assert_eq!(meta.bad_record_examples.len(), 6);
    assert!(meta.bad_record_examples[0].contains("mixed.jsonl: line 31: the text is a JSON number"), "{:?}", meta.bad_record_examples);
    assert!(meta.bad_record_examples[1].contains("line 33"), "{:?}", meta.bad_record_examples);
}

#[test]
fn parquet_errors_name_the_file_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let pq = tmp.path().join("t.parquet");
    write_parquet(&pq, &[Some("a"), None, Some("b")], "text");
    let err = run(std::slice::from_ref(&pq), &PrepareOptions { text_field: "body".into(), ..opts(TokenizerChoice::Gpt2) }, &tmp.path().join("a"))
        .unwrap_err();
    assert!(matches!(&err, DataError::NoTextColumn { columns, .. } if columns == "id, text"), "{err}");
    let err = run(std::slice::from_ref(&pq), &PrepareOptions { text_field: "id".into(), ..opts(TokenizerChoice::Gpt2) }, &tmp.path().join("b"))
        .unwrap_err();
    assert!(matches!(&err, DataError::ColumnNotText { found, .. } if found == "Int64"), "{err}");
    // The null in row 1 is a malformed record.
    let err = run(std::slice::from_ref(&pq), &opts(TokenizerChoice::Gpt2), &tmp.path().join("c")).unwrap_err();
    assert!(matches!(&err, DataError::BadRecord { unit: "row", number: 1, .. }), "{err}");
    let broken = tmp.path().join("broken.parquet");
    fs::write(&broken, b"PAR1 this is not parquet").unwrap();
    let err = run(&[broken], &opts(TokenizerChoice::Gpt2), &tmp.path().join("d")).unwrap_err();
    assert!(matches!(&err, DataError::Unreadable { path, .. } if path.ends_with("broken.parquet")), "{err}");
    let bad_gz = tmp.path().join("x.jsonl.gz");
    fs::write(&bad_gz, b"\x1f\x8b\x08 definitely not gzip").unwrap();
    let err = run(&[bad_gz], &opts(TokenizerChoice::Gpt2), &tmp.path().join("e")).unwrap_err();
    assert!(matches!(&err, DataError::Unreadable { path, .. } if path.ends_with("x.jsonl.gz")), "{err}");
}

fn shard_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn shards_have_exact_sizes_indexes_and_checksums_and_do_not_depend_on_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("c.jsonl");
    let d = docs(300);
    fs::write(&f, jsonl(&d)).unwrap();
    let o = PrepareOptions { shard_tokens: 1000, batch_bytes: 2000, ..opts(TokenizerChoice::Gpt2) };
    let mut outs = Vec::new();
    for threads in [1, 4] {
        let out = tmp.path().join(format!("t{threads}"));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| run(std::slice::from_ref(&f), &o, &out)).unwrap();
        outs.push(shard_bytes(&out));
    }
    assert_eq!(outs[0], outs[1], "1 and 4 threads differ");
    let out = tmp.path().join("t1");
    let meta = Dataset::open(&out).unwrap().meta;
    let shards = meta.shards.clone().unwrap();
    assert!(shards.train.len() > 3);
    for (i, s) in shards.train.iter().enumerate() {
        let bytes = fs::read(out.join(&s.file)).unwrap();
        assert_eq!(s.sha256, sha256_hex(&bytes));
        if i + 1 < shards.train.len() {
            assert_eq!(s.tokens, 1000);
        }
        assert_eq!(bytes.len() as u64, s.tokens * 2);
    }
    // Every .idx offset is a document start: the token before it is the separator.
    let ds = Dataset::open(&out).unwrap();
    let stream = all(&ds.train);
    let mut base = 0usize;
    let mut starts = 0;
    for s in &shards.train {
        let idx = fs::read(out.join(&s.index)).unwrap();
        assert_eq!(idx.len() as u64, s.documents * 8);
        for c in idx.chunks_exact(8) {
            let at = base + u64::from_le_bytes(c.try_into().unwrap()) as usize;
            assert!(at == 0 || stream[at - 1] == data::GPT2_EOT, "offset {at}");
            starts += 1;
        }
        base += s.tokens as usize;
    }
    assert_eq!(starts as u64, meta.documents.unwrap().train);
    // The same corpus in one shard holds the same stream.
    let one = tmp.path().join("one");
    run(&[f], &PrepareOptions { batch_bytes: 2000, ..opts(TokenizerChoice::Gpt2) }, &one).unwrap();
    assert_eq!(all(&Dataset::open(&one).unwrap().train), stream);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_killed_prepare_resumes_to_byte_identical_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs: Vec<PathBuf> = (0..3)
        .map(|i| {
            let f = tmp.path().join(format!("part-{i}.jsonl.gz"));
            fs::write(&f, gz(jsonl(&docs(150 + i * 10)).as_bytes())).unwrap();
            f
        })
        .collect();
    for tok in [TokenizerChoice::Gpt2, TokenizerChoice::Char] {
        let o = PrepareOptions { shard_tokens: 3000, batch_bytes: 3000, ..opts(tok.clone()) };
        let whole = tmp.path().join("whole");
        run(&inputs, &o, &whole).unwrap();
        for kill_at in [2usize, 5, 9, 17] {
            let out = tmp.path().join(format!("killed-{tok:?}-{kill_at}"));
            let mut calls = 0;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                prepare_with(&inputs, &o, &out, &mut |p| {
                    if p.pass == "encode" {
                        calls += 1;
                        if calls == kill_at {
                            panic!("killed");
                        }
                    }
                })
            }));
            assert!(r.is_err(), "{tok:?} kill at {kill_at} did not happen");
            assert!(!out.join("meta.json").exists());
            // A kill between the two renames of a shard's close: the .bin is
            // under its final name, the .idx still open.
            let staging = out.join(".prepare");
            for split in ["train", "val"] {
                let n = fs::read_dir(&staging).unwrap().filter(|e| {
                    let name = e.as_ref().unwrap().file_name().to_string_lossy().into_owned();
                    name.starts_with(&format!("{split}-")) && name.ends_with(".bin")
                }).count();
                let open = staging.join(format!("{split}.open.bin"));
                if kill_at == 5 && open.exists() {
                    fs::rename(&open, staging.join(format!("{split}-{n:06}.bin"))).unwrap();
                }
            }
            // Bytes written after the last save (a kill between save points).
            for open in ["train.open.bin", "val.open.bin"] {
                if let Ok(mut f) = fs::OpenOptions::new().append(true).open(out.join(".prepare").join(open)) {
                    f.write_all(&[7; 64]).unwrap();
                }
            }
            // The first report of the rerun counts the tokens it kept.
            let mut kept = None;
            run_with_progress(&inputs, &o, &out, &mut |p| {
                if p.pass == "encode" && kept.is_none() {
                    kept = Some(p.tokens)
                }
            });
            assert!(kept.unwrap() > 0, "{tok:?} kill at {kill_at}: nothing was kept");
            assert_eq!(shard_bytes(&out), shard_bytes(&whole), "{tok:?} kill at {kill_at}");
            assert!(!out.join(".prepare").exists());
        }
        fs::remove_dir_all(&whole).unwrap();
    }
}

fn run_with_progress(inputs: &[PathBuf], o: &PrepareOptions, out: &Path, f: &mut dyn FnMut(&data::Progress)) {
    prepare_with(inputs, o, out, f).unwrap();
}

#[test]
fn validation_by_document_by_separate_input_and_by_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("c.jsonl");
    let d = docs(25);
    fs::write(&f, jsonl(&d)).unwrap();
    let char_vocab: String = {
        let mut s: Vec<char> = d.concat().chars().chain("\n".chars()).collect();
        s.sort();
        s.dedup();
        s.into_iter().collect()
    };
    let meta = run(std::slice::from_ref(&f), &PrepareOptions { val_fraction: 0.2, ..opts(TokenizerChoice::Char) }, &tmp.path().join("a"))
        .unwrap();
    assert_eq!(meta.chars.as_deref(), Some(char_vocab.as_str()));
    assert_eq!(meta.documents, Some(data::DocCounts { train: 20, val: 5 }));
    let (train, val) = expected(&Tokenizer::char(&char_vocab), &d, 0.2);
    let ds = Dataset::open(&tmp.path().join("a")).unwrap();
    assert_eq!((all(&ds.train), all(&ds.val)), (train, val));

    // Too few documents for the fraction: an error that says what to do.
    let err = run(std::slice::from_ref(&f), &PrepareOptions { val_fraction: 0.03, ..opts(TokenizerChoice::Char) }, &tmp.path().join("b"))
        .unwrap_err();
    assert!(matches!(err, DataError::EmptySplit { split: "val", documents: 25, .. }), "{err}");
    assert!(err.to_string().contains("--val-input"), "{err}");

    // A separate validation input: all of the main input trains.
    let v = tmp.path().join("v.jsonl");
    fs::write(&v, jsonl(&docs(3))).unwrap();
    let o = PrepareOptions { val_inputs: vec![v], ..opts(TokenizerChoice::Gpt2) };
    let meta = run(std::slice::from_ref(&f), &o, &tmp.path().join("c")).unwrap();
    assert_eq!((meta.documents, meta.split.as_deref()), (Some(data::DocCounts { train: 25, val: 3 }), Some("inputs")));

    // Tail: one document still gives both splits.
    let one = tmp.path().join("one.txt");
    fs::write(&one, "a single long document ".repeat(50)).unwrap();
    let o = PrepareOptions { split: SplitMode::Tail, ..opts(TokenizerChoice::Gpt2) };
    let meta = run(&[one], &o, &tmp.path().join("d")).unwrap();
    assert_eq!(meta.split.as_deref(), Some("tail"));
    assert!(meta.val_tokens > 1 && meta.train_tokens > meta.val_tokens * 5);
}

#[test]
fn missing_empty_and_unparsable_inputs_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.jsonl");
    fs::write(&empty, "").unwrap();
    let err = run(&[empty], &opts(TokenizerChoice::Gpt2), &tmp.path().join("a")).unwrap_err();
    assert!(matches!(err, DataError::EmptyCorpus { .. }), "{err}");
    let blank = tmp.path().join("blank.jsonl");
    fs::write(&blank, "{\"text\": \"\"}\n{\"text\": \"\"}\n").unwrap();
    let err = run(&[blank], &opts(TokenizerChoice::Gpt2), &tmp.path().join("b")).unwrap_err();
    assert!(matches!(err, DataError::NoDocuments { .. }), "{err}");
    let bad_tok = tmp.path().join("tokenizer.json");
    fs::write(&bad_tok, "{\"model\": 3}").unwrap();
    let f = tmp.path().join("c.jsonl");
    fs::write(&f, jsonl(&docs(20))).unwrap();
    let err = run(std::slice::from_ref(&f), &opts(TokenizerChoice::Hf(bad_tok)), &tmp.path().join("c")).unwrap_err();
    assert!(matches!(&err, DataError::BadTokenizerFile { path, .. } if path.ends_with("tokenizer.json")), "{err}");
    let err = run(&[f], &opts(TokenizerChoice::Hf(tmp.path().join("nope"))), &tmp.path().join("d")).unwrap_err();
    assert!(matches!(err, DataError::InputNotFound { .. }), "{err}");
}

#[test]
fn mixtures_draw_sources_by_weight_deterministically() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for (name, n) in [("a", 60), ("b", 30)] {
        let f = tmp.path().join(format!("{name}.jsonl"));
        fs::write(&f, jsonl(&docs(n))).unwrap();
        let out = tmp.path().join(name);
        run(&[f], &opts(TokenizerChoice::Gpt2), &out).unwrap();
        dirs.push(out);
    }
    let ds = Dataset::open_mixture(&[(dirs[0].clone(), 0.7), (dirs[1].clone(), 0.3)]).unwrap();
    for n in [1000u64, 8000, 64_000] {
        let c = ds.train.count_sources(1337, 0, n);
        let share = c[0] as f64 / n as f64;
        assert!((share - 0.7).abs() < 0.01 * 0.7, "n {n}: share {share}");
        assert!(c[0].abs_diff(n * 7 / 10) <= 3, "n {n}: {c:?}");
    }
    // A pure function of (seed, index): a resumed range equals the tail of a whole one.
    let (b, t) = (8, 16);
    let (mut x1, mut y1) = (vec![0; b * t], vec![0; b * t]);
    let (mut x2, mut y2) = (vec![0; b * t], vec![0; b * t]);
    ds.train.fill_batch(5, 40, b, t, &mut x1, &mut y1);
    Dataset::open_mixture(&[(dirs[0].clone(), 0.7), (dirs[1].clone(), 0.3)]).unwrap().train.fill_batch(5, 40, b, t, &mut x2, &mut y2);
    assert_eq!((&x1, &y1), (&x2, &y2));
    // One source: exactly the plain dataset's windows.
    let plain = Dataset::open(&dirs[0]).unwrap();
    let single = Dataset::open_mixture(&[(dirs[0].clone(), 3.0)]).unwrap();
    plain.train.fill_batch(9, 0, b, t, &mut x2, &mut y2);
    let (mut x3, mut y3) = (vec![0; b * t], vec![0; b * t]);
    single.train.fill_batch(9, 0, b, t, &mut x3, &mut y3);
    assert_eq!((&x2, &y2), (&x3, &y3));
    // Another tokenizer cannot join; nor can a bad weight.
    let f = tmp.path().join("c.jsonl");
    fs::write(&f, jsonl(&docs(30))).unwrap();
    run(&[f], &opts(TokenizerChoice::Char), &tmp.path().join("c")).unwrap();
    let err = Dataset::open_mixture(&[(dirs[0].clone(), 1.0), (tmp.path().join("c"), 1.0)]).unwrap_err();
    assert!(matches!(err, DataError::MixedTokenizers { .. }), "{err}");
    let err = Dataset::open_mixture(&[(dirs[0].clone(), 0.0)]).unwrap_err();
    assert!(matches!(err, DataError::BadWeight { .. }), "{err}");
    assert_eq!(plain.meta.tokenizer, TokenizerKind::Gpt2);
}

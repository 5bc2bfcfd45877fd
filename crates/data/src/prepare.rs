//! `prepare`: text files -> `train.bin`, `val.bin`, `meta.json`.
//!
//! Layout of the splits. Files are taken in sorted path order. Each file is one
//! document; its tokens are cut so that the last `round(n * val_fraction)` of its
//! `n` tokens go to `val.bin` and the rest to `train.bin` (so validation covers
//! every play, not just the last ones). Every non-empty part is followed by the
//! document separator: token 50256 (`<|endoftext|>`) for gpt2, the two tokens of
//! "\n\n" for char. So `train_tokens = sum(n_i - v_i + s)` over files with
//! `n_i - v_i > 0`, where `s` is the separator length, and likewise for val.
//!
//! Atomicity. Tokens stream into temp files in the output folder; only when both
//! are complete and synced is any existing `meta.json` removed, the `.bin`s renamed
//! into place, and the new `meta.json` written (temp + rename) last. A prepare that
//! fails at any point leaves either the old dataset intact or a folder without
//! `meta.json`, which [`crate::Dataset::open`] refuses.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::tokenizer::{CharVocab, CHAR_SEPARATOR};
use crate::{DataError, Dataset, InputFile, Meta, TokenDtype, Tokenizer, TokenizerKind, META_FILE, TRAIN_FILE, VAL_FILE};

/// Files are encoded in parallel in groups of about this many bytes, then written
/// in order; this bounds memory to one group's text and tokens.
const GROUP_BYTES: u64 = 64 << 20;

/// Tokenizes `inputs` (files, or folders searched recursively for `*.txt`) with
/// `kind` and writes `train.bin`, `val.bin` and `meta.json` into `out` (created if
/// needed). `progress(done, total)` is called from this thread as bytes are
/// processed; `total` counts each input byte once per pass (char makes two: one to
/// collect the vocabulary, one to encode; gpt2 one).
pub fn prepare(
    inputs: &[PathBuf],
    kind: TokenizerKind,
    out: &Path,
    val_fraction: f64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Meta, DataError> {
    if !(val_fraction > 0.0 && val_fraction < 1.0) {
        return Err(DataError::BadValFraction { value: val_fraction });
    }
    let files = collect_inputs(inputs)?;
    let corpus_bytes: u64 = files.iter().map(|f| f.1).sum();
    if corpus_bytes == 0 {
        let inputs = inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        return Err(DataError::EmptyCorpus { inputs });
    }
    let passes = if kind == TokenizerKind::Char { 2 } else { 1 };
    let total = corpus_bytes * passes;
    let mut done = 0u64;
    progress(0, total);
    let mut report = |bytes: u64| {
        done += bytes;
        progress(done, total);
    };

    let tokenizer = match kind {
        TokenizerKind::Gpt2 => Tokenizer::gpt2()?,
        TokenizerKind::Char => Tokenizer::Char(scan_chars(&files, &mut report)?),
    };
    let vocab_size = tokenizer.vocab_size();
    let dtype = TokenDtype::for_vocab(vocab_size);
    let separator = tokenizer.separator()?;

    fs::create_dir_all(out).map_err(DataError::io(out))?;
    // Unique per process and call, so concurrent prepares into one folder (ranks
    // of an MPI job, threads) never share a temp file; they produce identical
    // files and each commit is a rename, so the last one simply wins.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let tag = format!("tmp-{}-{}", std::process::id(), CALLS.fetch_add(1, Ordering::Relaxed));
    let mut temps = TempFiles::default();
    let train_tmp = temps.add(out.join(format!(".{TRAIN_FILE}.{tag}")));
    let val_tmp = temps.add(out.join(format!(".{VAL_FILE}.{tag}")));
    let meta_tmp = temps.add(out.join(format!(".{META_FILE}.{tag}")));
    let mut train = TokenWriter::create(&train_tmp, dtype)?;
    let mut val = TokenWriter::create(&val_tmp, dtype)?;

    let mut recorded = Vec::with_capacity(files.len());
    for group in groups(&files) {
        let encoded = par_map_with_progress(group, &mut report, |(path, _), done| {
            let text = read_utf8(path)?;
            let sha256 = hex(&Sha256::digest(text.as_bytes()));
            let tokens = tokenizer.encode_ordinary_parallel(&text, done)?;
            Ok((InputFile { path: path.display().to_string(), bytes: text.len() as u64, sha256 }, tokens))
        });
        for result in encoded {
            let (input, tokens) = result?;
            let n_val = split_point(tokens.len(), val_fraction);
            let (train_part, val_part) = tokens.split_at(tokens.len() - n_val);
            for (writer, part) in [(&mut train, train_part), (&mut val, val_part)] {
                if !part.is_empty() {
                    writer.write(part)?;
                    writer.write(&separator)?;
                }
            }
            recorded.push(input);
        }
    }
    let total_tokens = train.tokens + val.tokens;
    for (split, n) in [("train", train.tokens), ("val", val.tokens)] {
        if n == 0 {
            return Err(DataError::EmptySplit { split, total_tokens, val_fraction });
        }
    }
    let meta = Meta {
        tokenizer: kind,
        vocab_size,
        dtype,
        train_tokens: train.tokens,
        val_tokens: val.tokens,
        val_fraction,
        chars: match &tokenizer {
            Tokenizer::Char(v) => Some(v.as_string()),
            Tokenizer::Gpt2(_) => None,
        },
        inputs: recorded,
    };
    train.finish()?;
    val.finish()?;
    fs::write(&meta_tmp, meta.to_json()).map_err(DataError::io(&meta_tmp))?;

    // Commit: the folder must never pair an old meta.json with new .bin files.
    let meta_path = out.join(META_FILE);
    match fs::remove_file(&meta_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(DataError::io(&meta_path)(e)),
    }
    rename(&train_tmp, &out.join(TRAIN_FILE))?;
    rename(&val_tmp, &out.join(VAL_FILE))?;
    rename(&meta_tmp, &meta_path)?;
    // Make the renames durable; not every filesystem supports syncing a folder.
    if let Ok(d) = File::open(out) {
        let _ = d.sync_all();
    }
    Ok(meta)
}

/// Returns the dataset in `dir` if it exists and was made with `kind`; otherwise
/// prepares it from `inputs`. An existing dataset is opened (sizes checked), never
/// silently overwritten: a tokenizer mismatch is an error naming both.
pub fn ensure_prepared(
    dir: &Path,
    inputs: &[PathBuf],
    kind: TokenizerKind,
    val_fraction: f64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Meta, DataError> {
    let meta_path = dir.join(META_FILE);
    if meta_path.is_file() {
        let meta = Meta::read(&meta_path)?;
        if meta.tokenizer != kind {
            return Err(DataError::TokenizerMismatch {
                path: meta_path,
                found: meta.tokenizer.to_string(),
                wanted: kind.to_string(),
            });
        }
        return Ok(Dataset::open(dir)?.meta);
    }
    prepare(inputs, kind, dir, val_fraction, progress)
}

/// Number of a file's `n` tokens that go to validation: `round(n * f)`.
fn split_point(n: usize, val_fraction: f64) -> usize {
    ((n as f64 * val_fraction).round() as usize).min(n)
}

/// The input files with their sizes, sorted by path, duplicates removed.
/// Explicit files are taken whatever their name; folders give their `*.txt`
/// files, recursively (so a corpus folder's SOURCE.md or README.md is skipped).
fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, u64)>, DataError> {
    let mut files = Vec::new();
    for input in inputs {
        let meta = match fs::metadata(input) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DataError::InputNotFound { path: input.clone() })
            }
            Err(e) => return Err(DataError::io(input)(e)),
        };
        if meta.is_dir() {
            walk(input, &mut files)?;
        } else if meta.is_file() {
            files.push((input.clone(), meta.len()));
        } else {
            return Err(DataError::InputNotRegular { path: input.clone() });
        }
    }
    files.sort();
    files.dedup_by(|a, b| a.0 == b.0);
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<(PathBuf, u64)>) -> Result<(), DataError> {
    for entry in fs::read_dir(dir).map_err(DataError::io(dir))? {
        let path = entry.map_err(DataError::io(dir))?.path();
        // symlink_metadata: never follow a link to a folder (avoids cycles);
        // a link to a file is followed below.
        let link = fs::symlink_metadata(&path).map_err(DataError::io(&path))?;
        if link.is_dir() {
            walk(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "txt") {
            if let Ok(m) = fs::metadata(&path) {
                if m.is_file() {
                    files.push((path, m.len()));
                }
            }
        }
    }
    Ok(())
}

/// Reads `path` as UTF-8; invalid bytes are an error naming the byte offset.
fn read_utf8(path: &Path) -> Result<String, DataError> {
    let bytes = fs::read(path).map_err(DataError::io(path))?;
    String::from_utf8(bytes)
        .map_err(|e| DataError::NotUtf8 { path: path.to_path_buf(), offset: e.utf8_error().valid_up_to() as u64 })
}

/// First pass for char: the corpus's char set, plus '\n' (the separator's char,
/// so it is always encodable).
fn scan_chars(files: &[(PathBuf, u64)], report: &mut dyn FnMut(u64)) -> Result<CharVocab, DataError> {
    let mut all = BTreeSet::new();
    all.extend(CHAR_SEPARATOR.chars());
    for group in groups(files) {
        let sets = par_map_with_progress(group, report, |(path, _), done| {
            let text = read_utf8(path)?;
            done(text.len() as u64);
            Ok(text.chars().collect::<BTreeSet<char>>())
        });
        for set in sets {
            all.extend(set?);
        }
    }
    Ok(CharVocab::new(all))
}

/// Consecutive runs of files of about GROUP_BYTES each (at least one file).
fn groups(files: &[(PathBuf, u64)]) -> Vec<&[(PathBuf, u64)]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, f) in files.iter().enumerate() {
        if i > start && bytes + f.1 > GROUP_BYTES {
            out.push(&files[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += f.1;
    }
    if start < files.len() {
        out.push(&files[start..]);
    }
    out
}

/// Maps `f` over `files` on the rayon pool, results in input order. `f` reports
/// bytes as it finishes them through its second argument; this thread forwards
/// them to `report` (which therefore need not be `Send`).
fn par_map_with_progress<T: Send>(
    files: &[(PathBuf, u64)],
    report: &mut dyn FnMut(u64),
    f: impl Fn(&(PathBuf, u64), &(dyn Fn(u64) + Sync)) -> Result<T, DataError> + Sync,
) -> Vec<Result<T, DataError>> {
    let (tx, rx) = mpsc::channel::<u64>();
    let f = &f;
    std::thread::scope(|s| {
        let worker = s.spawn(move || {
            // The receiver outlives this loop; a send error is impossible.
            let send = |bytes: u64| {
                let _ = tx.send(bytes);
            };
            files.par_iter().map(|file| f(file, &send)).collect::<Vec<_>>()
        });
        for bytes in rx {
            report(bytes);
        }
        match worker.join() {
            Ok(results) => results,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

fn rename(from: &Path, to: &Path) -> Result<(), DataError> {
    fs::rename(from, to).map_err(DataError::io(to))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Buffered little-endian token output.
struct TokenWriter {
    path: PathBuf,
    out: BufWriter<File>,
    dtype: TokenDtype,
    tokens: u64,
    buf: Vec<u8>,
}

impl TokenWriter {
    fn create(path: &Path, dtype: TokenDtype) -> Result<Self, DataError> {
        let file = File::create(path).map_err(DataError::io(path))?;
        Ok(TokenWriter { path: path.to_path_buf(), out: BufWriter::new(file), dtype, tokens: 0, buf: Vec::new() })
    }

    fn write(&mut self, tokens: &[u32]) -> Result<(), DataError> {
        self.buf.clear();
        match self.dtype {
            // The dtype was chosen from the vocabulary size, so every id fits.
            TokenDtype::U16 => tokens.iter().for_each(|&t| self.buf.extend_from_slice(&(t as u16).to_le_bytes())),
            TokenDtype::U32 => tokens.iter().for_each(|&t| self.buf.extend_from_slice(&t.to_le_bytes())),
        }
        self.out.write_all(&self.buf).map_err(DataError::io(&self.path))?;
        self.tokens += tokens.len() as u64;
        Ok(())
    }

    fn finish(self) -> Result<(), DataError> {
        let file = self.out.into_inner().map_err(|e| DataError::io(&self.path)(e.into_error()))?;
        file.sync_all().map_err(DataError::io(&self.path))
    }
}

/// Removes its files on drop: a failed prepare leaves no temp files behind
/// (after a successful rename the temp path is gone and removal is a no-op).
#[derive(Default)]
struct TempFiles(Vec<PathBuf>);

impl TempFiles {
    fn add(&mut self, path: PathBuf) -> PathBuf {
        self.0.push(path.clone());
        path
    }
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_point_rounds() {
        assert_eq!(split_point(10, 0.1), 1);
        assert_eq!(split_point(100, 0.1), 10);
        assert_eq!(split_point(14, 0.1), 1);
        assert_eq!(split_point(15, 0.1), 2);
        assert_eq!(split_point(3, 0.1), 0);
        assert_eq!(split_point(0, 0.5), 0);
    }

    #[test]
    fn groups_cover_all_files_in_order() {
        let files: Vec<(PathBuf, u64)> =
            (0..5).map(|i| (PathBuf::from(format!("{i}")), if i == 2 { GROUP_BYTES } else { 10 })).collect();
        let g = groups(&files);
        let lens: Vec<usize> = g.iter().map(|g| g.len()).collect();
        assert_eq!(lens, vec![2, 1, 2]);
        assert!(groups(&[]).is_empty());
    }
}

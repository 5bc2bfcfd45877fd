//! What `prepare` reads: files, folders and globs of plain text, JSONL and
//! Parquet, each optionally gzip- or zstd-compressed, as a stream of records.
//!
//! One record is one document: a whole text file, one JSONL line (its text
//! field), one Parquet row (its text column). Records are produced in a fixed
//! order (inputs sorted by path, records in file order) and parsed on worker
//! threads ([`RawRecord::parse`]), so the output never depends on the thread
//! count. A record that cannot give a document (bad JSON, a missing field, a
//! non-string value, a null, invalid UTF-8) is a [`BadRecord`], named by file
//! and line (JSONL, 1-based) or row (Parquet, 0-based) by the caller.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::Array;
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use sha2::{Digest, Sha256};

use crate::DataError;

/// How a file's records are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The whole file is one document.
    Text,
    /// One JSON object per line; the document is one string field.
    Jsonl,
    /// One document per row of one string column.
    Parquet,
}

/// Whole-file compression, told by the last extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One input file, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub path: PathBuf,
    /// Size on disk (compressed size for compressed files).
    pub bytes: u64,
    pub format: Format,
    pub compression: Compression,
}

/// Format and compression from the file name: `.gz`/`.zst` then `.jsonl`
/// (or `.ndjson`), `.parquet`, `.txt`. `None` for other names.
pub fn classify(path: &Path) -> Option<(Format, Compression)> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let (stem, compression) = if let Some(s) = name.strip_suffix(".gz") {
        (s, Compression::Gzip)
    } else if let Some(s) = name.strip_suffix(".zst") {
        (s, Compression::Zstd)
    } else {
        (name.as_str(), Compression::None)
    };
    let format = if stem.ends_with(".jsonl") || stem.ends_with(".ndjson") {
        Format::Jsonl
    } else if stem.ends_with(".parquet") {
        Format::Parquet
    } else if stem.ends_with(".txt") {
        Format::Text
    } else {
        return None;
    };
    Some((format, compression))
}

/// Expands `inputs` (files, folders, globs) into the files to read, sorted by
/// path without duplicates. A folder gives its recognised files ([`classify`]),
/// recursively, so a corpus folder's README.md is skipped; a file named
/// explicitly is read as plain text when its name is not recognised. A glob
/// (`*`, `?`, `[...]` in any component, `**` for any depth) that matches
/// nothing is an error, like a missing path.
pub fn expand(inputs: &[PathBuf]) -> Result<Vec<Input>, DataError> {
    let mut files: Vec<PathBuf> = Vec::new();
    for input in inputs {
        let text = input.to_string_lossy();
        if text.contains(['*', '?', '[']) && !input.exists() {
            let before = files.len();
            glob(input, &mut files)?;
            if files.len() == before {
                return Err(DataError::InputNotFound { path: input.clone() });
            }
            continue;
        }
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
            files.push(input.clone());
        } else {
            return Err(DataError::InputNotRegular { path: input.clone() });
        }
    }
    files.sort();
    files.dedup();
    files
        .into_iter()
        .map(|path| {
            let bytes = fs::metadata(&path).map_err(DataError::io(&path))?.len();
            let (format, compression) = classify(&path).unwrap_or((Format::Text, Compression::None));
            Ok(Input { path, bytes, format, compression })
        })
        .collect()
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), DataError> {
    for entry in fs::read_dir(dir).map_err(DataError::io(dir))? {
        let path = entry.map_err(DataError::io(dir))?.path();
        // symlink_metadata: never follow a link to a folder (no cycles); a
        // link to a file is followed.
        let link = fs::symlink_metadata(&path).map_err(DataError::io(&path))?;
        if link.is_dir() {
            walk(&path, files)?;
        } else if classify(&path).is_some() && fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    Ok(())
}

/// Expands a glob pattern component by component from its literal prefix.
fn glob(pattern: &Path, files: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let parts: Vec<String> = pattern.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    let first_wild = parts.iter().position(|p| p.contains(['*', '?', '['])).unwrap_or(parts.len());
    let mut base: PathBuf = parts[..first_wild].iter().collect();
    if base.as_os_str().is_empty() {
        base = PathBuf::from(".");
    }
    let strip_dot = first_wild == 0 && !pattern.starts_with(".");
    let mut found = Vec::new();
    glob_from(&base, &parts[first_wild..], &mut found)?;
    for f in found {
        let f = if strip_dot { f.strip_prefix(".").map(Path::to_path_buf).unwrap_or(f) } else { f };
        files.push(f);
    }
    Ok(())
}

fn glob_from(dir: &Path, rest: &[String], out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let Some((head, tail)) = rest.split_first() else {
        if dir.is_file() {
            out.push(dir.to_path_buf());
        }
        return Ok(());
    };
    if head == "**" {
        // Zero directories, then one more level of any name.
        glob_from(dir, tail, out)?;
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries {
                let path = entry.map_err(DataError::io(dir))?.path();
                if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                    glob_from(&path, rest, out)?;
                }
            }
        }
        return Ok(());
    }
    if !head.contains(['*', '?', '[']) {
        return glob_from(&dir.join(head), tail, out);
    }
    let Ok(entries) = fs::read_dir(dir) else { return Ok(()) };
    let mut names: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(DataError::io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Like a shell: a leading '.' must be matched literally.
        if name.starts_with('.') && !head.starts_with('.') {
            continue;
        }
        if wildcard(head.as_bytes(), name.as_bytes()) {
            names.push(entry.path());
        }
    }
    names.sort();
    for path in names {
        if tail.is_empty() {
            if fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                out.push(path);
            }
        } else if path.is_dir() {
            glob_from(&path, tail, out)?;
        }
    }
    Ok(())
}

/// Shell wildcard match of one path component: `*`, `?`, `[abc]`, `[a-z]`,
/// `[!x]` (byte-wise; non-ASCII names match `*` and literal bytes).
fn wildcard(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|i| wildcard(&p[1..], &s[i..])),
        Some(b'?') => !s.is_empty() && wildcard(&p[1..], &s[1..]),
        Some(b'[') => {
            let Some(close) = p.iter().skip(2).position(|&c| c == b']').map(|i| i + 2) else {
                return s.first() == Some(&b'[') && wildcard(&p[1..], &s[1..]);
            };
            let Some(&c) = s.first() else { return false };
            let (negate, set) = match p[1] {
                b'!' | b'^' => (true, &p[2..close]),
                _ => (false, &p[1..close]),
            };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= set[i] <= c && c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != negate && wildcard(&p[close + 1..], &s[1..])
        }
        Some(&l) => s.first() == Some(&l) && wildcard(&p[1..], &s[1..]),
    }
}

/// Why a record gives no document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadRecord {
    /// The line is not valid JSON (serde_json's message).
    Json(String),
    /// The line is JSON but not an object.
    NotObject,
    /// The object lacks the text field.
    MissingField(String),
    /// The field (or column value) is not a string: its JSON type.
    NotString(&'static str),
    /// A null in the text column or field.
    Null,
    /// Invalid UTF-8 at this byte offset of the record.
    NotUtf8(u64),
}

impl BadRecord {
    /// Short stable name for counting (`meta.json`'s `bad_records`).
    pub fn kind(&self) -> &'static str {
        match self {
            BadRecord::Json(_) => "bad_json",
            BadRecord::NotObject => "not_an_object",
            BadRecord::MissingField(_) => "missing_field",
            BadRecord::NotString(_) => "not_a_string",
            BadRecord::Null => "null",
            BadRecord::NotUtf8(_) => "not_utf8",
        }
    }
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadRecord::Json(e) => write!(f, "not valid JSON ({e})"),
            BadRecord::NotObject => f.write_str("not a JSON object"),
            BadRecord::MissingField(k) => write!(f, "has no field {k:?}"),
            BadRecord::NotString(t) => write!(f, "the text is a JSON {t}, not a string"),
            BadRecord::Null => f.write_str("the text is null"),
            BadRecord::NotUtf8(o) => write!(f, "not valid UTF-8 at byte offset {o}"),
        }
    }
}

/// A record as read, before parsing (parsing runs on worker threads).
#[derive(Debug)]
pub enum RawRecord {
    /// A whole text file's bytes.
    Text(Vec<u8>),
    /// One JSONL line, without its line ending.
    Json(Vec<u8>),
    /// One Parquet value of the text column (`None` = null).
    Value(Option<String>),
}

impl RawRecord {
    /// Bytes of text this record carries (for batching).
    pub fn len(&self) -> usize {
        match self {
            RawRecord::Text(b) | RawRecord::Json(b) => b.len(),
            RawRecord::Value(v) => v.as_ref().map_or(0, String::len),
        }
    }

    /// True for a record with no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The document's text, or why there is none.
    pub fn parse(self, field: &str) -> Result<String, BadRecord> {
        match self {
            RawRecord::Text(b) => {
                String::from_utf8(b).map_err(|e| BadRecord::NotUtf8(e.utf8_error().valid_up_to() as u64))
            }
            RawRecord::Value(v) => v.ok_or(BadRecord::Null),
            RawRecord::Json(b) => {
                if let Err(e) = std::str::from_utf8(&b) {
                    return Err(BadRecord::NotUtf8(e.valid_up_to() as u64));
                }
                let value: serde_json::Value = serde_json::from_slice(&b).map_err(|e| BadRecord::Json(e.to_string()))?;
                let serde_json::Value::Object(mut map) = value else { return Err(BadRecord::NotObject) };
                match map.remove(field) {
                    None => Err(BadRecord::MissingField(field.to_string())),
                    Some(serde_json::Value::String(s)) => Ok(s),
                    Some(serde_json::Value::Null) => Err(BadRecord::Null),
                    Some(other) => Err(BadRecord::NotString(json_type(&other))),
                }
            }
        }
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Counts and hashes the bytes read through it (the file's raw, possibly
/// compressed bytes): progress and the input's sha256 come from here.
struct Tap<R> {
    inner: R,
    hash: Sha256,
    read: u64,
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// A finished file: its sha256 (of the bytes on disk) and record count.
#[derive(Debug, Clone)]
pub struct FileDone {
    pub sha256: String,
    pub records: u64,
}

/// Reads `input`'s records in order, calling `emit(number, record, raw_bytes_read_so_far)`
/// for each record numbered `>= skip` (line number from 1 for JSONL, row from 0 for
/// Parquet, 0 for a text file). Blank JSONL lines are not records. `field` is the
/// JSONL field or Parquet column holding the text. Errors that make the whole file
/// unreadable (I/O, corrupt compression, a Parquet file that does not parse, a
/// missing or non-text column) end the read with an error naming the file.
pub fn read_records(
    input: &Input,
    field: &str,
    skip: u64,
    emit: &mut dyn FnMut(u64, RawRecord, u64) -> Result<(), DataError>,
) -> Result<FileDone, DataError> {
    let path = &input.path;
    if input.format == Format::Parquet {
        return read_parquet(input, field, skip, emit);
    }
    let file = File::open(path).map_err(DataError::io(path))?;
    let tap = std::cell::RefCell::new(Tap { inner: file, hash: Sha256::new(), read: 0 });
    struct Shared<'a, R>(&'a std::cell::RefCell<Tap<R>>);
    impl<R: Read> Read for Shared<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.borrow_mut().read(buf)
        }
    }
    let raw = Shared(&tap);
    let mut reader: Box<dyn BufRead> = match input.compression {
        Compression::None => Box::new(BufReader::with_capacity(1 << 20, raw)),
        Compression::Gzip => Box::new(BufReader::with_capacity(1 << 20, flate2::read::MultiGzDecoder::new(raw))),
        Compression::Zstd => {
            let dec = zstd::stream::read::Decoder::new(raw).map_err(|e| decode_error(path, e))?;
            Box::new(BufReader::with_capacity(1 << 20, dec))
        }
    };
    let read_so_far = || tap.borrow().read;
    let mut records = 0u64;
    match input.format {
        Format::Text => {
            let mut bytes = Vec::with_capacity(input.bytes as usize);
            reader.read_to_end(&mut bytes).map_err(|e| decode_error(path, e))?;
            records = 1;
            if skip == 0 {
                emit(0, RawRecord::Text(bytes), read_so_far())?;
            }
        }
        Format::Jsonl => {
            let mut line_no = 0u64;
            loop {
                let mut line = Vec::new();
                let n = reader.read_until(b'\n', &mut line).map_err(|e| decode_error(path, e))?;
                if n == 0 {
                    break;
                }
                line_no += 1;
                while matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.pop();
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                records += 1;
                if line_no >= skip {
                    emit(line_no, RawRecord::Json(line), read_so_far())?;
                }
            }
        }
        Format::Parquet => unreachable!("handled above"),
    }
    drop(reader);
    // Hash whatever the decoder left unread (trailing bytes), so the digest is the file's.
    let mut tap = tap.into_inner();
    std::io::copy(&mut tap, &mut std::io::sink()).map_err(DataError::io(path))?;
    Ok(FileDone { sha256: hex(&tap.hash.finalize()), records })
}

fn decode_error(path: &Path, e: std::io::Error) -> DataError {
    DataError::Unreadable { path: path.to_path_buf(), reason: e.to_string() }
}

fn read_parquet(
    input: &Input,
    field: &str,
    skip: u64,
    emit: &mut dyn FnMut(u64, RawRecord, u64) -> Result<(), DataError>,
) -> Result<FileDone, DataError> {
    let path = &input.path;
    let sha256 = file_sha256(path)?;
    // A compressed Parquet file is inflated into memory first: Parquet needs
    // random access (its footer is at the end).
    let records = match input.compression {
        Compression::None => parquet_rows(File::open(path).map_err(DataError::io(path))?, input, field, skip, emit)?,
        _ => parquet_rows(bytes::Bytes::from(inflate(input)?), input, field, skip, emit)?,
    };
    Ok(FileDone { sha256, records })
}

/// Emits the text column's values of a Parquet file from row `skip` on;
/// returns the file's row count.
fn parquet_rows<R: parquet::file::reader::ChunkReader + 'static>(
    reader: R,
    input: &Input,
    field: &str,
    skip: u64,
    emit: &mut dyn FnMut(u64, RawRecord, u64) -> Result<(), DataError>,
) -> Result<u64, DataError> {
    let path = &input.path;
    let bad = |e: &dyn std::fmt::Display| DataError::Unreadable { path: path.to_path_buf(), reason: e.to_string() };
    let builder = ParquetRecordBatchReaderBuilder::try_new(reader).map_err(|e| bad(&e))?;
    let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
    let schema = builder.schema().clone();
    let Some((idx, f)) = schema.column_with_name(field) else {
        let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(DataError::NoTextColumn { path: path.to_path_buf(), column: field.into(), columns: columns.join(", ") });
    };
    if !matches!(f.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
        return Err(DataError::ColumnNotText { path: path.to_path_buf(), column: field.into(), found: f.data_type().to_string() });
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), [idx]);
    let first = skip.min(rows);
    let batches =
        builder.with_projection(mask).with_batch_size(1024).with_offset(first as usize).build().map_err(|e| bad(&e))?;
    let mut row = first;
    for batch in batches {
        let batch = batch.map_err(|e| bad(&e))?;
        let col = batch.column(0);
        let value = |i: usize| -> Option<String> {
            if col.is_null(i) {
                None
            } else if let Some(a) = col.as_string_opt::<i32>() {
                Some(a.value(i).to_string())
            } else if let Some(a) = col.as_string_opt::<i64>() {
                Some(a.value(i).to_string())
            } else {
                col.as_string_view_opt().map(|a| a.value(i).to_string())
            }
        };
        for i in 0..batch.num_rows() {
            emit(row, RawRecord::Value(value(i)), input.bytes * (row + 1) / rows)?;
            row += 1;
        }
    }
    Ok(rows)
}

/// A whole compressed file, decompressed.
fn inflate(input: &Input) -> Result<Vec<u8>, DataError> {
    let path = &input.path;
    let file = File::open(path).map_err(DataError::io(path))?;
    let mut out = Vec::new();
    let read = match input.compression {
        Compression::None => BufReader::new(file).read_to_end(&mut out),
        Compression::Gzip => flate2::read::MultiGzDecoder::new(file).read_to_end(&mut out),
        Compression::Zstd => zstd::stream::read::Decoder::new(file).and_then(|mut d| d.read_to_end(&mut out)),
    };
    read.map_err(|e| decode_error(path, e))?;
    Ok(out)
}

/// SHA-256 of a file's bytes, streamed.
pub fn file_sha256(path: &Path) -> Result<String, DataError> {
    let mut file = File::open(path).map_err(DataError::io(path))?;
    let mut hash = Sha256::new();
    std::io::copy(&mut file, &mut hash).map_err(DataError::io(path))?;
    Ok(hex(&hash.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_by_extension() {
        let c = |s: &str| classify(Path::new(s));
        assert_eq!(c("a/b.txt"), Some((Format::Text, Compression::None)));
        assert_eq!(c("x.JSONL.gz"), Some((Format::Jsonl, Compression::Gzip)));
        assert_eq!(c("x.ndjson.zst"), Some((Format::Jsonl, Compression::Zstd)));
        assert_eq!(c("x.parquet"), Some((Format::Parquet, Compression::None)));
        assert_eq!(c("x.txt.zst"), Some((Format::Text, Compression::Zstd)));
        assert_eq!(c("README.md"), None);
        assert_eq!(c("x.gz"), None);
    }

    #[test]
    fn wildcards() {
        let w = |p: &str, s: &str| wildcard(p.as_bytes(), s.as_bytes());
        assert!(w("*.jsonl", "a.jsonl"));
        assert!(!w("*.jsonl", "a.jsonl.gz"));
        assert!(w("shard-??.parquet", "shard-07.parquet"));
        assert!(!w("shard-??.parquet", "shard-7.parquet"));
        assert!(w("[a-c]*", "banana"));
        assert!(!w("[!a-c]*", "banana"));
        assert!(w("*", ""));
        assert!(w("a*b*c", "axxbyyc"));
        assert!(!w("a*b*c", "axxbyy"));
    }

    #[test]
    fn json_records() {
        let p = |s: &str| RawRecord::Json(s.as_bytes().to_vec()).parse("text");
        assert_eq!(p(r#"{"text": "hi", "id": 3}"#), Ok("hi".to_string()));
        assert_eq!(p(r#"{"id": 3}"#), Err(BadRecord::MissingField("text".into())));
        assert_eq!(p(r#"{"text": 3}"#), Err(BadRecord::NotString("number")));
        assert_eq!(p(r#"{"text": null}"#), Err(BadRecord::Null));
        assert_eq!(p(r#"[1]"#), Err(BadRecord::NotObject));
        assert!(matches!(p(r#"{"text": "#), Err(BadRecord::Json(_))));
        let bad = RawRecord::Json(b"{\"text\": \"a\xff\"}".to_vec()).parse("text");
        assert_eq!(bad, Err(BadRecord::NotUtf8(11)));
    }
}

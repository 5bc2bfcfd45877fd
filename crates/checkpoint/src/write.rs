//! Writing shard files: `begin` a checkpoint, then `Pending::write_file` once per
//! shard on any rank.
//!
//! Shards are safetensors files (header: 8-byte little-endian length + JSON, padded
//! with spaces to 8 bytes; then raw little-endian F32 data). The header is computed
//! first from the slice lengths, so the file is streamed out in one pass and its SHA-256
//! is computed on the same bytes as they are written, never re-read.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::dirs::{checkpoints_dir, tmp_dir_name};
use crate::error::{io_at, CheckpointError};
use crate::manifest::{
    numel, piece_key, validate_file_name, FileRecord, Piece, FORMAT_NAME, FORMAT_VERSION,
};
use crate::sink::Sink;

/// A flat range of one global tensor, as held by the calling rank.
///
/// `data` holds flat elements `[start, start + data.len())` of the global tensor of
/// shape `global_shape`, in row-major order.
#[derive(Debug, Clone, Copy)]
pub struct TensorSlice<'a> {
    pub name: &'a str,
    pub global_shape: &'a [usize],
    pub start: usize,
    pub data: &'a [f32],
}

/// A checkpoint being written: its temporary folder exists, `commit` has not run.
#[derive(Debug, Clone)]
pub struct Pending {
    run_dir: PathBuf,
    tmp_dir: PathBuf,
    step: u64,
}

/// Starts a checkpoint of `step` under `run_dir/checkpoints/`: creates (or reuses, so
/// that every rank may call it) the temporary folder `.tmp-step-XXXXXXXX`.
pub fn begin(run_dir: &Path, step: u64) -> Result<Pending, CheckpointError> {
    let ckpt_dir = checkpoints_dir(run_dir);
    if !ckpt_dir.is_dir() {
        fs::create_dir_all(&ckpt_dir).map_err(io_at(&ckpt_dir))?;
        // The first save must not vanish with an unsynced `checkpoints` entry.
        crate::fsutil::sync_dir(run_dir)?;
    }
    let tmp_dir = ckpt_dir.join(tmp_dir_name(step));
    match fs::create_dir(&tmp_dir) {
        Ok(()) => {}
        // Another rank got there first (or a crashed attempt at this step left it:
        // its stray files are removed by `commit`, its shards are overwritten).
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tmp_dir.is_dir() => {}
        Err(e) => return Err(CheckpointError::io(&tmp_dir, e)),
    }
    Ok(Pending {
        run_dir: run_dir.to_path_buf(),
        tmp_dir,
        step,
    })
}

impl Pending {
    /// The temporary folder the shards go into.
    pub fn path(&self) -> &Path {
        &self.tmp_dir
    }

    /// The step this checkpoint is for.
    pub fn step(&self) -> u64 {
        self.step
    }

    pub(crate) fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Writes `tensors` to the shard `file_name` (a plain name inside the checkpoint
    /// folder) as a safetensors file of F32 tensors, fsyncs it and returns its record
    /// for the manifest. A whole tensor is stored under its own name and shape; a
    /// partial range under `name[start:end]`, 1-D. Empty slices of non-empty tensors
    /// are skipped.
    ///
    /// On an I/O error (e.g. a full disk) the whole temporary folder is removed, so a
    /// failed checkpoint never lingers; the error names the file.
    pub fn write_file(
        &self,
        file_name: &str,
        tensors: &[TensorSlice],
    ) -> Result<FileRecord, CheckpointError> {
        validate_file_name(file_name)?;
        let (header, pieces) = plan_file(self.step, file_name, tensors)?;
        let path = self.tmp_dir.join(file_name);
        match stream_file(&path, &header, tensors) {
            Ok((sha256, bytes)) => Ok(FileRecord {
                file: file_name.to_string(),
                sha256,
                bytes,
                pieces,
            }),
            Err(e) => {
                // Best effort: the error about the shard matters more than one about
                // the cleanup, and `clean_stale` catches whatever is left.
                let _ = fs::remove_dir_all(&self.tmp_dir);
                Err(e)
            }
        }
    }
}

/// Validates the slices and computes the safetensors header and the manifest pieces.
fn plan_file(
    step: u64,
    file_name: &str,
    tensors: &[TensorSlice],
) -> Result<(Vec<u8>, Vec<Piece>), CheckpointError> {
    let invalid = |name: &str, detail: String| CheckpointError::InvalidSlice {
        file: file_name.to_string(),
        name: name.to_string(),
        detail,
    };
    let mut pieces = Vec::with_capacity(tensors.len());
    let mut infos = Vec::with_capacity(tensors.len());
    let mut keys = HashSet::new();
    let mut offset = 0usize;
    for t in tensors {
        if t.name.is_empty() || t.name == "__metadata__" {
            return Err(invalid(
                t.name,
                "tensor name is empty or reserved by safetensors".into(),
            ));
        }
        let total = numel(t.global_shape).ok_or_else(|| {
            invalid(
                t.name,
                format!("shape {:?} overflows usize", t.global_shape),
            )
        })?;
        let end = t
            .start
            .checked_add(t.data.len())
            .filter(|&e| e <= total)
            .ok_or_else(|| {
                invalid(
                    t.name,
                    format!(
                        "elements [{}, {}+{}) exceed the {total} elements of shape {:?}",
                        t.start,
                        t.start,
                        t.data.len(),
                        t.global_shape
                    ),
                )
            })?;
        if t.data.is_empty() && total > 0 {
            continue;
        }
        let key = piece_key(t.name, t.global_shape, t.start, end);
        if !keys.insert(key.clone()) {
            return Err(invalid(
                t.name,
                format!("range [{}, {end}) appears twice", t.start),
            ));
        }
        let shape = if key == t.name {
            t.global_shape.to_vec()
        } else {
            vec![t.data.len()]
        };
        let nbytes = t.data.len() * 4;
        infos.push((key.clone(), shape, (offset, offset + nbytes)));
        offset += nbytes;
        pieces.push(Piece {
            name: t.name.to_string(),
            global_shape: t.global_shape.to_vec(),
            start: t.start,
            end,
            key,
        });
    }
    let metadata = [
        ("format", FORMAT_NAME.to_string()),
        ("format_version", FORMAT_VERSION.to_string()),
        ("step", step.to_string()),
    ];
    Ok((safetensors_header(&metadata, &infos), pieces))
}

/// A complete safetensors header (8-byte little-endian length, JSON, space padding)
/// for F32 tensors `(key, shape, (begin, end) byte offsets in the data section)`.
///
/// Written by hand rather than through `safetensors::tensor::Metadata` because that
/// serialises `__metadata__` from a `HashMap`, whose random order would make identical
/// checkpoints hash differently. Keys are emitted in data order; readers sort by
/// `data_offsets` anyway.
pub(crate) fn safetensors_header(
    metadata: &[(&str, String)],
    infos: &[(String, Vec<usize>, (usize, usize))],
) -> Vec<u8> {
    use std::fmt::Write as _;
    // serde_json escapes quotes, backslashes and control characters in names.
    let quote = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let extra: Vec<String> = metadata
        .iter()
        .map(|(k, v)| format!("{}:{}", quote(k), quote(v)))
        .collect();
    let mut s = format!("{{\"__metadata__\":{{{}}}", extra.join(","));
    for (key, shape, (begin, end)) in infos {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let _ = write!(
            s,
            ",{}:{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{begin},{end}]}}",
            quote(key),
            dims.join(",")
        );
    }
    s.push('}');
    let mut json = s.into_bytes();
    // The format pads the header with spaces so that the data starts 8-byte aligned.
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut header = Vec::with_capacity(8 + json.len());
    header.extend_from_slice(&(json.len() as u64).to_le_bytes());
    header.extend_from_slice(&json);
    header
}

fn stream_file(
    path: &Path,
    header: &[u8],
    tensors: &[TensorSlice],
) -> Result<(String, u64), CheckpointError> {
    let mut sink = Sink::create(path)?;
    sink.write(header)?;
    for t in tensors {
        sink.write_f32(t.data)?;
    }
    sink.finish()
}

//! Writing shard files: `begin` a checkpoint, then `Pending::write_file` once per
//! shard on any rank, with flat ranges ([`TensorSlice`], ZeRO-style) and N-d boxes
//! ([`NdSlice`], tensor-parallel-style) of global tensors, in any mix.
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
use crate::geometry::{self, volume};
use crate::manifest::{
    format_version_for, numel, piece_key, slice_key, validate_file_name, FileRecord, Piece,
    FORMAT_NAME,
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

/// An N-d box of one global tensor, as held by the calling rank: what a
/// tensor-parallel shard is (e.g. columns 256..512 of a (768, 1024) matrix is
/// `slice: &[(0, 768), (256, 256)]`).
///
/// `slice` holds `(start, len)` for every dimension of `global_shape`; `data` holds the
/// box's elements in row-major order within the box (`len0 * len1 * ...` of them).
/// The shard file stores it with shape `[len0, len1, ...]` under [`crate::slice_key`]
/// (`w[0:768,256:512]`); a box covering the whole tensor is stored as a whole tensor.
#[derive(Debug, Clone, Copy)]
pub struct NdSlice<'a> {
    pub name: &'a str,
    pub global_shape: &'a [usize],
    pub slice: &'a [(usize, usize)],
    pub data: &'a [f32],
}

/// Either kind of slice, so one shard file can mix flat ranges and N-d boxes (e.g.
/// tensor-parallel matrices next to replicated biases). `TensorSlice` and `NdSlice`
/// convert into it, so [`Pending::write_file`] takes slices of either type directly.
#[derive(Debug, Clone, Copy)]
pub enum ShardSlice<'a> {
    Flat(TensorSlice<'a>),
    Nd(NdSlice<'a>),
}

impl<'a> From<TensorSlice<'a>> for ShardSlice<'a> {
    fn from(s: TensorSlice<'a>) -> Self {
        ShardSlice::Flat(s)
    }
}

impl<'a> From<NdSlice<'a>> for ShardSlice<'a> {
    fn from(s: NdSlice<'a>) -> Self {
        ShardSlice::Nd(s)
    }
}

impl<'a> ShardSlice<'a> {
    /// The tensor name.
    pub fn name(&self) -> &'a str {
        match self {
            ShardSlice::Flat(t) => t.name,
            ShardSlice::Nd(t) => t.name,
        }
    }

    /// The elements written.
    pub fn data(&self) -> &'a [f32] {
        match self {
            ShardSlice::Flat(t) => t.data,
            ShardSlice::Nd(t) => t.data,
        }
    }
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
    /// for the manifest. `tensors` are [`TensorSlice`]s, [`NdSlice`]s, or a mix as
    /// [`ShardSlice`]s. A whole tensor is stored under its own name and shape; a
    /// partial flat range under `name[start:end]`, 1-D; an N-d box under
    /// `name[s0:e0,s1:e1,...]` with the box's shape. Empty slices of non-empty tensors
    /// are skipped.
    ///
    /// On an I/O error (e.g. a full disk) the whole temporary folder is removed, so a
    /// failed checkpoint never lingers; the error names the file. Invalid slices (out
    /// of the global shape, wrong data length or rank) are
    /// [`CheckpointError::InvalidSlice`] and leave the folder alone.
    pub fn write_file<'a, S>(
        &self,
        file_name: &str,
        tensors: &[S],
    ) -> Result<FileRecord, CheckpointError>
    where
        S: Copy + Into<ShardSlice<'a>>,
    {
        validate_file_name(file_name)?;
        let tensors: Vec<ShardSlice> = tensors.iter().map(|&t| t.into()).collect();
        let tensors = tensors.as_slice();
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
    tensors: &[ShardSlice],
) -> Result<(Vec<u8>, Vec<Piece>), CheckpointError> {
    let mut pieces = Vec::with_capacity(tensors.len());
    let mut infos = Vec::with_capacity(tensors.len());
    let mut keys = HashSet::new();
    let mut offset = 0usize;
    for t in tensors {
        let Some((piece, shape)) = plan_piece(file_name, t)? else {
            continue;
        };
        if !keys.insert(piece.key.clone()) {
            let what = match &piece.slice {
                Some(slice) => format!("slice {}", geometry::show(slice)),
                None => format!("range [{}, {})", piece.start, piece.end),
            };
            return Err(CheckpointError::InvalidSlice {
                file: file_name.to_string(),
                name: piece.name,
                detail: format!("{what} appears twice"),
            });
        }
        let nbytes = t.data().len() * 4;
        infos.push((piece.key.clone(), shape, (offset, offset + nbytes)));
        offset += nbytes;
        pieces.push(piece);
    }
    let metadata = [
        ("format", FORMAT_NAME.to_string()),
        (
            "format_version",
            format_version_for(pieces.iter()).to_string(),
        ),
        ("step", step.to_string()),
    ];
    Ok((safetensors_header(&metadata, &infos), pieces))
}

/// Validates one slice; returns its manifest piece and the shape its key gets in the
/// file, or `None` for an empty slice of a non-empty tensor (nothing to store).
fn plan_piece(
    file_name: &str,
    slice: &ShardSlice,
) -> Result<Option<(Piece, Vec<usize>)>, CheckpointError> {
    let (name, global_shape, data) = match slice {
        ShardSlice::Flat(t) => (t.name, t.global_shape, t.data),
        ShardSlice::Nd(t) => (t.name, t.global_shape, t.data),
    };
    let invalid = |detail: String| CheckpointError::InvalidSlice {
        file: file_name.to_string(),
        name: name.to_string(),
        detail,
    };
    if name.is_empty() || name == "__metadata__" {
        return Err(invalid(
            "tensor name is empty or reserved by safetensors".into(),
        ));
    }
    let total = numel(global_shape)
        .ok_or_else(|| invalid(format!("shape {global_shape:?} overflows usize")))?;
    let whole = |end: usize| Piece {
        name: name.to_string(),
        global_shape: global_shape.to_vec(),
        start: 0,
        end,
        key: name.to_string(),
        slice: None,
    };
    match slice {
        ShardSlice::Flat(t) => {
            let end = t
                .start
                .checked_add(data.len())
                .filter(|&e| e <= total)
                .ok_or_else(|| {
                    invalid(format!(
                        "elements [{}, {}+{}) exceed the {total} elements of shape {global_shape:?}",
                        t.start,
                        t.start,
                        data.len(),
                    ))
                })?;
            if data.is_empty() && total > 0 {
                return Ok(None);
            }
            let key = piece_key(name, global_shape, t.start, end);
            if key == name {
                return Ok(Some((whole(end), global_shape.to_vec())));
            }
            let piece = Piece {
                name: name.to_string(),
                global_shape: global_shape.to_vec(),
                start: t.start,
                end,
                key,
                slice: None,
            };
            Ok(Some((piece, vec![data.len()])))
        }
        ShardSlice::Nd(t) => {
            if let Some(why) = geometry::misfit(global_shape, t.slice) {
                return Err(invalid(format!("slice {}: {why}", geometry::show(t.slice))));
            }
            let n = volume(t.slice);
            if data.len() != n {
                return Err(invalid(format!(
                    "data has {} elements, slice {} holds {n}",
                    data.len(),
                    geometry::show(t.slice)
                )));
            }
            if n == 0 && total > 0 {
                return Ok(None);
            }
            // A box covering the whole tensor (or any box of an empty tensor, which
            // only registers the tensor) is stored exactly like a whole flat tensor.
            if n == total {
                return Ok(Some((whole(total), global_shape.to_vec())));
            }
            let (start, end) = geometry::span(global_shape, t.slice);
            let piece = Piece {
                name: name.to_string(),
                global_shape: global_shape.to_vec(),
                start,
                end,
                key: slice_key(name, global_shape, t.slice),
                slice: Some(t.slice.to_vec()),
            };
            Ok(Some((piece, t.slice.iter().map(|&(_, l)| l).collect())))
        }
    }
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
    tensors: &[ShardSlice],
) -> Result<(String, u64), CheckpointError> {
    let mut sink = Sink::create(path)?;
    sink.write(header)?;
    for t in tensors {
        sink.write_f32(t.data())?;
    }
    sink.finish()
}

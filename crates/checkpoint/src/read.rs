//! Loading: resolve which folder to load, verify every shard, then serve any flat range
//! or N-d box of any tensor by intersecting it with the saved pieces, flat or N-d
//! ([`crate::gather`]), whatever layout wrote them.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::dirs::{complete_steps, parse_step_dir, CHECKPOINTS_DIR, LATEST_FILE, TMP_PREFIX};
use crate::error::{io_at, CheckpointError};
use crate::gather::{gather, Located, Request};
use crate::geometry::{misfit, span, volume};
use crate::manifest::{numel, FileRecord, Manifest, MANIFEST_FILE};
use crate::sink::hex;

/// A committed, verified checkpoint open for reading. Reads use positioned I/O on
/// shared handles, so one `Checkpoint` can serve many rank threads at once.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    manifest: Manifest,
    handles: Vec<File>,
    index: HashMap<String, Tensor>,
}

/// A tensor's global shape and its pieces, sorted by (span) start.
#[derive(Debug)]
struct Tensor {
    shape: Vec<usize>,
    pieces: Vec<Located>,
    /// No N-d piece: the pieces tile `[0, numel)` in order, so a flat range finds its
    /// first piece by binary search.
    all_flat: bool,
}

/// Opens a checkpoint. `path` is either a run dir (follows `checkpoints/latest`; if
/// `latest` is missing or names a missing folder, falls back to the newest complete
/// `step-*` folder), a `checkpoints/` folder, or one checkpoint folder. Verifies every
/// shard's size and SHA-256 against the manifest and its safetensors header against
/// the pieces. Temporary `.tmp-*` folders are never loaded.
pub fn open(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let dir = resolve(path)?;
    let manifest_path = dir.join(MANIFEST_FILE);
    let bytes = fs::read(&manifest_path).map_err(io_at(&manifest_path))?;
    let manifest = Manifest::parse(&bytes, &manifest_path)?;

    let mut handles = Vec::with_capacity(manifest.files.len());
    let mut index: HashMap<String, Tensor> = HashMap::new();
    for (file_idx, (record, verified)) in manifest
        .files
        .iter()
        .zip(verify_all(&dir, &manifest.files))
        .enumerate()
    {
        let (handle, data_start) = verified?;
        for piece in &record.pieces {
            let entry = index.entry(piece.name.clone()).or_insert_with(|| Tensor {
                shape: piece.global_shape.clone(),
                pieces: Vec::new(),
                all_flat: true,
            });
            entry.all_flat &= piece.slice.is_none();
            entry.pieces.push(Located {
                start: piece.start,
                end: piece.end,
                file: file_idx,
                // check_header found every piece key, so the lookup cannot miss.
                offset: data_start.get(&piece.key).copied().unwrap_or_default(),
                slice: piece.slice.clone(),
            });
        }
        handles.push(handle);
    }
    for tensor in index.values_mut() {
        tensor.pieces.sort_by_key(|p| p.start);
    }
    Ok(Checkpoint {
        dir,
        manifest,
        handles,
        index,
    })
}

/// What [`open_newest_valid`] found: the newest checkpoint that verifies, and the
/// newer ones it skipped, each with the reason.
#[derive(Debug)]
pub struct Newest {
    pub checkpoint: Checkpoint,
    pub skipped: Vec<(PathBuf, CheckpointError)>,
}

/// Opens the newest checkpoint of a run (`path`: a run dir or its `checkpoints/`
/// folder) that verifies, trying the committed `step-*` folders from the highest step
/// down. A checkpoint folder given itself is opened alone (no fallback: it was named).
/// When none verifies, the error lists every folder with its reason.
pub fn open_newest_valid(path: &Path) -> Result<Newest, CheckpointError> {
    if path.join(MANIFEST_FILE).is_file() {
        return Ok(Newest { checkpoint: open(path)?, skipped: Vec::new() });
    }
    let ckpt_dir = if path.join(CHECKPOINTS_DIR).is_dir() { path.join(CHECKPOINTS_DIR) } else { path.to_path_buf() };
    let mut skipped = Vec::new();
    for (_, dir) in complete_steps(&ckpt_dir)?.into_iter().rev() {
        match open(&dir) {
            Ok(checkpoint) => return Ok(Newest { checkpoint, skipped }),
            Err(e) => skipped.push((dir, e)),
        }
    }
    if skipped.is_empty() {
        // No committed folder at all: `open` says what was expected.
        return open(path).map(|checkpoint| Newest { checkpoint, skipped });
    }
    let reasons: Vec<String> = skipped.iter().map(|(d, e)| format!("{}: {e}", d.display())).collect();
    Err(CheckpointError::NotFound {
        path: path.to_path_buf(),
        hint: format!("no checkpoint verifies ({})", reasons.join("; ")),
    })
}

/// Finds the checkpoint folder `path` designates.
fn resolve(path: &Path) -> Result<PathBuf, CheckpointError> {
    let is_tmp = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(TMP_PREFIX))
    };
    if path.join(MANIFEST_FILE).is_file() {
        if is_tmp(path) {
            return Err(CheckpointError::NotFound {
                path: path.to_path_buf(),
                hint:
                    "this is an uncommitted temporary folder (a crash mid-save); it is never loaded"
                        .into(),
            });
        }
        return Ok(path.to_path_buf());
    }
    let ckpt_dir = if path.join(CHECKPOINTS_DIR).is_dir() {
        path.join(CHECKPOINTS_DIR)
    } else {
        path.to_path_buf()
    };
    if let Some(dir) = follow_latest(&ckpt_dir) {
        return Ok(dir);
    }
    match complete_steps(&ckpt_dir)?.pop() {
        Some((_, dir)) => Ok(dir),
        None => Err(CheckpointError::NotFound {
            path: path.to_path_buf(),
            hint: format!(
                "expected a run dir with {CHECKPOINTS_DIR}/step-*/{MANIFEST_FILE}, or a checkpoint folder holding {MANIFEST_FILE}"
            ),
        }),
    }
}

/// The folder `latest` names, if it is a committed step folder that exists.
fn follow_latest(ckpt_dir: &Path) -> Option<PathBuf> {
    let name = fs::read_to_string(ckpt_dir.join(LATEST_FILE)).ok()?;
    let name = name.trim();
    // Only plain `step-N` names: a corrupt pointer must not lead outside the folder.
    parse_step_dir(name)?;
    let dir = ckpt_dir.join(name);
    dir.join(MANIFEST_FILE).is_file().then_some(dir)
}

/// An open, verified shard and the absolute byte offset of each of its piece keys.
type Verified = (File, HashMap<String, u64>);

/// Verifies every shard (size, SHA-256, header), on up to one thread per core since
/// hashing, not the disk, is the bottleneck on fast local storage (~1.1 GB/s per core
/// with SHA-NI). Results come back in file order so the first error is deterministic.
fn verify_all(dir: &Path, files: &[FileRecord]) -> Vec<Result<Verified, CheckpointError>> {
    let one = |record: &FileRecord| {
        let path = dir.join(&record.file);
        let handle = verify(&path, record)?;
        let offsets = check_header(&handle, &path, record)?;
        Ok((handle, offsets))
    };
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len());
    if workers <= 1 {
        return files.iter().map(one).collect();
    }
    let mut results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let one = &one;
                s.spawn(move || {
                    files
                        .iter()
                        .enumerate()
                        .skip(w)
                        .step_by(workers)
                        .map(|(i, r)| (i, one(r)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// Checks size and SHA-256 of one shard; returns the open handle for later reads.
fn verify(path: &Path, record: &FileRecord) -> Result<File, CheckpointError> {
    let mut file = File::open(path).map_err(io_at(path))?;
    let actual_bytes = file.metadata().map_err(io_at(path))?.len();
    if actual_bytes < record.bytes {
        return Err(CheckpointError::Truncated {
            file: path.to_path_buf(),
            expected_bytes: record.bytes,
            actual_bytes,
        });
    }
    if actual_bytes > record.bytes {
        return Err(CheckpointError::Oversized {
            file: path.to_path_buf(),
            expected_bytes: record.bytes,
            actual_bytes,
        });
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_at(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let actual = hex(&hasher.finalize());
    if actual != record.sha256 {
        return Err(CheckpointError::Checksum {
            file: path.to_path_buf(),
            expected: record.sha256.clone(),
            actual,
        });
    }
    Ok(file)
}

/// Parses the shard's safetensors header with the `safetensors` crate and checks it
/// against the manifest's pieces; returns each piece key's absolute data offset.
fn check_header(
    file: &File,
    path: &Path,
    record: &FileRecord,
) -> Result<HashMap<String, u64>, CheckpointError> {
    let bad = |message: String| CheckpointError::BadShard {
        file: path.to_path_buf(),
        message,
    };
    let Header { metadata, data_start, data_end } = read_header(file, path, record.bytes)?;
    let tensors = metadata.tensors();
    if data_start + data_end != record.bytes {
        return Err(bad(format!(
            "header describes {} bytes of data but the file holds {}",
            data_end,
            record.bytes - data_start
        )));
    }
    let mut offsets = HashMap::with_capacity(record.pieces.len());
    for piece in &record.pieces {
        let info = tensors.get(&piece.key).ok_or_else(|| {
            bad(format!(
                "key `{}` listed in the manifest is not in the file",
                piece.key
            ))
        })?;
        let elems = numel(&info.shape).unwrap_or(usize::MAX);
        if info.dtype != safetensors::Dtype::F32 || elems != piece.len() {
            return Err(bad(format!(
                "key `{}` is {:?} {:?}, manifest expects F32 with {} elements",
                piece.key,
                info.dtype,
                info.shape,
                piece.len()
            )));
        }
        if let Some(slice) = &piece.slice {
            let lens: Vec<usize> = slice.iter().map(|&(_, l)| l).collect();
            if info.shape != lens {
                return Err(bad(format!(
                    "key `{}` has shape {:?}, manifest expects its slice's shape {lens:?}",
                    piece.key, info.shape
                )));
            }
        }
        offsets.insert(piece.key.clone(), data_start + info.data_offsets.0 as u64);
    }
    Ok(offsets)
}

impl Checkpoint {
    /// The checkpoint folder that was loaded (`.../checkpoints/step-XXXXXXXX`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The training step the checkpoint was taken at.
    pub fn step(&self) -> u64 {
        self.manifest.step
    }

    /// The caller's JSON saved with the checkpoint (config, RNG, data position...).
    pub fn meta(&self) -> &serde_json::Value {
        &self.manifest.meta
    }

    /// Every tensor name, in the order they were first written.
    pub fn tensor_names(&self) -> Vec<String> {
        self.manifest
            .tensors
            .iter()
            .map(|t| t.name.clone())
            .collect()
    }

    /// A tensor's global shape, `None` if it is not in the checkpoint.
    pub fn global_shape(&self, name: &str) -> Option<&[usize]> {
        self.index.get(name).map(|t| t.shape.as_slice())
    }

    fn tensor(&self, name: &str) -> Result<&Tensor, CheckpointError> {
        self.index
            .get(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                name: name.to_string(),
            })
    }

    /// The whole manifest (format, step, meta, tensors, files).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The shard files and their pieces, as recorded in the manifest.
    pub fn files(&self) -> &[FileRecord] {
        &self.manifest.files
    }

    /// Reads a whole tensor (flat, row-major).
    pub fn read(&self, name: &str) -> Result<Vec<f32>, CheckpointError> {
        let shape = self
            .global_shape(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                name: name.to_string(),
            })?;
        // The manifest check at open guarantees numel fits (coverage was computed).
        let total = numel(shape).unwrap_or(0);
        let mut out = vec![0f32; total];
        self.read_range(name, 0, total, &mut out)?;
        Ok(out)
    }

    /// Reads flat elements `[start, end)` of tensor `name` into `out`
    /// (`out.len() == end - start`), assembled from whichever pieces hold them, flat
    /// or N-d.
    pub fn read_range(
        &self,
        name: &str,
        start: usize,
        end: usize,
        out: &mut [f32],
    ) -> Result<(), CheckpointError> {
        let tensor = self.tensor(name)?;
        let total = numel(&tensor.shape).unwrap_or(0);
        let invalid = |detail: String| CheckpointError::InvalidRange {
            name: name.to_string(),
            start,
            end,
            detail,
        };
        if start > end || end > total {
            return Err(invalid(format!(
                "tensor has {total} elements (shape {:?})",
                tensor.shape
            )));
        }
        if out.len() != end - start {
            return Err(invalid(format!(
                "output buffer holds {} elements, range has {}",
                out.len(),
                end - start
            )));
        }
        // Flat pieces tile [0, total) in order (checked at open), so the first piece
        // that ends after `start` is where the range begins. N-d pieces' spans overlap
        // each other: every piece whose span meets the range is asked.
        let first = if tensor.all_flat {
            tensor.pieces.partition_point(|p| p.end <= start)
        } else {
            0
        };
        for p in &tensor.pieces[first..] {
            if p.start >= end {
                break;
            }
            if p.end > start {
                self.gather(tensor, p, Request::Flat(start, end), out)?;
            }
        }
        Ok(())
    }

    /// Reads the N-d box `slice` (`(start, len)` for every dimension) of tensor `name`
    /// into `out`, row-major within the box (`out.len()` is the product of the lens),
    /// assembled from whichever pieces hold it, flat or N-d: e.g. a tensor-parallel
    /// rank's column block of a matrix saved by any layout.
    pub fn read_slice(
        &self,
        name: &str,
        slice: &[(usize, usize)],
        out: &mut [f32],
    ) -> Result<(), CheckpointError> {
        let tensor = self.tensor(name)?;
        let invalid = |detail: String| CheckpointError::InvalidReadSlice {
            name: name.to_string(),
            slice: slice.to_vec(),
            detail,
        };
        if let Some(why) = misfit(&tensor.shape, slice) {
            return Err(invalid(why));
        }
        let n = volume(slice);
        if out.len() != n {
            return Err(invalid(format!(
                "output buffer holds {} elements, slice has {n}",
                out.len()
            )));
        }
        if n == 0 {
            return Ok(());
        }
        let (start, end) = span(&tensor.shape, slice);
        for p in &tensor.pieces {
            if p.start >= end {
                break;
            }
            if p.end > start {
                self.gather(tensor, p, Request::Block(slice), out)?;
            }
        }
        Ok(())
    }

    fn gather(
        &self,
        tensor: &Tensor,
        p: &Located,
        req: Request,
        out: &mut [f32],
    ) -> Result<(), CheckpointError> {
        let path = self.dir.join(&self.manifest.files[p.file].file);
        gather(&self.handles[p.file], &path, &tensor.shape, p, req, out)
    }
}

/// A parsed safetensors header: the metadata, where the data section starts, and the
/// end of the data the header describes (relative to `data_start`).
pub(crate) struct Header {
    pub metadata: safetensors::tensor::Metadata,
    pub data_start: u64,
    pub data_end: u64,
}

/// Reads and parses the header of the safetensors file `file` (of `size` bytes) with the
/// `safetensors` crate's types; a malformed header is `BadShard` naming the file.
pub(crate) fn read_header(file: &File, path: &Path, size: u64) -> Result<Header, CheckpointError> {
    let bad = |message: String| CheckpointError::BadShard { file: path.to_path_buf(), message };
    let mut len = [0u8; 8];
    file.read_exact_at(&mut len, 0)
        .map_err(|e| bad(format!("cannot read the 8-byte header length: {e}")))?;
    let n = u64::from_le_bytes(len);
    // Same cap as the reference reader (100 MB), which also bounds our allocation.
    if n > 100_000_000 || 8 + n > size {
        return Err(bad(format!("header length {n} is implausible for a {size}-byte file")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact_at(&mut header, 8).map_err(io_at(path))?;
    let metadata: safetensors::tensor::Metadata = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("header is not a valid safetensors header: {e}")))?;
    let data_end = metadata.tensors().values().map(|t| t.data_offsets.1).max().unwrap_or(0) as u64;
    Ok(Header { metadata, data_start: 8 + n, data_end })
}

//! The crate's one error type. Every variant names the file, tensor or key it is about,
//! so a failed save or load can be acted on without a debugger.

use std::path::PathBuf;

/// Everything that can go wrong while writing or reading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// An operating-system I/O call failed (full disk, permissions, missing folder...).
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A shard file's SHA-256 differs from the one recorded in the manifest.
    #[error("checksum mismatch in {file}: manifest says sha256 {expected}, file has {actual}")]
    Checksum {
        file: PathBuf,
        expected: String,
        actual: String,
    },

    /// A shard file is shorter than the manifest says (an interrupted copy or write).
    #[error("{file} is truncated: manifest says {expected_bytes} bytes, file has {actual_bytes}")]
    Truncated {
        file: PathBuf,
        expected_bytes: u64,
        actual_bytes: u64,
    },

    /// A shard file is longer than the manifest says (appended to after the save).
    #[error("{file} is larger than recorded: manifest says {expected_bytes} bytes, file has {actual_bytes}")]
    Oversized {
        file: PathBuf,
        expected_bytes: u64,
        actual_bytes: u64,
    },

    /// The checkpoint has no tensor of this name.
    #[error("tensor `{name}` is not in the checkpoint")]
    MissingTensor { name: String },

    /// The pieces of a tensor do not cover each of its elements exactly once (a gap, an
    /// overlap, or a piece outside the shape); `detail` names the files and region.
    #[error("tensor `{name}` is not covered exactly once by the saved pieces: {detail}")]
    Coverage { name: String, detail: String },

    /// Two pieces or files disagree on a tensor's global shape.
    #[error("tensor `{name}` has global shape {first:?} in one piece and {second:?} in another")]
    ShapeMismatch {
        name: String,
        first: Vec<usize>,
        second: Vec<usize>,
    },

    /// A slice handed to `write_file` does not fit in its tensor's global shape, has the
    /// wrong rank or data length, or is written twice to one file.
    #[error("slice of `{name}` in {file}: {detail}")]
    InvalidSlice {
        file: String,
        name: String,
        detail: String,
    },

    /// A requested flat range lies outside the tensor or does not match the output buffer.
    #[error("range [{start}, {end}) of `{name}` is invalid: {detail}")]
    InvalidRange {
        name: String,
        start: usize,
        end: usize,
        detail: String,
    },

    /// A requested N-d box (`(start, len)` per dim) does not fit the tensor or does
    /// not match the output buffer.
    #[error("slice {} of `{name}` is invalid: {detail}", crate::geometry::show(.slice))]
    InvalidReadSlice {
        name: String,
        slice: Vec<(usize, usize)>,
        detail: String,
    },

    /// A shard file name that could escape the checkpoint folder or collide with its
    /// bookkeeping files.
    #[error("invalid shard file name `{name}`: {reason}")]
    InvalidFileName { name: String, reason: String },

    /// The same shard file appears twice in the records handed to `commit`.
    #[error("shard file `{file}` is listed more than once")]
    DuplicateFile { file: String },

    /// manifest.json is missing a field, has the wrong version, or is not JSON.
    #[error("bad manifest {path}: {message}")]
    BadManifest { path: PathBuf, message: String },

    /// A shard file's safetensors header disagrees with the manifest or is malformed.
    #[error("bad shard file {file}: {message}")]
    BadShard { file: PathBuf, message: String },

    /// Nothing loadable at the given path.
    #[error("no checkpoint at {path}: {hint}")]
    NotFound { path: PathBuf, hint: String },
}

impl CheckpointError {
    /// Shorthand used with `map_err`: `.map_err(io_at(&path))`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Returns a closure that wraps an `io::Error` with the path it happened on.
pub(crate) fn io_at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::io(path, source)
}

//! Copying any region of a tensor (a flat range or an N-d box) out of one saved piece
//! (flat or N-d), run by run, with positioned reads on the piece's shard file.
//!
//! Piece and request meet on boxes ([`crate::geometry`]): each is one box or, when flat,
//! the few boxes of its range; every pair of boxes that intersects is copied as runs
//! contiguous in both. Dense copies (most of the bytes between the first and the last
//! run are wanted, e.g. a column block read whole) go through a bounded window of the
//! piece, so 50 000 rows of 96 columns are a handful of reads, not 50 000; sparse ones
//! read each run on its own, so a small request never reads a large piece.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::CheckpointError;
use crate::geometry::{flat_to_boxes, for_each_run, intersect, span, src_extent, volume, Block};

/// Elements per positioned read: bounds the staging memory for multi-GB tensors.
const CHUNK: usize = 1 << 18;

/// A saved piece and where its bytes are.
#[derive(Debug, Clone)]
pub(crate) struct Located {
    /// Flat range of a flat piece, flat span of an N-d one.
    pub start: usize,
    pub end: usize,
    /// Index of the shard file.
    pub file: usize,
    /// Byte offset of the piece's first element in the file.
    pub offset: u64,
    /// The box of an N-d piece.
    pub slice: Option<Block>,
}

/// What a read asks for, in global coordinates; `out` holds it row-major.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Request<'r> {
    Flat(usize, usize),
    Block(&'r [(usize, usize)]),
}

/// Copies the elements of piece `p` (of a tensor of `shape`, stored in `file` at
/// `path`) that fall in `req` into their places in `out`.
pub(crate) fn gather(
    file: &File,
    path: &Path,
    shape: &[usize],
    p: &Located,
    req: Request,
    out: &mut [f32],
) -> Result<(), CheckpointError> {
    let mut reader = Reader {
        file,
        path,
        base: p.offset,
        window: Vec::new(),
        window_start: 0,
        bytes: Vec::new(),
    };
    // Flat piece, flat request: one interval, as before N-d pieces existed.
    if let (None, Request::Flat(start, end)) = (&p.slice, req) {
        let (lo, hi) = (p.start.max(start), p.end.min(end));
        if lo < hi {
            reader.copy(lo - p.start, &mut out[lo - start..hi - start], None)?;
        }
        return Ok(());
    }
    // (box, offset of its first element in the piece's data / in `out`).
    let src: Vec<(Block, usize)> = match &p.slice {
        Some(b) => vec![(b.clone(), 0)],
        None => with_offsets(shape, p.start, p.end),
    };
    let dst: Vec<(Block, usize)> = match req {
        Request::Flat(start, end) => with_offsets(shape, start, end),
        Request::Block(b) => vec![(b.to_vec(), 0)],
    };
    for (sb, so) in &src {
        for (db, doff) in &dst {
            let Some(inner) = intersect(sb, db) else {
                continue;
            };
            let (first, last) = src_extent(&inner, sb);
            // Windowed when at least a quarter of the bytes spanned are wanted.
            let window_end = (volume(&inner) * 4 >= last - first).then_some(so + last);
            for_each_run(&inner, sb, db, |s, d, len| {
                reader.copy(so + s, &mut out[doff + d..doff + d + len], window_end)
            })?;
        }
    }
    Ok(())
}

/// The boxes of the flat range `[start, end)`, each with its offset from `start`.
fn with_offsets(shape: &[usize], start: usize, end: usize) -> Vec<(Block, usize)> {
    flat_to_boxes(shape, start, end)
        .into_iter()
        .map(|b| {
            let offset = span(shape, &b).0 - start;
            (b, offset)
        })
        .collect()
}

/// Positioned reads of one piece's f32 data, through an optional window.
struct Reader<'f> {
    file: &'f File,
    path: &'f Path,
    /// Byte offset of the piece's element 0.
    base: u64,
    /// Piece elements `[window_start, window_start + window.len())`.
    window: Vec<f32>,
    window_start: usize,
    bytes: Vec<u8>,
}

impl Reader<'_> {
    /// Fills `dst` with piece elements `[at, at + dst.len())`. With `window_end`, reads
    /// go through a window of up to `CHUNK` elements ending at most at `window_end`
    /// (the end of what the current copy needs); without, straight into `dst`.
    fn copy(
        &mut self,
        at: usize,
        dst: &mut [f32],
        window_end: Option<usize>,
    ) -> Result<(), CheckpointError> {
        let mut done = 0;
        while done < dst.len() {
            let pos = at + done;
            let in_window = pos >= self.window_start && pos < self.window_start + self.window.len();
            if in_window {
                let from = &self.window[pos - self.window_start..];
                let n = from.len().min(dst.len() - done);
                dst[done..done + n].copy_from_slice(&from[..n]);
                done += n;
            } else if let Some(limit) = window_end {
                self.window.resize(CHUNK.min(limit - pos), 0.0);
                self.window_start = pos;
                read_f32(
                    self.file,
                    self.path,
                    self.base + 4 * pos as u64,
                    &mut self.window,
                    &mut self.bytes,
                )?;
            } else {
                let n = CHUNK.min(dst.len() - done);
                let offset = self.base + 4 * pos as u64;
                read_f32(
                    self.file,
                    self.path,
                    offset,
                    &mut dst[done..done + n],
                    &mut self.bytes,
                )?;
                done += n;
            }
        }
        Ok(())
    }
}

/// Reads `out.len()` little-endian f32 at byte `offset` of `file`, staging in `bytes`.
fn read_f32(
    file: &File,
    path: &Path,
    offset: u64,
    out: &mut [f32],
    bytes: &mut Vec<u8>,
) -> Result<(), CheckpointError> {
    bytes.resize(out.len() * 4, 0);
    file.read_exact_at(bytes, offset)
        .map_err(|e| CheckpointError::io(path, e))?;
    for (d, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    Ok(())
}

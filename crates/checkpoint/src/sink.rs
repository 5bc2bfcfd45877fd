//! `Sink`: a file being written, hashed (SHA-256) on the same bytes, and fsynced.
//!
//! SHA-256 is the slowest stage of a save (~0.85-1.5 GB/s per core with SHA-NI,
//! against ~3+ GB/s for a page-cache write and ~16 GB/s for the f32 -> LE conversion),
//! so large f32 streams hash on a helper thread while the caller converts and writes
//! the next chunk: with a free core a save runs at roughly the hash rate instead of
//! the sum of the stage times. Small files (manifest, pointer) hash inline.
//! Measured on the shared 2-core dev box at load ~8 (no free core), threaded and
//! inline hashing tie at ~500-600 MB/s into tmpfs (examples/bench.rs); the overlap
//! pays on a training node, whose cores are idle while a checkpoint is written.
//!
//! This is also the seam for failure tests: under `cfg(test)` a thread-local fault
//! (see [`fault`]) makes writes to a chosen file name fail after a byte budget, the way
//! a full disk would, without any test-only parameter on the public API.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::error::{io_at, CheckpointError};

/// Elements per chunk: 1 MiB of bytes amortises syscalls and channel hand-offs while
/// a few chunks in flight stay within L2/L3.
const CHUNK_ELEMS: usize = 1 << 18;
/// Streams shorter than this hash inline: a thread spawn (~20 us) would not pay off.
const THREAD_MIN_BYTES: usize = 4 << 20;
/// Chunks queued to the hashing thread before the writer waits.
const IN_FLIGHT: usize = 3;
/// Buffers in circulation: queued, being hashed, being filled.
const POOL: usize = IN_FLIGHT + 2;

enum Hasher {
    Inline(Sha256),
    Thread {
        to_hasher: SyncSender<Vec<u8>>,
        /// Buffers the hasher is done with, for reuse.
        spare: Receiver<Vec<u8>>,
        /// Buffers created so far (at most `POOL`).
        pooled: usize,
        done: JoinHandle<Sha256>,
    },
}

pub(crate) struct Sink {
    file: File,
    path: PathBuf,
    hasher: Hasher,
    written: u64,
    /// Staging buffer for inline hashing.
    buf: Vec<u8>,
    #[cfg(test)]
    budget: Option<u64>,
}

impl Sink {
    pub(crate) fn create(path: &Path) -> Result<Self, CheckpointError> {
        let file = File::create(path).map_err(io_at(path))?;
        Ok(Sink {
            file,
            path: path.to_path_buf(),
            hasher: Hasher::Inline(Sha256::new()),
            written: 0,
            buf: Vec::new(),
            #[cfg(test)]
            budget: fault::budget_for(path),
        })
    }

    /// Writes bytes to the file only (hashing is the caller's job).
    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), CheckpointError> {
        #[cfg(test)]
        if let Some(budget) = self.budget {
            if self.written + bytes.len() as u64 > budget {
                let fits = (budget - self.written) as usize;
                let _ = self.file.write_all(&bytes[..fits]);
                self.written = budget;
                return Err(CheckpointError::io(&self.path, fault::disk_full()));
            }
        }
        self.file.write_all(bytes).map_err(io_at(&self.path))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Writes and hashes `bytes`.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<(), CheckpointError> {
        self.write_raw(bytes)?;
        match &mut self.hasher {
            Hasher::Inline(h) => h.update(bytes),
            Hasher::Thread { .. } => self.send(bytes.to_vec())?,
        }
        Ok(())
    }

    /// Writes `data` as little-endian f32 in bounded chunks, hashing large streams on
    /// a helper thread.
    pub(crate) fn write_f32(&mut self, data: &[f32]) -> Result<(), CheckpointError> {
        if data.len() * 4 >= THREAD_MIN_BYTES {
            self.start_thread();
        }
        for chunk in data.chunks(CHUNK_ELEMS) {
            let mut buf = match &mut self.hasher {
                // A fixed pool of buffers circulates between writer and hasher; fresh
                // 1 MiB allocations per chunk would cost page faults (measured 15%).
                Hasher::Thread { spare, pooled, .. } => match spare.try_recv() {
                    Ok(buf) => buf,
                    Err(_) if *pooled < POOL => {
                        *pooled += 1;
                        Vec::with_capacity(CHUNK_ELEMS * 4)
                    }
                    Err(_) => spare.recv().unwrap_or_default(),
                },
                _ => std::mem::take(&mut self.buf),
            };
            buf.resize(chunk.len() * 4, 0);
            // Zipping fixed 4-byte chunks lets the compiler vectorise (measured ~5x
            // faster than pushing each element's bytes).
            for (dst, x) in buf.chunks_exact_mut(4).zip(chunk) {
                dst.copy_from_slice(&x.to_le_bytes());
            }
            self.write_raw(&buf)?;
            match &mut self.hasher {
                Hasher::Inline(h) => {
                    h.update(&buf);
                    self.buf = buf;
                }
                _ => self.send(buf)?,
            }
        }
        Ok(())
    }

    fn start_thread(&mut self) {
        let Hasher::Inline(inline) = &mut self.hasher else {
            return; // already threaded
        };
        // The state so far (the header) moves to the thread; `self.hasher` is
        // overwritten below, so the fresh state `take` leaves is never used.
        let mut h = std::mem::take(inline);
        let (to_hasher, from_writer) = sync_channel::<Vec<u8>>(IN_FLIGHT);
        let (to_writer, spare) = sync_channel::<Vec<u8>>(POOL);
        let done = std::thread::spawn(move || {
            for buf in from_writer {
                h.update(&buf);
                // The writer may have stopped (error) and dropped its end.
                let _ = to_writer.try_send(buf);
            }
            h
        });
        self.hasher = Hasher::Thread {
            to_hasher,
            spare,
            pooled: 0,
            done,
        };
    }

    fn send(&mut self, buf: Vec<u8>) -> Result<(), CheckpointError> {
        if let Hasher::Thread { to_hasher, .. } = &self.hasher {
            // The hasher only stops when it panics, which sha2 does not do on data.
            to_hasher.send(buf).map_err(|_| {
                CheckpointError::io(&self.path, std::io::Error::other("hashing thread stopped"))
            })?;
        }
        Ok(())
    }

    /// fsyncs the file; returns (lower-case hex sha256, size in bytes).
    pub(crate) fn finish(self) -> Result<(String, u64), CheckpointError> {
        // fsync first: the hasher drains its queue meanwhile.
        self.file.sync_all().map_err(io_at(&self.path))?;
        let digest = match self.hasher {
            Hasher::Inline(h) => h.finalize(),
            Hasher::Thread {
                to_hasher, done, ..
            } => {
                drop(to_hasher);
                match done.join() {
                    Ok(h) => h.finalize(),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
        };
        Ok((hex(&digest), self.written))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
pub(crate) mod fault {
    //! Thread-local write-failure injection for tests (each test runs on its own
    //! thread, so faults never leak between tests).
    use std::cell::RefCell;
    use std::path::Path;

    thread_local! {
        static FAULT: RefCell<Option<(String, u64)>> = const { RefCell::new(None) };
    }

    /// Writes to files named `file_name` on this thread fail once `budget` bytes
    /// have been written, until [`clear`] is called.
    pub(crate) fn fail_after(file_name: &str, budget: u64) {
        FAULT.with(|f| *f.borrow_mut() = Some((file_name.to_string(), budget)));
    }

    pub(crate) fn clear() {
        FAULT.with(|f| *f.borrow_mut() = None);
    }

    pub(super) fn budget_for(path: &Path) -> Option<u64> {
        let name = path.file_name()?.to_str()?;
        FAULT.with(|f| match &*f.borrow() {
            Some((target, budget)) if target == name => Some(*budget),
            _ => None,
        })
    }

    pub(super) fn disk_full() -> std::io::Error {
        std::io::Error::other("injected fault: no space left on device")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pipelined hash equals a one-shot SHA-256 of the file, across the switch
    /// from inline (header) to threaded (large stream) and back to small writes.
    #[test]
    fn threaded_and_inline_hashes_match_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let big: Vec<f32> = (0..(THREAD_MIN_BYTES / 4 + CHUNK_ELEMS + 7))
            .map(|i| i as f32 * 0.5)
            .collect();
        let mut sink = Sink::create(&path).unwrap();
        sink.write(b"header").unwrap();
        sink.write_f32(&big[..100]).unwrap(); // inline
        sink.write_f32(&big).unwrap(); // threaded
        sink.write(b"tail").unwrap(); // small write while threaded
        sink.write_f32(&big[..3]).unwrap();
        let (sha, bytes) = sink.finish().unwrap();
        let file = std::fs::read(&path).unwrap();
        assert_eq!(bytes, file.len() as u64);
        assert_eq!(bytes as usize, 6 + 400 + big.len() * 4 + 4 + 12);
        assert_eq!(sha, hex(&Sha256::digest(&file)));
        assert_eq!(&file[406..410], &0f32.to_le_bytes());
        assert_eq!(&file[file.len() - 4..], &1.0f32.to_le_bytes());
    }

    /// A write error in the middle of a threaded stream returns at once, names the
    /// file, and leaves no hasher blocked (the test would hang).
    #[test]
    fn error_mid_threaded_stream_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full");
        let big = vec![1.5f32; THREAD_MIN_BYTES / 4 * 3];
        fault::fail_after("full", (THREAD_MIN_BYTES * 2) as u64 + 5);
        let mut sink = Sink::create(&path).unwrap();
        let err = sink.write_f32(&big).unwrap_err();
        fault::clear();
        assert!(
            matches!(&err, CheckpointError::Io { path: p, .. } if *p == path),
            "{err}"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            (THREAD_MIN_BYTES * 2) as u64 + 5
        );
    }
}

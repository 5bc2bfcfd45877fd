//! Memory-mapped token files and the prepared dataset folder.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::{sample_start, DataError, Meta, TokenDtype, META_FILE, TRAIN_FILE, VAL_FILE};

/// A `train.bin` or `val.bin`: little-endian u16 or u32 token ids, memory-mapped
/// so a multi-GB corpus costs no RAM up front and pages in on demand.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    dtype: TokenDtype,
    len: usize,
    /// `None` for an empty file (mapping zero bytes is not portable).
    map: Option<Mmap>,
}

impl TokenFile {
    /// Maps `path`, checking its size equals `tokens` x the dtype's width.
    pub fn open(path: &Path, dtype: TokenDtype, tokens: u64) -> Result<Self, DataError> {
        let file = File::open(path).map_err(DataError::io(path))?;
        let actual_bytes = file.metadata().map_err(DataError::io(path))?.len();
        let width = dtype.size() as u64;
        let expected_bytes = tokens.saturating_mul(width);
        if actual_bytes != expected_bytes {
            return Err(DataError::SizeMismatch {
                path: path.to_path_buf(),
                actual_bytes,
                expected_bytes,
                tokens,
                bytes_per_token: width,
            });
        }
        let map = if actual_bytes == 0 {
            None
        } else {
            // SAFETY: a mapping is only sound while nobody truncates or rewrites the
            // file. Token files are immutable by construction: `prepare` writes a
            // temp file and renames it into place, so a re-prepare replaces the
            // directory entry with a new inode and this mapping keeps the old one.
            Some(unsafe { Mmap::map(&file) }.map_err(DataError::io(path))?)
        };
        let len = usize::try_from(tokens).map_err(|_| DataError::SizeMismatch {
            path: path.to_path_buf(),
            actual_bytes,
            expected_bytes,
            tokens,
            bytes_per_token: width,
        })?;
        Ok(TokenFile { path: path.to_path_buf(), dtype, len, map })
    }

    /// The file this maps.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token width on disk.
    pub fn dtype(&self) -> TokenDtype {
        self.dtype
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a file with no tokens.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Token `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    #[inline]
    pub fn get(&self, i: usize) -> u32 {
        assert!(i < self.len, "token index {i} out of range for {} ({} tokens)", self.path.display(), self.len);
        let b = self.bytes();
        match self.dtype {
            TokenDtype::U16 => u16::from_le_bytes([b[2 * i], b[2 * i + 1]]) as u32,
            TokenDtype::U32 => u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]),
        }
    }

    /// Copies tokens `start..start + out.len()` into `out`.
    fn copy_range(&self, start: usize, out: &mut [u32]) {
        let b = self.bytes();
        match self.dtype {
            TokenDtype::U16 => {
                let src = &b[2 * start..2 * (start + out.len())];
                for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                    *o = u16::from_le_bytes([c[0], c[1]]) as u32;
                }
            }
            TokenDtype::U32 => {
                let src = &b[4 * start..4 * (start + out.len())];
                for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                    *o = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
    }

    /// Fills `inputs` and `targets` (each `batch * block`, row-major `(B, T)`) with
    /// the windows of global sample indices `first_index..first_index + batch`:
    /// row b is `tokens[s..s + block]` and its targets `tokens[s + 1..s + block + 1]`
    /// with `s = sample_start(seed, first_index + b, len, block)`.
    ///
    /// # Panics
    /// If the file is too short for one window (check with
    /// [`Dataset::check_block`] first) or a buffer is not `batch * block` long.
    pub fn fill_batch(&self, seed: u64, first_index: u64, batch: usize, block: usize, inputs: &mut [u32], targets: &mut [u32]) {
        assert!(
            block > 0 && self.len > block,
            "{}: {} tokens cannot hold a window of block {block} plus its target",
            self.path.display(),
            self.len
        );
        assert_eq!(inputs.len(), batch * block, "inputs must be batch * block = {} long", batch * block);
        assert_eq!(targets.len(), batch * block, "targets must be batch * block = {} long", batch * block);
        for b in 0..batch {
            let s = sample_start(seed, first_index + b as u64, self.len, block);
            let row = b * block..(b + 1) * block;
            self.copy_range(s, &mut inputs[row.clone()]);
            self.copy_range(s + 1, &mut targets[row]);
        }
    }
}

/// A prepared dataset folder: `meta.json`, `train.bin`, `val.bin`.
#[derive(Debug)]
pub struct Dataset {
    pub meta: Meta,
    pub train: TokenFile,
    pub val: TokenFile,
}

impl Dataset {
    /// Opens the folder written by [`crate::prepare`], checking that each `.bin`
    /// holds exactly the token count `meta.json` records.
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        if !dir.is_dir() {
            return Err(DataError::NotPrepared { dir: dir.to_path_buf() });
        }
        let meta_path = dir.join(META_FILE);
        if !meta_path.is_file() {
            return Err(DataError::MissingMeta { path: meta_path, dir: dir.to_path_buf() });
        }
        let meta = Meta::read(&meta_path)?;
        let train = TokenFile::open(&dir.join(TRAIN_FILE), meta.dtype, meta.train_tokens)?;
        let val = TokenFile::open(&dir.join(VAL_FILE), meta.dtype, meta.val_tokens)?;
        Ok(Dataset { meta, train, val })
    }

    /// Checks that both splits hold at least one window of `block` tokens plus
    /// its shifted target (`block + 1` tokens).
    pub fn check_block(&self, block: usize) -> Result<(), DataError> {
        for f in [&self.train, &self.val] {
            if block == 0 || f.len() <= block {
                return Err(DataError::TooShort { path: f.path.clone(), tokens: f.len(), block, needed: block + 1 });
            }
        }
        Ok(())
    }

    /// Checks that every token id is below `meta.vocab_size`, reading both files once
    /// on all cores (fixed chunks; the first bad token in file order is the one named,
    /// whatever the thread count). `open` does not, to stay O(1); the trainer calls this
    /// before the first step so that a bad id fails at once, naming the file and offset.
    pub fn verify_tokens(&self) -> Result<(), DataError> {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 20;
        let vocab = self.meta.vocab_size;
        for f in [&self.train, &self.val] {
            let chunks = f.len().div_ceil(CHUNK);
            let first_bad = (0..chunks).into_par_iter().find_map_first(|c| {
                let (start, end) = (c * CHUNK, ((c + 1) * CHUNK).min(f.len()));
                let mut buf = vec![0u32; end - start];
                f.copy_range(start, &mut buf);
                buf.iter().position(|&t| t as usize >= vocab).map(|i| start + i)
            });
            if let Some(i) = first_bad {
                return Err(DataError::BadToken { path: f.path.clone(), offset: (i * f.dtype.size()) as u64, token: f.get(i), vocab_size: vocab });
            }
        }
        Ok(())
    }
}

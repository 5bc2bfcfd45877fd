//! Memory-mapped token files and the prepared dataset folder.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::{sample_start, DataError, Meta, Source, Split, TokenDtype, META_FILE, TRAIN_FILE, VAL_FILE};

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
    pub(crate) fn copy_range(&self, start: usize, out: &mut [u32]) {
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

/// One split of one prepared folder as a single token sequence: `train.bin`
/// (format 1) or its shards in order (format 2), memory-mapped; windows may
/// cross shard boundaries.
#[derive(Debug)]
pub struct Tokens {
    dir: PathBuf,
    parts: Vec<TokenFile>,
    /// Global index of each part's first token.
    starts: Vec<usize>,
    len: usize,
}

impl Tokens {
    /// Opens `split` ("train" or "val") of the folder `dir` described by `meta`,
    /// checking every file's size (and, for shards, that it exists).
    pub fn open(dir: &Path, meta: &Meta, split: &str) -> Result<Self, DataError> {
        let parts: Vec<TokenFile> = match &meta.shards {
            None => {
                let (file, tokens) = if split == "train" { (TRAIN_FILE, meta.train_tokens) } else { (VAL_FILE, meta.val_tokens) };
                vec![TokenFile::open(&dir.join(file), meta.dtype, tokens)?]
            }
            Some(sh) => {
                let list = if split == "train" { &sh.train } else { &sh.val };
                list.iter().map(|s| TokenFile::open(&dir.join(&s.file), meta.dtype, s.tokens)).collect::<Result<_, _>>()?
            }
        };
        let mut starts = Vec::with_capacity(parts.len());
        let mut len = 0usize;
        for p in &parts {
            starts.push(len);
            len += p.len();
        }
        Ok(Tokens { dir: dir.join(split), parts, starts, len })
    }

    /// The folder and split this reads (`DIR/train`), or its one file.
    pub fn path(&self) -> &Path {
        match self.parts.as_slice() {
            [one] => one.path(),
            _ => &self.dir,
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn part_of(&self, i: usize) -> usize {
        self.starts.partition_point(|&s| s <= i) - 1
    }

    /// Token `i`. # Panics: if `i >= self.len()`.
    pub fn get(&self, i: usize) -> u32 {
        assert!(i < self.len, "token index {i} out of range for {} ({} tokens)", self.dir.display(), self.len);
        let p = self.part_of(i);
        self.parts[p].get(i - self.starts[p])
    }

    /// Copies tokens `start..start + out.len()` into `out`, across parts.
    pub fn copy_range(&self, start: usize, out: &mut [u32]) {
        let mut at = 0;
        while at < out.len() {
            let g = start + at;
            let p = self.part_of(g);
            let local = g - self.starts[p];
            let n = (self.parts[p].len() - local).min(out.len() - at);
            self.parts[p].copy_range(local, &mut out[at..at + n]);
            at += n;
        }
    }

    /// Fills `(B, T)` windows of global sample indices `first_index..`: row b is
    /// `tokens[s..s + block]`, targets shifted by one, `s = sample_start(seed,
    /// first_index + b, len, block)`. # Panics: as [`TokenFile::fill_batch`].
    pub fn fill_batch(&self, seed: u64, first_index: u64, batch: usize, block: usize, inputs: &mut [u32], targets: &mut [u32]) {
        assert!(block > 0 && self.len > block, "{}: {} tokens cannot hold a window of block {block} plus its target", self.dir.display(), self.len);
        assert_eq!(inputs.len(), batch * block, "inputs must be batch * block = {} long", batch * block);
        assert_eq!(targets.len(), batch * block, "targets must be batch * block = {} long", batch * block);
        for b in 0..batch {
            let s = sample_start(seed, first_index + b as u64, self.len, block);
            self.window(s, block, &mut inputs[b * block..(b + 1) * block], &mut targets[b * block..(b + 1) * block]);
        }
    }

    /// Input window at `start` and its targets.
    pub(crate) fn window(&self, start: usize, block: usize, inputs: &mut [u32], targets: &mut [u32]) {
        debug_assert!(inputs.len() == block && targets.len() == block);
        self.copy_range(start, inputs);
        self.copy_range(start + 1, targets);
    }

    /// The first token at or above `vocab`, in order: (its file, byte offset, id).
    pub(crate) fn first_bad_token(&self, vocab: usize) -> Option<(PathBuf, u64, u32)> {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 20;
        for f in &self.parts {
            let chunks = f.len().div_ceil(CHUNK);
            let first_bad = (0..chunks).into_par_iter().find_map_first(|c| {
                let (start, end) = (c * CHUNK, ((c + 1) * CHUNK).min(f.len()));
                let mut buf = vec![0u32; end - start];
                f.copy_range(start, &mut buf);
                buf.iter().position(|&t| t as usize >= vocab).map(|i| start + i)
            });
            if let Some(i) = first_bad {
                return Some((f.path().to_path_buf(), (i * f.dtype().size()) as u64, f.get(i)));
            }
        }
        None
    }
}

/// A prepared dataset: one folder (`meta.json` and its token files), or a
/// weighted mixture of folders made with the same tokenizer.
#[derive(Debug)]
pub struct Dataset {
    /// The (first) folder's description; with a mixture, the token counts are
    /// the sums over its sources.
    pub meta: Meta,
    pub train: Split,
    pub val: Split,
}

impl Dataset {
    /// Opens the folder written by [`crate::prepare`], checking that every token
    /// file holds exactly the count `meta.json` records, and (hf) that the
    /// `tokenizer.json` beside it is the one recorded.
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        Self::open_mixture(&[(dir.to_path_buf(), 1.0)])
    }

    /// Opens several prepared folders as one weighted mixture (weights need not
    /// sum to 1). All must share the tokenizer and vocabulary.
    pub fn open_mixture(sources: &[(PathBuf, f64)]) -> Result<Self, DataError> {
        let mut opened: Vec<(PathBuf, f64, Meta)> = Vec::new();
        for (dir, weight) in sources {
            if !(weight.is_finite() && *weight > 0.0) {
                return Err(DataError::BadWeight { dir: dir.clone(), weight: *weight });
            }
            let meta = open_meta(dir)?;
            if let Some((first, _, m0)) = opened.first() {
                if m0.tokenizer_differs(&meta).is_some() {
                    return Err(DataError::MixedTokenizers {
                        first: first.clone(),
                        other: dir.clone(),
                        first_desc: m0.tokenizer_desc(),
                        other_desc: meta.tokenizer_desc(),
                    });
                }
            }
            opened.push((dir.clone(), *weight, meta));
        }
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for (dir, weight, meta) in &opened {
            train.push(Source { dir: dir.clone(), weight: *weight, tokens: Tokens::open(dir, meta, "train")? });
            val.push(Source { dir: dir.clone(), weight: *weight, tokens: Tokens::open(dir, meta, "val")? });
        }
        let mut meta = opened[0].2.clone();
        meta.train_tokens = opened.iter().map(|o| o.2.train_tokens).sum();
        meta.val_tokens = opened.iter().map(|o| o.2.val_tokens).sum();
        Ok(Dataset { meta, train: Split::new(train), val: Split::new(val) })
    }

    /// Checks that every source of both splits holds at least one window of
    /// `block` tokens plus its shifted target (`block + 1` tokens).
    pub fn check_block(&self, block: usize) -> Result<(), DataError> {
        for split in [&self.train, &self.val] {
            for s in &split.sources {
                if block == 0 || s.tokens.len() <= block {
                    return Err(DataError::TooShort { path: s.tokens.path().to_path_buf(), tokens: s.tokens.len(), block, needed: block + 1 });
                }
            }
        }
        Ok(())
    }

    /// Checks that every token id is below `meta.vocab_size`, reading every file
    /// once on all cores (the first bad token in file order is the one named,
    /// whatever the thread count). `open` does not, to stay O(1); the trainer
    /// calls this before the first step so that a bad id fails at once.
    pub fn verify_tokens(&self) -> Result<(), DataError> {
        let vocab = self.meta.vocab_size;
        for split in [&self.train, &self.val] {
            for s in &split.sources {
                if let Some((path, offset, token)) = s.tokens.first_bad_token(vocab) {
                    return Err(DataError::BadToken { path, offset, token, vocab_size: vocab });
                }
            }
        }
        Ok(())
    }
}

/// Reads and checks `dir/meta.json`, attaching an hf dataset's `tokenizer.json`.
fn open_meta(dir: &Path) -> Result<Meta, DataError> {
    if !dir.is_dir() {
        return Err(DataError::NotPrepared { dir: dir.to_path_buf() });
    }
    let meta_path = dir.join(META_FILE);
    if !meta_path.is_file() {
        return Err(DataError::MissingMeta { path: meta_path, dir: dir.to_path_buf() });
    }
    let mut meta = Meta::read(&meta_path)?;
    if let Some(hf) = &meta.hf {
        let path = dir.join(crate::TOKENIZER_JSON);
        let json = std::fs::read_to_string(&path).map_err(DataError::io(&path))?;
        // Parses and checks the sha256 and the vocabulary size.
        let tok = crate::HfTokenizer::from_json(&path, json, Some(hf))?;
        if tok.vocab_size() != meta.vocab_size {
            return Err(DataError::MetaValue {
                path: meta_path,
                key: "vocab_size",
                reason: format!("{} but {} has {}", meta.vocab_size, path.display(), tok.vocab_size()),
            });
        }
        meta.tokenizer_json = Some(tok.json.clone());
    }
    Ok(meta)
}

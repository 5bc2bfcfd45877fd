//! Saving and restoring a trainer through the `checkpoint` crate: model tensors under
//! their Hugging Face names, Adam moments under `optim.exp_avg.<name>` and
//! `optim.exp_avg_sq.<name>`, and the run state in the manifest's `meta`.

use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};

use checkpoint::{Checkpoint, FileRecord};
use comm::Communicator;
use model::{BucketSpec, Gpt};
use serde_json::json;

use crate::error::{EngineError, Result};
use crate::shard::{piece_ranges, pieces};
use crate::trainer::{Observer, Trainer};

/// Manifest format tag of the run state written here.
pub const FORMAT: &str = "hyperion-train-1";

impl Trainer {
    /// The bucket range this rank writes and reads: its shard (every rank writes its
    /// own part of the model and optimizer state, whatever the stage).
    fn my_range(&self, b: usize) -> Range<usize> {
        self.shards[b].real(self.rank.rank)
    }

    /// Where bucket element 0 of each kind of buffer sits: whole buffers start at 0,
    /// shard buffers at the shard's start.
    fn bases(&self, b: usize) -> (usize, usize) {
        let shard_start = self.shards[b].owned(self.rank.rank).start;
        let zero = self.cfg.raw.parallel.zero;
        let params = if zero == 3 { shard_start } else { 0 };
        let moments = if zero == 0 { 0 } else { shard_start };
        (params, moments)
    }

    /// Writes this rank's shard files, then (rank 0, once every rank's files are
    /// durable) commits the checkpoint atomically. Synchronous: returns when the
    /// checkpoint is committed.
    pub fn save_checkpoint(&mut self, observer: &mut dyn Observer) -> Result<PathBuf> {
        self.pull_from_device();
        let snap = self.snapshot(Cow::Borrowed);
        snap.write(self.rank.world.as_ref(), &mut |p| observer.checkpoint_file(p))
    }

    /// What this rank writes for a checkpoint of the current step: the part of each
    /// buffer it owns (`keep` borrows it, or copies it for a background write) and,
    /// on rank 0, the manifest's meta.
    pub(crate) fn snapshot<'a>(&'a self, keep: impl Fn(&'a [f32]) -> Cow<'a, [f32]>) -> Snapshot<'a> {
        let mut parts = Vec::with_capacity(self.params.len());
        for b in 0..self.params.len() {
            // A pipeline's last stage does not write its copy of a tied embedding.
            let mut range = self.my_range(b);
            if !self.owns_bucket(b) {
                range.end = range.start;
            }
            let (pb, mb) = self.bases(b);
            let cut = |buf: &'a Vec<f32>, base: usize| keep(&buf[range.start - base..range.end - base]);
            parts.push(Part { params: cut(&self.params[b], pb), exp_avg: cut(&self.exp_avg[b], mb), exp_avg_sq: cut(&self.exp_avg_sq[b], mb), range });
        }
        let tp = self.tp_parts();
        Snapshot {
            step: self.step,
            run_dir: self.run_dir().to_path_buf(),
            rank: self.rank.world_rank(),
            ranks: self.rank.world.size(),
            gpt: self.gpt.clone(),
            tp,
            parts,
            meta: self.is_root().then(|| self.manifest_meta()),
            keep_last: self.cfg.raw.checkpoint.keep_last,
        }
    }

    fn manifest_meta(&self) -> serde_json::Value {
        json!({
            "format": FORMAT,
            "config": self.cfg.to_toml(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            // The data position: the next optimizer step reads global samples from here.
            "next_sample_index": self.step * self.cfg.global_batch as u64,
            // No dropout: the only randomness is the seeded sampler, keyed by sample index.
            "rng": { "seed": self.cfg.raw.train.seed, "kind": "sampler keyed by (seed, global sample index)" },
            "model": model::GptConfig::from(&self.global),
            // The whole spec (family, GQA, norms, positions): what an export needs.
            "model_spec": self.global,
            "layout": { "dp": self.rank.dp, "tp": self.rank.tp, "pp": self.rank.pp, "virtual_stages": self.cfg.raw.parallel.virtual_stages, "zero": self.cfg.raw.parallel.zero },
            // The tokenizer travels with the model, so sampling needs no data folder.
            "data": self.data.as_ref().map(|d| serde_json::to_value(&d.meta).expect("meta serialises")),
            // A Hugging Face tokenizer travels whole (its sha256 is in "data").
            "tokenizer_json": self.data.as_ref().and_then(|d| d.meta.tokenizer_json.as_deref().cloned()),
        })
    }

    /// Restores parameters, Adam moments, the step and the data position from `ck`,
    /// whatever layout (dp, ZeRO stage) wrote it: each rank reads the ranges it holds.
    pub fn restore(&mut self, ck: &Checkpoint) -> Result<()> {
        let zero = self.cfg.raw.parallel.zero;
        let tp = self.tp_parts();
        for b in 0..self.params.len() {
            let (pb, mb) = self.bases(b);
            let numel = self.shards[b].numel;
            let spec = &self.gpt.layout.buckets[b];
            let prange = if zero == 3 { self.my_range(b) } else { 0..numel };
            let mrange = if zero == 0 { 0..numel } else { self.my_range(b) };
            match &tp {
                None => {
                    read_pieces(ck, spec, "", prange, &mut self.params[b], pb)?;
                    read_pieces(ck, spec, "optim.exp_avg.", mrange.clone(), &mut self.exp_avg[b], mb)?;
                    read_pieces(ck, spec, "optim.exp_avg_sq.", mrange, &mut self.exp_avg_sq[b], mb)?;
                }
                Some(tp) => {
                    tp.read(ck, spec, "", prange, &mut self.params[b], pb)?;
                    tp.read(ck, spec, "optim.exp_avg.", mrange.clone(), &mut self.exp_avg[b], mb)?;
                    tp.read(ck, spec, "optim.exp_avg_sq.", mrange, &mut self.exp_avg_sq[b], mb)?;
                }
            }
        }
        self.step = meta_u64(ck, "step")?;
        self.tokens_seen = meta_u64(ck, "tokens_seen")?;
        if let Some(g) = &mut self.gpu {
            g.stale();
        }
        Ok(())
    }
}

/// One bucket's owned range of parameters and Adam moments.
pub(crate) struct Part<'a> {
    range: Range<usize>,
    params: Cow<'a, [f32]>,
    exp_avg: Cow<'a, [f32]>,
    exp_avg_sq: Cow<'a, [f32]>,
}

/// Everything one rank needs to write its share of a checkpoint and take part in the
/// commit, without the trainer (so that it can run on a background thread).
pub(crate) struct Snapshot<'a> {
    step: u64,
    run_dir: PathBuf,
    /// Rank in the job, and the job's size: every rank writes its files.
    rank: usize,
    ranks: usize,
    gpt: std::sync::Arc<Gpt>,
    /// Tensor parallelism: how this rank's parts sit in the whole tensors.
    tp: Option<TpParts>,
    parts: Vec<Part<'a>>,
    /// Rank 0 only.
    meta: Option<serde_json::Value>,
    keep_last: usize,
}

impl Snapshot<'_> {
    /// A copy that owns its buffers.
    pub(crate) fn into_owned(self) -> Snapshot<'static> {
        let own = |c: Cow<'_, [f32]>| -> Cow<'static, [f32]> { Cow::Owned(c.into_owned()) };
        let parts = self
            .parts
            .into_iter()
            .map(|p| Part { range: p.range, params: own(p.params), exp_avg: own(p.exp_avg), exp_avg_sq: own(p.exp_avg_sq) })
            .collect();
        Snapshot { step: self.step, run_dir: self.run_dir, rank: self.rank, ranks: self.ranks, gpt: self.gpt, tp: self.tp, parts, meta: self.meta, keep_last: self.keep_last }
    }

    pub(crate) fn step(&self) -> u64 {
        self.step
    }

    /// Writes this rank's files, then (rank 0, once every rank's files are durable)
    /// commits; `comm` is the ranks' group, used by nothing else meanwhile.
    /// `on_file` is called as each file becomes durable.
    pub(crate) fn write(&self, comm: &dyn Communicator, on_file: &mut dyn FnMut(&Path)) -> Result<PathBuf> {
        let r = self.rank;
        // Rank 0 creates the temporary folder first, so no rank races its clean-up.
        let pending = if r == 0 { Some(checkpoint::begin(&self.run_dir, self.step)) } else { None };
        comm.barrier()?;
        let pending = match pending {
            Some(p) => p,
            None => checkpoint::begin(&self.run_dir, self.step),
        };
        let written = pending.map_err(EngineError::from).and_then(|p| self.write_files(&p, on_file).map(|recs| (p, recs)));
        // Every rank reports (records or its error) before anything is committed.
        let mine = match &written {
            Ok((_, recs)) => serde_json::to_vec(&Ok::<_, String>(recs)).expect("records serialise"),
            Err(e) => serde_json::to_vec(&Err::<Vec<FileRecord>, _>(e.to_string())).expect("error serialises"),
        };
        let all = crate::rank::gather_bytes(comm, self.ranks, &mine)?;
        let mut records = Vec::new();
        for (rank, bytes) in all.iter().enumerate() {
            let got: std::result::Result<Vec<FileRecord>, String> = serde_json::from_slice(bytes)
                .map_err(|e| EngineError::Invalid(format!("rank {rank} sent unreadable checkpoint records: {e}")))?;
            match got {
                Ok(recs) => records.extend(recs),
                Err(msg) => return Err(EngineError::Invalid(format!("checkpoint at step {}: rank {rank} failed to write its shard: {msg}", self.step))),
            }
        }
        let (pending, _) = written?;
        let dir = pending.path().parent().map(|d| d.join(format!("step-{:08}", self.step))).unwrap_or_default();
        let committed = self.meta.as_ref().map(|meta| checkpoint::commit(pending, meta.clone(), records, self.keep_last));
        // Rank 0 tells everyone whether the commit landed.
        let mut status = [u8::from(matches!(committed, Some(Err(_))))];
        comm.broadcast((&mut status[..]).into(), 0)?;
        match committed {
            Some(res) => Ok(res?),
            None if status[0] == 0 => Ok(dir),
            None => Err(EngineError::Invalid(format!("rank 0 failed to commit the checkpoint of step {}", self.step))),
        }
    }

    fn write_files(&self, pending: &checkpoint::Pending, on_file: &mut dyn FnMut(&Path)) -> Result<Vec<FileRecord>> {
        if let Some(tp) = &self.tp {
            return self.write_tp_files(tp, pending, on_file);
        }
        let layout = &self.gpt.layout;
        let names: Vec<Vec<String>> = layout.buckets.iter().map(|b| b.tensors.iter().map(|t| t.name.clone()).collect()).collect();
        let prefixed = |p: &str| -> Vec<Vec<String>> { names.iter().map(|v| v.iter().map(|n| format!("{p}{n}")).collect()).collect() };
        let (m_names, v_names) = (prefixed("optim.exp_avg."), prefixed("optim.exp_avg_sq."));
        let mut model_slices = Vec::new();
        let mut optim_slices = Vec::new();
        for ((b, spec), part) in layout.buckets.iter().enumerate().zip(&self.parts) {
            let (range, base) = (part.range.clone(), part.range.start);
            model_slices.extend(pieces(spec, &names[b], range.clone(), &part.params, base));
            optim_slices.extend(pieces(spec, &m_names[b], range.clone(), &part.exp_avg, base));
            optim_slices.extend(pieces(spec, &v_names[b], range, &part.exp_avg_sq, base));
        }
        let r = self.rank;
        let model_file = format!("model-rank{r:05}.safetensors");
        let optim_file = format!("optim-rank{r:05}.safetensors");
        let model = pending.write_file(&model_file, &model_slices)?;
        on_file(&pending.path().join(&model_file));
        let optim = pending.write_file(&optim_file, &optim_slices)?;
        on_file(&pending.path().join(&optim_file));
        Ok(vec![model, optim])
    }
}

impl Snapshot<'_> {
    /// A tensor-parallel rank's files: its range of each split tensor as N-d slices of
    /// the whole tensor; replicated tensors (norms, row-parallel biases, positions) from
    /// tp rank 0 only, as flat ranges.
    fn write_tp_files(&self, tp: &TpParts, pending: &checkpoint::Pending, on_file: &mut dyn FnMut(&Path)) -> Result<Vec<FileRecord>> {
        let mut model = Vec::new();
        let mut optim = Vec::new();
        for (spec, part) in self.gpt.layout.buckets.iter().zip(&self.parts) {
            tp.cut(spec, "", part.range.clone(), &part.params, &mut model);
            tp.cut(spec, "optim.exp_avg.", part.range.clone(), &part.exp_avg, &mut optim);
            tp.cut(spec, "optim.exp_avg_sq.", part.range.clone(), &part.exp_avg_sq, &mut optim);
        }
        let r = self.rank;
        let (model_file, optim_file) = (format!("model-rank{r:05}.safetensors"), format!("optim-rank{r:05}.safetensors"));
        let m = pending.write_file(&model_file, &model.iter().map(Cut::slice).collect::<Vec<_>>())?;
        on_file(&pending.path().join(&model_file));
        let o = pending.write_file(&optim_file, &optim.iter().map(Cut::slice).collect::<Vec<_>>())?;
        on_file(&pending.path().join(&optim_file));
        Ok(vec![m, o])
    }
}

/// Where a tensor-parallel rank's parts sit in the whole model's tensors.
pub(crate) struct TpParts {
    whole: model::Layout,
    tp: usize,
    rank: usize,
}

impl Trainer {
    /// This rank's place in the whole model's tensors, under tensor parallelism.
    pub(crate) fn tp_parts(&self) -> Option<TpParts> {
        (self.rank.tp > 1).then(|| TpParts { whole: model::Layout::new(&self.global), tp: self.rank.tp, rank: self.rank.tp_rank })
    }
}

/// One piece a tensor-parallel rank writes (owned: its data is gathered from the part).
struct Cut {
    name: String,
    shape: Vec<usize>,
    /// `None`: a flat range from `start`; else an N-d box.
    slice: Option<Vec<(usize, usize)>>,
    start: usize,
    data: Vec<f32>,
}

impl Cut {
    fn slice(&self) -> checkpoint::ShardSlice<'_> {
        match &self.slice {
            None => checkpoint::TensorSlice { name: &self.name, global_shape: &self.shape, start: self.start, data: &self.data }.into(),
            Some(s) => checkpoint::NdSlice { name: &self.name, global_shape: &self.shape, slice: s, data: &self.data }.into(),
        }
    }
}

impl TpParts {
    /// This rank's parts of the whole model's buckets `whole`, as buckets of `part`.
    pub(crate) fn extract(&self, whole: &[Vec<f32>], part: &model::Layout) -> Result<Vec<Vec<f32>>> {
        if whole.len() != self.whole.buckets.len() || whole.iter().zip(&self.whole.buckets).any(|(v, b)| v.len() != b.numel) {
            return Err(EngineError::Invalid("the parameters given are not the whole model's buckets".into()));
        }
        let mut out: Vec<Vec<f32>> = part.buckets.iter().map(|b| vec![0.0; b.numel]).collect();
        self.whole.tp_extract(whole, part, &mut out, self.tp, self.rank);
        Ok(out)
    }

    /// The whole tensor of part tensor `t`.
    fn whole_of(&self, t: &model::TensorSpec) -> &model::TensorSpec {
        self.whole.find(&t.name).map(|(_, w)| w).expect("a part's tensor is in the whole model")
    }

    /// Tensor `t`'s elements `[a, b)` (tensor-local) that lie in `range`, if any.
    fn overlap(t: &model::TensorSpec, range: &Range<usize>) -> Option<(usize, usize)> {
        let (lo, hi) = (t.range().start.max(range.start), t.range().end.min(range.end));
        (lo < hi).then(|| (lo - t.offset, hi - t.offset))
    }

    /// The pieces of `buf` (bucket elements `range`, starting at bucket element
    /// `range.start`) to write, named `prefix + name`.
    fn cut(&self, spec: &BucketSpec, prefix: &str, range: Range<usize>, buf: &[f32], out: &mut Vec<Cut>) {
        let base = range.start;
        for t in &spec.tensors {
            let Some((a, b)) = Self::overlap(t, &range) else { continue };
            let whole = self.whole_of(t);
            let name = format!("{prefix}{}", t.name);
            let at = |k: usize| t.offset + k - base;
            if t.split.is_none() {
                if self.rank == 0 {
                    out.push(Cut { name, shape: whole.shape.clone(), slice: None, start: a, data: buf[at(a)..at(b)].to_vec() });
                }
                continue;
            }
            for bx in model::tp_part_boxes(whole, t, self.tp, self.rank, a, b) {
                let (rows, cols) = bx.rows_cols();
                let mut data = Vec::with_capacity(rows * cols);
                for i in 0..rows {
                    let k = bx.local + i * bx.stride;
                    data.extend_from_slice(&buf[at(k)..at(k) + cols]);
                }
                out.push(Cut { name: name.clone(), shape: whole.shape.clone(), slice: Some(bx.slice), start: 0, data });
            }
        }
    }

    /// Reads this rank's part of bucket elements `range` into `buf` (bucket element `i`
    /// at `buf[i - base]`) from any checkpoint of the whole model, whatever its layout.
    fn read(&self, ck: &Checkpoint, spec: &BucketSpec, prefix: &str, range: Range<usize>, buf: &mut [f32], base: usize) -> Result<()> {
        for t in &spec.tensors {
            let whole = self.whole_of(t);
            let name = format!("{prefix}{}", t.name);
            check_shape(ck, &name, &whole.shape)?;
            let Some((a, b)) = Self::overlap(t, &range) else { continue };
            let at = |k: usize| t.offset + k - base;
            if t.split.is_none() {
                ck.read_range(&name, a, b, &mut buf[at(a)..at(b)])?;
                continue;
            }
            for bx in model::tp_part_boxes(whole, t, self.tp, self.rank, a, b) {
                let (rows, cols) = bx.rows_cols();
                let mut tmp = vec![0.0f32; rows * cols];
                ck.read_slice(&name, &bx.slice, &mut tmp)?;
                for i in 0..rows {
                    let k = bx.local + i * bx.stride;
                    buf[at(k)..at(k) + cols].copy_from_slice(&tmp[i * cols..(i + 1) * cols]);
                }
            }
        }
        Ok(())
    }
}

fn read_pieces(ck: &Checkpoint, spec: &BucketSpec, prefix: &str, range: Range<usize>, buf: &mut [f32], base: usize) -> Result<()> {
    for t in &spec.tensors {
        check_shape(ck, &format!("{prefix}{}", t.name), &t.shape)?;
    }
    for (name, r, local) in piece_ranges(spec, range) {
        let name = format!("{prefix}{name}");
        ck.read_range(&name, local, local + r.len(), &mut buf[r.start - base..r.end - base])?;
    }
    Ok(())
}

fn check_shape(ck: &Checkpoint, name: &str, shape: &[usize]) -> Result<()> {
    let found = ck.global_shape(name).ok_or(checkpoint::CheckpointError::MissingTensor { name: name.to_string() })?;
    if found != shape {
        return Err(EngineError::ShapeMismatch { dir: ck.dir().to_path_buf(), name: name.into(), expected: shape.to_vec(), found: found.to_vec() });
    }
    Ok(())
}

/// The resolved config stored in a checkpoint.
pub fn saved_config(ck: &Checkpoint) -> Result<String> {
    ck.meta()
        .get("config")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| bad_meta(ck, "config", "expected the resolved config as a TOML string"))
}

pub fn meta_u64(ck: &Checkpoint, field: &str) -> Result<u64> {
    ck.meta().get(field).and_then(|v| v.as_u64()).ok_or_else(|| bad_meta(ck, field, "expected an unsigned integer"))
}

fn bad_meta(ck: &Checkpoint, field: &str, detail: &str) -> EngineError {
    EngineError::BadMeta { dir: ck.dir().to_path_buf(), field: field.into(), detail: detail.into() }
}

/// Loads every model tensor of `gpt` from `ck` into whole `bufs` (buckets in layout order).
pub fn load_model(gpt: &Gpt, ck: &Checkpoint, bufs: &mut [Vec<f32>]) -> Result<()> {
    for (b, spec) in gpt.layout.buckets.iter().enumerate() {
        read_pieces(ck, spec, "", 0..spec.numel, &mut bufs[b], 0)?;
    }
    Ok(())
}

/// The data description (tokenizer, vocabulary) stored in a checkpoint.
pub fn saved_data_meta(ck: &Checkpoint) -> Result<data::Meta> {
    let v = ck.meta().get("data").cloned().ok_or_else(|| bad_meta(ck, "data", "missing"))?;
    let mut meta: data::Meta = serde_json::from_value(v).map_err(|e| bad_meta(ck, "data", &e.to_string()))?;
    if meta.hf.is_some() {
        let json = ck.meta().get("tokenizer_json").and_then(|v| v.as_str()).ok_or_else(|| bad_meta(ck, "tokenizer_json", "missing for an hf tokenizer"))?;
        meta.tokenizer_json = Some(std::sync::Arc::new(json.to_string()));
        // Checks the sha256 against the record.
        data::Tokenizer::from_meta(&meta)?;
    }
    Ok(meta)
}

/// Opens the checkpoint at `path` (a run directory's latest, or one checkpoint folder).
pub fn open(path: &Path) -> Result<Checkpoint> {
    Ok(checkpoint::open(path)?)
}

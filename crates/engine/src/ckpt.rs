//! Saving and restoring a trainer through the `checkpoint` crate: model tensors under
//! their Hugging Face names, Adam moments under `optim.exp_avg.<name>` and
//! `optim.exp_avg_sq.<name>`, and the run state in the manifest's `meta`.

use std::path::{Path, PathBuf};

use std::ops::Range;

use checkpoint::{Checkpoint, FileRecord};
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
    /// durable) commits the checkpoint atomically.
    pub fn save_checkpoint(&self, observer: &mut dyn Observer) -> Result<PathBuf> {
        let r = self.rank.rank;
        // Rank 0 creates the temporary folder first, so no rank races its clean-up.
        let pending = if r == 0 { Some(checkpoint::begin(self.run_dir(), self.step)) } else { None };
        self.rank.comm.barrier()?;
        let pending = match pending {
            Some(p) => p,
            None => checkpoint::begin(self.run_dir(), self.step),
        };
        let written = pending.map_err(EngineError::from).and_then(|p| self.write_shards(&p, observer).map(|recs| (p, recs)));
        // Every rank reports (records or its error) before anything is committed.
        let mine = match &written {
            Ok((_, recs)) => serde_json::to_vec(&Ok::<_, String>(recs)).expect("records serialise"),
            Err(e) => serde_json::to_vec(&Err::<Vec<FileRecord>, _>(e.to_string())).expect("error serialises"),
        };
        let all = self.rank.gather_bytes(&mine)?;
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
        let committed = if r == 0 {
            let meta = self.manifest_meta();
            Some(checkpoint::commit(pending, meta, records, self.cfg.raw.checkpoint.keep_last))
        } else {
            None
        };
        // Rank 0 tells everyone whether the commit landed.
        let mut status = [u8::from(matches!(committed, Some(Err(_))))];
        self.rank.comm.broadcast((&mut status[..]).into(), 0)?;
        match committed {
            Some(res) => Ok(res?),
            None if status[0] == 0 => Ok(dir),
            None => Err(EngineError::Invalid(format!("rank 0 failed to commit the checkpoint of step {}", self.step))),
        }
    }

    fn write_shards(&self, pending: &checkpoint::Pending, observer: &mut dyn Observer) -> Result<Vec<FileRecord>> {
        let layout = &self.gpt.layout;
        let r = self.rank.rank;
        let names: Vec<Vec<String>> = layout.buckets.iter().map(|b| b.tensors.iter().map(|t| t.name.clone()).collect()).collect();
        let prefixed = |p: &str| -> Vec<Vec<String>> { names.iter().map(|v| v.iter().map(|n| format!("{p}{n}")).collect()).collect() };
        let (m_names, v_names) = (prefixed("optim.exp_avg."), prefixed("optim.exp_avg_sq."));
        let mut model_slices = Vec::new();
        let mut optim_slices = Vec::new();
        for (b, spec) in layout.buckets.iter().enumerate() {
            let range = self.my_range(b);
            let (pb, mb) = self.bases(b);
            model_slices.extend(pieces(spec, &names[b], range.clone(), &self.params[b], pb));
            optim_slices.extend(pieces(spec, &m_names[b], range.clone(), &self.exp_avg[b], mb));
            optim_slices.extend(pieces(spec, &v_names[b], range, &self.exp_avg_sq[b], mb));
        }
        let model_file = format!("model-rank{r:05}.safetensors");
        let optim_file = format!("optim-rank{r:05}.safetensors");
        let model = pending.write_file(&model_file, &model_slices)?;
        observer.checkpoint_file(&pending.path().join(&model_file));
        let optim = pending.write_file(&optim_file, &optim_slices)?;
        observer.checkpoint_file(&pending.path().join(&optim_file));
        Ok(vec![model, optim])
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
            "model": self.gpt.cfg,
            // The whole spec (family, GQA, norms, positions): what an export needs.
            "model_spec": self.gpt.spec,
            "layout": { "dp": self.rank.dp, "zero": self.cfg.raw.parallel.zero },
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
        for b in 0..self.params.len() {
            let (pb, mb) = self.bases(b);
            let numel = self.shards[b].numel;
            let spec = &self.gpt.layout.buckets[b];
            let prange = if zero == 3 { self.my_range(b) } else { 0..numel };
            read_pieces(ck, spec, "", prange, &mut self.params[b], pb)?;
            let mrange = if zero == 0 { 0..numel } else { self.my_range(b) };
            read_pieces(ck, spec, "optim.exp_avg.", mrange.clone(), &mut self.exp_avg[b], mb)?;
            read_pieces(ck, spec, "optim.exp_avg_sq.", mrange, &mut self.exp_avg_sq[b], mb)?;
        }
        self.step = meta_u64(ck, "step")?;
        self.tokens_seen = meta_u64(ck, "tokens_seen")?;
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

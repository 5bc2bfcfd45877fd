//! Saving and restoring a trainer through the `checkpoint` crate: model tensors under
//! their Hugging Face names, Adam moments under `optim.exp_avg.<name>` and
//! `optim.exp_avg_sq.<name>`, and the run state in the manifest's `meta`.

use std::path::{Path, PathBuf};

use checkpoint::{Checkpoint, TensorSlice};
use model::{Gpt, Layout};
use serde_json::json;

use crate::error::{EngineError, Result};
use crate::trainer::{Observer, Trainer};

/// Manifest format tag of the run state written here.
pub const FORMAT: &str = "hyperion-train-1";

fn slices<'a>(layout: &'a Layout, names: &'a [String], bufs: &'a [Vec<f32>]) -> Vec<TensorSlice<'a>> {
    layout
        .tensors()
        .zip(names)
        .map(|((b, spec), name)| TensorSlice { name, global_shape: &spec.shape, start: 0, data: &bufs[b][spec.range()] })
        .collect()
}

impl Trainer {
    /// Writes a checkpoint of the current step and commits it atomically.
    pub fn save_checkpoint(&self, observer: &mut dyn Observer) -> Result<PathBuf> {
        let layout = &self.gpt.layout;
        let pending = checkpoint::begin(self.run_dir(), self.step)?;
        let names: Vec<String> = layout.tensors().map(|(_, t)| t.name.clone()).collect();
        let m_names: Vec<String> = names.iter().map(|n| format!("optim.exp_avg.{n}")).collect();
        let v_names: Vec<String> = names.iter().map(|n| format!("optim.exp_avg_sq.{n}")).collect();
        let model = pending.write_file("model.safetensors", &slices(layout, &names, &self.params))?;
        observer.checkpoint_file(&pending.path().join("model.safetensors"));
        let mut opt = slices(layout, &m_names, &self.exp_avg);
        opt.extend(slices(layout, &v_names, &self.exp_avg_sq));
        let optim = pending.write_file("optim.safetensors", &opt)?;
        observer.checkpoint_file(&pending.path().join("optim.safetensors"));
        let meta = json!({
            "format": FORMAT,
            "config": self.cfg.to_toml(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            // The data position: the next optimizer step reads global samples from here.
            "next_sample_index": self.step * self.cfg.global_batch as u64,
            // No dropout: the only randomness is the seeded sampler, keyed by sample index.
            "rng": { "seed": self.cfg.raw.train.seed, "kind": "sampler keyed by (seed, global sample index)" },
            "model": self.gpt.cfg,
            "layout": { "dp": 1, "zero": 0 },
            // The tokenizer travels with the model, so sampling needs no data folder.
            "data": self.data.as_ref().map(|d| serde_json::to_value(&d.meta).expect("meta serialises")),
        });
        Ok(checkpoint::commit(pending, meta, vec![model, optim], self.cfg.raw.checkpoint.keep_last)?)
    }

    /// Restores parameters, Adam moments, the step and the data position from `ck`.
    pub fn restore(&mut self, ck: &Checkpoint) -> Result<()> {
        load_model(&self.gpt, ck, &mut self.params)?;
        load_prefixed(&self.gpt, ck, "optim.exp_avg.", &mut self.exp_avg)?;
        load_prefixed(&self.gpt, ck, "optim.exp_avg_sq.", &mut self.exp_avg_sq)?;
        self.step = meta_u64(ck, "step")?;
        self.tokens_seen = meta_u64(ck, "tokens_seen")?;
        Ok(())
    }
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

/// Loads every model tensor of `gpt` from `ck` into `bufs` (buckets in layout order).
pub fn load_model(gpt: &Gpt, ck: &Checkpoint, bufs: &mut [Vec<f32>]) -> Result<()> {
    load_prefixed(gpt, ck, "", bufs)
}

fn load_prefixed(gpt: &Gpt, ck: &Checkpoint, prefix: &str, bufs: &mut [Vec<f32>]) -> Result<()> {
    for (b, spec) in gpt.layout.tensors() {
        let name = format!("{prefix}{}", spec.name);
        let found = ck.global_shape(&name).ok_or(checkpoint::CheckpointError::MissingTensor { name: name.clone() })?;
        if found != spec.shape.as_slice() {
            return Err(EngineError::ShapeMismatch {
                dir: ck.dir().to_path_buf(),
                name,
                expected: spec.shape.clone(),
                found: found.to_vec(),
            });
        }
        ck.read_range(&name, 0, spec.numel(), &mut bufs[b][spec.range()])?;
    }
    Ok(())
}

/// The data description (tokenizer, vocabulary) stored in a checkpoint.
pub fn saved_data_meta(ck: &Checkpoint) -> Result<data::Meta> {
    let v = ck.meta().get("data").cloned().ok_or_else(|| bad_meta(ck, "data", "missing"))?;
    serde_json::from_value(v).map_err(|e| bad_meta(ck, "data", &e.to_string()))
}

/// Opens the checkpoint at `path` (a run directory's latest, or one checkpoint folder).
pub fn open(path: &Path) -> Result<Checkpoint> {
    Ok(checkpoint::open(path)?)
}

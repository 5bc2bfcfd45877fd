//! Layering (defaults < preset < file < `--set`), derivation and the saved TOML form.
//!
//! Layers are merged as `toml::Table`s and deserialized once, so a file or `--set` only
//! needs to name what it changes, and every key is checked against [`crate::keys`] with
//! its full dotted name before serde sees it.

use std::fmt;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::{keys, presets, validate, ConfigError, RunConfig};

/// A validated config plus the numbers derived from it. Built by [`resolve`],
/// [`ResolvedConfig::new`] or [`ResolvedConfig::from_toml_str`]; immutable afterwards
/// except through [`ResolvedConfig::with_vocab_size`].
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedConfig {
    /// The config as written (`None`s kept; the derived values are below).
    pub raw: RunConfig,
    /// Sequences per optimizer step: `batch_size * grad_accum * dp`.
    pub global_batch: usize,
    /// Steps of the LR decay: `optim.decay_steps`, else `train.steps`.
    pub decay_steps: u64,
    /// Tokens per optimizer step: `global_batch * block_size`.
    pub tokens_per_step: u64,
    /// The preset the run started from, if any (informative; saved as a comment).
    pub preset: Option<String>,
    /// What resolving changed on its own, to be shown to the user.
    pub notes: Notes,
}

/// Adjustments made while resolving (e.g. a warm-up clamped to a short run), for the
/// user to read. Informative: two configs that differ only here are equal.
#[derive(Debug, Clone, Default)]
pub struct Notes(pub Vec<String>);

impl PartialEq for Notes {
    fn eq(&self, _: &Notes) -> bool {
        true
    }
}

const PRESET_LINE: &str = "# preset: ";

impl ResolvedConfig {
    /// Validates a raw config built in code and derives the batch arithmetic.
    pub fn new(mut raw: RunConfig) -> Result<Self, ConfigError> {
        let mut notes = Notes::default();
        let o = &mut raw.optim;
        if o.decay_steps.is_none() && o.warmup_steps > raw.train.steps {
            // A preset's warm-up sized for its own run length, on a shorter run: the
            // schedule keeps its shape (a tenth of the run warms up, the rest decays).
            let clamped = raw.train.steps / 10;
            notes.0.push(format!(
                "optim.warmup_steps = {} is longer than the run (train.steps = {}): warming up for {clamped} steps instead (a tenth of the run); set optim.decay_steps to keep the warm-up as given",
                o.warmup_steps, raw.train.steps
            ));
            o.warmup_steps = clamped;
        }
        validate::validate(&raw)?;
        // validate() has checked that these products fit in usize.
        let global_batch = raw.train.batch_size * raw.train.grad_accum * raw.parallel.dp;
        let decay_steps = raw.optim.decay_steps.unwrap_or(raw.train.steps);
        let tokens_per_step = (global_batch * raw.model.block_size) as u64;
        Ok(Self {
            raw,
            global_batch,
            decay_steps,
            tokens_per_step,
            preset: None,
            notes,
        })
    }

    /// Makes every data path absolute against `base` (the directory the run was
    /// started from), so that the saved config, and every checkpoint's copy of it,
    /// names the same files whatever directory `eval` or `--resume` runs from.
    pub fn anchor_data_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let d = &mut self.raw.data;
        abs(&mut d.dir);
        d.inputs.iter_mut().for_each(&abs);
        d.val_inputs.iter_mut().for_each(&abs);
        if let Some(f) = d.tokenizer_file.as_mut() {
            abs(f);
        }
        d.sources.iter_mut().for_each(|s| abs(&mut s.dir));
    }

    /// Ranks in the layout: `dp * tp * pp`.
    pub fn world_size(&self) -> usize {
        let p = &self.raw.parallel;
        p.dp * p.tp * p.pp
    }

    /// The full config as TOML, with the preset and the derived numbers as leading
    /// comments. Printed at the start of a run and saved in every checkpoint;
    /// [`ResolvedConfig::from_toml_str`] reads it back to an equal value.
    pub fn to_toml(&self) -> String {
        // Serialized from the struct (not a Table) so sections and keys keep their
        // declaration order.
        let body = match toml::to_string(&self.raw) {
            Ok(t) => t,
            // Unreachable for RunConfig (plain fields, paths written lossily), but a
            // message beats a panic in a checkpoint writer.
            Err(e) => format!("# could not serialize the config: {e}\n"),
        };
        let t = &self.raw.train;
        let mut out = String::from("# Hyperion run config (resolved)\n");
        if let Some(p) = &self.preset {
            out.push_str(&format!("{PRESET_LINE}{p}\n"));
        }
        out.push_str(&format!(
            "# global_batch = {} (batch_size {} x grad_accum {} x dp {}), decay_steps = {}, tokens_per_step = {}\n\n",
            self.global_batch, t.batch_size, t.grad_accum, self.raw.parallel.dp, self.decay_steps, self.tokens_per_step
        ));
        out + &body
    }

    /// Reads a config written by [`ResolvedConfig::to_toml`] (or any config file: missing
    /// keys take the defaults) and validates it again.
    pub fn from_toml_str(s: &str) -> Result<Self, ConfigError> {
        resolve_saved(s, &[])
    }

    /// Fills `model.vocab_size` from the prepared data when the config left it out.
    /// An explicit, different value is [`ConfigError::VocabMismatch`].
    pub fn with_vocab_size(mut self, data_vocab: usize) -> Result<Self, ConfigError> {
        match self.raw.model.vocab_size {
            _ if data_vocab == 0 => Err(ConfigError::InvalidValue {
                key: "model.vocab_size".into(),
                reason: "the prepared data reports a vocabulary of 0 tokens".into(),
            }),
            Some(model) if model != data_vocab => Err(ConfigError::VocabMismatch {
                model,
                data: data_vocab,
            }),
            _ => {
                self.raw.model.vocab_size = Some(data_vocab);
                Ok(self)
            }
        }
    }
}

impl ResolvedConfig {
    /// The model this config describes, as the one spec the engine, the planner and
    /// exports share. Needs the vocabulary (set from the data by
    /// [`ResolvedConfig::with_vocab_size`], or given).
    pub fn model_spec(&self) -> Result<model::ModelSpec, ConfigError> {
        use model::spec::{Family, Mlp, ModelSpec, Norm, Positions};
        let m = &self.raw.model;
        let vocab = m.vocab_size.ok_or_else(|| ConfigError::InvalidValue {
            key: "model.vocab_size".into(),
            reason: "is unknown: the data folder's meta.json must set it".into(),
        })?;
        let head_dim = if m.head_dim == 0 { m.n_embd / m.n_head.max(1) } else { m.head_dim };
        let llama = m.arch == crate::Arch::Llama;
        let ffn = match (m.ffn_hidden, llama) {
            (0, false) => 4 * m.n_embd,
            // Meta's reference `FeedForward`: hidden = 2 * 4d / 3, rounded up to 256.
            (0, true) => (2 * 4 * m.n_embd / 3).div_ceil(256) * 256,
            (f, _) => f,
        };
        let spec = ModelSpec {
            name: self.preset.clone().unwrap_or_else(|| "custom".into()),
            family: if llama { Family::Llama } else { Family::Gpt2 },
            layers: m.n_layer,
            hidden: m.n_embd,
            heads: m.n_head,
            kv_heads: if m.n_kv_head == 0 { m.n_head } else { m.n_kv_head },
            head_dim,
            ffn,
            vocab,
            seq: m.block_size,
            norm: if llama { Norm::RmsNorm } else { Norm::LayerNorm },
            norm_eps: m.norm_eps,
            mlp: if llama { Mlp::SwiGlu } else { Mlp::Gelu },
            positions: if llama { Positions::Rope { theta: m.rope_theta } } else { Positions::Learned },
            bias: m.bias,
            tied: m.tie_embeddings,
            source: "run config".into(),
        };
        spec.validate().map_err(|reason| ConfigError::InvalidValue { key: "model".into(), reason })?;
        Ok(spec)
    }
}

impl fmt::Display for ResolvedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_toml())
    }
}

/// Builds the run config. Precedence: defaults < `preset` < `file` < `sets` (a later
/// `--set` wins over an earlier one). Each `sets` item is `section.key=value`, the value
/// read as a TOML value when it is one (`100`, `3e-4`, `true`, `["a", "b"]`), else as a
/// string (`data.tokenizer=char`); `--set model.vocab_size=none` clears an optional key.
pub fn resolve(
    preset: Option<&str>,
    file: Option<&Path>,
    sets: &[String],
) -> Result<ResolvedConfig, ConfigError> {
    let base_config = match preset {
        Some(name) => presets::get(name).ok_or_else(|| ConfigError::UnknownPreset {
            name: name.to_string(),
            valid: presets::names().iter().map(|s| s.to_string()).collect(),
        })?,
        None => RunConfig::default(),
    };
    // A preset is a whole config, so it replaces the defaults rather than overlaying them
    // (an `Option` the preset leaves `None` must not inherit a default `Some`).
    let mut table = to_table(&base_config)?;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file_table = parse_table(&text, path)?;
        merge(&mut table, file_table);
    }
    apply_sets(&mut table, sets)?;
    let mut resolved = finish(table)?;
    resolved.preset = preset.map(str::to_string);
    Ok(resolved)
}

/// Reads a config saved by [`ResolvedConfig::to_toml`] (e.g. from a checkpoint) with
/// `--set` overrides on top, as when resuming with a changed `train.steps`. Missing keys
/// take the defaults; the preset comment, if any, is kept.
pub fn resolve_saved(saved_toml: &str, sets: &[String]) -> Result<ResolvedConfig, ConfigError> {
    let preset = saved_toml
        .lines()
        .take_while(|l| l.starts_with('#') || l.trim().is_empty())
        .find_map(|l| l.strip_prefix(PRESET_LINE))
        .map(|p| p.trim().to_string());
    let saved = parse_table(saved_toml, Path::new("<saved config>"))?;
    let mut table = to_table(&RunConfig::default())?;
    merge(&mut table, saved);
    apply_sets(&mut table, sets)?;
    let mut resolved = finish(table)?;
    resolved.preset = preset;
    Ok(resolved)
}

/// Applies `--set` arguments in order, so a later one wins.
fn apply_sets(table: &mut Table, sets: &[String]) -> Result<(), ConfigError> {
    for arg in sets {
        let set = keys::parse_set(arg)?;
        let section = table
            .entry(set.section)
            .or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(fields) = section {
            match set.value {
                Some(v) => fields.insert(set.field, v),
                None => fields.remove(&set.field),
            };
        }
    }
    Ok(())
}

/// Parses TOML text and checks its keys and types, so errors point at this layer.
fn parse_table(text: &str, path: &Path) -> Result<Table, ConfigError> {
    let table = text.parse::<Table>().map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })?;
    keys::check_table(&table)?;
    Ok(table)
}

fn to_table(c: &RunConfig) -> Result<Table, ConfigError> {
    Table::try_from(c).map_err(|e| ConfigError::Parse {
        path: PathBuf::from("<built-in config>"),
        message: e.to_string(),
    })
}

/// Overlays `over` onto `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut Table, over: Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Checks, deserializes once, validates and derives.
fn finish(mut table: Table) -> Result<ResolvedConfig, ConfigError> {
    keys::check_table(&table)?;
    keys::widen_floats(&mut table);
    let raw: RunConfig = Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: PathBuf::from("<merged config>"),
            message: e.to_string(),
        })?;
    ResolvedConfig::new(raw)
}

//! Pieces shared by the subcommands: config resolution (fresh or from a checkpoint),
//! data preparation with a progress bar, and loading a model for inference.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use config::ResolvedConfig;

/// Config flags shared by `train` and `bench train`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ConfigArgs {
    /// Start from a named preset (shakespeare-char, shakespeare-char-cpu, gpt2, gpt2-mini, ...).
    #[arg(long)]
    pub preset: Option<String>,
    /// A TOML config file, layered over the preset.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Override one key, e.g. `--set train.steps=100` (repeatable; the last one wins).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

impl ConfigArgs {
    pub fn resolve(&self) -> Result<ResolvedConfig> {
        Ok(config::resolve(self.preset.as_deref(), self.config.as_deref(), &self.sets)?)
    }
}

pub fn tokenizer_kind(k: config::TokenizerKind) -> data::TokenizerKind {
    match k {
        config::TokenizerKind::Gpt2 => data::TokenizerKind::Gpt2,
        config::TokenizerKind::Char => data::TokenizerKind::Char,
        config::TokenizerKind::Hf => data::TokenizerKind::Hf,
    }
}

/// The prepare settings of a config's `[data]` section.
pub fn prepare_options(d: &config::DataConfig) -> data::PrepareOptions {
    let tokenizer = match (d.tokenizer, &d.tokenizer_file) {
        (config::TokenizerKind::Hf, Some(f)) => data::TokenizerChoice::Hf(f.clone()),
        (k, _) => tokenizer_kind(k).into(),
    };
    data::PrepareOptions {
        tokenizer,
        val_fraction: d.val_fraction,
        val_inputs: d.val_inputs.clone(),
        split: match d.split {
            config::SplitMode::Documents => data::SplitMode::Documents,
            config::SplitMode::Tail => data::SplitMode::Tail,
        },
        text_field: d.text_field.clone(),
        on_error: match d.on_error {
            config::OnError::Fail => data::OnError::Fail,
            config::OnError::Skip => data::OnError::Skip,
        },
        shard_tokens: d.shard_tokens,
        eod_token: d.eod_token.clone(),
        add_special_tokens: true,
        batch_bytes: data::BATCH_BYTES,
    }
}

/// The configured data, for messages: `data.dir`, or the folders of `data.sources`.
pub fn data_location(d: &config::DataConfig) -> String {
    if d.sources.is_empty() {
        d.dir.display().to_string()
    } else {
        let dirs: Vec<String> = d.sources.iter().map(|s| s.dir.display().to_string()).collect();
        format!("the mixture of {}", dirs.join(", "))
    }
}

/// Opens the configured dataset: the mixture of `data.sources` when given (each
/// must be prepared), else `data.dir`, preparing it from `data.inputs` on first use.
pub fn open_data(cfg: &ResolvedConfig, show_progress: bool) -> Result<data::Dataset> {
    let d = &cfg.raw.data;
    if !d.sources.is_empty() {
        let sources: Vec<(PathBuf, f64)> = d.sources.iter().map(|s| (s.dir.clone(), s.weight)).collect();
        return Ok(data::Dataset::open_mixture(&sources)?);
    }
    let meta_exists = d.dir.join("meta.json").is_file();
    if meta_exists && d.inputs.is_empty() {
        // Nothing to prepare from: the folder's own tokenizer is the run's.
        return Ok(data::Dataset::open(&d.dir)?);
    }
    if !meta_exists {
        if d.inputs.is_empty() {
            anyhow::bail!(
                "data folder {} has no meta.json and data.inputs is empty: run `hyperion data prepare --out {}` or set data.inputs",
                d.dir.display(),
                d.dir.display()
            );
        }
        eprintln!("preparing {} from {} input path(s) ({} tokenizer)", d.dir.display(), d.inputs.len(), tokenizer_kind(d.tokenizer));
    }
    let mut bar: Box<dyn FnMut(&data::Progress)> =
        if show_progress && !meta_exists { Box::new(super::data::prepare_bar()) } else { Box::new(|_: &data::Progress| {}) };
    data::ensure_prepared(&d.dir, &d.inputs, &prepare_options(d), &mut *bar)?;
    Ok(data::Dataset::open(&d.dir)?)
}


/// A model loaded for inference from a run directory or checkpoint folder.
pub struct Loaded {
    pub cfg: ResolvedConfig,
    pub gpt: model::Gpt,
    pub params: Vec<Vec<f32>>,
    pub meta: data::Meta,
    pub step: u64,
    pub dir: PathBuf,
}

pub fn load_checkpoint(path: &Path) -> Result<Loaded> {
    let ck = engine::open_checkpoint(path)?;
    let cfg = ResolvedConfig::from_toml_str(&engine::saved_config(&ck)?)
        .with_context(|| format!("the config saved in {}", ck.dir().display()))?;
    let gpt = model::Gpt::new(engine::model_spec(&cfg)?);
    let mut params = gpt.zeros();
    engine::load_model(&gpt, &ck, &mut params)?;
    Ok(Loaded { meta: engine::saved_data_meta(&ck)?, step: ck.step(), dir: ck.dir().to_path_buf(), cfg, gpt, params })
}

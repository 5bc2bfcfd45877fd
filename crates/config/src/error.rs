//! The crate's one error type. Every message names the dotted key, file or argument at fault.

use std::path::PathBuf;

/// Everything that can be wrong with a run configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key or section that no config struct has (`train.stpes`, `[trian]`).
    #[error("unknown config key `{key}`{}", did_you_mean(suggestion.as_deref()))]
    UnknownKey {
        key: String,
        suggestion: Option<String>,
    },

    /// A value of the wrong TOML type (`train.steps = "abc"`).
    #[error("{key}: expected {expected}, found {found}")]
    WrongType {
        key: String,
        expected: String,
        found: String,
    },

    /// A well-typed value outside what the run can use (`model.n_head = 0`).
    #[error("{key}: {reason}")]
    InvalidValue { key: String, reason: String },

    /// `train.global_batch` disagrees with the micro-batch arithmetic.
    #[error(
        "train.global_batch = {global_batch} but train.batch_size ({batch_size}) x \
         train.grad_accum ({grad_accum}) x parallel.dp ({dp}) = {}; change one of them or \
         remove train.global_batch",
        batch_size.saturating_mul(*grad_accum).saturating_mul(*dp)
    )]
    BatchMismatch {
        global_batch: usize,
        batch_size: usize,
        grad_accum: usize,
        dp: usize,
    },

    /// `--preset NAME` with a name that is not in [`crate::presets::names`].
    #[error("unknown preset `{name}`{} (valid presets: {})", did_you_mean(closest(name, valid).as_deref()), valid.join(", "))]
    UnknownPreset { name: String, valid: Vec<String> },

    /// An explicit `model.vocab_size` that differs from the prepared data's vocabulary.
    #[error(
        "model.vocab_size = {model} but the prepared data's meta.json has a vocabulary of \
         {data} tokens; remove model.vocab_size to take it from the data"
    )]
    VocabMismatch { model: usize, data: usize },

    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// The config file (or a saved config) is not valid TOML.
    #[error("{}: invalid TOML: {message}", path.display())]
    Parse { path: PathBuf, message: String },

    /// A `--set` argument that is not `section.key=value`.
    #[error("bad --set `{arg}`: {reason}")]
    BadSet { arg: String, reason: String },
}

fn did_you_mean(suggestion: Option<&str>) -> String {
    suggestion
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default()
}

fn closest(name: &str, valid: &[String]) -> Option<String> {
    crate::keys::closest(name, valid.iter().map(String::as_str)).map(str::to_string)
}

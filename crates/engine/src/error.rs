use std::path::PathBuf;

/// Everything that can stop a training run, each naming what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error(transparent)]
    Comm(#[from] comm::CommError),
    #[error("checkpoint {dir}: tensor {name} has shape {found:?}, but the model expects {expected:?}")]
    ShapeMismatch { dir: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("checkpoint {dir}: manifest field `{field}` is missing or malformed ({detail})")]
    BadMeta { dir: PathBuf, field: String, detail: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("run directory {dir} already holds a run (checkpoint at step {step}); pass --resume to continue it, or choose another --out")]
    RunExists { dir: PathBuf, step: u64 },
    #[error("the loss became {value} at step {step}: training diverged (try a lower optim.lr or optim.grad_clip)")]
    NonFinite { step: u64, value: f64 },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> EngineError {
    let path = path.into();
    move |source| EngineError::Io { path, source }
}

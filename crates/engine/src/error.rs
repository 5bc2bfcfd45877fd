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
    #[error(
        "steps {first} to {last}: {count} steps in a row had a non-finite loss or gradient norm (last: loss {loss}, gradient norm {norm}); \
         their updates were skipped and the run stopped (train.max_bad_steps = {limit}). {resume}; try a lower optim.lr or a gradient clip (optim.grad_clip)"
    )]
    Diverged { first: u64, last: u64, count: u64, limit: u64, loss: f64, norm: f64, resume: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> EngineError {
    let path = path.into();
    move |source| EngineError::Io { path, source }
}

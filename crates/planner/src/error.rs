//! The planner's one error type.

use thiserror::Error;

/// Everything the planner can refuse, each naming what is wrong and where.
#[derive(Debug, Error, PartialEq)]
pub enum PlanError {
    /// A catalog lookup failed; `valid` lists the names that exist.
    #[error("unknown {kind} `{name}`; valid names: {valid}")]
    UnknownName {
        kind: &'static str,
        name: String,
        valid: String,
    },
    /// A `--layout` string could not be parsed.
    #[error("bad layout `{text}`: {reason}")]
    BadLayout { text: String, reason: String },
    /// The degrees of a layout need more GPUs than there are.
    #[error(
        "layout tp={tp} x pp={pp} x dp={dp} = {product} GPUs exceeds the {gpus} GPUs available"
    )]
    DegreeMismatch {
        tp: u64,
        pp: u64,
        dp: u64,
        product: u64,
        gpus: u64,
    },
    /// A layout is impossible for the model or the batch (names the rule broken).
    #[error("layout does not fit the model/batch: {reason}")]
    InvalidLayout { reason: String },
    /// No layout fits in GPU memory.
    #[error("no layout of {model} fits in {mem_gb:.0} GB per GPU on {gpus} GPUs (smallest needs {best_gb:.1} GB)")]
    NothingFits {
        model: String,
        gpus: u64,
        mem_gb: f64,
        best_gb: f64,
    },
    /// A CSV file could not be parsed.
    #[error("{file}: line {line}: {reason}")]
    Csv {
        file: String,
        line: usize,
        reason: String,
    },
    /// A CSV file lacks a column the validator needs.
    #[error("{file}: missing column `{column}` in the header")]
    MissingColumn { file: String, column: String },
    /// A cluster file (`--cluster FILE.toml`) is unreadable or incomplete.
    #[error("{file}: {reason}")]
    ClusterFile { file: String, reason: String },
}

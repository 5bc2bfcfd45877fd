//! # hyperion-config: the typed run configuration
//!
//! What `hyperion train` (and `eval`, `generate`, the planner) read: one typed struct per
//! TOML section ([`ModelConfig`], [`TrainConfig`], [`OptimConfig`], [`DataConfig`],
//! [`ParallelConfig`], [`CheckpointConfig`], [`LogConfig`]) gathered in [`RunConfig`], and
//! [`ResolvedConfig`], the validated config plus its derived batch arithmetic
//! (global batch = micro-batch x accumulation x dp).
//!
//! Layers, later wins: built-in defaults (= the `shakespeare-char-cpu` preset) <
//! `--preset NAME` ([`presets`]) < `--config FILE.toml` < each `--set section.key=value`.
//! Unknown keys are refused with their full dotted name and a suggestion
//! (`unknown config key `train.stpes`; did you mean `train.steps`?`), wrong types name
//! the expected and found type, and every semantic check names its key ([`ConfigError`]).
//!
//! The resolved config round-trips through TOML ([`ResolvedConfig::to_toml`] /
//! [`ResolvedConfig::from_toml_str`]); it is printed at start and saved in checkpoints.
//!
//! ```
//! use config::{resolve, ConfigError, TokenizerKind};
//!
//! let sets = ["train.steps=100".to_string(), "parallel.dp=2".to_string(), "train.grad_accum=4".to_string()];
//! let cfg = resolve(Some("tiny"), None, &sets)?;
//! assert_eq!(cfg.raw.train.steps, 100);
//! assert_eq!(cfg.raw.data.tokenizer, TokenizerKind::Char);
//! assert_eq!(cfg.global_batch, 4 * 4 * 2); // batch_size x grad_accum x dp
//! assert_eq!(cfg.tokens_per_step, 32 * 16); // global_batch x block_size
//!
//! // The vocabulary comes from the prepared data unless the config fixed it.
//! let cfg = cfg.with_vocab_size(65)?;
//! assert_eq!(cfg.raw.model.vocab_size, Some(65));
//!
//! // Saved with the checkpoint, read back equal.
//! assert_eq!(config::ResolvedConfig::from_toml_str(&cfg.to_toml())?, cfg);
//!
//! let err = resolve(None, None, &["train.stpes=5".to_string()]).unwrap_err();
//! assert_eq!(err.to_string(), "unknown config key `train.stpes`; did you mean `train.steps`?");
//! # Ok::<(), ConfigError>(())
//! ```

mod error;
pub mod keys;
pub mod presets;
mod resolve;
mod schema;
mod validate;

pub use error::ConfigError;
pub use resolve::{resolve, resolve_saved, Notes, ResolvedConfig};
pub use schema::{
    Arch, CheckpointConfig, DataConfig, LogConfig, ModelConfig, OptimConfig, ParallelConfig,
    Recompute, PipeSchedule, RunConfig, TokenizerKind, TrainConfig, SplitMode, OnError, SourceConfig,
};

/// `train.device` read: `None` for "cpu", `Some(N)` for "cuda" (N = 0) or "cuda:N", and
/// for the emulated CUDA device "cuda-emu" / "cuda-emu:N" (the GPU code path run on the
/// host, for tests; see crates/cuda).
pub fn device_ordinal(device: &str) -> Result<Option<usize>, String> {
    let n = |rest: &str| rest.parse::<usize>().ok();
    let parsed = match device {
        "cpu" => return Ok(None),
        "cuda" | "cuda-emu" => Some(0),
        d => d.strip_prefix("cuda-emu:").and_then(n).or_else(|| d.strip_prefix("cuda:").and_then(n)),
    };
    parsed.map(Some).ok_or_else(|| {
        format!("expected \"cpu\", \"cuda\", \"cuda:N\" (N a device number) or the emulated \"cuda-emu\" / \"cuda-emu:N\", found \"{device}\"")
    })
}

//! The training engine: one step across a layout (micro-batches, gradient accumulation,
//! clipping, AdamW with a warm-up + cosine schedule), evaluation, metrics, checkpoints
//! and sampling.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = config::resolve(Some("tiny"), None, &[])?;
//! let data = data::Dataset::open(std::path::Path::new("data/prepared/tiny"))?;
//! let mut trainer = engine::Trainer::new(cfg, data, std::path::Path::new("runs/tiny"))?;
//! let val_loss = trainer.run(&mut engine::Quiet)?;
//! println!("final validation loss {val_loss:?}");
//! # Ok(()) }
//! ```

pub mod alloc;
mod ckpt;
mod error;
mod gpu;
pub mod metrics;
pub mod optim;
pub mod pipe;
pub mod rank;
pub mod shard;
mod step;
pub mod sample;
pub mod schedule;
mod trainer;

pub use ckpt::{load_model, meta_u64, open as open_checkpoint, saved_config, saved_data_meta, FORMAT};
pub use error::{EngineError, Result};
pub use metrics::{available_memory_bytes, measure_peak_flops, planned_rank_memory, DeviceMemory, Measured, MemoryReport, PlannedTerm, RunInfo, StepMetrics};
pub use rank::Rank;
pub use trainer::{evaluate, model_spec, peak_rss_bytes, Observer, Quiet, StepTimes, Trainer};

//! # hyperion-planner
//!
//! Before a GPU-hour is spent: will a model fit, which parallel layout, how fast,
//! how many days. The planner holds documented catalogs (GPUs, links, clusters,
//! models), a memory model (ZeRO model states, Korthikanti et al. 2022 activations,
//! buffers, fragmentation), a step-time model (shape-aware GEMM efficiency,
//! TP/PP/DP collectives with ring and tree costs, pipeline bubble, optimizer), an
//! exhaustive layout search, and a validator against published training runs.
//!
//! ```
//! use planner::{hardware, models, estimate::Job, layout::LayoutSpec, search, time::Calibration};
//! let c = hardware::cluster("dgx-a100-superpod").unwrap();
//! let job = Job {
//!     model: models::model("gpt3-175b").unwrap(),
//!     machine: hardware::Machine::from_cluster(c).unwrap(),
//!     gpus: 1024, global_batch: 1536, seq: 2048, tokens: 300e9,
//! };
//! let spec = LayoutSpec::parse("tp=8").unwrap();
//! let r = search::search(&job, &spec, &Calibration::default(), 3).unwrap();
//! assert!(r.best.fits && r.best.mfu_pct > 30.0 && r.best.mfu_pct < 70.0);
//! assert_eq!(r.best.layout.tp, 8);
//! ```

// `x % y == 0` instead of `is_multiple_of` (stable only since 1.87; MSRV is 1.80).
#![allow(clippy::manual_is_multiple_of)]

pub mod cluster_file;
pub mod csv;
pub mod cv;
pub mod error;
pub mod estimate;
pub mod flops;
pub mod hardware;
pub mod layout;
pub mod memory;
pub mod models;
pub mod search;
pub mod time;
pub mod validate;

pub use error::PlanError;
pub use estimate::{estimate, Estimate, Job};
pub use layout::{Layout, LayoutSpec, Recompute};
pub use search::{search, SearchResult};
pub use time::Calibration;

//! One module per subcommand.

pub mod bench;
pub mod bench_comm;
pub mod bench_machine;
pub mod bench_train;
pub mod common;
pub mod data;
pub mod eval;
pub mod generate;
pub mod hf;
pub mod lock;
pub mod plan;
pub mod plot;
pub mod stop;
pub mod supervise;
pub mod train;

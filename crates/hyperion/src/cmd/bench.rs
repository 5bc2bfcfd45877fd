//! `hyperion bench ...`: dispatch to the benchmark modules.

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Full training steps (forward, backward, AdamW) on random tokens.
    Train(super::bench_train::BenchTrainArgs),
    /// Collective bandwidth, nccl-tests style.
    Comm(super::bench_comm::BenchCommArgs),
    /// This machine as the planner sees it (GEMM rate by shape, memory and collective
    /// bandwidth); writes a cluster file for `hyperion plan --cluster FILE.toml`.
    Machine(super::bench_machine::BenchMachineArgs),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Train(a) => super::bench_train::run(a),
        BenchCommand::Comm(a) => super::bench_comm::run(a),
        BenchCommand::Machine(a) => super::bench_machine::run(a),
    }
}

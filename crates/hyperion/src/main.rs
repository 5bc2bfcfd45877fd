//! `hyperion`: the command line. Each subcommand is a thin call into a library crate;
//! the modules under `cmd/` own their arguments and printing, nothing else.

mod chart;
mod cmd;

use clap::{Parser, Subcommand};

/// Counts heap bytes per thread, so each rank of a threaded run reports what it allocated.
#[global_allocator]
static ALLOC: engine::alloc::CountingAlloc = engine::alloc::CountingAlloc;

#[derive(Parser)]
#[command(name = "hyperion", version, about = "Train transformer language models on 1 to N devices, and plan runs on GPU clusters")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prepare token files from raw text.
    #[command(subcommand)]
    Data(cmd::data::DataCommand),
    /// Train a model (single rank, or `--workers N` threads, or under mpirun).
    Train(cmd::train::TrainArgs),
    /// Sample text from a checkpoint.
    Generate(cmd::generate::GenerateArgs),
    /// Validation loss and perplexity of a checkpoint.
    Eval(cmd::eval::EvalArgs),
    /// Plan a training run on a cluster: memory, step time, MFU, best layout.
    Plan(cmd::plan::PlanArgs),
    /// Benchmarks: training steps, collectives.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Plot a run's loss curves to PNG.
    Plot(cmd::plot::PlotArgs),
    /// Write a checkpoint as a Hugging Face model folder (`from_pretrained` loads it).
    Export(cmd::hf::ExportArgs),
}

fn main() {
    ALLOC.activate();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Data(c) => cmd::data::run(c),
        Command::Train(a) => cmd::train::run(a),
        Command::Export(a) => cmd::hf::export(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Plan(a) => {
            // `plan ... | head`: end quietly when the reader goes away, as Unix tools do
            // (Rust ignores SIGPIPE, so the next print would panic). Only here: training
            // and its sockets keep the ignored signal and get an error to handle.
            #[cfg(unix)]
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            }
            cmd::plan::run(a)
        }
        Command::Bench(c) => cmd::bench::run(c),
        Command::Plot(a) => cmd::plot::run(a),
    };
    if let Err(err) = result {
        if let Some(stopped) = err.downcast_ref::<cmd::stop::Stopped>() {
            eprintln!("{stopped}");
            std::process::exit(cmd::stop::EXIT_STOPPED);
        }
        if err.downcast_ref::<cmd::supervise::Diverged>().is_some() {
            eprintln!("error: {err:#}");
            std::process::exit(cmd::supervise::EXIT_DIVERGED);
        }
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

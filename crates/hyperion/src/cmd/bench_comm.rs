//! `hyperion bench comm`: collective bandwidth, nccl-tests style, for the local backend
//! (ranks as threads) or the MPI backend (ranks as processes under mpirun). Measuring
//! lives in `comm::bench`; this module parses flags and prints.

use std::time::Duration;

use anyhow::{bail, Context};
use comm::bench::{self, BenchOp, Row};
#[cfg(feature = "mpi")]
use comm::Communicator;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Local,
    Mpi,
}

#[derive(clap::Args, Debug)]
pub struct BenchCommArgs {
    /// Which backend to measure.
    #[arg(long, value_enum, default_value = "local")]
    pub backend: Backend,
    /// Number of ranks (threads for `local`; with `mpi`, the `mpirun -np`, which is
    /// launched for you when not already under mpirun).
    #[arg(long, default_value_t = 2)]
    pub ranks: usize,
    /// One size (`64M`) or a doubling range (`1K..256M`), in bytes of f32 data.
    #[arg(long, default_value = "1K..256M")]
    pub sizes: String,
    /// Collectives to run (default: all four).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub ops: Vec<OpArg>,
    /// One JSON object per row instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Per-collective timeout in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_s: u64,
    /// mpi: leave glibc malloc untuned (to measure OpenMPI's per-call temporary buffer).
    #[arg(long)]
    pub no_malloc_tuning: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OpArg {
    AllReduce,
    ReduceScatter,
    AllGather,
    Broadcast,
}

impl From<OpArg> for BenchOp {
    fn from(o: OpArg) -> BenchOp {
        match o {
            OpArg::AllReduce => BenchOp::AllReduce,
            OpArg::ReduceScatter => BenchOp::ReduceScatter,
            OpArg::AllGather => BenchOp::AllGather,
            OpArg::Broadcast => BenchOp::Broadcast,
        }
    }
}

pub fn run(args: BenchCommArgs) -> anyhow::Result<()> {
    if args.ranks == 0 {
        bail!("--ranks must be at least 1");
    }
    let sizes = bench::parse_sizes(&args.sizes).with_context(|| format!("--sizes {}", args.sizes))?;
    let ops: Vec<BenchOp> =
        if args.ops.is_empty() { BenchOp::ALL.to_vec() } else { args.ops.iter().map(|&o| o.into()).collect() };
    let timeout = Duration::from_secs(args.timeout_s);
    match args.backend {
        Backend::Local => {
            let bw = bench::memcpy_bandwidth(args.ranks, 64 << 20);
            let rows = comm::run_local(args.ranks, timeout, |c| bench::run(&c, &ops, &sizes))
                .context("local benchmark")?
                .swap_remove(0);
            print_rows(&args, "local", &rows, Some(bw), true);
            Ok(())
        }
        Backend::Mpi => run_mpi(&args, &ops, &sizes, timeout),
    }
}

/// Outside mpirun, runs this same command under `mpirun -np ranks` and returns true
/// (the caller is done); under mpirun returns false. Launcher variables are read here,
/// at the edge, only to decide that.
pub fn relaunch_under_mpirun(ranks: usize) -> anyhow::Result<bool> {
    let under_mpi = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"].iter().any(|v| std::env::var_os(v).is_some());
    if under_mpi {
        return Ok(false);
    }
    if !cfg!(feature = "mpi") {
        bail!("this hyperion was built without MPI: rebuild with `cargo build --release -p hyperion --features mpi`");
    }
    let exe = std::env::current_exe().context("locating the hyperion binary")?;
    let mut cmd = std::process::Command::new("mpirun");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.arg("--allow-run-as-root");
    }
    cmd.args(["--oversubscribe", "-np", &ranks.to_string()]).arg(exe).args(std::env::args_os().skip(1));
    let status = cmd.status().context("running mpirun (is OpenMPI installed?)")?;
    if !status.success() {
        bail!("mpirun exited with {status}");
    }
    Ok(true)
}

#[cfg(feature = "mpi")]
fn run_mpi(args: &BenchCommArgs, ops: &[BenchOp], sizes: &[usize], timeout: Duration) -> anyhow::Result<()> {
    // Launcher variables are read here, at the edge, only to decide whether to
    // re-launch ourselves under mpirun.
    if relaunch_under_mpirun(args.ranks)? {
        return Ok(());
    }
    let opts = comm::mpi::MpiOptions { timeout, tune_malloc: !args.no_malloc_tuning };
    let c = comm::mpi::MpiComm::world(&opts).context("initialising MPI")?;
    if c.size() != args.ranks {
        bail!("--ranks {} but mpirun started {} ranks", args.ranks, c.size());
    }
    // Every rank measures memcpy at once, like the ranks of the local backend.
    let bw = bench::memcpy_bandwidth(1, 64 << 20);
    let mut agg = [bw as f32];
    c.all_reduce((&mut agg[..]).into(), comm::ReduceOp::Sum)?;
    let rows = bench::run(&c, ops, sizes)?;
    if c.rank() == 0 {
        let label = if args.no_malloc_tuning { "mpi (malloc untuned)" } else { "mpi" };
        print_rows(args, label, &rows, Some(agg[0] as f64), false);
    }
    Ok(())
}

#[cfg(not(feature = "mpi"))]
fn run_mpi(_: &BenchCommArgs, _: &[BenchOp], _: &[usize], _: Duration) -> anyhow::Result<()> {
    bail!("this hyperion was built without MPI: rebuild with `cargo build --release -p hyperion --features mpi`")
}

fn print_rows(args: &BenchCommArgs, backend: &str, rows: &[Row], memcpy_bw: Option<f64>, bound: bool) {
    if args.json {
        for r in rows {
            let v = serde_json::json!({
                "op": r.op,
                "size_bytes": r.size_bytes,
                "time_us": r.time_us,
                "algbw_gbps": r.algbw_gbps,
                "busbw_gbps": r.busbw_gbps,
            });
            println!("{v}");
        }
        return;
    }
    let p = args.ranks;
    println!("# hyperion bench comm: backend {backend}, {p} ranks, f32, op sum");
    if let Some(bw) = memcpy_bw {
        println!("# memcpy bandwidth, {p} concurrent copies of 64 MiB: {:.2} GB/s aggregate (bytes copied)", bw / 1e9);
    }
    if bound {
        println!("# bound: the local algorithm's memory traffic (read + written, all ranks) / (2 x memcpy bandwidth)");
    }
    println!("{:>15} {:>12} {:>12} {:>12} {:>12} {:>11} {:>7}", "op", "size(B)", "time(us)", "algbw(GB/s)", "busbw(GB/s)", "bound(us)", "%bound");
    for r in rows {
        let op = BenchOp::ALL.iter().copied().find(|o| o.name() == r.op).unwrap_or(BenchOp::AllReduce);
        let (bound, frac) = match memcpy_bw {
            Some(bw) if bound && r.size_bytes >= 1 << 20 => {
                let (rd, wr) = op.local_traffic(r.size_bytes, p);
                let t = (rd + wr) / (2.0 * bw) * 1e6;
                (format!("{t:.1}"), format!("{:.0}%", 100.0 * t / r.time_us))
            }
            _ => ("-".into(), "-".into()),
        };
        println!(
            "{:>15} {:>12} {:>12.1} {:>12.2} {:>12.2} {:>11} {:>7}",
            r.op, r.size_bytes, r.time_us, r.algbw_gbps, r.busbw_gbps, bound, frac
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchCommArgs,
    }

    #[test]
    fn flags_parse_with_defaults_and_lists() {
        let a = Cli::try_parse_from(["x"]).unwrap().args;
        assert_eq!((a.backend, a.ranks, a.sizes.as_str(), a.json), (Backend::Local, 2, "1K..256M", false));
        let a = Cli::try_parse_from(["x", "--backend", "mpi", "--ranks", "4", "--sizes", "64M", "--json", "--ops", "all-reduce,broadcast"])
            .unwrap()
            .args;
        assert_eq!((a.backend, a.ranks, a.json), (Backend::Mpi, 4, true));
        assert_eq!(a.ops, vec![OpArg::AllReduce, OpArg::Broadcast]);
        assert!(Cli::try_parse_from(["x", "--backend", "tcp"]).is_err());
    }

    #[test]
    fn bad_sizes_and_ranks_are_errors() {
        let a = Cli::try_parse_from(["x", "--sizes", "12Q"]).unwrap().args;
        assert!(run(a).unwrap_err().to_string().contains("--sizes 12Q"));
        let a = Cli::try_parse_from(["x", "--ranks", "0"]).unwrap().args;
        assert!(run(a).is_err());
    }
}

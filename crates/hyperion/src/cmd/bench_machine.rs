//! `hyperion bench machine`: measures this machine as the planner sees a device (one
//! engine rank and its share of the cores): GEMM rate by shape, memory bandwidth, and
//! the collective bandwidth and latency between thread ranks; prints them and writes a
//! cluster file for `hyperion plan --cluster FILE.toml`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use comm::bench::{self as cb, BenchOp};

#[derive(clap::Args)]
pub struct BenchMachineArgs {
    /// Ranks the machine is planned as (the engine's thread ranks); each measurement
    /// uses one rank's share of the cores.
    #[arg(long, default_value_t = 1)]
    pub ranks: usize,
    /// Write the measurements as a cluster file (`hyperion plan --cluster FILE.toml`).
    #[arg(long, value_name = "FILE.toml")]
    pub out: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// (m, n, k) GEMMs: squares, and a transformer layer's at 4096 rows and width 768.
const SHAPES: &[(usize, usize, usize)] = &[(256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048), (4096, 768, 768), (4096, 3072, 768), (4096, 768, 3072)];

fn gemm_rate(m: usize, n: usize, k: usize) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.01).collect();
    let mut c = vec![0.0f32; m * n];
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t0 = Instant::now();
        kernels::matmul(&mut c, &a, false, &b, false, m, n, k, false);
        best = best.max(2.0 * (m * n * k) as f64 / t0.elapsed().as_secs_f64());
    }
    best
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into())
}

fn mem_total() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

pub fn run(a: BenchMachineArgs) -> Result<()> {
    if a.ranks == 0 {
        bail!("--ranks must be at least 1");
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = (cores / a.ranks).max(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let rates: Vec<((usize, usize, usize), f64)> = pool.install(|| SHAPES.iter().map(|&(m, n, k)| ((m, n, k), gemm_rate(m, n, k))).collect());
    let peak = rates.iter().map(|r| r.1).fold(0.0, f64::max);
    // The transformer shapes' rate relative to the best: the planner's GEMM efficiency.
    let layer: Vec<f64> = rates.iter().filter(|r| r.0 .1 != r.0 .0).map(|r| r.1).collect();
    let gemm_eff = (layer.iter().sum::<f64>() / layer.len() as f64 / peak).min(1.0);
    let mem_bw = cb::memcpy_bandwidth(threads, 256 << 20);
    // Collectives between 2 thread ranks (at least), nccl-tests' bus bandwidth.
    let p = a.ranks.max(2);
    let (big, small) = (16usize << 20, 4usize << 10);
    let times = comm::run_local(p, Duration::from_secs(120), |c| -> comm::Result<(f64, f64)> {
        Ok((cb::time_op(&c, BenchOp::AllReduce, big, cb::iters_for(big))?, cb::time_op(&c, BenchOp::AllReduce, small, 200)?))
    })
    .context("the collective benchmark")?;
    let (t_big, t_small) = times[0];
    let bus_bw = big as f64 / t_big * BenchOp::AllReduce.bus_factor(p);
    let latency = t_small;
    let mem = mem_total().unwrap_or(8e9) / a.ranks as f64;
    let cpu = cpu_name();
    if a.json {
        let shapes: Vec<serde_json::Value> = rates.iter().map(|((m, n, k), r)| serde_json::json!({ "m": m, "n": n, "k": k, "flops_per_s": r })).collect();
        println!(
            "{}",
            serde_json::json!({
                "cpu": cpu, "cores": cores, "ranks": a.ranks, "threads_per_rank": threads,
                "gemm": shapes, "peak_flops": peak, "gemm_eff": gemm_eff,
                "memory_bw_bytes_per_s": mem_bw, "memory_bytes_per_rank": mem,
                "all_reduce": { "ranks": p, "bytes": big, "bus_bw_bytes_per_s": bus_bw, "small_bytes": small, "small_latency_s": latency },
            })
        );
    } else {
        println!("{cpu}: {cores} cores, planned as {} rank(s) of {threads} thread(s)", a.ranks);
        for ((m, n, k), r) in &rates {
            println!("  GEMM {m} x {n} x {k}: {:.1} GFLOP/s", r / 1e9);
        }
        println!("  memory bandwidth {:.1} GB/s; all-reduce over {p} ranks: {:.1} GB/s bus, {:.1} us for 4 KiB", mem_bw / 1e9, bus_bw / 1e9, latency * 1e6);
    }
    if let Some(out) = &a.out {
        let text = format!(
            "# Measured by `hyperion bench machine --ranks {r}` on {cpu} ({cores} cores).\n\
             [cluster]\nname = \"this-machine\"\ngpus = {r}\ngpus_per_node = {r}\nsource = \"measured: hyperion bench machine on {cpu}\"\n\
             assumptions = \"one device = one engine rank of {threads} thread(s); peak = the best GEMM rate measured; no network\"\n\n\
             [gpu]\nname = \"cpu-{threads}t\"\npeak_bf16_tflops = {pk}\npeak_fp32_tflops = {pk}\nmemory_gb = {mg}\nmemory_bw_gbs = {bw}\ngemm_eff = {ge}\nflash = false\n\n\
             [intra]\nbw_gbs = {ib}\nlatency_us = {lat}\n",
            r = a.ranks,
            pk = peak / 1e12,
            mg = mem / 1e9,
            bw = mem_bw / 1e9,
            ge = gemm_eff,
            ib = bus_bw / 1e9,
            lat = latency * 1e6,
        );
        std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
        if !a.json {
            println!("cluster file: {} (hyperion plan --cluster {})", out.display(), out.display());
        }
    }
    Ok(())
}

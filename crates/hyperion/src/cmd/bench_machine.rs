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
    /// How the ranks talk: `local` (thread ranks, `--workers`) or `mpi` (one process
    /// per rank under mpirun, launched for you when not already under it; needs a
    /// build with `--features mpi`).
    #[arg(long, value_enum, default_value = "local")]
    pub backend: super::bench_comm::Backend,
    /// A coarser GEMM grid (sizes 64, 1024, 32768: 27 shapes instead of 125) measured
    /// once instead of the median of 3 passes, for a first look in seconds; the planner
    /// interpolates over whatever grid the file has.
    #[arg(long)]
    pub quick: bool,
}

/// The GEMM grid measured for the planner (`[measured] gemm_*`): every dimension over
/// the sizes a transformer's linear layers, attention and weight gradients take.
const GRID: [usize; 5] = [64, 256, 1024, 4096, 32768];
/// `--quick`: every other size (27 shapes instead of 125).
const QUICK_GRID: [usize; 3] = [64, 1024, 32768];
/// Shapes over this many multiply-adds or with an operand over `MAX_OPERAND` floats
/// are not run (seconds each, and gigabytes): they take the best rate of their measured
/// neighbours one grid step smaller (large GEMMs run at the large-GEMM rate).
const MAX_MACS: usize = 1 << 34;
const MAX_OPERAND: usize = 1 << 25;
/// Sequence lengths of the attention measurement.
const ATTN_SEQ: [usize; 3] = [64, 256, 1024];
/// Rows (tokens) and width of the element-wise and attention measurements.
const ROWS: usize = 4096;
const WIDTH: usize = 512;

/// Times kernels; with a barrier, every rank starts each measurement together, so
/// the ranks contend while they are timed as they do in training.
struct Lockstep(Option<std::sync::Arc<std::sync::Barrier>>);

impl Lockstep {
    /// Median seconds per call of `f`: one call, then about 50 ms of calls (at least
    /// two more). The median, not the minimum: under contention the fastest call is
    /// the one the other ranks happened to leave alone.
    fn time(&self, mut f: impl FnMut()) -> f64 {
        if let Some(b) = &self.0 {
            b.wait();
        }
        let t0 = Instant::now();
        f();
        let first = t0.elapsed().as_secs_f64();
        let reps = ((0.05 / first.max(1e-6)) as usize).clamp(2, 200);
        let mut times: Vec<f64> = (0..reps)
            .map(|_| {
                let t0 = Instant::now();
                f();
                t0.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    }
}

fn filled(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7 + seed) % 13) as f32 * 0.01 - 0.06).collect()
}

/// `C (m x n) += op(A) op(B)` as a linear layer runs it: `ta`/`tb` = operand stored
/// transposed (the input and weight gradients).
fn gemm_rate(ls: &Lockstep, m: usize, n: usize, k: usize, ta: bool, tb: bool) -> f64 {
    let (a, b) = (filled(m * k, 1), filled(k * n, 2));
    let mut c = vec![0.0f32; m * n];
    2.0 * (m * n * k) as f64 / ls.time(|| kernels::matmul(&mut c, &a, ta, &b, tb, m, n, k, true))
}

/// The engine's causal attention kernel forward and backward at sequence length `t`
/// (head dim 64, 8 heads, `ROWS` tokens): FLOP/s counted as `4 t^2 d` per sequence and
/// head forward, twice that backward.
fn attention_rates(ls: &Lockstep, t: usize) -> (f64, f64) {
    let (nh, hd) = (WIDTH / 64, 64);
    let b = (ROWS / t).max(1);
    let qkv = filled(b * t * 3 * WIDTH, 3);
    let mut out = vec![0.0f32; b * t * WIDTH];
    let mut saved = vec![0.0f32; kernels::attention_saved_len(b, t, nh)];
    let fwd = ls.time(|| kernels::attention_forward(&mut out, &mut saved, &qkv, b, t, WIDTH, nh));
    let dout = filled(out.len(), 4);
    let mut dqkv = vec![0.0f32; qkv.len()];
    let bwd = ls.time(|| kernels::attention_backward(&mut dqkv, &dout, &qkv, &out, &saved, b, t, WIDTH, nh));
    let flops = 4.0 * (b * nh * t * t * hd) as f64;
    (flops / fwd, 2.0 * flops / bwd)
}

/// A block's element-wise kernels forward + backward on `ROWS` tokens of width
/// `WIDTH`, as bytes of the block's stored activations (the planner's
/// `block_activation_bytes`, selective form, fp32) per second. GPT: two LayerNorms,
/// GELU on 4h, two residual adds; Llama: two RMSNorms, SwiGLU, RoPE, two residual adds.
fn elementwise_rate(ls: &Lockstep, llama: bool) -> f64 {
    let (r, c) = (ROWS, WIDTH);
    let spec = if llama {
        planner::models::ModelSpec::llama("bench", 1, c, 8, 4, 3 * c, 1, 256, "bench machine")
    } else {
        planner::models::ModelSpec::gpt("bench", 1, c, 8, 1, 256, "bench machine")
    };
    let f = spec.ffn;
    let act = 2.0 * planner::memory::block_activation_bytes(&spec, (r / 256) as f64, 256.0, 1.0, planner::layout::Recompute::Selective, false, false, false);
    let x = filled(r * c, 5);
    let w = vec![1.0f32; c];
    let bias = vec![0.0f32; c];
    let (mut y, mut dx, mut dw, mut db) = (vec![0.0f32; r * c], vec![0.0f32; r * c], vec![0.0f32; c], vec![0.0f32; c]);
    let (mut mean, mut rstd) = (vec![0.0f32; r], vec![0.0f32; r]);
    let up = filled(r * if llama { 2 * f } else { f }, 6);
    let mut act_out = vec![0.0f32; r * f];
    let mut dup = vec![0.0f32; up.len()];
    let dact = filled(r * f, 7);
    let (hd, nkv) = (64, 4);
    let qkv_w = (8 + 2 * nkv) * hd;
    let mut qkv = filled(r * qkv_w, 8);
    let rope = kernels::RopeTable::new(256, hd, 10000.0);
    let time = ls.time(|| {
        for _ in 0..2 {
            if llama {
                kernels::rmsnorm_forward(&mut y, &mut rstd, &x, &w, r, c, 1e-5);
                kernels::rmsnorm_backward(&mut dx, &mut dw, &y, &x, &w, &rstd, r, c);
            } else {
                kernels::layernorm_forward(&mut y, &mut mean, &mut rstd, &x, &w, Some(&bias), r, c);
                kernels::layernorm_backward(&mut dx, &mut dw, Some(&mut db), &y, &x, &w, &mean, &rstd, r, c);
            }
            kernels::add(&mut y, &x, &dx);
            kernels::add_inplace(&mut dx, &y);
        }
        if llama {
            kernels::swiglu_forward(&mut act_out, &up, r, f);
            kernels::swiglu_backward(&mut dup, &dact, &up, r, f);
            kernels::rope_forward(&mut qkv, &rope, r / 256, 256, 8, nkv, hd);
            kernels::rope_backward(&mut qkv, &rope, r / 256, 256, 8, nkv, hd);
        } else {
            kernels::gelu_forward(&mut act_out, &up);
            kernels::gelu_backward(&mut dup, &up, &dact);
        }
    });
    act / time
}

/// Fused softmax cross-entropy forward + backward over `rows x v` logits, as the
/// planner's `16 rows v` bytes (four fp32 passes) per second.
fn xent_rate(ls: &Lockstep) -> f64 {
    let (rows, v) = (1024, 8192);
    let logits = filled(rows * v, 9);
    let mut work = logits.clone();
    let mut losses = vec![0.0f32; rows];
    let targets: Vec<u32> = (0..rows as u32).map(|i| (i * 31) % v as u32).collect();
    let t = ls.time(|| {
        work.copy_from_slice(&logits);
        kernels::softmax_xent_forward_backward(&mut work, &mut losses, &targets, rows, v, 1.0);
    });
    16.0 * (rows * v) as f64 / t
}

/// Every (m, n, k) of the grid, m slowest, k fastest (the cluster file's order).
fn grid_shapes(grid: &[usize]) -> Vec<(usize, usize, usize)> {
    grid.iter().flat_map(|&m| grid.iter().flat_map(move |&n| grid.iter().map(move |&k| (m, n, k)))).collect()
}

fn runnable(m: usize, n: usize, k: usize) -> bool {
    m * n * k <= MAX_MACS && m * k <= MAX_OPERAND && k * n <= MAX_OPERAND && m * n <= MAX_OPERAND
}

/// Gives every unmeasured (NaN) cell of the `g`^3 grid the best rate among its
/// neighbours one step smaller in one dimension, smallest cells first.
fn fill_from_smaller(r: &mut [f64], g: usize) {
    for idx in 0..r.len() {
        if r[idx].is_nan() {
            let (i, j, l) = (idx / (g * g), idx / g % g, idx % g);
            let below = [(i > 0).then(|| idx - g * g), (j > 0).then(|| idx - g), (l > 0).then(|| idx - 1)];
            r[idx] = below.into_iter().flatten().map(|b| r[b]).filter(|x| !x.is_nan()).fold(f64::NAN, f64::max);
        }
    }
}

/// The vocabulary-parallel cross-entropy (tensor parallelism: statistics, exponentials
/// and gradient as separate passes around the all-reduces), in the same bytes as
/// [`xent_rate`] per second.
fn xent_parallel_rate(ls: &Lockstep) -> f64 {
    let (rows, v) = (1024, 8192);
    let logits = filled(rows * v, 9);
    let mut work = logits.clone();
    let (mut max, mut picked, mut sum) = (vec![0.0f32; rows], vec![0.0f32; rows], vec![0.0f32; rows]);
    let targets: Vec<u32> = (0..rows as u32).map(|i| (i * 31) % v as u32).collect();
    let t = ls.time(|| {
        work.copy_from_slice(&logits);
        kernels::xent_parallel_stats(&work, &targets, 0, rows, v, &mut max, &mut picked);
        kernels::xent_parallel_exp(&mut work, &max, rows, v, &mut sum);
        kernels::xent_parallel_grad(&mut work, &sum, &targets, 0, rows, v, 1.0);
    });
    16.0 * (rows * v) as f64 / t
}

/// One rank's kernel rates.
struct RankRates {
    /// GEMM FLOP/s per shape for C = A B, A B^T, A^T B.
    gemm: [Vec<f64>; 3],
    attn: Vec<(f64, f64)>,
    elem: f64,
    elem_llama: f64,
    xent: f64,
    xent_tp: f64,
}

impl RankRates {
    /// All rates in one list (for averaging over ranks, or an MPI all-reduce).
    fn to_vec(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.gemm.concat();
        v.extend(self.attn.iter().flat_map(|a| [a.0, a.1]));
        v.extend([self.elem, self.elem_llama, self.xent, self.xent_tp]);
        v
    }

    fn from_vec(v: &[f64], shapes: usize) -> RankRates {
        let g = |i: usize| v[i * shapes..(i + 1) * shapes].to_vec();
        let a = &v[3 * shapes..];
        let n = ATTN_SEQ.len();
        RankRates {
            gemm: [g(0), g(1), g(2)],
            attn: (0..n).map(|i| (a[2 * i], a[2 * i + 1])).collect(),
            elem: a[2 * n],
            elem_llama: a[2 * n + 1],
            xent: a[2 * n + 2],
            xent_tp: a[2 * n + 3],
        }
    }
}

/// Everything `bench machine` reports: one rank's kernel rates (averaged over the
/// ranks) and the collective between them.
struct Measurements {
    rates: RankRates,
    /// Streaming memory bandwidth, one rank's share with every rank copying.
    mem_bw: f64,
    /// All-reduce bus bandwidth (nccl-tests' definition) and small-message time.
    bus_bw: f64,
    latency: f64,
    /// Time lost keeping the ranks in step, as a fraction of the compute between syncs.
    sync: f64,
    /// Ranks in the collective, and how they talk.
    coll_ranks: usize,
    transport: &'static str,
}

/// Collective sizes: bandwidth from 16 MiB all-reduces, latency from 4 KiB ones.
const COLL_BIG: usize = 16 << 20;
const COLL_SMALL: usize = 4 << 10;

fn time_collectives(c: &dyn comm::Communicator) -> comm::Result<(f64, f64)> {
    Ok((cb::time_op(c, BenchOp::AllReduce, COLL_BIG, cb::iters_for(COLL_BIG))?, cb::time_op(c, BenchOp::AllReduce, COLL_SMALL, 200)?))
}

/// Segments of the synchronisation measurement, and their GEMM (about the size of one
/// column-parallel layer of a small model on one rank).
const SYNC_SEGMENTS: usize = 100;
const SYNC_GEMM: (usize, usize, usize) = (512, 576, 384);

/// The cost of keeping ranks in step, as tensor parallelism does at every layer: each
/// rank runs `SYNC_SEGMENTS` times a fixed GEMM then a small all-reduce (three rounds,
/// the median). Returns the
/// time lost beyond the slowest-free sum (each rank's own GEMM time plus the
/// all-reduce latency) as a fraction of the GEMM time: waiting for the rank that was
/// slowed down this time. 0 with one rank.
fn sync_overhead(c: &dyn comm::Communicator, threads: usize, latency: f64) -> comm::Result<f64> {
    if c.size() < 2 {
        return Ok(0.0);
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a thread pool");
    let (m, n, k) = SYNC_GEMM;
    let (a, b) = (filled(m * k, 1), filled(k * n, 2));
    let mut out = vec![0.0f32; m * n];
    let mut small = vec![0.0f32; COLL_SMALL / 4];
    let mut segment;
    let mut run = |count: usize, segment: &mut f64| -> comm::Result<f64> {
        c.barrier()?;
        let t0 = Instant::now();
        for _ in 0..count {
            let ts = Instant::now();
            pool.install(|| kernels::matmul(&mut out, &a, false, &b, false, m, n, k, false));
            *segment += ts.elapsed().as_secs_f64();
            c.all_reduce((&mut small[..]).into(), comm::ReduceOp::Sum)?;
        }
        Ok(t0.elapsed().as_secs_f64())
    };
    run(3, &mut 0.0)?; // warm-up
    // Three rounds, the median; each round's figure is every rank's, averaged (the
    // loss is the job's, not one rank's).
    let mut rounds = Vec::new();
    for _ in 0..3 {
        segment = 0.0;
        let total = run(SYNC_SEGMENTS, &mut segment)?;
        let mut v = [(total - segment - SYNC_SEGMENTS as f64 * latency).max(0.0) as f32, segment as f32];
        c.all_reduce((&mut v[..]).into(), comm::ReduceOp::Sum)?;
        rounds.push(v[0] as f64 / v[1] as f64);
    }
    rounds.sort_by(f64::total_cmp);
    Ok(rounds[1])
}

/// Thread ranks: every rank measures at once, each on its own share of the cores, as
/// they run in training (sharing caches and memory bandwidth); rates averaged.
fn measure_local(ranks: usize, threads: usize, grid: &[usize], passes: usize) -> Result<Measurements> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(ranks));
    let per_rank: Vec<RankRates> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..ranks).map(|_| s.spawn(|| measure_rank(&Lockstep(Some(barrier.clone())), threads, grid, passes))).collect();
        handles.into_iter().map(|h| h.join().expect("a measuring thread panicked")).collect::<Result<_>>()
    })?;
    let mut sum = vec![0.0; per_rank[0].to_vec().len()];
    for r in &per_rank {
        sum.iter_mut().zip(r.to_vec()).for_each(|(s, x)| *s += x / ranks as f64);
    }
    let mem_bw = cb::memcpy_bandwidth(threads * ranks, 256 << 20) / ranks as f64;
    // Collectives between 2 thread ranks at least.
    let p = ranks.max(2);
    let times = comm::run_local(p, Duration::from_secs(120), |c| time_collectives(&c)).context("the collective benchmark")?;
    let (t_big, latency) = times[0];
    let sync = if ranks > 1 {
        comm::run_local(ranks, Duration::from_secs(120), |c| sync_overhead(&c, threads, latency)).context("the synchronisation benchmark")?[0]
    } else {
        0.0
    };
    Ok(Measurements { rates: RankRates::from_vec(&sum, grid.len().pow(3)), mem_bw, bus_bw: COLL_BIG as f64 / t_big * BenchOp::AllReduce.bus_factor(p), latency, sync, coll_ranks: p, transport: "thread ranks" })
}

/// MPI ranks: each process measures (all at once), the rates are averaged by an
/// all-reduce, the collective runs between the processes. `None` on ranks other than 0.
#[cfg(feature = "mpi")]
fn measure_mpi(ranks: usize, threads: usize, grid: &[usize], passes: usize) -> Result<Option<Measurements>> {
    use comm::Communicator;
    let c = comm::mpi::MpiComm::world(&comm::mpi::MpiOptions { timeout: Duration::from_secs(600), tune_malloc: true }).context("initialising MPI")?;
    if c.size() != ranks {
        bail!("--ranks {ranks} but mpirun started {} ranks", c.size());
    }
    // (Processes start together; no barrier per kernel between them.)
    let mine = measure_rank(&Lockstep(None), threads, grid, passes)?;
    let mut v: Vec<f32> = mine.to_vec().iter().map(|&x| x as f32).collect();
    v.push(cb::memcpy_bandwidth(threads, 256 << 20) as f32);
    c.all_reduce((&mut v[..]).into(), comm::ReduceOp::Sum)?;
    let mean: Vec<f64> = v.iter().map(|&x| x as f64 / ranks as f64).collect();
    let (t_big, latency) = time_collectives(&c)?;
    let sync = sync_overhead(&c, threads, latency)?;
    if c.rank() != 0 {
        return Ok(None);
    }
    let (rates, mem_bw) = mean.split_at(mean.len() - 1);
    Ok(Some(Measurements {
        rates: RankRates::from_vec(rates, grid.len().pow(3)),
        mem_bw: mem_bw[0],
        bus_bw: COLL_BIG as f64 / t_big * BenchOp::AllReduce.bus_factor(ranks),
        latency,
        sync,
        coll_ranks: ranks,
        transport: "MPI processes",
    }))
}

#[cfg(not(feature = "mpi"))]
fn measure_mpi(_: usize, _: usize, _: &[usize], _: usize) -> Result<Option<Measurements>> {
    bail!("this hyperion was built without MPI: rebuild with `cargo build --release -p hyperion --features mpi`")
}

/// Passes over every kernel measurement (the full grid; `--quick`: one). Each rate is
/// the median of its passes: a slow spell on a shared machine (seconds, longer than the
/// repetitions inside one timing) moves one pass, not the file.
const PASSES: usize = 3;

/// Every kernel measurement of one rank, the median of `passes` passes.
fn measure_rank(ls: &Lockstep, threads: usize, grid: &[usize], passes: usize) -> Result<RankRates> {
    let all: Vec<Vec<f64>> = (0..passes.max(1)).map(|_| measure_rank_once(ls, threads, grid).map(|r| r.to_vec())).collect::<Result<_>>()?;
    let median: Vec<f64> = (0..all[0].len())
        .map(|i| {
            let mut v: Vec<f64> = all.iter().map(|p| p[i]).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect();
    Ok(RankRates::from_vec(&median, grid.len().pow(3)))
}

/// One pass over every kernel measurement of one rank, on a pool of `threads` threads.
fn measure_rank_once(ls: &Lockstep, threads: usize, grid: &[usize]) -> Result<RankRates> {
    let shapes = grid_shapes(grid);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    Ok(pool.install(|| {
        let grid = |ta, tb| {
            let mut r: Vec<f64> = shapes.iter().map(|&(m, n, k)| if runnable(m, n, k) { gemm_rate(ls, m, n, k, ta, tb) } else { f64::NAN }).collect();
            fill_from_smaller(&mut r, grid.len());
            r
        };
        RankRates {
            gemm: [grid(false, false), grid(false, true), grid(true, false)],
            attn: ATTN_SEQ.iter().map(|&t| attention_rates(ls, t)).collect(),
            elem: elementwise_rate(ls, false),
            elem_llama: elementwise_rate(ls, true),
            xent: xent_rate(ls),
            xent_tp: xent_parallel_rate(ls),
        }
    }))
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
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
    let grid: &[usize] = if a.quick { &QUICK_GRID } else { &GRID };
    let passes = if a.quick { 1 } else { PASSES };
    let shapes = grid_shapes(grid);
    let ms = match a.backend {
        super::bench_comm::Backend::Local => measure_local(a.ranks, threads, grid, passes)?,
        super::bench_comm::Backend::Mpi => {
            if super::bench_comm::relaunch_under_mpirun(a.ranks)? {
                return Ok(());
            }
            match measure_mpi(a.ranks, threads, grid, passes)? {
                Some(ms) => ms,
                None => return Ok(()),
            }
        }
    };
    let Measurements { rates: r, mem_bw, bus_bw, latency, sync, coll_ranks: p, transport } = ms;
    let rates: Vec<((usize, usize, usize), f64)> = shapes.iter().copied().zip(r.gemm[0].iter().copied()).collect();
    let (rates_nt, rates_tn, attn) = (&r.gemm[1], &r.gemm[2], &r.attn);
    let (elem, elem_llama, xent, xent_tp) = (r.elem, r.elem_llama, r.xent, r.xent_tp);
    let peak = rates.iter().map(|r| r.1).fold(0.0, f64::max);
    // The largest GEMMs' rate relative to the best (used where the planner has no
    // measured shape: catalog-style files ignore `[measured]`).
    let big: Vec<f64> = rates.iter().filter(|r| r.0 .0.min(r.0 .1).min(r.0 .2) >= 1024).map(|r| r.1).collect();
    let gemm_eff = (big.iter().sum::<f64>() / big.len() as f64 / peak).min(1.0);
    let mem = mem_total().unwrap_or(8e9) / a.ranks as f64;
    let cpu = cpu_name();
    if a.json {
        let shapes: Vec<serde_json::Value> = rates.iter().map(|((m, n, k), r)| serde_json::json!({ "m": m, "n": n, "k": k, "flops_per_s": r })).collect();
        println!(
            "{}",
            serde_json::json!({
                "cpu": cpu, "cores": cores, "ranks": a.ranks, "threads_per_rank": threads,
                "gemm": shapes, "gemm_nt_flops_per_s": rates_nt, "gemm_tn_flops_per_s": rates_tn, "peak_flops": peak, "gemm_eff": gemm_eff,
                "attention": ATTN_SEQ.iter().zip(attn).map(|(t, (f, b))| serde_json::json!({ "seq": t, "fwd_flops_per_s": f, "bwd_flops_per_s": b })).collect::<Vec<_>>(),
                "elementwise_bytes_per_s": { "gpt": elem, "llama": elem_llama }, "xent_bytes_per_s": xent, "xent_tp_bytes_per_s": xent_tp,
                "memory_bw_bytes_per_s": mem_bw, "memory_bytes_per_rank": mem,
                "sync_overhead": sync, "all_reduce": { "ranks": p, "between": transport, "bytes": COLL_BIG, "bus_bw_bytes_per_s": bus_bw, "small_bytes": COLL_SMALL, "small_latency_s": latency },
            })
        );
    } else {
        println!("{cpu}: {cores} core(s) visible, planned as {} rank(s) of {threads} thread(s)", a.ranks);
        let lo = rates.iter().min_by(|a, b| a.1.total_cmp(&b.1)).expect("measured shapes");
        println!("  GEMM {} shapes: best {:.1} GFLOP/s, slowest {:.1} ({} x {} x {})", rates.len(), peak / 1e9, lo.1 / 1e9, lo.0 .0, lo.0 .1, lo.0 .2);
        for (t, (f, b)) in ATTN_SEQ.iter().zip(attn) {
            println!("  attention T={t}: forward {:.1}, backward {:.1} GFLOP/s", f / 1e9, b / 1e9);
        }
        println!("  element-wise (block activations): GPT {:.1} GB/s, Llama {:.1} GB/s; cross-entropy {:.1} GB/s (vocabulary-parallel {:.1})", elem / 1e9, elem_llama / 1e9, xent / 1e9, xent_tp / 1e9);
        println!("  memory bandwidth {:.1} GB/s; all-reduce over {p} {transport}: {:.1} GB/s bus, {:.1} us for 4 KiB", mem_bw / 1e9, bus_bw / 1e9, latency * 1e6);
        println!("  keeping {} ranks in step: {:.1}% of the compute between synchronisations", a.ranks, 100.0 * sync);
    }
    if let Some(out) = &a.out {
        let text = format!(
            "# Measured by `hyperion bench machine --ranks {r}` on {cpu} ({cores} core(s) visible); collectives between {transport}.\n\
             [cluster]\nname = \"this-machine\"\ngpus = {r}\ngpus_per_node = {r}\nsource = \"measured: hyperion bench machine on {cpu}\"\n\
             assumptions = \"one device = one engine rank of {threads} thread(s); peak = the best GEMM rate measured; no network\"\n\n\
             [gpu]\nname = \"cpu-{threads}t\"\npeak_bf16_tflops = {pk}\npeak_fp32_tflops = {pk}\nmemory_gb = {mg}\nmemory_bw_gbs = {bw}\ngemm_eff = {ge}\nflash = false\n\n\
             [intra]\nbw_gbs = {ib}\nlatency_us = {lat}\n\n\
             # Kernel rates of one rank (hardware::Measured): GFLOP/s on the m x n x k grid\n\
             # (k fastest; shapes over 2^34 multiply-adds or 2^25 floats an operand carry the\n\
             # best rate of a neighbour one step smaller), attention per sequence length,\n\
             # element-wise in GB/s of block activations.\n\
             [measured]\ngemm_m = {grid:?}\ngemm_n = {grid:?}\ngemm_k = {grid:?}\ngemm_gflops = {gemm:?}\ngemm_nt_gflops = {gemm_nt:?}\ngemm_tn_gflops = {gemm_tn:?}\n\
             attention_seq = {aseq:?}\nattention_fwd_gflops = {afwd:?}\nattention_bwd_gflops = {abwd:?}\n\
             elementwise_gbs = {elem}\nelementwise_llama_gbs = {elem_llama}\nxent_gbs = {xent}\nxent_tp_gbs = {xent_tp}\n\
             head_chunk_floats = {head}\nsync_overhead = {sync}\n",
            r = a.ranks,
            pk = peak / 1e12,
            mg = mem / 1e9,
            bw = mem_bw / 1e9,
            ge = gemm_eff,
            ib = bus_bw / 1e9,
            lat = latency * 1e6,
            grid = grid,
            gemm = rates.iter().map(|r| round3(r.1 / 1e9)).collect::<Vec<_>>(),
            gemm_nt = rates_nt.iter().map(|r| round3(r / 1e9)).collect::<Vec<_>>(),
            gemm_tn = rates_tn.iter().map(|r| round3(r / 1e9)).collect::<Vec<_>>(),
            aseq = ATTN_SEQ,
            afwd = attn.iter().map(|a| round3(a.0 / 1e9)).collect::<Vec<_>>(),
            abwd = attn.iter().map(|a| round3(a.1 / 1e9)).collect::<Vec<_>>(),
            elem = round3(elem / 1e9),
            elem_llama = round3(elem_llama / 1e9),
            xent = round3(xent / 1e9),
            xent_tp = round3(xent_tp / 1e9),
            head = model::HEAD_SCRATCH_FLOATS,
            sync = round3(sync),
        );
        std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
        if !a.json {
            println!("cluster file: {} (hyperion plan --cluster {})", out.display(), out.display());
        }
    }
    Ok(())
}

//! Collective benchmarks in the style of nccl-tests, run on any [`Communicator`].
//!
//! Bandwidths follow nccl-tests' `PERFORMANCE.md`: `size` is the full vector (the
//! all-reduce buffer, or the whole of the reduce-scatter input / all-gather output),
//! `algbw = size / time` and `busbw = algbw x factor` with factor `2(p-1)/p` for
//! all-reduce, `(p-1)/p` for reduce-scatter and all-gather and 1 for broadcast, so that
//! busbw is comparable to a link's (or here memory's) bandwidth whatever `p` is.

use std::time::Instant;

use crate::buf::ReduceOp;
use crate::error::{CommError, Result};
use crate::Communicator;

/// A benchmarked collective.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchOp {
    AllReduce,
    ReduceScatter,
    AllGather,
    Broadcast,
}

impl BenchOp {
    pub const ALL: [BenchOp; 4] = [BenchOp::AllReduce, BenchOp::ReduceScatter, BenchOp::AllGather, BenchOp::Broadcast];

    pub fn name(self) -> &'static str {
        match self {
            BenchOp::AllReduce => "all_reduce",
            BenchOp::ReduceScatter => "reduce_scatter",
            BenchOp::AllGather => "all_gather",
            BenchOp::Broadcast => "broadcast",
        }
    }

    /// busbw / algbw (nccl-tests).
    pub fn bus_factor(self, p: usize) -> f64 {
        let p = p as f64;
        match self {
            BenchOp::AllReduce => 2.0 * (p - 1.0) / p,
            BenchOp::ReduceScatter | BenchOp::AllGather => (p - 1.0) / p,
            BenchOp::Broadcast => 1.0,
        }
    }

    /// Memory traffic of the local backend's algorithm for a `size`-byte vector, in
    /// bytes (read, written), summed over all `p` ranks:
    /// all-reduce reads `(2p-1)/p size` and writes `size` per rank; reduce-scatter
    /// reads `size` and writes `size/p`; all-gather reads and writes `size`; broadcast
    /// reads and writes `size` on each non-root rank.
    pub fn local_traffic(self, size: usize, p: usize) -> (f64, f64) {
        let (s, pf) = (size as f64, p as f64);
        if p == 1 {
            return (0.0, 0.0);
        }
        match self {
            BenchOp::AllReduce => (pf * s * (2.0 * pf - 1.0) / pf, pf * s),
            BenchOp::ReduceScatter => (pf * s, s),
            BenchOp::AllGather => (pf * s, pf * s),
            BenchOp::Broadcast => ((pf - 1.0) * s, (pf - 1.0) * s),
        }
    }
}

/// One line of the table (`--json` prints these keys).
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub op: &'static str,
    pub size_bytes: usize,
    pub time_us: f64,
    pub algbw_gbps: f64,
    pub busbw_gbps: f64,
}

/// Parse `512`, `64K`, `64M`, `1G` (binary multiples) into bytes.
pub fn parse_size(s: &str) -> Result<usize> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1usize << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'B' => 1,
                _ => return Err(CommError::Config(format!("size '{s}': unknown unit '{c}' (use K, M or G)"))),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: usize = num.parse().map_err(|_| CommError::Config(format!("size '{s}': '{num}' is not a whole number")))?;
    n.checked_mul(mult).ok_or_else(|| CommError::Config(format!("size '{s}' overflows")))
}

/// Parse one size (`64M`) or a doubling range (`1K..256M`).
pub fn parse_sizes(s: &str) -> Result<Vec<usize>> {
    match s.split_once("..") {
        None => Ok(vec![parse_size(s)?]),
        Some((a, b)) => {
            let (lo, hi) = (parse_size(a)?, parse_size(b)?);
            if lo == 0 || lo > hi {
                return Err(CommError::Config(format!("size range '{s}': need 0 < start <= end")));
            }
            let mut v = Vec::new();
            let mut x = lo;
            while x <= hi {
                v.push(x);
                x = match x.checked_mul(2) {
                    Some(y) => y,
                    None => break,
                };
            }
            Ok(v)
        }
    }
}

/// Timed loops per measurement; the best (lowest mean) is reported. The bench machines
/// are shared, and the minimum is the statistic least disturbed by other load.
pub const TRIALS: usize = 3;

/// Time `op` on `size` bytes of f32 (rounded down to whole elements, and to a
/// multiple of the group size for reduce-scatter/all-gather) on every rank: 2 warm-up
/// calls, then [`TRIALS`] loops of `iters` calls; each loop's time is the slowest
/// rank's mean per call, and the best loop is returned (the same on all ranks).
pub fn time_op(comm: &dyn Communicator, op: BenchOp, size: usize, iters: usize) -> Result<f64> {
    let p = comm.size();
    let n = (size / 4) / p * p;
    let mut full = vec![1.0f32; n];
    let mut part = vec![0.0f32; n / p];
    let once = |full: &mut Vec<f32>, part: &mut Vec<f32>| -> Result<()> {
        match op {
            BenchOp::AllReduce => comm.all_reduce(full.into(), ReduceOp::Sum),
            BenchOp::ReduceScatter => comm.reduce_scatter((&*full).into(), part.into(), ReduceOp::Sum),
            BenchOp::AllGather => comm.all_gather((&*part).into(), full.into()),
            BenchOp::Broadcast => comm.broadcast(full.into(), 0),
        }
    };
    // Warm up: first touches fault the pages in and fill caches/TLBs.
    for _ in 0..2 {
        once(&mut full, &mut part)?;
    }
    let mut best = f64::INFINITY;
    for _ in 0..TRIALS {
        comm.barrier()?;
        let t0 = Instant::now();
        for _ in 0..iters {
            once(&mut full, &mut part)?;
        }
        let mut t = [t0.elapsed().as_secs_f32() / iters as f32];
        comm.all_reduce((&mut t[..]).into(), ReduceOp::Max)?;
        best = best.min(t[0] as f64);
    }
    Ok(best)
}

/// Iterations for a size: about 256 MiB of traffic per measurement, 5..=1000 calls.
pub fn iters_for(size: usize) -> usize {
    ((256usize << 20) / size.max(1)).clamp(5, 1000)
}

/// Benchmark every op in `ops` at every size; all ranks must call this together.
pub fn run(comm: &dyn Communicator, ops: &[BenchOp], sizes: &[usize]) -> Result<Vec<Row>> {
    let p = comm.size();
    let mut rows = Vec::new();
    for &op in ops {
        for &size in sizes {
            let t = time_op(comm, op, size, iters_for(size))?;
            let bytes = (size / 4) / p * p * 4;
            let algbw = bytes as f64 / t / 1e9;
            rows.push(Row {
                op: op.name(),
                size_bytes: bytes,
                time_us: t * 1e6,
                algbw_gbps: algbw,
                busbw_gbps: algbw * op.bus_factor(p),
            });
        }
    }
    Ok(rows)
}

/// Aggregate memcpy bandwidth (bytes copied per second, each read once and written
/// once) of `threads` threads each copying its own `bytes`-byte buffer at the same
/// time: the bound the local backend's copies run against. Each round starts the
/// threads together and divides all bytes copied by the round's wall time (so more
/// threads than cores are not over-counted); the best of [`TRIALS`] + 2 rounds is
/// returned (a bound should not be lowered by other load on the machine).
pub fn memcpy_bandwidth(threads: usize, bytes: usize) -> f64 {
    let threads = threads.max(1);
    let iters = iters_for(bytes).min(50);
    let rounds = TRIALS + 2;
    let start = std::sync::Barrier::new(threads);
    let epoch = Instant::now();
    // Per thread, per round: (start, end) in seconds since `epoch`.
    let spans: Vec<Vec<(f64, f64)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let start = &start;
                s.spawn(move || {
                    let src = vec![1u8; bytes];
                    let mut dst = vec![0u8; bytes];
                    dst.copy_from_slice(&src);
                    (0..rounds)
                        .map(|_| {
                            start.wait();
                            let t0 = epoch.elapsed().as_secs_f64();
                            for _ in 0..iters {
                                dst.copy_from_slice(std::hint::black_box(&src));
                            }
                            std::hint::black_box(&dst);
                            (t0, epoch.elapsed().as_secs_f64())
                        })
                        .collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let total = (threads * iters * bytes) as f64;
    (0..rounds)
        .filter_map(|r| {
            let t0 = spans.iter().filter_map(|t| t.get(r).map(|x| x.0)).fold(f64::INFINITY, f64::min);
            let t1 = spans.iter().filter_map(|t| t.get(r).map(|x| x.1)).fold(0.0, f64::max);
            (t1 > t0).then(|| total / (t1 - t0))
        })
        .fold(0.0, f64::max)
}

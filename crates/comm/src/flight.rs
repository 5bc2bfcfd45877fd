//! The flight recorder: every rank keeps its last collectives (a ring of
//! [`DEFAULT_CAPACITY`] records: sequence number on its group, op, group, dtype, element
//! count, start and end time, state), so that when a job fails or hangs the ranks' last
//! operations can be laid side by side and the one that is behind, dead or mismatched
//! named ([`diagnose`]).
//!
//! [`Recorded`] wraps any [`Communicator`] (threads, MPI, NCCL) and records each call
//! around it; its `split`s record into the same ring, each with its own sequence
//! counter, so "#57 on 'dp'" is the same collective on every rank of that group. The
//! cost is one short mutex hold and a `String` clone of the group name per collective.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::buf::{Buf, BufMut, ReduceOp};
use crate::error::Result;
use crate::Communicator;

/// Records kept per rank.
pub const DEFAULT_CAPACITY: usize = 64;

/// One collective as this rank saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// World rank of the recording process/thread.
    pub rank: usize,
    /// 1-based position of this collective on its group (the same on every member).
    pub seq: u64,
    pub op: String,
    pub group: String,
    pub dtype: String,
    /// Elements sent (the local buffer's length).
    pub count: usize,
    /// Seconds since the Unix epoch (comparable across processes of one machine).
    pub start: f64,
    pub end: Option<f64>,
    /// "running", "done", or "failed: <error>".
    pub state: String,
}

struct Ring {
    cap: usize,
    recs: VecDeque<Record>,
    /// Calls and bytes per (group, op), since creation or the last reset.
    totals: BTreeMap<(String, String), (u64, u64)>,
}

/// The traffic of one operation on one group, counted (not estimated) by [`Recorded`].
/// `bytes` is the whole tensor each call moved, the convention of the Megatron-LM and
/// ZeRO papers' volume formulas: the buffer of an all-reduce or broadcast, the output
/// of an all-gather, the input of a reduce-scatter, the message of a send or recv.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Traffic {
    pub group: String,
    pub op: String,
    pub calls: u64,
    pub bytes: u64,
}

/// One rank's ring of records; clones share it.
#[derive(Clone)]
pub struct Recorder {
    rank: usize,
    ring: Arc<Mutex<Ring>>,
}

/// Every live recorder of this process (the ranks of a threaded job), for a dump.
static REGISTRY: Mutex<Vec<Weak<Mutex<Ring>>>> = Mutex::new(Vec::new());

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while recording leaves a consistent ring: keep using it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Recorder {
    /// A recorder for world rank `rank`, registered for [`snapshot_all`].
    pub fn new(rank: usize, cap: usize) -> Recorder {
        let ring = Arc::new(Mutex::new(Ring { cap: cap.max(1), recs: VecDeque::new(), totals: BTreeMap::new() }));
        let mut reg = lock(&REGISTRY);
        reg.retain(|w| w.strong_count() > 0);
        reg.push(Arc::downgrade(&ring));
        Recorder { rank, ring }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    fn begin(&self, seq: u64, op: &str, group: &str, dtype: String, count: usize, bytes: usize) {
        let mut ring = lock(&self.ring);
        let t = ring.totals.entry((group.to_string(), op.to_string())).or_default();
        t.0 += 1;
        t.1 += bytes as u64;
        if ring.recs.len() == ring.cap {
            ring.recs.pop_front();
        }
        let rec = Record { rank: self.rank, seq, op: op.into(), group: group.into(), dtype, count, start: now(), end: None, state: "running".into() };
        ring.recs.push_back(rec);
    }

    fn end(&self, seq: u64, group: &str, failed: Option<String>) {
        let mut ring = lock(&self.ring);
        if let Some(r) = ring.recs.iter_mut().rev().find(|r| r.seq == seq && r.group == group) {
            r.end = Some(now());
            r.state = failed.map_or_else(|| "done".into(), |e| format!("failed: {e}"));
        }
    }

    /// The records, oldest first.
    pub fn snapshot(&self) -> Vec<Record> {
        lock(&self.ring).recs.iter().cloned().collect()
    }

    /// Calls and bytes per group and operation since creation or [`Recorder::reset_traffic`],
    /// sorted by group then operation.
    pub fn traffic(&self) -> Vec<Traffic> {
        let ring = lock(&self.ring);
        ring.totals.iter().map(|((group, op), &(calls, bytes))| Traffic { group: group.clone(), op: op.clone(), calls, bytes }).collect()
    }

    pub fn reset_traffic(&self) {
        lock(&self.ring).totals.clear();
    }
}

/// The records of every live recorder of this process, each rank's oldest first.
pub fn snapshot_all() -> Vec<Vec<Record>> {
    let reg = lock(&REGISTRY);
    reg.iter().filter_map(Weak::upgrade).map(|ring| lock(&ring).recs.iter().cloned().collect()).collect()
}

static FAILURE_HOOK: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>> = std::sync::OnceLock::new();

/// Registers what to run when a backend is about to end the process on a failure it
/// cannot return (the MPI watchdog's abort), e.g. dumping and diagnosing the records.
/// The first registration wins.
pub fn on_failure(f: impl Fn() + Send + Sync + 'static) {
    let _ = FAILURE_HOOK.set(Box::new(f));
}

/// Runs the hook of [`on_failure`], if any.
pub fn failed() {
    if let Some(f) = FAILURE_HOOK.get() {
        f();
    }
}

/// A communicator that records each collective in a [`Recorder`].
pub struct Recorded {
    inner: Box<dyn Communicator>,
    rec: Recorder,
    seq: AtomicU64,
}

impl Recorded {
    pub fn new(inner: Box<dyn Communicator>, rec: Recorder) -> Recorded {
        Recorded { inner, rec, seq: AtomicU64::new(0) }
    }

    /// Records one call: `count` elements of the local buffer, `bytes` the whole tensor
    /// moved (see [`Traffic`]).
    fn run<T>(&self, op: &str, dtype: String, count: usize, bytes: usize, f: impl FnOnce(&dyn Communicator) -> Result<T>) -> Result<T> {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let group = self.inner.name();
        self.rec.begin(seq, op, group, dtype, count, bytes);
        let out = f(self.inner.as_ref());
        self.rec.end(seq, group, out.as_ref().err().map(|e| e.to_string()));
        out
    }
}

impl Communicator for Recorded {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn all_reduce(&self, buf: BufMut<'_>, op: ReduceOp) -> Result<()> {
        let (d, n, b) = (buf.dtype().to_string(), buf.len(), buf.len() * buf.dtype().size());
        self.run("all_reduce", d, n, b, |c| c.all_reduce(buf, op))
    }
    fn reduce_scatter(&self, send: Buf<'_>, recv: BufMut<'_>, op: ReduceOp) -> Result<()> {
        let (d, n, b) = (send.dtype().to_string(), send.len(), send.len() * send.dtype().size());
        self.run("reduce_scatter", d, n, b, |c| c.reduce_scatter(send, recv, op))
    }
    fn reduce_scatter_v(&self, send: Buf<'_>, recv: BufMut<'_>, counts: &[usize], op: ReduceOp) -> Result<()> {
        let (d, n, b) = (send.dtype().to_string(), send.len(), send.len() * send.dtype().size());
        self.run("reduce_scatter_v", d, n, b, |c| c.reduce_scatter_v(send, recv, counts, op))
    }
    fn all_gather(&self, send: Buf<'_>, recv: BufMut<'_>) -> Result<()> {
        let (d, n, b) = (send.dtype().to_string(), send.len(), recv.len() * recv.dtype().size());
        self.run("all_gather", d, n, b, |c| c.all_gather(send, recv))
    }
    fn all_gather_v(&self, send: Buf<'_>, recv: BufMut<'_>, counts: &[usize]) -> Result<()> {
        let (d, n, b) = (send.dtype().to_string(), send.len(), recv.len() * recv.dtype().size());
        self.run("all_gather_v", d, n, b, |c| c.all_gather_v(send, recv, counts))
    }
    fn broadcast(&self, buf: BufMut<'_>, root: usize) -> Result<()> {
        let (d, n, b) = (buf.dtype().to_string(), buf.len(), buf.len() * buf.dtype().size());
        self.run("broadcast", d, n, b, |c| c.broadcast(buf, root))
    }
    fn send(&self, buf: Buf<'_>, dst: usize, tag: u32) -> Result<()> {
        let (d, n, b) = (buf.dtype().to_string(), buf.len(), buf.len() * buf.dtype().size());
        self.run("send", d, n, b, |c| c.send(buf, dst, tag))
    }
    fn recv(&self, buf: BufMut<'_>, src: usize, tag: u32) -> Result<()> {
        let (d, n, b) = (buf.dtype().to_string(), buf.len(), buf.len() * buf.dtype().size());
        self.run("recv", d, n, b, |c| c.recv(buf, src, tag))
    }
    fn barrier(&self) -> Result<()> {
        self.run("barrier", "-".into(), 0, 0, |c| c.barrier())
    }
    fn split(&self, color: usize, key: usize, name: &str) -> Result<Box<dyn Communicator>> {
        let inner = self.inner.split(color, key, name)?;
        Ok(Box::new(Recorded::new(inner, self.rec.clone())))
    }
}

/// Lays the ranks' records side by side: for every group, the newest collective any
/// rank started; each rank's state in it (waiting in it, behind it, or silent); and
/// every sequence number at which the ranks disagree on the op, dtype or count.
/// `ranks` is the world size (ranks with no records are named as silent).
pub fn diagnose(records: &[Vec<Record>], ranks: usize, at: f64) -> String {
    let mut lines = Vec::new();
    let all: Vec<&Record> = records.iter().flatten().collect();
    let seen: BTreeSet<usize> = all.iter().map(|r| r.rank).collect();
    let groups: BTreeSet<&str> = all.iter().map(|r| r.group.as_str()).collect();
    for g in &groups {
        let in_group: Vec<&&Record> = all.iter().filter(|r| r.group == *g).collect();
        let newest = in_group.iter().map(|r| r.seq).max().unwrap_or(0);
        let head = in_group.iter().find(|r| r.seq == newest).map_or(String::new(), |r| match r.op.as_str() {
            "barrier" => " (barrier)".to_string(),
            _ => format!(" ({} {} x{})", r.op, r.dtype, r.count),
        });
        lines.push(format!("group '{g}': newest collective #{newest}{head}"));
        let members: BTreeSet<usize> = in_group.iter().map(|r| r.rank).collect();
        for rank in &members {
            let Some(last) = in_group.iter().filter(|r| r.rank == *rank).max_by_key(|r| r.seq) else { continue };
            let line = if last.seq < newest && last.end.is_some() {
                format!(
                    "  rank {rank}: BEHIND: its last collective is #{} {} ({}), {:.1} s ago; it has not started #{newest} (stuck outside the communicator, or dead)",
                    last.seq,
                    last.op,
                    last.state,
                    at - last.end.unwrap_or(last.start)
                )
            } else if let Some(why) = last.state.strip_prefix("failed: ") {
                format!("  rank {rank}: failed in #{} {} after {:.1} s: {why}", last.seq, last.op, last.end.unwrap_or(at) - last.start)
            } else if last.end.is_none() {
                format!("  rank {rank}: waiting {:.1} s in #{} {} {} x{}", at - last.start, last.seq, last.op, last.dtype, last.count)
            } else {
                format!("  rank {rank}: last #{} {} {}", last.seq, last.op, last.state)
            };
            lines.push(line);
        }
    }
    for rank in (0..ranks).filter(|r| !seen.contains(r)) {
        lines.push(format!("rank {rank}: SILENT: no records (dead, hung outside the communicator, or never reached a collective)"));
    }
    // Disagreements: the same (group, seq) called differently.
    let mut by_call: BTreeMap<(&str, u64), Vec<&Record>> = BTreeMap::new();
    for r in &all {
        by_call.entry((r.group.as_str(), r.seq)).or_default().push(r);
    }
    // A send and its receive are the two halves of one point-to-point call.
    fn call(r: &Record) -> (&str, &str, usize) {
        (if r.op == "recv" { "send" } else { r.op.as_str() }, r.dtype.as_str(), r.count)
    }
    for ((g, seq), recs) in by_call {
        let first = recs[0];
        if let Some(other) = recs.iter().find(|r| call(r) != call(first)) {
            lines.push(format!(
                "MISMATCH at #{seq} on '{g}': rank {} called {} {} x{}, rank {} called {} {} x{}",
                first.rank, first.op, first.dtype, first.count, other.rank, other.op, other.dtype, other.count
            ));
        }
    }
    lines.join("\n")
}

/// Writes `records` as JSON lines to `path` (one file per rank).
pub fn dump(path: &std::path::Path, records: &[Record]) -> std::io::Result<()> {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).map_err(std::io::Error::other)?);
        text.push('\n');
    }
    std::fs::write(path, text)
}

/// Reads a file written by [`dump`].
pub fn load(path: &std::path::Path) -> std::io::Result<Vec<Record>> {
    std::fs::read_to_string(path)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run_local;
    use std::time::Duration;

    fn rec(rank: usize, seq: u64, op: &str, count: usize, end: Option<f64>) -> Record {
        Record { rank, seq, op: op.into(), group: "dp".into(), dtype: "f32".into(), count, start: 10.0, end, state: if end.is_some() { "done".into() } else { "running".into() } }
    }

    #[test]
    fn records_every_collective_with_its_group_sequence() {
        let out = run_local(2, Duration::from_secs(10), |c| {
            let rec = Recorder::new(c.rank(), 4);
            let dp = Recorded::new(c.split(0, c.rank(), "dp")?, rec.clone());
            let stream = dp.split(0, dp.rank(), "dp.stream")?;
            let mut x = [1.0f32; 3];
            dp.all_reduce((&mut x[..]).into(), ReduceOp::Sum)?;
            stream.barrier()?;
            for _ in 0..4 {
                dp.barrier()?;
            }
            Ok::<_, crate::CommError>(rec.snapshot())
        })
        .unwrap();
        for recs in &out {
            // The ring keeps the last 4: #1 all_reduce and the stream's barrier are gone.
            assert_eq!(recs.len(), 4);
            assert!(recs.iter().all(|r| r.op == "barrier" && r.group == "dp" && r.state == "done" && r.end.is_some()));
            assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3, 4, 5]);
        }
    }

    #[test]
    fn diagnosis_names_the_rank_behind_the_silent_one_and_a_mismatch() {
        let records = vec![
            vec![rec(0, 56, "all_gather", 2, Some(11.0)), rec(0, 57, "reduce_scatter", 8, None)],
            vec![rec(1, 56, "all_gather", 2, Some(11.0))],
            vec![rec(2, 56, "all_gather", 2, Some(11.0)), rec(2, 57, "all_gather", 8, None)],
        ];
        let d = diagnose(&records, 4, 13.0);
        assert!(d.contains("rank 0: waiting 3.0 s in #57 reduce_scatter f32 x8"), "{d}");
        assert!(d.contains("rank 1: BEHIND: its last collective is #56 all_gather (done), 2.0 s ago"), "{d}");
        assert!(d.contains("rank 3: SILENT"), "{d}");
        assert!(d.contains("MISMATCH at #57 on 'dp': rank 0 called reduce_scatter f32 x8, rank 2 called all_gather f32 x8"), "{d}");
        assert!(!d.contains("rank 2: BEHIND"), "{d}");
    }

    #[test]
    fn a_send_and_its_receive_are_one_call() {
        let pair = |count| vec![vec![rec(0, 3, "send", 4, Some(1.0))], vec![rec(1, 3, "recv", count, Some(1.0))]];
        let d = diagnose(&pair(4), 2, 2.0);
        assert!(!d.contains("MISMATCH"), "{d}");
        let d = diagnose(&pair(8), 2, 2.0);
        assert!(d.contains("MISMATCH at #3 on 'dp': rank 0 called send f32 x4, rank 1 called recv f32 x8"), "{d}");
    }

    #[test]
    fn dump_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flight-rank00000.jsonl");
        let recs = vec![rec(0, 1, "barrier", 0, Some(1.5)), rec(0, 2, "all_reduce", 9, None)];
        dump(&path, &recs).unwrap();
        assert_eq!(load(&path).unwrap(), recs);
    }
}

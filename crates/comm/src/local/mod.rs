//! The `local` backend: ranks are threads of one process sharing memory.
//!
//! Collectives copy directly between the ranks' own buffers (no staging copies, no
//! allocation per call): each rank publishes its buffer addresses, then reads its
//! peers' buffers and writes only its own. All-reduce is a reduce-scatter followed by
//! an all-gather, both done in place in shared memory:
//!
//! * phase 1: rank `r` sums block `r` of all `p` buffers, in rank order (so every layout
//!   gets bitwise-identical sums) into block `r` of its own buffer: reads `n`, writes
//!   `n/p` elements;
//! * phase 2: rank `r` copies block `q` of rank `q`'s buffer, for every `q != r`: reads
//!   and writes `n (p-1)/p`.
//!
//! Per rank that is `n (2p-1)/p` elements read and `n` written, against `2n (p-1)/p`
//! sent and received by a ring all-reduce over a network (Patarasuk & Yuan 2009): the
//! shared-memory version is bound by memory bandwidth, not by a link.
//!
//! ```
//! use comm::{Communicator, LocalWorld};
//! use std::time::Duration;
//!
//! let comms = LocalWorld::new(2, Duration::from_secs(5)).unwrap();
//! let handles: Vec<_> = comms
//!     .into_iter()
//!     .map(|c| std::thread::spawn(move || {
//!         let mut x = [c.rank() as u8 + 1; 4];
//!         c.broadcast((&mut x[..]).into(), 1).map(|_| x)
//!     }))
//!     .collect();
//! for h in handles {
//!     assert_eq!(h.join().unwrap().unwrap(), [2u8; 4]);
//! }
//! ```

mod collectives;
mod group;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::buf::{Buf, BufMut, ReduceOp};
use crate::error::{CommError, Result};
use crate::Communicator;
use group::{Failure, Group, Op, World};

/// Constructor of a local world.
pub struct LocalWorld;

impl LocalWorld {
    /// `n` communicators of one new world, rank `i` at index `i`; move each into its
    /// own thread. `timeout` bounds every wait inside a collective.
    #[allow(clippy::new_ret_no_self)] // a world is its ranks' communicators
    pub fn new(n: usize, timeout: Duration) -> Result<Vec<LocalComm>> {
        if n == 0 {
            return Err(CommError::Config("a local world needs at least one rank".into()));
        }
        let world = World::new();
        let group = Group::new(&world, "world", (0..n).collect(), timeout);
        Ok((0..n).map(|r| LocalComm::new(group.clone(), r)).collect())
    }
}

/// How one rank-thread of [`run_local`] ended badly.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".into()
    }
}

/// Run `f` on `n` rank-threads of a new local world and collect the results in rank
/// order. Each thread gets its communicator by value (wrap it in an `Arc` to share it
/// as `Arc<dyn Communicator>`). If any rank returns an error or panics, the world is
/// poisoned (so the other ranks' collectives fail fast instead of hanging) and the
/// first failure is returned as [`CommError::RankFailed`] naming its rank.
pub fn run_local<T, E, F>(n: usize, timeout: Duration, f: F) -> Result<Vec<T>>
where
    T: Send,
    E: std::fmt::Display,
    F: Fn(LocalComm) -> std::result::Result<T, E> + Sync,
{
    let comms = LocalWorld::new(n, timeout)?;
    let world = comms[0].group.world.clone();
    let f = &f;
    let outcomes: Vec<std::result::Result<T, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|c| {
                s.spawn(move || {
                    // Kept to poison the world on failure after `c` has moved into `f`.
                    let world = c.group.world.clone();
                    let rank = c.world_rank();
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(c)));
                    let out = match out {
                        Ok(Ok(v)) => Ok(v),
                        Ok(Err(e)) => Err(format!("returned an error: {e}")),
                        Err(p) => Err(format!("panicked: {}", panic_message(p.as_ref()))),
                    };
                    if let Err(cause) = &out {
                        world.poison(Failure {
                            world_rank: rank,
                            op: "(outside a collective)".into(),
                            group: "world".into(),
                            cause: cause.clone(),
                        });
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| Err(format!("panicked: {}", panic_message(p.as_ref())))))
            .collect()
    });
    // Report the root cause: the rank recorded as the world's first failure (only if
    // some rank failed; ranks may also handle collective errors themselves).
    let any_failed = outcomes.iter().any(|o| o.is_err());
    if let Some(fail) = world.failure().filter(|_| any_failed) {
        let cause = outcomes
            .get(fail.world_rank)
            .and_then(|o| o.as_ref().err().cloned())
            .unwrap_or_else(|| format!("{} in {} on group '{}'", fail.cause, fail.op, fail.group));
        return Err(CommError::RankFailed { rank: fail.world_rank, cause });
    }
    let mut results = Vec::with_capacity(n);
    for (rank, o) in outcomes.into_iter().enumerate() {
        results.push(o.map_err(|cause| CommError::RankFailed { rank, cause })?);
    }
    Ok(results)
}

/// One rank's handle on a group of a local world. `Send + Sync`; collectives on one
/// communicator must not be issued from two threads at once (that returns
/// [`CommError::ConcurrentUse`]): `split` a second communicator for a second stream.
///
/// Dropping it while unwinding from a panic poisons the world; dropping it otherwise
/// makes peers still waiting on this group fail naming this rank.
pub struct LocalComm {
    group: Arc<Group>,
    rank: usize,
    busy: AtomicBool,
    split_seq: AtomicU64,
}

impl LocalComm {
    fn new(group: Arc<Group>, rank: usize) -> Self {
        LocalComm { group, rank, busy: AtomicBool::new(false), split_seq: AtomicU64::new(0) }
    }

    /// This rank's index in the world (not the group).
    pub fn world_rank(&self) -> usize {
        self.group.world_ranks[self.rank]
    }

    /// Fail the whole world on behalf of this rank: every pending and later collective
    /// of every rank returns an error naming this rank and `cause`.
    pub fn abort(&self, cause: &str) {
        self.group.world.poison(Failure {
            world_rank: self.world_rank(),
            op: "(outside a collective)".into(),
            group: self.group.name.clone(),
            cause: cause.to_string(),
        });
    }

    /// Claim the communicator for one collective.
    fn begin(&self, op: Op) -> Result<BusyGuard<'_>> {
        if self.busy.swap(true, Ordering::Acquire) {
            return Err(CommError::ConcurrentUse { rank: self.rank, op: op.name(), group: self.group.name.clone() });
        }
        Ok(BusyGuard(&self.busy))
    }

    fn invalid(&self, op: Op, reason: String) -> CommError {
        CommError::InvalidArgument { rank: self.rank, op: op.name(), group: self.group.name.clone(), reason }
    }

    /// Common wrapper: claim, run `body`, and on error make the failure visible to the
    /// peers (unless every rank saw it: mismatches) and wait until none reads our memory.
    fn run(&self, op: Op, body: impl FnOnce() -> Result<()>) -> Result<()> {
        let _busy = self.begin(op)?;
        let res = body();
        if let Err(e) = &res {
            match e {
                CommError::Mismatch { .. } | CommError::PeerFailed { .. } | CommError::Timeout { .. } => {}
                other => self.group.world.poison(Failure {
                    world_rank: self.world_rank(),
                    op: op.name().into(),
                    group: self.group.name.clone(),
                    cause: other.to_string(),
                }),
            }
            self.group.wait_quiescent();
        }
        res
    }
}

impl Drop for LocalComm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.group.world.poison(Failure {
                world_rank: self.world_rank(),
                op: "(panic)".into(),
                group: self.group.name.clone(),
                cause: "panicked (see that thread's message)".into(),
            });
        } else {
            self.group.depart(self.rank);
        }
    }
}

struct BusyGuard<'a>(&'a AtomicBool);
impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Communicator for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.group.size
    }
    fn name(&self) -> &str {
        &self.group.name
    }
    fn all_reduce(&self, buf: BufMut<'_>, op: ReduceOp) -> Result<()> {
        self.run(Op::AllReduce, || self.all_reduce_impl(buf, op))
    }
    fn reduce_scatter(&self, send: Buf<'_>, recv: BufMut<'_>, op: ReduceOp) -> Result<()> {
        self.run(Op::ReduceScatter, || self.reduce_scatter_impl(send, recv, None, op))
    }
    fn reduce_scatter_v(&self, send: Buf<'_>, recv: BufMut<'_>, counts: &[usize], op: ReduceOp) -> Result<()> {
        self.run(Op::ReduceScatter, || self.reduce_scatter_impl(send, recv, Some(counts), op))
    }
    fn all_gather(&self, send: Buf<'_>, recv: BufMut<'_>) -> Result<()> {
        self.run(Op::AllGather, || self.all_gather_impl(send, recv, None))
    }
    fn all_gather_v(&self, send: Buf<'_>, recv: BufMut<'_>, counts: &[usize]) -> Result<()> {
        self.run(Op::AllGather, || self.all_gather_impl(send, recv, Some(counts)))
    }
    fn broadcast(&self, buf: BufMut<'_>, root: usize) -> Result<()> {
        self.run(Op::Broadcast, || self.broadcast_impl(buf, root))
    }
    fn send(&self, buf: Buf<'_>, dst: usize, tag: u32) -> Result<()> {
        self.run(Op::Send, || self.send_impl(buf, dst, tag))
    }
    fn recv(&self, buf: BufMut<'_>, src: usize, tag: u32) -> Result<()> {
        self.run(Op::Recv, || self.recv_impl(buf, src, tag))
    }
    fn barrier(&self) -> Result<()> {
        self.run(Op::Barrier, || self.barrier_impl())
    }
    fn split(&self, color: usize, key: usize, name: &str) -> Result<Box<dyn Communicator>> {
        let mut out = None;
        self.run(Op::Split, || {
            out = Some(self.split_impl(color, key, name)?);
            Ok(())
        })?;
        out.map(|c| Box::new(c) as Box<dyn Communicator>)
            .ok_or_else(|| self.invalid(Op::Split, "split produced no communicator".into()))
    }
}

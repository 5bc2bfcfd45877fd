//! Shared state of the local backend: the world (its failure record) and each group's
//! barrier, publication slots and point-to-point mailboxes.
//!
//! Protocol of one collective on a group of `p` rank-threads:
//! 1. each rank writes a descriptor of its call (op, dtype, lengths, buffer addresses)
//!    into its own slot;
//! 2. barrier: now every slot is readable and the descriptors are compared;
//! 3. data phases, separated by barriers, in which a rank reads peers' buffers and
//!    writes only its own;
//! 4. exit barrier: no rank returns (and so frees or reuses its buffer) while a peer
//!    might still read it.
//!
//! Failure: a rank that errors, panics, times out or drops its communicator records a
//! [`Failure`] in the world and wakes every waiter; waiting ranks return
//! `CommError::PeerFailed` naming it. A rank that leaves a collective early first waits
//! until no peer is inside a data phase (`active == 0`), so no peer reads freed memory.

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::buf::{DType, ReduceOp};
use crate::error::CommError;

/// Which collective a descriptor describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    AllReduce,
    ReduceScatter,
    AllGather,
    Broadcast,
    Barrier,
    Split,
    Send,
    Recv,
}

impl Op {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::AllReduce => "all_reduce",
            Op::ReduceScatter => "reduce_scatter",
            Op::AllGather => "all_gather",
            Op::Broadcast => "broadcast",
            Op::Barrier => "barrier",
            Op::Split => "split",
            Op::Send => "send",
            Op::Recv => "recv",
        }
    }
}

/// What one rank published for the current collective.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    pub op: Op,
    pub dtype: DType,
    pub reduce: Option<ReduceOp>,
    /// Elements of the in-place buffer or of `send`.
    pub len: usize,
    /// Elements of `recv` (0 where unused).
    pub recv_len: usize,
    /// Broadcast root, or split color.
    pub root: usize,
    /// Split key.
    pub key: usize,
    /// `counts` of a `_v` collective (address, length), or (0, 0).
    pub counts: (usize, usize),
    pub send: usize,
    pub recv: usize,
}

impl Slot {
    pub(crate) fn new(op: Op, dtype: DType) -> Self {
        Slot { op, dtype, reduce: None, len: 0, recv_len: 0, root: 0, key: 0, counts: (0, 0), send: 0, recv: 0 }
    }

    /// The counts array this slot points at.
    ///
    /// # Safety
    /// Only between the publishing rank's first and exit barrier of this collective,
    /// while the `&[usize]` it was made from is borrowed by that rank's call.
    pub(crate) unsafe fn counts(&self) -> &[usize] {
        if self.counts.1 == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(self.counts.0 as *const usize, self.counts.1)
        }
    }

    /// `self` and `other` describe the same collective call (split colors may differ).
    ///
    /// # Safety
    /// As for [`Slot::counts`], for both slots.
    pub(crate) unsafe fn matches(&self, other: &Slot) -> bool {
        self.op == other.op
            && (self.op == Op::Barrier
                || self.op == Op::Split
                || (self.dtype == other.dtype
                    && self.reduce == other.reduce
                    && self.root == other.root
                    && self.counts() == other.counts()
                    && (self.op == Op::AllGather && self.counts.1 > 0 || self.len == other.len)
                    && (self.op == Op::ReduceScatter && self.counts.1 > 0 || self.recv_len == other.recv_len)))
    }

    /// Human-readable description of the call, for mismatch errors.
    pub(crate) fn describe(&self) -> String {
        let mut s = format!("{}({}", self.op.name(), self.dtype);
        if let Some(r) = self.reduce {
            s.push_str(&format!(", {r:?}"));
        }
        s.push_str(&format!(", len={}", self.len));
        if self.recv_len > 0 {
            s.push_str(&format!(", recv_len={}", self.recv_len));
        }
        if self.op == Op::Broadcast {
            s.push_str(&format!(", root={}", self.root));
        }
        if self.counts.1 > 0 {
            s.push_str(", counts=[..]");
        }
        s + ")"
    }
}

/// Interior-mutable slot. Written only by its owner rank before the first barrier of a
/// collective, read by peers only between that barrier and the exit barrier; the
/// barrier's mutex orders the two.
pub(crate) struct SlotCell(UnsafeCell<Slot>);
// SAFETY: access is serialised by the barrier protocol described above.
unsafe impl Sync for SlotCell {}

/// Why a world failed, kept for the error messages of the other ranks.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub world_rank: usize,
    pub op: String,
    pub group: String,
    pub cause: String,
}

/// State shared by every group of one local world.
pub(crate) struct World {
    failed: AtomicBool,
    failure: Mutex<Option<Failure>>,
    groups: Mutex<Vec<Weak<Group>>>,
}

impl World {
    pub(crate) fn new() -> Arc<World> {
        Arc::new(World { failed: AtomicBool::new(false), failure: Mutex::new(None), groups: Mutex::new(Vec::new()) })
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    pub(crate) fn failure(&self) -> Option<Failure> {
        lock(&self.failure).clone()
    }

    /// Record a failure (the first one wins) and set the flag, without waking anyone:
    /// callable while holding a group lock. Follow with [`World::wake_all`].
    pub(crate) fn mark_failed(&self, failure: Failure) {
        let mut f = lock(&self.failure);
        // The first failure wins, except that a rank's own specific cause replaces the
        // generic one recorded when its communicator was dropped ("(left)"/"(panic)").
        let replace = match &*f {
            None => true,
            Some(old) => old.world_rank == failure.world_rank && (old.op == "(left)" || old.op == "(panic)"),
        };
        if replace {
            *f = Some(failure);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Wake every waiter of every group so that it sees the failure now.
    pub(crate) fn wake_all(&self) {
        let groups: Vec<Arc<Group>> = lock(&self.groups).iter().filter_map(Weak::upgrade).collect();
        for g in groups {
            drop(lock(&g.sync));
            g.cv.notify_all();
            for p in g.pairs.iter() {
                drop(lock(&p.state));
                p.cv.notify_all();
            }
        }
    }

    pub(crate) fn poison(&self, failure: Failure) {
        self.mark_failed(failure);
        self.wake_all();
    }
}

/// Lock a mutex, ignoring std's poisoning: our own failure protocol handles panics, and
/// the guarded data stays consistent because no code panics while holding these locks.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct SyncState {
    arrived: usize,
}

/// A point-to-point mailbox from one rank to another (rendezvous: the receiver copies
/// straight out of the sender's buffer, under the mailbox lock).
pub(crate) struct Pair {
    pub state: Mutex<PairState>,
    pub cv: Condvar,
}

pub(crate) struct PairState {
    pub posted: Option<Post>,
    pub posted_seq: u64,
    pub done_seq: u64,
}

#[derive(Clone, Copy)]
pub(crate) struct Post {
    pub ptr: usize,
    pub len: usize,
    pub dtype: DType,
    pub tag: u32,
}

/// Sub-groups being built by `split`: (split sequence number, color) -> (group,
/// members still to pick it up).
pub(crate) type SplitTable = HashMap<(u64, usize), (Arc<Group>, usize)>;

/// One group of rank-threads.
pub(crate) struct Group {
    pub name: String,
    pub size: usize,
    pub world: Arc<World>,
    /// Group rank -> world rank, for error messages.
    pub world_ranks: Vec<usize>,
    pub timeout: Duration,
    sync: Mutex<SyncState>,
    cv: Condvar,
    generation: AtomicU64,
    arrived_gen: Box<[AtomicU64]>,
    slots: Box<[SlotCell]>,
    active: AtomicUsize,
    /// Group rank that dropped its communicator, or usize::MAX.
    departed: AtomicUsize,
    pub pairs: Box<[Pair]>,
    /// Sub-groups being created by `split`, keyed by (split sequence number, color),
    /// with the number of members that have not picked theirs up yet.
    pub splits: Mutex<SplitTable>,
}

impl Group {
    pub(crate) fn new(world: &Arc<World>, name: &str, world_ranks: Vec<usize>, timeout: Duration) -> Arc<Group> {
        let size = world_ranks.len();
        let g = Arc::new(Group {
            name: name.to_string(),
            size,
            world: world.clone(),
            world_ranks,
            timeout,
            sync: Mutex::new(SyncState { arrived: 0 }),
            cv: Condvar::new(),
            generation: AtomicU64::new(0),
            arrived_gen: (0..size).map(|_| AtomicU64::new(0)).collect(),
            slots: (0..size).map(|_| SlotCell(UnsafeCell::new(Slot::new(Op::Barrier, DType::U8)))).collect(),
            active: AtomicUsize::new(0),
            departed: AtomicUsize::new(usize::MAX),
            pairs: (0..size * size)
                .map(|_| Pair { state: Mutex::new(PairState { posted: None, posted_seq: 0, done_seq: 0 }), cv: Condvar::new() })
                .collect(),
            splits: Mutex::new(HashMap::new()),
        });
        let mut groups = lock(&world.groups);
        groups.retain(|w| w.strong_count() > 0);
        groups.push(Arc::downgrade(&g));
        g
    }

    /// Write this rank's slot.
    ///
    /// # Safety
    /// Caller is group rank `rank`, inside a collective, before its first barrier, and
    /// holds the communicator's busy flag (so no other thread writes this slot).
    pub(crate) unsafe fn publish(&self, rank: usize, slot: Slot) {
        *self.slots[rank].0.get() = slot;
    }

    /// Read rank `r`'s slot.
    ///
    /// # Safety
    /// Between the first and the exit barrier of the current collective.
    pub(crate) unsafe fn slot(&self, r: usize) -> Slot {
        *self.slots[r].0.get()
    }

    /// The error a rank of this group reports once the world has failed.
    pub(crate) fn peer_failed(&self, rank: usize, op: Op) -> CommError {
        let f = self.world.failure().unwrap_or(Failure {
            world_rank: usize::MAX,
            op: "?".into(),
            group: "?".into(),
            cause: "unknown failure".into(),
        });
        CommError::PeerFailed {
            rank,
            op: op.name(),
            group: self.name.clone(),
            failed_rank: f.world_rank,
            failed_in: format!("{} on group '{}'", f.op, f.group),
            cause: f.cause,
        }
    }

    /// Mark group rank `rank` as gone (its communicator was dropped) and wake waiters.
    pub(crate) fn depart(&self, rank: usize) {
        let _ = self.departed.compare_exchange(usize::MAX, rank, Ordering::SeqCst, Ordering::SeqCst);
        drop(lock(&self.sync));
        self.cv.notify_all();
    }

    /// Group rank that dropped its communicator, if any.
    pub(crate) fn departed_rank(&self) -> Option<usize> {
        let d = self.departed.load(Ordering::SeqCst);
        (d != usize::MAX).then_some(d)
    }

    /// Wait until all `size` ranks have called `barrier` for this generation.
    pub(crate) fn barrier(&self, rank: usize, op: Op) -> Result<(), CommError> {
        let start = Instant::now();
        let mut st = lock(&self.sync);
        if self.world.is_failed() {
            return Err(self.peer_failed(rank, op));
        }
        let gen = self.generation.load(Ordering::Acquire);
        self.arrived_gen[rank].store(gen + 1, Ordering::Relaxed);
        st.arrived += 1;
        if st.arrived == self.size {
            st.arrived = 0;
            self.generation.store(gen + 1, Ordering::Release);
            drop(st);
            self.cv.notify_all();
            return Ok(());
        }
        drop(st);
        // Short spin first: at small sizes the peers are microseconds away, and a
        // futex sleep/wake costs more than that.
        for i in 0..200u32 {
            if self.generation.load(Ordering::Acquire) != gen {
                return Ok(());
            }
            if i < 100 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        let mut st = lock(&self.sync);
        loop {
            if self.generation.load(Ordering::Acquire) != gen {
                return Ok(());
            }
            if self.world.is_failed() {
                return Err(self.peer_failed(rank, op));
            }
            let departed = self.departed.load(Ordering::SeqCst);
            if departed != usize::MAX {
                let wr = self.world_ranks[departed];
                self.world.mark_failed(Failure {
                    world_rank: wr,
                    op: "(left)".into(),
                    group: self.name.clone(),
                    cause: format!("rank {departed} of group '{}' dropped its communicator", self.name),
                });
                drop(st);
                self.world.wake_all();
                return Err(self.peer_failed(rank, op));
            }
            let waited = start.elapsed();
            if waited >= self.timeout {
                let missing: Vec<usize> =
                    (0..self.size).filter(|&r| self.arrived_gen[r].load(Ordering::Relaxed) != gen + 1).collect();
                // Mark failed while still holding the lock, so the last arriver cannot
                // complete this barrier after we have decided to leave it.
                self.world.mark_failed(Failure {
                    world_rank: self.world_ranks[rank],
                    op: op.name().into(),
                    group: self.name.clone(),
                    cause: format!("timed out after {waited:?} waiting for group ranks {missing:?}"),
                });
                drop(st);
                self.world.wake_all();
                return Err(CommError::Timeout { rank, op: op.name(), group: self.name.clone(), waited, missing });
            }
            let slice = (self.timeout - waited).min(Duration::from_millis(50));
            st = self.cv.wait_timeout(st, slice).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Enter a data phase (reading peers' buffers). Fails if the world has failed, in
    /// which case a leaving peer may already have freed its buffers.
    pub(crate) fn enter_data(&self, rank: usize, op: Op) -> Result<ActiveGuard<'_>, CommError> {
        self.active.fetch_add(1, Ordering::SeqCst);
        let guard = ActiveGuard(&self.active);
        if self.world.is_failed() {
            return Err(self.peer_failed(rank, op));
        }
        Ok(guard)
    }

    /// Called by a rank about to leave a collective with an error: wait until no peer
    /// is inside a data phase. Peers check the failure flag before entering one, and a
    /// data phase is a bounded memory copy, so this terminates.
    pub(crate) fn wait_quiescent(&self) {
        while self.active.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
    }
}

/// Decrements the group's active count when a data phase ends (also on unwinding).
pub(crate) struct ActiveGuard<'a>(&'a AtomicUsize);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

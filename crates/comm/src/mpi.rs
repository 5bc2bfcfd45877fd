//! The `mpi` backend: ranks are processes started by `mpirun`/`srun`, collectives are
//! the system MPI's (OpenMPI 4.1 here) called through `mpi-sys`.
//!
//! * Ranks come from `MPI_COMM_WORLD`; the node-local rank from
//!   `MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)`, so no launcher variable is read.
//! * Groups (`split`, hence `Mesh`) are `MPI_Comm_split`.
//! * `f32` calls go straight to MPI on the caller's buffers (`MPI_IN_PLACE` for
//!   all-reduce), so the cost is MPI's own. `bf16` reductions are staged through a
//!   reusable `f32` scratch buffer (MPI has no bf16 type); it grows once, after which
//!   no call allocates.
//! * Timeouts: MPI collectives cannot be cancelled, so a watchdog thread aborts the whole
//!   job (`MPI_Abort`) when a call runs longer than the timeout, after printing which
//!   rank, collective and group timed out. A rank that panics or exits makes `mpirun`
//!   kill the others. Either way no rank hangs.
//! * OpenMPI 4.1 allocates a temporary buffer of the message size in every large
//!   all-reduce/reduce-scatter. glibc serves allocations above its mmap threshold (at
//!   most 32 MiB) with a fresh `mmap`, so every call page-faults its buffer in again.
//!   [`tune_malloc`] (on by default in [`MpiOptions`]) calls `mallopt` to keep such
//!   blocks on the heap, the in-process equivalent of `mpirun -x MALLOC_MMAP_MAX_=0
//!   -x MALLOC_TRIM_THRESHOLD_=...`; see docs/comm.md for the measurement.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use half::bf16;
use mpi::ffi;

use crate::buf::{Buf, BufMut, DType, ReduceOp};
use crate::error::{CommError, Result};
use crate::Communicator;

/// Options of [`MpiComm::world`].
#[derive(Clone, Debug)]
pub struct MpiOptions {
    /// Longest a single collective may run before the watchdog aborts the job.
    pub timeout: Duration,
    /// Apply [`tune_malloc`] before initialising MPI.
    pub tune_malloc: bool,
}

impl Default for MpiOptions {
    fn default() -> Self {
        MpiOptions { timeout: Duration::from_secs(300), tune_malloc: true }
    }
}

/// Keep large allocations on the glibc heap and never trim it, so that the temporary
/// buffer MPI allocates per collective reuses already-mapped pages. Returns whether
/// glibc accepted both settings (always false off glibc).
pub fn tune_malloc() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; both are documented
        // (mallopt(3)) and valid at any time.
        unsafe { libc::mallopt(libc::M_MMAP_MAX, 0) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, c_int::MAX) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// The process's MPI session: initialised once, finalised when the last communicator
/// is dropped.
struct Session {
    _universe: mpi::environment::Universe,
    /// `MPI_IN_PLACE` is a macro, not a symbol, so mpi-sys cannot export it: it is
    /// `(void*)1` in Open MPI and `(void*)-1` in MPICH and derivatives. None: unknown
    /// library, all-reduce then goes through a scratch copy.
    in_place: Option<usize>,
    world_rank: usize,
    watchdog: Watchdog,
}

// SAFETY: MPI is initialised with MPI_THREAD_MULTIPLE (checked in `world`), so its
// handles may be used from any thread.
unsafe impl Send for Session {}
unsafe impl Sync for Session {}

static SESSION: OnceLock<Weak<Session>> = OnceLock::new();

/// One collective in flight on a communicator: (start time in ms since the session
/// epoch + 1, or 0 when idle) and a description for the abort message.
struct InFlight {
    since_ms: AtomicU64,
    what: Mutex<(&'static str, String)>,
}

struct Watchdog {
    epoch: Instant,
    timeout: Duration,
    entries: Mutex<Vec<Weak<InFlight>>>,
}

fn mpi_err(rank: usize, op: &'static str, group: &str, message: String) -> CommError {
    CommError::Backend { rank, backend: "mpi", op, group: group.to_string(), message }
}

/// A communicator over MPI. `Send + Sync`; as with every backend, one thread at a time
/// should issue collectives on one communicator.
pub struct MpiComm {
    raw: ffi::MPI_Comm,
    rank: usize,
    size: usize,
    local_rank: usize,
    name: String,
    session: Arc<Session>,
    inflight: Arc<InFlight>,
    scratch: Mutex<(Vec<f32>, Vec<c_int>)>,
    owned: bool,
}

// SAFETY: see `Session`; the scratch buffers are behind a mutex.
unsafe impl Send for MpiComm {}
unsafe impl Sync for MpiComm {}

impl MpiComm {
    /// The world communicator of a process started by `mpirun`/`srun` (initialises MPI
    /// with `MPI_THREAD_MULTIPLE` on first use).
    pub fn world(opts: &MpiOptions) -> Result<MpiComm> {
        let session = match SESSION.get().and_then(Weak::upgrade) {
            Some(s) => s,
            None => {
                if opts.tune_malloc {
                    tune_malloc();
                }
                let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Multiple)
                    .ok_or_else(|| mpi_err(0, "init", "world", "MPI was already initialised or finalised".into()))?;
                if threading != mpi::Threading::Multiple {
                    return Err(mpi_err(0, "init", "world", format!("MPI provides {threading:?}, need Multiple")));
                }
                let version = mpi::environment::library_version().unwrap_or_default();
                let in_place = if version.contains("Open MPI") {
                    Some(1usize)
                } else if version.contains("MPICH") || version.contains("Intel") || version.contains("MVAPICH") {
                    Some(usize::MAX)
                } else {
                    None
                };
                let mut rank: c_int = 0;
                // SAFETY: MPI is initialised; RSMPI_COMM_WORLD is a valid communicator.
                unsafe { ffi::MPI_Comm_rank(ffi::RSMPI_COMM_WORLD, &mut rank) };
                let s = Arc::new(Session {
                    _universe: universe,
                    in_place,
                    world_rank: rank as usize,
                    watchdog: Watchdog { epoch: Instant::now(), timeout: opts.timeout, entries: Mutex::new(Vec::new()) },
                });
                let _ = SESSION.set(Arc::downgrade(&s));
                start_watchdog(Arc::downgrade(&s));
                s
            }
        };
        // SAFETY: RSMPI_COMM_WORLD is valid for the session's lifetime.
        let mut c = MpiComm::wrap(unsafe { ffi::RSMPI_COMM_WORLD }, "world", session, false);
        c.local_rank = c.node_local_rank()?;
        Ok(c)
    }

    fn wrap(raw: ffi::MPI_Comm, name: &str, session: Arc<Session>, owned: bool) -> MpiComm {
        let (mut rank, mut size): (c_int, c_int) = (0, 0);
        // SAFETY: `raw` is a valid communicator of this session.
        unsafe {
            ffi::MPI_Comm_rank(raw, &mut rank);
            ffi::MPI_Comm_size(raw, &mut size);
        }
        let inflight = Arc::new(InFlight { since_ms: AtomicU64::new(0), what: Mutex::new(("", String::new())) });
        if let Ok(mut e) = session.watchdog.entries.lock() {
            e.retain(|w| w.strong_count() > 0);
            e.push(Arc::downgrade(&inflight));
        }
        MpiComm {
            raw,
            rank: rank as usize,
            size: size as usize,
            local_rank: 0,
            name: name.to_string(),
            session,
            inflight,
            scratch: Mutex::new((Vec::new(), Vec::new())),
            owned,
        }
    }

    /// Rank of this process among the processes of its node.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    fn node_local_rank(&self) -> Result<usize> {
        let mut node: ffi::MPI_Comm = unsafe { ffi::RSMPI_COMM_NULL };
        let mut r: c_int = 0;
        // SAFETY: valid communicator; `node` is freed below.
        let rc = unsafe {
            let rc = ffi::MPI_Comm_split_type(self.raw, ffi::RSMPI_COMM_TYPE_SHARED, self.rank as c_int, ffi::RSMPI_INFO_NULL, &mut node);
            if rc == 0 {
                ffi::MPI_Comm_rank(node, &mut r);
                ffi::MPI_Comm_free(&mut node);
            }
            rc
        };
        self.check("split_type", rc)?;
        Ok(r as usize)
    }

    /// Abort the whole MPI job on behalf of this rank, printing `cause`.
    pub fn abort(&self, cause: &str) -> ! {
        eprintln!("rank {} (group '{}'): aborting the MPI job: {cause}", self.rank, self.name);
        // SAFETY: valid communicator; MPI_Abort does not return.
        unsafe { ffi::MPI_Abort(ffi::RSMPI_COMM_WORLD, 3) };
        std::process::exit(3)
    }

    fn check(&self, op: &'static str, rc: c_int) -> Result<()> {
        if rc == 0 {
            Ok(())
        } else {
            Err(mpi_err(self.rank, op, &self.name, format!("MPI error code {rc}")))
        }
    }

    /// Run one MPI call under the watchdog.
    fn timed(&self, op: &'static str, f: impl FnOnce() -> c_int) -> Result<()> {
        if let Ok(mut w) = self.inflight.what.lock() {
            if w.1 != self.name || w.0 != op {
                *w = (op, self.name.clone());
            }
        }
        let now = self.session.watchdog.epoch.elapsed().as_millis() as u64 + 1;
        self.inflight.since_ms.store(now, Ordering::Release);
        let rc = f();
        self.inflight.since_ms.store(0, Ordering::Release);
        self.check(op, rc)
    }

    fn int(&self, op: &'static str, n: usize) -> Result<c_int> {
        c_int::try_from(n).map_err(|_| {
            CommError::InvalidArgument { rank: self.rank, op, group: self.name.clone(), reason: format!("{n} elements exceed MPI's int count") }
        })
    }

    fn invalid(&self, op: &'static str, reason: String) -> CommError {
        CommError::InvalidArgument { rank: self.rank, op, group: self.name.clone(), reason }
    }
}

fn dtype(d: DType) -> ffi::MPI_Datatype {
    // SAFETY: reading mpi-sys's constant handles after MPI_Init.
    unsafe {
        match d {
            DType::F32 => ffi::RSMPI_FLOAT,
            // bf16 moves as 16-bit words; it is reduced only after staging to f32.
            DType::Bf16 => ffi::RSMPI_UINT16_T,
            DType::U8 => ffi::RSMPI_UINT8_T,
        }
    }
}

fn mpi_op(op: ReduceOp) -> ffi::MPI_Op {
    // SAFETY: constant handles.
    unsafe {
        match op {
            ReduceOp::Sum | ReduceOp::Avg => ffi::RSMPI_SUM,
            ReduceOp::Max => ffi::RSMPI_MAX,
        }
    }
}

fn start_watchdog(session: Weak<Session>) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(200));
        let Some(s) = session.upgrade() else { return };
        let now = s.watchdog.epoch.elapsed().as_millis() as u64 + 1;
        let entries: Vec<Arc<InFlight>> =
            s.watchdog.entries.lock().map(|e| e.iter().filter_map(Weak::upgrade).collect()).unwrap_or_default();
        for e in entries {
            let since = e.since_ms.load(Ordering::Acquire);
            if since != 0 && now.saturating_sub(since) > s.watchdog.timeout.as_millis() as u64 {
                let (op, group) = e.what.lock().map(|w| w.clone()).unwrap_or(("?", "?".into()));
                eprintln!(
                    "{}",
                    CommError::Timeout {
                        rank: s.world_rank,
                        op,
                        group,
                        waited: Duration::from_millis(now - since),
                        missing: vec![],
                    }
                );
                crate::flight::failed();
                eprintln!("world rank {}: aborting the MPI job so that no rank hangs", s.world_rank);
                // SAFETY: MPI_THREAD_MULTIPLE; MPI_Abort terminates all processes.
                unsafe { ffi::MPI_Abort(ffi::RSMPI_COMM_WORLD, 4) };
                std::process::exit(4);
            }
        }
    });
}

impl Drop for MpiComm {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: we created this communicator with MPI_Comm_split and nobody else
            // holds it.
            unsafe { ffi::MPI_Comm_free(&mut self.raw) };
        }
    }
}

fn to_f32(dst: &mut [f32], src: &[bf16]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d = s.to_f32());
}
fn from_f32(dst: &mut [bf16], src: &[f32], scale: f32) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d = bf16::from_f32(*s / scale));
}

impl Communicator for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn name(&self) -> &str {
        &self.name
    }

    fn all_reduce(&self, buf: BufMut<'_>, op: ReduceOp) -> Result<()> {
        let o = "all_reduce";
        let n = self.int(o, buf.len())?;
        let scale = if op == ReduceOp::Avg { self.size as f32 } else { 1.0 };
        match buf {
            BufMut::F32(x) => {
                match self.session.in_place {
                    // SAFETY: x is n valid floats; MPI_IN_PLACE as the library defines it.
                    Some(ip) => self.timed(o, || unsafe {
                        ffi::MPI_Allreduce(ip as *const c_void, x.as_mut_ptr().cast(), n, dtype(DType::F32), mpi_op(op), self.raw)
                    })?,
                    None => {
                        let mut s = self.scratch.lock().map_err(|_| self.invalid(o, "scratch lock poisoned".into()))?;
                        s.0.clear();
                        s.0.extend_from_slice(x);
                        // SAFETY: distinct valid buffers of n floats.
                        self.timed(o, || unsafe {
                            ffi::MPI_Allreduce(s.0.as_ptr().cast(), x.as_mut_ptr().cast(), n, dtype(DType::F32), mpi_op(op), self.raw)
                        })?;
                    }
                }
                if op == ReduceOp::Avg {
                    x.iter_mut().for_each(|v| *v /= scale);
                }
                Ok(())
            }
            BufMut::Bf16(x) => {
                let mut s = self.scratch.lock().map_err(|_| self.invalid(o, "scratch lock poisoned".into()))?;
                let len = x.len();
                s.0.resize(2 * len, 0.0);
                let (a, b) = s.0.split_at_mut(len);
                to_f32(a, x);
                // SAFETY: distinct valid buffers of n floats.
                self.timed(o, || unsafe {
                    ffi::MPI_Allreduce(a.as_ptr().cast(), b.as_mut_ptr().cast(), n, dtype(DType::F32), mpi_op(op), self.raw)
                })?;
                from_f32(x, b, scale);
                Ok(())
            }
            BufMut::Bytes(_) => Err(self.invalid(o, "reductions are defined on f32 and bf16, not bytes".into())),
        }
    }

    fn reduce_scatter(&self, send: Buf<'_>, recv: BufMut<'_>, op: ReduceOp) -> Result<()> {
        let o = "reduce_scatter";
        if send.len() != recv.len() * self.size {
            return Err(self.invalid(o, format!("full buffer has {} elements, expected {} x {}", send.len(), self.size, recv.len())));
        }
        let counts: Vec<usize> = Vec::new();
        self.reduce_scatter_any(send, recv, &counts, op)
    }

    fn reduce_scatter_v(&self, send: Buf<'_>, recv: BufMut<'_>, counts: &[usize], op: ReduceOp) -> Result<()> {
        let o = "reduce_scatter";
        if counts.len() != self.size || counts.iter().sum::<usize>() != send.len() || counts[self.rank] != recv.len() {
            return Err(self.invalid(o, format!("counts {counts:?} do not fit send {} / recv {}", send.len(), recv.len())));
        }
        self.reduce_scatter_any(send, recv, counts, op)
    }

    fn all_gather(&self, send: Buf<'_>, mut recv: BufMut<'_>) -> Result<()> {
        let o = "all_gather";
        if recv.len() != send.len() * self.size || send.dtype() != recv.dtype() {
            return Err(self.invalid(o, format!("recv has {} elements, expected {} x {}", recv.len(), self.size, send.len())));
        }
        let n = self.int(o, send.len())?;
        let t = dtype(send.dtype());
        // SAFETY: send holds n and recv n*size elements of type t.
        self.timed(o, || unsafe { ffi::MPI_Allgather(send.as_ptr().cast(), n, t, recv.as_mut_ptr().cast(), n, t, self.raw) })
    }

    fn all_gather_v(&self, send: Buf<'_>, mut recv: BufMut<'_>, counts: &[usize]) -> Result<()> {
        let o = "all_gather";
        if counts.len() != self.size || counts.iter().sum::<usize>() != recv.len() || counts[self.rank] != send.len() {
            return Err(self.invalid(o, format!("counts {counts:?} do not fit send {} / recv {}", send.len(), recv.len())));
        }
        let mut s = self.scratch.lock().map_err(|_| self.invalid(o, "scratch lock poisoned".into()))?;
        s.1.clear();
        let mut off = 0usize;
        for &c in counts {
            s.1.push(self.int(o, c)?);
        }
        for &c in counts {
            s.1.push(self.int(o, off)?);
            off += c;
        }
        let (cnt, disp) = s.1.split_at(self.size);
        let n = self.int(o, send.len())?;
        let t = dtype(send.dtype());
        // SAFETY: counts/displacements describe recv exactly (checked above).
        self.timed(o, || unsafe {
            ffi::MPI_Allgatherv(send.as_ptr().cast(), n, t, recv.as_mut_ptr().cast(), cnt.as_ptr(), disp.as_ptr(), t, self.raw)
        })
    }

    fn broadcast(&self, mut buf: BufMut<'_>, root: usize) -> Result<()> {
        let o = "broadcast";
        if root >= self.size {
            return Err(self.invalid(o, format!("root {root} is not a rank of a group of {}", self.size)));
        }
        let n = self.int(o, buf.len())?;
        let t = dtype(buf.dtype());
        // SAFETY: buf holds n elements of type t.
        self.timed(o, || unsafe { ffi::MPI_Bcast(buf.as_mut_ptr().cast(), n, t, root as c_int, self.raw) })
    }

    fn send(&self, buf: Buf<'_>, dst: usize, tag: u32) -> Result<()> {
        let o = "send";
        if dst >= self.size || dst == self.rank {
            return Err(self.invalid(o, format!("destination {dst} is not another rank of a group of {}", self.size)));
        }
        let n = self.int(o, buf.len())?;
        let tag = self.int(o, tag as usize)?;
        // SAFETY: buf holds n elements.
        self.timed(o, || unsafe { ffi::MPI_Send(buf.as_ptr().cast(), n, dtype(buf.dtype()), dst as c_int, tag, self.raw) })
    }

    fn recv(&self, mut buf: BufMut<'_>, src: usize, tag: u32) -> Result<()> {
        let o = "recv";
        if src >= self.size || src == self.rank {
            return Err(self.invalid(o, format!("source {src} is not another rank of a group of {}", self.size)));
        }
        let n = self.int(o, buf.len())?;
        let tag = self.int(o, tag as usize)?;
        let t = dtype(buf.dtype());
        // SAFETY: buf holds n elements; a longer message is an MPI error (truncation).
        self.timed(o, || unsafe {
            ffi::MPI_Recv(buf.as_mut_ptr().cast(), n, t, src as c_int, tag, self.raw, ffi::RSMPI_STATUS_IGNORE)
        })
    }

    fn barrier(&self) -> Result<()> {
        // SAFETY: valid communicator.
        self.timed("barrier", || unsafe { ffi::MPI_Barrier(self.raw) })
    }

    fn split(&self, color: usize, key: usize, name: &str) -> Result<Box<dyn Communicator>> {
        let o = "split";
        let (c, k) = (self.int(o, color)?, self.int(o, key)?);
        // SAFETY: valid communicator; the new one is owned by the returned MpiComm.
        let mut new: ffi::MPI_Comm = unsafe { ffi::RSMPI_COMM_NULL };
        self.timed(o, || unsafe { ffi::MPI_Comm_split(self.raw, c, k, &mut new) })?;
        let mut comm = MpiComm::wrap(new, name, self.session.clone(), true);
        comm.local_rank = self.local_rank;
        Ok(Box::new(comm))
    }
}

impl MpiComm {
    /// Reduce-scatter with equal blocks (`counts` empty) or the given counts.
    fn reduce_scatter_any(&self, send: Buf<'_>, recv: BufMut<'_>, counts: &[usize], op: ReduceOp) -> Result<()> {
        let o = "reduce_scatter";
        if send.dtype() != recv.dtype() {
            return Err(self.invalid(o, format!("send is {} but recv is {}", send.dtype(), recv.dtype())));
        }
        let scale = if op == ReduceOp::Avg { self.size as f32 } else { 1.0 };
        let m = self.int(o, recv.len())?;
        let mut guard = self.scratch.lock().map_err(|_| self.invalid(o, "scratch lock poisoned".into()))?;
        let (fs, is) = &mut *guard;
        is.clear();
        for &c in counts {
            is.push(self.int(o, c)?);
        }
        let call = |s: *const c_void, r: *mut c_void| -> c_int {
            // SAFETY: s holds the full vector and r this rank's block (checked by the
            // callers); `is` holds one count per rank when non-empty.
            unsafe {
                if is.is_empty() {
                    ffi::MPI_Reduce_scatter_block(s, r, m, dtype(DType::F32), mpi_op(op), self.raw)
                } else {
                    ffi::MPI_Reduce_scatter(s, r, is.as_ptr(), dtype(DType::F32), mpi_op(op), self.raw)
                }
            }
        };
        match (send, recv) {
            (Buf::F32(s), BufMut::F32(r)) => {
                self.timed(o, || call(s.as_ptr().cast(), r.as_mut_ptr().cast()))?;
                if op == ReduceOp::Avg {
                    r.iter_mut().for_each(|v| *v /= scale);
                }
                Ok(())
            }
            (Buf::Bf16(s), BufMut::Bf16(r)) => {
                fs.resize(s.len() + r.len(), 0.0);
                let (a, b) = fs.split_at_mut(s.len());
                to_f32(a, s);
                self.timed(o, || call(a.as_ptr().cast(), b.as_mut_ptr().cast()))?;
                from_f32(r, b, scale);
                Ok(())
            }
            _ => Err(self.invalid(o, "reductions are defined on f32 and bf16, not bytes".into())),
        }
    }
}

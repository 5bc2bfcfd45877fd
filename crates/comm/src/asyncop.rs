//! Collectives on a background thread, to overlap communication with computation.
//!
//! Design: the engine moves a buffer it owns (`Vec<f32>`, ...) into an operation and
//! gets a [`Handle`]; the collective runs on a worker thread that owns a communicator;
//! `Handle::wait` hands the buffer back. Moving ownership (rather than lending a
//! `&mut [f32]`) makes it impossible to touch the buffer while the collective uses it,
//! without `unsafe` or lifetimes tied to the handle. In a ZeRO step:
//!
//! ```text
//! for block in (0..L).rev() {
//!     backward(block, &mut grads[block]);
//!     pending.push(async_comm.reduce_scatter(grads[block].take(), shard[block].take(), Avg));
//! }
//! for h in pending { let (g, s) = h.wait()??; ... }   // then the optimizer step
//! ```
//!
//! Operations run in submission order, which is the same on every rank, so they match
//! across ranks. The worker must own a communicator that no other thread uses at the
//! same time: give it its own group with `comm.split(0, comm.rank(), "dp.async")`.
//! Cost per operation: one small allocation (the handle's shared cell and the boxed
//! job), none proportional to the buffer.
//!
//! ```
//! use comm::{run_local, AsyncComm, Communicator, OwnedBuf, ReduceOp};
//! use std::{sync::Arc, time::Duration};
//!
//! let out = run_local(2, Duration::from_secs(10), |c| {
//!     let stream: Arc<dyn Communicator> = Arc::from(c.split(0, c.rank(), "async")?);
//!     let a = AsyncComm::new(stream);
//!     let h = a.all_reduce(OwnedBuf::F32(vec![1.0; 5]), ReduceOp::Sum);
//!     // ... compute here while the all-reduce runs ...
//!     h.wait()?
//! })
//! .unwrap();
//! assert_eq!(out[0].as_f32(), Some(&[2.0f32; 5][..]));
//! ```

use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use half::bf16;

use crate::buf::{Buf, BufMut, ReduceOp};
use crate::error::{CommError, Result};
use crate::Communicator;

/// A buffer owned by an asynchronous operation while it runs.
#[derive(Clone, Debug, PartialEq)]
pub enum OwnedBuf {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    Bytes(Vec<u8>),
}

impl OwnedBuf {
    pub fn as_buf(&self) -> Buf<'_> {
        match self {
            OwnedBuf::F32(v) => Buf::F32(v),
            OwnedBuf::Bf16(v) => Buf::Bf16(v),
            OwnedBuf::Bytes(v) => Buf::Bytes(v),
        }
    }
    pub fn as_buf_mut(&mut self) -> BufMut<'_> {
        match self {
            OwnedBuf::F32(v) => BufMut::F32(v),
            OwnedBuf::Bf16(v) => BufMut::Bf16(v),
            OwnedBuf::Bytes(v) => BufMut::Bytes(v),
        }
    }
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            OwnedBuf::F32(v) => Some(v),
            _ => None,
        }
    }
}

type Job = Box<dyn FnOnce(&dyn Communicator) + Send>;

struct Cell<T> {
    value: Mutex<Option<T>>,
    ready: Condvar,
}

/// The pending result of an asynchronous operation.
pub struct Handle<T> {
    cell: Arc<Cell<T>>,
    rank: usize,
    group: String,
}

impl<T> Handle<T> {
    /// Block until the operation has finished and return its result.
    pub fn wait(self) -> Result<T> {
        let mut v = self.cell.value.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(out) = v.take() {
                return Ok(out);
            }
            // The worker holds the other reference while the job is queued or running;
            // if it is gone without a value, the job was dropped (worker panicked).
            if Arc::strong_count(&self.cell) == 1 {
                return Err(CommError::Backend {
                    rank: self.rank,
                    backend: "async",
                    op: "wait",
                    group: self.group.clone(),
                    message: "the background worker stopped before running this operation".into(),
                });
            }
            v = self
                .cell
                .ready
                .wait_timeout(v, std::time::Duration::from_millis(20))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Whether `wait` would return at once.
    pub fn is_done(&self) -> bool {
        self.cell.value.lock().map(|v| v.is_some()).unwrap_or(true)
    }
}

/// A communicator driven by a background thread (see the module docs).
pub struct AsyncComm {
    tx: Option<Sender<Job>>,
    worker: Option<JoinHandle<()>>,
    rank: usize,
    group: String,
}

impl AsyncComm {
    /// Start a worker thread that owns `comm`.
    pub fn new(comm: Arc<dyn Communicator>) -> AsyncComm {
        let (tx, rx) = channel::<Job>();
        let (rank, group) = (comm.rank(), comm.name().to_string());
        let worker = std::thread::spawn(move || {
            while let Ok(job) = rx.recv() {
                job(comm.as_ref());
            }
        });
        AsyncComm { tx: Some(tx), worker: Some(worker), rank, group }
    }

    /// Run any closure on the worker, in submission order.
    pub fn submit<T: Send + 'static>(&self, f: impl FnOnce(&dyn Communicator) -> T + Send + 'static) -> Handle<T> {
        let cell = Arc::new(Cell { value: Mutex::new(None), ready: Condvar::new() });
        let c2 = cell.clone();
        let job: Job = Box::new(move |comm| {
            let out = f(comm);
            *c2.value.lock().unwrap_or_else(|e| e.into_inner()) = Some(out);
            c2.ready.notify_all();
        });
        // If the worker is gone the job (and its reference) is dropped, which `wait`
        // reports as an error.
        if let Some(tx) = &self.tx {
            let _ = tx.send(job);
        }
        Handle { cell, rank: self.rank, group: self.group.clone() }
    }

    /// `all_reduce` of `buf` in the background; `wait` returns the reduced buffer.
    pub fn all_reduce(&self, mut buf: OwnedBuf, op: ReduceOp) -> Handle<Result<OwnedBuf>> {
        self.submit(move |c| c.all_reduce(buf.as_buf_mut(), op).map(|_| buf))
    }

    /// `reduce_scatter` in the background; `wait` returns `(send, recv)`.
    pub fn reduce_scatter(&self, send: OwnedBuf, mut recv: OwnedBuf, op: ReduceOp) -> Handle<Result<(OwnedBuf, OwnedBuf)>> {
        self.submit(move |c| c.reduce_scatter(send.as_buf(), recv.as_buf_mut(), op).map(|_| (send, recv)))
    }

    /// `all_gather` in the background; `wait` returns `(send, recv)`.
    pub fn all_gather(&self, send: OwnedBuf, mut recv: OwnedBuf) -> Handle<Result<(OwnedBuf, OwnedBuf)>> {
        self.submit(move |c| c.all_gather(send.as_buf(), recv.as_buf_mut()).map(|_| (send, recv)))
    }

    /// `broadcast` in the background; `wait` returns the buffer.
    pub fn broadcast(&self, mut buf: OwnedBuf, root: usize) -> Handle<Result<OwnedBuf>> {
        self.submit(move |c| c.broadcast(buf.as_buf_mut(), root).map(|_| buf))
    }
}

impl Drop for AsyncComm {
    /// Finish the queued operations, then stop the worker.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

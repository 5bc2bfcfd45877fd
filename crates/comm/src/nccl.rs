//! The `nccl` backend (cargo feature `nccl`): one GPU per rank, NCCL through cudarc with
//! dynamic loading, so the crate builds and its CPU tests run on machines without CUDA.
//!
//! * Bootstrap: rank 0 creates the NCCL unique id and broadcasts its 128 bytes over any
//!   other [`Communicator`] (the MPI world under mpirun, or a local world for one
//!   process driving several GPUs); then every rank calls `ncclCommInitRank`.
//! * [`NcclComm::raw`] and [`NcclComm::stream`] give the engine device-buffer
//!   collectives on its own stream (the fast path). The [`Communicator`] impl takes
//!   host buffers and stages them through one reusable device buffer (copy in, collective,
//!   copy out), which makes the backend testable against the others; it is not the
//!   path for training.
//! * Timeouts: after enqueueing, the host polls a CUDA event; past the deadline the
//!   communicator is aborted (`ncclCommAbort`) and the call returns
//!   [`CommError::Timeout`], as PyTorch's NCCL watchdog does.

use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr};
use cudarc::nccl::{result, sys};

use crate::buf::{Buf, BufMut, DType, ReduceOp};
use crate::error::{CommError, Result};
use crate::Communicator;

/// A communicator over NCCL on one GPU.
pub struct NcclComm {
    comm: sys::ncclComm_t,
    stream: Arc<CudaStream>,
    rank: usize,
    size: usize,
    name: String,
    timeout: Duration,
    /// Device staging buffer for the host-buffer `Communicator` impl; the mutex also
    /// serialises calls on this communicator.
    staging: Mutex<Option<CudaSlice<u8>>>,
}

// SAFETY: the raw NCCL communicator is used only while holding `staging`'s mutex (or by
// the owner through `raw`, under the documented one-thread-at-a-time rule).
unsafe impl Send for NcclComm {}
unsafe impl Sync for NcclComm {}

fn nccl_dtype(d: DType) -> sys::ncclDataType_t {
    match d {
        DType::F32 => sys::ncclDataType_t::ncclFloat32,
        DType::Bf16 => sys::ncclDataType_t::ncclBfloat16,
        DType::U8 => sys::ncclDataType_t::ncclUint8,
    }
}

fn nccl_op(op: ReduceOp) -> sys::ncclRedOp_t {
    match op {
        ReduceOp::Sum => sys::ncclRedOp_t::ncclSum,
        ReduceOp::Max => sys::ncclRedOp_t::ncclMax,
        ReduceOp::Avg => sys::ncclRedOp_t::ncclAvg,
    }
}

/// Bytes of a host buffer.
fn bytes_of<'a>(b: &Buf<'a>) -> &'a [u8] {
    // SAFETY: any initialised f32/bf16/u8 memory is valid as bytes.
    unsafe { std::slice::from_raw_parts(b.as_ptr(), b.len() * b.dtype().size()) }
}

impl NcclComm {
    /// Collective over `bootstrap`: create an NCCL communicator of the same ranks on
    /// GPU `device` of this process.
    pub fn new(bootstrap: &dyn Communicator, device: usize, timeout: Duration) -> Result<NcclComm> {
        let (rank, size) = (bootstrap.rank(), bootstrap.size());
        let err = |op: &'static str, m: String| CommError::Backend {
            rank,
            backend: "nccl",
            op,
            group: bootstrap.name().to_string(),
            message: m,
        };
        // cudarc panics when a library cannot be loaded; check first so that a machine
        // without CUDA/NCCL gets an error naming what is missing.
        // SAFETY: these only try to dlopen the libraries.
        let (has_cuda, has_nccl) =
            unsafe { (cudarc::driver::sys::is_culib_present(), cudarc::nccl::sys::is_culib_present()) };
        if !has_cuda || !has_nccl {
            return Err(err("init", format!("cannot load libcuda ({has_cuda}) / libnccl ({has_nccl}): no GPU stack on this machine")));
        }
        let mut id = [0u8; 128];
        if rank == 0 {
            let uid = result::get_uniqueid().map_err(|e| err("init", format!("ncclGetUniqueId: {e:?}")))?;
            for (d, s) in id.iter_mut().zip(uid.internal.iter()) {
                *d = *s as u8;
            }
        }
        bootstrap.broadcast((&mut id[..]).into(), 0)?;
        let ctx = CudaContext::new(device).map_err(|e| err("init", format!("CUDA device {device}: {e:?}")))?;
        let stream = ctx.new_stream().map_err(|e| err("init", format!("stream: {e:?}")))?;
        let mut uid = sys::ncclUniqueId { internal: [0; 128] };
        for (d, s) in uid.internal.iter_mut().zip(id.iter()) {
            *d = *s as _;
        }
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out-pointer; every rank passes the same id and size.
        unsafe { result::comm_init_rank(&mut comm, size as c_int, uid, rank as c_int) }
            .map_err(|e| err("init", format!("ncclCommInitRank: {e:?}")))?;
        Ok(NcclComm {
            comm,
            stream,
            rank,
            size,
            name: format!("nccl:{}", bootstrap.name()),
            timeout,
            staging: Mutex::new(None),
        })
    }

    /// The raw communicator, for device-buffer collectives on [`NcclComm::stream`].
    pub fn raw(&self) -> sys::ncclComm_t {
        self.comm
    }

    /// The stream this communicator's collectives run on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    fn err(&self, op: &'static str, message: String) -> CommError {
        CommError::Backend { rank: self.rank, backend: "nccl", op, group: self.name.clone(), message }
    }

    fn invalid(&self, op: &'static str, reason: String) -> CommError {
        CommError::InvalidArgument { rank: self.rank, op, group: self.name.clone(), reason }
    }

    /// Stage `input` to the device, run `f(dev_in, dev_out)`, copy `out_len` bytes
    /// back into `output`, bounded by the timeout.
    fn staged(
        &self,
        op: &'static str,
        input: &[u8],
        output: Option<&mut [u8]>,
        f: impl FnOnce(*const c_void, *mut c_void, sys::cudaStream_t) -> std::result::Result<result::NcclStatus, result::NcclError>,
    ) -> Result<()> {
        let out_len = output.as_ref().map_or(0, |o| o.len());
        let need = (input.len() + out_len).max(1);
        let mut guard = self.staging.lock().map_err(|_| self.err(op, "staging lock poisoned".into()))?;
        if !matches!(guard.as_ref(), Some(s) if s.len() >= need) {
            *guard = Some(self.stream.alloc_zeros::<u8>(need).map_err(|e| self.err(op, format!("alloc {need} B: {e:?}")))?);
        }
        let dev = guard.as_mut().ok_or_else(|| self.err(op, "no staging buffer".into()))?;
        if !input.is_empty() {
            self.stream
                .memcpy_htod(input, &mut dev.slice_mut(0..input.len()))
                .map_err(|e| self.err(op, format!("copy to device: {e:?}")))?;
        }
        let base = {
            let (p, _sync) = dev.device_ptr(&self.stream);
            p
        };
        let (din, dout) = (base as *const c_void, (base + input.len() as u64) as *mut c_void);
        f(din, dout, self.stream.cu_stream() as sys::cudaStream_t).map_err(|e| self.err(op, format!("{e:?}")))?;
        self.wait(op)?;
        if let Some(out) = output {
            let off = input.len();
            self.stream
                .memcpy_dtoh(&dev.slice(off..off + out.len()), out)
                .map_err(|e| self.err(op, format!("copy to host: {e:?}")))?;
            self.stream.synchronize().map_err(|e| self.err(op, format!("{e:?}")))?;
        }
        Ok(())
    }
}

impl NcclComm {
    /// Waits for this communicator's stream, bounded by the timeout (then aborts).
    fn wait(&self, op: &'static str) -> Result<()> {
        let event = self.stream.record_event(None).map_err(|e| self.err(op, format!("event: {e:?}")))?;
        let start = Instant::now();
        loop {
            match event.try_is_complete() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(self.err(op, format!("{e:?}"))),
            }
            if start.elapsed() > self.timeout {
                // SAFETY: aborting makes pending NCCL work on this comm return; the comm
                // is unusable afterwards.
                unsafe {
                    let _ = result::comm_abort(self.comm);
                }
                return Err(CommError::Timeout { rank: self.rank, op, group: self.name.clone(), waited: start.elapsed(), missing: vec![] });
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Reduces `count` elements at device address `buf` (this GPU) across the group, in
    /// place, and waits for it. The caller orders it after the work that wrote `buf`
    /// (the GPU backend synchronises its stream first).
    ///
    /// # Safety
    /// `buf` must hold `count` elements of `dtype` on this communicator's GPU.
    pub unsafe fn all_reduce_device(&self, buf: u64, count: usize, dtype: DType, op: ReduceOp) -> Result<()> {
        let (p, t) = (buf as *mut c_void, nccl_dtype(dtype));
        result::all_reduce(p, p, count, t, nccl_op(op), self.comm, self.stream.cu_stream() as _).map_err(|e| self.err("all_reduce", format!("{e:?}")))?;
        self.wait("all_reduce")
    }

    /// Sums `size x count` elements at `send` across the group; this rank's block of
    /// `count` lands at `recv`.
    ///
    /// # Safety
    /// As [`NcclComm::all_reduce_device`], for both buffers (which do not overlap).
    pub unsafe fn reduce_scatter_device(&self, send: u64, recv: u64, count: usize, dtype: DType) -> Result<()> {
        let t = nccl_dtype(dtype);
        result::reduce_scatter(send as *const c_void, recv as *mut c_void, count, t, sys::ncclRedOp_t::ncclSum, self.comm, self.stream.cu_stream() as _)
            .map_err(|e| self.err("reduce_scatter", format!("{e:?}")))?;
        self.wait("reduce_scatter")
    }

    /// Every rank's `count` elements at `send`, in rank order, into `recv`.
    ///
    /// # Safety
    /// As [`NcclComm::reduce_scatter_device`].
    pub unsafe fn all_gather_device(&self, send: u64, recv: u64, count: usize, dtype: DType) -> Result<()> {
        let t = nccl_dtype(dtype);
        result::all_gather(send as *const c_void, recv as *mut c_void, count, t, self.comm, self.stream.cu_stream() as _)
            .map_err(|e| self.err("all_gather", format!("{e:?}")))?;
        self.wait("all_gather")
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // SAFETY: we own the communicator; destroy waits for its pending work.
        unsafe {
            let _ = result::comm_destroy(self.comm);
        }
    }
}

fn bytes_mut<'a>(b: &'a mut BufMut<'_>) -> &'a mut [u8] {
    let n = b.len() * b.dtype().size();
    // SAFETY: any byte pattern is a valid f32/bf16/u8 after the collective writes it.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr(), n) }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn name(&self) -> &str {
        &self.name
    }

    fn all_reduce(&self, mut buf: BufMut<'_>, op: ReduceOp) -> Result<()> {
        if buf.dtype() == DType::U8 {
            return Err(self.invalid("all_reduce", "reductions are defined on f32 and bf16, not bytes".into()));
        }
        let (n, t) = (buf.len(), nccl_dtype(buf.dtype()));
        let input = bytes_of(&buf.as_buf()).to_vec();
        // SAFETY: device pointers cover n elements each (staging layout).
        self.staged("all_reduce", &input, Some(bytes_mut(&mut buf)), |i, o, s| unsafe {
            result::all_reduce(i, o, n, t, nccl_op(op), self.comm, s)
        })
    }

    fn reduce_scatter(&self, send: Buf<'_>, mut recv: BufMut<'_>, op: ReduceOp) -> Result<()> {
        if send.len() != recv.len() * self.size || send.dtype() == DType::U8 || send.dtype() != recv.dtype() {
            return Err(self.invalid("reduce_scatter", format!("send {} {} / recv {} {}", send.len(), send.dtype(), recv.len(), recv.dtype())));
        }
        let (n, t) = (recv.len(), nccl_dtype(send.dtype()));
        // SAFETY: staging holds the full input then this rank's block.
        self.staged("reduce_scatter", bytes_of(&send), Some(bytes_mut(&mut recv)), |i, o, s| unsafe {
            result::reduce_scatter(i, o, n, t, nccl_op(op), self.comm, s)
        })
    }

    fn reduce_scatter_v(&self, send: Buf<'_>, recv: BufMut<'_>, counts: &[usize], op: ReduceOp) -> Result<()> {
        if counts.iter().all(|&c| c == recv.len()) {
            return self.reduce_scatter(send, recv, op);
        }
        Err(self.invalid("reduce_scatter", "uneven counts are not supported by the NCCL backend; pad to equal blocks".into()))
    }

    fn all_gather(&self, send: Buf<'_>, mut recv: BufMut<'_>) -> Result<()> {
        if recv.len() != send.len() * self.size || send.dtype() != recv.dtype() {
            return Err(self.invalid("all_gather", format!("recv has {} elements, expected {} x {}", recv.len(), self.size, send.len())));
        }
        let (n, t) = (send.len(), nccl_dtype(send.dtype()));
        // SAFETY: staging holds this rank's block then the full output.
        self.staged("all_gather", bytes_of(&send), Some(bytes_mut(&mut recv)), |i, o, s| unsafe {
            result::all_gather(i, o, n, t, self.comm, s)
        })
    }

    fn all_gather_v(&self, send: Buf<'_>, recv: BufMut<'_>, counts: &[usize]) -> Result<()> {
        if counts.iter().all(|&c| c == send.len()) {
            return self.all_gather(send, recv);
        }
        Err(self.invalid("all_gather", "uneven counts are not supported by the NCCL backend; pad to equal blocks".into()))
    }

    fn broadcast(&self, mut buf: BufMut<'_>, root: usize) -> Result<()> {
        if root >= self.size {
            return Err(self.invalid("broadcast", format!("root {root} is not a rank of a group of {}", self.size)));
        }
        let (n, t) = (buf.len(), nccl_dtype(buf.dtype()));
        let input = bytes_of(&buf.as_buf()).to_vec();
        // SAFETY: n elements in and out.
        self.staged("broadcast", &input, Some(bytes_mut(&mut buf)), |i, o, s| unsafe {
            result::broadcast(i, o, n, t, root as c_int, self.comm, s)
        })
    }

    fn send(&self, buf: Buf<'_>, dst: usize, _tag: u32) -> Result<()> {
        let (n, t) = (buf.len(), nccl_dtype(buf.dtype()));
        // SAFETY: n elements staged in.
        self.staged("send", bytes_of(&buf), None, |i, _, s| unsafe { result::send(i, n, t, dst as c_int, self.comm, s) })
    }

    fn recv(&self, mut buf: BufMut<'_>, src: usize, _tag: u32) -> Result<()> {
        let (n, t) = (buf.len(), nccl_dtype(buf.dtype()));
        // SAFETY: n elements staged out.
        self.staged("recv", &[], Some(bytes_mut(&mut buf)), |_, o, s| unsafe { result::recv(o, n, t, src as c_int, self.comm, s) })
    }

    fn barrier(&self) -> Result<()> {
        // NCCL has no barrier: an all-reduce of one float is one.
        let mut x = [0f32];
        self.all_reduce((&mut x[..]).into(), ReduceOp::Sum)
    }

    fn split(&self, _color: usize, _key: usize, _name: &str) -> Result<Box<dyn Communicator>> {
        Err(self.invalid("split", "split the bootstrap communicator and build one NcclComm per group".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_gpu_stack_init_is_an_error_not_a_panic() {
        // On a CUDA machine this builds a 1-rank NCCL communicator and all-reduces.
        let out = crate::run_local(1, Duration::from_secs(30), |c| match NcclComm::new(&c, 0, Duration::from_secs(30)) {
            Ok(n) => {
                let mut x = vec![2.0f32; 5];
                n.all_reduce((&mut x).into(), ReduceOp::Sum)?;
                assert_eq!(x, vec![2.0; 5]);
                Ok::<_, CommError>(true)
            }
            Err(CommError::Backend { backend: "nccl", message, .. }) => {
                assert!(message.contains("cannot load") || message.contains("CUDA"), "{message}");
                Ok(false)
            }
            Err(e) => Err(e),
        });
        assert!(out.is_ok(), "{out:?}");
    }

    #[test]
    fn dtypes_and_ops_map_to_nccl() {
        assert_eq!(nccl_dtype(DType::Bf16) as i32, sys::ncclDataType_t::ncclBfloat16 as i32);
        assert_eq!(nccl_op(ReduceOp::Avg) as i32, sys::ncclRedOp_t::ncclAvg as i32);
    }
}

//! Collectives on device buffers: what data and tensor parallelism over GPUs ask of
//! NCCL (sum or max all-reduce, sum reduce-scatter, all-gather), in the backend's own
//! views.
//!
//! * [`EmuComm`]: ranks of emulated devices (one per thread rank under `--workers N`, or
//!   per process under `mpirun`). Each call checks its buffers as NCCL would see them
//!   (device memory of this rank's device, the sizes the collective implies, no element
//!   never written), then runs the collective on that memory through the rank's
//!   [`Communicator`] (the thread or MPI backend), so its semantics and the counts in
//!   the flight records are the existing backend's.
//! * `NcclDeviceComm` (feature `nccl`): NCCL on the GPU's memory, no host copy; the
//!   compute stream is synchronised first, so the collective follows the backward that
//!   wrote its buffer while later kernels queue behind it.

use std::sync::Arc;

use comm::{BufMut, Communicator, ReduceOp};

use crate::backend::{Cuda, DevBuf};
use crate::device::{Device, Dtype};
use crate::emu::mem;
use model::backend::Buf as _;

/// Sum and gather collectives over a group of devices, one rank per device.
pub trait DeviceComm: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// `buf` reduced (summed, or the maximum) over the group, in place.
    fn all_reduce(&self, buf: &mut DevBuf, op: ReduceOp) -> Result<(), String>;
    /// `send` (size x `recv.len()` elements) summed over the group; this rank's block
    /// into `recv`.
    fn reduce_scatter_sum(&self, send: &DevBuf, recv: &mut DevBuf) -> Result<(), String>;
    /// Every rank's `send`, in rank order, into `recv` (size x `send.len()`).
    fn all_gather(&self, send: &DevBuf, recv: &mut DevBuf) -> Result<(), String>;
}

#[cfg(feature = "nccl")]
fn comm_dtype(d: Dtype) -> comm::DType {
    match d {
        Dtype::F32 => comm::DType::F32,
        Dtype::Bf16 => comm::DType::Bf16,
    }
}

/// The shape checks NCCL's arguments imply, shared by both implementations.
fn check_shapes(op: &str, size: usize, send: &DevBuf, recv: &DevBuf, send_is_whole: bool) -> Result<(), String> {
    if send.dtype() != recv.dtype() {
        return Err(format!("{op}: send is {:?}, recv {:?}", send.dtype(), recv.dtype()));
    }
    let (whole, block) = if send_is_whole { (send.len(), recv.len()) } else { (recv.len(), send.len()) };
    if whole != block * size {
        return Err(format!("{op} over {size} ranks: {whole} elements are not {size} blocks of {block}"));
    }
    Ok(())
}

/// Collectives of emulated devices through a host [`Communicator`] of the same ranks.
pub struct EmuComm {
    comm: Arc<dyn Communicator>,
    ordinal: usize,
    dev: Arc<dyn Device>,
}

impl EmuComm {
    /// The group of `comm`'s ranks, this one on `cuda`'s emulated device.
    pub fn new(comm: Arc<dyn Communicator>, cuda: &Cuda) -> Result<EmuComm, String> {
        let name = cuda.name();
        let ordinal = crate::device::parse_emu(&name).ok_or_else(|| format!("{name} is not an emulated device"))?;
        Ok(EmuComm { comm, ordinal, dev: cuda.dev.clone() })
    }

    /// `b` as host memory, after checking it is this device's and fully written.
    fn view(&self, op: &str, what: &str, b: &DevBuf, must_be_written: bool) -> Result<BufMut<'static>, String> {
        let ctx = || format!("{} {op} on cuda-emu:{}: {what}", self.comm.name(), self.ordinal);
        mem::check(self.ordinal, b.addr(), b.bytes(), &ctx)?;
        let (p, n) = (b.addr(), b.len());
        // SAFETY: checked above to lie inside a live allocation of this device; the
        // emulator's device memory is host memory, and the views of one call do not
        // overlap (distinct allocations or the one in-place buffer).
        let view = unsafe {
            match b.dtype() {
                Dtype::F32 => BufMut::F32(std::slice::from_raw_parts_mut(p as *mut f32, n)),
                Dtype::Bf16 => BufMut::Bf16(std::slice::from_raw_parts_mut(p as *mut half::bf16, n)),
            }
        };
        if must_be_written {
            let never = match &view {
                BufMut::F32(s) => s.iter().position(|x| x.to_bits() == mem::NEVER_WRITTEN_F32),
                BufMut::Bf16(s) => s.iter().position(|x| x.to_bits() == mem::NEVER_WRITTEN_BF16),
                BufMut::Bytes(_) => None,
            };
            if let Some(i) = never {
                return Err(format!("{}: reads element {i}, which was never written", ctx()));
            }
        }
        Ok(view)
    }

    fn sync(&self) -> Result<(), String> {
        self.dev.synchronize()
    }
}

impl DeviceComm for EmuComm {
    fn rank(&self) -> usize {
        self.comm.rank()
    }
    fn size(&self) -> usize {
        self.comm.size()
    }
    fn all_reduce(&self, buf: &mut DevBuf, op: ReduceOp) -> Result<(), String> {
        self.sync()?;
        let v = self.view("all_reduce", "buffer", buf, true)?;
        self.comm.all_reduce(v, op).map_err(|e| e.to_string())
    }
    fn reduce_scatter_sum(&self, send: &DevBuf, recv: &mut DevBuf) -> Result<(), String> {
        check_shapes("reduce_scatter", self.size(), send, recv, true)?;
        self.sync()?;
        let s = self.view("reduce_scatter", "send", send, true)?;
        let r = self.view("reduce_scatter", "recv", recv, false)?;
        self.comm.reduce_scatter(s.as_buf(), r, ReduceOp::Sum).map_err(|e| e.to_string())
    }
    fn all_gather(&self, send: &DevBuf, recv: &mut DevBuf) -> Result<(), String> {
        check_shapes("all_gather", self.size(), send, recv, false)?;
        self.sync()?;
        let s = self.view("all_gather", "send", send, true)?;
        let r = self.view("all_gather", "recv", recv, false)?;
        self.comm.all_gather(s.as_buf(), r).map_err(|e| e.to_string())
    }
}

/// NCCL on the GPU's own memory.
#[cfg(feature = "nccl")]
pub struct NcclDeviceComm {
    nccl: comm::nccl::NcclComm,
    dev: Arc<dyn Device>,
}

#[cfg(feature = "nccl")]
impl NcclDeviceComm {
    /// Collective over `bootstrap` (the same ranks): an NCCL communicator on GPU `ordinal`.
    pub fn new(bootstrap: &dyn Communicator, cuda: &Cuda, ordinal: usize, timeout: std::time::Duration) -> Result<NcclDeviceComm, String> {
        let nccl = comm::nccl::NcclComm::new(bootstrap, ordinal, timeout).map_err(|e| e.to_string())?;
        Ok(NcclDeviceComm { nccl, dev: cuda.dev.clone() })
    }
}

#[cfg(feature = "nccl")]
impl DeviceComm for NcclDeviceComm {
    fn rank(&self) -> usize {
        self.nccl.rank()
    }
    fn size(&self) -> usize {
        self.nccl.size()
    }
    fn all_reduce(&self, buf: &mut DevBuf, op: ReduceOp) -> Result<(), String> {
        self.dev.synchronize()?;
        // SAFETY: the view is device memory of this GPU of its stated length.
        unsafe { self.nccl.all_reduce_device(buf.addr(), buf.len(), comm_dtype(buf.dtype()), op) }.map_err(|e| e.to_string())
    }
    fn reduce_scatter_sum(&self, send: &DevBuf, recv: &mut DevBuf) -> Result<(), String> {
        check_shapes("reduce_scatter", self.size(), send, recv, true)?;
        self.dev.synchronize()?;
        // SAFETY: as above; the two views are distinct allocations.
        unsafe { self.nccl.reduce_scatter_device(send.addr(), recv.addr(), recv.len(), comm_dtype(send.dtype())) }.map_err(|e| e.to_string())
    }
    fn all_gather(&self, send: &DevBuf, recv: &mut DevBuf) -> Result<(), String> {
        check_shapes("all_gather", self.size(), send, recv, false)?;
        self.dev.synchronize()?;
        // SAFETY: as above.
        unsafe { self.nccl.all_gather_device(send.addr(), recv.addr(), send.len(), comm_dtype(send.dtype())) }.map_err(|e| e.to_string())
    }
}

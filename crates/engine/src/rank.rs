//! This rank's place in the mesh: its data-parallel group (and, with tensor
//! parallelism, its tensor-parallel group), the communicators it uses and a pool of
//! reusable bucket-sized buffers (gathered parameters, gradient scratch).
//!
//! World rank = tp_rank + tp * dp_rank (Megatron-LM's order, [`comm::Mesh`]): the ranks of
//! a tensor-parallel group are neighbours; a data-parallel group holds the ranks with
//! the same tp_rank.

use std::sync::Arc;

use comm::{AsyncComm, Communicator};

use crate::error::{EngineError, Result};

pub struct Rank {
    /// Blocking collectives (losses, norms, checkpoint records).
    pub comm: Arc<dyn Communicator>,
    /// Bucket collectives on a background thread, overlapping computation.
    pub stream: AsyncComm,
    /// The group of the background checkpoint writer (`checkpoint.async`), used by
    /// nothing else.
    pub ckpt: Arc<dyn Communicator>,
    /// Rank within the data-parallel group, and its size.
    pub rank: usize,
    pub dp: usize,
    /// Rank within the tensor-parallel group, and its size (1: no tensor parallelism).
    pub tp_rank: usize,
    pub tp: usize,
    /// The tensor-parallel group (`None` when `tp == 1`).
    pub tp_comm: Option<Arc<dyn Communicator>>,
    /// Every rank of the job (checkpoint commits and the stop vote when `tp > 1`;
    /// otherwise `comm` serves, being the whole job).
    pub world: Arc<dyn Communicator>,
    /// This rank's last collectives on both communicators (see `comm::flight`).
    pub flight: comm::flight::Recorder,
}

impl Rank {
    /// Splits `world` into the data-parallel group and its background stream.
    /// Both record their collectives in the rank's flight recorder.
    pub fn new(world: &dyn Communicator) -> Result<Rank> {
        Rank::with_tp(world, 1)
    }

    /// Splits `world` into data-parallel groups of `world.size() / tp` ranks and
    /// tensor-parallel groups of `tp` neighbouring ranks. Every communicator records
    /// its collectives in the rank's flight recorder.
    pub fn with_tp(world: &dyn Communicator, tp: usize) -> Result<Rank> {
        let n = world.size();
        if tp == 0 || !n.is_multiple_of(tp) {
            return Err(EngineError::Invalid(format!("parallel.tp = {tp} must divide the {n} ranks started")));
        }
        let flight = comm::flight::Recorder::new(world.rank(), comm::flight::DEFAULT_CAPACITY);
        let record = |c: Box<dyn Communicator>| -> Arc<dyn Communicator> { Arc::new(comm::flight::Recorded::new(c, flight.clone())) };
        let (tp_rank, dp_rank) = (world.rank() % tp, world.rank() / tp);
        let comm = record(world.split(tp_rank, dp_rank, "dp")?);
        let tp_comm = if tp > 1 { Some(record(world.split(dp_rank, tp_rank, "tp")?)) } else { None };
        let whole = if tp > 1 { record(world.split(0, world.rank(), "world")?) } else { Arc::clone(&comm) };
        let stream = AsyncComm::new(Arc::from(comm.split(0, comm.rank(), "dp.stream")?));
        // The background checkpoint writer commits over every rank of the job.
        let ckpt = Arc::from(whole.split(0, whole.rank(), "dp.ckpt")?);
        Ok(Rank { rank: comm.rank(), dp: comm.size(), tp_rank, tp, tp_comm, world: whole, comm, stream, ckpt, flight })
    }

    /// This rank's place in the whole job.
    pub fn world_rank(&self) -> usize {
        self.world.rank()
    }

    /// Sum of one f64 per rank of the tensor-parallel group, in rank order.
    pub fn sum_f64_tp(&self, x: f64) -> Result<f64> {
        match &self.tp_comm {
            None => Ok(x),
            Some(c) => sum_f64(c.as_ref(), x),
        }
    }

    /// A group of one (single-rank training).
    pub fn single() -> Result<Rank> {
        let mut world = comm::LocalWorld::new(1, std::time::Duration::from_secs(3600))?;
        let only = world.pop().ok_or_else(|| EngineError::Invalid("empty local world".into()))?;
        Rank::new(&only)
    }

    /// Sum of one f64 per rank, added in rank order (the same bits on every rank and
    /// for every backend).
    pub fn sum_f64(&self, x: f64) -> Result<f64> {
        sum_f64(self.comm.as_ref(), x)
    }

    /// Every rank's byte string, in rank order.
    pub fn gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        gather_bytes(self.comm.as_ref(), self.dp, mine)
    }
}

/// Sum of one f64 per rank of `comm`, added in rank order (the same bits on every rank).
pub(crate) fn sum_f64(comm: &dyn Communicator, x: f64) -> Result<f64> {
    if comm.size() == 1 {
        return Ok(x);
    }
    let send = x.to_le_bytes().to_vec();
    let mut recv = vec![0u8; 8 * comm.size()];
    comm.all_gather((&send[..]).into(), (&mut recv[..]).into())?;
    Ok(recv.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).sum())
}

/// Every rank's byte string of the group `comm` (of `dp` ranks), in rank order.
pub(crate) fn gather_bytes(comm: &dyn Communicator, dp: usize, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
    if dp == 1 {
        return Ok(vec![mine.to_vec()]);
    }
    let len = (mine.len() as u64).to_le_bytes().to_vec();
    let mut lens = vec![0u8; 8 * dp];
    comm.all_gather((&len[..]).into(), (&mut lens[..]).into())?;
    let counts: Vec<usize> = lens.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as usize).collect();
    let mut all = vec![0u8; counts.iter().sum()];
    comm.all_gather_v(mine.into(), (&mut all[..]).into(), &counts)?;
    let mut out = Vec::with_capacity(dp);
    let mut off = 0;
    for c in counts {
        out.push(all[off..off + c].to_vec());
        off += c;
    }
    Ok(out)
}

/// Reusable f32 buffers: a bucket's gathered parameters or gradient scratch are taken
/// for one use and given back, so steady-state steps allocate nothing.
#[derive(Default)]
pub struct Pool {
    free: Vec<Vec<f32>>,
}

impl Pool {
    /// A zeroed buffer of `len` elements.
    pub fn take(&mut self, len: usize) -> Vec<f32> {
        let pick = self.free.iter().position(|v| v.capacity() >= len);
        let mut v = match pick {
            Some(i) => self.free.swap_remove(i),
            None => Vec::with_capacity(len),
        };
        v.clear();
        v.resize(len, 0.0);
        v
    }

    pub fn give(&mut self, v: Vec<f32>) {
        self.free.push(v);
    }

    /// Bytes held by idle buffers.
    pub fn bytes(&self) -> usize {
        self.free.iter().map(|v| v.capacity() * 4).sum()
    }
}

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
    /// Pipeline stage and the number of stages (1: no pipeline parallelism).
    pub pp_rank: usize,
    pub pp: usize,
    /// The pipeline group and its point-to-point links (`None` when `pp == 1`).
    pub pipe: Option<PipeLinks>,
    /// Which of its machine's GPUs this rank uses, counted from `train.device`'s: the
    /// world rank for thread ranks of one process (`--workers N`), the node-local rank
    /// under an MPI launcher (set by the launcher's caller).
    pub gpu_index: usize,
}

/// A pipeline rank's communicators. Each link joins two neighbouring stages in one
/// direction (rank 0 of the link sends, rank 1 receives), so a rank's sends (on a
/// background thread) and receives (on its own thread) never share a communicator.
pub struct PipeLinks {
    /// The ranks of this pipeline (same tp and dp index): losses and norms are summed here.
    pub group: Arc<dyn Communicator>,
    /// Activations to the next stage and from the previous one.
    pub act_out: Option<AsyncComm>,
    pub act_in: Option<Arc<dyn Communicator>>,
    /// Gradients to the previous stage and from the next one.
    pub grad_out: Option<AsyncComm>,
    pub grad_in: Option<Arc<dyn Communicator>>,
    /// The first and last stage (the tied embedding's two copies), if this rank is one.
    pub ends: Option<Arc<dyn Communicator>>,
    /// Whether the last stage links back to the first (interleaved schedule).
    wrap: bool,
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
        Rank::with_mesh(world, tp, 1, false)
    }

    /// Splits `world` into the mesh `tp x dp x pp` (tp fastest, then dp, then pp:
    /// [`comm::Mesh`]'s order): tensor-parallel groups of `tp` neighbouring ranks,
    /// data-parallel groups of the ranks with the same tp index and stage, pipelines of
    /// the ranks with the same tp and dp index. `wrap` links the last stage back to the
    /// first (the interleaved schedule's chunk boundaries). Every communicator records
    /// its collectives in the rank's flight recorder.
    pub fn with_mesh(world: &dyn Communicator, tp: usize, pp: usize, wrap: bool) -> Result<Rank> {
        let n = world.size();
        if tp == 0 || pp == 0 || !n.is_multiple_of(tp * pp) {
            return Err(EngineError::Invalid(format!(
                "parallel.tp x parallel.pp = {tp} x {pp} = {} must divide the {n} ranks started",
                tp * pp
            )));
        }
        let dp = n / (tp * pp);
        let flight = comm::flight::Recorder::new(world.rank(), comm::flight::DEFAULT_CAPACITY);
        let record = |c: Box<dyn Communicator>| -> Arc<dyn Communicator> { Arc::new(comm::flight::Recorded::new(c, flight.clone())) };
        let r = world.rank();
        let (tp_rank, dp_rank, pp_rank) = (r % tp, (r / tp) % dp, r / (tp * dp));
        let comm = record(world.split(tp_rank + tp * pp_rank, dp_rank, "dp")?);
        let tp_comm = if tp > 1 { Some(record(world.split(dp_rank + dp * pp_rank, tp_rank, "tp")?)) } else { None };
        let whole = if tp * pp > 1 { record(world.split(0, r, "world")?) } else { Arc::clone(&comm) };
        let pipe = if pp > 1 { Some(PipeLinks::new(record(world.split(tp_rank + tp * dp_rank, pp_rank, "pp")?), wrap, tp_rank + tp * dp_rank)?) } else { None };
        let stream = AsyncComm::new(Arc::from(comm.split(0, comm.rank(), "dp.stream")?));
        // The background checkpoint writer commits over every rank of the job.
        let ckpt = Arc::from(whole.split(0, whole.rank(), "dp.ckpt")?);
        Ok(Rank { rank: comm.rank(), dp: comm.size(), tp_rank, tp, tp_comm, world: whole, comm, stream, ckpt, flight, pp_rank, pp, pipe, gpu_index: r })
    }

    /// This rank's place in the layout `cfg.parallel` describes.
    pub fn for_config(world: &dyn Communicator, cfg: &config::ResolvedConfig) -> Result<Rank> {
        let p = &cfg.raw.parallel;
        Rank::with_mesh(world, p.tp, p.pp, p.virtual_stages > 1)
    }

    /// Sum of one f64 per stage of this rank's pipeline, in stage order.
    pub fn sum_f64_pp(&self, x: f64) -> Result<f64> {
        match &self.pipe {
            None => Ok(x),
            Some(p) => sum_f64(p.group.as_ref(), x),
        }
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

impl PipeLinks {
    pub fn wraps(&self) -> bool {
        self.wrap
    }

    /// `group` records its collectives (see `comm::flight`), and so do its splits.
    /// `pipe` numbers this pipeline among the job's (its links' names carry it, so that
    /// a diagnosis keeps different pipelines' links apart).
    fn new(group: Arc<dyn Communicator>, wrap: bool, pipe: usize) -> Result<PipeLinks> {
        let (p, pp) = (group.rank(), group.size());
        let mut links = PipeLinks { act_out: None, act_in: None, grad_out: None, grad_in: None, ends: None, group: Arc::clone(&group), wrap };
        // Boundary s joins stage s and stage s + 1 (mod pp with `wrap`). Every rank takes
        // part in every split (a collective); the ranks outside a boundary drop theirs.
        let boundaries = if wrap { pp } else { pp - 1 };
        for s in 0..boundaries {
            let (lo, hi) = (s, (s + 1) % pp);
            let member = p == lo || p == hi;
            // Activations flow lo -> hi (lo is the link's rank 0), gradients hi -> lo.
            let act = group.split(usize::from(!member), usize::from(p != lo), &format!("pp.act[{lo}->{hi}]#{pipe}"))?;
            let grad = group.split(usize::from(!member), usize::from(p != hi), &format!("pp.grad[{hi}->{lo}]#{pipe}"))?;
            if p == lo {
                links.act_out = Some(AsyncComm::new(Arc::from(act)));
                links.grad_in = Some(Arc::from(grad));
            } else if p == hi {
                links.act_in = Some(Arc::from(act));
                links.grad_out = Some(AsyncComm::new(Arc::from(grad)));
            }
        }
        let end = p == 0 || p + 1 == pp;
        let ends = group.split(usize::from(!end), p, "pp.ends")?;
        if end {
            links.ends = Some(Arc::from(ends));
        }
        Ok(links)
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

//! # hyperion-comm: collective communication for Hyperion
//!
//! Many ranks act as one through a [`Communicator`]: `all_reduce` (sum, max, avg),
//! `reduce_scatter`, `all_gather` (equal or uneven counts), `broadcast`, point-to-point
//! `send`/`recv` and `barrier`, on `f32`, `bf16` and bytes. Backends:
//!
//! * [`local`]: ranks are threads of one process sharing memory (the default, no
//!   system dependency). Collectives copy straight between the ranks' buffers.
//! * `mpi` (cargo feature `mpi`): processes under `mpirun`/`srun`, over the system MPI.
//! * `nccl` (cargo feature `nccl`): GPUs, through cudarc's dynamically loaded NCCL.
//!
//! A [`Mesh`] names the axes `dp`, `tp`, `pp` and gives one communicator per axis
//! group; the group computation is the pure function [`MeshShape::group`]. Every
//! collective has a timeout, and a rank that fails poisons the world so the others get
//! an error naming it instead of hanging. [`AsyncComm`] runs collectives on a
//! background thread so that communication overlaps computation.
//!
//! ```
//! use comm::{run_local, Communicator, ReduceOp};
//! use std::time::Duration;
//!
//! // Four ranks as threads; each contributes its rank, all see the sum.
//! let sums = run_local(4, Duration::from_secs(10), |c| {
//!     let mut x = vec![c.rank() as f32; 3];
//!     c.all_reduce((&mut x).into(), ReduceOp::Sum)?;
//!     Ok::<_, comm::CommError>(x)
//! })
//! .unwrap();
//! assert!(sums.iter().all(|x| x == &vec![6.0; 3]));
//! ```

mod asyncop;
pub mod bench;
pub mod flight;
mod buf;
mod error;
pub mod local;
mod mesh;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;

pub use asyncop::{AsyncComm, Handle, OwnedBuf};
pub use buf::{reduce_reference, Buf, BufMut, DType, ReduceOp};
pub use error::{CommError, Result};
pub use local::{run_local, LocalComm, LocalWorld};
pub use mesh::{Axis, Coords, Mesh, MeshShape};

/// A group of ranks that run collectives together (an MPI communicator, in spirit).
///
/// Every rank of the group must call the same collectives in the same order with
/// matching lengths; the local backend checks this and returns
/// [`CommError::Mismatch`]. Calls block until this rank's part is done; they return an
/// error rather than hang when a peer fails or the timeout passes.
///
/// Object-safe: engines hold `Arc<dyn Communicator>`. Buffers are passed as
/// [`Buf`]/[`BufMut`]; `(&mut v).into()` converts a `Vec`/slice of `f32`, `bf16` or `u8`.
///
/// Counts: `reduce_scatter` and `all_gather` split a vector of `n * size` elements into
/// `size` equal blocks, block `r` belonging to rank `r`; the `_v` forms take one count
/// per rank (uneven blocks, in rank order).
pub trait Communicator: Send + Sync {
    /// This rank's index in the group, `0..size`.
    fn rank(&self) -> usize;
    /// Number of ranks in the group.
    fn size(&self) -> usize;
    /// Human-readable group name used in errors (`world`, `dp[pp=0,tp=1]`, ...).
    fn name(&self) -> &str;

    /// In place: every rank's `buf` becomes the element-wise reduction over ranks.
    fn all_reduce(&self, buf: BufMut<'_>, op: ReduceOp) -> Result<()>;
    /// `recv` (n elements) becomes the reduction of block `rank` of every rank's
    /// `send` (`n * size` elements).
    fn reduce_scatter(&self, send: Buf<'_>, recv: BufMut<'_>, op: ReduceOp) -> Result<()>;
    /// Uneven `reduce_scatter`: `send` holds `counts.iter().sum()` elements, `recv`
    /// holds `counts[rank]`.
    fn reduce_scatter_v(&self, send: Buf<'_>, recv: BufMut<'_>, counts: &[usize], op: ReduceOp) -> Result<()>;
    /// Block `r` of `recv` (`n * size` elements) becomes rank `r`'s `send` (n elements).
    fn all_gather(&self, send: Buf<'_>, recv: BufMut<'_>) -> Result<()>;
    /// Uneven `all_gather`: rank `r` contributes `counts[r]` elements.
    fn all_gather_v(&self, send: Buf<'_>, recv: BufMut<'_>, counts: &[usize]) -> Result<()>;
    /// In place: every rank's `buf` becomes rank `root`'s.
    fn broadcast(&self, buf: BufMut<'_>, root: usize) -> Result<()>;
    /// Blocking send to rank `dst` (returns once the message is delivered or buffered).
    /// Messages between two ranks are received in the order they were sent; `tag` is
    /// checked on receipt.
    fn send(&self, buf: Buf<'_>, dst: usize, tag: u32) -> Result<()>;
    /// Blocking receive from rank `src` into `buf` (lengths and tags must match).
    fn recv(&self, buf: BufMut<'_>, src: usize, tag: u32) -> Result<()>;
    /// Wait until every rank of the group has arrived.
    fn barrier(&self) -> Result<()>;
    /// Collective over this group: ranks passing the same `color` form a new group,
    /// ordered by `(key, rank)`. `name` labels the new group in errors.
    fn split(&self, color: usize, key: usize, name: &str) -> Result<Box<dyn Communicator>>;
}

/// Element offsets of the blocks described by `counts`: `offsets[r]..offsets[r]+counts[r]`.
pub fn block_offset(counts: &[usize], rank: usize) -> usize {
    counts[..rank].iter().sum()
}

/// The even split of `n` elements over `size` ranks used across Hyperion: the first
/// `n % size` ranks get one element more. Returns `(offset, count)` of `rank`'s block.
pub fn even_block(n: usize, size: usize, rank: usize) -> (usize, usize) {
    let base = n / size;
    let extra = n % size;
    let count = base + usize::from(rank < extra);
    let offset = rank * base + rank.min(extra);
    (offset, count)
}

//! The crate's one error type. Every variant names the rank that saw the problem, the
//! collective it was running and the group it ran on, so that a log line from one of
//! many ranks is enough to find the cause.

use std::time::Duration;

/// Everything that can go wrong in a collective or while building communicators.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    /// This rank waited longer than the configured timeout for its peers.
    #[error("rank {rank}: {op} on group '{group}' timed out after {waited:?}; ranks {missing:?} of the group had not arrived")]
    Timeout {
        rank: usize,
        op: &'static str,
        group: String,
        waited: Duration,
        /// Group ranks that had not reached the collective when the timer fired.
        missing: Vec<usize>,
    },

    /// Another rank failed (error, panic, timeout or left), so this rank's collective
    /// was aborted instead of hanging.
    #[error("rank {rank}: {op} on group '{group}' aborted because world rank {failed_rank} failed ({failed_in}): {cause}")]
    PeerFailed {
        rank: usize,
        op: &'static str,
        group: String,
        failed_rank: usize,
        /// Where the failing rank was: `"<collective> on group '<name>'"`.
        failed_in: String,
        cause: String,
    },

    /// Ranks of one group called different collectives, or the same collective with
    /// different lengths, data types, roots or counts.
    #[error("rank {rank}: collective mismatch on group '{group}': rank 0 called {expected}, rank {other_rank} called {found}")]
    Mismatch { rank: usize, group: String, other_rank: usize, expected: String, found: String },

    /// An argument is wrong on this rank alone (lengths, root out of range, ...).
    #[error("rank {rank}: invalid argument to {op} on group '{group}': {reason}")]
    InvalidArgument { rank: usize, op: &'static str, group: String, reason: String },

    /// Two threads used the same communicator at once; collectives on one
    /// communicator must be issued in one order by one thread (use `split` for a second
    /// stream, e.g. for `AsyncComm`).
    #[error("rank {rank}: {op} on group '{group}' started while another collective on the same communicator was running")]
    ConcurrentUse { rank: usize, op: &'static str, group: String },

    /// A `Mesh` whose axis sizes do not multiply to the world size, or a zero size.
    #[error("mesh dp={dp} x tp={tp} x pp={pp} = {product} does not match world size {world_size}")]
    DegreeMismatch { dp: usize, tp: usize, pp: usize, product: usize, world_size: usize },

    /// A world of zero ranks, a bad size string, and other configuration errors.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A rank-thread failed inside `run_local`; carries its rank and what happened.
    #[error("rank {rank} failed: {cause}")]
    RankFailed { rank: usize, cause: String },

    /// The MPI or NCCL library reported an error (or could not be loaded).
    #[error("rank {rank}: {backend} error in {op} on group '{group}': {message}")]
    Backend { rank: usize, backend: &'static str, op: &'static str, group: String, message: String },
}

/// Short alias used across the crate.
pub type Result<T, E = CommError> = std::result::Result<T, E>;

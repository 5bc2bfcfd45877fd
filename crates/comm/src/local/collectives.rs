//! The data movement of the local backend's collectives (see the protocol in
//! `group.rs`). Raw pointers to peers' buffers come from their published slots; each
//! `unsafe` block relies on the protocol's two invariants: a peer's published buffer
//! stays borrowed by its call until the exit barrier, and during a data phase every rank
//! writes only memory that no peer reads in that phase.

use std::sync::Arc;
use std::time::Instant;

use half::bf16;

use super::group::{lock, Failure, Group, Op, Post, Slot};
use super::LocalComm;
use crate::buf::{Buf, BufMut, DType, Elem, ReduceOp};
use crate::error::{CommError, Result};
use crate::{block_offset, even_block};

/// Elements reduced per tile: the f32 accumulator (16 KiB) stays in L1 while `p`
/// input tiles stream through it, so each input byte is read from memory once.
const TILE: usize = 4096;

/// `dst[..len] = reduce_j src_j[..len]` in rank order `j = 0..p`, accumulating in f32.
///
/// # Safety
/// Every `srcs[j]` points at `len` readable `T`, `dst` at `len` writable `T`; `dst` may
/// equal one of the sources (element-wise in-place), and no other thread writes any of
/// them during the call.
unsafe fn reduce_into<T: Elem>(srcs: &[usize], dst: *mut T, len: usize, op: ReduceOp, scale: Option<f32>) {
    let mut acc = [0f32; TILE];
    let mut start = 0;
    while start < len {
        let m = TILE.min(len - start);
        let acc = &mut acc[..m];
        T::load(acc, std::slice::from_raw_parts((srcs[0] as *const T).add(start), m));
        for &s in &srcs[1..] {
            T::combine(acc, std::slice::from_raw_parts((s as *const T).add(start), m), op);
        }
        if let Some(p) = scale {
            acc.iter_mut().for_each(|a| *a /= p);
        }
        // The source slices above are dead here, so writing `dst` (possibly one of
        // them) through a fresh slice aliases nothing live.
        T::store(std::slice::from_raw_parts_mut(dst.add(start), m), acc);
        start += m;
    }
}

/// Reduce with the element type of `dtype` (bytes cannot be reduced).
unsafe fn reduce_dyn(dtype: DType, srcs: &[usize], dst: usize, len: usize, op: ReduceOp, scale: Option<f32>) {
    match dtype {
        DType::F32 => reduce_into(srcs, dst as *mut f32, len, op, scale),
        DType::Bf16 => reduce_into(srcs, dst as *mut bf16, len, op, scale),
        DType::U8 => {}
    }
}

/// Up to this many ranks, source pointers live on the stack (no allocation per call).
const MAX_STACK_RANKS: usize = 64;

impl LocalComm {
    fn g(&self) -> &Group {
        &self.group
    }

    /// Publish, wait for everyone, and check that all ranks called the same thing.
    /// On a mismatch every rank sees the same slots, so all of them return the error
    /// (after one more barrier, so nobody republishes while others still compare).
    fn publish_and_match(&self, slot: Slot) -> Result<()> {
        let g = self.g();
        // SAFETY: we are group rank `self.rank` inside `run` (busy flag held), before
        // the first barrier of this collective.
        unsafe { g.publish(self.rank, slot) };
        g.barrier(self.rank, slot.op)?;
        // SAFETY: between the first and the exit barrier.
        let first = unsafe { g.slot(0) };
        for r in 1..g.size {
            let other = unsafe { g.slot(r) };
            if !unsafe { first.matches(&other) } {
                g.barrier(self.rank, slot.op)?;
                return Err(CommError::Mismatch {
                    rank: self.rank,
                    group: g.name.clone(),
                    other_rank: r,
                    expected: first.describe(),
                    found: other.describe(),
                });
            }
        }
        Ok(())
    }

    /// The peers' published addresses (`send` or `recv` field), on the stack.
    fn addrs(&self, pick: impl Fn(&Slot) -> usize, out: &mut [usize; MAX_STACK_RANKS]) -> usize {
        let g = self.g();
        for (r, o) in out.iter_mut().enumerate().take(g.size) {
            // SAFETY: called between the first and the exit barrier.
            *o = pick(&unsafe { g.slot(r) });
        }
        g.size
    }

    fn check_ranks(&self, op: Op) -> Result<()> {
        if self.g().size > MAX_STACK_RANKS {
            return Err(self.invalid(op, format!("the local backend supports at most {MAX_STACK_RANKS} ranks per group")));
        }
        Ok(())
    }

    pub(super) fn all_reduce_impl(&self, mut buf: BufMut<'_>, op: ReduceOp) -> Result<()> {
        let g = self.g();
        let (p, r) = (g.size, self.rank);
        self.check_ranks(Op::AllReduce)?;
        if buf.dtype() == DType::U8 {
            return Err(self.invalid(Op::AllReduce, "reductions are defined on f32 and bf16, not bytes".into()));
        }
        let n = buf.len();
        let mut slot = Slot::new(Op::AllReduce, buf.dtype());
        slot.reduce = Some(op);
        slot.len = n;
        slot.recv = buf.as_mut_ptr() as usize;
        self.publish_and_match(slot)?;
        let esz = buf.dtype().size();
        let mut addrs = [0usize; MAX_STACK_RANKS];
        self.addrs(|s| s.recv, &mut addrs);
        let scale = (op == ReduceOp::Avg && p > 1).then_some(p as f32);
        // Phase 1: reduce block r of every buffer into block r of ours.
        {
            let _active = g.enter_data(r, Op::AllReduce)?;
            let (off, cnt) = even_block(n, p, r);
            let mut srcs = [0usize; MAX_STACK_RANKS];
            for j in 0..p {
                srcs[j] = addrs[j] + off * esz;
            }
            // SAFETY: peers write only their own block of their own buffer in this
            // phase; block r of each buffer is read here only.
            unsafe { reduce_dyn(buf.dtype(), &srcs[..p], addrs[r] + off * esz, cnt, op, scale) };
        }
        g.barrier(r, Op::AllReduce)?;
        // Phase 2: gather every other rank's reduced block.
        {
            let _active = g.enter_data(r, Op::AllReduce)?;
            for q in (0..p).filter(|&q| q != r) {
                let (off, cnt) = even_block(n, p, q);
                // SAFETY: block q of rank q's buffer is final and no longer written;
                // block q of our buffer is written only by us.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        (addrs[q] + off * esz) as *const u8,
                        (addrs[r] + off * esz) as *mut u8,
                        cnt * esz,
                    )
                };
            }
        }
        g.barrier(r, Op::AllReduce)
    }

    pub(super) fn reduce_scatter_impl(
        &self,
        send: Buf<'_>,
        mut recv: BufMut<'_>,
        counts: Option<&[usize]>,
        op: ReduceOp,
    ) -> Result<()> {
        let g = self.g();
        let (p, r) = (g.size, self.rank);
        let o = Op::ReduceScatter;
        self.check_ranks(o)?;
        if send.dtype() != recv.dtype() {
            return Err(self.invalid(o, format!("send is {} but recv is {}", send.dtype(), recv.dtype())));
        }
        if send.dtype() == DType::U8 {
            return Err(self.invalid(o, "reductions are defined on f32 and bf16, not bytes".into()));
        }
        let (off, cnt) = self.block_of(o, send.len(), recv.len(), counts)?;
        let mut slot = Slot::new(o, send.dtype());
        slot.reduce = Some(op);
        slot.len = send.len();
        slot.recv_len = recv.len();
        slot.counts = counts.map_or((0, 0), |c| (c.as_ptr() as usize, c.len()));
        slot.send = send.as_ptr() as usize;
        self.publish_and_match(slot)?;
        let esz = send.dtype().size();
        let mut addrs = [0usize; MAX_STACK_RANKS];
        self.addrs(|s| s.send, &mut addrs);
        {
            let _active = g.enter_data(r, o)?;
            for a in addrs.iter_mut().take(p) {
                *a += off * esz;
            }
            let scale = (op == ReduceOp::Avg && p > 1).then_some(p as f32);
            // SAFETY: send buffers are only read during this phase; recv is ours.
            unsafe { reduce_dyn(send.dtype(), &addrs[..p], recv.as_mut_ptr() as usize, cnt, op, scale) };
        }
        g.barrier(r, o)
    }

    /// (offset, count) of this rank's block, after checking `send`/`recv` lengths.
    fn block_of(&self, o: Op, send_len: usize, recv_len: usize, counts: Option<&[usize]>) -> Result<(usize, usize)> {
        let (p, r) = (self.g().size, self.rank);
        match counts {
            None => {
                if send_len != recv_len * p {
                    return Err(self.invalid(o, format!("full buffer has {send_len} elements, expected {p} x {recv_len}")));
                }
                Ok((r * recv_len, recv_len))
            }
            Some(c) => {
                if c.len() != p {
                    return Err(self.invalid(o, format!("{} counts for a group of {p} ranks", c.len())));
                }
                let total: usize = c.iter().sum();
                if send_len != total || recv_len != c[r] {
                    return Err(self.invalid(
                        o,
                        format!("full buffer has {send_len} elements and block {recv_len}, counts say {total} and {}", c[r]),
                    ));
                }
                Ok((block_offset(c, r), c[r]))
            }
        }
    }

    pub(super) fn all_gather_impl(&self, send: Buf<'_>, mut recv: BufMut<'_>, counts: Option<&[usize]>) -> Result<()> {
        let g = self.g();
        let (p, r) = (g.size, self.rank);
        let o = Op::AllGather;
        self.check_ranks(o)?;
        if send.dtype() != recv.dtype() {
            return Err(self.invalid(o, format!("send is {} but recv is {}", send.dtype(), recv.dtype())));
        }
        self.block_of(o, recv.len(), send.len(), counts)?;
        let mut slot = Slot::new(o, send.dtype());
        slot.len = send.len();
        slot.recv_len = recv.len();
        slot.counts = counts.map_or((0, 0), |c| (c.as_ptr() as usize, c.len()));
        slot.send = send.as_ptr() as usize;
        self.publish_and_match(slot)?;
        let esz = send.dtype().size();
        let mut addrs = [0usize; MAX_STACK_RANKS];
        self.addrs(|s| s.send, &mut addrs);
        let dst = recv.as_mut_ptr();
        {
            let _active = g.enter_data(r, o)?;
            let mut off = 0;
            for (q, &src) in addrs.iter().enumerate().take(p) {
                let cnt = counts.map_or(send.len(), |c| c[q]);
                // SAFETY: peers' send buffers are only read; recv is ours and holds
                // the sum of all counts (checked in block_of).
                unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.add(off * esz), cnt * esz) };
                off += cnt;
            }
        }
        g.barrier(r, o)
    }

    pub(super) fn broadcast_impl(&self, mut buf: BufMut<'_>, root: usize) -> Result<()> {
        let g = self.g();
        let o = Op::Broadcast;
        if root >= g.size {
            return Err(self.invalid(o, format!("root {root} is not a rank of a group of {}", g.size)));
        }
        let mut slot = Slot::new(o, buf.dtype());
        slot.len = buf.len();
        slot.root = root;
        slot.recv = buf.as_mut_ptr() as usize;
        self.publish_and_match(slot)?;
        if self.rank != root {
            let _active = g.enter_data(self.rank, o)?;
            // SAFETY: the root's buffer is only read in this phase; lengths match
            // (checked by publish_and_match).
            let src = unsafe { g.slot(root) }.recv;
            unsafe { std::ptr::copy_nonoverlapping(src as *const u8, buf.as_mut_ptr(), buf.len() * buf.dtype().size()) };
        }
        g.barrier(self.rank, o)
    }

    pub(super) fn barrier_impl(&self) -> Result<()> {
        self.publish_and_match(Slot::new(Op::Barrier, DType::U8))?;
        self.g().barrier(self.rank, Op::Barrier)
    }

    pub(super) fn split_impl(&self, color: usize, key: usize, name: &str) -> Result<LocalComm> {
        let g = self.g();
        let seq = self.split_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut slot = Slot::new(Op::Split, DType::U8);
        slot.root = color;
        slot.key = key;
        self.publish_and_match(slot)?;
        // Members of our color, ordered by (key, parent rank) as MPI_Comm_split does.
        let mut members: Vec<(usize, usize)> = (0..g.size)
            // SAFETY: between the first and the exit barrier.
            .map(|r| (unsafe { g.slot(r) }, r))
            .filter(|(s, _)| s.root == color)
            .map(|(s, r)| (s.key, r))
            .collect();
        members.sort_unstable();
        let new_rank = members.iter().position(|&(_, r)| r == self.rank).unwrap_or(0);
        let sub = {
            let mut splits = lock(&g.splits);
            let entry = splits.entry((seq, color)).or_insert_with(|| {
                let world_ranks = members.iter().map(|&(_, r)| g.world_ranks[r]).collect();
                (Group::new(&g.world, name, world_ranks, g.timeout), members.len())
            });
            let sub: Arc<Group> = entry.0.clone();
            entry.1 -= 1;
            if entry.1 == 0 {
                splits.remove(&(seq, color));
            }
            sub
        };
        g.barrier(self.rank, Op::Split)?;
        Ok(LocalComm::new(sub, new_rank))
    }

    pub(super) fn send_impl(&self, buf: Buf<'_>, dst: usize, tag: u32) -> Result<()> {
        let g = self.g();
        let o = Op::Send;
        if dst >= g.size || dst == self.rank {
            return Err(self.invalid(o, format!("destination {dst} is not another rank of a group of {}", g.size)));
        }
        let pair = &g.pairs[self.rank * g.size + dst];
        let start = Instant::now();
        let mut st = lock(&pair.state);
        st.posted = Some(Post { ptr: buf.as_ptr() as usize, len: buf.len(), dtype: buf.dtype(), tag });
        st.posted_seq += 1;
        let mine = st.posted_seq;
        pair.cv.notify_all();
        // Rendezvous: the receiver copies out of our buffer under this lock, so once
        // done_seq reaches ours (or we withdraw the post) the buffer is free again.
        loop {
            if st.done_seq >= mine {
                return Ok(());
            }
            if g.world.is_failed() {
                st.posted = None;
                return Err(g.peer_failed(self.rank, o));
            }
            if g.departed_rank() == Some(dst) {
                st.posted = None;
                drop(st);
                return Err(self.peer_left(o, dst));
            }
            let waited = start.elapsed();
            if waited >= g.timeout {
                st.posted = None;
                drop(st);
                self.timeout_p2p(o, dst, waited);
                return Err(CommError::Timeout { rank: self.rank, op: o.name(), group: g.name.clone(), waited, missing: vec![dst] });
            }
            let slice = (g.timeout - waited).min(std::time::Duration::from_millis(50));
            st = pair.cv.wait_timeout(st, slice).map(|(s, _)| s).unwrap_or_else(|e| e.into_inner().0);
        }
    }

    pub(super) fn recv_impl(&self, mut buf: BufMut<'_>, src: usize, tag: u32) -> Result<()> {
        let g = self.g();
        let o = Op::Recv;
        if src >= g.size || src == self.rank {
            return Err(self.invalid(o, format!("source {src} is not another rank of a group of {}", g.size)));
        }
        let pair = &g.pairs[src * g.size + self.rank];
        let start = Instant::now();
        let mut st = lock(&pair.state);
        loop {
            if let Some(post) = st.posted {
                if post.len != buf.len() || post.dtype != buf.dtype() || post.tag != tag {
                    return Err(self.invalid(
                        o,
                        format!(
                            "rank {src} sent {} x {} with tag {}, this rank expects {} x {} with tag {tag}",
                            post.len,
                            post.dtype,
                            post.tag,
                            buf.len(),
                            buf.dtype()
                        ),
                    ));
                }
                // SAFETY: the sender is blocked in send_impl until done_seq moves, and
                // it can only withdraw the post under this lock, which we hold.
                unsafe { std::ptr::copy_nonoverlapping(post.ptr as *const u8, buf.as_mut_ptr(), post.len * post.dtype.size()) };
                st.posted = None;
                st.done_seq += 1;
                pair.cv.notify_all();
                return Ok(());
            }
            if g.world.is_failed() {
                return Err(g.peer_failed(self.rank, o));
            }
            if g.departed_rank() == Some(src) {
                drop(st);
                return Err(self.peer_left(o, src));
            }
            let waited = start.elapsed();
            if waited >= g.timeout {
                drop(st);
                self.timeout_p2p(o, src, waited);
                return Err(CommError::Timeout { rank: self.rank, op: o.name(), group: g.name.clone(), waited, missing: vec![src] });
            }
            let slice = (g.timeout - waited).min(std::time::Duration::from_millis(50));
            st = pair.cv.wait_timeout(st, slice).map(|(s, _)| s).unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// The peer of a send/recv dropped its communicator: fail the world naming it.
    fn peer_left(&self, o: Op, peer: usize) -> CommError {
        let g = self.g();
        g.world.poison(Failure {
            world_rank: g.world_ranks[peer],
            op: "(left)".into(),
            group: g.name.clone(),
            cause: format!("rank {peer} of group '{}' dropped its communicator", g.name),
        });
        g.peer_failed(self.rank, o)
    }

    fn timeout_p2p(&self, o: Op, peer: usize, waited: std::time::Duration) {
        self.g().world.poison(Failure {
            world_rank: self.world_rank(),
            op: o.name().into(),
            group: self.g().name.clone(),
            cause: format!("timed out after {waited:?} waiting for group rank {peer}"),
        });
    }
}

//! The model's [`Backend`] over device memory: cuBLAS for every GEMM (f32, pedantic math:
//! no TF32, so it can be compared with the CPU), this crate's kernels for the rest, the
//! attention with its probabilities materialised (the correctness path).
//!
//! Device views. The model carves buffers into views (`&B::Buf`, `slice`, `split_at_mut`)
//! and the borrow checker keeps mutable views exclusive. A device view here is a slice
//! of a zero-sized element type whose data pointer is the device address: a slice of
//! zero-sized elements occupies no memory, so the reference is valid without the
//! address being host memory, and every view operation is written out below (computing
//! the address of element `i` as `base + 4 i`); the bytes behind it are only ever
//! touched by the device.
//!
//! Status (issue 10): compiled here, not yet run on a GPU (no device in this session):
//! `tests/gpu_backend.rs` checks each op against the CPU backend on a GPU and skips
//! without one.

use std::ops::{Deref, DerefMut, Range};
use std::sync::{Arc, Mutex};

use cudarc::cublas::sys as blas;
use cudarc::driver::{result as drv, LaunchConfig, PushKernelArg};
use model::backend::{Backend, Buf, WeightLayout};
use model::spec::{Mlp, Norm};

use crate::gpu::Gpu;

/// The element of a device view: occupies no host memory (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct Dev;

/// A view of `len()` f32 elements of device memory.
#[repr(transparent)]
pub struct DevBuf([Dev]);

/// A non-null address for empty views.
const EMPTY: u64 = 256;

impl DevBuf {
    fn at<'a>(addr: u64, len: usize) -> &'a DevBuf {
        // SAFETY: DevBuf is a transparent slice of a zero-sized type: any non-null
        // address is valid for it and no memory is read through it.
        unsafe { &*(std::ptr::slice_from_raw_parts(addr.max(1) as *const Dev, len) as *const DevBuf) }
    }
    fn at_mut<'a>(addr: u64, len: usize) -> &'a mut DevBuf {
        // SAFETY: as `at`; exclusivity is the caller's (views come from disjoint ranges).
        unsafe { &mut *(std::ptr::slice_from_raw_parts_mut(addr.max(1) as *mut Dev, len) as *mut DevBuf) }
    }
    /// The device address of element 0.
    pub fn addr(&self) -> u64 {
        self.0.as_ptr() as u64
    }
}

impl Buf for DevBuf {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn slice(&self, r: Range<usize>) -> &Self {
        assert!(r.start <= r.end && r.end <= self.len(), "device view {r:?} out of 0..{}", self.len());
        DevBuf::at(self.addr() + 4 * r.start as u64, r.len())
    }
    fn slice_mut(&mut self, r: Range<usize>) -> &mut Self {
        assert!(r.start <= r.end && r.end <= self.len(), "device view {r:?} out of 0..{}", self.len());
        DevBuf::at_mut(self.addr() + 4 * r.start as u64, r.len())
    }
    fn split_at(&self, mid: usize) -> (&Self, &Self) {
        assert!(mid <= self.len());
        (DevBuf::at(self.addr(), mid), DevBuf::at(self.addr() + 4 * mid as u64, self.len() - mid))
    }
    fn split_at_mut(&mut self, mid: usize) -> (&mut Self, &mut Self) {
        assert!(mid <= self.len());
        let (a, n) = (self.addr(), self.len());
        (DevBuf::at_mut(a, mid), DevBuf::at_mut(a + 4 * mid as u64, n - mid))
    }
}

/// An owned device allocation of f32 elements, freed on drop.
pub struct DevVec {
    ptr: u64,
    len: usize,
    gpu: Arc<Gpu>,
}

impl Deref for DevVec {
    type Target = DevBuf;
    fn deref(&self) -> &DevBuf {
        DevBuf::at(self.ptr, self.len)
    }
}

impl DerefMut for DevVec {
    fn deref_mut(&mut self) -> &mut DevBuf {
        DevBuf::at_mut(self.ptr, self.len)
    }
}

impl Drop for DevVec {
    fn drop(&mut self) {
        if self.ptr != EMPTY {
            let _ = self.gpu.ctx.bind_to_thread();
            // Kernels queued on the stream may still read it.
            let _ = self.gpu.stream.synchronize();
            // SAFETY: allocated by `Cuda::alloc`, freed once.
            unsafe {
                let _ = drv::free_sync(self.ptr);
            }
        }
    }
}

/// Rotary tables on the device: cos and sin, (t, hd/2) each.
pub struct DevRope {
    cos: DevVec,
    sin: DevVec,
}

/// A cuBLAS handle (used under a lock: one GEMM at a time per backend).
struct Blas(blas::cublasHandle_t);
// SAFETY: the handle is only used while holding the Mutex around it.
unsafe impl Send for Blas {}

/// The CUDA backend of one device.
#[derive(Clone)]
pub struct Cuda {
    pub gpu: Arc<Gpu>,
    blas: Arc<Mutex<Blas>>,
}

fn fail(what: &str, e: impl std::fmt::Debug) -> ! {
    panic!("CUDA backend: {what}: {e:?}")
}

fn grid(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (n.div_ceil(256).clamp(1, 65_535) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn opt_addr(b: Option<&DevBuf>) -> u64 {
    b.map_or(0, |b| b.addr())
}

impl Cuda {
    /// Device `ordinal` with every kernel compiled and a cuBLAS handle on its stream,
    /// pedantic math (no TF32).
    pub fn new(ordinal: usize) -> Result<Cuda, String> {
        let gpu = Arc::new(Gpu::new(ordinal)?);
        let h = cudarc::cublas::result::create_handle().map_err(|e| format!("cuBLAS: {e:?}"))?;
        // SAFETY: a fresh handle and the device's stream.
        unsafe {
            cudarc::cublas::result::set_stream(h, gpu.stream.cu_stream() as _).map_err(|e| format!("cuBLAS stream: {e:?}"))?;
            blas::cublasSetMathMode(h, blas::cublasMath_t::CUBLAS_PEDANTIC_MATH).result().map_err(|e| format!("cuBLAS math mode: {e:?}"))?;
        }
        Ok(Cuda { gpu, blas: Arc::new(Mutex::new(Blas(h))) })
    }

    fn bind(&self) {
        self.gpu.ctx.bind_to_thread().unwrap_or_else(|e| fail("binding the context", e));
    }

    fn alloc(&self, n: usize) -> DevVec {
        self.bind();
        if n == 0 {
            return DevVec { ptr: EMPTY, len: 0, gpu: self.gpu.clone() };
        }
        // SAFETY: a fresh allocation, zeroed before use.
        let ptr = unsafe { drv::malloc_sync(4 * n) }.unwrap_or_else(|e| fail(&format!("allocating {n} floats"), e));
        unsafe { drv::memset_d8_sync(ptr, 0, 4 * n) }.unwrap_or_else(|e| fail("zeroing", e));
        DevVec { ptr, len: n, gpu: self.gpu.clone() }
    }

    /// A device copy of host `v` (f32 or u32 bits).
    pub fn upload<T: Copy>(&self, v: &[T]) -> DevVec {
        assert_eq!(std::mem::size_of::<T>(), 4);
        let d = self.alloc(v.len());
        if !v.is_empty() {
            // SAFETY: `d` holds v.len() 4-byte elements.
            unsafe { drv::memcpy_htod_sync(d.ptr, v) }.unwrap_or_else(|e| fail("copy to the device", e));
        }
        d
    }

    /// Copies host `src` into the device view `dst` (same length).
    pub fn copy_from_host(&self, dst: &mut DevBuf, src: &[f32]) {
        assert_eq!(dst.len(), src.len(), "copy to the device: lengths differ");
        self.bind();
        self.gpu.stream.synchronize().unwrap_or_else(|e| fail("synchronize", e));
        if !src.is_empty() {
            // SAFETY: `dst` views src.len() floats of device memory.
            unsafe { drv::memcpy_htod_sync(dst.addr(), src) }.unwrap_or_else(|e| fail("copy to the device", e));
        }
    }

    fn download(&self, src: &DevBuf, out: &mut [f32]) {
        assert!(out.len() >= src.len());
        self.bind();
        self.gpu.stream.synchronize().unwrap_or_else(|e| fail("synchronize", e));
        if src.len() > 0 {
            // SAFETY: `src` views src.len() floats of device memory.
            unsafe { drv::memcpy_dtoh_sync(&mut out[..src.len()], src.addr()) }.unwrap_or_else(|e| fail("copy to the host", e));
        }
    }

    /// Launches kernel `name` with `cfg`; `args` pushes the arguments in order.
    fn launch(&self, name: &str, cfg: LaunchConfig, args: &[&dyn Arg]) {
        self.bind();
        let s = &self.gpu.stream;
        let mut b = s.launch_builder(self.gpu.f(name));
        for a in args {
            a.push(&mut b);
        }
        // SAFETY: every kernel's arguments are pushed in its signature's order and types
        // (device addresses as u64, counts as i64, scalars as f32/i32).
        unsafe { b.launch(cfg) }.unwrap_or_else(|e| fail(name, e));
    }

    /// Row-major `c (m, n) = op(a) (m, k) op(b) (k, n)` (+ c when `acc`), `batch` times
    /// with the given element strides (0: one matrix).
    #[allow(clippy::too_many_arguments)]
    fn gemm(&self, c: u64, a: u64, ta: bool, b: u64, tb: bool, m: usize, n: usize, k: usize, acc: bool, batch: usize, strides: (usize, usize, usize)) {
        if m == 0 || n == 0 {
            return;
        }
        self.bind();
        let op = |t: bool| if t { blas::cublasOperation_t::CUBLAS_OP_T } else { blas::cublasOperation_t::CUBLAS_OP_N };
        let (alpha, beta) = (1.0f32, if acc { 1.0f32 } else { 0.0 });
        // Row-major C = A B is column-major C^T = B^T A^T: swap the operands.
        let lda = if ta { m } else { k } as i32;
        let ldb = if tb { k } else { n } as i32;
        let h = self.blas.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the addresses view matrices of the stated shapes on this device.
        let r = unsafe {
            cudarc::cublas::result::sgemm_strided_batched(
                h.0,
                op(tb),
                op(ta),
                n as i32,
                m as i32,
                k as i32,
                &alpha,
                b as *const f32,
                ldb,
                strides.1 as i64,
                a as *const f32,
                lda,
                strides.0 as i64,
                &beta,
                c as *mut f32,
                n as i32,
                strides.2 as i64,
                batch as i32,
            )
        };
        r.unwrap_or_else(|e| fail("cuBLAS sgemm", e));
    }

    fn tokens(&self, t: &[u32]) -> DevVec {
        self.upload(t)
    }

    /// d wte from `dout` rows: the host groups the positions by token (the rows of this
    /// part of the vocabulary), the kernel adds each group in position order.
    #[allow(clippy::too_many_arguments)]
    fn embed_backward(&self, dwte: &mut DevBuf, dwpe: Option<&mut DevBuf>, dout: &DevBuf, tokens: &[u32], first: usize, b: usize, t: usize, c: usize) {
        let rows = dwte.len() / c.max(1);
        let mut order: Vec<u32> = (0..tokens.len() as u32).filter(|&i| (tokens[i as usize] as usize).wrapping_sub(first) < rows).collect();
        order.sort_by_key(|&i| (tokens[i as usize], i));
        let (mut starts, mut uniq) = (Vec::new(), Vec::new());
        for (k, &i) in order.iter().enumerate() {
            let tok = tokens[i as usize] - first as u32;
            if uniq.last() != Some(&tok) {
                uniq.push(tok);
                starts.push(k as u32);
            }
        }
        starts.push(order.len() as u32);
        if !uniq.is_empty() {
            let (o, s, u) = (self.upload(&order), self.upload(&starts), self.upload(&uniq));
            let segs = uniq.len();
            self.launch("embedding_backward_sorted", per_row(segs), &[&dwte.addr(), &dout.addr(), &o.ptr, &s.ptr, &u.ptr, &(segs as i64), &(c as i64)]);
        }
        if let Some(dwpe) = dwpe {
            self.launch("position_backward", grid(t * c), &[&dwpe.addr(), &dout.addr(), &(b as i64), &(t as i64), &(c as i64)]);
        }
        self.gpu.stream.synchronize().unwrap_or_else(|e| fail("synchronize", e));
    }

    fn split_qkv(&self, qkv: &DevBuf, b: usize, t: usize, nh: usize, nkv: usize, hd: usize) -> (DevVec, DevVec, DevVec) {
        let (q, k, v) = (self.alloc(b * nh * t * hd), self.alloc(b * nkv * t * hd), self.alloc(b * nkv * t * hd));
        let n = b * t * (nh + 2 * nkv) * hd;
        self.launch("qkv_split", grid(n), &[&q.ptr, &k.ptr, &v.ptr, &qkv.addr(), &(b as i64), &(t as i64), &(nh as i64), &(nkv as i64), &(hd as i64)]);
        (q, k, v)
    }
}

/// A kernel argument.
trait Arg {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>);
}
impl Arg for u64 {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
        b.arg(self);
    }
}
impl Arg for i64 {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
        b.arg(self);
    }
}
impl Arg for f32 {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
        b.arg(self);
    }
}
impl Arg for i32 {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
        b.arg(self);
    }
}

#[allow(clippy::too_many_arguments)]
impl Backend for Cuda {
    type Buf = DevBuf;
    type Vec = DevVec;
    type Rope = DevRope;

    fn zeros(&self, n: usize) -> DevVec {
        self.alloc(n)
    }
    fn fill_zero(&self, x: &mut DevBuf) {
        self.bind();
        if x.len() > 0 {
            self.gpu.stream.synchronize().unwrap_or_else(|e| fail("synchronize", e));
            // SAFETY: `x` views x.len() floats.
            unsafe { drv::memset_d8_sync(x.addr(), 0, 4 * x.len()) }.unwrap_or_else(|e| fail("zeroing", e));
        }
    }
    fn add_inplace(&self, out: &mut DevBuf, a: &DevBuf) {
        assert_eq!(out.len(), a.len());
        self.launch("add_inplace", grid(out.len()), &[&out.addr(), &a.addr(), &(out.len() as i64)]);
    }
    fn linear_forward(&self, y: &mut DevBuf, x: &DevBuf, w: &DevBuf, b: Option<&DevBuf>, wl: WeightLayout, rows: usize, din: usize, dout: usize) {
        let tw = wl == WeightLayout::OutIn;
        self.gemm(y.addr(), x.addr(), false, w.addr(), tw, rows, dout, din, false, 1, (0, 0, 0));
        if let Some(b) = b {
            self.launch("add_bias", grid(rows * dout), &[&y.addr(), &b.addr(), &(rows as i64), &(dout as i64)]);
        }
    }
    fn linear_backward(
        &self,
        dx: Option<&mut DevBuf>,
        dw: &mut DevBuf,
        db: Option<&mut DevBuf>,
        dy: &DevBuf,
        x: &DevBuf,
        w: &DevBuf,
        wl: WeightLayout,
        rows: usize,
        din: usize,
        dout: usize,
    ) {
        let out_in = wl == WeightLayout::OutIn;
        if let Some(dx) = dx {
            // dx (rows, din) += dy (rows, dout) W^T, W (din, dout) or (dout, din).
            self.gemm(dx.addr(), dy.addr(), false, w.addr(), !out_in, rows, din, dout, true, 1, (0, 0, 0));
        }
        if out_in {
            // dW (dout, din) += dy^T x.
            self.gemm(dw.addr(), dy.addr(), true, x.addr(), false, dout, din, rows, true, 1, (0, 0, 0));
        } else {
            // dW (din, dout) += x^T dy.
            self.gemm(dw.addr(), x.addr(), true, dy.addr(), false, din, dout, rows, true, 1, (0, 0, 0));
        }
        if let Some(db) = db {
            self.launch("column_sum_add", grid(dout), &[&db.addr(), &dy.addr(), &(rows as i64), &(dout as i64)]);
        }
    }
    fn matmul(&self, c: &mut DevBuf, a: &DevBuf, ta: bool, b: &DevBuf, tb: bool, m: usize, n: usize, k: usize, accumulate: bool) {
        self.gemm(c.addr(), a.addr(), ta, b.addr(), tb, m, n, k, accumulate, 1, (0, 0, 0));
    }
    fn norm_forward(&self, norm: Norm, eps: f32, out: &mut DevBuf, mean: &mut DevBuf, rstd: &mut DevBuf, x: &DevBuf, w: &DevBuf, b: Option<&DevBuf>, rows: usize, c: usize) {
        match norm {
            Norm::LayerNorm => self.launch(
                "layernorm_forward",
                per_row(rows),
                &[&out.addr(), &mean.addr(), &rstd.addr(), &x.addr(), &w.addr(), &opt_addr(b), &(rows as i64), &(c as i64), &eps],
            ),
            Norm::RmsNorm => self.launch("rmsnorm_forward", per_row(rows), &[&out.addr(), &rstd.addr(), &x.addr(), &w.addr(), &(rows as i64), &(c as i64), &eps]),
        }
    }
    fn norm_backward(
        &self,
        norm: Norm,
        dx: &mut DevBuf,
        dw: &mut DevBuf,
        db: Option<&mut DevBuf>,
        dout: &DevBuf,
        x: &DevBuf,
        w: &DevBuf,
        mean: &DevBuf,
        rstd: &DevBuf,
        rows: usize,
        c: usize,
    ) {
        // Per-row weight (and bias) gradients, then column sums in row order.
        let pw = self.alloc(rows * c);
        let pb = if db.is_some() { self.alloc(rows * c) } else { self.alloc(0) };
        match norm {
            Norm::LayerNorm => self.launch(
                "layernorm_backward",
                per_row(rows),
                &[
                    &dx.addr(),
                    &pw.ptr,
                    &(if db.is_some() { pb.ptr } else { 0 }),
                    &dout.addr(),
                    &x.addr(),
                    &w.addr(),
                    &mean.addr(),
                    &rstd.addr(),
                    &(rows as i64),
                    &(c as i64),
                ],
            ),
            Norm::RmsNorm => {
                self.launch("rmsnorm_backward", per_row(rows), &[&dx.addr(), &pw.ptr, &dout.addr(), &x.addr(), &w.addr(), &rstd.addr(), &(rows as i64), &(c as i64)])
            }
        }
        self.launch("column_sum_add", grid(c), &[&dw.addr(), &pw.ptr, &(rows as i64), &(c as i64)]);
        if let Some(db) = db {
            self.launch("column_sum_add", grid(c), &[&db.addr(), &pb.ptr, &(rows as i64), &(c as i64)]);
        }
        self.gpu.stream.synchronize().unwrap_or_else(|e| fail("synchronize", e));
    }
    fn embedding_forward(&self, out: &mut DevBuf, tokens: &[u32], wte: &DevBuf, wpe: Option<&DevBuf>, b: usize, t: usize, c: usize) {
        self.embedding_part_forward(out, tokens, wte, 0, wpe, b, t, c);
    }
    fn embedding_backward(&self, dwte: &mut DevBuf, dwpe: Option<&mut DevBuf>, dout: &DevBuf, tokens: &[u32], b: usize, t: usize, c: usize) {
        self.embed_backward(dwte, dwpe, dout, tokens, 0, b, t, c);
    }
    fn rope_table(&self, t: usize, hd: usize, theta: f64) -> DevRope {
        // The CPU's table (the same f32 values), uploaded.
        let table = kernels::RopeTable::new(t, hd, theta);
        let (mut cos, mut sin) = (Vec::with_capacity(t * hd / 2), Vec::with_capacity(t * hd / 2));
        for pos in 0..t {
            cos.extend_from_slice(table.cos(pos));
            sin.extend_from_slice(table.sin(pos));
        }
        DevRope { cos: self.upload(&cos), sin: self.upload(&sin) }
    }
    fn rope_forward(&self, qkv: &mut DevBuf, rope: &DevRope, b: usize, t: usize, nh: usize, nkv: usize, hd: usize) {
        let n = b * t * (nh + nkv) * hd / 2;
        self.launch("rope_rotate", grid(n), &[&qkv.addr(), &rope.cos.ptr, &rope.sin.ptr, &(b as i64), &(t as i64), &(nh as i64), &(nkv as i64), &(hd as i64), &0i32]);
    }
    fn rope_backward(&self, dqkv: &mut DevBuf, rope: &DevRope, b: usize, t: usize, nh: usize, nkv: usize, hd: usize) {
        let n = b * t * (nh + nkv) * hd / 2;
        self.launch("rope_rotate", grid(n), &[&dqkv.addr(), &rope.cos.ptr, &rope.sin.ptr, &(b as i64), &(t as i64), &(nh as i64), &(nkv as i64), &(hd as i64), &1i32]);
    }
    fn attention_saved_len(&self, b: usize, t: usize, nh: usize) -> usize {
        // The probabilities (b, nh, t, t).
        b * nh * t * t
    }
    fn attention_forward(&self, out: &mut DevBuf, saved: &mut DevBuf, qkv: &DevBuf, b: usize, t: usize, nh: usize, nkv: usize, hd: usize) {
        let g = nh / nkv;
        let (q, k, v) = self.split_qkv(qkv, b, t, nh, nkv, hd);
        // Per (batch, kv head): the g query heads sharing it are one (g t, hd) block.
        let batch = b * nkv;
        let scores = self.alloc(b * nh * t * t);
        self.gemm(scores.ptr, q.ptr, false, k.ptr, true, g * t, t, hd, false, batch, (g * t * hd, t * hd, g * t * t));
        let scale = 1.0 / (hd as f32).sqrt();
        self.launch("causal_softmax_forward", per_row(b * nh * t), &[&saved.addr(), &scores.ptr, &((b * nh * t) as i64), &(t as i64), &scale]);
        let o = self.alloc(b * nh * t * hd);
        self.gemm(o.ptr, saved.addr(), false, v.ptr, false, g * t, hd, t, false, batch, (g * t * t, t * hd, g * t * hd));
        self.launch("heads_to_rows", grid(b * t * nh * hd), &[&out.addr(), &o.ptr, &(b as i64), &(t as i64), &(nh as i64), &(hd as i64)]);
        self.gpu.stream.synchronize().unwrap_or_else(|e| fail("synchronize", e));
    }
    fn attention_backward(
        &self,
        dqkv: &mut DevBuf,
        dout: &DevBuf,
        qkv: &DevBuf,
        _out: &DevBuf,
        saved: &DevBuf,
        b: usize,
        t: usize,
        nh: usize,
        nkv: usize,
        hd: usize,
    ) {
        let g = nh / nkv;
        let batch = b * nkv;
        let (q, k, v) = self.split_qkv(qkv, b, t, nh, nkv, hd);
        let d_o = self.alloc(b * nh * t * hd);
        self.launch("rows_to_heads", grid(b * t * nh * hd), &[&d_o.ptr, &dout.addr(), &(b as i64), &(t as i64), &(nh as i64), &(hd as i64)]);
        // dP = dO V^T; dV = P^T dO (the group's heads summed by the GEMM).
        let dp = self.alloc(b * nh * t * t);
        self.gemm(dp.ptr, d_o.ptr, false, v.ptr, true, g * t, t, hd, false, batch, (g * t * hd, t * hd, g * t * t));
        let dv = self.alloc(b * nkv * t * hd);
        self.gemm(dv.ptr, saved.addr(), true, d_o.ptr, false, t, hd, g * t, false, batch, (g * t * t, g * t * hd, t * hd));
        let scale = 1.0 / (hd as f32).sqrt();
        let ds = self.alloc(b * nh * t * t);
        self.launch("causal_softmax_backward", per_row(b * nh * t), &[&ds.ptr, &dp.ptr, &saved.addr(), &((b * nh * t) as i64), &(t as i64), &scale]);
        // dQ = dS K; dK = dS^T Q.
        let dq = self.alloc(b * nh * t * hd);
        self.gemm(dq.ptr, ds.ptr, false, k.ptr, false, g * t, hd, t, false, batch, (g * t * t, t * hd, g * t * hd));
        let dk = self.alloc(b * nkv * t * hd);
        self.gemm(dk.ptr, ds.ptr, true, q.ptr, false, t, hd, g * t, false, batch, (g * t * t, g * t * hd, t * hd));
        let n = b * t * (nh + 2 * nkv) * hd;
        self.launch(
            "qkv_merge_add",
            grid(n),
            &[&dqkv.addr(), &dq.ptr, &dk.ptr, &dv.ptr, &(b as i64), &(t as i64), &(nh as i64), &(nkv as i64), &(hd as i64)],
        );
        self.gpu.stream.synchronize().unwrap_or_else(|e| fail("synchronize", e));
    }
    fn mlp_act_forward(&self, mlp: Mlp, out: &mut DevBuf, h: &DevBuf, rows: usize, f: usize) {
        match mlp {
            Mlp::Gelu => self.launch("gelu_forward", grid(rows * f), &[&out.addr(), &h.addr(), &((rows * f) as i64)]),
            Mlp::SwiGlu => self.launch("swiglu_forward", grid(rows * f), &[&out.addr(), &h.addr(), &(rows as i64), &(f as i64)]),
        }
    }
    fn mlp_act_backward(&self, mlp: Mlp, dh: &mut DevBuf, dout: &DevBuf, h: &DevBuf, rows: usize, f: usize) {
        match mlp {
            Mlp::Gelu => self.launch("gelu_backward", grid(rows * f), &[&dh.addr(), &dout.addr(), &h.addr(), &((rows * f) as i64)]),
            Mlp::SwiGlu => self.launch("swiglu_backward", grid(rows * f), &[&dh.addr(), &dout.addr(), &h.addr(), &(rows as i64), &(f as i64)]),
        }
    }
    fn xent_forward_backward(&self, logits: &mut DevBuf, losses: &mut DevBuf, targets: &[u32], rows: usize, v: usize, scale: f32) -> f64 {
        let tg = self.tokens(targets);
        self.launch("xent_forward_backward", per_row(rows), &[&logits.addr(), &losses.addr(), &tg.ptr, &(rows as i64), &(v as i64), &scale, &1i32]);
        let mut host = vec![0.0f32; rows];
        self.download(losses, &mut host);
        host.iter().map(|&x| x as f64).sum()
    }
    fn xent_forward(&self, logits: &DevBuf, losses: &mut DevBuf, targets: &[u32], rows: usize, v: usize) -> f64 {
        let tg = self.tokens(targets);
        self.launch("xent_forward_backward", per_row(rows), &[&logits.addr(), &losses.addr(), &tg.ptr, &(rows as i64), &(v as i64), &1.0f32, &0i32]);
        let mut host = vec![0.0f32; rows];
        self.download(losses, &mut host);
        host.iter().map(|&x| x as f64).sum()
    }
    fn to_host(&self, src: &DevBuf, out: &mut [f32]) {
        self.download(src, out);
    }
    fn embedding_part_forward(&self, out: &mut DevBuf, tokens: &[u32], wte: &DevBuf, first: usize, wpe: Option<&DevBuf>, b: usize, t: usize, c: usize) {
        let tk = self.tokens(tokens);
        let vrows = wte.len() / c.max(1);
        self.launch(
            "embedding_forward",
            grid(b * t * c),
            &[&out.addr(), &tk.ptr, &wte.addr(), &opt_addr(wpe), &(b as i64), &(t as i64), &(c as i64), &(first as i64), &(vrows as i64)],
        );
        self.gpu.stream.synchronize().unwrap_or_else(|e| fail("synchronize", e));
    }
    fn embedding_part_backward(&self, dwte: &mut DevBuf, dwpe: Option<&mut DevBuf>, dout: &DevBuf, tokens: &[u32], first: usize, b: usize, t: usize, c: usize) {
        self.embed_backward(dwte, dwpe, dout, tokens, first, b, t, c);
    }
    fn xent_parallel_stats(&self, logits: &DevBuf, targets: &[u32], first: usize, rows: usize, v: usize, max: &mut DevBuf, picked: &mut DevBuf) {
        let tg = self.tokens(targets);
        self.launch(
            "xent_parallel_stats",
            per_row(rows),
            &[&logits.addr(), &tg.ptr, &(first as i64), &(rows as i64), &(v as i64), &max.addr(), &picked.addr()],
        );
        self.gpu.stream.synchronize().unwrap_or_else(|e| fail("synchronize", e));
    }
    fn xent_parallel_exp(&self, logits: &mut DevBuf, max: &DevBuf, rows: usize, v: usize, sum: &mut DevBuf) {
        self.launch("xent_parallel_exp", per_row(rows), &[&logits.addr(), &max.addr(), &(rows as i64), &(v as i64), &sum.addr()]);
    }
    fn xent_parallel_grad(&self, logits: &mut DevBuf, sum: &DevBuf, targets: &[u32], first: usize, rows: usize, v: usize, scale: f32) {
        let tg = self.tokens(targets);
        self.launch("xent_parallel_grad", grid(rows * v), &[&logits.addr(), &sum.addr(), &tg.ptr, &(first as i64), &(rows as i64), &(v as i64), &scale]);
        self.gpu.stream.synchronize().unwrap_or_else(|e| fail("synchronize", e));
    }
}

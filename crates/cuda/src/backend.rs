//! The model's [`Backend`] over device memory, written once over the [`Device`] seam:
//! on a GPU ([`crate::real::RealDevice`]: cuBLAS for every GEMM, f32 in pedantic math, no
//! TF32, so it compares with the CPU) or on the emulated device ([`crate::emu`]: the
//! same kernels' text compiled for the host, cuBLAS's semantics on a reference GEMM).
//! Attention is fused (kernels/flash.cu: online softmax forward, recomputing backward,
//! no (T, T) buffer).
//!
//! Device views. The model carves buffers into views (`&B::Buf`, `slice`, `split_at_mut`)
//! and the borrow checker keeps mutable views exclusive. A device view here is a slice
//! of a zero-sized element type whose data pointer is the device address: a slice of
//! zero-sized elements occupies no memory, so the reference is valid without the
//! address being host memory, and every view operation is written out below (computing
//! the address of element `i` as `base + size i`); the bytes behind it are only ever
//! touched through the device. The slice's length carries the element type too
//! (`2 len + bf16`), so a view of bf16 activations stays bf16 however it is carved.
//!
//! Precision (`train.dtype`). The backend's `dtype` is the storage of activations,
//! weights as the model reads them and gradients: f32, or bf16 with every GEMM in bf16
//! accumulating in fp32 and every kernel the `_bf16` build of its source (arithmetic in
//! f32, see kernels/prelude.cuh). Per-row statistics ([`Backend::stats`]: norm mean and
//! rstd, the attention's log-sum-exp, the losses) are f32 in both.

use std::ops::{Deref, DerefMut, Range};
use std::sync::Arc;

use model::backend::{Backend, Buf, WeightLayout};
use model::spec::{Mlp, Norm};

use crate::device::{Device, Dims, Dtype, Gemm, KArg};

/// The element of a device view: occupies no host memory (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct Dev;

/// A view of `len()` elements (f32 or bf16) of device memory.
#[repr(transparent)]
pub struct DevBuf([Dev]);

/// A non-null address for empty views.
const EMPTY: u64 = 256;

/// The slice length that encodes `len` elements of `dt`.
fn raw_len(len: usize, dt: Dtype) -> usize {
    (len << 1) | (dt == Dtype::Bf16) as usize
}

impl DevBuf {
    fn at<'a>(addr: u64, len: usize, dt: Dtype) -> &'a DevBuf {
        // SAFETY: DevBuf is a transparent slice of a zero-sized type: any non-null
        // address and length are valid for it and no memory is read through it.
        unsafe { &*(std::ptr::slice_from_raw_parts(addr.max(1) as *const Dev, raw_len(len, dt)) as *const DevBuf) }
    }
    fn at_mut<'a>(addr: u64, len: usize, dt: Dtype) -> &'a mut DevBuf {
        // SAFETY: as `at`; exclusivity is the caller's (views come from disjoint ranges).
        unsafe { &mut *(std::ptr::slice_from_raw_parts_mut(addr.max(1) as *mut Dev, raw_len(len, dt)) as *mut DevBuf) }
    }
    /// The device address of element 0.
    pub fn addr(&self) -> u64 {
        self.0.as_ptr() as u64
    }
    /// The element type.
    pub fn dtype(&self) -> Dtype {
        if self.0.len() & 1 == 1 {
            Dtype::Bf16
        } else {
            Dtype::F32
        }
    }
    /// The address of element `i`.
    fn addr_of(&self, i: usize) -> u64 {
        self.addr() + (self.dtype().size() * i) as u64
    }
    /// Bytes the view spans.
    pub fn bytes(&self) -> usize {
        self.dtype().size() * self.len()
    }
    /// This view as a kernel argument: its address, with its element type for the
    /// emulator to check against the parameter's.
    pub fn arg(&self) -> ViewArg {
        ViewArg(self.addr(), self.dtype())
    }
}

/// A view's address and element type, as a kernel argument ([`DevBuf::arg`]).
#[derive(Clone, Copy, Debug)]
pub struct ViewArg(u64, Dtype);

impl Buf for DevBuf {
    fn len(&self) -> usize {
        self.0.len() >> 1
    }
    fn slice(&self, r: Range<usize>) -> &Self {
        assert!(r.start <= r.end && r.end <= self.len(), "device view {r:?} out of 0..{}", self.len());
        DevBuf::at(self.addr_of(r.start), r.len(), self.dtype())
    }
    fn slice_mut(&mut self, r: Range<usize>) -> &mut Self {
        assert!(r.start <= r.end && r.end <= self.len(), "device view {r:?} out of 0..{}", self.len());
        DevBuf::at_mut(self.addr_of(r.start), r.len(), self.dtype())
    }
    fn split_at(&self, mid: usize) -> (&Self, &Self) {
        assert!(mid <= self.len());
        let dt = self.dtype();
        (DevBuf::at(self.addr(), mid, dt), DevBuf::at(self.addr_of(mid), self.len() - mid, dt))
    }
    fn split_at_mut(&mut self, mid: usize) -> (&mut Self, &mut Self) {
        assert!(mid <= self.len());
        let (a, at, n, dt) = (self.addr(), self.addr_of(mid), self.len(), self.dtype());
        (DevBuf::at_mut(a, mid, dt), DevBuf::at_mut(at, n - mid, dt))
    }
}

/// An owned device allocation of `len` elements of `dt` (f32 also holds u32 tokens),
/// freed on drop.
pub struct DevVec {
    ptr: u64,
    len: usize,
    dt: Dtype,
    dev: Arc<dyn Device>,
}

impl Deref for DevVec {
    type Target = DevBuf;
    fn deref(&self) -> &DevBuf {
        DevBuf::at(self.ptr, self.len, self.dt)
    }
}

impl DerefMut for DevVec {
    fn deref_mut(&mut self) -> &mut DevBuf {
        DevBuf::at_mut(self.ptr, self.len, self.dt)
    }
}

impl Drop for DevVec {
    fn drop(&mut self) {
        if self.ptr != EMPTY {
            self.dev.free(self.ptr);
        }
    }
}

/// Rotary tables on the device: cos and sin, (t, hd/2) each.
pub struct DevRope {
    cos: DevVec,
    sin: DevVec,
}

/// The CUDA backend of one device (a GPU or an emulated one), storing activations,
/// weights and gradients in `dtype`.
#[derive(Clone)]
pub struct Cuda {
    pub dev: Arc<dyn Device>,
    pub dtype: Dtype,
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    panic!("CUDA backend: {what}: {e}")
}

fn grid(n: usize) -> Dims {
    Dims { grid: (n.div_ceil(256).clamp(1, 65_535) as u32, 1, 1), block: (256, 1, 1), shared: 0 }
}

fn per_row(rows: usize) -> Dims {
    Dims { grid: (rows.max(1) as u32, 1, 1), block: (256, 1, 1), shared: 0 }
}

/// The fused attention's tile (query and key rows per block): the largest of 32, 16, 8,
/// 4 whose backward tiles (6 of `bt x hd` and 2 of `bt x bt` floats) fit the 48 KiB of
/// shared memory a kernel gets without an opt-in.
fn flash_tile(hd: usize) -> usize {
    [32, 16, 8, 4].into_iter().find(|&bt| 4 * (6 * bt * hd + 2 * bt * bt + 2 * bt) <= 48 * 1024).unwrap_or(4)
}

fn opt_addr(b: Option<&DevBuf>) -> u64 {
    b.map_or(0, |b| b.addr())
}

impl Cuda {
    /// GPU `ordinal` (every kernel compiled by NVRTC, cuBLAS in pedantic fp32).
    pub fn new(ordinal: usize) -> Result<Cuda, String> {
        Ok(Cuda { dev: Arc::new(crate::real::RealDevice::new(ordinal)?), dtype: Dtype::F32 })
    }

    /// Emulated device `ordinal` (see [`crate::emu`]).
    pub fn emulated(ordinal: usize) -> Cuda {
        Cuda { dev: Arc::new(crate::emu::EmuDevice::new(ordinal)), dtype: Dtype::F32 }
    }

    /// The same device, storing activations, weights and gradients in `dtype`.
    pub fn with_dtype(&self, dtype: Dtype) -> Cuda {
        Cuda { dev: self.dev.clone(), dtype }
    }

    /// `cuda`, `cuda:N`, `cuda-emu` or `cuda-emu:N`.
    pub fn open(name: &str) -> Result<Cuda, String> {
        if let Some(n) = crate::device::parse_emu(name) {
            return Ok(Cuda::emulated(n));
        }
        let n = match name {
            "cuda" => 0,
            s => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).ok_or_else(|| format!("not a device name: {name:?} (cuda, cuda:N, cuda-emu, cuda-emu:N)"))?,
        };
        Cuda::new(n)
    }

    /// `cuda:N` or `cuda-emu:N`.
    pub fn name(&self) -> String {
        self.dev.name()
    }

    /// Bytes of device memory allocated now and at most so far.
    pub fn memory(&self) -> (usize, usize) {
        self.dev.memory()
    }

    /// `n` elements of `dt` whose contents are undefined until written (scratch every
    /// element of which a kernel or GEMM writes before anything reads it).
    fn alloc_uninit_as(&self, n: usize, dt: Dtype) -> DevVec {
        if n == 0 {
            return DevVec { ptr: EMPTY, len: 0, dt, dev: self.dev.clone() };
        }
        let ptr = self.dev.alloc(dt.size() * n).unwrap_or_else(|e| fail(&format!("allocating {n} {dt:?} elements on {}", self.dev.name()), e));
        DevVec { ptr, len: n, dt, dev: self.dev.clone() }
    }

    fn alloc_uninit(&self, n: usize) -> DevVec {
        self.alloc_uninit_as(n, self.dtype)
    }

    /// `n` zeros of `dt` (f32 for masters, moments and statistics whatever `dtype` is).
    pub fn zeros_as(&self, n: usize, dt: Dtype) -> DevVec {
        let d = self.alloc_uninit_as(n, dt);
        if n > 0 {
            self.dev.memset(d.ptr, 0, d.bytes()).unwrap_or_else(|e| fail("zeroing", e));
        }
        d
    }

    /// The name kernel `base` has in this backend's precision.
    pub fn kernel<'a>(&self, base: &'a str) -> std::borrow::Cow<'a, str> {
        crate::kernel_name(base, self.dtype)
    }

    /// A device copy of host `v` (f32 or u32 bits, stored as 4-byte elements).
    pub fn upload<T: Copy>(&self, v: &[T]) -> DevVec {
        assert_eq!(std::mem::size_of::<T>(), 4);
        let d = self.alloc_uninit_as(v.len(), Dtype::F32);
        if !v.is_empty() {
            // SAFETY: plain 4-byte values viewed as bytes.
            let bytes = unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, 4 * v.len()) };
            self.dev.htod(d.ptr, bytes).unwrap_or_else(|e| fail("copy to the device", e));
        }
        d
    }

    /// A device copy of host `v` in this backend's precision.
    pub fn from_host(&self, v: &[f32]) -> DevVec {
        let mut d = self.alloc_uninit(v.len());
        self.copy_from_host(&mut d, v);
        d
    }

    /// Copies host `src` into the device view `dst` (same length; rounded to nearest
    /// even when `dst` is bf16, as the kernels round).
    pub fn copy_from_host(&self, dst: &mut DevBuf, src: &[f32]) {
        assert_eq!(dst.len(), src.len(), "copy to the device: lengths differ");
        if src.is_empty() {
            return;
        }
        let r = match dst.dtype() {
            // SAFETY: f32 viewed as bytes.
            Dtype::F32 => self.dev.htod(dst.addr(), unsafe { std::slice::from_raw_parts(src.as_ptr() as *const u8, 4 * src.len()) }),
            Dtype::Bf16 => {
                let bytes: Vec<u8> = src.iter().flat_map(|&x| crate::emu::gemm::bf16_bits(x).to_le_bytes()).collect();
                self.dev.htod(dst.addr(), &bytes)
            }
        };
        r.unwrap_or_else(|e| fail("copy to the device", e));
    }

    /// `src` into `dst` on the device (same length and element type).
    pub fn copy_device(&self, dst: &mut DevBuf, src: &DevBuf) {
        assert!(dst.len() == src.len() && dst.dtype() == src.dtype(), "device copy: {} {:?} into {} {:?}", src.len(), src.dtype(), dst.len(), dst.dtype());
        if src.len() > 0 {
            self.dev.dtod(dst.addr(), src.addr(), src.bytes()).unwrap_or_else(|e| fail("device copy", e));
        }
    }

    /// The device view `src` as f32 into `out` (bf16 widened exactly).
    fn download(&self, src: &DevBuf, out: &mut [f32]) {
        assert!(out.len() >= src.len());
        if src.len() == 0 {
            return;
        }
        let r = match src.dtype() {
            // SAFETY: f32 viewed as bytes.
            Dtype::F32 => self.dev.dtoh(unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, 4 * src.len()) }, src.addr()),
            Dtype::Bf16 => {
                let mut bytes = vec![0u8; 2 * src.len()];
                let r = self.dev.dtoh(&mut bytes, src.addr());
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
                }
                r
            }
        };
        r.unwrap_or_else(|e| fail("copy to the host", e));
    }

    /// Launches kernel `name` (its build in this backend's precision) with `dims`;
    /// `args` in its signature's order.
    pub fn launch(&self, name: &str, dims: Dims, args: &[&dyn Arg]) {
        let args: Vec<KArg> = args.iter().map(|a| a.karg()).collect();
        let name = self.kernel(name);
        self.dev.launch(&name, dims, &args).unwrap_or_else(|e| fail(&name, e));
    }

    fn sync(&self) {
        self.dev.synchronize().unwrap_or_else(|e| fail("synchronize", e));
    }

    /// Row-major `c (m, n) = op(a) (m, k) op(b) (k, n)` (+ c when `acc`), `batch` times
    /// with the given element strides (0: one matrix).
    #[allow(clippy::too_many_arguments)]
    fn gemm(&self, c: u64, a: u64, ta: bool, b: u64, tb: bool, m: usize, n: usize, k: usize, acc: bool, batch: usize, strides: (usize, usize, usize)) {
        self.gemm_bias(c, a, ta, b, tb, m, n, k, acc, batch, strides, 0);
    }

    /// [`Cuda::gemm`], adding `bias` (n elements, one per output column of the
    /// row-major C; 0: none) by cuBLASLt's bias epilogue.
    #[allow(clippy::too_many_arguments)]
    fn gemm_bias(&self, c: u64, a: u64, ta: bool, b: u64, tb: bool, m: usize, n: usize, k: usize, acc: bool, batch: usize, strides: (usize, usize, usize), bias: u64) {
        self.gemm_epilogue(c, a, ta, b, tb, m, n, k, acc, batch, strides, bias, 0);
    }

    /// [`Cuda::gemm_bias`], and with a non-zero `gelu_aux` the GELU epilogue: the biased
    /// product into `gelu_aux`, its GELU into `c`.
    #[allow(clippy::too_many_arguments)]
    fn gemm_epilogue(
        &self,
        c: u64,
        a: u64,
        ta: bool,
        b: u64,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        acc: bool,
        batch: usize,
        strides: (usize, usize, usize),
        bias: u64,
        gelu_aux: u64,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        // Row-major C = A B is column-major C^T = B^T A^T: swap the operands.
        let g = Gemm {
            ta: tb,
            tb: ta,
            m: n,
            n: m,
            k,
            alpha: 1.0,
            a: b,
            lda: if tb { k } else { n },
            stride_a: strides.1,
            b: a,
            ldb: if ta { m } else { k },
            stride_b: strides.0,
            beta: if acc { 1.0 } else { 0.0 },
            c,
            ldc: n,
            stride_c: strides.2,
            batch,
            ab: self.dtype,
            cd: self.dtype,
            // Row-major columns are the column-major rows the epilogue's bias runs along.
            bias,
            gelu_aux,
        };
        self.dev.gemm(&g).unwrap_or_else(|e| fail("GEMM", e));
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
            self.launch("embedding_backward_sorted", per_row(segs), &[&dwte.arg(), &dout.arg(), &o.arg(), &s.arg(), &u.arg(), &(segs as i64), &(c as i64)]);
        }
        if let Some(dwpe) = dwpe {
            self.launch("position_backward", grid(t * c), &[&dwpe.arg(), &dout.arg(), &(b as i64), &(t as i64), &(c as i64)]);
        }
        self.sync();
    }
}

/// A kernel argument: device addresses as u64, counts as i64, scalars as f32 / i32.
pub trait Arg {
    fn karg(&self) -> KArg;
}
impl Arg for u64 {
    fn karg(&self) -> KArg {
        KArg::Ptr(*self)
    }
}
impl Arg for ViewArg {
    fn karg(&self) -> KArg {
        KArg::View(self.0, self.1)
    }
}
impl Arg for i64 {
    fn karg(&self) -> KArg {
        KArg::I64(*self)
    }
}
impl Arg for f32 {
    fn karg(&self) -> KArg {
        KArg::F32(*self)
    }
}
impl Arg for f64 {
    fn karg(&self) -> KArg {
        KArg::F64(*self)
    }
}
impl Arg for i32 {
    fn karg(&self) -> KArg {
        KArg::I32(*self)
    }
}

#[allow(clippy::too_many_arguments)]
impl Backend for Cuda {
    type Buf = DevBuf;
    type Vec = DevVec;
    type Rope = DevRope;

    fn zeros(&self, n: usize) -> DevVec {
        self.zeros_as(n, self.dtype)
    }
    fn stats(&self, n: usize) -> DevVec {
        self.zeros_as(n, Dtype::F32)
    }
    fn fill_zero(&self, x: &mut DevBuf) {
        if x.len() > 0 {
            self.dev.memset(x.addr(), 0, x.bytes()).unwrap_or_else(|e| fail("zeroing", e));
        }
    }
    fn add_inplace(&self, out: &mut DevBuf, a: &DevBuf) {
        assert_eq!(out.len(), a.len());
        self.launch("add_inplace", grid(out.len()), &[&out.arg(), &a.arg(), &(out.len() as i64)]);
    }
    fn linear_forward(&self, y: &mut DevBuf, x: &DevBuf, w: &DevBuf, b: Option<&DevBuf>, wl: WeightLayout, rows: usize, din: usize, dout: usize) {
        let tw = wl == WeightLayout::OutIn;
        match b {
            // bf16: cuBLASLt adds the bias in fp32 before rounding (one pass, one rounding).
            Some(b) if self.dtype == Dtype::Bf16 => self.gemm_bias(y.addr(), x.addr(), false, w.addr(), tw, rows, dout, din, false, 1, (0, 0, 0), b.addr()),
            // f32: cuBLAS in pedantic fp32, then the bias kernel (the CPU's order exactly).
            _ => {
                self.gemm(y.addr(), x.addr(), false, w.addr(), tw, rows, dout, din, false, 1, (0, 0, 0));
                if let Some(b) = b {
                    self.launch("add_bias", grid(rows * dout), &[&y.arg(), &b.arg(), &(rows as i64), &(dout as i64)]);
                }
            }
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
            self.launch("column_sum_add", grid(dout), &[&db.arg(), &dy.arg(), &(rows as i64), &(dout as i64)]);
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
                &[&out.arg(), &mean.arg(), &rstd.arg(), &x.arg(), &w.arg(), &opt_addr(b), &(rows as i64), &(c as i64), &eps],
            ),
            Norm::RmsNorm => self.launch("rmsnorm_forward", per_row(rows), &[&out.arg(), &rstd.arg(), &x.arg(), &w.arg(), &(rows as i64), &(c as i64), &eps]),
        }
    }
    fn residual_norm_forward(
        &self,
        norm: Norm,
        eps: f32,
        res: &mut DevBuf,
        delta: &DevBuf,
        out: &mut DevBuf,
        mean: &mut DevBuf,
        rstd: &mut DevBuf,
        w: &DevBuf,
        b: Option<&DevBuf>,
        rows: usize,
        c: usize,
    ) {
        assert_eq!(res.len(), delta.len());
        let rms = (norm == Norm::RmsNorm) as i32;
        let mean = if rms == 1 { 0 } else { mean.addr() };
        self.launch(
            "residual_norm_forward",
            per_row(rows),
            &[&res.arg(), &delta.arg(), &out.arg(), &mean, &rstd.arg(), &w.arg(), &opt_addr(b), &(rows as i64), &(c as i64), &eps, &rms],
        );
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
        let pw = self.alloc_uninit(rows * c);
        let pb = if db.is_some() { self.alloc_uninit(rows * c) } else { self.alloc_uninit(0) };
        match norm {
            Norm::LayerNorm => self.launch(
                "layernorm_backward",
                per_row(rows),
                &[
                    &dx.arg(),
                    &pw.arg(),
                    &(if db.is_some() { pb.ptr } else { 0 }),
                    &dout.arg(),
                    &x.arg(),
                    &w.arg(),
                    &mean.arg(),
                    &rstd.arg(),
                    &(rows as i64),
                    &(c as i64),
                ],
            ),
            Norm::RmsNorm => {
                self.launch("rmsnorm_backward", per_row(rows), &[&dx.arg(), &pw.arg(), &dout.arg(), &x.arg(), &w.arg(), &rstd.arg(), &(rows as i64), &(c as i64)])
            }
        }
        self.launch("column_sum_add", grid(c), &[&dw.arg(), &pw.arg(), &(rows as i64), &(c as i64)]);
        if let Some(db) = db {
            self.launch("column_sum_add", grid(c), &[&db.arg(), &pb.arg(), &(rows as i64), &(c as i64)]);
        }
        self.sync();
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
        self.launch("rope_rotate", grid(n), &[&qkv.arg(), &rope.cos.arg(), &rope.sin.arg(), &(b as i64), &(t as i64), &(nh as i64), &(nkv as i64), &(hd as i64), &0i32]);
    }
    fn rope_backward(&self, dqkv: &mut DevBuf, rope: &DevRope, b: usize, t: usize, nh: usize, nkv: usize, hd: usize) {
        let n = b * t * (nh + nkv) * hd / 2;
        self.launch("rope_rotate", grid(n), &[&dqkv.arg(), &rope.cos.arg(), &rope.sin.arg(), &(b as i64), &(t as i64), &(nh as i64), &(nkv as i64), &(hd as i64), &1i32]);
    }
    fn attention_saved_len(&self, b: usize, t: usize, nh: usize) -> usize {
        // The fused kernel keeps only each row's log-sum-exp (b, nh, t).
        b * nh * t
    }
    fn attention_forward(&self, out: &mut DevBuf, saved: &mut DevBuf, qkv: &DevBuf, b: usize, t: usize, nh: usize, nkv: usize, hd: usize) {
        let bt = flash_tile(hd);
        let shared = 4 * (4 * bt * hd + bt * bt + 3 * bt);
        let dims = Dims { grid: (t.div_ceil(bt) as u32, nh as u32, b as u32), block: (128, 1, 1), shared: shared as u32 };
        let scale = 1.0 / (hd as f32).sqrt();
        self.launch(
            "flash_attention_forward",
            dims,
            &[&out.arg(), &saved.arg(), &qkv.arg(), &(b as i64), &(t as i64), &(nh as i64), &(nkv as i64), &(hd as i64), &scale, &(bt as i32)],
        );
    }
    fn attention_backward(
        &self,
        dqkv: &mut DevBuf,
        dout: &DevBuf,
        qkv: &DevBuf,
        out: &DevBuf,
        saved: &DevBuf,
        b: usize,
        t: usize,
        nh: usize,
        nkv: usize,
        hd: usize,
    ) {
        let bt = flash_tile(hd);
        let dsum = self.alloc_uninit_as(b * nh * t, Dtype::F32);
        self.launch("flash_attention_rowdot", grid(b * nh * t), &[&dsum.arg(), &dout.arg(), &out.arg(), &(b as i64), &(t as i64), &(nh as i64), &(hd as i64)]);
        let scale = 1.0 / (hd as f32).sqrt();
        let args: [&dyn Arg; 12] =
            [&dqkv.arg(), &dout.arg(), &qkv.arg(), &saved.arg(), &dsum.arg(), &(b as i64), &(t as i64), &(nh as i64), &(nkv as i64), &(hd as i64), &scale, &(bt as i32)];
        let tiles = t.div_ceil(bt) as u32;
        let kv = Dims { grid: (tiles, nkv as u32, b as u32), block: (128, 1, 1), shared: (4 * (6 * bt * hd + 2 * bt * bt + 2 * bt)) as u32 };
        self.launch("flash_attention_backward_kv", kv, &args);
        let q = Dims { grid: (tiles, nh as u32, b as u32), block: (128, 1, 1), shared: (4 * (5 * bt * hd + 2 * bt * bt + 2 * bt)) as u32 };
        self.launch("flash_attention_backward_q", q, &args);
        self.sync();
    }
    fn linear_act_forward(
        &self,
        mlp: Mlp,
        h: &mut DevBuf,
        out: &mut DevBuf,
        x: &DevBuf,
        w: &DevBuf,
        b: Option<&DevBuf>,
        wl: WeightLayout,
        rows: usize,
        din: usize,
        dout: usize,
        f: usize,
    ) {
        match b {
            // bf16 GELU MLPs: cuBLASLt's GELU_AUX_BIAS epilogue writes h and gelu(h) in
            // one pass over the output.
            Some(b) if self.dtype == Dtype::Bf16 && mlp == Mlp::Gelu => {
                assert_eq!((h.len(), out.len()), (rows * dout, rows * f));
                let tw = wl == WeightLayout::OutIn;
                self.gemm_epilogue(out.addr(), x.addr(), false, w.addr(), tw, rows, dout, din, false, 1, (0, 0, 0), b.addr(), h.addr());
            }
            _ => {
                self.linear_forward(h, x, w, b, wl, rows, din, dout);
                self.mlp_act_forward(mlp, out, h, rows, f);
            }
        }
    }
    fn mlp_act_forward(&self, mlp: Mlp, out: &mut DevBuf, h: &DevBuf, rows: usize, f: usize) {
        match mlp {
            Mlp::Gelu => self.launch("gelu_forward", grid(rows * f), &[&out.arg(), &h.arg(), &((rows * f) as i64)]),
            Mlp::SwiGlu => self.launch("swiglu_forward", grid(rows * f), &[&out.arg(), &h.arg(), &(rows as i64), &(f as i64)]),
        }
    }
    fn mlp_act_backward(&self, mlp: Mlp, dh: &mut DevBuf, dout: &DevBuf, h: &DevBuf, rows: usize, f: usize) {
        match mlp {
            Mlp::Gelu => self.launch("gelu_backward", grid(rows * f), &[&dh.arg(), &dout.arg(), &h.arg(), &((rows * f) as i64)]),
            Mlp::SwiGlu => self.launch("swiglu_backward", grid(rows * f), &[&dh.arg(), &dout.arg(), &h.arg(), &(rows as i64), &(f as i64)]),
        }
    }
    fn xent_forward_backward(&self, logits: &mut DevBuf, losses: &mut DevBuf, targets: &[u32], rows: usize, v: usize, scale: f32) -> f64 {
        let tg = self.tokens(targets);
        self.launch("xent_forward_backward", per_row(rows), &[&logits.arg(), &losses.arg(), &tg.arg(), &(rows as i64), &(v as i64), &scale, &1i32]);
        let mut host = vec![0.0f32; rows];
        self.download(losses, &mut host);
        host.iter().map(|&x| x as f64).sum()
    }
    fn xent_forward(&self, logits: &DevBuf, losses: &mut DevBuf, targets: &[u32], rows: usize, v: usize) -> f64 {
        let tg = self.tokens(targets);
        self.launch("xent_forward_backward", per_row(rows), &[&logits.arg(), &losses.arg(), &tg.arg(), &(rows as i64), &(v as i64), &1.0f32, &0i32]);
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
            &[&out.arg(), &tk.arg(), &wte.arg(), &opt_addr(wpe), &(b as i64), &(t as i64), &(c as i64), &(first as i64), &(vrows as i64)],
        );
        self.sync();
    }
    fn embedding_part_backward(&self, dwte: &mut DevBuf, dwpe: Option<&mut DevBuf>, dout: &DevBuf, tokens: &[u32], first: usize, b: usize, t: usize, c: usize) {
        self.embed_backward(dwte, dwpe, dout, tokens, first, b, t, c);
    }
    fn xent_parallel_stats(&self, logits: &DevBuf, targets: &[u32], first: usize, rows: usize, v: usize, max: &mut DevBuf, picked: &mut DevBuf) {
        let tg = self.tokens(targets);
        self.launch(
            "xent_parallel_stats",
            per_row(rows),
            &[&logits.arg(), &tg.arg(), &(first as i64), &(rows as i64), &(v as i64), &max.arg(), &picked.arg()],
        );
        self.sync();
    }
    fn xent_parallel_exp(&self, logits: &mut DevBuf, max: &DevBuf, rows: usize, v: usize, sum: &mut DevBuf) {
        self.launch("xent_parallel_exp", per_row(rows), &[&logits.arg(), &max.arg(), &(rows as i64), &(v as i64), &sum.arg()]);
    }
    fn xent_parallel_grad(&self, logits: &mut DevBuf, sum: &DevBuf, targets: &[u32], first: usize, rows: usize, v: usize, scale: f32) {
        let tg = self.tokens(targets);
        self.launch("xent_parallel_grad", grid(rows * v), &[&logits.arg(), &sum.arg(), &tg.arg(), &(first as i64), &(rows as i64), &(v as i64), &scale]);
        self.sync();
    }
}

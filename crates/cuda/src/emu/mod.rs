//! The emulated CUDA device: the [`Device`] calls of a GPU run on the host, for
//! correctness (tests here and in CI), not speed. Kernels are the `.cu` sources
//! compiled as C++ by build.rs (threads of a block as fibers meeting at barriers, see
//! `emu/runtime.cpp`); GEMMs follow cuBLAS's column-major semantics on a reference
//! implementation (`gemm.rs`); memory is registered, bounds-checked allocations with
//! guard pages and a never-written fill (`mem.rs`). Every launch is checked against the
//! kernel's signature (argument count and kinds, pointers into this device's memory)
//! and CUDA's limits (block size, grid size, 48 KiB of shared memory without opt-in)
//! before it runs; a fault inside a kernel names the kernel, block, thread and address.
//! Execution is synchronous: the stream's order is the call order.

pub mod gemm;
pub mod mem;

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::device::{ArgKind, DevPtr, Device, Dims, Dtype, Gemm, KArg};

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Dim3 {
    x: u32,
    y: u32,
    z: u32,
}

#[repr(C)]
pub(crate) struct EmuLaunch {
    grid: Dim3,
    block: Dim3,
    shared_bytes: u64,
    trap_invalid: i32,
}

#[repr(C)]
pub(crate) struct EmuFault {
    kind: i32,
    addr: u64,
    block: Dim3,
    thread: Dim3,
    what: [u8; 200],
}

pub(crate) struct Param {
    pub name: &'static str,
    pub ty: &'static str,
    pub kind: ArgKind,
}

pub(crate) struct EmuKernel {
    pub name: &'static str,
    pub source: &'static str,
    pub params: &'static [Param],
    launch: unsafe extern "C" fn(*const EmuLaunch, *const *mut c_void, *mut EmuFault) -> i32,
}

include!(concat!(env!("OUT_DIR"), "/emu_kernels.rs"));

/// The kernel `name` of the host build, or `None`.
pub(crate) fn kernel(name: &str) -> Option<&'static EmuKernel> {
    KERNELS.iter().find(|k| k.name == name)
}

/// Names of every kernel the host build holds (tests check it equals `crate::SOURCES`).
pub fn kernel_names() -> Vec<(&'static str, &'static str)> {
    KERNELS.iter().map(|k| (k.source, k.name)).collect()
}

/// One emulated device.
pub struct EmuDevice {
    ordinal: usize,
    /// Invalid floating-point operations trap inside kernels (default; reads of
    /// never-written memory are found so). `HYPERION_EMU_TRAP_INVALID=0` turns it off.
    trap_invalid: bool,
    /// Bytes this device handle has allocated now and at most (like a GPU context's).
    used: AtomicUsize,
    peak: AtomicUsize,
}

impl EmuDevice {
    pub fn new(ordinal: usize) -> EmuDevice {
        let trap_invalid = std::env::var("HYPERION_EMU_TRAP_INVALID").map_or(true, |v| v != "0");
        EmuDevice { ordinal, trap_invalid, used: AtomicUsize::new(0), peak: AtomicUsize::new(0) }
    }

    fn check_dims(&self, name: &str, d: &Dims) -> Result<(), String> {
        let (g, b) = (d.grid, d.block);
        let threads = b.0 as u64 * b.1 as u64 * b.2 as u64;
        let bad = if g.0 == 0 || g.1 == 0 || g.2 == 0 || threads == 0 {
            Some("a zero grid or block dimension".to_string())
        } else if threads > 1024 || b.0 > 1024 || b.1 > 1024 || b.2 > 64 {
            Some(format!("{threads} threads per block (at most 1024; x, y <= 1024, z <= 64)"))
        } else if g.0 > i32::MAX as u32 || g.1 > 65_535 || g.2 > 65_535 {
            Some("a grid beyond (2^31 - 1, 65535, 65535)".to_string())
        } else if d.shared > 48 * 1024 {
            Some(format!("{} bytes of dynamic shared memory (48 KiB without an opt-in attribute)", d.shared))
        } else {
            None
        };
        match bad {
            Some(why) => Err(format!("cuda-emu:{}: launch of {name} with {d}: {why} (CUDA_ERROR_INVALID_VALUE)", self.ordinal)),
            None => Ok(()),
        }
    }
}

/// The element type a pointer parameter of `k` reads, where its type says: `floatX` is
/// its build's (the `_bf16` build's bf16), `float` f32, `bf16_bits` bf16; others
/// (`u32` tokens) unchecked.
fn element_type(k: &EmuKernel, ty: &str) -> Option<Dtype> {
    let base = ty.trim_start_matches("const ").trim_end_matches('*').trim();
    match base {
        "floatX" if k.name.ends_with("_bf16") => Some(Dtype::Bf16),
        "floatX" | "float" => Some(Dtype::F32),
        "bf16_bits" => Some(Dtype::Bf16),
        _ => None,
    }
}

fn signature(k: &EmuKernel) -> String {
    let ps: Vec<String> = k.params.iter().map(|p| format!("{} {}", p.ty, p.name)).collect();
    format!("{}({})", k.name, ps.join(", "))
}

impl Device for EmuDevice {
    fn name(&self) -> String {
        format!("cuda-emu:{}", self.ordinal)
    }
    fn alloc(&self, bytes: usize) -> Result<DevPtr, String> {
        let p = mem::alloc(self.ordinal, bytes)?;
        let now = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
        Ok(p)
    }
    fn free(&self, p: DevPtr) {
        match mem::free(p) {
            Ok(n) => {
                self.used.fetch_sub(n, Ordering::Relaxed);
            }
            Err(e) => panic!("cuda-emu:{}: {e}", self.ordinal),
        }
    }
    fn htod(&self, dst: DevPtr, src: &[u8]) -> Result<(), String> {
        mem::check(self.ordinal, dst, src.len(), &|| format!("copy of {} bytes to the device", src.len()))?;
        // SAFETY: checked to lie in one allocation.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }
    fn dtoh(&self, dst: &mut [u8], src: DevPtr) -> Result<(), String> {
        let n = dst.len();
        mem::check(self.ordinal, src, n, &|| format!("copy of {n} bytes to the host"))?;
        // SAFETY: as htod.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), n) };
        if src.is_multiple_of(4) {
            if let Some(i) = dst.chunks_exact(4).position(|w| w == mem::NEVER_WRITTEN) {
                return Err(format!("copy of {n} bytes to the host: element {i} ({}) was never written", mem::describe(src + 4 * i as u64)));
            }
        }
        Ok(())
    }
    fn dtod(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<(), String> {
        mem::check(self.ordinal, src, bytes, &|| format!("device copy of {bytes} bytes: source"))?;
        mem::check(self.ordinal, dst, bytes, &|| format!("device copy of {bytes} bytes: destination"))?;
        // SAFETY: both ranges checked; `copy` allows overlap as cuMemcpy does not promise.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }
    fn memset(&self, dst: DevPtr, byte: u8, bytes: usize) -> Result<(), String> {
        mem::check(self.ordinal, dst, bytes, &|| format!("memset of {bytes} bytes"))?;
        // SAFETY: checked.
        unsafe { std::ptr::write_bytes(dst as *mut u8, byte, bytes) };
        Ok(())
    }
    fn launch(&self, name: &str, dims: Dims, args: &[KArg]) -> Result<(), String> {
        let k = kernel(name).ok_or_else(|| format!("cuda-emu:{}: no kernel named {name} in the host build", self.ordinal))?;
        let ctx = || format!("cuda-emu:{}: kernel {} ({dims})", self.ordinal, signature(k));
        if args.len() != k.params.len() {
            return Err(format!("{}: launched with {} arguments", ctx(), args.len()));
        }
        for (i, (a, p)) in args.iter().zip(k.params).enumerate() {
            if a.kind() != p.kind {
                return Err(format!("{}: argument {i} ({} {}) given a {:?} ({a:?})", ctx(), p.ty, p.name, a.kind()));
            }
            if let Some(ptr) = a.addr() {
                if ptr != 0 {
                    mem::owned(self.ordinal, ptr).map_err(|e| format!("{}: argument {i} ({} {}) = 0x{ptr:x}: {e}", ctx(), p.ty, p.name))?;
                }
            }
            if let KArg::View(ptr, dt) = *a {
                if let Some(want) = element_type(k, p.ty) {
                    if ptr != 0 && dt != want {
                        return Err(format!("{}: argument {i} ({} {}) is a view of {dt:?} elements, the kernel reads {want:?}", ctx(), p.ty, p.name));
                    }
                }
            }
        }
        self.check_dims(name, &dims)?;
        // CUDA's kernelParams: one pointer to each argument's value.
        let mut vals: Vec<KArg> = args.to_vec();
        let ptrs: Vec<*mut c_void> = vals
            .iter_mut()
            .map(|a| match a {
                KArg::Ptr(p) | KArg::View(p, _) => p as *mut u64 as *mut c_void,
                KArg::I64(v) => v as *mut i64 as *mut c_void,
                KArg::I32(v) => v as *mut i32 as *mut c_void,
                KArg::U32(v) => v as *mut u32 as *mut c_void,
                KArg::F32(v) => v as *mut f32 as *mut c_void,
                KArg::F64(v) => v as *mut f64 as *mut c_void,
            })
            .collect();
        let d3 = |t: (u32, u32, u32)| Dim3 { x: t.0, y: t.1, z: t.2 };
        let l = EmuLaunch { grid: d3(dims.grid), block: d3(dims.block), shared_bytes: dims.shared as u64, trap_invalid: self.trap_invalid as i32 };
        let mut f = EmuFault { kind: 0, addr: 0, block: Dim3::default(), thread: Dim3::default(), what: [0; 200] };
        // SAFETY: the arguments match the kernel's parameters in number and kind, every
        // pointer lies in this device's memory, and the dimensions are within CUDA's.
        let rc = unsafe { (k.launch)(&l, ptrs.as_ptr(), &mut f) };
        if rc == 0 {
            return Ok(());
        }
        let what = String::from_utf8_lossy(&f.what[..f.what.iter().position(|&c| c == 0).unwrap_or(200)]).into_owned();
        let (b, t) = (f.block, f.thread);
        let at = if f.kind == 1 || f.kind == 6 { format!(" at 0x{:x}: {}", f.addr, mem::describe(f.addr)) } else { String::new() };
        Err(format!("{} ({}.cu), block ({}, {}, {}), thread ({}, {}, {}): {what}{at}", ctx(), k.source, b.x, b.y, b.z, t.x, t.y, t.z))
    }
    fn gemm(&self, g: &Gemm) -> Result<(), String> {
        gemm::run(self.ordinal, g).map_err(|e| format!("cuda-emu:{}: {e}", self.ordinal))
    }
    fn synchronize(&self) -> Result<(), String> {
        Ok(())
    }
    fn memory(&self) -> (usize, usize) {
        (self.used.load(Ordering::Relaxed), self.peak.load(Ordering::Relaxed))
    }
}

//! The emulated device's memory: every allocation is host memory of its own mapping,
//! placed so that its last byte ends a page and followed (and preceded) by an
//! inaccessible guard page. An access one element past the end from a kernel faults;
//! copies, launch arguments and GEMM operands are checked against the registry before
//! they run. New memory is filled with a signalling-NaN pattern ("never written"): a
//! kernel's arithmetic on it traps, and a GEMM or a copy to the host that reads it is
//! an error.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::device::DevPtr;

/// The fill of never-written memory: as f32 `0x7f817f81` and as bf16 `0x7f81`, both
/// signalling NaNs (exponent all ones, quiet bit clear, payload non-zero).
pub const NEVER_WRITTEN: [u8; 4] = [0x81, 0x7f, 0x81, 0x7f];
pub const NEVER_WRITTEN_F32: u32 = 0x7f81_7f81;
pub const NEVER_WRITTEN_BF16: u16 = 0x7f81;

struct Alloc {
    id: u64,
    device: usize,
    map: *mut libc::c_void,
    map_len: usize,
    bytes: usize,
}

// SAFETY: the mapping is owned by the registry entry and only unmapped on free.
unsafe impl Send for Alloc {}

struct Registry {
    next_id: u64,
    /// By start address.
    live: BTreeMap<u64, Alloc>,
}

static REG: Mutex<Registry> = Mutex::new(Registry { next_id: 1, live: BTreeMap::new() });

fn reg() -> std::sync::MutexGuard<'static, Registry> {
    REG.lock().unwrap_or_else(|e| e.into_inner())
}

fn page() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// A new allocation of `bytes` on `device`, filled with the never-written pattern.
pub fn alloc(device: usize, bytes: usize) -> Result<DevPtr, String> {
    let pg = page();
    let body = bytes.div_ceil(pg).max(1) * pg;
    let map_len = body + 2 * pg;
    // SAFETY: a fresh anonymous mapping, checked below.
    let map = unsafe { libc::mmap(std::ptr::null_mut(), map_len, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE, -1, 0) };
    if map == libc::MAP_FAILED {
        return Err(format!("out of host memory for an emulated allocation of {bytes} bytes"));
    }
    // SAFETY: [map + pg, map + pg + body) lies inside the mapping.
    unsafe {
        if libc::mprotect((map as *mut u8).add(pg) as *mut _, body, libc::PROT_READ | libc::PROT_WRITE) != 0 {
            libc::munmap(map, map_len);
            return Err("mprotect failed for an emulated allocation".into());
        }
    }
    // The end of the allocation is the end of the accessible pages; the start keeps
    // 4-byte alignment (every element type here is at most 4 bytes).
    let start = map as u64 + (pg + body) as u64 - bytes.next_multiple_of(4) as u64;
    // SAFETY: [start, start + bytes) is accessible.
    unsafe { fill_pattern(start as *mut u8, bytes.next_multiple_of(4)) };
    let mut r = reg();
    let id = r.next_id;
    r.next_id += 1;
    r.live.insert(start, Alloc { id, device, map, map_len, bytes });
    Ok(start)
}

unsafe fn fill_pattern(p: *mut u8, n: usize) {
    for i in 0..n {
        *p.add(i) = NEVER_WRITTEN[i % 4];
    }
}

/// Frees the allocation that starts at `p` (the caller's error otherwise); its size.
pub fn free(p: DevPtr) -> Result<usize, String> {
    let a = reg().live.remove(&p).ok_or_else(|| format!("free of 0x{p:x}, which is not the start of a live allocation"))?;
    // SAFETY: the mapping made by `alloc`, unmapped once.
    unsafe { libc::munmap(a.map, a.map_len) };
    Ok(a.bytes)
}

/// Where an address lies, for messages.
pub fn describe(addr: u64) -> String {
    let r = reg();
    if let Some((&s, a)) = r.live.range(..=addr).next_back() {
        if addr < s + a.bytes as u64 {
            return format!("byte {} of allocation #{} (cuda-emu:{}, {} bytes)", addr - s, a.id, a.device, a.bytes);
        }
        if addr < s + a.bytes.next_multiple_of(page()) as u64 + page() as u64 {
            return format!("{} bytes past the end of allocation #{} (cuda-emu:{}, {} bytes)", addr - s - a.bytes as u64, a.id, a.device, a.bytes);
        }
    }
    if let Some((&s, a)) = r.live.range(addr..).next() {
        if s - addr <= 2 * page() as u64 {
            return format!("{} bytes before the start of allocation #{} (cuda-emu:{}, {} bytes)", s - addr, a.id, a.device, a.bytes);
        }
    }
    "no allocation".into()
}

/// Checks that `[p, p + bytes)` lies inside one live allocation of `device`. `what`
/// names the call for the message. An empty range may sit at an allocation's end.
pub fn check(device: usize, p: DevPtr, bytes: usize, what: &dyn Fn() -> String) -> Result<(), String> {
    let r = reg();
    let hit = r.live.range(..=p).next_back();
    match hit {
        Some((&s, a)) if p + bytes as u64 <= s + a.bytes as u64 && (bytes > 0 || p <= s + a.bytes as u64) => {
            if a.device != device {
                return Err(format!("{}: 0x{p:x} is memory of cuda-emu:{}, not of cuda-emu:{device}", what(), a.device));
            }
            Ok(())
        }
        Some((&s, a)) if p < s + a.bytes as u64 => Err(format!(
            "{}: {bytes} bytes at byte {} of allocation #{} ({} bytes) run {} bytes past its end",
            what(),
            p - s,
            a.id,
            a.bytes,
            p + bytes as u64 - s - a.bytes as u64
        )),
        _ => {
            drop(r);
            Err(format!("{}: 0x{p:x} ({bytes} bytes) is not device memory ({})", what(), describe(p)))
        }
    }
}

/// Whether `p` points into (or at the end of) a live allocation of `device`.
pub fn owned(device: usize, p: DevPtr) -> Result<(), String> {
    check(device, p, 0, &|| String::new()).map_err(|e| e.trim_start_matches(": ").to_string())
}

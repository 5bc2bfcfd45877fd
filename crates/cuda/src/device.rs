//! The one seam below the GPU backend: everything `backend::Cuda` asks of a device.
//! [`crate::real::RealDevice`] drives a GPU through cudarc (driver, cuBLAS, NVRTC);
//! [`crate::emu::EmuDevice`] runs the same calls on the host (the kernels' own `.cu`
//! text compiled as C++, cuBLAS's column-major semantics on a reference GEMM, device
//! memory as registered, bounds-checked allocations). The backend above is written once
//! and chosen at run time (`train.device = "cuda"` or `"cuda-emu"`), so only this layer
//! differs between a GPU and the emulator.

use std::fmt;

/// A device address.
pub type DevPtr = u64;

/// One kernel argument, as a launch passes it (CUDA's `void** kernelParams`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KArg {
    /// A device address (0: a null pointer).
    Ptr(DevPtr),
    /// The address of a view of elements of this type (checked by the emulator against
    /// the parameter's element type; passed to the device as the address).
    View(DevPtr, Dtype),
    I64(i64),
    I32(i32),
    U32(u32),
    F32(f32),
    F64(f64),
}

impl KArg {
    /// The device address of a pointer argument.
    pub fn addr(&self) -> Option<DevPtr> {
        match *self {
            KArg::Ptr(p) | KArg::View(p, _) => Some(p),
            _ => None,
        }
    }

    pub fn kind(&self) -> ArgKind {
        match self {
            KArg::Ptr(_) | KArg::View(..) => ArgKind::Ptr,
            KArg::I64(_) => ArgKind::I64,
            KArg::I32(_) => ArgKind::I32,
            KArg::U32(_) => ArgKind::U32,
            KArg::F32(_) => ArgKind::F32,
            KArg::F64(_) => ArgKind::F64,
        }
    }
}

/// The kind of a kernel parameter (read from the `.cu` signature by build.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    Ptr,
    I64,
    I32,
    U32,
    F32,
    F64,
}

/// A launch's grid, block and dynamic shared-memory bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared: u32,
}

impl fmt::Display for Dims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (g, b) = (self.grid, self.block);
        write!(f, "grid ({}, {}, {}), block ({}, {}, {}), {} B shared", g.0, g.1, g.2, b.0, b.1, b.2, self.shared)
    }
}

/// Element types of GEMM operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Bf16,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }
}

/// One GEMM in cuBLAS's own terms (`cublasGemmStridedBatchedEx`): column-major
/// `C = alpha op(A) op(B) + beta C` for each of `batch` matrices, `op(A)` m x k,
/// `op(B)` k x n, `C` m x n, leading dimensions and element strides as cuBLAS takes
/// them, fp32 accumulation. With `beta == 0`, C is not read. A non-zero `bias` is
/// cuBLASLt's `CUBLASLT_EPILOGUE_BIAS`: `bias[i]` (m elements of C's type, the same for
/// every matrix of the batch) added to row i of every column before C is stored. With a
/// non-zero `gelu_aux` too, `CUBLASLT_EPILOGUE_GELU_AUX_BIAS`: the biased sum goes to
/// `gelu_aux` (C's layout and type) and its GELU (tanh form) to C.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub ta: bool,
    pub tb: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub a: DevPtr,
    pub lda: usize,
    pub stride_a: usize,
    pub b: DevPtr,
    pub ldb: usize,
    pub stride_b: usize,
    pub beta: f32,
    pub c: DevPtr,
    pub ldc: usize,
    pub stride_c: usize,
    pub batch: usize,
    /// A's and B's element type.
    pub ab: Dtype,
    /// C's element type.
    pub cd: Dtype,
    /// The bias epilogue's vector (0: none).
    pub bias: DevPtr,
    /// The GELU epilogue's pre-activation output (0: none; needs `bias`).
    pub gelu_aux: DevPtr,
}

impl fmt::Display for Gemm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = |t: bool| if t { "T" } else { "N" };
        write!(
            f,
            "gemm {}{} m={} n={} k={} lda={} ldb={} ldc={} strides ({}, {}, {}) batch={} alpha={} beta={} {:?}->{:?}{}",
            op(self.ta),
            op(self.tb),
            self.m,
            self.n,
            self.k,
            self.lda,
            self.ldb,
            self.ldc,
            self.stride_a,
            self.stride_b,
            self.stride_c,
            self.batch,
            self.alpha,
            self.beta,
            self.ab,
            self.cd,
            match (self.bias != 0, self.gelu_aux != 0) {
                (_, true) => " +bias+GELU epilogue",
                (true, false) => " +bias epilogue",
                _ => "",
            }
        )
    }
}

/// What a backend needs of a device. Errors are messages that name the call (and for
/// the emulator, the kernel, block, thread and allocation); the backend turns them into
/// panics, as a failed CUDA call is not a condition a training step can recover from.
pub trait Device: Send + Sync {
    /// `cuda:N` or `cuda-emu:N`.
    fn name(&self) -> String;
    /// `bytes` of device memory, contents undefined (the emulator: "never written").
    fn alloc(&self, bytes: usize) -> Result<DevPtr, String>;
    fn free(&self, p: DevPtr);
    fn htod(&self, dst: DevPtr, src: &[u8]) -> Result<(), String>;
    fn dtoh(&self, dst: &mut [u8], src: DevPtr) -> Result<(), String>;
    fn dtod(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<(), String>;
    fn memset(&self, dst: DevPtr, byte: u8, bytes: usize) -> Result<(), String>;
    /// Launches kernel `name` (one of `crate::SOURCES`' kernels) on the device's stream.
    fn launch(&self, name: &str, dims: Dims, args: &[KArg]) -> Result<(), String>;
    fn gemm(&self, g: &Gemm) -> Result<(), String>;
    /// Waits for everything queued on the device's stream.
    fn synchronize(&self) -> Result<(), String>;
    /// Bytes allocated now and at most since the device was opened.
    fn memory(&self) -> (usize, usize);
}

/// `Some(ordinal)` of an emulated device name `cuda-emu` / `cuda-emu:N`.
pub fn parse_emu(name: &str) -> Option<usize> {
    match name {
        "cuda-emu" => Some(0),
        s => s.strip_prefix("cuda-emu:").and_then(|n| n.parse().ok()),
    }
}

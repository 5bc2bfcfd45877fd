//! [`Device`] on a GPU: the CUDA driver through cudarc (dynamic loading: builds and
//! links without a CUDA toolkit), kernels compiled by NVRTC for the device
//! ([`crate::gpu::Gpu`]), cuBLAS `GemmStridedBatchedEx` with fp32 pedantic compute for
//! f32 (no TF32, so results compare with the CPU) and fp32 accumulation for bf16; a GEMM
//! with a bias epilogue (the bf16 path's linear layers) through cuBLASLt.
//!
//! Status: written against cudarc's API and the CUDA documentation; it has not run on a
//! GPU yet (no device has been lent to this project). The emulated device runs the same
//! calls through the same backend in the tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::cublas::sys as blas;
use cudarc::cublaslt::{result as ltr, sys as lt};
use cudarc::driver::{result as drv, LaunchConfig, PushKernelArg};

use crate::device::{DevPtr, Device, Dims, Dtype, Gemm, KArg};
use crate::gpu::Gpu;

/// A cuBLAS handle, used under a lock (one GEMM at a time per device handle).
struct Blas(blas::cublasHandle_t);

/// A cuBLASLt handle and its workspace, used under a lock.
struct Lt {
    h: lt::cublasLtHandle_t,
    workspace: DevPtr,
}
// SAFETY: used only while holding the Mutex around it.
unsafe impl Send for Lt {}

/// cuBLASLt's workspace (NVIDIA recommends 32 MiB on Hopper).
const LT_WORKSPACE: usize = 32 << 20;
// SAFETY: the handle is only used while holding the Mutex around it.
unsafe impl Send for Blas {}

pub struct RealDevice {
    pub gpu: Arc<Gpu>,
    ordinal: usize,
    blas: Mutex<Blas>,
    lt: Mutex<Lt>,
    used: AtomicUsize,
    peak: AtomicUsize,
    sizes: Mutex<std::collections::HashMap<u64, usize>>,
}

fn err(what: &str, e: impl std::fmt::Debug) -> String {
    format!("{what}: {e:?}")
}

impl RealDevice {
    pub fn new(ordinal: usize) -> Result<RealDevice, String> {
        let gpu = Arc::new(Gpu::new(ordinal)?);
        let h = cudarc::cublas::result::create_handle().map_err(|e| err("cuBLAS", e))?;
        // SAFETY: a fresh handle and the device's stream.
        unsafe {
            cudarc::cublas::result::set_stream(h, gpu.stream.cu_stream() as _).map_err(|e| err("cuBLAS stream", e))?;
            blas::cublasSetMathMode(h, blas::cublasMath_t::CUBLAS_PEDANTIC_MATH).result().map_err(|e| err("cuBLAS math mode", e))?;
        }
        let lth = ltr::create_handle().map_err(|e| err("cuBLASLt", e))?;
        // SAFETY: a fresh allocation for the workspace, owned by this device.
        let workspace = unsafe { drv::malloc_sync(LT_WORKSPACE) }.map_err(|e| err("cuBLASLt workspace", e))?;
        Ok(RealDevice {
            gpu,
            ordinal,
            blas: Mutex::new(Blas(h)),
            lt: Mutex::new(Lt { h: lth, workspace }),
            // The cuBLASLt workspace is device memory this device holds too.
            used: AtomicUsize::new(LT_WORKSPACE),
            peak: AtomicUsize::new(LT_WORKSPACE),
            sizes: Mutex::new(Default::default()),
        })
    }

    fn bind(&self) -> Result<(), String> {
        self.gpu.ctx.bind_to_thread().map_err(|e| err("binding the context", e))
    }
}

impl RealDevice {
    /// `g` through cuBLASLt with the bias (or GELU-aux-bias) epilogue: fp32 compute and scale, the operand
    /// layouts and batch strides as cuBLAS's, the fastest algorithm of the heuristic.
    fn gemm_lt(&self, g: &Gemm) -> Result<(), String> {
        let ty = |d: Dtype| match d {
            Dtype::F32 => lt::cudaDataType::CUDA_R_32F,
            Dtype::Bf16 => lt::cudaDataType::CUDA_R_16BF,
        };
        let what = || format!("cuBLASLt {g}");
        let e = |x: cudarc::cublaslt::result::CublasError| format!("{}: {x:?}", what());
        let guard = self.lt.lock().unwrap_or_else(|p| p.into_inner());
        let compute = if g.ab == Dtype::F32 { lt::cublasComputeType_t::CUBLAS_COMPUTE_32F_PEDANTIC } else { lt::cublasComputeType_t::CUBLAS_COMPUTE_32F };
        let desc = ltr::create_matmul_desc(compute, lt::cudaDataType::CUDA_R_32F).map_err(e)?;
        // (rows, cols) of each stored operand, column-major.
        let (ar, ac) = if g.ta { (g.k, g.m) } else { (g.m, g.k) };
        let (br, bc) = if g.tb { (g.n, g.k) } else { (g.k, g.n) };
        let layout = |t: Dtype, r: usize, c: usize, ld: usize, stride: usize| -> Result<lt::cublasLtMatrixLayout_t, String> {
            let l = ltr::create_matrix_layout(ty(t), r as u64, c as u64, ld as i64).map_err(e)?;
            if g.batch > 1 {
                let (count, stride) = (g.batch as i32, stride as i64);
                // SAFETY: a live layout; the attributes' documented types.
                unsafe {
                    ltr::set_matrix_layout_attribute(l, lt::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count as *const i32 as *const _, 4).map_err(e)?;
                    ltr::set_matrix_layout_attribute(l, lt::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride as *const i64 as *const _, 8)
                        .map_err(e)?;
                }
            }
            Ok(l)
        };
        let (la, lb, lc) = (layout(g.ab, ar, ac, g.lda, g.stride_a)?, layout(g.ab, br, bc, g.ldb, g.stride_b)?, layout(g.cd, g.m, g.n, g.ldc, g.stride_c)?);
        let pref = ltr::create_matmul_pref().map_err(e)?;
        let run = || -> Result<(), String> {
            // cublasOperation_t as the attribute's int32: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1.
            let op = |t: bool| t as i32;
            let epi = if g.gelu_aux != 0 { lt::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_AUX_BIAS } else { lt::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS };
            let (opa, opb, bias_ty, ws, aux_ld) = (op(g.ta), op(g.tb), ty(g.cd), LT_WORKSPACE as u64, g.ldc as i64);
            // SAFETY: live descriptors; every attribute with its documented type and size;
            // the operands view matrices of the stated shapes on this device.
            unsafe {
                use lt::cublasLtMatmulDescAttributes_t as A;
                let set = |a: A, p: *const std::ffi::c_void, n: usize| ltr::set_matmul_desc_attribute(desc, a, p, n).map_err(e);
                set(A::CUBLASLT_MATMUL_DESC_TRANSA, &opa as *const _ as *const _, std::mem::size_of_val(&opa))?;
                set(A::CUBLASLT_MATMUL_DESC_TRANSB, &opb as *const _ as *const _, std::mem::size_of_val(&opb))?;
                set(A::CUBLASLT_MATMUL_DESC_EPILOGUE, &epi as *const _ as *const _, std::mem::size_of_val(&epi))?;
                set(A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias as *const u64 as *const _, 8)?;
                set(A::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_ty as *const _ as *const _, std::mem::size_of_val(&bias_ty))?;
                if g.gelu_aux != 0 {
                    set(A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &g.gelu_aux as *const u64 as *const _, 8)?;
                    set(A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld as *const i64 as *const _, 8)?;
                    set(A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, &bias_ty as *const _ as *const _, std::mem::size_of_val(&bias_ty))?;
                }
                ltr::set_matmul_pref_attribute(pref, lt::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws as *const u64 as *const _, 8).map_err(e)?;
                let algo = ltr::get_matmul_algo_heuristic(guard.h, desc, la, lb, lc, lc, pref).map_err(e)?;
                ltr::matmul(
                    guard.h,
                    desc,
                    &g.alpha as *const f32 as *const _,
                    &g.beta as *const f32 as *const _,
                    g.a as *const _,
                    la,
                    g.b as *const _,
                    lb,
                    g.c as *const _,
                    lc,
                    g.c as *mut _,
                    lc,
                    &algo.algo,
                    guard.workspace as *mut _,
                    LT_WORKSPACE,
                    self.gpu.stream.cu_stream() as _,
                )
                .map_err(e)
            }
        };
        let r = run();
        // SAFETY: each was created above and is destroyed once.
        unsafe {
            let _ = ltr::destroy_matmul_pref(pref);
            for l in [la, lb, lc] {
                let _ = ltr::destroy_matrix_layout(l);
            }
            let _ = ltr::destroy_matmul_desc(desc);
        }
        r
    }
}

impl Drop for RealDevice {
    fn drop(&mut self) {
        let _ = self.bind();
        let lt = self.lt.get_mut().unwrap_or_else(|p| p.into_inner());
        // SAFETY: owned by this device, released once; nothing queued uses them after
        // the synchronisation.
        unsafe {
            let _ = self.gpu.stream.synchronize();
            let _ = ltr::destroy_handle(lt.h);
            let _ = drv::free_sync(lt.workspace);
        }
    }
}

impl Device for RealDevice {
    fn name(&self) -> String {
        format!("cuda:{}", self.ordinal)
    }
    fn alloc(&self, bytes: usize) -> Result<DevPtr, String> {
        self.bind()?;
        // SAFETY: a fresh allocation of `bytes`.
        let p = unsafe { drv::malloc_sync(bytes.max(1)) }.map_err(|e| err(&format!("allocating {bytes} bytes on cuda:{}", self.ordinal), e))?;
        self.sizes.lock().unwrap().insert(p, bytes);
        let now = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
        Ok(p)
    }
    fn free(&self, p: DevPtr) {
        let _ = self.bind();
        // Kernels queued on the stream may still use it.
        let _ = self.gpu.stream.synchronize();
        if let Some(n) = self.sizes.lock().unwrap().remove(&p) {
            self.used.fetch_sub(n, Ordering::Relaxed);
        }
        // SAFETY: allocated by `alloc`, freed once.
        unsafe {
            let _ = drv::free_sync(p);
        }
    }
    fn htod(&self, dst: DevPtr, src: &[u8]) -> Result<(), String> {
        self.bind()?;
        self.synchronize()?;
        // SAFETY: the caller's view holds src.len() bytes at dst.
        unsafe { drv::memcpy_htod_sync(dst, src) }.map_err(|e| err("copy to the device", e))
    }
    fn dtoh(&self, dst: &mut [u8], src: DevPtr) -> Result<(), String> {
        self.bind()?;
        self.synchronize()?;
        // SAFETY: as htod.
        unsafe { drv::memcpy_dtoh_sync(dst, src) }.map_err(|e| err("copy to the host", e))
    }
    fn dtod(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<(), String> {
        self.bind()?;
        // SAFETY: both views hold `bytes` on this device; ordered on the stream.
        unsafe { drv::memcpy_dtod_async(dst, src, bytes, self.gpu.stream.cu_stream()) }.map_err(|e| err("device copy", e))
    }
    fn memset(&self, dst: DevPtr, byte: u8, bytes: usize) -> Result<(), String> {
        self.bind()?;
        self.synchronize()?;
        // SAFETY: the view holds `bytes`.
        unsafe { drv::memset_d8_sync(dst, byte, bytes) }.map_err(|e| err("memset", e))
    }
    fn launch(&self, name: &str, dims: Dims, args: &[KArg]) -> Result<(), String> {
        self.bind()?;
        let f = self.gpu.f(name);
        let s = &self.gpu.stream;
        let mut b = s.launch_builder(f);
        for a in args {
            match a {
                KArg::Ptr(p) | KArg::View(p, _) => b.arg(p),
                KArg::I64(v) => b.arg(v),
                KArg::I32(v) => b.arg(v),
                KArg::U32(v) => b.arg(v),
                KArg::F32(v) => b.arg(v),
                KArg::F64(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig { grid_dim: dims.grid, block_dim: dims.block, shared_mem_bytes: dims.shared };
        // SAFETY: the backend passes every kernel's arguments in its signature's order and
        // kinds (the emulated device checks the same calls against the signatures).
        unsafe { b.launch(cfg) }.map(|_| ()).map_err(|e| err(&format!("launching {name} with {dims}"), e))
    }
    fn gemm(&self, g: &Gemm) -> Result<(), String> {
        if g.m == 0 || g.n == 0 || g.batch == 0 {
            return Ok(());
        }
        self.bind()?;
        if g.bias != 0 || g.gelu_aux != 0 {
            return self.gemm_lt(g);
        }
        let op = |t: bool| if t { blas::cublasOperation_t::CUBLAS_OP_T } else { blas::cublasOperation_t::CUBLAS_OP_N };
        let ty = |d: Dtype| match d {
            Dtype::F32 => blas::cudaDataType::CUDA_R_32F,
            Dtype::Bf16 => blas::cudaDataType::CUDA_R_16BF,
        };
        // f32 in pedantic fp32 (comparable with the CPU); bf16 inputs accumulate in fp32.
        let compute = if g.ab == Dtype::F32 { blas::cublasComputeType_t::CUBLAS_COMPUTE_32F_PEDANTIC } else { blas::cublasComputeType_t::CUBLAS_COMPUTE_32F };
        let h = self.blas.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the operands view matrices of the stated shapes on this device.
        let r = unsafe {
            blas::cublasGemmStridedBatchedEx(
                h.0,
                op(g.ta),
                op(g.tb),
                g.m as i32,
                g.n as i32,
                g.k as i32,
                &g.alpha as *const f32 as *const _,
                g.a as *const _,
                ty(g.ab),
                g.lda as i32,
                g.stride_a as i64,
                g.b as *const _,
                ty(g.ab),
                g.ldb as i32,
                g.stride_b as i64,
                &g.beta as *const f32 as *const _,
                g.c as *mut _,
                ty(g.cd),
                g.ldc as i32,
                g.stride_c as i64,
                g.batch as i32,
                compute,
                blas::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            )
        };
        r.result().map_err(|e| err(&format!("cuBLAS {g}"), e))
    }
    fn synchronize(&self) -> Result<(), String> {
        self.gpu.stream.synchronize().map_err(|e| err("synchronize", e))
    }
    fn memory(&self) -> (usize, usize) {
        (self.used.load(Ordering::Relaxed), self.peak.load(Ordering::Relaxed))
    }
}

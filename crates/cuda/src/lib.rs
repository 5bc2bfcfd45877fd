//! # hyperion-cuda: the GPU backend's kernel sources
//!
//! Every op of both model families that is not a GEMM (cuBLAS does those) has a CUDA C
//! kernel here, in `kernels/*.cu`, forward and backward, f32 with the CPU kernels'
//! conventions (row-major, backward kernels add into their gradients, deterministic
//! reductions), built for f32 and bf16 storage (`floatX`, see the prelude). The sources are embedded in the binary and
//! compiled at run time by NVRTC for the device's architecture, so a build needs no CUDA
//! toolkit and the binary runs on machines without one (cudarc loads `libnvrtc`
//! dynamically).
//!
//! The backend (`backend::Cuda`) drives a [`device::Device`]: a GPU (`real`, through
//! cudarc) or the emulated device (`emu`: the same `.cu` text compiled for the host by
//! build.rs, cuBLAS's semantics on a reference GEMM, checked memory), chosen at run
//! time, so the tests exercise on any machine the code that drives a GPU.

/// Helpers every source uses (warp and block reductions, bf16 bit conversions),
/// prepended before compilation.
pub const PRELUDE: &str = include_str!("../kernels/prelude.cuh");

/// One kernel source file and the kernels it defines.
#[derive(Clone, Copy, Debug)]
pub struct Source {
    pub name: &'static str,
    pub text: &'static str,
    /// The `extern "C" __global__` functions it defines (checked against the text).
    pub kernels: &'static [&'static str],
}

/// Every kernel source.
pub const SOURCES: &[Source] = &[
    Source {
        name: "elementwise",
        text: include_str!("../kernels/elementwise.cu"),
        kernels: &["add_inplace", "add_bias", "scale_inplace", "gelu_forward", "gelu_backward", "swiglu_forward", "swiglu_backward", "f32_to_bf16", "bf16_to_f32", "column_sum_add"],
    },
    Source { name: "norm", text: include_str!("../kernels/norm.cu"), kernels: &["layernorm_forward", "layernorm_backward", "rmsnorm_forward", "rmsnorm_backward", "residual_norm_forward"] },
    Source { name: "embedding", text: include_str!("../kernels/embedding.cu"), kernels: &["embedding_forward", "embedding_backward_sorted", "position_backward"] },
    Source { name: "rope", text: include_str!("../kernels/rope.cu"), kernels: &["rope_rotate"] },
    Source {
        name: "flash",
        text: include_str!("../kernels/flash.cu"),
        kernels: &["flash_attention_forward", "flash_attention_rowdot", "flash_attention_backward_kv", "flash_attention_backward_q"],
    },
    Source { name: "xent", text: include_str!("../kernels/xent.cu"), kernels: &["xent_forward_backward", "xent_parallel_stats", "xent_parallel_exp", "xent_parallel_grad"] },
    Source { name: "optim", text: include_str!("../kernels/optim.cu"), kernels: &["adamw", "sum_squares_partial", "norm_total", "norm_ranks", "norm_clip"] },
    Source {
        name: "selftest",
        text: include_str!("../kernels/selftest.cu"),
        kernels: &["selftest_warps", "selftest_divergent_barrier", "selftest_shuffle_after_exit"],
    },
];

impl Source {
    /// Written over the storage type `floatX`: built as f32 and as bf16 (see the prelude).
    pub fn generic(&self) -> bool {
        self.text.contains("floatX")
    }

    /// The element types this source is built for.
    pub fn dtypes(&self) -> &'static [device::Dtype] {
        if self.generic() {
            &[device::Dtype::F32, device::Dtype::Bf16]
        } else {
            &[device::Dtype::F32]
        }
    }
}

/// The name kernel `base` has in the `dtype` build of its source: `base`, or
/// `base_bf16`.
pub fn kernel_name(base: &str, dtype: device::Dtype) -> std::borrow::Cow<'_, str> {
    match dtype {
        device::Dtype::F32 => base.into(),
        device::Dtype::Bf16 => format!("{base}_bf16").into(),
    }
}

/// The text NVRTC compiles for `s` in `dtype`: for bf16, the definition that selects
/// it and the renames of its kernels; then the prelude, then the source.
pub fn program(s: &Source, dtype: device::Dtype) -> String {
    let mut head = String::new();
    if dtype == device::Dtype::Bf16 {
        head.push_str("#define HYPERION_BF16 1\n");
        for k in s.kernels {
            head.push_str(&format!("#define {k} {}\n", kernel_name(k, dtype)));
        }
    }
    format!("{head}{PRELUDE}\n// ---- {}.cu ----\n{}", s.name, s.text)
}

/// Whether NVRTC's library can be loaded (it is looked up on `LD_LIBRARY_PATH` and the
/// system's library paths, e.g. the PyPI wheel `nvidia-cuda-nvrtc`'s `lib` folder).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to open the library; no NVRTC function is called.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles `s` to PTX for the virtual architecture `arch` (`"compute_80"`,
/// `"compute_90"`). The error is NVRTC's log, naming the source.
pub fn compile(s: &Source, dtype: device::Dtype, arch: &'static str) -> Result<String, String> {
    let opts = cudarc::nvrtc::CompileOptions { arch: Some(arch), name: Some(format!("{}.cu", s.name)), ..Default::default() };
    cudarc::nvrtc::compile_ptx_with_opts(program(s, dtype), opts).map(|p| p.to_src()).map_err(|e| {
        let why = match e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => format!("{other:?}"),
        };
        format!("{}.cu ({dtype:?}) for {arch}: {why}", s.name)
    })
}

/// The kernel names a source's text defines (`extern "C" __global__ void NAME(`).
pub fn defined_kernels(text: &str) -> Vec<&str> {
    text.match_indices("extern \"C\" __global__ void ")
        .filter_map(|(i, m)| {
            let rest = &text[i + m.len()..];
            rest.find('(').map(|j| rest[..j].trim())
        })
        .collect()
}

pub mod backend;
pub mod device;
pub mod dist;
pub mod emu;
pub mod gpu;
pub mod real;

//! A device with every kernel loaded: compiled by NVRTC for its compute capability at
//! start (PTX, so a newer device JITs it). What the GPU backend and the device checks
//! launch kernels through.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaStream};

use crate::{compile, kernel_name, SOURCES};

pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// `compute_XY` of the device.
    pub arch: &'static str,
    funcs: HashMap<String, CudaFunction>,
}

/// Why no GPU can be used here, or `None` when device `ordinal` is usable.
pub fn unavailable(ordinal: usize) -> Option<String> {
    // SAFETY: only tries to open the libraries.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some("the CUDA driver library (libcuda.so) is not installed".into());
    }
    if !crate::nvrtc_available() {
        return Some("libnvrtc is not on the library path (pip install 'nvidia-cuda-nvrtc==13.0.*', LD_LIBRARY_PATH)".into());
    }
    match CudaContext::device_count() {
        Ok(n) if (n as usize) > ordinal => None,
        Ok(n) => Some(format!("cuda:{ordinal} asked for, {n} device(s) present")),
        Err(e) => Some(format!("the CUDA driver reports no device: {e:?}")),
    }
}

impl Gpu {
    /// Device `ordinal` with every kernel compiled for it and loaded.
    pub fn new(ordinal: usize) -> Result<Gpu, String> {
        if let Some(why) = unavailable(ordinal) {
            return Err(why);
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("opening cuda:{ordinal}: {e:?}"))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| format!("{e:?}"))?;
        // NVRTC takes the architecture as a static string; one per process is fine.
        let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
        let mut funcs = HashMap::new();
        for s in SOURCES {
            for &dt in s.dtypes() {
                let ptx = compile(s, dt, arch)?;
                let module = ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx)).map_err(|e| format!("loading {}.cu ({dt:?}): {e:?}", s.name))?;
                for k in s.kernels {
                    let k = kernel_name(k, dt);
                    let f = module.load_function(&k).map_err(|e| format!("{}.cu: {k}: {e:?}", s.name))?;
                    funcs.insert(k.into_owned(), f);
                }
            }
        }
        let stream = ctx.default_stream();
        Ok(Gpu { ctx, stream, arch, funcs })
    }

    /// The loaded kernel `name` (one of [`crate::Source::kernels`], or its `_bf16` build).
    pub fn f(&self, name: &str) -> &CudaFunction {
        self.funcs.get(name).unwrap_or_else(|| panic!("no kernel named {name}"))
    }
}

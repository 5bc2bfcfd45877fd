//! The CUDA kernel sources compile with NVRTC for sm_80 (A100) and sm_90 (H100/H200),
//! as f32 and (the `floatX` sources) as bf16, without a GPU. Skips, saying so, when `libnvrtc` cannot be loaded.

use cuda_kernels::{compile, defined_kernels, kernel_name, nvrtc_available, SOURCES};

#[test]
fn every_source_lists_exactly_the_kernels_it_defines() {
    for s in SOURCES {
        let mut defined = defined_kernels(s.text);
        defined.sort_unstable();
        let mut listed = s.kernels.to_vec();
        listed.sort_unstable();
        assert_eq!(defined, listed, "{}.cu", s.name);
    }
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    if !nvrtc_available() {
        eprintln!(
            "SKIPPED: libnvrtc could not be loaded; install the PyPI wheel (pip install 'nvidia-cuda-nvrtc==13.0.*') and put its lib folder on LD_LIBRARY_PATH (scripts/test.sh does)"
        );
        return;
    }
    for arch in ["compute_80", "compute_90"] {
        let target = arch.replace("compute_", "sm_");
        for s in SOURCES {
            for &dt in s.dtypes() {
                let ptx = compile(s, dt, arch).unwrap_or_else(|e| panic!("{e}"));
                assert!(ptx.contains(&format!(".target {target}")), "{}.cu ({dt:?}) for {arch}: PTX for another target", s.name);
                for k in s.kernels {
                    let k = kernel_name(k, dt);
                    assert!(ptx.contains(&format!(".entry {k}(")), "{}.cu ({dt:?}) for {arch}: no entry point {k} in the PTX", s.name);
                }
            }
        }
    }
}

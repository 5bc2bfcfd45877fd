#!/usr/bin/env bash
# The test command (README, and .ci/run). Installs what the tests need that the machine
# lacks (OpenMPI and libclang for the `mpi` feature), then runs the whole suite:
# every crate's unit and integration tests, then the MPI tests under mpirun.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v mpirun >/dev/null 2>&1 || need_pkgs+=(openmpi-bin)
[ -e /usr/include/x86_64-linux-gnu/openmpi/mpi.h ] || [ -e /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ] || need_pkgs+=(libopenmpi-dev)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)  # network namespaces as "nodes" (test-mpi-nodes.sh)
compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null || compgen -G '/usr/lib/llvm-*/lib/libclang-[0-9]*.so*' >/dev/null || need_pkgs+=(libclang-dev)  # libclang itself, not libclang-cpp
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need_pkgs[*]} for the MPI tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    echo "missing ${need_pkgs[*]}: install them (apt-get install -y libopenmpi-dev openmpi-bin libclang-dev) for the MPI tests" >&2
  fi
fi

# NVRTC from PyPI (no GPU needed) for the CUDA kernel compile test (crates/cuda), pinned
# to the 13.0 series of the GPU machine's driver; without it that test says SKIPPED.
nvrtc_lib() { python3 -c "import nvidia.cu13, os; print(os.path.join(list(nvidia.cu13.__path__)[0], 'lib'))" 2>/dev/null || true; }
if ! compgen -G "$(nvrtc_lib)/libnvrtc.so*" >/dev/null; then
  python3 -m pip install -q "nvidia-cuda-nvrtc==13.0.*" 2>/dev/null || echo "could not install nvidia-cuda-nvrtc: the NVRTC compile test will skip" >&2
fi
if compgen -G "$(nvrtc_lib)/libnvrtc.so*" >/dev/null; then
  export LD_LIBRARY_PATH="$(nvrtc_lib)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

cargo test --workspace --no-fail-fast
# The engine's GPU path on the emulated CUDA device (train.device = "cuda-emu"): the
# host code that drives a GPU, the kernels' .cu text compiled for the host.
cargo test -p hyperion-engine --features cuda --test gpu_emu
# The NCCL backend builds without CUDA (dynamic loading); its unit tests run without a GPU.
cargo test -p hyperion-comm --features nccl --lib
bash scripts/test-mpi.sh
bash scripts/test-mpi-train.sh
bash scripts/test-mpi-nodes.sh
# The GPU build (issue 10) compiles and links without CUDA: cudarc loads the CUDA
# libraries at run time, and the GPU tests above say SKIPPED without a device.
cargo build -p hyperion --features cuda,nccl
echo "the cuda,nccl build: ok"

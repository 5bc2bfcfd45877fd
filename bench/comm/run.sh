#!/usr/bin/env bash
# Side-by-side collective benchmark for docs/comm.md: the local backend, the mpi
# backend (malloc tuned and untuned) and the plain C MPI program (with and without
# the glibc malloc environment), at 2 and 4 ranks, 1 MiB..256 MiB f32.
#
#   bench/comm/run.sh [OUT_DIR] [SIZES]      (default: bench/comm/results, 1M..256M)
#   REPS=3 (default) passes, interleaved so that load changes hit every config alike;
#   bench/comm/summarize.py then reports the median of the passes as a markdown table.
#
# Needs OpenMPI (apt-get install -y libopenmpi-dev openmpi-bin libclang-dev).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-bench/comm/results}
sizes=${2:-1M..256M}
mkdir -p "$out"
lo=$(echo "$sizes" | sed 's/\.\..*//'); hi=$(echo "$sizes" | sed 's/.*\.\.//')
bytes() { numfmt --from=iec "$1"; }

cargo build --release -p hyperion --features mpi >&2
mpicc -O2 -o "$out/mpi_bench" bench/comm/mpi_bench.c
# Copy the binary: other builds in the shared target/ may replace it meanwhile.
cp target/release/hyperion "$out/hyperion"
hyp=$out/hyperion
mpirun_() { mpirun --allow-run-as-root --oversubscribe "$@"; }
tune=(-x MALLOC_MMAP_MAX_=0 -x MALLOC_TRIM_THRESHOLD_=68719476736)

{
  echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -n), $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
  echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$out/machine.txt"

reps=${REPS:-3}
for rep in $(seq 1 "$reps"); do
  for np in 2 4; do
    ops=all-reduce,reduce-scatter
    $hyp bench comm --backend local --ranks "$np" --sizes "$sizes" --ops "$ops" > "$out/local-$np-r$rep.txt"
    mpirun_ -np "$np" $hyp bench comm --backend mpi --ranks "$np" --sizes "$sizes" --ops "$ops" > "$out/mpi-$np-r$rep.txt"
    mpirun_ -np "$np" $hyp bench comm --backend mpi --ranks "$np" --sizes "$sizes" --ops "$ops" --no-malloc-tuning > "$out/mpi_untuned-$np-r$rep.txt"
    mpirun_ -np "$np" "$out/mpi_bench" "$(bytes "$lo")" "$(bytes "$hi")" > "$out/c_untuned-$np-r$rep.txt"
    mpirun_ -np "$np" "${tune[@]}" "$out/mpi_bench" "$(bytes "$lo")" "$(bytes "$hi")" > "$out/c_tuned-$np-r$rep.txt"
  done
done
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/machine.txt"
python3 bench/comm/summarize.py "$out" > "$out/summary.md"
cat "$out/summary.md"
echo "results in $out" >&2

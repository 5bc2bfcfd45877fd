#!/usr/bin/env bash
# Data-parallel training over MPI processes (issue: ZeRO across processes), for .ci/run:
#  1. the layout-equivalence test under mpirun -np 2 and -np 4;
#  2. `hyperion train` under mpirun -np 2 (ZeRO-2), resumed under -np 4 (ZeRO-3);
#  3. SIGKILL of one MPI rank ends the job (no hang), and the run resumes from its last checkpoint;
#  4. SIGTERM to one rank stops both after the same step with a checkpoint, and the run resumes;
#  5. a rank that stops calling collectives is named by the flight recorder's diagnosis;
#  6. chaos: under `train --max-restarts --launcher mpirun`, a rank panic, a SIGKILL of a rank
#     and a SIGTERM of the job end with parameters bitwise those of an uninterrupted run;
#  7. tensor parallelism: -np 4 (dp 2 x tp 2, ZeRO 2) and -np 8 (dp 2 x tp 4, ZeRO 3) give the
#     losses of the same layouts as threads, and of one rank (relative 1e-5);
#  8. pipeline parallelism: -np 4 (tp 2 x pp 2, 1F1B) and -np 8 (dp 2 x tp 2 x pp 2, interleaved,
#     sequence parallel, ZeRO 1) likewise; the -np 8 run resumes on one rank;
#  9. `hyperion bench machine --backend mpi` measures 2 MPI processes (kernels and the MPI
#     all-reduce) and writes a cluster file the planner reads.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mpirun >/dev/null; then
  echo "error: mpirun not found. Install: apt-get install -y libopenmpi-dev openmpi-bin libclang-dev" >&2
  exit 1
fi
mpirun_() { mpirun --allow-run-as-root --oversubscribe "$@"; }

bin=$(cargo test -p hyperion-engine --features mpi --test mpi_equivalence --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*mpi_equivalence[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { cargo test -p hyperion-engine --features mpi --test mpi_equivalence --no-run >&2; echo "error: no mpi_equivalence binary" >&2; exit 1; }
for np in 2 4; do
  echo "== engine layout equivalence over MPI, mpirun -np $np"
  mpirun_ -np "$np" "$bin" --ignored --exact mpi_dp_matches_single_rank --nocapture --test-threads=1
done

cargo build -q -p hyperion --features mpi
hyp=target/debug/hyperion
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common=(train --preset tiny --set "data.dir=\"$work/data\"" --set 'data.inputs=["data/shakespeare/sonnets.txt"]' --set 'data.split="tail"'
        --set log.progress=false --set log.peak_flops=1e11 --set checkpoint.interval=10 --sample-tokens 0)

echo "== hyperion train under mpirun -np 2 (ZeRO-2), then resumed under -np 4 (ZeRO-3)"
mpirun_ -np 2 "$hyp" "${common[@]}" --set parallel.dp=2 --set parallel.zero=2 --set train.batch_size=4 --set train.steps=20 --out "$work/run" > "$work/np2.log"
grep -q "done: step 20" "$work/np2.log" || { cat "$work/np2.log"; echo "error: np=2 run did not finish" >&2; exit 1; }
ls "$work/run/checkpoints/step-00000020/model-rank00001.safetensors" >/dev/null
mpirun_ -np 4 "$hyp" train --resume "$work/run" --set parallel.dp=4 --set parallel.zero=3 --set train.batch_size=2 \
  --set train.steps=30 --set log.progress=false --sample-tokens 0 > "$work/np4.log"
grep -q "written by dp=2 tp=1 pp=1 zero=2, now dp=4 tp=1 pp=1 zero=3" "$work/np4.log" && grep -q "done: step 30" "$work/np4.log" \
  || { cat "$work/np4.log"; echo "error: resume on 4 ranks failed" >&2; exit 1; }

echo "== SIGKILL of one MPI rank ends the job, and the run resumes"
mpirun_ -np 2 "$hyp" "${common[@]}" --set parallel.dp=2 --set parallel.zero=1 --set train.steps=100000 \
  --set checkpoint.interval=20 --out "$work/kill" > "$work/kill.log" 2>&1 &
job=$!
for _ in $(seq 600); do [ -e "$work/kill/checkpoints/latest" ] && break; sleep 0.1; done
victim=$(pgrep -f "$work/kill" | while read -r p; do [ "$(ps -o comm= -p "$p")" = hyperion ] && echo "$p"; done | tail -1)
[ -n "$victim" ] || { echo "error: no rank process found" >&2; exit 1; }
start=$(date +%s)
kill -9 "$victim"
for _ in $(seq 1000); do kill -0 "$job" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$job" 2>/dev/null; then kill -9 "$job"; echo "error: the job still runs 100 s after a rank was killed" >&2; exit 1; fi
if wait "$job"; then echo "error: the job exited 0 after a rank was killed" >&2; exit 1; fi
echo "the job ended $(( $(date +%s) - start )) s after rank process $victim was killed"
tail -5 "$work/kill.log"
# The last committed checkpoint (the rank died at an unknown step after it); go 40 further.
last=$(sed 's/^step-0*//' "$work/kill/checkpoints/latest")
target=$((last + 40))
mpirun_ -np 2 "$hyp" train --resume "$work/kill" --set parallel.dp=2 --set train.steps=$target --set log.progress=false --sample-tokens 0 > "$work/resume.log"
grep -q "resumed .* at step $last " "$work/resume.log" && grep -q "done: step $target" "$work/resume.log" \
  || { cat "$work/resume.log"; echo "error: resume after the kill failed" >&2; exit 1; }
echo "== SIGTERM to one MPI rank stops every rank after the same step, with a checkpoint"
mpirun_ -np 2 "$hyp" "${common[@]}" --set parallel.dp=2 --set parallel.zero=2 --set train.steps=100000 \
  --set checkpoint.interval=0 --set train.log_interval=1 --out "$work/stop" > "$work/stop.log" 2>&1 &
job=$!
for _ in $(seq 600); do [ "$(cat "$work/stop/metrics.jsonl" 2>/dev/null | wc -l)" -ge 3 ] && break; sleep 0.1; done
victim=$(pgrep -f "$work/stop" | while read -r p; do [ "$(ps -o comm= -p "$p")" = hyperion ] && echo "$p"; done | tail -1)
[ -n "$victim" ] || { echo "error: no rank process found" >&2; exit 1; }
kill -TERM "$victim"
for _ in $(seq 600); do kill -0 "$job" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$job" 2>/dev/null; then kill -9 "$job"; echo "error: the job still runs 60 s after SIGTERM" >&2; exit 1; fi
set +e; wait "$job"; rc=$?; set -e
[ "$rc" -ne 0 ] || { cat "$work/stop.log"; echo "error: a stopped job exited 0" >&2; exit 1; }
stopped=$(sed 's/^step-0*//' "$work/stop/checkpoints/latest")
grep -q "stopped: step $stopped " "$work/stop.log" && grep -q "hyperion train --resume" "$work/stop.log" \
  || { cat "$work/stop.log"; echo "error: no graceful stop" >&2; exit 1; }
for r in 0 1; do ls "$work/stop/checkpoints/$(cat "$work/stop/checkpoints/latest")/model-rank0000$r.safetensors" >/dev/null; done
echo "rank process $victim got SIGTERM: both ranks stopped after step $stopped (exit $rc), checkpoint written"
mpirun_ -np 2 "$hyp" train --resume "$work/stop" --set parallel.dp=2 --set train.steps=$((stopped + 5)) --set log.progress=false --sample-tokens 0 > "$work/stop-resume.log"
grep -q "resumed .* at step $stopped " "$work/stop-resume.log" && grep -q "done: step $((stopped + 5))" "$work/stop-resume.log" \
  || { cat "$work/stop-resume.log"; echo "error: resume after the stop failed" >&2; exit 1; }
echo "== a rank that stops calling collectives is named by the flight recorder within the timeout"
start=$(date +%s)
set +e
timeout 120 mpirun --allow-run-as-root --oversubscribe -np 2 "$hyp" "${common[@]}" --set parallel.dp=2 --set train.steps=50 \
  --comm-timeout 3 --debug-hang 1:5 --out "$work/hang" > "$work/hang.log" 2>&1
rc=$?
set -e
took=$(( $(date +%s) - start ))
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || { cat "$work/hang.log"; echo "error: the hung job exited $rc" >&2; exit 1; }
grep -q "flight recorder" "$work/hang.log" && grep -q "rank 1: SILENT" "$work/hang.log" && grep -q "rank 0: waiting" "$work/hang.log" \
  || { cat "$work/hang.log"; echo "error: no diagnosis naming rank 1" >&2; exit 1; }
ls "$work/hang/flight-rank00000.jsonl" >/dev/null
echo "the job ended ${took} s after start (timeout 3 s), naming rank 1"
echo "== chaos: a supervised MPI job survives a rank panic, a SIGKILL of a rank and a SIGTERM of the job, bitwise"
launcher="mpirun --allow-run-as-root --oversubscribe -np 2"
chaos=("${common[@]}" --set parallel.dp=2 --set parallel.zero=2 --set train.steps=300 --set checkpoint.interval=20
       --set train.batch_size=16 --set checkpoint.keep_last=20)
mpirun_ -np 2 "$hyp" "${chaos[@]}" --out "$work/chaos-ref" > "$work/chaos-ref.log" 2>&1
latest() { sed 's/^step-0*//' "$1/checkpoints/latest" 2>/dev/null || echo 0; }
"$hyp" "${chaos[@]}" --out "$work/chaos" --max-restarts 5 --restart-backoff-ms 200 --launcher "$launcher" \
  --debug-fail 1:37 --debug-checkpoint-pause-ms 300 > "$work/chaos.log" 2>&1 &
sup=$!
for _ in $(seq 1200); do [ "$(latest "$work/chaos")" -ge 80 ] && break; sleep 0.1; done
first=$(pgrep -P "$sup"); rank=$(pgrep -P "$first" | tail -1)
[ -n "$rank" ] || { cat "$work/chaos.log"; echo "error: no MPI rank under the supervisor" >&2; exit 1; }
kill -9 "$rank"
for _ in $(seq 1200); do now=$(pgrep -P "$sup" || true); [ -n "$now" ] && [ "$now" != "$first" ] && [ "$(latest "$work/chaos")" -ge 140 ] && break; sleep 0.1; done
kill -TERM "$sup"
set +e; wait "$sup"; rc=$?; set -e
[ "$rc" -eq 75 ] || { cat "$work/chaos.log"; echo "error: the supervisor exited $rc after SIGTERM, not 75" >&2; exit 1; }
grep -c '"action":"restart' "$work/chaos/restarts.jsonl" | grep -qx 2 || { cat "$work/chaos/restarts.jsonl"; echo "error: expected 2 restarts" >&2; exit 1; }
stopped=$(latest "$work/chaos")
[ "$stopped" -lt 300 ] || { echo "error: the job finished before the SIGTERM" >&2; exit 1; }
"$hyp" train --resume "$work/chaos" --max-restarts 5 --launcher "$launcher" --set log.progress=false --sample-tokens 0 > "$work/chaos-end.log" 2>&1 \
  || { cat "$work/chaos-end.log"; echo "error: the requeued job failed" >&2; exit 1; }
for f in "$work"/chaos-ref/checkpoints/step-00000300/*.safetensors; do
  cmp "$f" "$work/chaos/checkpoints/step-00000300/$(basename "$f")" || { echo "error: $(basename "$f") differs from the uninterrupted run" >&2; exit 1; }
done
echo "panic at step 37, SIGKILL of rank process $rank, SIGTERM at step $stopped: the final checkpoint is bitwise the uninterrupted run's"
# same_losses LABEL MPI_RUN THREADS_RUN ONE_RANK_RUN: the 10 losses of the MPI run equal
# the same layout's on threads and the single rank's (relative 1e-5).
same_losses() {
  python3 - "$2/metrics.jsonl" "$3/metrics.jsonl" "$4/metrics.jsonl" "$1" <<'PY'
import json, sys
runs = [[json.loads(l)["train_loss"] for l in open(p)] for p in sys.argv[1:4]]
assert all(len(r) == 10 for r in runs), [len(r) for r in runs]
worst = lambda a, b: max(abs(x - y) / abs(y) for x, y in zip(a, b))
w1, w2 = worst(runs[0], runs[1]), worst(runs[0], runs[2])
assert w1 <= 1e-5 and w2 <= 1e-5, (w1, w2)
print(f"{sys.argv[4]}: 10 losses equal to threads (worst {w1:.1e}) and to one rank (worst {w2:.1e})")
PY
}
echo "== tensor parallelism under mpirun -np 4 (dp 2 x tp 2) and -np 8 (dp 2 x tp 4)"
tpc=("${common[@]}" --set model.n_head=4 --set train.batch_size=2 --set train.steps=10)
"$hyp" "${tpc[@]}" --set train.grad_accum=2 --out "$work/tp-one" > "$work/tp-one.log" 2>&1 || { cat "$work/tp-one.log"; exit 1; }
for spec in "4 2 2" "8 4 3"; do
  read -r np tp zero <<< "$spec"
  mpirun_ -np "$np" "$hyp" "${tpc[@]}" --set parallel.tp="$tp" --set parallel.zero="$zero" --out "$work/tp-mpi$np" > "$work/tp-mpi$np.log" 2>&1 \
    || { cat "$work/tp-mpi$np.log"; echo "error: mpirun -np $np with tp=$tp failed" >&2; exit 1; }
  "$hyp" "${tpc[@]}" --workers 2 --set parallel.tp="$tp" --set parallel.zero="$zero" --out "$work/tp-threads$np" > "$work/tp-threads$np.log" 2>&1 \
    || { cat "$work/tp-threads$np.log"; exit 1; }
  same_losses "-np $np" "$work/tp-mpi$np" "$work/tp-threads$np" "$work/tp-one"
done
echo "== pipeline parallelism under mpirun -np 4 (tp 2 x pp 2) and -np 8 (dp 2 x tp 2 x pp 2, interleaved)"
ppc=("${common[@]}" --set model.n_head=4 --set model.n_layer=4 --set train.batch_size=1 --set train.grad_accum=4 --set train.steps=10)
for dp in 1 2; do
  "$hyp" "${ppc[@]}" --set train.batch_size="$dp" --out "$work/pp-one$dp" > "$work/pp-one$dp.log" 2>&1 || { cat "$work/pp-one$dp.log"; exit 1; }
done
for spec in "4 1 1f1b 1 false 0" "8 2 interleaved 2 true 1"; do
  read -r np dp schedule v sp zero <<< "$spec"
  ppl=(--set parallel.tp=2 --set parallel.pp=2 --set "parallel.schedule=\"$schedule\"" --set parallel.virtual_stages="$v" --set parallel.sp="$sp" --set parallel.zero="$zero")
  mpirun_ -np "$np" "$hyp" "${ppc[@]}" "${ppl[@]}" --out "$work/pp-mpi$np" > "$work/pp-mpi$np.log" 2>&1 \
    || { cat "$work/pp-mpi$np.log"; echo "error: mpirun -np $np with tp 2 x pp 2 failed" >&2; exit 1; }
  "$hyp" "${ppc[@]}" "${ppl[@]}" --workers "$dp" --out "$work/pp-threads$np" > "$work/pp-threads$np.log" 2>&1 \
    || { cat "$work/pp-threads$np.log"; exit 1; }
  same_losses "pipeline -np $np" "$work/pp-mpi$np" "$work/pp-threads$np" "$work/pp-one$dp"
done
# The -np 8 pipeline checkpoint continues on one rank (global batch kept by accumulation).
"$hyp" train --resume "$work/pp-mpi8" --workers 1 --sample-tokens 0 --set log.progress=false --set parallel.tp=1 --set parallel.pp=1 \
  --set 'parallel.schedule="1f1b"' --set parallel.virtual_stages=1 --set parallel.sp=false --set parallel.zero=0 --set train.steps=12 \
  > "$work/pp-resume.log" 2>&1 || { cat "$work/pp-resume.log"; exit 1; }
grep -q "written by dp=2 tp=2 pp=2 zero=1, now dp=1 tp=1 pp=1 zero=0" "$work/pp-resume.log" || { cat "$work/pp-resume.log"; exit 1; }
echo "the -np 8 pipeline checkpoint resumed on one rank"
echo "== bench machine between MPI processes"
"$hyp" bench machine --backend mpi --ranks 2 --quick --out "$work/machine-mpi.toml" > "$work/machine-mpi.log" 2>&1 \
  || { cat "$work/machine-mpi.log"; echo "error: bench machine --backend mpi failed" >&2; exit 1; }
grep -q "collectives between MPI processes" "$work/machine-mpi.toml" || { cat "$work/machine-mpi.toml"; exit 1; }
grep -q "all-reduce over 2 MPI processes" "$work/machine-mpi.log" || { cat "$work/machine-mpi.log"; exit 1; }
"$hyp" plan --model gpt2-mini --cluster "$work/machine-mpi.toml" --gpus 2 --global-batch 16 --seq 128 --json > "$work/plan-mpi.json" \
  || { echo "error: plan rejected the MPI-measured cluster file" >&2; exit 1; }
python3 -c "import json,sys; s=json.load(open(sys.argv[1]))['best']['step']; assert s['total'] > 0, s" "$work/plan-mpi.json"
echo "the MPI-measured machine is a cluster file the planner reads"
echo "MPI training tests: 9 passed, 0 failed"

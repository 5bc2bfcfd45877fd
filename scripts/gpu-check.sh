#!/usr/bin/env bash
# The GPU checks of issues 10 and 22, as ONE prepared call on the GPU machine (which has CUDA,
# PyTorch and the NVIDIA wheels, but no Rust and no network). Nothing is built there.
#
# Here (any machine with Rust):   bash scripts/gpu-check.sh --prepare
#   builds the check binaries and copies them to target/gpu-check/ (carry that folder).
# There:                          bash scripts/gpu-check.sh
#   runs every check; with $OUT set, writes the results there as JSON.
#
# What it checks: (a) every CUDA kernel against the CPU kernel on random inputs (f32,
# relative 1e-5; the bf16 builds 2e-2); (b) one forward and backward of tiny GPT-2 and
# Llama models on the CUDA backend against the CPU backend (f32: loss 1e-5, gradients
# 1e-4; bf16: 2e-2 and 5e-2); (c) STEPS (300) steps of shakespeare-char f32 with
# train.device = "cuda" against the same run on the CPU (every step's loss within
# relative 1e-3), and the same run in bf16 (train.dtype = "bf16") whose final
# validation loss is within 0.02 of the f32 run's; (d) speed: GPT-2 124M (context 1024)
# training steps in PyTorch (bf16 autocast, fused AdamW, flash SDPA, the largest
# micro-batch up to 32 that fits; eager and torch.compile; bench/pytorch_reference.py)
# and in Hyperion on the GPU at that batch (f32 and bf16, fused attention, optimizer on
# the device), tokens/s and MFU against 989 TFLOP/s; (e) Hyperion's peak device memory
# against its analytic count (from the runs of (c)), PyTorch's peak recorded beside it;
# (f) the pipeline-bubble benchmark at p = 2 and 4 on the machine's CPU cores
# (bench/pipeline_bubble.py).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/gpu-check

if [ "${1:-}" = "--prepare" ]; then
  mkdir -p "$dir"
  for t in gpu_kernels gpu_backend; do
    bin=$(cargo test --release -p hyperion-cuda --test "$t" --no-run --message-format=json 2>/dev/null \
      | sed -n "s/.*\"executable\":\"\([^\"]*$t[^\"]*\)\".*/\1/p" | tail -1)
    [ -x "$bin" ] || { echo "error: could not build the $t check" >&2; exit 1; }
    cp "$bin" "$dir/$t"
    strip "$dir/$t" 2>/dev/null || true  # the carry limit is 64 MiB
  done
  cargo build --release -q -p hyperion --features cuda,nccl
  cp target/release/hyperion "$dir/hyperion"
  strip "$dir/hyperion" 2>/dev/null || true
  cp bench/pytorch_reference.py "$dir/pytorch_reference.py"
  cp bench/pipeline_bubble.py "$dir/pipeline_bubble.py"
  du -sh "$dir"
  echo "prepared $dir (carry it to the GPU machine)"
  exit 0
fi

out=${OUT:-$dir/out}
mkdir -p "$out"
[ -x "$dir/gpu_kernels" ] && [ -x "$dir/gpu_backend" ] && [ -x "$dir/hyperion" ] || { echo "error: the check binaries are missing: run 'bash scripts/gpu-check.sh --prepare' where Rust is, and carry $dir" >&2; exit 1; }
# The CUDA libraries of the PyPI wheels (nvidia/*/lib), NVRTC among them.
libs=$(python3 - <<'PY'
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
print(":".join(sorted({d for r in roots for d in glob.glob(os.path.join(r, "*", "lib"))})))
PY
)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/device.txt" 2>/dev/null || echo "no nvidia-smi" > "$out/device.txt"
status=0
if HYPERION_GPU_CHECK_OUT="$out/kernels.json" "$dir/gpu_kernels" --nocapture > "$out/kernels.log" 2>&1; then
  a=pass
else
  a=fail
  status=1
fi
grep -q SKIPPED "$out/kernels.log" && { a=skipped; status=1; }
if "$dir/gpu_backend" --nocapture > "$out/backend.log" 2>&1; then
  b=pass
else
  b=fail
  status=1
fi
grep -q SKIPPED "$out/backend.log" && { b=skipped; status=1; }
# (c) the engine on the GPU against the CPU, step by step.
steps=${STEPS:-300}
# DEVICE=cuda-emu PRESET=tiny STEPS=5 runs the same plumbing on the emulated device (a
# dry run here, where (d) fails for want of a GPU).
device=${DEVICE:-cuda}
run=(train --preset "${PRESET:-shakespeare-char}" --sample-tokens 0 --set log.progress=false --set train.log_interval=1
     --set "train.eval_interval=$steps" --set checkpoint.interval=0 --set "train.steps=$steps")
c=fail
cb=fail
if "$dir/hyperion" "${run[@]}" --set "train.device=$device" --set train.dtype=bf16 --out "$out/run-bf16" > "$out/run-bf16.log" 2>&1; then cb=ran; fi
if "$dir/hyperion" "${run[@]}" --set "train.device=$device" --out "$out/run-cuda" > "$out/run-cuda.log" 2>&1 \
   && "$dir/hyperion" "${run[@]}" --out "$out/run-cpu" > "$out/run-cpu.log" 2>&1; then
  if python3 - "$out/run-cuda/metrics.jsonl" "$out/run-cpu/metrics.jsonl" "$steps" > "$out/run-compare.txt" 2>&1 <<'PY'
import json, sys
g, c = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
n = int(sys.argv[3])
assert len(g) == len(c) == n, (len(g), len(c))
worst = max(abs(a["train_loss"] - b["train_loss"]) / abs(b["train_loss"]) for a, b in zip(g, c))
ms = lambda rows: sorted(r["step_ms"] for r in rows[2:])[len(rows[2:]) // 2]
print(json.dumps({"steps": n, "worst_relative_loss_difference": worst, "final_loss_cuda": g[-1]["train_loss"], "final_loss_cpu": c[-1]["train_loss"], "median_step_ms_cuda": ms(g), "median_step_ms_cpu": ms(c)}))
assert worst <= 1e-3, worst
PY
  then c=pass; fi
fi
[ "$c" = pass ] || status=1
if [ "$cb" = ran ] && python3 - "$out/run-bf16/metrics.jsonl" "$out/run-cuda/metrics.jsonl" > "$out/run-bf16-compare.txt" 2>&1 <<'PY'
import json, sys
val = lambda p: [r["val_loss"] for r in map(json.loads, open(p)) if r.get("val_loss") is not None][-1]
b, f = val(sys.argv[1]), val(sys.argv[2])
print(json.dumps({"val_loss_bf16": b, "val_loss_f32": f, "difference": b - f}))
assert abs(b - f) <= 0.02, (b, f)
PY
then cb=pass; else cb=fail; status=1; fi
# (e) peak device memory against the count, from the runs' reports.
python3 - "$out" > "$out/memory.json" 2>&1 <<'PY' || status=1
import json, re, sys
o, rows = sys.argv[1], {}
for name in ["run-cuda", "run-bf16"]:
    try:
        text = open(f"{o}/{name}.log").read()
    except OSError:
        continue
    m = re.search(r"device memory peak ([0-9.]+) MiB \(now ([0-9.]+)\); counted \((.*)\) ([0-9.]+) MiB", text)
    if m:
        peak, count = float(m.group(1)), float(m.group(4))
        rows[name] = {"peak_mib": peak, "counted_mib": count, "peak_over_count": peak / count, "counted": m.group(3)}
print(json.dumps(rows))
assert rows, "no device memory line in the run logs"
PY
# (d) speed: PyTorch eager and compiled (bf16), then Hyperion at PyTorch's batch.
d=fail
ref=(python3 "$dir/pytorch_reference.py" --preset gpt2 --device cuda --bf16 --max-batch 32 --steps 20 --warmup 5 --peak-gflops 989000 --json)
if timeout 300 "${ref[@]}" > "$out/torch-eager.json" 2> "$out/torch-eager.log" \
   && timeout 400 "${ref[@]}" --compile > "$out/torch-compile.json" 2> "$out/torch-compile.log"; then
  batch=$(python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])['batch'])" "$out/torch-eager.json")
  hyp=("$dir/hyperion" bench train --preset gpt2 --json --steps 10 --warmup 2 --batch "$batch" --set "train.device=$device" --set log.peak_flops=989e12)
  if timeout 300 "${hyp[@]}" --set train.dtype=bf16 > "$out/hyperion-gpu-bf16.json" 2> "$out/hyperion-gpu-bf16.log" \
     && timeout 300 "${hyp[@]}" > "$out/hyperion-gpu.json" 2> "$out/hyperion-gpu.log" \
     && python3 - "$out" > "$out/speed.json" 2>> "$out/hyperion-gpu.log" <<'PY'
import json, sys
o = sys.argv[1]
last = lambda f: json.loads(open(f"{o}/{f}").read().strip().splitlines()[-1])
e, c, h, hb = last("torch-eager.json"), last("torch-compile.json"), last("hyperion-gpu.json"), last("hyperion-gpu-bf16.json")
print(json.dumps({
    "batch": e["batch"], "block": 1024,
    "torch_eager_tokens_per_s": e["tokens_per_s"], "torch_compile_tokens_per_s": c["tokens_per_s"],
    "torch_eager_mfu": e["mfu"], "torch_compile_mfu": c["mfu"], "torch_peak_device_mb": c["peak_device_mb"],
    "hyperion_f32_tokens_per_s": h["tokens_per_s"], "hyperion_f32_mfu_vs_bf16_peak": h["mfu"],
    "hyperion_bf16_tokens_per_s": hb["tokens_per_s"], "hyperion_bf16_mfu": hb["mfu"],
    "hyperion_bf16_vs_compile": hb["tokens_per_s"] / c["tokens_per_s"], "hyperion_bf16_vs_eager": hb["tokens_per_s"] / e["tokens_per_s"],
    "hyperion_f32_vs_compile": h["tokens_per_s"] / c["tokens_per_s"],
}))
PY
  then d=measured; fi
fi
[ "$d" = measured ] || status=1
# (f) the pipeline bubble on the machine's CPU cores (thread ranks; no GPU involved).
f=fail
if timeout 240 python3 "$dir/pipeline_bubble.py" --hyperion "$PWD/$dir/hyperion" --rounds 1 > "$out/pipeline-bubble.txt" 2>&1; then f=measured; else status=1; fi
cat > "$out/summary.json" <<JSON
{
  "device": "$(head -1 "$out/device.txt" | tr -d '"')",
  "a_kernels_vs_cpu": "$a",
  "b_model_forward_backward_vs_cpu": "$b",
  "c_shakespeare_f32_vs_cpu": "$c",
  "c_bf16_val_within_0.02_of_f32": "$cb",
  "d_speed_vs_pytorch": "$d (speed.json)",
  "e_peak_memory": "memory.json (PyTorch's peak is in speed.json)",
  "f_pipeline_bubble": "$f (pipeline-bubble.txt)"
}
JSON
cat "$out/summary.json"
tail -n 5 "$out/kernels.log" "$out/backend.log"
cat "$out/run-compare.txt" 2>/dev/null || tail -n 5 "$out/run-cuda.log"
cat "$out/run-bf16-compare.txt" "$out/memory.json" "$out/pipeline-bubble.txt" 2>/dev/null || true
cat "$out/speed.json" 2>/dev/null || tail -n 5 "$out/torch-eager.log" "$out/torch-compile.log" "$out/hyperion-gpu.log" 2>/dev/null
exit $status

#!/usr/bin/env bash
# Data-parallel threads vs one rank at the same global batch (shakespeare-char), per
# ZeRO stage, with the exposed communication per step. Medians of ROUNDS runs.
#   bash bench/dp_scaling.sh [BATCH] [ROUNDS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
batch=${1:-8}; rounds=${2:-3}; steps=${3:-6}
hyp=target/release/hyperion
peak=--set=log.peak_flops=3.2e11
for r in $(seq "$rounds"); do
  $hyp bench train --preset shakespeare-char --batch "$batch" --steps "$steps" --warmup 2 --json $peak | sed 's/^/single /'
  for z in 0 1 2 3; do
    $hyp bench train --preset shakespeare-char --batch "$batch" --steps "$steps" --warmup 2 --workers 2 --set parallel.zero=$z --json $peak | sed "s/^/dp2z$z /"
  done
done | python3 -c '
import sys, json, statistics
rows = {}
for line in sys.stdin:
    tag, js = line.split(" ", 1)
    rows.setdefault(tag, []).append(json.loads(js))
base = statistics.median(r["tokens_per_s"] for r in rows["single"])
print(f"{\"layout\":8}{\"tokens/s\":>10}{\"vs 1 rank\":>10}{\"step ms\":>10}{\"exposed comm ms\":>17}{\"optimizer ms\":>14}")
for tag, rs in rows.items():
    t = statistics.median(r["tokens_per_s"] for r in rs)
    print(f"{tag:8}{t:10.0f}{t/base:10.2f}{statistics.median(r[\"step_ms\"] for r in rs):10.1f}"
          f"{statistics.median(r.get(\"comm_ms\", 0) for r in rs):17.1f}{statistics.median(r[\"optimizer_ms\"] for r in rs):14.1f}")
'

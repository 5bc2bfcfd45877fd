#!/usr/bin/env bash
# Time `hyperion plan` for the README questions (GPT-3 175B, 300B tokens).
# Usage: bench/plan_timing.sh [path/to/hyperion]   (default: target/debug/hyperion)
# Prints the best of 5 wall-clock runs per case; results go in docs/planner.md.
set -euo pipefail
BIN=${1:-target/debug/hyperion}
for cluster in azure-openai-2020 h100-10k; do
  best=999
  for _ in 1 2 3 4 5; do
    t0=$(date +%s.%N)
    "$BIN" plan --model gpt3-175b --cluster "$cluster" --tokens 300B --json >/dev/null
    t1=$(date +%s.%N)
    best=$(echo "$t1 - $t0" | bc -l | awk -v b="$best" '{print ($1 < b) ? $1 : b}')
  done
  printf '%-20s best of 5: %.3f s\n' "$cluster" "$best"
done

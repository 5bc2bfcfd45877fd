#!/usr/bin/env python3
"""The planner's step time for the engine's own runs on this machine, against the step
time the engine measures, side by side (issue 13, item 5).

Usage (after `cargo build --release`):

    python bench/plan_vs_engine.py                 # every preset x layout below
    python bench/plan_vs_engine.py --presets gpt2-mini --layouts dp1,dp2

For each layout, `hyperion bench machine --ranks R` measures this machine as R engine
ranks (each a planner "device": GEMM rate by shape, memory and all-reduce bandwidth) and
writes a cluster file; `hyperion plan --cluster FILE --layout ... --json` predicts the
step time of that exact layout; `hyperion bench train` measures it (median step after
warm-up). Nothing is fitted here: the cluster file holds measurements only.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# layout -> (ranks, plan --layout, bench train flags)
LAYOUTS = {
    "dp1": (1, "tp=1,pp=1,dp=1", []),
    "dp2": (2, "tp=1,pp=1,dp=2", []),  # --workers 2
    "tp2": (2, "tp=2,pp=1,dp=1", ["--set", "parallel.tp=2"]),
    "pp2": (2, "tp=1,pp=2,dp=1,v=1", ["--set", "parallel.pp=2"]),
}
# engine preset -> (planner model, sequence length)
PRESETS = {"shakespeare-char": ("shakespeare-char", 256), "gpt2-mini": ("gpt2-mini", 128), "llama-mini": ("llama-mini", 128)}


def sh(cmd):
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return p.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--batch", type=int, default=16, help="global batch in sequences")
    ap.add_argument("--micro-batches", type=int, default=4, help="micro-batches per step (pp carries them)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="engine runs per cell; the median step is kept")
    ap.add_argument("--hyperion", default=os.path.join(ROOT, "target/release/hyperion"))
    a = ap.parse_args()
    h = a.hyperion
    tmp = tempfile.mkdtemp(prefix="planeng-")
    machines = {}
    print(f"global batch {a.batch} sequences in {a.micro_batches} micro-batches; median of {a.rounds} runs of the median of {a.steps} steps after 2 warm-up")
    print(f"{'preset':<18} {'layout':<6} {'planned s':>10} {'measured s':>11} {'plan/measured':>14}")
    worst = 0.0
    for preset in a.presets.split(","):
        model, seq = PRESETS[preset]
        for lay in a.layouts.split(","):
            ranks, plan_layout, flags = LAYOUTS[lay]
            if ranks not in machines:
                f = os.path.join(tmp, f"machine{ranks}.toml")
                sh([h, "bench", "machine", "--ranks", str(ranks), "--out", f, "--json"])
                machines[ranks] = f
            dp = 2 if lay == "dp2" else 1
            mb = a.batch // (dp * a.micro_batches)
            plan = json.loads(sh([h, "plan", "--model", model, "--cluster", machines[ranks], "--gpus", str(ranks), "--global-batch", str(a.batch),
                                  "--seq", str(seq), "--layout", f"{plan_layout},zero=0,mb={mb},recompute=none", "--json"]))
            planned = plan["best"]["step"]["total"]
            steps = []
            for _ in range(a.rounds):
                train = json.loads(sh([h, "bench", "train", "--preset", preset, "--json", "--steps", str(a.steps), "--warmup", "2", "--batch", str(a.batch),
                                       "--micro-batches", str(a.micro_batches), "--workers", str(dp)] + flags +
                                      ["--set", f"model.block_size={seq}", "--set", "log.peak_flops=1e11"]).strip().splitlines()[-1])
                steps.append(train["step_ms"] / 1e3)
            measured = sorted(steps)[len(steps) // 2]
            r = planned / measured
            worst = max(worst, abs(r - 1))
            print(f"{preset:<18} {lay:<6} {planned:>10.3f} {measured:>11.3f} {r:>14.2f}")
    print(f"largest deviation: {100 * worst:.0f}%")


if __name__ == "__main__":
    main()

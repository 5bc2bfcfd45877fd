#!/usr/bin/env python3
"""The pipeline bubble on thread ranks, measured, against (p - 1) / (v m) (issue 9).

Usage (after `cargo build --release`):

    python bench/pipeline_bubble.py

For p = 2 and 4 stages, m = 4 and 8 micro-batches and v = 1 (1F1B) and 2 (interleaved)
chunks per stage, `hyperion bench train --json` runs the model split over p rank
threads (one compute thread each) and reports each rank's median time per step spent
waiting for its neighbours' activations and gradients, and its median computation
(forward + backward). Bubble per rank = wait / computation: Narayanan et al. 2021's
bubble fraction, the idle time relative to the ideal (bubble-free) time, which is
(p - 1) / (v m) for equal stages. The model: 8 layers, so every chunk holds the same
number of blocks; a character vocabulary keeps the embedding and head small.
With p = 4 the 4 rank threads share the machine's cores: when cores < p, a waiting
rank's core serves the others, which breaks the equal-stage premise (see the report).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(hyp, preset, p, v, m, micro, steps):
    sets = ["--set", "model.n_layer=8", "--set", f"parallel.pp={p}", "--set", "log.peak_flops=1e11"]
    if v > 1:
        sets += ["--set", "parallel.schedule=\"interleaved\"", "--set", f"parallel.virtual_stages={v}"]
    cmd = [hyp, "bench", "train", "--preset", preset, "--json", "--steps", str(steps), "--warmup", "2",
           "--batch", str(micro * m), "--micro-batches", str(m)] + sets
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    j = json.loads(r.stdout.strip().splitlines()[-1])
    return [x["pipe_wait_ms"] / x["compute_ms"] for x in j["ranks"]], j["step_ms"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="shakespeare-char")
    ap.add_argument("--micro", type=int, default=4, help="sequences per micro-batch")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3, help="runs per cell; each number is the median over them")
    ap.add_argument("--hyperion", default=os.path.join(ROOT, "target/release/hyperion"))
    a = ap.parse_args()
    print(f"cores: {os.cpu_count()}; {a.preset} with 8 layers, micro-batch {a.micro} sequences, {a.steps} timed steps, medians of {a.rounds} runs; bubble = wait / computation per rank")
    print(f"{'p':>2} {'v':>2} {'m':>2} {'formula':>8} {'measured (per rank)':>32} {'mean':>6} {'step ms':>8}")
    for p in (2, 4):
        for v in (1, 2):
            for m in (4, 8):
                if v > 1 and m % p:
                    continue
                runs = [measure(a.hyperion, a.preset, p, v, m, a.micro, a.steps) for _ in range(a.rounds)]
                bubbles = [statistics.median(r[0][i] for r in runs) for i in range(p)]
                step = statistics.median(r[1] for r in runs)
                f = (p - 1) / (v * m)
                per = " ".join(f"{x:.3f}" for x in bubbles)
                print(f"{p:>2} {v:>2} {m:>2} {f:>8.3f} {per:>32} {statistics.mean(bubbles):>6.3f} {step:>8.0f}")


if __name__ == "__main__":
    main()

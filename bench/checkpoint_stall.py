#!/usr/bin/env python3
"""Training stall per checkpoint, synchronous vs `checkpoint.async = true` (issue 11).

Usage (after `cargo build --release`):

    python bench/checkpoint_stall.py                                  # gpt2-mini and gpt2, 3 rounds
    python bench/checkpoint_stall.py --presets gpt2-mini --rounds 1   # quick check

For each preset, three runs of the same steps, alternating within every round:

  none   checkpoint.interval = 0 (only the final checkpoint, written in every variant)
  sync   checkpoint.interval = K, written on the training thread
  async  checkpoint.interval = K, copied in memory and written by a background thread

Each run is a fresh `hyperion train` process (one rank, batch --batch, --steps steps, no
evaluation, sample off) on the shipped corpus; its wall time is taken by this script.
The stall per checkpoint is (wall(variant) - wall(none)) / n, n = the intermediate
checkpoints (steps / K - 1: the final one is in every variant). Cells are medians over
rounds. The checkpoint size (the model and Adam files of one checkpoint) is printed too.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(hyperion, preset, steps, interval, asynchronous, batch, out):
    cmd = [hyperion, "train", "--preset", preset, "--out", out, "--sample-tokens", "0",
           "--set", f"train.steps={steps}", "--set", f"checkpoint.interval={interval}",
           "--set", f"checkpoint.async={'true' if asynchronous else 'false'}",
           "--set", f"train.batch_size={batch}", "--set", "train.eval_interval=0",
           "--set", "log.progress=false", "--set", "log.peak_flops=1e11",
           "--set", "checkpoint.keep_last=100"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
    return wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="gpt2-mini,gpt2")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--interval", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hyperion", default=os.path.join(ROOT, "target/release/hyperion"))
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    n = a.steps // a.interval - 1
    results = {}
    for preset in a.presets.split(","):
        work = tempfile.mkdtemp(prefix="ckstall-")
        # Prepare the data once (the first run of a preset does it).
        run(a.hyperion, preset, 1, 0, False, a.batch, os.path.join(work, "warm"))
        walls = {"none": [], "sync": [], "async": []}
        size = None
        for r in range(a.rounds):
            order = ["none", "sync", "async"]
            order = order[r % 3:] + order[:r % 3]
            for v in order:
                out = os.path.join(work, f"{v}-{r}")
                interval = 0 if v == "none" else a.interval
                w = run(a.hyperion, preset, a.steps, interval, v == "async", a.batch, out)
                walls[v].append(w)
                if size is None and v != "none":
                    d = os.path.join(out, "checkpoints", f"step-{a.steps:08d}")
                    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
                shutil.rmtree(out)
                print(f"  {preset} round {r + 1}/{a.rounds} {v:5s} {w:8.2f} s", flush=True)
        med = {v: statistics.median(ws) for v, ws in walls.items()}
        stall = {v: [(walls[v][i] - walls["none"][i]) / n for i in range(a.rounds)] for v in ("sync", "async")}
        results[preset] = {"walls": walls, "median_wall": med, "stall_s": {v: statistics.median(s) for v, s in stall.items()},
                           "stall_per_round": stall, "checkpoint_bytes": size, "checkpoints": n}
        shutil.rmtree(work)
    print(f"\n{a.steps} steps, batch {a.batch}, a checkpoint every {a.interval} steps ({n} intermediate), {a.rounds} round(s)\n")
    print("| preset | checkpoint MB | wall none / sync / async (s, median) | stall per checkpoint sync | async | async / sync |")
    print("|---|---|---|---|---|---|")
    for p, r in results.items():
        s, y = r["stall_s"]["sync"], r["stall_s"]["async"]
        m = r["median_wall"]
        ratio = f"{y / s:.2f}" if s > 0 else "-"
        print(f"| {p} | {r['checkpoint_bytes'] / 1e6:.1f} | {m['none']:.2f} / {m['sync']:.2f} / {m['async']:.2f} | "
              f"{s:.3f} s | {y:.3f} s | {ratio} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Step time of one model under several parallel layouts, side by side (issue 9).

Usage (after `cargo build --release`):

    python bench/parallel_speed.py                                   # shakespeare-char, 3 rounds
    python bench/parallel_speed.py --preset gpt2-mini --steps 6 --rounds 1

Every layout is a fresh `hyperion train` (thread ranks on this machine, evaluation and
checkpoints off but the final one, sampling off) of the same global batch; layouts
alternate within each round. Per run: the median over steps 3.. of metrics.jsonl's
step_ms and its parts (forward, backward, optimizer, comm: the data-parallel bucket
waits and, for pp, the pipeline wait, also shown alone as "bubble"; tensor-parallel
collectives are inside forward and backward). Cells: medians over
rounds; ratio = single-rank step time / layout step time.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAYOUTS = {
    "single": [],
    "dp2": ["--workers", "2", "--set", "train.batch_size={half}"],
    "tp2": ["--set", "parallel.tp=2"],
    "tp2+sp": ["--set", "parallel.tp=2", "--set", "parallel.sp=true"],
    # The same global batch as 8 micro-batches through 2 stages (1F1B).
    "pp2": ["--set", "parallel.pp=2", "--set", "train.batch_size={eighth}", "--set", "train.grad_accum=8"],
}


def run(hyperion, preset, steps, batch, layout, out):
    extra = [a.format(half=batch // 2, eighth=batch // 8) for a in LAYOUTS[layout]]
    cmd = [hyperion, "train", "--preset", preset, "--out", out, "--sample-tokens", "0",
           "--set", f"train.steps={steps}", "--set", f"train.batch_size={batch}", "--set", "train.grad_accum=1",
           "--set", "train.eval_interval=0", "--set", "checkpoint.interval=0", "--set", "log.progress=false",
           "--set", "train.log_interval=1"] + extra
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))][2:]
    for r in rows:
        r.setdefault("pipe_wait_ms", 0.0)
    return {k: statistics.median(r[k] for r in rows) for k in ("step_ms", "forward_ms", "backward_ms", "optimizer_ms", "comm_ms", "pipe_wait_ms")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="shakespeare-char")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--hyperion", default=os.path.join(ROOT, "target/release/hyperion"))
    a = ap.parse_args()
    layouts = a.layouts.split(",")
    got = {l: [] for l in layouts}
    for _ in range(a.rounds):
        for l in layouts:
            tmp = tempfile.mkdtemp(prefix="pspeed-")
            try:
                got[l].append(run(a.hyperion, a.preset, a.steps, a.batch, l, os.path.join(tmp, "run")))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    med = {l: {k: statistics.median(r[k] for r in got[l]) for k in got[l][0]} for l in layouts}
    base = med.get("single", med[layouts[0]])["step_ms"]
    print(f"{a.preset}, global batch {a.batch}, {a.rounds} rounds")
    print(f"{'layout':<8} {'step ms':>9} {'fwd':>8} {'bwd':>8} {'optim':>8} {'comm':>8} {'bubble':>8} {'vs single':>9}")
    for l in layouts:
        m = med[l]
        print(f"{l:<8} {m['step_ms']:>9.1f} {m['forward_ms']:>8.1f} {m['backward_ms']:>8.1f} {m['optimizer_ms']:>8.1f} {m['comm_ms']:>8.1f} {m['pipe_wait_ms']:>8.1f} {base / m['step_ms']:>9.2f}")


if __name__ == "__main__":
    main()

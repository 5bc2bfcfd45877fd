#!/usr/bin/env python3
"""Data-parallel threads vs one rank at the same global batch, per ZeRO stage.

    python bench/dp_scaling.py [--preset shakespeare-char] [--batch 8] [--workers 2] [--rounds 3] [--steps 6]

Alternates the layouts within each round (so machine noise hits all of them alike) and
prints medians: tokens/s, the ratio to one rank, step time, exposed communication and
optimizer time per step.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(args, extra):
    cmd = [os.path.join(ROOT, "target/release/hyperion"), "bench", "train", "--preset", args.preset,
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", "2", "--json",
           "--set", "log.peak_flops=5.18e11"] + extra
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="shakespeare-char")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args()
    layouts = {"1 rank": []}
    layouts.update({f"dp={args.workers} zero={z}": ["--workers", str(args.workers), "--set", f"parallel.zero={z}"] for z in range(4)})
    rows = {k: [] for k in layouts}
    for _ in range(args.rounds):
        for name, extra in layouts.items():
            rows[name].append(bench(args, extra))
    med = lambda rs, k: statistics.median(r.get(k, 0.0) for r in rs)
    base = med(rows["1 rank"], "tokens_per_s")
    print(f"{args.preset}, global batch {args.batch}, {args.rounds} rounds x {args.steps} steps (medians)")
    print(f"{'layout':16}{'tokens/s':>10}{'vs 1 rank':>11}{'step ms':>10}{'exposed comm ms':>17}{'optimizer ms':>14}")
    for name, rs in rows.items():
        t = med(rs, "tokens_per_s")
        print(f"{name:16}{t:10.0f}{t / base:11.3f}{med(rs, 'step_ms'):10.1f}{med(rs, 'comm_ms'):17.1f}{med(rs, 'optimizer_ms'):14.1f}")


if __name__ == "__main__":
    main()

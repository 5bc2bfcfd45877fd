#!/usr/bin/env python3
"""Activation memory per transformer layer and rank under tensor and sequence
parallelism, measured by the counting allocator, against Korthikanti et al. 2022's
per-layer formula (issue 9).

Usage (after `cargo build --release`):

    python bench/activation_memory.py                      # gpt2 shape, s = 1024, b = 1

Korthikanti et al. ("Reducing Activation Recomputation in Large Transformer Models",
2022, eqs. 1-5) count, per layer and rank, in 2-byte values with 1-byte dropout masks:
    s*b*h*(10 + 24/t) + 5*a*s^2*b/t         tensor parallel
    s*b*h*34/t + 5*a*s^2*b/t                 tensor + sequence parallel
and selective recomputation removes the s^2 term. Hyperion keeps f32 values and has no
dropout, so the same terms read (each value 4 bytes, no masks):
    s*b*h*(16 + 48/t) + 4*a*s^2*b/t          (the 10 = 4 values + 2 masks -> 16; 24 -> 48; 5 = 2 values + 1 mask -> 4)
    s*b*h*64/t + 4*a*s^2*b/t                 with sequence parallelism
Measured: `hyperion bench train --json`'s activation bytes (what the allocator saw the
trainer allocate for activations on rank 0) at n_layer = 4 and 2; the difference / 2 is
one layer's (the head, scratch and logits cancel).
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(hyp, preset, layers, s, b, tp, sp, recompute):
    cmd = [hyp, "bench", "train", "--preset", preset, "--json", "--steps", "1", "--warmup", "0", "--batch", str(b),
           "--set", f"model.n_layer={layers}", "--set", f"model.block_size={s}", "--set", f"parallel.tp={tp}",
           "--set", f"parallel.sp={'true' if sp else 'false'}", "--set", f"parallel.recompute=\"{recompute}\"",
           "--set", "log.peak_flops=1e11"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    j = json.loads(p.stdout.strip().splitlines()[-1])
    return j["activation_bytes"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--hyperion", default=os.path.join(ROOT, "target/release/hyperion"))
    a = ap.parse_args()
    # The preset's width and heads (gpt2: h = 768, a = 12).
    shapes = {"gpt2": (768, 12), "gpt2-mini": (256, 4), "shakespeare-char": (384, 6)}
    h, heads = shapes[a.preset]
    s, b = a.seq, a.batch
    print(f"{a.preset} (h = {h}, a = {heads}), s = {s}, b = {b}; MiB per layer and rank")
    print(f"{'tp':>3} {'sp':>5} {'recompute':>10} {'measured':>10} {'formula':>10} {'ratio':>7}")
    worst = 0.0
    for tp in (1, 2, 4):
        for sp in ((False,) if tp == 1 else (False, True)):
            for rc in ("none", "selective"):
                per_layer = (measure(a.hyperion, a.preset, 4, s, b, tp, sp, rc) - measure(a.hyperion, a.preset, 2, s, b, tp, sp, rc)) / 2
                sbh = s * b * h
                lin = sbh * 64 / tp if sp else sbh * (16 + 48 / tp)
                quad = 0 if rc == "selective" else 4 * heads * s * s * b / tp
                f = lin + quad
                r = per_layer / f
                worst = max(worst, abs(r - 1))
                print(f"{tp:>3} {str(sp).lower():>5} {rc:>10} {per_layer / 2**20:>10.2f} {f / 2**20:>10.2f} {r:>7.3f}")
    print(f"largest deviation from the formula: {100 * worst:.1f}%")


if __name__ == "__main__":
    main()

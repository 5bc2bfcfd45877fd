#!/usr/bin/env python3
"""Hyperion vs PyTorch, full training steps side by side on this machine.

For each preset, alternates `hyperion bench train` and `bench/pytorch_reference.py`
(same model, batch, threads = cores) for several rounds and reports the medians and
the tokens/s ratio. Run after `cargo build --release`:

    python bench/compare_pytorch.py --rounds 3 --steps 8
    python bench/compare_pytorch.py --presets llama-char-cpu,llama-mini

Each preset name goes unchanged to both sides (`hyperion bench train --preset NAME` and
`pytorch_reference.py --preset NAME`); the reference knows the GPT-2 presets
shakespeare-char, gpt2-mini and the Llama presets llama-char-cpu, llama-mini.
MFU for both uses the same peak (--peak-gflops, default 320 = this machine's 2 cores
x AVX-512 FMA) and the same model FLOPs per token (6N + 12 L C T; for Llama N excludes
the embedding table, counts the untied head, and C is nh * hd in the attention term).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_json(cmd):
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="shakespeare-char,gpt2-mini",
                   help="comma-separated; also llama-char-cpu, llama-mini")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak-gflops", type=float, default=320.0)
    p.add_argument("--hyperion", default=os.path.join(ROOT, "target/release/hyperion"))
    args = p.parse_args()
    threads = os.cpu_count()
    results = {}
    for preset in args.presets.split(","):
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(run_json([args.hyperion, "bench", "train", "--preset", preset, "--batch", str(args.batch),
                                  "--steps", str(args.steps), "--warmup", str(args.warmup), "--json",
                                  "--set", f"log.peak_flops={args.peak_gflops * 1e9}"]))
            theirs.append(run_json([sys.executable, os.path.join(HERE, "pytorch_reference.py"), "--preset", preset,
                                    "--batch", str(args.batch), "--steps", str(args.steps), "--warmup",
                                    str(args.warmup), "--threads", str(threads), "--peak-gflops",
                                    str(args.peak_gflops), "--json"]))
        med = lambda rows, k: statistics.median(r[k] for r in rows)
        row = {k: {"hyperion": med(ours, k), "pytorch": med(theirs, k)}
               for k in ["tokens_per_s", "step_ms", "forward_ms", "backward_ms", "optimizer_ms", "mfu"]}
        row["ratio_tokens_per_s"] = row["tokens_per_s"]["hyperion"] / row["tokens_per_s"]["pytorch"]
        row["ratios_per_round"] = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(ours, theirs)]
        row["torch_version"] = theirs[0].get("torch_version")
        results[preset] = row
        print(f"{preset} (batch {args.batch}, {args.rounds} rounds x {args.steps} steps, medians):")
        print(f"  {'':14}{'hyperion':>12}{'pytorch':>12}")
        for k in ["tokens_per_s", "step_ms", "forward_ms", "backward_ms", "optimizer_ms", "mfu"]:
            print(f"  {k:14}{row[k]['hyperion']:12.3f}{row[k]['pytorch']:12.3f}")
        print(f"  ratio tokens/s {row['ratio_tokens_per_s']:.2f}x  (per round: "
              + ", ".join(f"{r:.2f}" for r in row["ratios_per_round"]) + ")")
    print(json.dumps(results))


if __name__ == "__main__":
    main()

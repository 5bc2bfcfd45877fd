#!/usr/bin/env python3
"""Two Hyperion binaries (e.g. before and after a change), full training steps side by side.

    python bench/compare_binaries.py --before /path/to/old/hyperion --after target/release/hyperion \
        --presets shakespeare-char,gpt2-mini --rounds 5 --steps 10

Each round runs `hyperion bench train --preset P --batch B --json` with each binary, in
alternating order (before first in even rounds, after first in odd rounds), so that drift
in the machine's load hits both. Reports per preset the median tokens/s of each, the
ratio after/before (median, and per round), and the medians of the step phases.
"""

import argparse
import json
import statistics
import subprocess
import sys


def bench(binary, preset, batch, steps, warmup, peak):
    cmd = [binary, "bench", "train", "--preset", preset, "--batch", str(batch), "--steps", str(steps),
           "--warmup", str(warmup), "--json", "--set", f"log.peak_flops={peak}"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True)
    p.add_argument("--after", required=True)
    p.add_argument("--presets", default="shakespeare-char,gpt2-mini")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak-gflops", type=float, default=500.0, help="only scales the MFU column")
    a = p.parse_args()
    results = {}
    for preset in a.presets.split(","):
        runs = {"before": [], "after": []}
        for r in range(a.rounds):
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            for who in order:
                runs[who].append(bench(getattr(a, who), preset, a.batch, a.steps, a.warmup, a.peak_gflops * 1e9))
        med = lambda who, k: statistics.median(x[k] for x in runs[who])
        row = {who: {k: med(who, k) for k in ["tokens_per_s", "step_ms", "forward_ms", "backward_ms", "optimizer_ms"]} for who in runs}
        row["ratio_after_over_before"] = row["after"]["tokens_per_s"] / row["before"]["tokens_per_s"]
        row["ratios_per_round"] = [b["tokens_per_s"] / a_["tokens_per_s"] for a_, b in zip(runs["before"], runs["after"])]
        results[preset] = row
        print(f"{preset}: before {row['before']['tokens_per_s']:.0f} tok/s, after {row['after']['tokens_per_s']:.0f} tok/s, "
              f"ratio {row['ratio_after_over_before']:.3f} (rounds {', '.join(f'{x:.3f}' for x in row['ratios_per_round'])})",
              flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()

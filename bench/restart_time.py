#!/usr/bin/env python3
"""Restart time of a supervised run after a failure (issue 11).

Usage (after `cargo build --release`):

    python bench/restart_time.py                                   # gpt2-mini and gpt2, 1 and 2 ranks, 3 rounds
    python bench/restart_time.py --presets gpt2-mini --rounds 1    # quick check
    python bench/restart_time.py --hyperion OLD,NEW                # two binaries, alternating in every round

Each round runs `hyperion train --max-restarts 1 --restart-backoff-ms 0` with a rank that
panics after step K+1 (`--debug-fail 0:K+1`, checkpoint every K steps), reading the
merged output line by line as it arrives and stamping three moments:

  fail     the injected panic's message ("injected failure ...")
  notice   the supervisor's "the run ended with ..." (the failed process has exited)
  resumed  the restarted run's "resumed ... at step K" (config read, data opened,
           memory checked, model allocated, checkpoint verified and loaded)

restart = resumed - fail: the time until training can go on. Work lost on top of it is
the steps since the last checkpoint (here one step), which depends on checkpoint.interval.
Cells are medians over rounds; the checkpoint's size on disk is printed beside them.
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


def one(hyperion, preset, workers, interval, batch, out):
    cmd = [hyperion, "train", "--preset", preset, "--out", out, "--sample-tokens", "0",
           "--max-restarts", "1", "--restart-backoff-ms", "0",
           "--debug-fail", f"0:{interval + 1}",
           "--set", f"train.steps={interval + 2}", "--set", f"checkpoint.interval={interval}",
           "--set", f"train.batch_size={batch}", "--set", "train.eval_interval=0",
           "--set", "log.progress=false", "--set", "log.peak_flops=1e11"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    env = dict(os.environ, RUST_BACKTRACE="0")
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    stamps, lines = {}, []
    for line in p.stdout:
        now = time.perf_counter()
        lines.append(line)
        for key, needle in (("fail", "injected failure"), ("notice", "supervisor: the run ended"), ("resumed", "resumed ")):
            if needle in line and key not in stamps:
                stamps[key] = now
    p.wait()
    if p.returncode != 0 or len(stamps) != 3:
        sys.exit(f"failed ({p.returncode}, saw {sorted(stamps)}): {' '.join(cmd)}\n{''.join(lines[-30:])}")
    ck = os.path.join(out, "checkpoints", f"step-{interval:08d}")
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ck) for f in fs)
    return {"detect": stamps["notice"] - stamps["fail"], "relaunch": stamps["resumed"] - stamps["notice"],
            "restart": stamps["resumed"] - stamps["fail"], "bytes": size}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="gpt2-mini,gpt2")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--interval", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hyperion", default=os.path.join(ROOT, "target/release/hyperion"),
                    help="the binary, or several separated by commas (run alternately in every round)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rows = []
    bins = a.hyperion.split(",")
    print(f"{'binary':<28} {'preset':<10} {'ranks':>5} {'checkpoint MB':>13} {'detect s':>9} {'relaunch s':>10} {'restart s':>9}")
    for preset in a.presets.split(","):
        for workers in map(int, a.workers.split(",")):
            got = {b: [] for b in bins}
            for _ in range(a.rounds):
                for b in bins:
                    tmp = tempfile.mkdtemp(prefix="restart-")
                    try:
                        got[b].append(one(b, preset, workers, a.interval, a.batch, os.path.join(tmp, "run")))
                    finally:
                        shutil.rmtree(tmp, ignore_errors=True)
            for b in bins:
                med = {k: statistics.median(g[k] for g in got[b]) for k in ("detect", "relaunch", "restart")}
                row = {"binary": b, "preset": preset, "ranks": workers, "checkpoint_bytes": got[b][0]["bytes"], **med,
                       "restart_rounds": [g["restart"] for g in got[b]]}
                rows.append(row)
                print(f"{b[-28:]:<28} {preset:<10} {workers:>5} {row['checkpoint_bytes'] / 1e6:>13.1f} "
                      f"{med['detect']:>9.2f} {med['relaunch']:>10.2f} {med['restart']:>9.2f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Best-of-passes table from bench/comm/run.sh output (markdown, for docs/comm.md).

Files: <config>-<np>-r<rep>.txt with rows `op size time algbw busbw [bound %bound]`.
busbw is recomputed from the best (lowest) time over passes, each itself the best of
3 timed loops (the machine is shared, so the minimum is the stable statistic). The
local "% of bound" is the median over passes of (time bound / time), both from the
same pass: the bound uses the memcpy bandwidth measured at the start of that pass.
"""
import collections
import pathlib
import re
import statistics
import sys

out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "bench/comm/results")
times = collections.defaultdict(list)  # (cfg, np, op, size) -> [time_us]
bounds = collections.defaultdict(list)
for f in sorted(out.glob("*-r*.txt")):
    m = re.match(r"(.+)-(\d+)-r\d+\.txt$", f.name)
    if not m:
        continue
    cfg, np_ = m.group(1), int(m.group(2))
    for line in f.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0] in ("all_reduce", "reduce_scatter") and parts[1].isdigit():
            key = (cfg, np_, parts[0], int(parts[1]))
            times[key].append(float(parts[2]))
            if len(parts) >= 6 and parts[5] != "-":
                # Fraction of the bound measured in the same pass (same machine load).
                bounds[key].append(float(parts[5]) / float(parts[2]))

def busbw(op, size, p, t_us):
    f = 2 * (p - 1) / p if op == "all_reduce" else (p - 1) / p
    return size / (t_us * 1e-6) / 1e9 * f

def best(key):
    v = times.get(key)
    return min(v) if v else None

cfgs = ["local", "mpi", "mpi_untuned", "c_tuned", "c_untuned"]
print("busbw in GB/s, best of %d passes x 3 loops; ratios from the best times." % max((len(v) for v in times.values()), default=0))
print()
print("| ranks | op | size | local | local % of bound | mpi | mpi untuned | C tuned | C untuned | local / C tuned | mpi / C tuned |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
sizes = sorted({k[3] for k in times})
for np_ in (2, 4):
    for op in ("all_reduce", "reduce_scatter"):
        for size in sizes:
            t = {c: best((c, np_, op, size)) for c in cfgs}
            if all(v is None for v in t.values()):
                continue
            cells = []
            for c in cfgs:
                cells.append("%.2f" % busbw(op, size, np_, t[c]) if t[c] else "-")
            b = bounds.get(("local", np_, op, size))
            frac = "%.0f%%" % (100 * statistics.median(b)) if b else "-"
            r1 = "%.2fx" % (t["c_tuned"] / t["local"]) if t["local"] and t["c_tuned"] else "-"
            r2 = "%.2f" % (t["c_tuned"] / t["mpi"]) if t["mpi"] and t["c_tuned"] else "-"
            print("| %d | %s | %d MiB | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                np_, op, size >> 20, cells[0], frac, cells[1], cells[2], cells[3], cells[4], r1, r2))

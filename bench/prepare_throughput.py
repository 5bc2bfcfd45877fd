#!/usr/bin/env python3
"""`hyperion data prepare` vs Python tokenization scripts, side by side (issue 12).

Usage (after a release build of `hyperion`; `pip install tiktoken tokenizers`):

    python bench/prepare_throughput.py                       # 100 MB and 1 GB, 3 rounds
    python bench/prepare_throughput.py --sizes 50M --rounds 1   # quick check
    python bench/prepare_throughput.py --sizes 1G --rounds 2 --json /tmp/prep.json
    python bench/prepare_throughput.py --sizes 100M --variants hyperion-gpt2 --threads 1
    python bench/prepare_throughput.py --core-speed 5   # tokenizer alone, one thread, no JSON

Corpus. `--work` (default /tmp/prepbench) gets one `corpus-<SIZE>.jsonl` per size,
made deterministically from the shipped plays `data/shakespeare/*.txt` (concatenated in
name order): documents whose lengths are drawn log-uniformly from 200 B to 20 KB and
whose start is a uniform random offset in the plays, both from `random.Random(--seed)`,
each written as `{"id": i, "text": ...}` on one line, until the file holds at least SIZE
bytes. A corpus that already exists with the same parameters (its `.json` sidecar) is
reused, so later runs skip the generation.

Variants (each run is a fresh process, started by this script, on the same corpus, with
the same number of cores `--threads`, default all):

  hyperion-gpt2     hyperion data prepare --tokenizer gpt2 (tiktoken-rs r50k_base)
  tiktoken-pool     Python: the parent reads JSONL lines, a multiprocessing Pool of
                    --threads workers (imap, ordered, chunksize 16) does json.loads,
                    Encoding.encode_ordinary and appends <|endoftext|> (50256); the
                    parent writes uint16 to one .bin (as nanoGPT's / llm.c's fineweb.py)
  tiktoken-batch    Python: json.loads in the main thread, encode_ordinary_batch over
                    1000 documents with num_threads = --threads, append 50256, write uint16
  hyperion-hf       hyperion data prepare --tokenizer TOKENIZER_JSON (the tokenizers crate)
  tokenizers        Python `tokenizers`: Tokenizer.from_file(TOKENIZER_JSON), json.loads
                    in the main thread, encode_batch over 1000 documents (rayon, --threads
                    threads), append 50256, write uint16
  tokenizers-fast   the same with encode_batch_fast (no offsets; not in the default set)

The GPT-2 encoding for tiktoken is built from the r50k_base.tiktoken rank file that the
tiktoken-rs crate ships (found under ~/.cargo/registry, or --r50k), since tiktoken cannot
download here. TOKENIZER_JSON (--tokenizer-json, default /tmp/gpt2-tokenizer.json) is the
same vocabulary as a Hugging Face tokenizer.json (`python3 scripts/make_tokenizer_fixtures.py`
writes it).

Measured per run: wall seconds of the whole process (start, loading the tokenizer,
reading, tokenizing, writing), by this script; peak RSS by `/usr/bin/time -f %M` (the
largest single process: for tiktoken-pool that is the biggest of the parent and its
workers, not their sum); "cores busy" = (user + system CPU seconds of the process and its
children) / wall seconds, which shows both how parallel a variant is and whether something
else on the machine took its cores (the 1-minute load average before each run is printed
too). Throughput is input bytes (the JSONL file, JSON escapes
included; MB = 10^6 bytes) over wall seconds; each table cell is the median over rounds,
and the ratios are medians of the per-round ratios. Variants alternate within every round
and the order rotates from round to round.

Correctness: every variant's token count must agree, train and validation separately
(Python counts with Hyperion's split rule: document d goes to validation when
floor((d + 1) f) > floor(d f), f = 0.1), and so must the document count; a mismatch is
printed loudly and the script exits with status 1.
"""

import argparse
import glob
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from array import array

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EOT = 50256
VAL_FRACTION = 0.1
BATCH_DOCS = 1000
R50K_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ALL_VARIANTS = ["hyperion-gpt2", "tiktoken-pool", "tiktoken-batch", "hyperion-hf", "tokenizers", "tokenizers-fast"]
DEFAULT_VARIANTS = ["hyperion-gpt2", "tiktoken-pool", "tiktoken-batch", "hyperion-hf", "tokenizers"]
# Pairs reported as ratios (Hyperion / Python) and checked for equal token counts.
PAIRS = [("hyperion-gpt2", "tiktoken-pool"), ("hyperion-gpt2", "tiktoken-batch"),
         ("hyperion-hf", "tokenizers"), ("hyperion-hf", "tokenizers-fast")]


def parse_size(s):
    s = s.strip().upper()
    mult = {"K": 10**3, "M": 10**6, "G": 10**9}
    if s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]]), s
    return int(s), s


# ---------------------------------------------------------------- corpus

def make_corpus(work, label, size, seed, lo=200, hi=20_000):
    """Writes (or reuses) WORK/corpus-LABEL.jsonl of at least `size` bytes; returns its sidecar dict."""
    path = os.path.join(work, f"corpus-{label}.jsonl")
    side = path + ".json"
    params = {"size": size, "seed": seed, "min_doc": lo, "max_doc": hi, "source": "data/shakespeare/*.txt"}
    if os.path.exists(side) and os.path.exists(path):
        with open(side) as f:
            have = json.load(f)
        if {k: have.get(k) for k in params} == params and os.path.getsize(path) == have.get("bytes"):
            print(f"corpus {path}: reusing ({have['bytes']:,} bytes, {have['documents']:,} documents)", flush=True)
            return dict(have, path=path)
    files = sorted(glob.glob(os.path.join(ROOT, "data", "shakespeare", "*.txt")))
    plays = "".join(open(p, encoding="utf-8").read() for p in files)
    rng = random.Random(seed)
    log_lo, log_hi = math.log(lo), math.log(hi)
    written = text_bytes = docs = 0
    started = time.perf_counter()
    tmp = path + ".tmp"
    with open(tmp, "wb", buffering=1 << 22) as f:
        while written < size:
            n = int(math.exp(rng.uniform(log_lo, log_hi)))
            start = rng.randrange(0, len(plays) - n)
            text = plays[start:start + n]
            line = (json.dumps({"id": docs, "text": text}, ensure_ascii=False) + "\n").encode("utf-8")
            f.write(line)
            written += len(line)
            text_bytes += len(text.encode("utf-8"))
            docs += 1
    os.replace(tmp, path)
    info = dict(params, bytes=written, documents=docs, text_bytes=text_bytes)
    with open(side, "w") as f:
        json.dump(info, f, indent=1)
    print(f"corpus {path}: wrote {written:,} bytes, {docs:,} documents in {time.perf_counter() - started:.1f} s",
          flush=True)
    return dict(info, path=path)


# ---------------------------------------------------------------- Python workers (run in a child process)

def find_r50k(explicit):
    if explicit:
        return explicit
    hits = sorted(glob.glob(os.path.expanduser(
        "~/.cargo/registry/src/*/tiktoken-rs-*/assets/r50k_base.tiktoken")))
    if not hits:
        sys.exit("r50k_base.tiktoken not found under ~/.cargo/registry; pass --r50k")
    return hits[-1]


def gpt2_encoding(r50k):
    import tiktoken
    import tiktoken.load
    return tiktoken.Encoding(name="r50k_base", pat_str=R50K_PAT,
                             mergeable_ranks=tiktoken.load.load_tiktoken_bpe(r50k),
                             special_tokens={"<|endoftext|>": EOT})


class Counter:
    """Tokens per split by Hyperion's document rule, and documents."""

    def __init__(self):
        self.docs = 0
        self.train = 0
        self.val = 0

    def add(self, n_tokens):
        d = self.docs
        if math.floor((d + 1) * VAL_FRACTION) > math.floor(d * VAL_FRACTION):
            self.val += n_tokens
        else:
            self.train += n_tokens
        self.docs += 1

    def result(self):
        return {"train_tokens": self.train, "val_tokens": self.val, "documents": self.docs}


_ENC = None  # set in the parent before the Pool forks (as fineweb.py does)


def _pool_tokenize(line):
    ids = _ENC.encode_ordinary(json.loads(line)["text"])
    ids.append(EOT)
    return array("H", ids).tobytes()


def worker_tiktoken_pool(corpus, out, threads, r50k):
    global _ENC
    import multiprocessing as mp
    _ENC = gpt2_encoding(r50k)
    c = Counter()
    with open(corpus, "rb") as src, open(out, "wb") as dst, mp.get_context("fork").Pool(threads) as pool:
        for b in pool.imap(_pool_tokenize, src, chunksize=16):
            dst.write(b)
            c.add(len(b) // 2)
    return c.result()


def batches(corpus):
    """Lists of up to BATCH_DOCS document texts (json.loads in this thread)."""
    texts = []
    with open(corpus, "rb") as src:
        for line in src:
            texts.append(json.loads(line)["text"])
            if len(texts) == BATCH_DOCS:
                yield texts
                texts = []
    if texts:
        yield texts


def write_docs(dst, docs_ids, c):
    buf = array("H")
    for ids in docs_ids:
        buf.extend(ids)
        buf.append(EOT)
        c.add(len(ids) + 1)
    dst.write(buf.tobytes())


def worker_tiktoken_batch(corpus, out, threads, r50k):
    enc = gpt2_encoding(r50k)
    c = Counter()
    with open(out, "wb") as dst:
        for texts in batches(corpus):
            write_docs(dst, enc.encode_ordinary_batch(texts, num_threads=threads), c)
    return c.result()


def worker_tokenizers(corpus, out, threads, tokenizer_json, fast=False):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tokenizer_json)
    c = Counter()
    with open(out, "wb") as dst:
        for texts in batches(corpus):
            encs = tok.encode_batch_fast(texts) if fast else tok.encode_batch(texts)
            write_docs(dst, (e.ids for e in encs), c)
    return c.result()


def worker_main(args):
    out = os.path.join(args.out_dir, "tokens.bin")
    os.makedirs(args.out_dir, exist_ok=True)
    if args.worker == "tiktoken-pool":
        r = worker_tiktoken_pool(args.corpus, out, args.threads, args.r50k)
    elif args.worker == "tiktoken-batch":
        r = worker_tiktoken_batch(args.corpus, out, args.threads, args.r50k)
    elif args.worker in ("tokenizers", "tokenizers-fast"):
        r = worker_tokenizers(args.corpus, out, args.threads, args.tokenizer_json, fast=args.worker.endswith("fast"))
    else:
        sys.exit(f"unknown worker {args.worker}")
    r["out_bytes"] = os.path.getsize(out)
    print(json.dumps(r))


# ---------------------------------------------------------------- the harness

def run_variant(variant, corpus, work, args, r50k):
    out_dir = os.path.join(work, f"out-{variant}")
    shutil.rmtree(out_dir, ignore_errors=True)
    rss_file = os.path.join(work, "rss.txt")
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="true")
    if variant.startswith("hyperion"):
        tok = "gpt2" if variant == "hyperion-gpt2" else args.tokenizer_json
        cmd = [args.hyperion, "data", "prepare", "--input", corpus, "--tokenizer", tok, "--out", out_dir,
               "--threads", str(args.threads)]
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--corpus", corpus,
               "--out-dir", out_dir, "--threads", str(args.threads), "--r50k", r50k,
               "--tokenizer-json", args.tokenizer_json]
    with open("/proc/loadavg") as f:
        load = float(f.read().split()[0])
    started = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", rss_file] + cmd, env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{variant} failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    with open(rss_file) as f:
        rss_kib, user_s, sys_s = f.read().split()[-3:]
    rss_kib, cpu_s = int(rss_kib), float(user_s) + float(sys_s)
    if variant.startswith("hyperion"):
        with open(os.path.join(out_dir, "meta.json")) as f:
            meta = json.load(f)
        docs = meta.get("documents") or {}
        res = {"train_tokens": meta["train_tokens"], "val_tokens": meta["val_tokens"],
               "documents": docs.get("train", 0) + docs.get("val", 0),
               "summary": proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""}
    else:
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        if res["out_bytes"] != 2 * (res["train_tokens"] + res["val_tokens"]):
            sys.exit(f"{variant}: wrote {res['out_bytes']} bytes for {res['train_tokens'] + res['val_tokens']} tokens")
    shutil.rmtree(out_dir, ignore_errors=True)
    res.update(variant=variant, wall_s=wall, rss_mib=rss_kib / 1024, cpu_s=cpu_s, cores=cpu_s / wall, load_before=load)
    return res


def bench_corpus(info, args, r50k):
    corpus = info["path"]
    with open(corpus, "rb") as f:  # into the page cache before the first timed run
        while f.read(1 << 24):
            pass
    runs = {v: [] for v in args.variants}
    for r in range(args.rounds):
        k = r % len(args.variants)
        for v in args.variants[k:] + args.variants[:k]:
            res = run_variant(v, corpus, args.work, args, r50k)
            res["mb_s"] = info["bytes"] / res["wall_s"] / 1e6
            runs[v].append(res)
            print(f"  round {r + 1}/{args.rounds} {v:16s} {res['wall_s']:8.2f} s {res['mb_s']:7.2f} MB/s "
                  f"RSS {res['rss_mib']:7.1f} MiB  cores {res['cores']:.2f}  load {load_str(res)}  tokens {res['train_tokens']:,} + {res['val_tokens']:,} "
                  f"docs {res['documents']:,}", flush=True)
    return runs


def load_str(res):
    return f"{res['load_before']:.2f}"


def check(label, runs):
    """Every run of every variant must count the same tokens per split and documents."""
    problems = []
    ref = None
    for v, rs in runs.items():
        for res in rs:
            key = (res["train_tokens"], res["val_tokens"], res["documents"])
            if ref is None:
                ref = (v, key)
            elif key != ref[1]:
                problems.append(f"{label}: {v} counted train/val tokens, documents {key}; "
                                f"{ref[0]} counted {ref[1]}")
    return ref[1] if ref else None, problems


def report(all_runs, infos, args):
    lines = []
    for label, runs in all_runs.items():
        info = infos[label]
        counts, _ = check(label, runs)
        lines.append(f"\n**{label}** corpus: {info['bytes']:,} bytes JSONL ({info['text_bytes']:,} bytes of text), "
                     f"{info['documents']:,} documents; {counts[0] + counts[1]:,} tokens "
                     f"({counts[0]:,} train + {counts[1]:,} val, one separator per document); "
                     f"{args.threads} threads; {args.rounds} round(s)\n")
        lines.append("| variant | MB/s (median) | per round | wall s (median) | cores busy (median) | "
                     "peak RSS MiB (max) |")
        lines.append("|---|---|---|---|---|---|")
        for v, rs in runs.items():
            per = ", ".join(f"{x['mb_s']:.2f}" for x in rs)
            lines.append(f"| {v} | {statistics.median(x['mb_s'] for x in rs):.2f} | {per} | "
                         f"{statistics.median(x['wall_s'] for x in rs):.2f} | "
                         f"{statistics.median(x['cores'] for x in rs):.2f} | {max(x['rss_mib'] for x in rs):.1f} |")
        pairs = [(a, b) for a, b in PAIRS if a in runs and b in runs]
        if pairs:
            lines.append("\n| Hyperion / Python | ratio (median) | per round |")
            lines.append("|---|---|---|")
            for a, b in pairs:
                ratios = [x["mb_s"] / y["mb_s"] for x, y in zip(runs[a], runs[b])]
                lines.append(f"| {a} / {b} | **{statistics.median(ratios):.2f}x** | "
                             f"{', '.join(f'{q:.2f}' for q in ratios)} |")
    return "\n".join(lines)


def core_speed(args, r50k):
    """Single-thread BPE speed without JSON or the pipeline: tiktoken's encode_ordinary in this
    process vs `hyperion data prepare --threads 1` on the same .txt file (the plays ten times
    over, one document), alternating; Hyperion's wall time includes its ~0.09 s start."""
    path = os.path.join(args.work, "plays-x10.txt")
    files = sorted(glob.glob(os.path.join(ROOT, "data", "shakespeare", "*.txt")))
    text = "".join(open(p, encoding="utf-8").read() for p in files) * 10
    if not os.path.exists(path) or os.path.getsize(path) != len(text.encode("utf-8")):
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    enc = gpt2_encoding(r50k)
    out_dir = os.path.join(args.work, "out-core")
    py, hy = [], []
    for r in range(args.core_speed):
        started = time.perf_counter()
        n = len(enc.encode_ordinary(text))
        py.append(len(text) / (time.perf_counter() - started) / 1e6)
        shutil.rmtree(out_dir, ignore_errors=True)
        started = time.perf_counter()
        subprocess.run([args.hyperion, "data", "prepare", "--input", path, "--tokenizer", "gpt2", "--out", out_dir,
                        "--threads", "1", "--split", "tail"], check=True, capture_output=True)
        hy.append(len(text) / (time.perf_counter() - started) / 1e6)
        with open(os.path.join(out_dir, "meta.json")) as f:
            meta = json.load(f)
        if meta["train_tokens"] + meta["val_tokens"] != n + 2:  # one separator after each part of the split
            print(f"!!! core-speed token count mismatch: hyperion {meta['train_tokens'] + meta['val_tokens']}, "
                  f"tiktoken {n} + 2", file=sys.stderr)
        print(f"  round {r + 1}: tiktoken encode_ordinary {py[-1]:.2f} MB/s, hyperion --threads 1 {hy[-1]:.2f} MB/s",
              flush=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    ratios = [h / q for h, q in zip(hy, py)]
    print(f"single-thread core, {len(text):,} bytes: tiktoken {statistics.median(py):.2f} MB/s, hyperion "
          f"{statistics.median(hy):.2f} MB/s, ratio {statistics.median(ratios):.2f}x "
          f"({', '.join(f'{q:.2f}' for q in ratios)})")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100M,1G", help="corpus sizes, comma-separated (K/M/G = 10^3/10^6/10^9 bytes)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma-separated from {ALL_VARIANTS}")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--work", default="/tmp/prepbench")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--hyperion", default="/work/bench-bin/hyperion"
                   if os.path.exists("/work/bench-bin/hyperion") else os.path.join(ROOT, "target/release/hyperion"))
    p.add_argument("--tokenizer-json", default="/tmp/gpt2-tokenizer.json")
    p.add_argument("--r50k", default=None, help="r50k_base.tiktoken (default: tiktoken-rs's copy in ~/.cargo)")
    p.add_argument("--json", default=None, help="also write every run and the table here")
    p.add_argument("--corpus-only", action="store_true", help="only make the corpora")
    p.add_argument("--core-speed", type=int, default=0, metavar="ROUNDS",
                   help="instead: single-thread tokenizer speed, tiktoken vs hyperion, on a .txt (no JSON)")
    # Internal: one Python variant in this (child) process.
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker_main(args)

    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in args.variants:
        if v not in ALL_VARIANTS:
            sys.exit(f"unknown variant {v}; known: {ALL_VARIANTS}")
    os.makedirs(args.work, exist_ok=True)
    if args.core_speed:
        return core_speed(args, find_r50k(args.r50k))
    infos = {}
    for s in args.sizes.split(","):
        size, label = parse_size(s)
        infos[label] = make_corpus(args.work, label, size, args.seed)
    if args.corpus_only:
        return
    if any(v.startswith("hyperion") for v in args.variants) and not os.access(args.hyperion, os.X_OK):
        sys.exit(f"no hyperion binary at {args.hyperion} (--hyperion)")
    r50k = find_r50k(args.r50k)
    print(f"hyperion {args.hyperion}; r50k {r50k}; tokenizer.json {args.tokenizer_json}; threads {args.threads}",
          flush=True)
    all_runs, problems = {}, []
    for label, info in infos.items():
        print(f"corpus {label}: {args.rounds} round(s) of {', '.join(args.variants)}", flush=True)
        all_runs[label] = bench_corpus(info, args, r50k)
        problems += check(label, all_runs[label])[1]
    table = report(all_runs, infos, args)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "rounds": args.rounds, "corpora": infos, "runs": all_runs,
                       "problems": problems, "table": table}, f, indent=1)
    if problems:
        print("\n!!!!!!!! TOKEN COUNT MISMATCH !!!!!!!!", file=sys.stderr)
        for line in problems:
            print("!!! " + line, file=sys.stderr)
        sys.exit(1)
    print("\ntoken and document counts: all variants agree")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Checks that the Hugging Face tokenizer files of `data::hf_tokenizer_files`
encode exactly like Hyperion's tokenizers.

    pip install transformers tokenizers tiktoken      # torch is not needed
    python3 crates/data/tests/check_hf_tokenizer.py [--lines N] [--keep DIR]

Writes the files with `cargo run -p hyperion-data --example write_hf_tokenizer`
(CARGO_TARGET_DIR is honoured), then:

gpt2: loads the folder with `transformers.AutoTokenizer.from_pretrained` and
  compares its ids with `tiktoken.get_encoding("r50k_base")` (the tables
  Hyperion uses through tiktoken-rs) on every line of data/shakespeare (or the
  first --lines), on 200-line blocks, on each whole play, and on unicode / emoji /
  whitespace edge cases; checks `decode` gives the text back; and compares
  vocab.json / merges.txt with GPT-2's published encoder.json / vocab.bpe when
  found (tiktoken-rs ships them in its `assets/`; or pass --gpt2-reference DIR).
char: loads the char `tokenizer.json` the same way and compares with the char
  ids (index in the sorted char set) on the same text, plus decode.

Offline: when tiktoken cannot download r50k_base, the script seeds tiktoken's
cache with tiktoken-rs's embedded copy (`assets/r50k_base.tiktoken`).
Exit status 0 when everything matches, 1 otherwise.
"""

import argparse
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"

EDGE_CASES = [
    "",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\n\n\n",
    "a\n\n b",
    "\t\tindented\n    four spaces\n",
    "trailing spaces   ",
    "   leading spaces",
    "line\r\nwindows\r\n",
    "Hello world",
    " Hello world",
    "don't I'LL we've they're she'd it's 's",
    "héllo wörld naïve café Ångström",
    "東京 日本語のテキスト 中文 한국어",
    "Привет мир Ελληνικά עברית العربية",
    "😀👍🏽 👨‍👩‍👧 🏳️‍🌈 emoji🙂inline",
    "e\u0301 combining, \u200bzero width, \u00a0nbsp, \u2028line sep, \u3000ideographic",
    "ｆｕｌｌｗｉｄｔｈ １２３",
    "1234567890 3.14159 -42 1e-9 0x1F",
    "---==>> ''' \"\"\" ... !!! ??? ;;; @@@ ###",
    "\ufffd replacement \U0010ffff max \x00 nul \x7f del",
    "ÿþ Ā ĉ Ġ Ċ",  # characters that look like GPT-2's byte alphabet
    "x" * 500,
    " " * 100 + "x",
    "word " * 200,
    "a<|endoftext|>b",
    "<|endoftext|>",
    "<|endoftext|> leading",
]


def tiktoken_assets():
    pattern = os.path.expanduser("~/.cargo/registry/src/*/tiktoken-rs-*/assets")
    found = sorted(glob.glob(pattern))
    return Path(found[-1]) if found else None


def r50k():
    import tiktoken

    try:
        return tiktoken.get_encoding("r50k_base")
    except Exception as e:  # offline: seed the cache from tiktoken-rs's copy
        assets = tiktoken_assets()
        if assets is None or not (assets / "r50k_base.tiktoken").exists():
            raise SystemExit(f"cannot load r50k_base ({e}) and no tiktoken-rs assets found")
        cache = Path(tempfile.mkdtemp(prefix="tiktoken-cache-"))
        key = hashlib.sha1(R50K_URL.encode()).hexdigest()
        (cache / key).write_bytes((assets / "r50k_base.tiktoken").read_bytes())
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
        print(f"tiktoken offline: seeded cache from {assets / 'r50k_base.tiktoken'}")
        import tiktoken.registry

        tiktoken.registry.ENCODINGS.pop("r50k_base", None)
        return tiktoken.get_encoding("r50k_base")


def write_files(kind, out, texts=()):
    cmd = ["cargo", "run", "-q", "-p", "hyperion-data", "--example", "write_hf_tokenizer", "--", kind, str(out)]
    subprocess.run(cmd + [str(t) for t in texts], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


class Report:
    def __init__(self):
        self.failures = 0

    def compare(self, what, text, got, want, limit=5):
        if got == want:
            return True
        self.failures += 1
        if self.failures <= limit:
            k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            print(f"MISMATCH {what}: {text[:80]!r}\n  hf       {got[max(0, k - 3):k + 5]}\n  expected {want[max(0, k - 3):k + 5]}")
        return False


def corpus(limit):
    plays = sorted((ROOT / "data" / "shakespeare").glob("*.txt"))
    lines = []
    for p in plays:
        lines.extend(p.read_bytes().decode("utf-8").splitlines(keepends=True))
    return plays, (lines[:limit] if limit else lines)


def check_gpt2(dirpath, plays, lines, ref_dir, rep):
    from transformers import AutoTokenizer

    enc = r50k()
    tok = AutoTokenizer.from_pretrained(str(dirpath))
    print(f"gpt2: loaded {type(tok).__name__} (vocab {len(tok)}), bos/eos {tok.bos_token_id}/{tok.eos_token_id}, max_len {tok.model_max_length}")
    ok = len(tok) == 50257 and tok.bos_token_id == 50256 and tok.eos_token_id == 50256
    if not ok:
        rep.failures += 1
        print("MISMATCH gpt2 vocab size or special ids")

    def hf(texts):
        return tok(texts, add_special_tokens=True)["input_ids"]

    # Lines (each with its newline), 200-line blocks, whole plays.
    blocks = ["".join(lines[i:i + 200]) for i in range(0, len(lines), 200)]
    whole = [p.read_bytes().decode("utf-8") for p in plays]
    counts = {}
    for name, texts in [("line", lines), ("block", blocks), ("play", whole)]:
        got = hf(texts)
        bad = 0
        for t, g in zip(texts, got):
            want = enc.encode_ordinary(t)
            bad += not rep.compare(f"gpt2 {name}", t, g, want)
            bad += not rep.compare(f"gpt2 {name} decode", t, tok.decode(g), t)
        counts[name] = (len(texts), bad)
    # Edge cases: "<|endoftext|>" is a special token to HF, as in Hyperion's `encode`.
    bad = 0
    for t in EDGE_CASES:
        want = enc.encode(t, allowed_special="all")
        g = hf([t])[0]
        bad += not rep.compare("gpt2 edge", t, g, want)
        bad += not rep.compare("gpt2 edge decode", t, tok.decode(g), t)
    counts["edge"] = (len(EDGE_CASES), bad)
    # Every token whose bytes are UTF-8, encoded on its own.
    singles = []
    for i in range(50257):
        try:
            singles.append(enc.decode_single_token_bytes(i).decode("utf-8"))
        except UnicodeDecodeError:
            pass
    bad = 0
    for t, g in zip(singles, hf(singles)):
        bad += not rep.compare("gpt2 single token", t, g, enc.encode(t, allowed_special="all"))
    counts["single-token strings"] = (len(singles), bad)
    print("gpt2 compared (texts, mismatches):", counts)

    # The pure-Python GPT2Tokenizer, where this transformers still has one.
    try:
        slow = AutoTokenizer.from_pretrained(str(dirpath), use_fast=False)
    except Exception as e:
        slow = None
        print(f"gpt2 slow tokenizer: not loaded ({type(e).__name__}: {e})")
    if slow is not None and type(slow) is not type(tok):
        texts = lines[:3000] + EDGE_CASES
        bad = 0
        for t in texts:
            g = slow(t, add_special_tokens=True)["input_ids"]
            bad += not rep.compare("gpt2 slow", t, g, enc.encode(t, allowed_special="all"))
            bad += not rep.compare("gpt2 slow decode", t, slow.decode(g), t)
        print(f"gpt2 slow {type(slow).__name__} compared (texts, mismatches): {(len(texts), bad)}")
    elif slow is not None:
        print(f"gpt2: use_fast=False gives the same class {type(slow).__name__} (transformers {transformers_version()}); no separate slow check")

    # GPT-2's published files.
    if ref_dir and (ref_dir / "encoder.json").exists() and (ref_dir / "vocab.bpe").exists():
        ours = json.loads((dirpath / "vocab.json").read_text(encoding="utf-8"))
        theirs = json.loads((ref_dir / "encoder.json").read_text(encoding="utf-8"))
        m_ours = (dirpath / "merges.txt").read_text(encoding="utf-8").split("\n")
        m_theirs = (ref_dir / "vocab.bpe").read_text(encoding="utf-8").split("\n")
        same_v, same_m = ours == theirs, m_ours[1:] == m_theirs[1:]
        print(f"gpt2 vs GPT-2's published files in {ref_dir}: vocab.json equal: {same_v} ({len(ours)} entries), "
              f"merges equal: {same_m} ({len([m for m in m_ours[1:] if m])} merges)")
        rep.failures += (not same_v) + (not same_m)
    else:
        print("gpt2: GPT-2's published encoder.json / vocab.bpe not found; skipped that comparison")


def transformers_version():
    import transformers

    return transformers.__version__


def check_char(dirpath, lines, rep):
    from transformers import AutoTokenizer

    chars = (dirpath / "chars.txt").read_bytes().decode("utf-8")  # no newline translation
    ids = {c: i for i, c in enumerate(chars)}
    tok = AutoTokenizer.from_pretrained(str(dirpath))
    print(f"char: loaded {type(tok).__name__} (vocab {len(tok)} = {len(chars)} chars)")
    if len(tok) != len(chars):
        rep.failures += 1
    edge = [t for t in EDGE_CASES if all(c in ids for c in t) and "<|" not in t]
    blocks = ["".join(lines[i:i + 200]) for i in range(0, len(lines), 200)]
    counts = {}
    for name, texts in [("line", lines), ("block", blocks), ("edge", edge)]:
        got = tok(texts, add_special_tokens=True)["input_ids"]
        bad = 0
        for t, g in zip(texts, got):
            bad += not rep.compare(f"char {name}", t, g, [ids[c] for c in t])
            bad += not rep.compare(f"char {name} decode", t, tok.decode(g), t)
        counts[name] = (len(texts), bad)
    print("char compared (texts, mismatches):", counts)
    # A char outside the vocabulary: Hyperion rejects it; show what HF does.
    outside = next(chr(c) for c in range(0x4E00, 0x9FFF) if chr(c) not in ids)
    try:
        print(f"char: out-of-vocabulary {outside!r} -> {tok(outside)['input_ids']}")
    except Exception as e:
        print(f"char: out-of-vocabulary {outside!r} -> {type(e).__name__}: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=0, help="compare only the first N corpus lines (default: all)")
    ap.add_argument("--keep", type=Path, help="write the folders here instead of a temporary folder")
    ap.add_argument("--gpt2-reference", type=Path, help="folder holding GPT-2's encoder.json and vocab.bpe")
    ap.add_argument("--skip-char", action="store_true")
    args = ap.parse_args()

    base = args.keep or Path(tempfile.mkdtemp(prefix="hf-tokenizer-"))
    plays, lines = corpus(args.lines)
    print(f"transformers {transformers_version()}")
    rep = Report()

    write_files("gpt2", base / "gpt2")
    check_gpt2(base / "gpt2", plays, lines, args.gpt2_reference or tiktoken_assets(), rep)

    if not args.skip_char:
        # The char vocabulary: the corpus plus the edge cases (so they are encodable).
        extra = base / "edge.txt"
        extra.write_text("".join(t for t in EDGE_CASES if "<|" not in t), encoding="utf-8")
        write_files("char", base / "char", plays + [extra])
        check_char(base / "char", lines, rep)

    print(f"files in {base}")
    print("OK: identical ids" if rep.failures == 0 else f"FAILED: {rep.failures} mismatches")
    sys.exit(1 if rep.failures else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Make the Hugging Face tokenizer test fixtures in
crates/data/tests/fixtures/tokenizers/.

    pip install tokenizers tiktoken
    python3 scripts/make_tokenizer_fixtures.py [--gpt2-out /tmp/gpt2-tokenizer.json]

Made with tokenizers 0.23.3 and tiktoken 0.14.0 (Python 3.11). Needs no network:
GPT-2's BPE ranks are read from the copy of `r50k_base.tiktoken` that the Rust
crate tiktoken-rs ships in its `assets/` (found under ~/.cargo/registry/src, or
pass --r50k PATH).

What it writes (all deterministic: a rerun gives byte-identical files):

  bpe-bytelevel/   tokenizer.json + tokenizer_config.json. A GPT-2 style byte-level
                   BPE (no normalizer, ByteLevel pre-tokenizer without prefix space,
                   ByteLevel decoder, no post-processor) trained on
                   data/shakespeare/*.txt to 999 model tokens; `<|endoftext|>` is
                   then added as a special token (id 999, only in `added_tokens`,
                   not in the model vocab).
  bpe-llamalike/   tokenizer.json + tokenizer_config.json. A Llama-2 / Mistral style
                   BPE: normalizer Prepend("▁") + Replace(" ", "▁"), no
                   pre-tokenizer, byte_fallback, ids 0..2 = <unk> <s> </s>,
                   3..258 = <0x00>..<0xFF>, then 541 trained pieces (800 in all);
                   post-processor puts <s> before a sequence; decoder
                   Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0).
                   Trained line by line (newlines never enter the vocab, they go
                   through byte fallback as <0x0A>, as in Llama) with a temporary
                   split before each "▁" so that no piece spans two words; the
                   saved tokenizer has no pre-tokenizer.
  texts.json       the test strings.
  expected_ids.json  per text, in order: ids of both tokenizers with and without
                   special tokens, the llamalike decode, and GPT-2's ids from
                   tiktoken (encode_ordinary, and encode with allowed_special="all").
  README.md        a short description.

Self-check (nothing of it is written to the repository): GPT-2's tokenizer.json is
rebuilt from the tiktoken ranks (vocab = byte-level spelling of each token, merges
recovered by re-running BPE over each token's bytes with lower ranks only), loaded
with `tokenizers`, and its ids are compared with tiktoken's encode_ordinary on every
text without "<|endoftext|>" and on every corpus file. The rebuilt file is saved to
--gpt2-out (default /tmp/gpt2-tokenizer.json) and its sha256 printed. When GPT-2's
published vocab.bpe / encoder.json lie next to the ranks, the rebuilt merges and
vocab are also compared with them.

Exit status 0 when everything was written and every check passed.
"""

import argparse
import glob
import hashlib
import json
import os
import sys
from pathlib import Path

import tiktoken
import tiktoken.load
import tokenizers
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

ROOT = Path(__file__).resolve().parents[1]
CORPUS_DIR = ROOT / "data" / "shakespeare"
OUT_DIR = ROOT / "crates" / "data" / "tests" / "fixtures" / "tokenizers"

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
SPACE_MARK = "\u2581"  # "▁"

BYTELEVEL_MODEL_TOKENS = 999  # + <|endoftext|> = 1000
LLAMALIKE_VOCAB = 800  # 3 specials + 256 byte tokens + 541 trained pieces
LLAMA_SPECIALS = ["<unk>", "<s>", "</s>"]


# ---------------------------------------------------------------- corpus / texts


def corpus_files():
    files = sorted(CORPUS_DIR.glob("*.txt"))
    if not files:
        sys.exit(f"no corpus files in {CORPUS_DIR}")
    return files


def read(path):
    return path.read_text(encoding="utf-8")


def between(text, start, end):
    """The slice of `text` from `start` up to and including `end` (both must occur)."""
    i = text.index(start)
    j = text.index(end, i) + len(end)
    return text[i:j]


def make_texts():
    hamlet = read(CORPUS_DIR / "hamlet.txt")
    passage = between(hamlet, "[Exeunt King and Polonius.]", "Must give us pause: there's the respect\n")
    macbeth = read(CORPUS_DIR / "macbeth.txt")
    start = macbeth.index("ACT I")
    long_text = macbeth[start : start + 5000]
    return [
        passage,
        "Hello world",
        "   leading and trailing spaces   ",
        "runs  of   spaces\tand\t\ttabs \t mixed\n    indented line\n\n\n",
        "Windows line\r\nendings\r\n\r\nhere\r\n",
        "1234567 3.14 -42 2024-01-01 1e10 0x1F",
        "don't we'll they're I'm you've she'd it's DON'T",
        "Accented Latin: café naïve résumé Ångström façade Zürich señor œuvre",
        "Greek: Ελληνικά γλώσσα, αβγδ ΑΒΓΔ",
        "CJK: 東京は日本の首都です。中文测试，한국어",
        "Emoji: 😀 and a family 👨\u200d👩\u200d👧\u200d👦 end",
        'fn main() {\n    let xs = vec![1, 2, 3];\n    for x in &xs {\n\tprintln!("{x}");\n    }\n}\n',
        f"The end of one document{EOT}The start of the next",
        "Llama specials in text: one</s>two <s> three",
        "",
        " \n \n\n",
        long_text,
    ]


# ---------------------------------------------------------------- trained tokenizers


def train_bytelevel(files):
    tok = Tokenizer(models.BPE())
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BYTELEVEL_MODEL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train([str(f) for f in files], trainer)
    assert tok.get_vocab_size(with_added_tokens=False) == BYTELEVEL_MODEL_TOKENS
    tok.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    assert tok.token_to_id(EOT) == BYTELEVEL_MODEL_TOKENS
    return tok


def corpus_lines(files):
    for f in files:
        for line in read(f).split("\n"):
            if line.strip():
                yield line


def train_llamalike(files):
    normalizer = normalizers.Sequence([normalizers.Prepend(SPACE_MARK), normalizers.Replace(" ", SPACE_MARK)])

    # 1. Train the pieces. A temporary pre-tokenizer cuts before each "▁" so that
    #    pieces stay inside words (what SentencePiece does when training Llama).
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizer
    trainer_tok.pre_tokenizer = pre_tokenizers.Split(SPACE_MARK, behavior="merged_with_next")
    n_trained = LLAMALIKE_VOCAB - 256
    trainer = trainers.BpeTrainer(vocab_size=n_trained, special_tokens=LLAMA_SPECIALS, show_progress=False)
    trainer_tok.train_from_iterator(corpus_lines(files), trainer)
    trained = trainer_tok.get_vocab(with_added_tokens=False)
    assert len(trained) == n_trained, len(trained)
    trained_merges = [tuple(m) for m in json.loads(trainer_tok.to_str())["model"]["merges"]]

    # 2. Lay the vocabulary out as Llama does: specials, byte tokens, pieces.
    vocab = {}
    for t in LLAMA_SPECIALS:
        vocab[t] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(trained.items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    assert len(vocab) == LLAMALIKE_VOCAB, len(vocab)

    model = models.BPE(vocab=vocab, merges=trained_merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    tok = Tokenizer(model)
    tok.normalizer = normalizer
    tok.pre_tokenizer = None
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA_SPECIALS])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A",
        pair="<s> $A <s>:1 $B:1",
        special_tokens=[("<s>", vocab["<s>"])],
    )
    tok.decoder = decoders.Sequence(
        [decoders.Replace(SPACE_MARK, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    for i, t in enumerate(LLAMA_SPECIALS):
        assert tok.token_to_id(t) == i
    return tok


# ---------------------------------------------------------------- GPT-2 from tiktoken ranks


def find_r50k():
    pattern = os.path.expanduser("~/.cargo/registry/src/*/tiktoken-rs-*/assets/r50k_base.tiktoken")
    found = sorted(glob.glob(pattern))
    if not found:
        sys.exit("r50k_base.tiktoken not found (cargo fetch tiktoken-rs, or pass --r50k PATH)")
    return found[-1]


def gpt2_encoding(path):
    enc = tiktoken.Encoding(
        name="r50k_base",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=tiktoken.load.load_tiktoken_bpe(path),
        special_tokens={EOT: 50256},
    )
    got = enc.encode_ordinary("Hello world")
    assert got == [15496, 995], got
    return enc


def byte_alphabet():
    """GPT-2's printable spelling of each byte: bytes that are printable and not
    space-like keep their own character; the others are moved, in byte order,
    to code points 256, 257, ..."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    table, moved = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + moved)
            moved += 1
    return table


def recover_merges(ranks):
    """For each multi-byte token in rank order, the pair it is made from: merge its
    bytes greedily with tokens of lower rank until two parts are left."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best = None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best[0]):
                    best = (r, i)
            assert best is not None, f"token {token!r} cannot be built from lower ranks"
            i = best[1]
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        merges.append((parts[0], parts[1]))
    return merges


def gpt2_tokenizer_from_ranks(enc, path):
    ranks = tiktoken.load.load_tiktoken_bpe(path)
    table = byte_alphabet()
    spell = lambda bs: "".join(table[b] for b in bs)
    vocab = {spell(tok): rank for tok, rank in ranks.items()}
    assert len(vocab) == len(ranks) == 50256
    merges = [(spell(a), spell(b)) for a, b in recover_merges(ranks)]
    assert len(merges) == 50000, len(merges)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    assert tok.token_to_id(EOT) == 50256
    return tok


SELF_CHECK_EXTRAS = [
    "\u00a0nbsp \u2028line sep \u3000ideographic \x85nel \u200bzero width",
    "  \n  trailing\t \n",
    "ÿþ Ā ĉ Ġ Ċ",
    "e\u0301 combining, ｆｕｌｌｗｉｄｔｈ １２３, \ufffd, \U0010ffff",
    "Привет мир עברית العربية",
]


def gpt2_self_check(enc, gpt2, texts, files):
    checked, failed = 0, []
    cases = [(f"text {i}", t) for i, t in enumerate(texts) if EOT not in t]
    cases += [(f"extra {i}", t) for i, t in enumerate(SELF_CHECK_EXTRAS)]
    cases += [(f.name, read(f)) for f in files]
    n_ids = 0
    for name, text in cases:
        want = enc.encode_ordinary(text)
        got = gpt2.encode(text, add_special_tokens=False).ids
        n_ids += len(want)
        checked += 1
        if got != want:
            failed.append(name)
        elif gpt2.decode(got) != text:
            failed.append(name + " (decode)")
    print(f"self-check: tokenizers GPT-2 rebuilt from r50k ranks vs tiktoken encode_ordinary: "
          f"{checked - len(failed)}/{checked} cases equal ({n_ids} ids)")
    if failed:
        print("  differ:", ", ".join(failed))
    return not failed


def compare_with_published_gpt2(gpt2, assets):
    """When GPT-2's published vocab.bpe / encoder.json lie next to the ranks
    (tiktoken-rs ships them), the rebuilt merges and vocab must equal them."""
    bpe, encoder = assets / "vocab.bpe", assets / "encoder.json"
    if not (bpe.exists() and encoder.exists()):
        print(f"self-check: no vocab.bpe / encoder.json in {assets}, published GPT-2 files not compared")
        return True
    model = json.loads(gpt2.to_str())["model"]
    published = [tuple(l.split(" ")) for l in read(bpe).split("\n")[1:] if l]
    same_merges = [tuple(m) for m in model["merges"]] == published
    enc_json = json.loads(read(encoder))
    enc_json.pop(EOT, None)
    same_vocab = enc_json == model["vocab"]
    print(f"self-check: rebuilt merges == published vocab.bpe ({len(published)}): {same_merges}; "
          f"rebuilt vocab == published encoder.json: {same_vocab}")
    return same_merges and same_vocab


# ---------------------------------------------------------------- writing


def dumps(obj, indent=0):
    """JSON with lists of numbers on one line, everything else indented."""
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(k)}: {dumps(v, indent + 2)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(isinstance(x, int) for x in obj):
            return "[" + ",".join(str(x) for x in obj) + "]"
        items = [inner + dumps(v, indent + 2) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def write_tokenizer(tok, folder, config):
    write(folder / "tokenizer.json", tok.to_str(pretty=True) + "\n")
    write(folder / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")


README = """\
# Hugging Face tokenizer fixtures

- `bpe-bytelevel/`: GPT-2 style byte-level BPE (no normalizer, ByteLevel pre-tokenizer and decoder, no post-processor), 999 model tokens trained on `data/shakespeare/*.txt` + `<|endoftext|>` as added special token id 999.
- `bpe-llamalike/`: Llama-2 style BPE (Prepend/Replace "▁" normalizer, no pre-tokenizer, byte_fallback, `<unk>` `<s>` `</s>` = 0 1 2, `<0x00>`..`<0xFF>` = 3..258, 800 tokens; `<s>` added before a sequence).
- `texts.json`: the test strings; `expected_ids.json`: for each text, in order, the ids of both tokenizers with/without special tokens (`tokenizers` `encode(text, add_special_tokens=...)`), the llamalike `decode(ids, skip_special_tokens=True)`, and GPT-2 r50k ids from tiktoken (`encode_ordinary`, `encode(allowed_special="all")`).
- Note: `tokenizers` matches added special tokens (`<|endoftext|>` here, `<s>` `</s>` in llamalike) inside the text whatever `add_special_tokens` says; that flag only controls the post-processor. The llamalike normalizer runs on each piece between special tokens, so the piece after one gets its own "▁" prefix.
- Regenerate (deterministic, no network): `pip install tokenizers=={tk} tiktoken=={tt}` then `python3 scripts/make_tokenizer_fixtures.py`.
- Made with tokenizers {tk}, tiktoken {tt}, Python {py}.
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--r50k", help="path of r50k_base.tiktoken (default: tiktoken-rs's copy)")
    p.add_argument("--gpt2-out", default="/tmp/gpt2-tokenizer.json",
                   help="where the self-check saves GPT-2's rebuilt tokenizer.json")
    args = p.parse_args()

    files = corpus_files()
    texts = make_texts()
    r50k = args.r50k or find_r50k()
    enc = gpt2_encoding(r50k)

    bytelevel = train_bytelevel(files)
    llamalike = train_llamalike(files)

    ok = True
    expected = []
    for i, text in enumerate(texts):
        entry = {}
        for name, tok in (("bpe-bytelevel", bytelevel), ("bpe-llamalike", llamalike)):
            entry[name] = {
                "with_special": tok.encode(text, add_special_tokens=True).ids,
                "without_special": tok.encode(text, add_special_tokens=False).ids,
            }
        decoded = llamalike.decode(entry["bpe-llamalike"]["with_special"], skip_special_tokens=True)
        entry["bpe-llamalike-decoded"] = decoded
        entry["gpt2_tiktoken_ordinary"] = enc.encode_ordinary(text)
        entry["gpt2_tiktoken_allowed_special"] = enc.encode(text, allowed_special="all")
        expected.append(entry)
        # Round trips (checked here, not stored). Special tokens met in the text are
        # matched as tokens and dropped by skip_special_tokens, so no round trip there.
        has_llama_special = any(t in text for t in LLAMA_SPECIALS)
        if decoded != text and not has_llama_special:
            print(f"text {i}: llamalike decode differs: {decoded!r}")
            ok = False
        bl = bytelevel.decode(entry["bpe-bytelevel"]["without_special"], skip_special_tokens=False)
        if bl != text:
            print(f"text {i}: bytelevel decode differs: {bl!r}")
            ok = False
        if llamalike.token_to_id("<unk>") in entry["bpe-llamalike"]["without_special"]:
            print(f"text {i}: llamalike produced <unk>")
            ok = False

    write_tokenizer(bytelevel, OUT_DIR / "bpe-bytelevel", {
        "bos_token": EOT,
        "eos_token": EOT,
        "unk_token": EOT,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1024,
        "tokenizer_class": "PreTrainedTokenizerFast",
    })
    write_tokenizer(llamalike, OUT_DIR / "bpe-llamalike", {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "tokenizer_class": "LlamaTokenizerFast",
    })
    write(OUT_DIR / "texts.json", json.dumps(texts, ensure_ascii=False, indent=1) + "\n")
    write(OUT_DIR / "expected_ids.json", dumps(expected) + "\n")
    write(OUT_DIR / "README.md", README.format(
        tk=tokenizers.__version__, tt=tiktoken.__version__ if hasattr(tiktoken, "__version__") else "?",
        py=".".join(map(str, sys.version_info[:2]))))

    gpt2 = gpt2_tokenizer_from_ranks(enc, r50k)
    ok &= gpt2_self_check(enc, gpt2, texts, files)
    ok &= compare_with_published_gpt2(gpt2, Path(r50k).parent)
    out = Path(args.gpt2_out)
    out.write_bytes((gpt2.to_str(pretty=True) + "\n").encode("utf-8"))
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"GPT-2 tokenizer.json rebuilt from ranks: {out} ({out.stat().st_size} bytes) sha256 {digest}")

    for f in sorted(OUT_DIR.rglob("*")):
        if f.is_file():
            print(f"{f.relative_to(ROOT)}  {f.stat().st_size} bytes  "
                  f"sha256 {hashlib.sha256(f.read_bytes()).hexdigest()[:16]}")
    print(f"tokenizers {tokenizers.__version__}, tiktoken {getattr(tiktoken, '__version__', '?')}")
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

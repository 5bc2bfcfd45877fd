#!/usr/bin/env python3
"""Check a Hugging Face export written by Hyperion with `transformers` itself.

    python scripts/check_hf_export.py EXPORT_DIR REF.safetensors [--atol 1e-4]
                                      [--text "ROMEO: But soft, what light"]

EXPORT_DIR is a folder as Hyperion's exporter writes it: config.json, model.safetensors
(or model-0000x-of-0000y.safetensors shards + model.safetensors.index.json),
generation_config.json, and tokenizer files when the tokenizer has an HF form
(tokenizer.json, or vocab.json + merges.txt).

REF.safetensors holds what Hyperion computed for the same weights:
    tokens   I64 (B, T)
    logits   F32 (B, T, V)
and optionally
    targets  I64 (B, T) with loss F32 (1,)   mean cross-entropy, checked to --atol too
    text_ids I64 (n,)   Hyperion's token ids for --text, checked against HF's encoding

The script loads `AutoModelForCausalLM.from_pretrained(EXPORT_DIR)` in float32 with eager
attention in eval mode, fails on any missing, unexpected or shape-mismatched weight,
prints the model class, the parameter count and max |logits - REF logits|; loads
`GenerationConfig.from_pretrained(EXPORT_DIR)`; and, if tokenizer files exist, loads
`AutoTokenizer.from_pretrained(EXPORT_DIR)` and checks that decode(encode(--text)) gives
the text back.

Exit status: 0 all checks pass; 1 a check failed (logits beyond --atol, weights not
loaded, no generation config, tokenizer round trip broken); 2 torch / transformers /
safetensors cannot be imported (callers treat that as "skip") or the arguments are bad.
"""

import argparse
import os
import sys

DEFAULT_TEXT = "ROMEO: But soft, what light"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export_dir", help="folder written by Hyperion's HF exporter")
    p.add_argument("ref", help="safetensors with tokens I64 (B, T) and logits F32 (B, T, V)")
    p.add_argument("--atol", type=float, default=1e-4, help="max |dlogits| allowed (default 1e-4)")
    p.add_argument("--text", default=DEFAULT_TEXT, help="tokenizer round-trip text")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch
        import torch.nn.functional as F
        import transformers
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    except ImportError as e:
        print(f"check_hf_export: SKIP: needs torch, transformers and safetensors "
              f"(pip install torch transformers safetensors): {e}", file=sys.stderr)
        return 2
    if not os.path.isdir(args.export_dir):
        print(f"check_hf_export: {args.export_dir}: not a directory", file=sys.stderr)
        return 2
    if not os.path.isfile(args.ref):
        print(f"check_hf_export: {args.ref}: no such file", file=sys.stderr)
        return 2
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    failures = []
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    print(f"export: {args.export_dir}: {', '.join(sorted(os.listdir(args.export_dir)))}")

    # --- the model -------------------------------------------------------------------
    # transformers >= 4.56 names the argument `dtype`; older ones `torch_dtype`.
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    model, info = AutoModelForCausalLM.from_pretrained(
        args.export_dir, attn_implementation="eager", output_loading_info=True,
        **{dtype_kw: torch.float32})
    model.eval()
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        bad = sorted(str(k) for k in info.get(key, []))
        if bad:
            failures.append(f"{key.replace('_', ' ')}: {', '.join(bad)}")
    n_params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    print(f"model: {type(model).__name__} ({model.config.model_type}), {n_params:,} parameters, "
          f"tied head: {model.get_output_embeddings().weight is model.get_input_embeddings().weight}")

    ref = load_file(args.ref)
    for key in ("tokens", "logits"):
        if key not in ref:
            print(f"check_hf_export: {args.ref} has no '{key}' tensor", file=sys.stderr)
            return 2
    tokens, want = ref["tokens"].to(torch.int64), ref["logits"].to(torch.float32)
    with torch.no_grad():
        got = model(input_ids=tokens, use_cache=False).logits.float()
    if got.shape != want.shape:
        failures.append(f"logits shape {tuple(got.shape)} != REF {tuple(want.shape)}")
        diff = float("inf")
    else:
        diff = (got - want).abs().max().item()
    verdict = "ok" if diff <= args.atol else "FAIL"
    print(f"logits: B, T, V = {tuple(want.shape)}, max |HF - REF| = {diff:.3g} "
          f"(atol {args.atol:g}) {verdict}")
    if diff > args.atol and got.shape == want.shape:
        failures.append(f"max |dlogits| {diff:.3g} > atol {args.atol:g}")
    if "targets" in ref and "loss" in ref and got.shape == want.shape:
        V = got.shape[-1]
        loss = F.cross_entropy(got.reshape(-1, V), ref["targets"].reshape(-1).to(torch.int64)).item()
        dl = abs(loss - ref["loss"].reshape(-1)[0].item())
        print(f"loss: HF {loss:.6f}, REF {ref['loss'].reshape(-1)[0].item():.6f}, |d| {dl:.3g} "
              f"{'ok' if dl <= args.atol else 'FAIL'}")
        if dl > args.atol:
            failures.append(f"loss differs by {dl:.3g}")

    # --- generation config -----------------------------------------------------------
    try:
        gen = GenerationConfig.from_pretrained(args.export_dir)
        print(f"generation config: bos {gen.bos_token_id}, eos {gen.eos_token_id}, "
              f"pad {gen.pad_token_id}, do_sample {gen.do_sample}")
    except (OSError, ValueError) as e:
        failures.append(f"generation config: {e}")

    # --- tokenizer -------------------------------------------------------------------
    has = lambda f: os.path.isfile(os.path.join(args.export_dir, f))  # noqa: E731
    if has("tokenizer.json") or (has("vocab.json") and has("merges.txt")):
        try:
            tok = AutoTokenizer.from_pretrained(args.export_dir)
            ids = tok.encode(args.text, add_special_tokens=False)
            back = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            ok = back == args.text
            print(f"tokenizer: {type(tok).__name__}, vocab {len(tok)}, {args.text!r} -> "
                  f"{len(ids)} ids {ids[:12]}{' ...' if len(ids) > 12 else ''} -> {back!r} "
                  f"{'round trip ok' if ok else 'ROUND TRIP FAILS'}")
            if not ok:
                failures.append(f"tokenizer round trip: {args.text!r} -> {back!r}")
            if "text_ids" in ref:
                want_ids = ref["text_ids"].reshape(-1).tolist()
                if want_ids != ids:
                    failures.append(f"tokenizer ids {ids} != Hyperion's {want_ids}")
                else:
                    print("tokenizer: ids equal Hyperion's (REF text_ids)")
            if len(tok) > model.config.vocab_size:
                failures.append(f"tokenizer has {len(tok)} tokens > model vocab {model.config.vocab_size}")
        except Exception as e:  # noqa: BLE001 - report whatever transformers raises
            failures.append(f"tokenizer: {type(e).__name__}: {e}")
    else:
        print("tokenizer: no tokenizer files (tokenizer.json or vocab.json + merges.txt); skipped")

    if failures:
        for f in failures:
            print(f"FAIL: {f}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

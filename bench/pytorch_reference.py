#!/usr/bin/env python3
"""PyTorch reference GPT-2 for Hyperion: the speed yardstick and the fixture model.

The model is written out in plain PyTorch (no `transformers` import) so that every
parameter name and layout is visible and equal to Hugging Face's GPT2LMHeadModel
checkpoint keys, which are also Hyperion's tensor names:

    transformer.wte.weight            (V, C)     token embedding, tied to the LM head
    transformer.wpe.weight            (block, C) learned positions
    transformer.h.{i}.ln_1.weight/.bias          (C,)
    transformer.h.{i}.attn.c_attn.weight/.bias   (C, 3C) / (3C,)   Conv1D (in, out)
    transformer.h.{i}.attn.c_proj.weight/.bias   (C, C)  / (C,)
    transformer.h.{i}.ln_2.weight/.bias          (C,)
    transformer.h.{i}.mlp.c_fc.weight/.bias      (C, 4C) / (4C,)
    transformer.h.{i}.mlp.c_proj.weight/.bias    (4C, C) / (C,)
    transformer.ln_f.weight/.bias                (C,)

With `bias=False` the linear layers AND the LayerNorms carry no bias (nanoGPT's
convention). Dropout is 0 throughout, so the model is a deterministic function.

As a benchmark, one training step is: forward on random tokens (B, block), mean
cross-entropy, backward, clip_grad_norm_(1.0), AdamW (lr 1e-3, betas (0.9, 0.99),
weight decay 0.1 on 2-D weights except the embeddings), zero_grad(set_to_none=True).

    python bench/pytorch_reference.py --preset shakespeare-char --batch 8 --json

`tests/fixtures/make_gpt_fixture.py` imports `GPT` from this file, so the fixture
checks exactly the model that is timed here.
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-5  # GPT-2's layer_norm_epsilon
CLEAN_UTIL = 0.9  # a timed step with CPU use >= this per thread had the cores to itself


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int
    bias: bool


PRESETS = {
    # nanoGPT's shakespeare_char config (train_shakespeare_char.py), bias off.
    "shakespeare-char": GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256,
                                  vocab_size=65, bias=False),
    # A small GPT-2 with the full GPT-2 BPE vocabulary: the head dominates.
    "gpt2-mini": GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=128,
                           vocab_size=50257, bias=True),
}


class LayerNorm(nn.Module):
    """y = (x - mean) / sqrt(var + eps) * weight (+ bias); var is the biased variance."""

    def __init__(self, c: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, LN_EPS)


class Conv1D(nn.Module):
    """HF GPT-2's Conv1D: a linear layer stored as (in, out), y = x @ W + b."""

    def __init__(self, n_in: int, n_out: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None

    def forward(self, x):
        # F.linear wants (out, in); the transposed view costs nothing and lets
        # oneDNN/MKL fuse the bias into the GEMM (addmm), as HF's Conv1D does.
        return F.linear(x, self.weight.t(), self.bias)


class Embedding(nn.Module):
    def __init__(self, n: int, c: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, c))


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, use_sdpa: bool):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = cfg.n_head
        self.use_sdpa = use_sdpa
        self.c_attn = Conv1D(cfg.n_embd, 3 * cfg.n_embd, cfg.bias)
        self.c_proj = Conv1D(cfg.n_embd, cfg.n_embd, cfg.bias)

    def forward(self, x):
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C), q|k|v order
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if self.use_sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # Explicit softmax(q k^T / sqrt(hs)) v (Vaswani et al. 2017, eq. 1) with a
            # causal mask; the fixture uses this path and checks it against SDPA.
            att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, nh, T, T)
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = Conv1D(cfg.n_embd, 4 * cfg.n_embd, cfg.bias)
        self.c_proj = Conv1D(4 * cfg.n_embd, cfg.n_embd, cfg.bias)

    def forward(self, x):
        # GPT-2's "gelu_new": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        # (Hendrycks & Gimpel 2016, tanh approximation).
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, use_sdpa: bool):
        super().__init__()
        self.ln_1 = LayerNorm(cfg.n_embd, cfg.bias)
        self.attn = CausalSelfAttention(cfg, use_sdpa)
        self.ln_2 = LayerNorm(cfg.n_embd, cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))  # pre-LN residual (GPT-2, Radford et al. 2019)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig, use_sdpa: bool = True):
        super().__init__()
        self.cfg = cfg
        # ModuleDict/ModuleList give exactly HF's dotted names (transformer.h.0.ln_1...).
        self.transformer = nn.ModuleDict(dict(
            wte=Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=Embedding(cfg.block_size, cfg.n_embd),
            h=nn.ModuleList([Block(cfg, use_sdpa) for _ in range(cfg.n_layer)]),
            ln_f=LayerNorm(cfg.n_embd, cfg.bias),
        ))

    def forward(self, idx, targets=None):
        """idx, targets: (B, T) int64. Returns logits (B, T, V) and the mean loss."""
        B, T = idx.shape
        assert T <= self.cfg.block_size, f"sequence length {T} > block_size {self.cfg.block_size}"
        tr = self.transformer
        pos = torch.arange(T, device=idx.device)
        x = tr.wte.weight[idx] + tr.wpe.weight[pos]  # (B, T, C)
        for block in tr.h:
            x = block(x)
        x = tr.ln_f(x)
        logits = x @ tr.wte.weight.t()  # (B, T, V), tied head, no bias
        loss = None
        if targets is not None:
            # Mean over all B*T positions.
            loss = F.cross_entropy(logits.view(B * T, -1), targets.view(B * T))
        return logits, loss

    def init_weights(self, gen: torch.Generator, std: float = 0.02):
        """GPT-2's initialisation: N(0, std) weights, zero biases, unit LN weights,
        output projections scaled by 1/sqrt(2L) (Radford et al. 2019, sec. 2.3)."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    s = std / math.sqrt(2 * self.cfg.n_layer) if name.endswith("c_proj.weight") else std
                    p.normal_(0.0, s, generator=gen)
                elif "ln_" in name and name.endswith(".weight"):
                    p.fill_(1.0)
                else:
                    p.zero_()


def flops_per_token(cfg: GPTConfig, n_params: int) -> int:
    """Training FLOPs per token: 6N + 12 L C T (Kaplan et al. 2020; PaLM, Chowdhery et
    al. 2022, app. B). N counts every parameter except the position embedding (wte is
    counted: it is the LM head's matmul); 12 L C T is the attention score/value work."""
    return 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def make_optimizer(model: GPT, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1):
    """AdamW; decay only 2-D weights that are not embeddings (nanoGPT's grouping)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        is_embedding = name.startswith("transformer.wte") or name.startswith("transformer.wpe")
        (decay if p.dim() == 2 and not is_embedding else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # Fused AdamW runs on CPU since torch 2.4; fall back to foreach where it doesn't.
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True), "fused"
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True), "foreach"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--peak-gflops", type=float, default=320.0,
                   help="peak fp32 GFLOP/s for MFU (default: 2 AVX-512 cores)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    for key in ("batch", "steps", "threads"):
        if getattr(a, key) < 1:
            p.error(f"--{key} must be >= 1, got {getattr(a, key)}")
    if a.warmup < 0:
        p.error(f"--warmup must be >= 0, got {a.warmup}")
    if a.peak_gflops <= 0:
        p.error(f"--peak-gflops must be > 0, got {a.peak_gflops}")
    return a


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = PRESETS[args.preset]
    gen = torch.Generator().manual_seed(args.seed)
    model = GPT(cfg, use_sdpa=True)
    model.init_weights(gen)
    n_params = sum(p.numel() for n, p in model.named_parameters() if n != "transformer.wpe.weight")
    opt, opt_kind = make_optimizer(model)
    step_model = torch.compile(model) if args.compile else model

    B, T = args.batch, cfg.block_size
    fwd, bwd, optim, total, cpu = [], [], [], [], []
    losses = []
    for step in range(args.warmup + args.steps):
        idx = torch.randint(0, cfg.vocab_size, (B, T), generator=gen)
        tgt = torch.randint(0, cfg.vocab_size, (B, T), generator=gen)
        c0 = time.process_time()
        t0 = time.perf_counter()
        _, loss = step_model(idx, tgt)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        c3 = time.process_time()
        losses.append(loss.item())
        if step >= args.warmup:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            optim.append(t3 - t2)
            total.append(t3 - t0)
            cpu.append(c3 - c0)

    step_s = statistics.median(total)
    tokens_per_s = B * T / step_s
    mfu = flops_per_token(cfg, n_params) * tokens_per_s / (args.peak_gflops * 1e9)
    # CPU seconds per wall second per thread. OpenMP workers spin rather than sleep
    # between parallel regions, so a step that had the cores to itself scores ~1; well
    # under 1 means other processes took them and the wall time is inflated.
    threads = torch.get_num_threads()
    util = [c / (w * threads) for c, w in zip(cpu, total)]
    cpu_util = statistics.median(util)
    # On a shared machine, the median over steps that got the cores (util >= 0.9) is
    # the uncontended step time; tokens/s over CPU use is no substitute (measured here:
    # it underestimates the uncontended speed by 1.3-2x, cache and barrier effects).
    clean = [w for w, u in zip(total, util) if u >= CLEAN_UTIL]
    clean_s = statistics.median(clean) if clean else None
    # ru_maxrss is in KiB on Linux.
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result = {
        "preset": args.preset,
        "batch": B,
        "block_size": T,
        "tokens_per_s": round(tokens_per_s, 1),
        "step_ms": round(step_s * 1e3, 2),
        "forward_ms": round(statistics.median(fwd) * 1e3, 2),
        "backward_ms": round(statistics.median(bwd) * 1e3, 2),
        "optimizer_ms": round(statistics.median(optim) * 1e3, 2),
        "mfu": round(mfu, 4),
        "params": n_params,
        "flops_per_token": flops_per_token(cfg, n_params),
        "peak_gflops": args.peak_gflops,
        "peak_rss_mb": round(peak_rss_mb, 1),
        "cpu_util": round(cpu_util, 3),
        "step_ms_min": round(min(total) * 1e3, 2),
        "clean_steps": len(clean),
        "step_ms_clean": round(clean_s * 1e3, 2) if clean else None,
        "tokens_per_s_clean": round(B * T / clean_s, 1) if clean else None,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "optimizer": opt_kind,
        "compile": args.compile,
        "steps": args.steps,
        "warmup": args.warmup,
        "first_loss": round(losses[0], 4),
        "last_loss": round(losses[-1], 4),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.preset}: torch {result['torch_version']}, {result['threads']} threads, "
              f"B={B} T={T}, {n_params:,} params (excl. wpe), AdamW {opt_kind}"
              f"{', compiled' if args.compile else ''}")
        print(f"  step {result['step_ms']:.1f} ms = forward {result['forward_ms']:.1f} + "
              f"backward {result['backward_ms']:.1f} + optimizer {result['optimizer_ms']:.1f} (medians)")
        print(f"  {tokens_per_s:,.0f} tokens/s, MFU {100 * mfu:.1f}% of {args.peak_gflops:g} GFLOP/s, "
              f"peak RSS {peak_rss_mb:.0f} MB, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
        clean_txt = (f"median of those {1e3 * clean_s:.1f} ms ({B * T / clean_s:,.0f} tokens/s)"
                     if clean else "machine shared: the medians above are inflated")
        print(f"  CPU use {cpu_util:.2f}/thread; {len(clean)}/{len(total)} steps had the cores "
              f"(>= {CLEAN_UTIL}); {clean_txt}; fastest step {1e3 * min(total):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

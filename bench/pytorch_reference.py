#!/usr/bin/env python3
"""PyTorch reference GPT-2 and Llama for Hyperion: the speed yardstick and the fixture models.

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

The Llama presets (`llama-*`) select `Llama`, equally plain PyTorch, with Hugging Face's
LlamaForCausalLM names and nn.Linear (out, in) layouts (no biases, untied head):

    model.embed_tokens.weight                              (V, C)
    model.layers.{i}.input_layernorm.weight                (C,)       RMSNorm
    model.layers.{i}.self_attn.q_proj.weight               (nh*hd, C)
    model.layers.{i}.self_attn.k_proj.weight/.v_proj       (nkv*hd, C)  grouped-query
    model.layers.{i}.self_attn.o_proj.weight               (C, nh*hd)
    model.layers.{i}.post_attention_layernorm.weight       (C,)
    model.layers.{i}.mlp.gate_proj.weight/.up_proj.weight  (F, C)     SwiGLU
    model.layers.{i}.mlp.down_proj.weight                  (C, F)
    model.norm.weight                                      (C,)
    lm_head.weight                                         (V, C)

with rotary position embeddings in HF's `rotate_half` layout (the two halves of each
head, not interleaved pairs, rotate together) and query head h reading key/value head
h // (nh / nkv). `tests/fixtures/make_hf_fixtures.py` checks it against transformers'
LlamaForCausalLM in float64.

As a benchmark, one training step is: forward on random tokens (B, block), mean
cross-entropy, backward, clip_grad_norm_(1.0), AdamW (lr 1e-3, betas (0.9, 0.99),
weight decay 0.1 on 2-D weights except the embeddings), zero_grad(set_to_none=True).

    python bench/pytorch_reference.py --preset shakespeare-char --batch 8 --json

    python bench/pytorch_reference.py --preset llama-char-cpu --batch 8 --json

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


@dataclass(frozen=True)
class LlamaConfig:
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    n_embd: int
    ffn: int
    block_size: int
    vocab_size: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5


PRESETS = {
    # nanoGPT's shakespeare_char config (train_shakespeare_char.py), bias off.
    "shakespeare-char": GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256,
                                  vocab_size=65, bias=False),
    # A small GPT-2 with the full GPT-2 BPE vocabulary: the head dominates.
    "gpt2-mini": GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=128,
                           vocab_size=50257, bias=True),
    # Llama blocks (RMSNorm, RoPE, GQA, SwiGLU, untied head) at the GPT presets' sizes.
    "llama-char-cpu": LlamaConfig(n_layer=4, n_head=4, n_kv_head=2, head_dim=32, n_embd=128,
                                  ffn=384, block_size=64, vocab_size=65,
                                  rope_theta=10000.0, norm_eps=1e-5),
    "llama-mini": LlamaConfig(n_layer=4, n_head=4, n_kv_head=2, head_dim=64, n_embd=256,
                              ffn=768, block_size=128, vocab_size=50257,
                              rope_theta=10000.0, norm_eps=1e-5),
    # GPT-2 124M and 355M (Radford et al. 2019; Hugging Face gpt2 / gpt2-medium): the
    # GPU speed check (scripts/gpu-check.sh), the same shapes as Hyperion's presets.
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, bias=True),
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024, block_size=1024, vocab_size=50257, bias=True),
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


def _sdpa_has_gqa() -> bool:
    """F.scaled_dot_product_attention(..., enable_gqa=True) exists since torch 2.5."""
    q = torch.zeros(1, 2, 1, 1)
    kv = torch.zeros(1, 1, 1, 1)
    try:
        F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True)
        return True
    except (TypeError, RuntimeError):
        return False


SDPA_GQA = _sdpa_has_gqa()


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, over the last dim (Zhang & Sennrich 2019).
    Computed in the input's dtype (HF's LlamaRMSNorm upcasts to float32 first)."""

    def __init__(self, c: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.eps = eps

    def forward(self, x):
        if hasattr(F, "rms_norm"):  # torch >= 2.4
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(head_dim: int, n_pos: int, theta: float):
    """cos, sin (n_pos, head_dim) in float64: angle(p, j) = p * theta^(-2j/d) for
    j < d/2, repeated for the second half (HF's `cat((freqs, freqs))`)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    freqs = torch.arange(n_pos, dtype=torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    """(x1, x2) -> (-x2, x1) over the two halves of the last dim (HF's rotate_half)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig, use_sdpa: bool):
        super().__init__()
        assert cfg.n_head % cfg.n_kv_head == 0, "n_kv_head must divide n_head"
        assert cfg.head_dim % 2 == 0, "RoPE needs an even head_dim"
        self.nh, self.nkv, self.hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.use_sdpa = use_sdpa
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hd).transpose(1, 2)   # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)  # (B, nkv, T, hd)
        q = q * cos + rotate_half(q) * sin  # cos, sin: (T, hd), broadcast over B, heads
        k = k * cos + rotate_half(k) * sin
        rep = self.nh // self.nkv
        if self.use_sdpa and SDPA_GQA:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=rep > 1)
        else:
            # Query head h reads kv head h // rep (HF's repeat_kv, SDPA's enable_gqa).
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
            if self.use_sdpa:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                att = (q @ k.transpose(-2, -1)) / math.sqrt(self.hd)  # (B, nh, T, T)
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
                att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
                y = att @ v
        y = y.transpose(1, 2).reshape(B, T, self.nh * self.hd)
        return self.o_proj(y)


class SwiGLU(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.ffn, bias=False)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.ffn, bias=False)
        self.down_proj = nn.Linear(cfg.ffn, cfg.n_embd, bias=False)

    def forward(self, x):
        # down(silu(gate x) * up x) (Shazeer 2020); silu(z) = z * sigmoid(z).
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    def __init__(self, cfg: LlamaConfig, use_sdpa: bool):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.self_attn = LlamaAttention(cfg, use_sdpa)
        self.post_attention_layernorm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class Llama(nn.Module):
    """Llama (Touvron et al. 2023) with HF LlamaForCausalLM's parameter names."""

    def __init__(self, cfg: LlamaConfig, use_sdpa: bool = True):
        super().__init__()
        self.cfg = cfg
        self.model = nn.ModuleDict(dict(
            embed_tokens=Embedding(cfg.vocab_size, cfg.n_embd),
            layers=nn.ModuleList([LlamaBlock(cfg, use_sdpa) for _ in range(cfg.n_layer)]),
            norm=RMSNorm(cfg.n_embd, cfg.norm_eps),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        # float64 tables, not in the state dict; cast to the activations' dtype per call.
        cos, sin = rope_tables(cfg.head_dim, cfg.block_size, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, idx, targets=None):
        """idx, targets: (B, T) int64. Returns logits (B, T, V) and the mean loss."""
        B, T = idx.shape
        assert T <= self.cfg.block_size, f"sequence length {T} > block_size {self.cfg.block_size}"
        m = self.model
        x = m.embed_tokens.weight[idx]  # (B, T, C)
        cos = self.rope_cos[:T].to(x.dtype)
        sin = self.rope_sin[:T].to(x.dtype)
        for layer in m.layers:
            x = layer(x, cos, sin)
        logits = self.lm_head(m.norm(x))  # (B, T, V), untied
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1), targets.view(B * T))
        return logits, loss

    def init_weights(self, gen: torch.Generator, std: float = 0.02):
        """N(0, std) matrices and embedding, residual outputs (o_proj, down_proj) scaled
        by 1/sqrt(2L) as for GPT-2, unit RMSNorm weights."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    scaled = name.endswith("o_proj.weight") or name.endswith("down_proj.weight")
                    s = std / math.sqrt(2 * self.cfg.n_layer) if scaled else std
                    p.normal_(0.0, s, generator=gen)
                else:
                    p.fill_(1.0)


def embedding_names(cfg) -> set:
    """Parameters that are embedding tables (no weight decay; position table not in N)."""
    if isinstance(cfg, LlamaConfig):
        return {"model.embed_tokens.weight"}
    return {"transformer.wte.weight", "transformer.wpe.weight"}


def counted_params(model) -> int:
    """N for the FLOPs formula: GPT-2, every parameter but wpe (the tied wte is the head's
    matmul); Llama, every parameter but the embedding table (the untied head counts)."""
    skip = "model.embed_tokens.weight" if isinstance(model.cfg, LlamaConfig) else "transformer.wpe.weight"
    return sum(p.numel() for n, p in model.named_parameters() if n != skip)


def flops_per_token(cfg, n_params: int) -> int:
    """Training FLOPs per token: 6N + 12 L C T (Kaplan et al. 2020; PaLM, Chowdhery et
    al. 2022, app. B). N counts every parameter except the position embedding (wte is
    counted: it is the LM head's matmul); 12 L C T is the attention score/value work.
    For Llama, N is every parameter but the embedding table (the untied lm_head counts)
    and C in the attention term is the attention width nh * hd."""
    if isinstance(cfg, LlamaConfig):
        return 6 * n_params + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * cfg.block_size
    return 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def make_optimizer(model, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1):
    """AdamW; decay only 2-D weights that are not embeddings (nanoGPT's grouping; the
    untied Llama lm_head is a matrix and decays)."""
    decay, no_decay = [], []
    embeddings = embedding_names(model.cfg)
    for name, p in model.named_parameters():
        is_embedding = name in embeddings
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
    p.add_argument("--device", default="cpu", help="cpu, or cuda[:N] (the GPU speed check)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 master weights and optimizer)")
    p.add_argument("--max-batch", type=int, default=0,
                   help="cuda: the largest micro-batch up to this that fits (tried downwards); overrides --batch")
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
    if not (a.device == "cpu" or a.device == "cuda" or a.device.startswith("cuda:")):
        p.error(f"--device must be cpu, cuda or cuda:N, got {a.device!r}")
    if a.max_batch < 0 or (a.max_batch and a.device == "cpu"):
        p.error("--max-batch needs --device cuda and a positive size")
    return a


def fits(args, cfg, batch):
    """One forward and backward at `batch` on the GPU without running out of memory."""
    torch.cuda.empty_cache()
    try:
        is_llama = isinstance(cfg, LlamaConfig)
        m = (Llama(cfg, use_sdpa=True) if is_llama else GPT(cfg, use_sdpa=True)).to(args.device)
        opt, _ = make_optimizer(m)
        idx = torch.zeros((batch, cfg.block_size), dtype=torch.long, device=args.device)
        # Eager: a compiled step needs no more memory, and compiling per size is slow.
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16):
            _, loss = m(idx, idx)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        m = opt = loss = None
        torch.cuda.empty_cache()


def main(argv=None):
    args = parse_args(argv)
    cuda = args.device != "cpu"
    if cuda and not torch.cuda.is_available():
        sys.exit(f"error: --device {args.device}: torch sees no CUDA device")
    if not cuda:
        torch.set_num_threads(args.threads)
    cfg = PRESETS[args.preset]
    if args.max_batch:
        # The largest micro-batch that fits, up to --max-batch (issue 10's speed rule).
        sizes = [b for b in (32, 24, 16, 12, 8, 6, 4, 3, 2, 1) if b <= args.max_batch]
        args.batch = next((b for b in sizes if fits(args, cfg, b)), 0)
        if not args.batch:
            sys.exit("error: not even a micro-batch of 1 fits on the GPU")
    gen = torch.Generator().manual_seed(args.seed)
    is_llama = isinstance(cfg, LlamaConfig)
    model = Llama(cfg, use_sdpa=True) if is_llama else GPT(cfg, use_sdpa=True)
    model.init_weights(gen)
    model = model.to(args.device)
    n_params = counted_params(model)
    opt, opt_kind = make_optimizer(model)
    step_model = torch.compile(model) if args.compile else model
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    B, T = args.batch, cfg.block_size
    fwd, bwd, optim, total, cpu = [], [], [], [], []
    losses = []
    for step in range(args.warmup + args.steps):
        idx = torch.randint(0, cfg.vocab_size, (B, T), generator=gen).to(args.device)
        tgt = torch.randint(0, cfg.vocab_size, (B, T), generator=gen).to(args.device)
        sync()
        c0 = time.process_time()
        t0 = time.perf_counter()
        with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=args.bf16):
            _, loss = step_model(idx, tgt)
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
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
    peak_device_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
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
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "bf16": args.bf16,
        "peak_device_mb": round(peak_device_mb, 1) if cuda else None,
        "steps": args.steps,
        "warmup": args.warmup,
        "first_loss": round(losses[0], 4),
        "last_loss": round(losses[-1], 4),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.preset}: torch {result['torch_version']}, {result['threads']} threads, "
              f"B={B} T={T}, {n_params:,} params (excl. {'embed_tokens' if is_llama else 'wpe'}), "
              f"AdamW {opt_kind}"
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

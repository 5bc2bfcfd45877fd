#!/usr/bin/env python3
"""PyTorch timings of the same ops as `cargo run --release -p hyperion-kernels --example
kernel_bench`, at the shapes of the two presets of bench/pytorch_reference.py (batch 8),
so each Hyperion kernel can be compared with what PyTorch spends on it.

    python bench/kernels_torch.py [--reps N] [--threads N]
"""
import argparse
import time

import torch
import torch.nn.functional as F


def time_ms(fn, reps):
    """Best of `reps` runs after a warm-up (as kernel_bench: load only ever adds time)."""
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return min(ts)


def bench(name, layers, nh, c, t, v, b, reps):
    rows = b * t
    print(f"{name} (L{layers} NH{nh} C{c} T{t} V{v} B{b}), threads {torch.get_num_threads()}")
    for label, i, o in [("c_attn", c, 3 * c), ("attn.proj", c, c), ("c_fc", c, 4 * c), ("mlp.proj", 4 * c, c)]:
        x, w, dy = torch.randn(rows, i), torch.randn(i, o), torch.randn(rows, o)
        dx, dw = torch.zeros(rows, i), torch.zeros(i, o)
        flop = 2 * rows * i * o
        f = time_ms(lambda: x @ w, reps)
        bx = time_ms(lambda: dx.addmm_(dy, w.t()), reps)
        bw = time_ms(lambda: dw.addmm_(x.t(), dy), reps)
        g = lambda ms: flop / ms / 1e6
        print(f"  gemm {label:<10} fwd {f:7.2f} ms {g(f):6.1f} GF/s | dx {bx:7.2f} ms {g(bx):6.1f} GF/s | dw {bw:7.2f} ms {g(bw):6.1f} GF/s")
    x, wte, dl = torch.randn(rows, c), torch.randn(v, c), torch.randn(rows, v)
    flop = 2 * rows * c * v
    f = time_ms(lambda: x @ wte.t(), reps)
    bx = time_ms(lambda: dl @ wte, reps)
    bw = time_ms(lambda: dl.t() @ x, reps)
    g = lambda ms: flop / ms / 1e6
    print(f"  gemm lm_head    fwd {f:7.2f} ms {g(f):6.1f} GF/s | dx {bx:7.2f} ms {g(bx):6.1f} GF/s | dw {bw:7.2f} ms {g(bw):6.1f} GF/s")
    logits = torch.randn(rows, v, requires_grad=True)
    tgt = torch.randint(0, v, (rows,))
    def xent():
        logits.grad = None
        F.cross_entropy(logits, tgt).backward()
    print(f"  cross_entropy fwd+bwd        {time_ms(xent, reps):7.3f} ms")
    hs = c // nh
    q, k, vv = (torch.randn(b, nh, t, hs, requires_grad=True) for _ in range(3))
    dout = torch.randn(b, nh, t, hs)
    print(f"  sdpa forward                 {time_ms(lambda: F.scaled_dot_product_attention(q, k, vv, is_causal=True), reps):7.3f} ms")
    def sdpa_fb():
        F.scaled_dot_product_attention(q, k, vv, is_causal=True).backward(dout)
    print(f"  sdpa forward+backward        {time_ms(sdpa_fb, reps):7.3f} ms")
    h = torch.randn(rows, 4 * c, requires_grad=True)
    print(f"  gelu forward                 {time_ms(lambda: F.gelu(h, approximate='tanh'), reps):7.3f} ms")
    xl = torch.randn(rows, c, requires_grad=True)
    wl = torch.randn(c, requires_grad=True)
    print(f"  layernorm forward            {time_ms(lambda: F.layer_norm(xl, (c,), wl, None, 1e-5), reps):7.3f} ms")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    bench("shakespeare-char", 6, 6, 384, 256, 65, 8, a.reps)
    bench("gpt2-mini", 4, 4, 256, 128, 50257, 8, a.reps)


if __name__ == "__main__":
    main()

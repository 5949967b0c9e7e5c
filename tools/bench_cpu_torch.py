#!/usr/bin/env python3
"""PyTorch CPU baseline for tools/bench_cpu: the same shapes, the same threads, the same run.

Prints one JSON object per line: {"bench": ..., "impl": "torch", ...}. Uses Debian's python3-torch
(scripts/install_deps.sh --bench). Shapes must match tools/bench_cpu.cpp.
"""
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def median_ms(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_sgemm(sizes, iters):
    for m, n, k in sizes:
        a = torch.randn(m, k)
        b = torch.randn(k, n)
        ms = median_ms(lambda: torch.mm(a, b), 2, iters)
        print(json.dumps({"bench": "sgemm", "impl": "torch", "m": m, "n": n, "k": k, "ms": ms,
                          "gflops": 2.0 * m * n * k / (ms * 1e-3) / 1e9}), flush=True)


class Block(torch.nn.Module):
    """Pre-norm transformer block as xFormers' factory builds it: x + mha(ln1(x)); x + mlp(ln2(x));
    separate q/k/v projections (use_separate_proj_weight: true), causal attention."""

    def __init__(self, c, heads, hidden):
        super().__init__()
        self.heads = heads
        self.ln1 = torch.nn.LayerNorm(c)
        self.q_proj = torch.nn.Linear(c, c)
        self.k_proj = torch.nn.Linear(c, c)
        self.v_proj = torch.nn.Linear(c, c)
        self.proj = torch.nn.Linear(c, c)
        self.ln2 = torch.nn.LayerNorm(c)
        self.fc1 = torch.nn.Linear(c, hidden)
        self.fc2 = torch.nn.Linear(hidden, c)

    def forward(self, x):
        b, t, c = x.shape
        h, d = self.heads, c // self.heads
        n = self.ln1(x)
        q, k, v = self.q_proj(n), self.k_proj(n), self.v_proj(n)
        q, k, v = (z.view(b, t, h, d).transpose(1, 2) for z in (q, k, v))
        # torch 1.13 (Debian's) has no F.scaled_dot_product_attention: the explicit formulation.
        s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d))
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        p = s.masked_fill(mask, float("-inf")).softmax(dim=-1)
        y = (p @ v).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Stack(torch.nn.Module):
    """Token + learned position embeddings (xFormers' VocabEmbedding), blocks, final LayerNorm."""

    def __init__(self, layers, c, heads, vocab, seq):
        super().__init__()
        self.word = torch.nn.Embedding(vocab, c)
        self.pos = torch.nn.Embedding(seq, c)
        self.blocks = torch.nn.Sequential(*[Block(c, heads, 4 * c) for _ in range(layers)])
        self.norm = torch.nn.LayerNorm(c)

    def forward(self, tokens):
        x = self.word(tokens) + self.pos(torch.arange(tokens.shape[1]))
        return self.norm(self.blocks(x))


def bench_stack(layers, c, heads, batch, seq, iters):
    torch.manual_seed(0)
    model = Stack(layers, c, heads, 256, seq)
    tokens = torch.randint(0, 256, (batch, seq))
    w = torch.randn(batch, seq, c)

    def step():
        for p in model.parameters():
            p.grad = None
        (model(tokens) * w).sum().backward()

    ms = median_ms(step, 2, iters)
    print(json.dumps({"bench": "stack_fwd_bwd", "impl": "torch", "layers": layers, "dim": c, "heads": heads,
                      "batch": batch, "seq": seq, "ms": ms, "tokens_per_s": batch * seq / (ms * 1e-3)}), flush=True)


def main():
    threads = int(os.environ.get("XF_BENCH_THREADS", os.cpu_count()))
    torch.set_num_threads(threads)
    iters = int(os.environ.get("XF_BENCH_ITERS", "10"))
    print(json.dumps({"bench": "info", "impl": "torch", "version": torch.__version__, "threads": threads,
                      "blas": "mkl" if torch.backends.mkl.is_available() else "other"}), flush=True)
    bench_sgemm([(1024, 1024, 1024), (2048, 2048, 2048), (2048, 768, 256), (2048, 256, 1024)], iters)
    bench_stack(4, 256, 8, 16, 128, iters)


if __name__ == "__main__":
    sys.exit(main())

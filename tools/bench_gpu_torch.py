"""The PyTorch baseline of tools/bench_gpu.cpp, run in the same job on the same GPU (GPU figures drift
between machines and hours; a claim is a ratio measured in one run). The models mirror our configs:
  gpt2:    configs/gpt2-124m.yaml: 12 x 768, 12 heads, vocab 50304, T=1024, B=16, pre-norm, tied head,
           bf16 autocast, fused AdamW; eager and torch.compile; tokens/s, MFU, peak memory.
  encoder: configs/minilm-encoder.yaml: 6 x 384, 12 heads, FF 1536, post-norm, T=128, B=256, bf16
           inference of the logits; eager and torch.compile; sequences/s.
Same model and FLOP conventions as ../shared/anchors/torch_baseline.py (the anchors' script).
Usage: python3 tools/bench_gpu_torch.py --out bench_torch.json [--sections gpt2 encoder]"""
import argparse
import json
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import triton.testing as tt

torch.backends.cuda.matmul.allow_tf32 = True
dev = "cuda"


class Block(nn.Module):
    def __init__(s, d, h, ff, causal, pre=True):
        super().__init__()
        s.ln1, s.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        s.qkv, s.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        s.fc1, s.fc2 = nn.Linear(d, ff), nn.Linear(ff, d)
        s.h, s.causal, s.pre = h, causal, pre

    def attn(s, x):
        B, T, C = x.shape
        q, k, v = s.qkv(x).view(B, T, 3, s.h, C // s.h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=s.causal)
        return s.proj(y.transpose(1, 2).reshape(B, T, C))

    def mlp(s, x):
        return s.fc2(F.gelu(s.fc1(x), approximate="tanh"))

    def forward(s, x):
        if s.pre:
            x = x + s.attn(s.ln1(x))
            return x + s.mlp(s.ln2(x))
        x = s.ln1(x + s.attn(x))
        return s.ln2(x + s.mlp(x))


class LM(nn.Module):
    def __init__(s, vocab, ctx, d, h, L, ff, causal=True, pre=True):
        super().__init__()
        s.tok, s.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        s.blocks = nn.ModuleList(Block(d, h, ff, causal, pre) for _ in range(L))
        s.lnf = nn.LayerNorm(d)
        s.head = nn.Linear(d, vocab, bias=False)
        s.head.weight = s.tok.weight

    def forward(s, idx, tgt=None):
        x = s.tok(idx) + s.pos(torch.arange(idx.shape[1], device=idx.device))
        for b in s.blocks:
            x = b(x)
        logits = s.head(s.lnf(x))
        if tgt is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), tgt.view(-1))


def print_kernel_profile(fn, what, top=14, grad=False):
    """XF_TORCH_PROFILE=1: the GPU kernels of a few calls of fn, by total time (what our per-kernel profile
    (xfrun_bench_gpu --profile 1) is compared with). grad: fn runs a training step (autograd on)."""
    from torch.profiler import ProfilerActivity, profile
    with torch.set_grad_enabled(grad), profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
    print(f"torch kernel profile, {what} (3 calls):")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=top, max_name_column_width=90))


def gpt2(res, steps):
    vocab, T, B, L, D = 50304, 1024, 16, 12, 768
    out = {}
    for comp in (False, True):
        torch.manual_seed(0)
        m = LM(vocab, T, D, 12, L, 4 * D).to(dev)
        nparam = sum(p.numel() for p in m.parameters())
        opt = torch.optim.AdamW(m.parameters(), lr=3e-4, fused=True)
        f = torch.compile(m) if comp else m
        idx = torch.randint(0, vocab, (B, T), device=dev)
        tgt = torch.randint(0, vocab, (B, T), device=dev)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = f(idx, tgt)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / steps
        tps = B * T / dt
        flops_per_tok = 6 * nparam + 12 * L * D * T  # 6N + attention (PaLM convention, causal not halved)
        key = "compile" if comp else "eager"
        out[key] = dict(tok_per_s=tps, step_ms=dt * 1e3, mfu_vs_990=tps * flops_per_tok / 990e12,
                        peak_bytes=torch.cuda.max_memory_allocated())
        out["params"] = nparam
        print(f"torch gpt2-124M train B={B} T={T} {key}: {tps:,.0f} tok/s, {dt*1e3:.1f} ms/step, "
              f"MFU(990) {out[key]['mfu_vs_990']:.2%}, peak {out[key]['peak_bytes']/2**30:.2f} GiB", flush=True)
        if os.environ.get("XF_TORCH_PROFILE") == "1":
            print_kernel_profile(step, f"gpt2 train step {key}", top=40, grad=True)
        del m, opt, f
        torch.cuda.empty_cache()
    res["gpt2_124M_train"] = out


def encoder(res):
    vocab, T, B = 30522, 128, 256
    out = {}
    for comp in (False, True):
        torch.manual_seed(0)
        m = LM(vocab, 512, 384, 12, 6, 1536, causal=False, pre=False).to(dev).eval().to(torch.bfloat16)
        f = torch.compile(m) if comp else m
        idx = torch.randint(0, vocab, (B, T), device=dev)
        with torch.no_grad():
            f(idx)
            ms = tt.do_bench(lambda: f(idx), warmup=25, rep=100, return_mode="median")
        key = "compile" if comp else "eager"
        out[key] = dict(seq_per_s=B / ms * 1e3, ms=ms)
        print(f"torch minilm-shaped encoder fwd B={B} T={T} {key}: {B/ms*1e3:,.0f} seq/s ({ms:.2f} ms)", flush=True)
        if os.environ.get("XF_TORCH_PROFILE") == "1":
            print_kernel_profile(lambda: f(idx), f"encoder {key}")
        del m, f
        torch.cuda.empty_cache()
    # The logits GEMM alone (32768 x 30522 x 384, bf16, rows 4 bytes off 16-byte alignment): the largest
    # single kernel of the encoder, timed as eager F.linear picks it.
    x = torch.randn(B * T, 384, device=dev, dtype=torch.bfloat16)
    w = torch.randn(vocab, 384, device=dev, dtype=torch.bfloat16)
    with torch.no_grad():
        ms = tt.do_bench(lambda: F.linear(x, w), warmup=25, rep=100, return_mode="median")
    out["head_gemm_ms"] = ms
    print(f"torch encoder logits GEMM {B*T}x{vocab}x384 bf16: {ms:.3f} ms "
          f"({2 * B * T * vocab * 384 / ms / 1e9:.0f} TFLOP/s)", flush=True)
    # torch.compile's layout: W^T copied once into a (K, N) buffer with rows padded to 16 bytes.
    wt = torch.zeros(384, (vocab + 7) // 8 * 8, device=dev, dtype=torch.bfloat16)
    wt[:, :vocab] = w.t()
    with torch.no_grad():
        ms = tt.do_bench(lambda: torch.mm(x, wt[:, :vocab]), warmup=25, rep=100, return_mode="median")
    out["head_gemm_wt_padded_ms"] = ms
    print(f"torch encoder logits GEMM x @ Wt(padded) bf16: {ms:.3f} ms "
          f"({2 * B * T * vocab * 384 / ms / 1e9:.0f} TFLOP/s)", flush=True)
    res["encoder_infer"] = out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--sections", nargs="*", default=["gpt2", "encoder"])
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    if "gpt2" in a.sections:
        gpt2(res, a.steps)
    if "encoder" in a.sections:
        encoder(res)
    with open(a.out, "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()

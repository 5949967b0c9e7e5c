"""The PyTorch baseline of tools/bench_attention.cpp, run in the same job on the same GPU (tools/gpu_check.sh
attn): torch SDPA on the FlashAttention grid (16k tokens per batch, B = 16384 / S; hidden 2048, H = 2048 / D;
D = 64, 128; S = 512 ... 16k; causal and not; bf16, q/k/v (B, H, S, D) from randn) with each backend forced
through torch.nn.attention.sdpa_kernel: FLASH_ATTENTION, EFFICIENT_ATTENTION, CUDNN_ATTENTION. Forward and
forward+backward TFLOP/s (forward 4*B*H*S^2*D, halved when causal; backward 2.5x forward), medians by
triton.testing.do_bench, as ../shared/anchors/torch_baseline.py measures them (with shorter runs: the whole grid
must fit the attn step).
--hidden changes the hidden size as tools/bench_attention.cpp's does (768: GPT-2 124M's attention at D = 64, H = 12), so
that XF_ATTN_ARGS="--D 64 --hidden 768 --S 1024" runs the same shape on both sides.
Usage: python3 tools/bench_attention_torch.py --out attn_torch.json [--D 64,128] [--S 512,1024,...] [--hidden 2048]
       [--rep MS]"""
import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
import triton.testing as tt

TOKENS = 16384
BACKENDS = {"torch_flash": SDPBackend.FLASH_ATTENTION, "torch_efficient": SDPBackend.EFFICIENT_ATTENTION,
            "torch_cudnn": SDPBackend.CUDNN_ATTENTION}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--D", default="64,128")
    ap.add_argument("--S", default="512,1024,2048,4096,8192,16384")
    ap.add_argument("--hidden", type=int, default=2048, help="H = hidden / D")
    ap.add_argument("--warmup", type=float, default=10, help="do_bench warm-up, ms")
    ap.add_argument("--rep", type=float, default=40, help="do_bench repetition time, ms")
    args = ap.parse_args()
    Ds = [int(x) for x in args.D.split(",")]
    Ss = [int(x) for x in args.S.split(",")]
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "cudnn": torch.backends.cudnn.version(), "attention": []}
    rows = res["attention"]
    bench = lambda fn: tt.do_bench(fn, warmup=args.warmup, rep=args.rep, return_mode="median")
    print(f"attention bf16, {TOKENS} tokens, hidden {args.hidden} (TFLOP/s fwd | fwd+bwd)", flush=True)
    for D in Ds:
        H = args.hidden // D
        for S in Ss:
            B = TOKENS // S
            for causal in (False, True):
                q, k, v = [torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                           for _ in range(3)]
                do = torch.randn_like(q)
                flops = 4 * B * H * S * S * D / (2 if causal else 1)
                line = f"D={D} S={S}{' causal' if causal else '       '}"
                for name, be in BACKENDS.items():
                    r = dict(backend=name, D=D, S=S, B=B, H=H, causal=causal)
                    try:
                        with sdpa_kernel([be]):
                            fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)

                            def fb():
                                F.scaled_dot_product_attention(q, k, v, is_causal=causal).backward(do)

                            fb()
                            ms_f, ms_fb = bench(fwd), bench(fb)
                        r.update(fwd_ms=ms_f, fwdbwd_ms=ms_fb, fwd_TFLOPs=flops / ms_f / 1e9,
                                 fwdbwd_TFLOPs=3.5 * flops / ms_fb / 1e9)
                        line += f" | {name[6:]} {r['fwd_TFLOPs']:.0f} {r['fwdbwd_TFLOPs']:.0f}"
                    except Exception as e:  # a backend may refuse a shape
                        r["error"] = str(e)[:200]
                        line += f" | {name[6:]} n/a"
                    rows.append(r)
                    q.grad = k.grad = v.grad = None
                print(line, flush=True)
                del q, k, v, do
                torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

"""One markdown table of tools/bench_attention.cpp against tools/bench_attention_torch.py from the same run:
per grid point, forward and forward+backward TFLOP/s of the best of our backends against torch's cuDNN backend,
and of our native kernels (the better of the deterministic and the atomic backward, named when atomic: torch's flash
backend, FA2, is atomic) against torch's FlashAttention backend, as ratios; and what XF_ATTENTION_BACKEND=auto
picks for the forward and the backward.
Usage: python3 tools/bench_attention_report.py attn_xfrun.json attn_torch.json"""
import json
import sys

OURS = ("native", "native_atomic", "cudnn", "cudnn_atomic")
NATIVE = ("native", "native_atomic")


def index(rows):
    return {(r["D"], r["S"], r["causal"], r["backend"]): r for r in rows}


def main():
    ours = json.load(open(sys.argv[1]))
    torch = json.load(open(sys.argv[2]))
    o, t = index(ours.get("attention", [])), index(torch.get("attention", []))
    points = sorted({(r["D"], r["S"], r["causal"]) for r in ours.get("attention", [])})

    def val(table, key, what):
        r = table.get(key)
        return r.get(what) if r and "error" not in r else None

    def fmt(x):
        return f"{x:.0f}" if x is not None else "n/a"

    def ratio(a, b):
        return f"{a / b:.2f}x" if a is not None and b else "n/a"

    print(f"ours: {ours.get('device', '?')}; cuDNN path: {ours.get('cudnn', '?')}")
    hidden = sorted({r["H"] * r["D"] for r in ours.get("attention", []) if "H" in r})
    print(f"torch {torch.get('torch', '?')}, cuDNN {torch.get('cudnn', '?')}; TFLOP/s, bf16, 16k tokens, "
          f"hidden {', '.join(str(h) for h in hidden) or '?'}")
    print()
    head = ["D", "S", "causal"]
    for what in ("fwd", "fwd+bwd"):
        head += [f"best ours {what}", f"torch cudnn {what}", "ratio", f"native {what}", f"torch flash {what}", "ratio"]
    head += ["auto picks fwd/bwd"]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for D, S, causal in points:
        cells = [str(D), str(S), "yes" if causal else "no"]
        def best_of(names, what):
            best, best_name = None, ""
            for b in names:
                x = val(o, (D, S, causal, b), what)
                if x is not None and (best is None or x > best):
                    best, best_name = x, b
            return best, best_name

        for what in ("fwd_TFLOPs", "fwdbwd_TFLOPs"):
            best, best_name = best_of(OURS, what)
            tc = val(t, (D, S, causal, "torch_cudnn"), what)
            # The forward is the same kernel in both native rows: the deterministic row's figure.
            nat, nat_name = best_of(NATIVE if what == "fwdbwd_TFLOPs" else ("native",), what)
            tf = val(t, (D, S, causal, "torch_flash"), what)
            nat_cell = fmt(nat) + (" (atomic)" if nat_name == "native_atomic" else "")
            cells += [f"{fmt(best)} ({best_name})" if best is not None else "n/a", fmt(tc), ratio(best, tc),
                      nat_cell, fmt(tf), ratio(nat, tf)]
        a = o.get((D, S, causal, "auto"), {})
        cells.append(f"{a.get('auto_fwd', '?')}/{a.get('auto_bwd', '?')}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

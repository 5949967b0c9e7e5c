"""Ratio table of tools/bench_gpu.cpp against tools/bench_gpu_torch.py from the same run (markdown).
Usage: python3 tools/bench_gpu_report.py bench_xfrun.json bench_torch.json"""
import json
import sys

ours = json.load(open(sys.argv[1]))
torch = json.load(open(sys.argv[2]))
rows = ["| what | xfrun | torch eager | torch.compile | vs eager | vs compile |", "| --- | --- | --- | --- | --- | --- |"]
g, tg = ours.get("gpt2_124M_train"), torch.get("gpt2_124M_train", {})
if g and tg:
    e, c = tg.get("eager", {}), tg.get("compile", {})
    rows.append(f"| GPT-2 124M train tok/s, torch's step (no clip) | {g['tok_per_s']:,.0f} | {e.get('tok_per_s', 0):,.0f} | {c.get('tok_per_s', 0):,.0f} "
                f"| {g['tok_per_s'] / e.get('tok_per_s', 1):.2f}x | {g['tok_per_s'] / c.get('tok_per_s', 1):.2f}x |")
    rows.append(f"| GPT-2 124M MFU (990 TFLOP/s) | {g['mfu_vs_990']:.1%} | {e.get('mfu_vs_990', 0):.1%} | {c.get('mfu_vs_990', 0):.1%} | | |")
    gc = ours.get("gpt2_124M_train_config")
    if gc:  # the config's step (clipping, so a gradient norm) against the same torch step, which clips nothing
        rows.append(f"| GPT-2 124M train tok/s, config's step (clip {gc.get('grad_clip', 0):g}) | {gc['tok_per_s']:,.0f} | "
                    f"{e.get('tok_per_s', 0):,.0f} | {c.get('tok_per_s', 0):,.0f} | {gc['tok_per_s'] / e.get('tok_per_s', 1):.2f}x "
                    f"| {gc['tok_per_s'] / c.get('tok_per_s', 1):.2f}x |")
    gib = 2 ** 30
    rows.append(f"| GPT-2 124M peak memory GiB | {g['peak_bytes'] / gib:.2f} | {e.get('peak_bytes', 0) / gib:.2f} | "
                f"{c.get('peak_bytes', 0) / gib:.2f} | {g['peak_bytes'] / max(e.get('peak_bytes', 1), 1):.2f}x | "
                f"{g['peak_bytes'] / max(c.get('peak_bytes', 1), 1):.2f}x |")
n, tn = ours.get("encoder_infer"), torch.get("encoder_infer", {})
if n and tn:
    e, c = tn.get("eager", {}), tn.get("compile", {})
    rows.append(f"| MiniLM encoder inference seq/s | {n['seq_per_s']:,.0f} | {e.get('seq_per_s', 0):,.0f} | {c.get('seq_per_s', 0):,.0f} "
                f"| {n['seq_per_s'] / e.get('seq_per_s', 1):.2f}x | {n['seq_per_s'] / c.get('seq_per_s', 1):.2f}x |")
print("\n".join(rows))

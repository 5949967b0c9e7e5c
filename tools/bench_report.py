#!/usr/bin/env python3
"""Joins benchmark JSONL files (ours and the baselines') into a markdown table with ratios."""
import datetime
import json
import platform
import sys


def load(paths):
    rows = []
    for p in paths:
        with open(p) as f:
            rows += [json.loads(line) for line in f if line.strip().startswith("{")]
    return rows


def main(paths):
    rows = load(paths)
    info = {r["impl"]: r for r in rows if r["bench"] == "info"}
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"\n{datetime.date.today()} | {cpu} | threads {info.get('xfrun', {}).get('threads')} | "
          f"torch {info.get('torch', {}).get('version')}\n")
    print("| benchmark | xfrun | OpenBLAS direct | PyTorch CPU | xfrun / OpenBLAS | xfrun / PyTorch |")
    print("| --- | --- | --- | --- | --- | --- |")
    sg = [r for r in rows if r["bench"] == "sgemm"]
    for key in sorted({(r["m"], r["n"], r["k"]) for r in sg}):
        by = {r["impl"]: r for r in sg if (r["m"], r["n"], r["k"]) == key}
        ours, blas, torch = (by.get(i, {}).get("gflops") for i in ("xfrun", "openblas", "torch"))
        fmt = lambda v: f"{v:.1f} GFLOP/s" if v else "-"
        ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "-"
        print(f"| sgemm {key[0]}x{key[1]}x{key[2]} | {fmt(ours)} | {fmt(blas)} | {fmt(torch)} | "
              f"{ratio(ours, blas)} | {ratio(ours, torch)} |")
    st = {r["impl"]: r for r in rows if r["bench"] == "stack_fwd_bwd"}
    if st:
        ours, torch = st.get("xfrun", {}).get("ms"), st.get("torch", {}).get("ms")
        print(f"| 4x256 stack fwd+bwd, B16 T128 | {ours:.1f} ms | - | "
              f"{torch:.1f} ms | - | {torch / ours:.2f}x speed |" if ours and torch else "| stack | incomplete |")


if __name__ == "__main__":
    main(sys.argv[1:])

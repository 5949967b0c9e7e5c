"""An interleaved A/B of our native attention kernels: tools/gpu_check.sh's ab step runs xfrun_bench_attention
--backends native under two environments, A B A B (so the GPU's drift over the job falls on both alike), and this
prints, per grid point, the mean forward and forward+backward TFLOP/s of each and B / A, with the spread of each
side's repeats (max / min - 1) so that a ratio inside the noise reads as such.
Usage: python3 tools/bench_attention_ab.py "A's label" "B's label" a1.json b1.json [a2.json b2.json ...]"""
import json
import sys


def load(path):
    rows = json.load(open(path)).get("attention", [])
    return {(r["D"], r["S"], r["causal"]): r for r in rows if r.get("backend") == "native" and "error" not in r}


def main():
    if len(sys.argv) < 5 or (len(sys.argv) - 3) % 2:
        sys.exit(__doc__)
    label_a, label_b, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    runs_a, runs_b = [load(f) for f in files[0::2]], [load(f) for f in files[1::2]]
    points = sorted(set.intersection(*(set(r) for r in runs_a + runs_b)))
    print(f"A = {label_a}; B = {label_b}; native TFLOP/s, mean of {len(runs_a)} repeats each (spread: max/min - 1)")
    print()
    head = ["D", "S", "causal"]
    for what in ("fwd", "fwd+bwd"):
        head += [f"A {what}", f"B {what}", "B / A", "spread A, B"]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for p in points:
        cells = [str(p[0]), str(p[1]), "yes" if p[2] else "no"]
        for key in ("fwd_TFLOPs", "fwdbwd_TFLOPs"):
            va, vb = [r[p][key] for r in runs_a], [r[p][key] for r in runs_b]
            ma, mb = sum(va) / len(va), sum(vb) / len(vb)
            cells += [f"{ma:.0f}", f"{mb:.0f}", f"{mb / ma:.2f}x",
                      f"{max(va) / min(va) - 1:.1%}, {max(vb) / min(vb) - 1:.1%}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

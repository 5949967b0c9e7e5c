#!/usr/bin/env python3
"""Where a kernel's warps stall, from Nsight Compute's source page (`ncu --import R --page source --print-source sass`,
what tools/gpu_check.sh's ncu step writes as ncu_<backend>_<D>_<S>.source.log).

  tools/ncu_source_summary.py SOURCE.log [--top N]

prints the stall reasons over all sampled instructions (share of the samples) and the N SASS lines with the most
samples, each with its two largest reasons. The page is a fixed-width table: the dashed line above its header gives
the columns, and a header spans four lines.
"""
import argparse
import collections
import re


def read_table(path):
    lines = open(path, errors="replace").read().splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("Address"))
    cols = [(m.start(), m.end()) for m in re.finditer(r"-+", lines[head - 1])]
    names = [" ".join(lines[j][a:b].strip() for j in range(head, head + 4)).replace(" ", "") for a, b in cols]
    rows = []
    for line in lines[head + 4:]:
        if line.strip() and not line.startswith("---"):
            rows.append([line[a:b + 1].strip() for a, b in cols])
    return names, rows


def number(text):
    try:
        return float(text)
    except ValueError:
        return 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    names, rows = read_table(args.source)
    samples = next(i for i, n in enumerate(names) if n.startswith("WarpStallSampling(All"))
    # The issued and the not-issued samples of a reason are separate columns: counted together.
    stalls = [i for i, n in enumerate(names) if n.startswith("stall_")]
    reason = {i: names[i].split("(")[0] for i in stalls}
    totals = collections.Counter()
    for r in rows:
        for i in stalls:
            totals[reason[i]] += number(r[i])
    all_stalls = sum(totals.values()) or 1.0
    print("stall reasons (share of the stall samples):")
    for name, v in totals.most_common(10):
        print(f"  {name:24s} {100 * v / all_stalls:5.1f}%")
    all_samples = sum(number(r[samples]) for r in rows) or 1.0
    print(f"top {args.top} lines (share of {all_samples:.0f} samples):")
    for r in sorted(rows, key=lambda r: -number(r[samples]))[:args.top]:
        per = collections.Counter()
        for i in stalls:
            per[reason[i]] += number(r[i])
        top2 = ", ".join(f"{k} {v:.0f}" for k, v in per.most_common(2))
        print(f"  {100 * number(r[samples]) / all_samples:5.2f}%  {r[1][:64]:64s}  {top2}")


if __name__ == "__main__":
    main()

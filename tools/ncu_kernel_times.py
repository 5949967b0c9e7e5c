#!/usr/bin/env python3
"""Kernel durations from Nsight Compute's CSV, grouped by kernel name, the largest total first.

    ncu --clock-control none --csv --metrics gpu__time_duration.sum [-k regex:...] [-c N] PROGRAM ... > k.csv
    tools/ncu_kernel_times.py k.csv [--top 40] [--per N]

Each line: the kernel's calls, its median and total microseconds, and its name (cut to 100 characters). --per N
divides calls and totals by N (e.g. the training steps the profiled launches cover). ncu replays each kernel alone
with the caches flushed, so these are cold-cache, one-at-a-time times: where a kernel stands against its bytes or
FLOPs, not what it costs inside a captured step (xfrun_bench_gpu --profile graph).
"""
import argparse
import collections
import csv
import statistics
import sys

UNIT_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--per", type=float, default=1.0)
    a = ap.parse_args()
    rows = [r for r in csv.reader(open(a.csv, newline="")) if len(r) > 10]
    if not rows:
        sys.exit("no ncu rows in " + a.csv)
    head = rows[0]
    name_i, value_i, unit_i = head.index("Kernel Name"), head.index("Metric Value"), head.index("Metric Unit")
    times = collections.defaultdict(list)
    for r in rows[1:]:
        if r[unit_i] not in UNIT_US:
            continue
        times[r[name_i]].append(float(r[value_i].replace(",", "")) * UNIT_US[r[unit_i]])
    total = sum(sum(v) for v in times.values()) / a.per
    print(f"ncu kernels: {sum(len(v) for v in times.values())} launches, {total / 1e3:.2f} ms (per {a.per:g})")
    for name, v in sorted(times.items(), key=lambda kv: -sum(kv[1]))[: a.top]:
        print(f"ncu {len(v) / a.per:7.1f} x {statistics.median(v):8.1f} us = {sum(v) / a.per / 1e3:7.3f} ms  {name[:100]}")


if __name__ == "__main__":
    main()

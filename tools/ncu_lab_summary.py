#!/usr/bin/env python3
"""One row a kernel launch from Nsight Compute's details page with the SpeedOfLight and MemoryWorkloadAnalysis
sections (what tools/gpu_check.sh's labncu step writes as labncu_<lab>.log): the kernel (its name cut at the
argument list), duration, SM, DRAM and L2 throughput (% of peak), memory throughput (bytes/s) and the L2 hit rate,
as a markdown table.

  tools/ncu_lab_summary.py LABNCU.log

A launch starts at a line indented by two spaces (`  name(args) (grid)x(block), Context ...`); its metrics follow
as `    Metric Name   unit   value` lines. A metric a section repeats (Memory Throughput: % in SpeedOfLight, bytes/s
in MemoryWorkloadAnalysis) is told apart by its unit.
"""
import re
import sys

# (column, metric name, unit pattern): the unit tells the two "Memory Throughput" lines apart.
COLUMNS = [
    ("us", "Duration", r"^(us|ms|ns)$"),
    ("SM %", "Compute (SM) Throughput", r"^%$"),
    ("DRAM %", "DRAM Throughput", r"^%$"),
    ("L2 %", "L2 Cache Throughput", r"^%$"),
    ("memory", "Memory Throughput", r"byte/s$"),
    ("L2 hit %", "L2 Hit Rate", r"^%$"),
]
METRIC = re.compile(r"^    (\S.*?\S)\s{2,}(\S+)\s+([-0-9.,]+)\s*$")
TO_US = {"ns": 1e-3, "us": 1.0, "ms": 1e3}


def kernel_name(line):
    """`  void <unnamed>::gemm_coop<0, 256>(<unnamed>::CoopArgs) (132, 1, 1)x(...), Context ...` -> gemm_coop<0, 256>."""
    name = line.strip().split(", Context")[0]
    name = re.sub(r"^void\s+", "", name)
    name = re.sub(r"<unnamed>::|\(anonymous namespace\)::", "", name)
    depth = 0
    for i, ch in enumerate(name):  # cut at the first "(" outside template brackets: the argument list
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            return name[:i].strip()
    return name


def parse(lines):
    launches = []
    for line in lines:
        if line.startswith("  ") and not line.startswith("   ") and ", Context" in line:
            launches.append({"kernel": kernel_name(line)})
            continue
        m = METRIC.match(line)
        if not m or not launches:
            continue
        metric, unit, value = m.group(1), m.group(2), float(m.group(3).replace(",", ""))
        for col, name, unit_pattern in COLUMNS:
            if metric == name and re.search(unit_pattern, unit) and col not in launches[-1]:
                if col == "us":
                    value *= TO_US[unit]
                elif col == "memory":
                    value = f"{value:g} {unit}"
                launches[-1][col] = value
    return launches


def table(launches):
    out = ["| kernel | " + " | ".join(c for c, _, _ in COLUMNS) + " |", "| --- |" + " --- |" * len(COLUMNS)]
    for row in launches:
        cells = []
        for col, _, _ in COLUMNS:
            v = row.get(col, "")
            cells.append(f"{v:.1f}" if isinstance(v, float) else str(v))
        out.append(f"| {row['kernel']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    launches = parse(open(sys.argv[1], errors="replace").read().splitlines())
    if not launches:
        sys.exit(f"{sys.argv[1]}: no kernel launches found")
    print(table(launches))


if __name__ == "__main__":
    main()

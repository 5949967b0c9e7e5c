#!/usr/bin/env bash
# Runs the CPU benchmark and the PyTorch CPU baseline in the same run and prints a markdown table of
# ratios. Usage: tools/bench_cpu.sh [BUILD_DIR]   (installs python3-torch via scripts/install_deps.sh --bench)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
scripts/install_deps.sh --bench
[[ -x "$BUILD_DIR/xfrun_bench_cpu" ]] || { cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release && cmake --build "$BUILD_DIR" -j"$(nproc)" --target xfrun_bench_cpu; }
out=$(mktemp -d)
"$BUILD_DIR/xfrun_bench_cpu" | tee "$out/xfrun.jsonl"
/usr/bin/python3 tools/bench_cpu_torch.py | tee "$out/torch.jsonl"
/usr/bin/python3 tools/bench_report.py "$out/xfrun.jsonl" "$out/torch.jsonl"

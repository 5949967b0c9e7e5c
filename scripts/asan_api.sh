#!/usr/bin/env bash
# 1000 load/forward/generate/destroy cycles through the public API (C++ and C) under AddressSanitizer and
# LeakSanitizer. Builds the library and tools/api_cycles.cpp with -fsanitize=address into $ASAN_BUILD_DIR
# (default build-asan), trains the install test's tiny model for 2 steps, and runs the cycles.
#   scripts/asan_api.sh [CYCLES]
set -euo pipefail
cd "$(dirname "$0")/.."
B=${ASAN_BUILD_DIR:-build-asan}
GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S . -B "$B" "${GEN[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DXF_BUILD_TESTS=OFF \
  "-DCMAKE_CXX_FLAGS=-fsanitize=address -fno-omit-frame-pointer" "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address" >/dev/null
cmake --build "$B" -j"$(nproc)" --target xfrun_api_cycles xfrun_cli
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ASAN_OPTIONS=detect_leaks=0 "$B/xfrun" train --config tests/install/consumer/tiny.yaml --out "$WORK/run" >/dev/null 2>&1
ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 "$B/xfrun_api_cycles" tests/install/consumer/tiny.yaml \
  "$WORK/run/checkpoints/step_2" "${1:-1000}"

#!/usr/bin/env bash
# Builds xfrun and trains the embedded default (a character-level GPT on Shakespeare, ~2 minutes on 2
# CPU cores), then prints what it learned: the validation loss before and after, and a sample.
# Extra arguments go to `xfrun train` (e.g. --set train.steps=100).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
BUILD_DIR=${BUILD_DIR:-build}
GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S . -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release ${XF_CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)" --target xfrun_cli
"$BUILD_DIR"/xfrun train "$@"

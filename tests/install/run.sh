#!/usr/bin/env bash
# Installs a built xfrun tree into a temporary prefix, then builds and runs a consumer against it the two
# ways a user would: CMake (find_package(xfrun CONFIG REQUIRED), xfrun::xfrun) and pkg-config (xfrun.pc).
# The consumer loads a tiny model trained for 2 steps by the built CLI.
#   tests/install/run.sh BUILD_DIR WORK_DIR
set -euo pipefail
BUILD=$(cd "$1" && pwd)
WORK=$(mkdir -p "$2" && cd "$2" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)

cmake --install "$BUILD" --prefix "$WORK/prefix" >/dev/null
test -f "$WORK/prefix/include/xfrun/xfrun.h"
test -f "$WORK/prefix/include/xfrun/xfrun_c.h"
ls "$WORK"/prefix/lib*/libxfrun.a >/dev/null
ls "$WORK"/prefix/lib*/cmake/xfrun/xfrunConfigVersion.cmake >/dev/null

# A model to load: the tiny config trained for 2 steps.
"$BUILD/xfrun" train --config "$HERE/consumer/tiny.yaml" --out "$WORK/run" >/dev/null 2>&1
CKPT="$WORK/run/checkpoints/step_2"

# CMake consumer (C++ API and the C ABI compiled as C).
cmake -S "$HERE/consumer" -B "$WORK/build" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$WORK/prefix" >/dev/null
cmake --build "$WORK/build" >/dev/null
"$WORK/build/consumer" "$HERE/consumer/tiny.yaml" "$CKPT"
"$WORK/build/consumer_c" "$HERE/consumer/tiny.yaml" "$CKPT"

# pkg-config consumer.
export PKG_CONFIG_PATH=$(ls -d "$WORK"/prefix/lib*/pkgconfig | head -1)
FLAGS=$(pkg-config --cflags --libs --static xfrun)
c++ -std=c++17 -O1 "$HERE/consumer/consumer.cpp" -o "$WORK/consumer_pc" $FLAGS
"$WORK/consumer_pc" "$HERE/consumer/tiny.yaml" "$CKPT"
echo "consumer: ok"

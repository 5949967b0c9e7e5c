#!/usr/bin/env bash
# Installs what building and testing xfrun needs, from Debian packages. Idempotent.
# Usage: scripts/install_deps.sh [--bench]   (--bench adds python3-torch for the CPU baseline)
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(cmake g++ make libyaml-cpp-dev nlohmann-json3-dev libspdlog-dev libfmt-dev libcli11-dev doctest-dev
      libopenblas-dev ninja-build libcpp-httplib-dev pkg-config
      curl ca-certificates unzip)  # the last three: scripts/fetch_cudnn_frontend.sh without pip
if [[ "${1:-}" == "--bench" ]]; then pkgs+=(python3-torch); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
# The cuDNN frontend headers (PyPI), for the cuDNN attention path of CUDA builds. Optional: without them the
# build goes on with the native attention kernels only (CMake and `xfrun info` say why).
if ! scripts/fetch_cudnn_frontend.sh; then
  echo "install_deps: the cuDNN frontend headers could not be fetched (see above); building without cuDNN attention" >&2
fi

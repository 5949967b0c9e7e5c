#!/usr/bin/env bash
# Fetches the cuDNN C++ frontend (header-only, MIT; NVIDIA's graph API over the cuDNN backend) into
# third_party/cudnn_frontend/include, which CMake looks for to build the cuDNN attention path
# (ops/cuda/cudnn_attention.cpp). Nothing is fetched at configure or build time: a machine without network
# gets the folder copied from one that ran this script.
#
# The headers ship on PyPI in the wheel nvidia-cudnn-frontend (the same include/ in every platform's wheel).
# One wheel is pinned by name and sha256 and fetched with pip (honours the machine's pip configuration:
# index, mirror, proxy) or, without pip, straight from PyPI's file host with curl. Only include/ and the
# licences are unpacked. Idempotent: a folder stamped with the pinned version and hash is left as it is.
#   scripts/fetch_cudnn_frontend.sh [--force]
# Exit 0 when the headers are in place; otherwise 1 with the reason on stderr (callers may go on without
# cuDNN attention: CMake then builds the native attention kernels only and `xfrun info` says why).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.32.0
# Any wheel of the release would do (the headers are the same); this one is pinned so the hash is fixed.
WHEEL=nvidia_cudnn_frontend-${VERSION}-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
SHA256=c6006556017a4d1c914c52a556c71b1267f2d6a0500f742e7b4edef539878df0
URL=https://files.pythonhosted.org/packages/11/02/660e2dd9f9d9f940e1641443771730612c3aadaafbc5ef7a93cc313d519d/${WHEEL}
DEST=third_party/cudnn_frontend
STAMP="nvidia-cudnn-frontend ${VERSION} ${SHA256}"

fail() {
  echo "fetch_cudnn_frontend: $*" >&2
  exit 1
}

if [[ "${1:-}" != "--force" && -f "$DEST/STAMP" && -f "$DEST/include/cudnn_frontend.h" ]] &&
   [[ "$(cat "$DEST/STAMP")" == "$STAMP" ]]; then
  exit 0
fi

TMP=$(mktemp -d)
mkdir -p "$(dirname "$DEST")"
STAGE=$(mktemp -d "$(dirname "$DEST")/.cudnn_frontend.XXXXXX")  # beside DEST: the final mv is a rename
trap 'rm -rf "$TMP" "$STAGE"' EXIT

got=""
if python3 -m pip --version >/dev/null 2>&1; then
  # --platform/--python-version/--abi pick the pinned wheel whatever this machine's Python and CPU are.
  if python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
       --python-version 3.11 --implementation cp --abi cp311 --dest "$TMP" \
       "nvidia-cudnn-frontend==${VERSION}" >"$TMP/pip.log" 2>&1 && [[ -f "$TMP/$WHEEL" ]]; then
    got="$TMP/$WHEEL"
  else
    echo "fetch_cudnn_frontend: pip download failed ($(tail -n 1 "$TMP/pip.log")); trying curl" >&2
  fi
fi
if [[ -z "$got" ]]; then
  command -v curl >/dev/null || fail "neither pip nor curl can fetch ${WHEEL}"
  curl -fsSL --retry 3 --connect-timeout 20 -o "$TMP/$WHEEL" "$URL" ||
    fail "could not download ${URL}"
  got="$TMP/$WHEEL"
fi

have=$(sha256sum "$got" | cut -d' ' -f1)
[[ "$have" == "$SHA256" ]] || fail "sha256 mismatch for ${WHEEL}: got ${have}, pinned ${SHA256}"

# Unpack include/ and the licences (a wheel is a zip file: python3's zipfile, or unzip).
mkdir -p "$TMP/x"
if command -v python3 >/dev/null; then
  python3 - "$got" "$TMP/x" <<'EOF' || fail "could not unpack the wheel"
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        if n.startswith("include/") or "/licenses/" in n:
            z.extract(n, sys.argv[2])
EOF
elif command -v unzip >/dev/null; then
  unzip -q "$got" 'include/*' '*/licenses/*' -d "$TMP/x" || fail "could not unpack the wheel"
else
  fail "neither python3 nor unzip can unpack the wheel"
fi
[[ -f "$TMP/x/include/cudnn_frontend.h" ]] || fail "the wheel has no include/cudnn_frontend.h"
grep -q "CUDNN_FRONTEND_MINOR_VERSION $(echo "$VERSION" | cut -d. -f2)\$" "$TMP/x/include/cudnn_frontend_version.h" ||
  fail "the wheel's cudnn_frontend_version.h is not ${VERSION}"

# Replace the folder in one move, so an interrupted run never leaves half a tree behind a valid stamp.
mkdir -p "$STAGE/new/licenses"
mv "$TMP/x/include" "$STAGE/new/include"
find "$TMP/x" -path '*/licenses/*' -type f -exec cp {} "$STAGE/new/licenses/" \;
echo "$STAMP" >"$STAGE/new/STAMP"
rm -rf "$DEST"
mv "$STAGE/new" "$DEST"
echo "fetch_cudnn_frontend: cuDNN frontend ${VERSION} headers in ${DEST}/include ($(find "$DEST/include" -name '*.h' | wc -l) headers)"

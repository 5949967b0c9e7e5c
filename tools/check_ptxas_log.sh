#!/usr/bin/env bash
# Fails when a build log holds ptxas's report of a kernel whose wgmma instructions it serialised
# ("Potential Performance Loss: wgmma.mma_async instructions are serialized ...", C7514-C7520: an accumulator
# register touched by other instructions inside a wgmma pipeline stage, a wgmma under a branch ptxas cannot prove
# warpgroup-uniform, ...). ptxas then waits after every wgmma: the kernel still passes every test, and runs far
# slower on a Hopper GPU, which CI does not have. Session 15 met three forms of it (docs/attention.md). Only a
# build that compiled the kernel prints its report, so this guards clean builds (CI) and says nothing about
# objects an incremental build kept. Usage: tools/check_ptxas_log.sh BUILD_LOG
set -euo pipefail
log=${1:?usage: tools/check_ptxas_log.sh BUILD_LOG}
pattern="wgmma.mma_async instructions are serialized"
if grep -q "$pattern" "$log"; then
  echo "check_ptxas_log: ptxas serialised the wgmmas of these kernels (see the lines in $log):" >&2
  grep "$pattern" "$log" | sed -E 's/.*in the function .(_Z[A-Za-z0-9_]+).*/  \1/' | sort -u >&2
  exit 1
fi
echo "check_ptxas_log: ptxas reported no serialised wgmma in $log"

#!/usr/bin/env bash
# Loopback load test of the example HTTP server (tools/xfrun_server.cpp): builds xfrun, xfrun_server and
# xfrun_server_load, trains the embedded default model (configs/default.yaml: a 4-layer, width-128 character
# GPT, 0.8M parameters, 128-token window) for a few steps, starts the server on a free port, runs N
# closed-loop clients against /v1/embeddings and then /v1/completions for a bounded time each, and stops the
# server with SIGTERM (it must exit 0). Prints throughput, p50/p90/p99 latency and the failed-request count.
#
# Usage: scripts/server_load.sh [--clients N] [--duration S] [--threads N] [--max-tokens N] [--batch N] [--steps N]
#   --threads: server sessions (requests computing at once); --batch: inputs per embeddings request;
#   --max-tokens: tokens per completion. Env: BUILD_DIR (default build), XF_CMAKE_ARGS, OPENBLAS_NUM_THREADS
#   (default 1 for the server: its sessions are the parallelism; BLAS threads on top would oversubscribe).
set -euo pipefail
cd "$(dirname "$0")/.."
clients=4 duration=10 threads=2 max_tokens=32 batch=1 steps=60
while (($#)); do
  case "$1" in
    --clients) clients=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --max-tokens) max_tokens=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    *) echo "usage: $0 [--clients N] [--duration S] [--threads N] [--max-tokens N] [--batch N] [--steps N]" >&2; exit 2 ;;
  esac
done
scripts/install_deps.sh
BUILD_DIR=${BUILD_DIR:-build}
GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S . -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release ${XF_CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)" --target xfrun_cli xfrun_server xfrun_server_load

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then kill -KILL "$server_pid"; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== training configs/default.yaml for $steps steps"
"$BUILD_DIR"/xfrun train --config configs/default.yaml --set train.steps="$steps" \
  --set train.schedule.warmup_steps=$((steps / 5)) --set train.eval_every="$steps" --set infer.max_new_tokens=1 \
  --set runtime.device=cpu --set runtime.out_dir="$work/run" > "$work/train.log" 2>&1 || { cat "$work/train.log"; exit 1; }
ckpt="$work/run/checkpoints/step_$steps"

echo "== starting xfrun_server ($threads sessions)"
OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} "$BUILD_DIR"/xfrun_server --config configs/default.yaml --checkpoint "$ckpt" \
  --host 127.0.0.1 --port 0 --threads "$threads" > "$work/server.out" 2> "$work/server.err" &
server_pid=$!
port=""
for _ in $(seq 600); do
  port=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$work/server.out" 2>/dev/null || true)
  [[ -n "$port" ]] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.err"; exit 1; }
  sleep 0.1
done
[[ -n "$port" ]] || { echo "the server did not start"; cat "$work/server.err"; exit 1; }
cat "$work/server.out"
echo "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1); $(date -u +%Y-%m-%d)"

rc=0
echo "== embeddings: $clients clients, ${duration} s, $batch input(s) per request"
"$BUILD_DIR"/xfrun_server_load --port "$port" --endpoint embeddings --clients "$clients" --duration "$duration" \
  --batch "$batch" || rc=1
echo "== completions: $clients clients, ${duration} s, $max_tokens tokens per request"
"$BUILD_DIR"/xfrun_server_load --port "$port" --endpoint completions --clients "$clients" --duration "$duration" \
  --max-tokens "$max_tokens" || rc=1

echo "== stopping the server (SIGTERM)"
kill -TERM "$server_pid"
server_rc=0
wait "$server_pid" || server_rc=$?
server_pid=""
if [[ $server_rc -ne 0 ]]; then echo "the server exited with $server_rc"; cat "$work/server.err"; rc=1; fi
exit $rc

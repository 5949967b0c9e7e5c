#!/usr/bin/env bash
# One full cycle on a GPU machine, in one call: configure with CUDA for sm_90a, build with all cores, run
# the GPU tests (the test binary with XF_TEST_DEVICE=cuda), run our benchmarks and the PyTorch baseline
# in the same run, and write every log plus a summary table under $OUT.
#   OUT=/path tools/gpu_check.sh [steps...]     steps: build test sanitize bench torch attn lab ab ncu labncu
#   (default: build test bench torch attn)
# attn: the attention kernels (ours: native and cuDNN; PyTorch SDPA with each backend forced) on the
# FlashAttention grid, in the same run, and one ratio table (tools/bench_attention_report.py).
# ab: an interleaved A/B of our native attention under two environments (XF_AB_A, XF_AB_B) or two source trees
# (XF_AB_TREE, built into XF_AB_BUILD); see the step.
# ncu: Nsight Compute on the native attention kernels, one D:S case at a time, non-causal (XF_NCU_CASES, see the step).
# labncu: Nsight Compute's throughput sections on every kernel of one kernel lab (XF_NCU_LAB, default epilogue_gemm).
# lab: tools/lab kernel labs (the encoder's logits GEMM in four layouts; the q/k/v projections separate or packed; the wgmma/TMA attention forward and backward variants; the LayerNorm forward variants and backward; a weight gradient fused, plain and split-K; the column reduction by chunk count; AdamW beside the backward GEMMs).
# Knobs: XF_TEST_FILTER (doctest -tc), XF_ATTN_ARGS (the attn step's grid: --D, --S), XF_BENCH_SECTIONS
# (gpt2,encoder), XF_BENCH_PROFILE=1 (per-kernel times), XF_TORCH_PROFILE=1 (torch's kernel table),
# XF_GEMM_AUTOTUNE_LOG=1 (each GEMM candidate's time),
# XF_LABS (which labs the lab step runs, e.g. "attention"), XF_LAB_ATTENTION_ARGS (xfrun_lab_attention_wgmma's
# arguments, e.g. "--variant v1,v2 --quick"), XF_LAB_ATTENTION_BWD_ARGS (xfrun_lab_attention_wgmma_bwd's, e.g. "--quick").
# Each step's log is $OUT/<step>.log; the summary is $OUT/summary.md (also printed last).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(build test bench torch attn)
BUILD=${XF_GPU_BUILD_DIR:-build-gpu}
SUMMARY="$OUT/summary.md"
: >"$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
has() { local s; for s in "${STEPS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
T0=$(date +%s)
note "# gpu_check $(date -u +%Y-%m-%dT%H:%MZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1 | sed 's/^/gpu: /' | tee -a "$SUMMARY"

# The GPU's clocks and power while a benchmark runs (nvidia-smi dmon, a sample a second: power, processor and memory
# clocks), summarised into the summary: whether two benchmarks ran at the same clocks. Run 35 read our native kernels
# 5-8% faster in the ab step (native only) than in the attn grid (native, cuDNN and cuDNN atomic in turn, each cell)
# for one binary; this says whether the clocks differ. clocks_start NAME before, clocks_stop NAME after.
clocks_start() {
  CLOCKS_PID=
  command -v nvidia-smi >/dev/null || return 0
  nvidia-smi dmon -s pc -d 1 >"$OUT/$1_clocks.log" 2>&1 &
  CLOCKS_PID=$!
}
clocks_stop() {
  [ -n "${CLOCKS_PID:-}" ] || return 0
  kill "$CLOCKS_PID" 2>/dev/null
  wait "$CLOCKS_PID" 2>/dev/null
  CLOCKS_PID=
  # Header "# gpu pwr gtemp mtemp mclk pclk": data field i - 1 is header field i (the data lines have no "#").
  awk -v name="$1" '
    $1 == "#" && $2 == "gpu" { for (i = 2; i <= NF; ++i) col[$i] = i - 1; next }
    $1 == "#" || !("pclk" in col) { next }
    { c = $(col["pclk"]); w = $(col["pwr"]); if (c !~ /^[0-9]+$/) next
      n++; cs += c; ws += w; if (n == 1 || c < cmin) cmin = c; if (w > wmax) wmax = w }
    END { if (n) printf "%s clocks (nvidia-smi dmon, %d samples): SM %.0f MHz mean, %d min; power %.0f W mean, %d max\n",
                        name, n, cs / n, cmin, ws / n, wmax
          else printf "%s clocks: no samples\n", name }' "$OUT/$1_clocks.log" | tee -a "$SUMMARY"
}

# How every build here is configured (the build step's tree, and the ab step's A tree): Ninja when there is one,
# Release, CUDA for sm_90a.
CONFIGURE=(-DCMAKE_BUILD_TYPE=Release -DXF_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a -DXF_NATIVE=ON)
KEEP_GOING=()  # Ninja: past a failing object, so that one build shows every error
if command -v ninja >/dev/null; then CONFIGURE=(-G Ninja "${CONFIGURE[@]}"); KEEP_GOING=(-- -k 0); fi

if has build; then
  t=$(date +%s)
  if cmake -S . -B "$BUILD" "${CONFIGURE[@]}" >"$OUT/configure.log" 2>&1 &&
     cmake --build "$BUILD" -j"$(nproc)" --target xfrun_tests xfrun_cli xfrun_bench_gpu xfrun_bench_attention \
       xfrun_lab_head_gemm xfrun_lab_qkv_gemm xfrun_lab_attention_wgmma xfrun_lab_attention_wgmma_bwd xfrun_lab_layernorm xfrun_lab_norm_backward xfrun_lab_wgrad_gemm xfrun_lab_column_reduce xfrun_lab_epilogue_gemm xfrun_lab_gemm_algo_search xfrun_lab_overlap_optimizer "${KEEP_GOING[@]}" >"$OUT/build.log" 2>&1; then
    note "build: ok ($(( $(date +%s) - t )) s)"
    tools/check_ptxas_log.sh "$OUT/build.log" 2>&1 | tee -a "$SUMMARY" || true  # serialised wgmmas, named
    # Whether the cuDNN attention path was built (it needs third_party/cudnn_frontend: scripts/fetch_cudnn_frontend.sh).
    grep -o "xfrun: cuDNN attention.*" "$OUT/configure.log" | tee -a "$SUMMARY"
  else
    note "build: FAILED ($(( $(date +%s) - t )) s); last lines:"
    grep -E "error|FAILED" "$OUT/build.log" | head -60 | tee -a "$SUMMARY"
    tail -n 5 "$OUT/configure.log" | tee -a "$SUMMARY"
    exit 1
  fi
fi

if has test; then
  t=$(date +%s)
  # The whole test binary with the CUDA cases enabled (XF_TEST_FILTER narrows it, doctest -tc syntax);
  # doctest prints each failure with its values.
  # No tuning cache (runtime/tune_cache.h) unless asked for: the cases that exercise the GEMM tuner tune.
  XF_TUNE_CACHE=${XF_TUNE_CACHE-0} XF_TEST_DEVICE=cuda "$BUILD/xfrun_tests" ${XF_TEST_FILTER:+-tc="$XF_TEST_FILTER"} --duration=true >"$OUT/test.log" 2>&1
  rc=$?
  note "test (XF_TEST_DEVICE=cuda ${XF_TEST_FILTER:-all cases}): rc=$rc ($(( $(date +%s) - t )) s): $(grep -E '^\[doctest\] (test cases|assertions)' "$OUT/test.log" | tr '\n' ' ')"
  grep -E "ERROR|FATAL|error:" "$OUT/test.log" | sort | uniq -c | sort -rn | head -60 | tee -a "$SUMMARY"
fi

if has sanitize; then
  t=$(date +%s)
  XF_CUDA_CACHING=0 XF_TEST_DEVICE=cuda compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$BUILD/xfrun_tests" -tc='*cuda*' >"$OUT/sanitize.log" 2>&1
  note "compute-sanitizer memcheck (caching off): rc=$? ($(( $(date +%s) - t )) s)"
  grep -E "ERROR SUMMARY|Invalid" "$OUT/sanitize.log" | head -10 | tee -a "$SUMMARY"
fi

if has bench; then
  t=$(date +%s)
  "$BUILD/xfrun_bench_gpu" --out "$OUT/bench_xfrun.json" --profile "${XF_BENCH_PROFILE:-0}" \
    --sections "${XF_BENCH_SECTIONS:-gpt2,encoder}" >"$OUT/bench.log" 2>&1
  note "bench (ours): rc=$? ($(( $(date +%s) - t )) s)"
  grep -E "^xfrun" "$OUT/bench.log" | tee -a "$SUMMARY"
fi

if has lab; then
  # XF_LABS picks the labs (default: all of head_gemm qkv_gemm attention attention_bwd layernorm norm_backward
  # wgrad_gemm column_reduce epilogue_gemm). Each lab prints "lab ..."
  # lines (into the summary); rc 1 = some case failed, 3 = a CUDA fault or a pipeline deadlock that stopped it (the
  # log's last lines name the kernel and case and, for a deadlock, the barrier).
  lab_on() { [[ " ${XF_LABS:-head_gemm qkv_gemm attention attention_bwd layernorm norm_backward wgrad_gemm column_reduce epilogue_gemm overlap_optimizer} " == *" $1 "* ]]; }
  # run_lab <log name> <title> <binary> [args...]
  run_lab() {
    local log="$OUT/$1.log" title=$2 bin=$3 t
    shift 3
    t=$(date +%s)
    "$BUILD/$bin" "$@" >"$log" 2>&1
    note "lab ($title): rc=$? ($(( $(date +%s) - t )) s)"
    grep -E "^lab" "$log" | tee -a "$SUMMARY"
  }
  # The encoder's logits GEMM in four layouts.
  lab_on head_gemm && XF_GEMM_AUTOTUNE_CANDIDATES=${XF_GEMM_AUTOTUNE_CANDIDATES:-32} \
    run_lab lab "head GEMM layouts" xfrun_lab_head_gemm
  # GPT-2's q/k/v projections as three GEMMs or one packed GEMM, each way of the step.
  lab_on qkv_gemm && run_lab lab_qkv_gemm "q/k/v projections: separate, packed" xfrun_lab_qkv_gemm
  # The wgmma/TMA FlashAttention forward variants against an fp32 reference (XF_LAB_ATTENTION_ARGS narrows it,
  # e.g. "--variant v1 --quick").
  lab_on attention && run_lab lab_attention "attention wgmma variants" xfrun_lab_attention_wgmma ${XF_LAB_ATTENTION_ARGS:-}
  # The backward variants (dq, dk, dv) against an fp32 reference (XF_LAB_ATTENTION_BWD_ARGS narrows it, e.g. "--quick"
  # or "--variant b3 --d 64 --s 512").
  lab_on attention_bwd && run_lab lab_attention_bwd "attention wgmma backward variants" xfrun_lab_attention_wgmma_bwd \
    ${XF_LAB_ATTENTION_BWD_ARGS:-}
  # Residual LayerNorm forward variants vs a float64 reference and a copy of the same bytes (XF_LAB_LAYERNORM_ARGS
  # narrows it, e.g. "--variant v0,v2 --shape 384").
  lab_on layernorm && run_lab lab_layernorm "layernorm variants" xfrun_lab_layernorm ${XF_LAB_LAYERNORM_ARGS:-}
  # The LayerNorm backward through its launcher (GPT-2's call, the dx kernel alone, other widths) against a copy.
  lab_on norm_backward && run_lab lab_norm_backward "layernorm backward" xfrun_lab_norm_backward
  # A linear layer's weight gradient at GPT-2's shapes: the fused bias gradient, plain, split-K over M, the column sum.
  lab_on wgrad_gemm && run_lab lab_wgrad_gemm "weight gradient GEMMs" xfrun_lab_wgrad_gemm
  # The column reduction (bias gradients, the LayerNorm backward's partial rows) stage by stage over its chunk count.
  lab_on column_reduce && run_lab lab_column_reduce "column reduction" xfrun_lab_column_reduce
  # A persistent Hopper GEMM with GPT-2's MLP epilogues (bias + GELU, dgelu) against cuBLASLt's fused ones.
  lab_on epilogue_gemm && run_lab lab_epilogue_gemm "epilogue GEMM" xfrun_lab_epilogue_gemm
  # Not in the default list (it times thousands of configurations, minutes): XF_LABS=gemm_algo_search.
  lab_on gemm_algo_search && run_lab lab_gemm_algo_search "cuBLASLt algorithm search" xfrun_lab_gemm_algo_search
  # An AdamW update on a low-priority stream beside one or more layers' backward GEMMs (the optimizer in the backward).
  lab_on overlap_optimizer && run_lab lab_overlap_optimizer "AdamW beside the backward GEMMs" xfrun_lab_overlap_optimizer
fi

if has torch; then
  t=$(date +%s)
  PYTHONUNBUFFERED=1 python3 tools/bench_gpu_torch.py --out "$OUT/bench_torch.json" \
    --sections $(echo "${XF_BENCH_SECTIONS:-gpt2,encoder}" | tr ',' ' ') >"$OUT/torch.log" 2>&1
  note "bench (PyTorch, same run): rc=$? ($(( $(date +%s) - t )) s)"
  grep -E "^torch" "$OUT/torch.log" | tee -a "$SUMMARY"
fi

if has attn; then
  t=$(date +%s)
  # XF_ATTN_ARGS narrows or widens the grid on both sides alike (e.g. "--D 256", "--D 64 --S 512,1024", or GPT-2 124M's
  # attention: "--D 64 --hidden 768 --S 1024").
  clocks_start attn_ours
  "$BUILD/xfrun_bench_attention" --out "$OUT/attn_xfrun.json" ${XF_ATTN_ARGS:-} >"$OUT/attn.log" 2>&1
  rc=$?
  clocks_stop attn_ours
  note "attention bench (ours): rc=$rc ($(( $(date +%s) - t )) s)"
  t=$(date +%s)
  clocks_start attn_torch
  PYTHONUNBUFFERED=1 python3 tools/bench_attention_torch.py --out "$OUT/attn_torch.json" ${XF_ATTN_ARGS:-} \
    >"$OUT/attn_torch.log" 2>&1
  rc=$?
  clocks_stop attn_torch
  note "attention bench (PyTorch SDPA, same run): rc=$rc ($(( $(date +%s) - t )) s)"
  if [ -f "$OUT/attn_xfrun.json" ] && [ -f "$OUT/attn_torch.json" ]; then
    python3 tools/bench_attention_report.py "$OUT/attn_xfrun.json" "$OUT/attn_torch.json" | tee -a "$SUMMARY"
  else
    tail -n 5 "$OUT/attn.log" "$OUT/attn_torch.log" | tee -a "$SUMMARY"
  fi
fi

if has ab; then
  # An interleaved A/B of the native kernels (tools/bench_attention_ab.py): XF_AB_A and XF_AB_B are each a list of
  # VAR=value settings (e.g. XF_AB_A="XF_ATTENTION_SM90_CTAS=1000000" XF_AB_B=""), run A B A B with
  # --backends native (XF_AB_ARGS adds arguments, e.g. "--D 64 --S 512,1024").
  # XF_AB_TREE: another source tree whose xfrun_bench_attention runs the A side, built here into $XF_AB_BUILD
  # (default build-ab): an A/B of a change that no switch reaches (a kernel's code itself). E.g. `mkdir build-abtree
  # && git archive main | tar -x -C build-abtree`, carried to the device machine with the run (about 4 MB). That tree
  # has no third_party/, so it is given this tree's cuDNN frontend headers: both sides must be built alike. Run 33
  # (H200, 2026-11-30, an A/A of one source tree) found the A binary built without the cuDNN path 4% to 12% slower
  # than the B binary in the same kernels (D = 128 everywhere, D = 64 from S = 2048 causal), every repeat alike: a
  # bias the size of the changes an A/B looks for.
  t=$(date +%s)
  bin_a="$BUILD/xfrun_bench_attention" label_a=${XF_AB_A:-default} ab_build=${XF_AB_BUILD:-build-ab}
  if [ -n "${XF_AB_TREE:-}" ]; then
    FE=(); [ -d third_party/cudnn_frontend/include ] && [ ! -d "$XF_AB_TREE/third_party/cudnn_frontend" ] &&
      FE=(-DXF_CUDNN_FRONTEND_INCLUDE="$PWD/third_party/cudnn_frontend/include")
    if cmake -S "$XF_AB_TREE" -B "$ab_build" "${CONFIGURE[@]}" "${FE[@]}" >"$OUT/ab_configure.log" 2>&1 &&
       cmake --build "$ab_build" -j"$(nproc)" --target xfrun_bench_attention >"$OUT/ab_build.log" 2>&1; then
      bin_a=$ab_build/xfrun_bench_attention label_a="$XF_AB_TREE ${XF_AB_A:-}"
      note "ab: built A from $XF_AB_TREE ($(( $(date +%s) - t )) s; $(grep -o "cuDNN attention.*" "$OUT/ab_configure.log" | head -1))"
    else
      note "ab: building A from $XF_AB_TREE FAILED: $(grep -E "error" "$OUT/ab_build.log" | head -3)"
    fi
  fi
  files=()
  clocks_start ab
  for rep in 1 2; do
    for side in A B; do
      var=XF_AB_$side bin="$BUILD/xfrun_bench_attention"
      [ "$side" = A ] && bin=$bin_a
      env ${!var:-} "$bin" --backends native ${XF_AB_ARGS:-} --out "$OUT/ab_${side}${rep}.json" \
        >"$OUT/ab_${side}${rep}.log" 2>&1 || note "ab: $side run $rep failed: $(tail -n 2 "$OUT/ab_${side}${rep}.log")"
      files+=("$OUT/ab_${side}${rep}.json")
    done
  done
  clocks_stop ab
  note "ab (A: $label_a; B: ${XF_AB_B:-default}): $(( $(date +%s) - t )) s"
  python3 tools/bench_attention_ab.py "$label_a" "${XF_AB_B:-default}" "${files[@]}" | tee -a "$SUMMARY"
fi

if has ncu; then
  # Nsight Compute's full set (details and the per-SASS-line source page with its stall samples) on the first
  # launch of the kernels matching XF_NCU_KERNEL (default: our Hopper forward) by backend XF_NCU_BACKEND of
  # xfrun_bench_attention (default native; cudnn with XF_NCU_KERNEL=sdpa profiles cuDNN's forward), for each D:S case
  # of XF_NCU_CASES (non-causal: the bench's first launch); the clocks are left alone (device METHOD.md). Logs:
  # ncu_<backend>_<D>_<S>.{run,details,source}.log. XF_NCU_SKIP=N profiles the launch after the first N matching ones
  # instead: with one backend, each case launches the forward 3 times non-causal (its first call, the forward's
  # timing, the forward+backward's) before its causal ones, so XF_NCU_SKIP=3 profiles the causal forward. Environment
  # switches reach the bench: e.g. XF_ATTENTION_SM90_STREAM=0 profiles the per-tile loop.
  for case in ${XF_NCU_CASES:-64:512 64:16384 128:512}; do
    IFS=: read -r d s <<<"$case"
    name="ncu_${XF_NCU_BACKEND:-native}_${d}_${s}"
    t=$(date +%s)
    # One profiled run into a report (kept off $OUT: it runs to megabytes), then both pages printed from it.
    rep="${TMPDIR:-/tmp}/$name"
    ncu --clock-control none --set full -k "regex:${XF_NCU_KERNEL:-fwd_sm90}" --launch-skip "${XF_NCU_SKIP:-0}" -c 1 \
      -f -o "$rep" \
      "$BUILD/xfrun_bench_attention" --backends "${XF_NCU_BACKEND:-native}" --D "$d" --S "$s" --reps 1 \
      --warmup 0 >"$OUT/$name.run.log" 2>&1
    rc=$?
    ncu --import "$rep.ncu-rep" --page details >"$OUT/$name.details.log" 2>&1
    ncu --import "$rep.ncu-rep" --page source --print-source sass >"$OUT/$name.source.log" 2>&1
    note "ncu ${XF_NCU_BACKEND:-native} $case: rc=$rc ($(( $(date +%s) - t )) s)"
    grep -E "^  [a-z_].*\(|^    (Grid Size|Block Size|Dynamic Shared Memory Per Block|Duration|Compute \(SM\) Throughput|Memory Throughput|Issue Slots Busy|Executed Ipc Active|No Eligible|Registers Per Thread|Achieved Occupancy)" \
      "$OUT/$name.details.log" | head -16 | tee -a "$SUMMARY"
    # Where the warps stall: the reasons and the SASS lines with the most samples (tools/ncu_source_summary.py).
    python3 tools/ncu_source_summary.py "$OUT/$name.source.log" --top 8 2>&1 | tee -a "$SUMMARY"
  done
fi

if has labncu; then
  # Where a lab's kernels stand against the memory system: Nsight Compute's SpeedOfLight and MemoryWorkloadAnalysis
  # sections (duration, SM / DRAM / L2 throughput, bytes moved) on every kernel the lab launches, with each case's
  # timing cut to one call (XF_LAB_ONCE=1, tools/lab/lab_cuda.h) and the GEMM autotuner off (XF_GEMM_AUTOTUNE=0: one
  # cuBLASLt algorithm a reference, not eight timed). The clocks are left alone (device METHOD.md). Log:
  # labncu_<lab>.log; the summary has a row a launch (tools/ncu_lab_summary.py).
  lab=${XF_NCU_LAB:-epilogue_gemm}
  t=$(date +%s)
  XF_LAB_ONCE=1 XF_GEMM_AUTOTUNE=0 ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis \
    "$BUILD/xfrun_lab_$lab" >"$OUT/labncu_$lab.log" 2>&1
  note "labncu $lab: rc=$? ($(( $(date +%s) - t )) s)"
  python3 tools/ncu_lab_summary.py "$OUT/labncu_$lab.log" 2>&1 | tee -a "$SUMMARY"
fi

if [ -f "$OUT/bench_xfrun.json" ] && [ -f "$OUT/bench_torch.json" ]; then
  python3 tools/bench_gpu_report.py "$OUT/bench_xfrun.json" "$OUT/bench_torch.json" | tee -a "$SUMMARY"
fi
note "total: $(( $(date +%s) - T0 )) s"

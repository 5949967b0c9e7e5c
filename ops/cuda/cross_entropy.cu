// CUDA kernels of ops/cross_entropy.h (cross_entropy, cross_entropy_backward).
//
// Forward: one row of logits per warp (V up to 32 lanes x 8 packs) or per block (up to 512 threads; a
// 50304-entry vocabulary takes 512 threads with ~12 packs each), in one pass: each thread keeps a running
// max m and sum of exp(x - m) (rescaled when m grows, once per step of 2 or 4 packs), plus sum(x) for label smoothing;
// the row group then combines them into lse = M + log(sum). The row's loss (0 when ignored, NaN when its
// target is invalid) goes to scratch memory, and one block sums the row losses in a fixed order (in
// double) and divides by the number of counted rows: deterministic, no atomics. Statistics in fp32; loss
// and lse are f32 whatever the logits' dtype.
// Backward (and the forward's optional dlogits, for dloss = 1, in a second pass over each row right after its lse,
// from a copy of the row the first pass left in shared memory when it fits, else from L2): one small block counts
// the counted rows and forms dloss / n_valid on the device (so a captured CUDA graph reads each step's dloss); then
// each row group writes
//   dlogits = (a + dlse) * exp(x - lse) - a * ls / V - [v == target] a (1 - ls),  a = dloss / n_valid
// in one pass over the row, rounded once to the logits' dtype.
#include "ops/cross_entropy.h"
#include "ops/cuda/norm_launch.h"
#include "ops/cuda/rowwise.cuh"
#include "runtime/dispatch.h"

namespace xfr::cuda {

namespace {

// Packs a thread loads before folding them into its running max and sum: 2 independent 16-byte loads in flight per
// thread, and one rescaling exp per 2 packs instead of one per element. ncu on the H200 (2026-11-30, GPT-2's 16384 x
// 50304 bf16 logits) found 4 packs holding 59 registers, so two 512-thread blocks per SM (50% occupancy) and
// 2.2 TB/s, 765 us; the backward, at 32 registers and full occupancy, streams twice the bytes at 4.1 TB/s.
constexpr int kUnroll = 2;
// Blocks of kMaxRowThreads the forward keeps resident per SM: 3 caps it at 42 registers a thread.
constexpr int kForwardMinBlocks = 3;
// The forward with dlogits keeps each row in shared memory for the second pass when the row fits in
// kRowSmemMaxBytes: two such blocks (plus 1 KB each the hardware reserves) fit the 228 KB of an sm_90 SM, so two
// rows per SM are in flight, as kGradMinBlocks says (64 registers; 56 used with 4 packs a step). GPT-2's
// bf16 row is 100.6 KB. Measured on the H200 in the GPT-2 step's profile (16384 x 50304 bf16 logits): re-reading the
// row from L2, 1.445 ms (run 43); with the copy, 1.426 ms (run 44): both were held by the first pass, whose guarded
// loads the compiler issued one at a time; with the loads unguarded and the per-element work cut (RowStats, GradRow),
// 1.049 ms (run 45), against 0.65 + 0.82 ms for the forward and the backward apart. What the copy alone gives was
// not measured. Since session 24 the copy is made by cp.async, ahead of the first pass (0.918 ms).
constexpr int64_t kRowSmemMaxBytes = 112 * 1024;
constexpr int kRowSmemUnroll = 4;
// Blocks of kMaxRowThreads per SM for both forward variants with dlogits (the shared-memory one fits two): 64
// registers a thread; at kForwardMinBlocks' 42 the L2 variant spilled 16-24 bytes.
constexpr int kGradMinBlocks = 2;
// Packs per thread the row plan aims at: 8 (two unrolled steps) keeps a 512-thread block on a 50k
// vocabulary and a warp on rows up to 256 packs.
constexpr int kPacksPerThread = 8;
// The single block that sums the row losses (and counts the counted rows): 512 threads read N values in
// N / 512 steps, a few microseconds for the N of a training batch.
constexpr int kFinalThreads = 512;

RowPlan plan_ce(int64_t V, int width) {
  const int64_t packs = ceil_div(V, width);
  RowPlan p;
  p.threads = static_cast<int>(std::clamp<int64_t>(pow2_ceil(ceil_div(packs, kPacksPerThread)), 32, kMaxRowThreads));
  p.rows_per_block = p.threads == 32 ? kWarpRowsPerBlock : 1;
  p.iters = 1;  // unused: the kernels loop over the row
  return p;
}

template <class I>
__device__ __forceinline__ bool target_valid(I t, int64_t V) {
  return static_cast<int64_t>(t) >= 0 && static_cast<int64_t>(t) < V;
}

// log2(e): exp(x - m) is computed as ex2(x log2(e) - m log2(e)), one FFMA and one MUFU.EX2 an element.
constexpr float kLog2e = 1.4426950408889634f;

// A thread's running statistics of its share of a row: the max m, the sum s of exp(x - m), and the sum sx of x
// (label smoothing's; summed only when `smooth`).
// The kernels are instruction-bound as much as memory-bound (GPT-2's 824 M logits a step at ~10 instructions an
// element is ~0.25 ms of issue on the H200), so the per-element work is kept to: the bf16 -> f32 widening, a max, an
// FFMA and an EX2, the sum (and sx).
struct RowStats {
  float m = -INFINITY, s = 0.f, sx = 0.f;
  // Folds the first n (<= K) packs of v in: their max first, rescaling s once when it grows, then their exps.
  template <class T, int W, int K>
  __device__ __forceinline__ void fold(const dev::Pack<T, W> (&v)[K], int n, bool smooth) {
    float pm = -INFINITY;
#pragma unroll
    for (int u = 0; u < K; ++u)
      if (u < n)
#pragma unroll
        for (int e = 0; e < W; ++e) pm = fmaxf(pm, dev::to_float(v[u].v[e]));
    if (pm > m) {
      s *= dev::ex2((m - pm) * kLog2e);  // m == -inf: s is 0 and stays 0
      m = pm;
    }
    const bool live = m != -INFINITY;  // else every value so far is -inf, and x - m would be NaN
    const float ml = m * kLog2e;
#pragma unroll
    for (int u = 0; u < K; ++u)
      if (u < n)
#pragma unroll
        for (int e = 0; e < W; ++e) {
          const float f = dev::to_float(v[u].v[e]);
          if (live) s += dev::ex2(fmaf(f, kLog2e, -ml));
          if (smooth) sx += f;
        }
  }
};

// One row's dlogits (the backward's formula; ops/cross_entropy.h): the row's weights from coef = dloss / n_valid,
// its dlse (0 without) and its target t (ignore_index: not counted).
struct GradRow {
  float ab, smooth, hit, ll;  // weight of p, a ls / V, a (1 - ls), lse log2(e)
  int64_t t;                  // the target, or -1 when the row is not counted
  __device__ __forceinline__ GradRow(float coef, float dlse, int64_t target, int64_t ignore_index, int64_t V, float ls,
                                     float lse)
      : ll(lse * kLog2e) {
    const bool counted = target != ignore_index;
    const float a = counted ? coef : 0.f;  // weight of this row's loss
    ab = a + dlse;
    smooth = a * ls / static_cast<float>(V);
    hit = a * (1.f - ls);
    t = counted ? target : -1;
  }
  // dlogits of the W logits starting at column c: FFMA, EX2, FFMA an element; the target's term once per pack that
  // holds it (a per-element 64-bit compare cost as much as the rest).
  template <class T, int W>
  __device__ __forceinline__ dev::Pack<T, W> pack(const dev::Pack<T, W>& x, int64_t c) const {
    float g[W];
#pragma unroll
    for (int e = 0; e < W; ++e) g[e] = ab * dev::ex2(fmaf(dev::to_float(x.v[e]), kLog2e, -ll)) - smooth;
    if (static_cast<uint64_t>(t - c) < static_cast<uint64_t>(W))  // the target is in this pack (t = -1: never)
#pragma unroll
      for (int e = 0; e < W; ++e)
        if (c + e == t) g[e] -= hit;
    dev::Pack<T, W> out;
#pragma unroll
    for (int e = 0; e < W; ++e) out.v[e] = dev::from_float<T>(g[e]);
    return out;
  }
};

// kGrad: also the row's dlogits for dloss = 1 (coef = 1 / n_valid), in a second pass over the row, written as the
// backward would. kRowInSmem (with kGrad): the first pass copies each row to dynamic shared memory (rows_per_block rows
// of V), and the second pass reads that copy; without it the second pass reads the row again (from L2 when it is
// still there: the block has just read it).
template <class T, class I, int W, bool kGrad, bool kRowInSmem>
__global__ void __launch_bounds__(kMaxRowThreads, kGrad ? kGradMinBlocks : kForwardMinBlocks)
    ce_forward_kernel(const T* __restrict__ logits,   // (N, V)
                      const I* __restrict__ targets,  // (N)
                      float* __restrict__ lse,        // (N)
                      float* __restrict__ row_loss,   // (N)
                      const float* __restrict__ coef,  // (1,): 1 / n_valid; kGrad only
                      T* __restrict__ dlogits,         // (N, V); kGrad only
                      int64_t N, int64_t V, int64_t ignore_index, float ls) {
  static_assert(kGrad || !kRowInSmem, "the shared-memory row copy serves the dlogits pass");
  constexpr int kSteps = kRowInSmem ? kRowSmemUnroll : kUnroll;  // packs loaded before they are folded in
  extern __shared__ __align__(16) unsigned char ce_row_smem[];
  T* const row_copy = reinterpret_cast<T*>(ce_row_smem) + int64_t(threadIdx.y) * V;  // (V): this row group's row
  const int64_t tid = threadIdx.x, tpr = blockDim.x;
  const int64_t packs = V / W;  // W > 1 only when V % W == 0
  for (int64_t row = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; row < N; row += int64_t(gridDim.x) * blockDim.y) {
    const T* xr = logits + row * V;
    // The target and its logit, read up front by the thread that writes the loss (no dependent load at the end);
    // with kGrad every thread needs the target.
    I t = 0;
    float xt = 0.f;
    if (kGrad || tid == 0) t = targets[row];
    if (tid == 0 && target_valid(t, V)) xt = dev::to_float(xr[static_cast<int64_t>(t)]);
    RowStats st;
    const bool smooth = ls > 0.f;
    if constexpr (kRowInSmem && sizeof(dev::Pack<T, W>) == 16) {
      // The row straight into its shared-memory copy by cp.async, kSteps packs a thread a group, kCopyGroupsAhead
      // groups ahead of the fold, which reads back this thread's own packs (so no barrier): about the whole row in
      // flight per block (GPT-2's 100.6 KB row: 13 packs a thread at 512 threads), where loads through registers
      // had kSteps packs a thread (32 KB a block): GPT-2's 16384 x 50304 bf16 logits in 0.918 ms against 0.998 (H200,
      // session 24, run 2: the training step's profile, the same binary with either path).
      constexpr int kCopyGroupsAhead = 2;
      const int64_t group = kSteps * tpr;  // packs a group covers
      auto copy_group = [&](int64_t base) {  // (empty past the row: a commit of nothing)
#pragma unroll
        for (int u = 0; u < kSteps; ++u) {
          const int64_t p = base + tid + u * tpr;
          if (p < packs) dev::stage_pack<T, W>(reinterpret_cast<dev::Pack<T, W>*>(row_copy + p * W), xr + p * W);
        }
        dev::cp_async_commit();
      };
#pragma unroll
      for (int g = 0; g < kCopyGroupsAhead; ++g) copy_group(g * group);
      for (int64_t base = 0; base < packs; base += group) {
        copy_group(base + kCopyGroupsAhead * group);
        dev::cp_async_wait<kCopyGroupsAhead>();  // this step's group has landed
        int n = 0;
        dev::Pack<T, W> v[kSteps];
#pragma unroll
        for (int u = 0; u < kSteps; ++u) {
          const int64_t p = base + tid + u * tpr;
          n += p < packs;
          if (p < packs) v[u] = dev::load_pack<T, W>(row_copy + p * W);
        }
        st.fold(v, n, smooth);
      }
      dev::cp_async_wait<0>();  // (the empty groups past the row)
    } else {
      // kSteps packs a thread at a time, their loads issued back to back and unguarded: past the row's end (the
      // last step) a load reads the row's last pack again and fold() leaves it out. (A guard per load, with the
      // shared-memory copy beside it, had the compiler wait on each load in turn: one load in flight.)
      for (int64_t base = 0; base < packs; base += kSteps * tpr) {
        int n = 0;  // of this step's kSteps packs, the ones in the row (the first n: a compare each, not a division)
#pragma unroll
        for (int u = 0; u < kSteps; ++u) n += base + tid + u * tpr < packs;
        dev::Pack<T, W> v[kSteps];
#pragma unroll
        for (int u = 0; u < kSteps; ++u) {
          const int64_t p = base + tid + u * tpr;
          v[u] = dev::load_pack<T, W>(xr + (p < packs ? p : packs - 1) * W);
        }
        if (kRowInSmem)
#pragma unroll
          for (int u = 0; u < kSteps; ++u)
            if (u < n) dev::store_pack<T, W>(row_copy + (base + tid + u * tpr) * W, v[u]);
        st.fold(v, n, smooth);
      }
    }
    const float M = dev::row_max(st.m);
    const float2 sums = dev::row_sum2(st.m == -INFINITY ? 0.f : st.s * dev::ex2((st.m - M) * kLog2e), st.sx);
    if (kGrad) {
      const GradRow gr(coef[0], 0.f, static_cast<int64_t>(t), ignore_index, V, ls, M + logf(sums.x));
      T* dr = dlogits + row * V;
      // Each thread reads back the packs it copied, so the copy needs no barrier.
      const T* src = kRowInSmem ? row_copy : xr;
      for (int64_t p = tid; p < packs; p += tpr)
        dev::store_pack<T, W>(dr + p * W, gr.pack<T, W>(dev::load_pack<T, W>(src + p * W), p * W));
    }
    if (tid == 0) {
      const float l = M + logf(sums.x);  // (as the dlogits pass's: computed where used, so only thread 0 pays for it)
      lse[row] = l;
      float loss = 0.f;
      if (static_cast<int64_t>(t) != ignore_index) {
        if (!target_valid(t, V)) {
          loss = NAN;
        } else {
          loss = -(1.f - ls) * (xt - l);
          if (ls > 0.f) loss -= ls * (sums.y / static_cast<float>(V) - l);  // ls / V * sum_v logp[v]
        }
      }
      row_loss[row] = loss;
    }
  }
}

// loss = (sum of counted rows' losses) / (number of counted rows), 0 when none; NaN when a target is
// invalid. One block, each thread summing a fixed stride of rows in double, then a fixed tree. With coef (the fused
// forward's 1 / n_valid, from ce_coef_kernel: 0 when no row counts, NaN when a target is invalid) the targets are not
// counted again: loss = coef x the sum of every row's loss (an ignored row's is 0).
// Reads of the single-block kernels below issued before any is used: kFinalUnroll rows a thread a step. With one row
// a step behind a data-dependent branch, each step waited for its load: ce_coef_kernel 15.8 us and ce_finalize_kernel
// 14.2 us for GPT-2's 16384 rows (ncu on the H200, 2026-12-02), 32 memory round trips a thread. The per-thread order of
// the sums is unchanged (rows tid, tid + 512, ... in turn), so the results are the same bits.
constexpr int kFinalUnroll = 8;

// One block's pass over the N rows for the kernels below: f(n, t, l) for each row n in the per-thread order, with
// t = targets[n] and l = row_loss[n] (0 without row_loss), loaded kFinalUnroll rows ahead of their use.
template <class I, class F>
__device__ __forceinline__ void for_each_final_row(const I* __restrict__ targets, const float* __restrict__ row_loss,
                                                   int64_t N, F&& f) {
  for (int64_t base = threadIdx.x; base < N; base += int64_t(kFinalUnroll) * blockDim.x) {
    I t[kFinalUnroll];
    float l[kFinalUnroll];
#pragma unroll
    for (int u = 0; u < kFinalUnroll; ++u) {
      const int64_t n = base + int64_t(u) * blockDim.x;
      t[u] = targets && n < N ? targets[n] : I(0);
      l[u] = row_loss && n < N ? row_loss[n] : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kFinalUnroll; ++u) {
      const int64_t n = base + int64_t(u) * blockDim.x;
      if (n < N) f(t[u], l[u]);
    }
  }
}

// loss = (sum of counted rows' losses) / (number of counted rows), 0 when none; NaN when a target is
// invalid. One block, each thread summing a fixed stride of rows in double, then a fixed tree. With coef (the fused
// forward's 1 / n_valid, from ce_coef_kernel: 0 when no row counts, NaN when a target is invalid) the targets are not
// counted again: loss = coef x the sum of every row's loss (an ignored row's is 0).
template <class I>
__global__ void __launch_bounds__(kFinalThreads)
    ce_finalize_kernel(const I* __restrict__ targets,     // (N)
                       const float* __restrict__ row_loss,  // (N)
                       const float* __restrict__ coef,      // (1,) or null
                       float* __restrict__ loss,            // (1,)
                       int64_t N, int64_t V, int64_t ignore_index) {
  double sum = 0, valid = 0, bad = 0;
  if (coef) {
    for_each_final_row<I>(nullptr, row_loss, N, [&](I, float l) { sum += l; });
  } else {
    for_each_final_row<I>(targets, row_loss, N, [&](I t, float l) {
      if (static_cast<int64_t>(t) == ignore_index) return;
      valid += 1;
      if (!target_valid(t, V)) bad += 1;
      sum += l;
    });
  }
  sum = dev::block_sum<double>(sum);
  if (coef) {
    if (threadIdx.x == 0) loss[0] = static_cast<float>(sum * static_cast<double>(coef[0]));
    return;
  }
  valid = dev::block_sum<double>(valid);
  bad = dev::block_sum<double>(bad);
  if (threadIdx.x == 0) loss[0] = bad > 0 ? NAN : valid > 0 ? static_cast<float>(sum / valid) : 0.f;
}

// coef = dloss / n_valid (0 when no row counts, NaN when a target is invalid).
template <class I>
__global__ void __launch_bounds__(kFinalThreads)
    ce_coef_kernel(const I* __restrict__ targets,  // (N)
                   const float* __restrict__ dloss,  // (1,), or null: dloss_value
                   float dloss_value,
                   float* __restrict__ coef,         // (1,)
                   int64_t N, int64_t V, int64_t ignore_index) {
  double valid = 0, bad = 0;
  for_each_final_row<I>(targets, nullptr, N, [&](I t, float) {
    if (static_cast<int64_t>(t) == ignore_index) return;
    valid += 1;
    if (!target_valid(t, V)) bad += 1;
  });
  valid = dev::block_sum<double>(valid);
  bad = dev::block_sum<double>(bad);
  if (threadIdx.x == 0)
    coef[0] = bad > 0 ? NAN : valid > 0 ? static_cast<float>(static_cast<double>(dloss ? dloss[0] : dloss_value) / valid) : 0.f;
}

template <class T, class I, int W>
__global__ void __launch_bounds__(kMaxRowThreads)
    ce_backward_kernel(const T* __restrict__ logits,    // (N, V)
                       const float* __restrict__ lse,   // (N)
                       const I* __restrict__ targets,   // (N)
                       const float* __restrict__ coef,  // (1,): dloss / n_valid
                       const float* __restrict__ dlse,  // (N) or null
                       T* __restrict__ dlogits,         // (N, V)
                       int64_t N, int64_t V, int64_t ignore_index, float ls) {
  const int64_t tid = threadIdx.x, tpr = blockDim.x;
  const int64_t packs = V / W;
  for (int64_t row = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; row < N; row += int64_t(gridDim.x) * blockDim.y) {
    const GradRow gr(coef[0], dlse ? dlse[row] : 0.f, static_cast<int64_t>(targets[row]), ignore_index, V, ls,
                     lse[row]);
    const T* xr = logits + row * V;
    T* dr = dlogits + row * V;
    for (int64_t p = tid; p < packs; p += tpr)
      dev::store_pack<T, W>(dr + p * W, gr.pack<T, W>(dev::load_pack<T, W>(xr + p * W), p * W));
  }
}

// logits: (N, V); targets: (N); loss: (1,); lse: (N); dlogits: (N, V) for dloss = 1, or null (not wanted)
template <class T, class I>
void ce_forward(const T* logits, const I* targets, float* loss, float* lse, T* dlogits, int64_t N, int64_t V,
                int64_t ignore_index, double ls, Scratch scratch, cudaStream_t stream) {
  if (N > 0) {
    float* row_loss = scratch.take<float>(N, "cross_entropy");
    float* coef = nullptr;  // 1 / n_valid, before the rows' dlogits need it
    if (dlogits) {
      coef = scratch.take<float>(1, "cross_entropy");
      ce_coef_kernel<I><<<1, kFinalThreads, 0, stream>>>(targets, nullptr, 1.f, coef, N, V, ignore_index);
      XF_CUDA_CHECK_LAUNCH("cross_entropy_coef");
    }
    auto run = [&](auto width) {
      constexpr int W = decltype(width)::value;
      const RowPlan plan = plan_ce(V, W);
      const float fls = static_cast<float>(ls);
      const int64_t smem = int64_t(plan.rows_per_block) * V * int64_t(sizeof(T));  // the row copies
      const int64_t smem_cap = std::min(kRowSmemMaxBytes, smem_optin_limit());
      if (dlogits && smem <= smem_cap) {
        const auto kernel = ce_forward_kernel<T, I, W, true, true>;
        static std::atomic<uint64_t> raised{0};  // the devices whose limit this kernel has raised to smem_cap
        allow_smem(kernel, static_cast<size_t>(smem_cap), raised);
        kernel<<<plan.grid(N), plan.block(), smem, stream>>>(logits, targets, lse, row_loss, coef, dlogits, N, V,
                                                             ignore_index, fls);
      } else if (dlogits) {
        ce_forward_kernel<T, I, W, true, false><<<plan.grid(N), plan.block(), 0, stream>>>(
            logits, targets, lse, row_loss, coef, dlogits, N, V, ignore_index, fls);
      } else {
        ce_forward_kernel<T, I, W, false, false><<<plan.grid(N), plan.block(), 0, stream>>>(
            logits, targets, lse, row_loss, nullptr, nullptr, N, V, ignore_index, fls);
      }
      XF_CUDA_CHECK_LAUNCH("cross_entropy_forward");
    };
    constexpr int Vw = vec_width<T>();
    if (V % Vw == 0 && all_aligned16({logits, dlogits}))
      run(std::integral_constant<int, Vw>{});
    else
      run(std::integral_constant<int, 1>{});
    ce_finalize_kernel<I><<<1, kFinalThreads, 0, stream>>>(targets, row_loss, coef, loss, N, V, ignore_index);
  } else {
    ce_finalize_kernel<I><<<1, kFinalThreads, 0, stream>>>(targets, nullptr, nullptr, loss, 0, V, ignore_index);  // 0
  }
  XF_CUDA_CHECK_LAUNCH("cross_entropy_finalize");
}

// logits, dlogits: (N, V); lse: (N); targets: (N); dloss: (1,); dlse: (N) or null
template <class T, class I>
void ce_backward(const T* logits, const float* lse, const I* targets, const float* dloss, const float* dlse,
                 T* dlogits, int64_t N, int64_t V, int64_t ignore_index, double ls, Scratch scratch,
                 cudaStream_t stream) {
  if (N == 0) return;
  float* coef = scratch.take<float>(1, "cross_entropy_backward");
  ce_coef_kernel<I><<<1, kFinalThreads, 0, stream>>>(targets, dloss, 0.f, coef, N, V, ignore_index);
  XF_CUDA_CHECK_LAUNCH("cross_entropy_coef");
  auto run = [&](auto width) {
    constexpr int W = decltype(width)::value;
    const RowPlan plan = plan_ce(V, W);
    ce_backward_kernel<T, I, W><<<plan.grid(N), plan.block(), 0, stream>>>(logits, lse, targets, coef, dlse, dlogits,
                                                                          N, V, ignore_index, static_cast<float>(ls));
    XF_CUDA_CHECK_LAUNCH("cross_entropy_backward");
  };
  constexpr int Vw = vec_width<T>();
  if (V % Vw == 0 && all_aligned16({logits, dlogits}))
    run(std::integral_constant<int, Vw>{});
  else
    run(std::integral_constant<int, 1>{});
}

// in: logits (N, V), targets (N) i32/i64;  out: loss (1,) f32, lse (N) f32, [dlogits (N, V): when defined]
void ce_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in, const std::vector<Tensor>& out) {
  const auto& op = static_cast<const CrossEntropyOp&>(op_);
  CudaContext& cc = context_of(ctx);
  launch_cross_entropy_forward(in[0].dtype(), in[0].raw_data(), in[1].dtype(), in[1].raw_data(), out[0].data<float>(),
                               out[1].data<float>(), out.size() > 2 && out[2].defined() ? out[2].raw_data() : nullptr,
                               in[0].shape()[0], in[0].shape()[1], op.ignore_index, op.label_smoothing, cc.workspace(),
                               cc.workspace_bytes(), cc.stream());
}

// in: logits (N, V), lse (N) f32, targets (N), dloss (1,) f32, [dlse (N) f32];  out: dlogits (N, V)
void ce_backward_kernel_fn(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                           const std::vector<Tensor>& out) {
  const auto& op = static_cast<const CrossEntropyBackwardOp&>(op_);
  CudaContext& cc = context_of(ctx);
  launch_cross_entropy_backward(in[0].dtype(), in[0].raw_data(), in[1].data<float>(), in[2].dtype(), in[2].raw_data(),
                                in[3].data<float>(), op.has_dlse ? in[4].data<float>() : nullptr, out[0].raw_data(),
                                in[0].shape()[0], in[0].shape()[1], op.ignore_index, op.label_smoothing,
                                cc.workspace(), cc.workspace_bytes(), cc.stream());
}

}  // namespace

// ---- plain launchers (ops/cuda/norm_launch.h) --------------------------------------------------------------------

void launch_cross_entropy_forward(DType dtype, const void* logits, DType targets_dtype, const void* targets,
                                  float* loss, float* lse, void* dlogits, int64_t N, int64_t V, int64_t ignore_index,
                                  double label_smoothing, void* workspace, size_t workspace_bytes,
                                  CUstream_st* stream) {
  XF_CUDA_DISPATCH_FLOAT(dtype, "cross_entropy", T, {
    XF_DISPATCH_INDEX(targets_dtype, "cross_entropy", I,
                      ce_forward<T, I>(static_cast<const T*>(logits), static_cast<const I*>(targets), loss, lse,
                                       static_cast<T*>(dlogits), N, V, ignore_index, label_smoothing,
                                       Scratch{workspace, workspace_bytes}, stream));
  });
}

void launch_cross_entropy_backward(DType dtype, const void* logits, const float* lse, DType targets_dtype,
                                   const void* targets, const float* dloss, const float* dlse, void* dlogits,
                                   int64_t N, int64_t V, int64_t ignore_index, double label_smoothing,
                                   void* workspace, size_t workspace_bytes, CUstream_st* stream) {
  XF_CUDA_DISPATCH_FLOAT(dtype, "cross_entropy_backward", T, {
    XF_DISPATCH_INDEX(targets_dtype, "cross_entropy_backward", I,
                      ce_backward<T, I>(static_cast<const T*>(logits), lse, static_cast<const I*>(targets), dloss,
                                        dlse, static_cast<T*>(dlogits), N, V, ignore_index, label_smoothing,
                                        Scratch{workspace, workspace_bytes}, stream));
  });
}

void register_cross_entropy(KernelRegistry& r) {
  r.add("cross_entropy", Device::Kind::cuda, ce_kernel);
  r.add("cross_entropy_backward", Device::Kind::cuda, ce_backward_kernel_fn);
}

}  // namespace xfr::cuda

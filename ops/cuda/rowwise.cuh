// Host-side pieces shared by the row-wise CUDA kernels (ops/cuda/norm.cu, softmax.cu, cross_entropy.cu,
// reduce.cu): how many threads work on one row, and the deterministic two-stage row and column reductions
// (per-chunk partial results in fp32 in the caller's scratch memory, then a final pass in a fixed order; no
// float atomics, so every run gives the same bits).
#pragma once
#include <cstdint>
#include <type_traits>
#include <utility>

#include "ops/cuda/common.cuh"
#include "ops/cuda/device/rows.cuh"

namespace xfr::cuda {

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
__host__ __device__ inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
inline int pow2_ceil(int64_t v) {
  int p = 1;
  while (p < v) p <<= 1;
  return p;
}

// Row kernels run at __launch_bounds__(kMaxRowThreads): 512 threads per block lets the compiler give each
// thread up to 128 registers (64K per SM), room for a row slice held in registers; 1024 would cap it at 64.
constexpr int kMaxRowThreads = 512;
// A warp per row: 4 warps per block (128 threads), small enough that 16 blocks are resident per SM and a
// ragged last block wastes little.
constexpr int kWarpRowsPerBlock = 4;
// Largest grid a row kernel is launched with; kernels loop over rows beyond it (grid-stride).
constexpr int64_t kMaxGrid = int64_t(1) << 30;

// How one row of `cols` elements, moved `width` at a time (packs), is spread over threads.
struct RowPlan {
  int threads = 32;        // threads per row: 32 (a warp) or a multiple of 32 up to kMaxRowThreads (a block)
  int rows_per_block = 1;  // kWarpRowsPerBlock with a warp per row, else 1
  int iters = 0;           // packs per thread: a power of two up to max_iters; 0 = the row does not fit in
                           // registers (the caller's streaming path)
  dim3 block() const { return dim3(static_cast<unsigned>(threads), static_cast<unsigned>(rows_per_block)); }
  unsigned grid(int64_t rows) const {
    return static_cast<unsigned>(std::clamp<int64_t>(ceil_div(rows, rows_per_block), 1, kMaxGrid));
  }
};

// A warp when a row fits in max_iters packs per lane; otherwise the fewest threads (a multiple of 32) that
// hold it with a power-of-two number of packs each.
inline RowPlan plan_rows(int64_t cols, int width, int max_iters) {
  const int64_t packs = ceil_div(cols, width);
  RowPlan p;
  if (packs <= 32 * int64_t(max_iters)) {
    p.threads = 32;
    p.rows_per_block = kWarpRowsPerBlock;
    p.iters = pow2_ceil(ceil_div(packs, 32));
    return p;
  }
  const int64_t min_threads = round_up(ceil_div(packs, max_iters), 32);
  if (min_threads > kMaxRowThreads) return RowPlan{kMaxRowThreads, 1, 0};
  p.iters = pow2_ceil(ceil_div(packs, min_threads));  // <= max_iters, a power of two
  p.threads = static_cast<int>(round_up(ceil_div(packs, p.iters), 32));
  p.rows_per_block = 1;
  return p;
}

// Calls f(std::integral_constant<int, N>{}) for the N of Ns that equals n, among those up to kMax (only those N are
// instantiated); throws for any other n. The row kernels' dispatch on their packs per thread.
template <int kMax, int... Ns, class F>
void with_count(int n, F&& f) {
  bool found = false;
  auto one = [&](auto count) {
    if constexpr (decltype(count)::value <= kMax)
      if (!found && n == decltype(count)::value) {
        found = true;
        f(count);
      }
  };
  (one(std::integral_constant<int, Ns>{}), ...);
  if (!found) throw Error("cuda", str_cat("internal: no row kernel for ", n, " packs per thread"));
}
// N = iters, a power of two up to kMax.
template <int kMax, class F>
void with_iters(int iters, F&& f) {
  static_assert(kMax == 1 || kMax == 2 || kMax == 4 || kMax == 8, "packs per thread: 1, 2, 4 or 8");
  with_count<kMax, 1, 2, 4, 8>(iters, f);
}

// Elements per 16-byte vector of T.
template <class T>
constexpr int vec_width() {
  return 16 / static_cast<int>(sizeof(T));
}

// Whether every pointer is 16-byte aligned (null pointers are absent inputs and do not count).
inline bool all_aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p && !dev::aligned16(p)) return false;
  return true;
}

// Scratch memory handed down to a launcher: `bytes` at `ptr` (the context's workspace, or a benchmark's
// buffer). Each launcher takes what it needs from the front and passes on the rest.
struct Scratch {
  void* ptr = nullptr;
  size_t bytes = 0;
  // Zeroed device counters a launch may use and must leave zeroed (CudaContext::launch_counters), or none: the column
  // reduction then adds its partial rows in a second launch instead of in its last blocks.
  LaunchCounters counters;
  // The first n elements of type U, 256-byte aligned; throws when they do not fit.
  template <class U>
  U* take(int64_t n, const char* op) {
    const uintptr_t base = reinterpret_cast<uintptr_t>(ptr);
    const uintptr_t start = (base + 255) & ~uintptr_t(255);
    const size_t need = static_cast<size_t>(n) * sizeof(U) + (start - base);
    XF_CHECK(need <= bytes, op, "needs ", need, " bytes of CUDA scratch memory, has ", bytes);
    ptr = reinterpret_cast<void*>(start + static_cast<size_t>(n) * sizeof(U));
    bytes -= need;
    return reinterpret_cast<U*>(start);
  }
  // How many elements of U (after alignment) still fit.
  template <class U>
  int64_t room() const {
    return bytes > 256 ? static_cast<int64_t>((bytes - 256) / sizeof(U)) : 0;
  }
};

// ---- deterministic reductions over an axis ---------------------------------------------------------------
// Both reduce x (O, R, K) over R, for sum (y = scale * sum) or max (y = max, y_idx = the index of the
// winner: in_idx[element] when in_idx is given, else its r). A stage reduces chunk s of S chunks of R for
// every (o, k) into y[(o * S + s) * K + k]: with S == 1 that is the result (rounded to TOut once); with
// S > 1 fp32 partial results, reduced again with S == 1.
enum class ReduceMode { sum, max };

// Column reduction (K > 1): a 256-thread block = 32 column packs x 8 row lanes. Each thread accumulates its
// W columns over rows r0 + lane, r0 + lane + 8, ..., then lanes are combined in lane order through shared
// memory. W == vec_width<TIn>() needs K % W == 0 and a 16-byte aligned x. A thread issues the loads of kUnroll
// of its rows before adding them (in row order: the same sums, bit for bit, as one row at a time), so that
// kUnroll 16-byte loads are in flight per thread rather than one: a chunk of 64 rows is 8 rows a lane, one load's
// DRAM latency (~1 us) per row when they are issued one at a time.
constexpr int kColLanes = 8;  // 8 row lanes x 32 packs = 256 threads: one row of a pack read per lane per step
constexpr int kColUnroll = 4;  // rows a lane loads before adding: 4 x 16 bytes in flight, 16 registers of data

// Shared memory of a column unit: the lanes' partial sums (and arg-max indices), for up to 32 packs of 8 columns.
// 24 KB a block (sums carry the unused index array too): 8 resident 256-thread blocks still fit an SM's 228 KB.
struct ColumnSmem {
  float v[kColLanes][32 * 8];
  int64_t i[kColLanes][32 * 8];  // max only
};

// A pack of x at p through L2 only (ld.global.cg): rows other blocks of the same launch wrote (the finish below).
template <class T, int W>
__device__ __forceinline__ dev::Pack<T, W> load_pack_l2(const T* p) {
  static_assert(sizeof(T) * W == 16 || W == 1, "16-byte packs or scalars");
  dev::Pack<T, W> r;
  if constexpr (W == 1) {
    r.v[0] = __ldcg(p);
  } else {
    const uint4 u = __ldcg(reinterpret_cast<const uint4*>(p));
    static_assert(sizeof(r) == sizeof(u), "a 16-byte pack");
    r = *reinterpret_cast<const dev::Pack<T, W>*>(&u);
  }
  return r;
}

// One unit of the column reduction: columns [cb * 32 W, (cb + 1) * 32 W) of chunk s (of S) of slice o, x (O, R, K) ->
// y_row[c] (and y_idx_row[c]): the caller points y_row at the unit's output row (stage: y + (o * S + s) * K).
// Called by every thread of a (32, kColLanes) block; ends with the block in step. kL2: x is read through L2 only
// (load_pack_l2).
template <class TIn, class TOut, int W, ReduceMode kMode, int kUnroll, bool kL2 = false>
__device__ __forceinline__ void column_reduce_unit(const TIn* __restrict__ x, const int64_t* __restrict__ in_idx,
                                                   TOut* __restrict__ y_row, int64_t* __restrict__ y_idx_row,
                                                   int64_t o, int64_t s, int64_t cb, int64_t R, int64_t K, int64_t S,
                                                   float scale, ColumnSmem& sm) {
  static_assert(W <= 8, "ColumnSmem holds 32 packs of at most 8 columns");
  constexpr bool kMax = kMode == ReduceMode::max;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t r0 = R * s / S, r1 = R * (s + 1) / S;
  const int64_t c0 = (cb * 32 + tx) * W;
  float acc[W];
  int64_t at[W];
#pragma unroll
  for (int e = 0; e < W; ++e) {
    acc[e] = kMax ? -INFINITY : 0.f;
    at[e] = dev::kNoIndex;
  }
  // Folds row r's pack p (at element offset off) into acc / at.
  const auto take = [&](const dev::Pack<TIn, W>& p, int64_t r, int64_t off) {
#pragma unroll
    for (int e = 0; e < W; ++e) {
      const float v = dev::to_float(p.v[e]);
      if constexpr (kMax) {
        const int64_t i = in_idx ? in_idx[off + e] : r;
        if (dev::beats(v, i, acc[e], at[e])) {
          acc[e] = v;
          at[e] = i;
        }
      } else {
        acc[e] += v;
      }
    }
  };
  const auto load = [&](int64_t off) {
    if constexpr (kL2) return load_pack_l2<TIn, W>(x + off);
    else return dev::load_pack<TIn, W>(x + off);
  };
  if (c0 < K) {
    int64_t r = r0 + ty;
    for (; r + (kUnroll - 1) * kColLanes < r1; r += kUnroll * kColLanes) {
      dev::Pack<TIn, W> p[kUnroll];
#pragma unroll
      for (int j = 0; j < kUnroll; ++j) p[j] = load((o * R + r + j * kColLanes) * K + c0);
#pragma unroll
      for (int j = 0; j < kUnroll; ++j) take(p[j], r + j * kColLanes, (o * R + r + j * kColLanes) * K + c0);
    }
    for (; r < r1; r += kColLanes) {
      const int64_t off = (o * R + r) * K + c0;
      take(load(off), r, off);
    }
  }
#pragma unroll
  for (int e = 0; e < W; ++e) {
    sm.v[ty][tx * W + e] = acc[e];
    if constexpr (kMax) sm.i[ty][tx * W + e] = at[e];
  }
  __syncthreads();
  if (ty == 0 && c0 < K) {
#pragma unroll
    for (int e = 0; e < W; ++e) {
      float a = sm.v[0][tx * W + e];
      int64_t ai = kMax ? sm.i[0][tx * W + e] : 0;
      for (int l = 1; l < kColLanes; ++l) {
        if constexpr (kMax) {
          if (dev::beats(sm.v[l][tx * W + e], sm.i[l][tx * W + e], a, ai)) {
            a = sm.v[l][tx * W + e];
            ai = sm.i[l][tx * W + e];
          }
        } else {
          a += sm.v[l][tx * W + e];
        }
      }
      y_row[c0 + e] = dev::from_float<TOut>(kMax ? a : a * scale);
      if constexpr (kMax) y_idx_row[c0 + e] = ai;
    }
  }
  __syncthreads();  // sm is rewritten by the next unit
}

// The finish of a two-stage sum in the stage-1 kernel itself (one launch instead of two): a block that wrote its
// chunk's fp32 partial row for (o, cb) counts itself in counters[o * col_blocks + cb] (after a fence that makes the
// row visible); the block that counts last adds the S partial rows of those columns, exactly as the second stage's
// launch would (the same units: 8 lanes over the rows, combined in lane order), so the result has the same bits, and
// sets the counter back to 0 for the next launch. counters: zeroed device memory (CudaContext::launch_counters).
struct ColumnFinish {
  static constexpr int kMaxSlices = 4;
  void* y = nullptr;                     // (O, K) in the final dtype, unless slices says otherwise
  void* slices[kMaxSlices] = {};         // with O <= kMaxSlices: slice o's (K) result at slices[o] (y unused)
  float scale = 1.f;                     // the final sums' factor (the partial rows are plain sums)
  unsigned* counters = nullptr;          // (O * col_blocks), zero between launches; null: no finish (a second launch)
  template <class T>
  __device__ T* row(int64_t o, int64_t K) const {
    return slices[0] ? static_cast<T*>(slices[o]) : static_cast<T*>(y) + o * K;
  }
};

// Column reduction (K > 1), a (32, kColLanes) block per unit (o, s, cb); with `finish` (sum only, TOut float: stage 1 of
// two) also the second stage, by the last block of each (o, cb).
template <class TIn, class TOut, int W, ReduceMode kMode, int kUnroll = kColUnroll, class TFinal = float>
__global__ void __launch_bounds__(32 * kColLanes)
    column_reduce_kernel(const TIn* __restrict__ x,          // (O, R, K)
                         const int64_t* __restrict__ in_idx,  // (O, R, K) or null
                         TOut* __restrict__ y,                // (O, S, K)
                         int64_t* __restrict__ y_idx,         // (O, S, K) (max only)
                         int64_t O, int64_t R, int64_t K, int64_t S, float scale, ColumnFinish finish = {}) {
  __shared__ ColumnSmem sm;
  __shared__ bool last;
  const int64_t col_blocks = ceil_div(K, 32 * W), units = col_blocks * S * O;
  for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
    const int64_t cb = u % col_blocks, s = (u / col_blocks) % S, o = u / (col_blocks * S);
    column_reduce_unit<TIn, TOut, W, kMode, kUnroll>(x, in_idx, y + (o * S + s) * K,
                                                     y_idx ? y_idx + (o * S + s) * K : nullptr, o, s, cb, R, K, S,
                                                     scale, sm);
    if constexpr (kMode == ReduceMode::sum && std::is_same_v<TOut, float>) {
      if (finish.counters) {
        unsigned* counter = finish.counters + o * col_blocks + cb;
        __threadfence();  // this block's partial row, visible to the block that finishes
        __syncthreads();  // (every writer's fence before the count)
        if (threadIdx.x == 0 && threadIdx.y == 0) last = atomicAdd(counter, 1u) == static_cast<unsigned>(S - 1);
        __syncthreads();
        if (last) {
          __threadfence();  // the other blocks' rows, read after their counts
          // The second stage's units over these columns: 32 W columns here, 32 x 4 (fp32 packs) or 32 a unit there.
          constexpr int W2 = 4;
          const bool packed = K % W2 == 0;
          const int64_t c_begin = cb * 32 * W, c_end = c_begin + 32 * W < K ? c_begin + 32 * W : K;
          const int64_t width = packed ? 32 * W2 : 32;
          TFinal* out = finish.template row<TFinal>(o, K);
          for (int64_t c = c_begin; c < c_end; c += width) {
            if (packed)
              column_reduce_unit<float, TFinal, W2, ReduceMode::sum, kColUnroll, true>(
                  y, nullptr, out, nullptr, o, 0, c / width, S, K, 1, finish.scale, sm);
            else
              column_reduce_unit<float, TFinal, 1, ReduceMode::sum, kColUnroll, true>(
                  y, nullptr, out, nullptr, o, 0, c / width, S, K, 1, finish.scale, sm);
          }
          if (threadIdx.x == 0 && threadIdx.y == 0) *counter = 0;
        }
      }
    }
  }
}

// Row reduction (K == 1): one warp per (o, s), 8 warps per 256-thread block. Lanes take packs
// lane, lane + 32, ... of the chunk, then combine through the warp's shuffle tree. W ==
// vec_width<TIn>() needs R % W == 0 and a 16-byte aligned x (chunk bounds are then whole packs).
constexpr int kRowWarpsPerBlock = 8;  // 256 threads: the usual block size for memory-bound kernels

template <class TIn, class TOut, int W, ReduceMode kMode>
__global__ void __launch_bounds__(32 * kRowWarpsPerBlock)
    row_reduce_kernel(const TIn* __restrict__ x,          // (O, R)
                      const int64_t* __restrict__ in_idx,  // (O, R) or null
                      TOut* __restrict__ y,                // (O, S)
                      int64_t* __restrict__ y_idx,         // (O, S) (max only)
                      int64_t O, int64_t R, int64_t S, float scale) {
  constexpr bool kMax = kMode == ReduceMode::max;
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * kRowWarpsPerBlock, units = O * S;
  const int64_t packs = R / W;  // W > 1 only when R % W == 0
  for (int64_t u = int64_t(blockIdx.x) * kRowWarpsPerBlock + (threadIdx.x >> 5); u < units; u += warps) {
    const int64_t o = u / S, s = u % S;
    const int64_t p0 = packs * s / S, p1 = packs * (s + 1) / S;
    float acc = kMax ? -INFINITY : 0.f;
    int64_t at = dev::kNoIndex;
    for (int64_t p = p0 + lane; p < p1; p += 32) {
      const int64_t off = o * R + p * W;
      const dev::Pack<TIn, W> v = dev::load_pack<TIn, W>(x + off);
#pragma unroll
      for (int e = 0; e < W; ++e) {
        const float f = dev::to_float(v.v[e]);
        if constexpr (kMax) {
          const int64_t i = in_idx ? in_idx[off + e] : p * W + e;
          if (dev::beats(f, i, acc, at)) {
            acc = f;
            at = i;
          }
        } else {
          acc += f;
        }
      }
    }
    if constexpr (kMax) {
      dev::warp_argmax(acc, at);
    } else {
      acc = dev::warp_sum(acc);
    }
    if (lane == 0) {
      y[o * S + s] = dev::from_float<TOut>(kMax ? acc : acc * scale);
      if constexpr (kMax) y_idx[o * S + s] = at;
    }
  }
}

// Blocks that keep an H100/H200 busy with 256-thread blocks: 132 SMs x 8 resident blocks ~ 1024.
constexpr int64_t kTargetBlocks = 1024;
// Blocks a column reduction's chunks aim at: about 3 per SM. The column_reduce lab (H200, session 21 run 2, stage 1 of
// 16384 x 768 and 16384 x 3072 bf16 over S chunks) read 6.5 us at 384 blocks against 7.6 at 768 and 9.5 at 96 for
// 768 columns, and 28.6 us at 384 against 31-32 at 768-3072 for 3072; fewer chunks are also fewer partial rows for
// the finish (or the second launch) to add.
constexpr int64_t kColumnTargetBlocks = 384;
constexpr int64_t kMaxFinishChunks = 64;
// A column chunk has at least 64 rows (8 per lane), so its partial row (K floats) is at most 1/64 of the
// rows it reduces.
constexpr int64_t kMinColumnChunk = 64;
// A row chunk has at least 2048 elements (64 per lane), so a partial result is 1/2048 of its input.
constexpr int64_t kMinRowChunk = 2048;

template <class TIn, class TOut, int W, ReduceMode kMode>
void launch_reduce_stage(const TIn* x, const int64_t* in_idx, TOut* y, int64_t* y_idx, int64_t O, int64_t R,
                         int64_t K, int64_t S, float scale, cudaStream_t stream) {
  if (K == 1) {
    const int64_t blocks = std::clamp<int64_t>(ceil_div(O * S, kRowWarpsPerBlock), 1, kMaxGrid);
    row_reduce_kernel<TIn, TOut, W, kMode>
        <<<static_cast<unsigned>(blocks), 32 * kRowWarpsPerBlock, 0, stream>>>(x, in_idx, y, y_idx, O, R, S, scale);
    XF_CUDA_CHECK_LAUNCH("row_reduce");
  } else {
    const int64_t blocks = std::clamp<int64_t>(ceil_div(K, 32 * W) * S * O, 1, kMaxGrid);
    column_reduce_kernel<TIn, TOut, W, kMode><<<static_cast<unsigned>(blocks), dim3(32, kColLanes), 0, stream>>>(
        x, in_idx, y, y_idx, O, R, K, S, scale);
    XF_CUDA_CHECK_LAUNCH("column_reduce");
  }
}

// Picks the pack width for x (O, R, K): 16-byte vectors when every row of a pack stays aligned.
template <class TIn, class TOut, ReduceMode kMode>
void launch_reduce_stage_any_width(const TIn* x, const int64_t* in_idx, TOut* y, int64_t* y_idx, int64_t O,
                                   int64_t R, int64_t K, int64_t S, float scale, cudaStream_t stream) {
  constexpr int V = vec_width<TIn>();
  const int64_t inner = K == 1 ? R : K;  // the contiguous extent a pack must divide
  if (inner % V == 0 && dev::aligned16(x))
    launch_reduce_stage<TIn, TOut, V, kMode>(x, in_idx, y, y_idx, O, R, K, S, scale, stream);
  else
    launch_reduce_stage<TIn, TOut, 1, kMode>(x, in_idx, y, y_idx, O, R, K, S, scale, stream);
}

// Chunks of R for a column reduction of x (O, R, K) (K > 1) with per_partial bytes a partial element: enough units for
// kColumnTargetBlocks blocks, at least kMinColumnChunk rows each, at most kMaxFinishChunks when the last blocks add
// the partial rows (with_finish), and no more partial rows than the scratch memory holds. 1: no split.
inline int64_t column_chunks(int64_t O, int64_t R, int64_t K, int W, int64_t per_partial, bool with_finish,
                             const Scratch& scratch) {
  int64_t S = std::min(ceil_div(kColumnTargetBlocks, ceil_div(K, 32 * W) * O), R / kMinColumnChunk);
  // With the finish in the last blocks, at most kMaxFinishChunks partial rows: the finishing block adds them for 32 x
  // 16 bytes of columns while the rest of the GPU idles (lab, session 21 run 3: 16384 x 768 bf16 at S = 128 read
  // 10.9 us in one launch, 10.2 in two, whose second stage spreads those rows over twice the blocks).
  if (with_finish) S = std::min(S, kMaxFinishChunks);
  // Fewer chunks when the scratch memory is small (512 bytes: the alignment of the two partial arrays).
  const int64_t usable = scratch.bytes > 512 ? static_cast<int64_t>(scratch.bytes - 512) : 0;
  return std::max<int64_t>(1, std::min(S, usable / (O * K * per_partial)));
}

// Whether a column sum of x (O, R, K) can add its partial rows in its own last blocks: counters for every column range.
template <class TIn>
bool column_finish_fits(const TIn* x, int64_t O, int64_t K, const Scratch& scratch) {
  constexpr int V = vec_width<TIn>();
  const int W = K % V == 0 && dev::aligned16(x) ? V : 1;
  return K > 1 && scratch.counters.words && O * ceil_div(K, 32 * W) <= scratch.counters.n;
}

// The column sum of x (O, R, K) over S > 1 chunks in one launch: the chunks' fp32 partial rows into part (O, S, K),
// added by the last block of each column range into finish's outputs (needs column_finish_fits).
template <class TIn, class TOut>
void launch_column_sum_with_finish(const TIn* x, float* part, int64_t O, int64_t R, int64_t K, int64_t S,
                                   const ColumnFinish& finish, cudaStream_t stream) {
  constexpr int V = vec_width<TIn>();
  const int W = K % V == 0 && dev::aligned16(x) ? V : 1;
  const int64_t blocks = std::clamp<int64_t>(ceil_div(K, 32 * W) * S * O, 1, kMaxGrid);
  if (W == V)
    column_reduce_kernel<TIn, float, V, ReduceMode::sum, kColUnroll, TOut>
        <<<static_cast<unsigned>(blocks), dim3(32, kColLanes), 0, stream>>>(x, nullptr, part, nullptr, O, R, K, S, 1.f,
                                                                            finish);
  else
    column_reduce_kernel<TIn, float, 1, ReduceMode::sum, kColUnroll, TOut>
        <<<static_cast<unsigned>(blocks), dim3(32, kColLanes), 0, stream>>>(x, nullptr, part, nullptr, O, R, K, S, 1.f,
                                                                            finish);
  XF_CUDA_CHECK_LAUNCH("column_reduce (with its finish)");
}

// y (O, K) = scale * sum over R of x (O, R, K), or (max) y = max, y_idx = the arg-max (r, or in_idx's entry).
// Splits R into chunks when (O, K) alone would leave the GPU idle; the chunk results (fp32) live in
// `scratch` (fewer chunks when it is small). Deterministic: the split depends only on the sizes. A column sum with
// scratch.counters adds the chunks' rows in its own last blocks (ColumnFinish), the same bits as a second launch.
template <class TIn, class TOut, ReduceMode kMode>
void reduce_axis(const TIn* x,          // (O, R, K)
                 const int64_t* in_idx,  // (O, R, K) or null
                 TOut* y,                // (O, K)
                 int64_t* y_idx,         // (O, K), max only
                 int64_t O, int64_t R, int64_t K, float scale, Scratch scratch, cudaStream_t stream) {
  if (O * K == 0) return;
  const int64_t per_partial = sizeof(float) + (kMode == ReduceMode::max ? sizeof(int64_t) : 0);
  const bool finish = kMode == ReduceMode::sum && column_finish_fits(x, O, K, scratch);
  int64_t S = 1;
  if (K == 1) {
    const int64_t usable = scratch.bytes > 512 ? static_cast<int64_t>(scratch.bytes - 512) : 0;
    S = std::min({ceil_div(kTargetBlocks * kRowWarpsPerBlock, O), R / kMinRowChunk, usable / (O * per_partial)});
  } else {
    S = column_chunks(O, R, K, vec_width<TIn>(), per_partial, finish, scratch);
  }
  if (S <= 1) {
    launch_reduce_stage_any_width<TIn, TOut, kMode>(x, in_idx, y, y_idx, O, R, K, 1, scale, stream);
    return;
  }
  float* part = scratch.take<float>(O * S * K, "reduce");
  int64_t* part_idx = kMode == ReduceMode::max ? scratch.take<int64_t>(O * S * K, "reduce") : nullptr;
  if (finish) {  // the last block of each column range adds the partial rows: one launch instead of two
    ColumnFinish f;
    f.y = y;
    f.scale = scale;
    f.counters = scratch.counters.words;
    launch_column_sum_with_finish<TIn, TOut>(x, part, O, R, K, S, f, stream);
    return;
  }
  launch_reduce_stage_any_width<TIn, float, kMode>(x, in_idx, part, part_idx, O, R, K, S, 1.f, stream);
  launch_reduce_stage_any_width<float, TOut, kMode>(part, part_idx, y, y_idx, O, S, K, 1, scale, stream);
}

// ys[o] (K) = the sum over R of slice o of x (O, R, K), each slice's result a tensor of its own (a norm backward's
// dgamma, dbeta and dx sum from one array of partial rows), O <= ColumnFinish::kMaxSlices. With counters, one launch
// for all the slices; else reduce_axis per slice. Deterministic: the chunks depend only on the sizes.
template <class TIn, class TOut>
void sum_columns_to(const TIn* x, TOut* const* ys, int64_t O, int64_t R, int64_t K, Scratch scratch,
                    cudaStream_t stream) {
  XF_CHECK(O >= 1 && O <= ColumnFinish::kMaxSlices, "reduce", "sum_columns_to takes 1 to ",
           int(ColumnFinish::kMaxSlices), " slices, got ", O);
  if (K == 0) return;
  if (column_finish_fits(x, O, K, scratch)) {
    const int64_t S = column_chunks(O, R, K, vec_width<TIn>(), sizeof(float), true, scratch);
    if (S > 1) {
      ColumnFinish f;
      for (int64_t o = 0; o < O; ++o) f.slices[o] = ys[o];
      f.counters = scratch.counters.words;
      launch_column_sum_with_finish<TIn, TOut>(x, scratch.take<float>(O * S * K, "reduce"), O, R, K, S, f, stream);
      return;
    }
  }
  for (int64_t o = 0; o < O; ++o)
    reduce_axis<TIn, TOut, ReduceMode::sum>(x + o * R * K, nullptr, ys[o], nullptr, 1, R, K, 1.f, scratch, stream);
}

}  // namespace xfr::cuda

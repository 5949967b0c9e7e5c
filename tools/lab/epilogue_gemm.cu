// Kernel lab: persistent Hopper GEMMs with GPT-2's MLP epilogues, against cuBLASLt's fused epilogues at
// GPT-2 124M's MLP shapes (M = 16 x 1024 tokens, K = 768, N = 3072), bf16 with fp32 accumulation:
//   gelu   the fc layer's forward: pre = x W^T + b (aux, kept for the backward) and y = gelu_tanh(pre), W (N, K)
//   dgelu  the fc layer's input gradient: dpre = (dy W2) * gelu_tanh'(pre), W2 (K, N) row-major (matmul_dgelu)
// Question: cuBLASLt runs these at 470-500 TFLOP/s (GPT-2 step profile, session 22: linear 619 TFLOP/s over the four
// forward GEMMs, matmul_dgelu 494) against ~680 for the plain GEMM of the same shape: its epilogue (two 100 MB writes,
// or a 100 MB read and a write, per call) is not hidden behind the math. Does a persistent kernel do better?
// Two kernels, each with the variants gelu, dgelu, plain (the bare product, one store) and sink (no output: the main
// loop alone); docs/benchmarks.md (sessions 22 and 23) has their figures.
// gemm_pingpong: a CTA of 3 warpgroups, persistent over 64 x 256 output tiles (tile j of the CTA's list
// goes to consumer j % 2). Warpgroup 0's first thread loads each tile's 64-wide K blocks with TMA (A 64 x 64, B 256 x
// 64 K-major or 4 boxes of 64 x 64 MN-major, 128-byte swizzle) into a ring of kStages stages, filled in the order the
// consumers use them; a consumer waits for its stage, issues the block's 4 m64n256k16 wgmmas, and frees the previous
// block's stage once its group is done. The epilogue works from the accumulator registers: bias + GELU (two bf16x2
// stores per pair of columns) or the GELU derivative of the loaded pre-activation (a bf16x2 load and a store).
// gemm_coop<Epi, BN>: both consumers on one 128 x BN tile (BN 256, or 192 with two output buffers a consumer), the
// epilogue through shared memory and TMA stores (see there, with what session 23 tried against its epilogue's cost).
// gemm_ws<Epi>: gemm_coop's main loop with the epilogue in warps of its own beside the next tile's main loop (session
// 24, after ncu found no bandwidth limit in the epilogue kernels).
// Checks: each variant's outputs against cuBLASLt's (the same operands) within 2 bf16 ulps of |ref| + 1e-2 (both sum
// in fp32 in different orders; GELU and its derivative as each computes them); outputs poisoned (NaN) first.
// Timing: lab::time_us (median of batches of back-to-back calls), TFLOP/s = 2 M N K / t.
//   xfrun_lab_epilogue_gemm [M]
#define LAB_NAME "lab epilogue_gemm"
#include "tools/lab/lab_cuda.h"  // LAB_CHECK, lab::time_us

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "ops/cuda/device/activation.cuh"
#include "ops/cuda/device/sm90/ptx.cuh"
#include "ops/cuda/device/sm90/wgmma.cuh"
#include "ops/cuda/gemm.h"
#include "runtime/cuda/context.h"
#include "runtime/tensor.h"
#include "tools/lab/attention_wgmma_host.h"  // lab_host: the device check, the hang record, tensor maps, case_error
#include "tools/lab/lab_tensors.h"

using namespace xfr;
using namespace xfr::cuda::sm90;
using xfr::lab::random_bf16;

namespace {

constexpr int kBM = 64;                            // rows of a consumer's tile: one m64 wgmma
constexpr int kBN = 256;                           // columns: wgmma's widest N (128 accumulator registers a thread)
constexpr int kBK = 64;                            // K per stage: one 128-byte swizzle row of bf16
constexpr int kABytes = kBM * kBK * 2;             // 8 KB
constexpr int kBBytes = kBN * kBK * 2;             // 32 KB
constexpr int kStageBytes = kABytes + kBBytes;     // 40 KB
constexpr int kStages = 5;                         // 200 KB of the 227 KB an SM offers one CTA
constexpr int kThreads = 384;                      // producer warpgroup + 2 consumers
constexpr int kSmemBytes = kStages * kStageBytes + 1024 + 2 * kStages * 8;  // + alignment + barriers

// gelu, dgelu: the two epilogues above; plain: out = acc (one bf16 store, no bias: the store's cost); sink: no output
// but a conditional store of the accumulators' sum (the main loop alone).
enum class Epi { gelu, dgelu, plain, sink };

struct Args {
  CUtensorMap a, b;                  // A (M, K) K-major; B (N, K) K-major (gelu) or (K, N) MN-major (dgelu)
  const __nv_bfloat16* bias;         // (N) (gelu)
  __nv_bfloat16* out;                // (M, N): y (gelu) or dpre (dgelu)
  __nv_bfloat16* aux;                // (M, N): pre written (gelu) or read (dgelu)
  int M, N, K;
};

// The producer of both kernels (one thread): for the CTA's tiles (blockIdx.x, + gridDim.x, ...) of bm x kBN, each
// 64-wide K block into the next of kStagesN stages (stage_bytes apart at base: A bm x 64 at the stage's start, B after
// a_bytes: one 256-row box K-major, or 4 boxes of 64 n x 64 k MN-major for dgelu), once the consumers freed it.
template <Epi kEpi, int kStagesN, int BN = kBN>
__device__ __forceinline__ void produce(const CUtensorMap* a, const CUtensorMap* b, uint32_t base, uint32_t full,
                                        uint32_t empty, int stage_bytes, int a_bytes, int bm, int tiles, int n_tiles,
                                        int kt) {
  int it = 0;
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int m0 = (tile / n_tiles) * bm, n0 = (tile % n_tiles) * BN;
    for (int kb = 0; kb < kt; ++kb, ++it) {
      const int s = it % kStagesN;
      mbar_wait(empty + 8 * s, ((it / kStagesN) & 1) ^ 1);
      const uint32_t st = base + s * stage_bytes;
      mbar_arrive_expect_tx(full + 8 * s, stage_bytes);
      tma_load_2d(st, a, kb * kBK, m0, full + 8 * s);
      if constexpr (kEpi != Epi::dgelu) {
        tma_load_2d(st + a_bytes, b, kb * kBK, n0, full + 8 * s);  // B (N, K): BN rows of 64 k
      } else {
#pragma unroll
        for (int c = 0; c < BN / 64; ++c)  // B (K, N): BN / 64 atoms of 64 n x 64 k rows
          tma_load_2d(st + a_bytes + c * (kBK * 128), b, n0 + 64 * c, kb * kBK, full + 8 * s);
      }
    }
  }
}

// One stage's GEMM of every kernel here: acc (64 x BN) (+)= the 64 rows of A at a (K-major, 64 k) times B at b (K-major
// BN x 64, or for dgelu MN-major: atoms of 64 n 8 KB apart (LBO), 8-row k groups 1024 B apart (SBO), 16 k = 2048 B);
// first: the tile's first stage (its first wgmma overwrites acc).
template <Epi kEpi, int BN>
__device__ __forceinline__ void stage_wgmmas(float (&acc)[BN / 2], uint32_t a, uint32_t b, bool first) {
#pragma unroll
  for (int kk = 0; kk < kBK / 16; ++kk) {
    const uint64_t da = sw128_desc(a + 32 * kk, 16, 1024);
    if constexpr (kEpi != Epi::dgelu)
      wgmma_ss<BN>(acc, da, sw128_desc(b + 32 * kk, 16, 1024), !first || kk > 0);
    else
      wgmma_ss_bmn<BN>(acc, da, sw128_desc(b + 2048 * kk, kBK * 128, 1024), !first || kk > 0);
  }
}

// The stage ring's barriers (full: the producer's TMA bytes; empty: `consumers` arrivals, thread 0 of each consumer).
__device__ __forceinline__ void init_stage_barriers(uint32_t full, uint32_t empty, int stages, int consumers) {
  for (int s = 0; s < stages; ++s) {
    mbar_init(full + 8 * s, 1);
    mbar_init(empty + 8 * s, consumers);
  }
}

template <Epi kEpi>
__global__ void __launch_bounds__(kThreads, 1) gemm_pingpong(const __grid_constant__ Args args) {
#if XF_SM90A_DEVICE
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const uint32_t base = smem_u32(smem);
  const uint32_t full = base + kStages * kStageBytes, empty = full + kStages * 8;
  const int wg = threadIdx.x / 128, t = threadIdx.x % 128;
  const int n_tiles = args.N / kBN, tiles = (args.M / kBM) * n_tiles, kt = args.K / kBK;
  if (threadIdx.x == 0) {
    init_stage_barriers(full, empty, kStages, 1);  // (the consumers take turns: one arrival a stage)
    mbar_init_fence();
  }
  __syncthreads();
  if (wg == 0) {  // the producer
    setmaxnreg_dec<40>();
    if (t == 0) produce<kEpi, kStages>(&args.a, &args.b, base, full, empty, kStageBytes, kABytes, kBM, tiles, n_tiles, kt);
    return;
  }
  setmaxnreg_inc<232>();
  const int consumer = wg - 1, warp = t / 32, lane = t % 32;
  float acc[kBN / 2];
  // Tile j of this CTA's list (tile blockIdx.x + j gridDim.x) is consumer j % 2's; its K blocks are ring
  // iterations j kt .. j kt + kt - 1. The consumers take turns at their main loops (named barriers 1 and 2, the
  // math order: tile j's loop starts once tile j - 1's has issued its last wgmma), so one multiplies while the other
  // runs its epilogue, and no consumer waits on a stage's barrier more than one phase ahead (a parity wait cannot
  // tell phase p from phase p + 2: unordered, consumer 1 took tile 0's stages for tile 1's, 2026-12-01).
  const int my_turn = 1 + consumer, their_turn = 2 - consumer;  // named barrier ids (0 is __syncthreads')
  for (int j = consumer, tile = blockIdx.x + consumer * gridDim.x; tile < tiles; j += 2, tile += 2 * gridDim.x) {
    const int m0 = (tile / n_tiles) * kBM, n0 = (tile % n_tiles) * kBN;
    if (j > 0) named_barrier_sync(my_turn, 256);  // tile j - 1's main loop is done
    int it = j * kt;
    for (int kb = 0; kb < kt; ++kb, ++it) {
      const int s = it % kStages;
      mbar_wait(full + 8 * s, (it / kStages) & 1);
      const uint32_t a = base + s * kStageBytes, b = a + kABytes;
      wgmma_fence();
      stage_wgmmas<kEpi, kBN>(acc, a, b, kb == 0);
      wgmma_commit();
      wgmma_wait<1>();  // the previous block's group is done: its stage is free
      if (kb > 0 && t == 0) mbar_arrive(empty + 8 * ((it - 1) % kStages));
    }
    if (tile + gridDim.x < tiles) named_barrier_arrive(their_turn, 256);  // tile j + 1's loop may start
    wgmma_wait<0>();
    if (t == 0) mbar_arrive(empty + 8 * ((it - 1) % kStages));
    if constexpr (kEpi == Epi::sink) {
      float sum = 0.f;
#pragma unroll
      for (int i = 0; i < kBN / 2; ++i) sum += acc[i];
      if (sum == 1234.5f) args.out[threadIdx.x] = __float2bfloat16(sum);  // (keeps the main loop)
    } else {
      // Epilogue from the registers: element i of the fragment is row 16 warp + lane/4 + 8 ((i/2) % 2), column
      // 8 (i/4) + 2 (lane % 4) + i % 2; pairs (i, i + 1) are adjacent columns (a bf16x2).
#pragma unroll
      for (int i = 0; i < kBN / 2; i += 2) {
        const int row = m0 + 16 * warp + lane / 4 + 8 * ((i / 2) % 2), col = n0 + 8 * (i / 4) + 2 * (lane % 4);
        const int64_t at = int64_t(row) * args.N + col;
        if constexpr (kEpi == Epi::gelu) {
          const float2 b2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(args.bias + col));
          const float p0 = acc[i] + b2.x, p1 = acc[i + 1] + b2.y;
          *reinterpret_cast<__nv_bfloat162*>(args.aux + at) = __floats2bfloat162_rn(p0, p1);
          *reinterpret_cast<__nv_bfloat162*>(args.out + at) =
              __floats2bfloat162_rn(xfr::cuda::dev::ActGeluTanh{}.f(p0), xfr::cuda::dev::ActGeluTanh{}.f(p1));
        } else if constexpr (kEpi == Epi::plain) {
          *reinterpret_cast<__nv_bfloat162*>(args.out + at) = __floats2bfloat162_rn(acc[i], acc[i + 1]);
        } else {
          const float2 p = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(args.aux + at));
          *reinterpret_cast<__nv_bfloat162*>(args.out + at) =
              __floats2bfloat162_rn(acc[i] * xfr::cuda::dev::ActGeluTanh{}.df(p.x),
                                    acc[i + 1] * xfr::cuda::dev::ActGeluTanh{}.df(p.y));
        }
      }
    }
  }
#endif
}

// ---- cooperative: both consumers on one 128 x 256 tile, the epilogue through shared memory and TMA stores -------
// The ping-pong kernel's 64-row tiles reload B for every 64 rows of A (51 FLOP a byte of L2: its main loop alone ran L2
// at 75% of its throughput, 549 TFLOP/s, run 5), and its epilogue stored bf16x2 pairs straight from the fragments.
// Here a CTA's tile is 128 x 256 (consumer c multiplies rows 64c..64c+63 with the shared B stage: 85 FLOP a byte), and
// the epilogue writes the tile as bf16 into a shared-memory buffer in the 128-byte-swizzled layout (4 atoms of 64
// columns per consumer, 32 KB) that TMA stores to global memory, asynchronously: the next tile's main loop runs while
// the stores drain. The dgelu pre-activation comes into the same buffer by TMA, loaded when the tile's main loop
// starts, and is overwritten in place by the result. GELU and its derivative with the hardware tanh (gelu_fast).
// With BN = 192 (128 x 192 tiles) each consumer has two output buffers, so that no epilogue waits for a store issued
// in the same tile: gelu puts pre and y in one each, dgelu and plain alternate them by tile. The question (session 23):
// is the one-buffer epilogue's wait (gelu: for pre's store to have read the buffer before y is written there; dgelu:
// for the previous tile's store before the next pre-activation is loaded) what costs the GELU epilogues 60-75 us a
// call over the main loop? No: run 5 measured gelu 178 and dgelu 174 us against 167 and 169 with one buffer (main
// loop alone 101 against 100). Nor was it the GELU math: moved under the next main loop's wgmmas (a chunk a K block),
// gelu ran 181 and dgelu 172 (run 2). Nor the TMA unit: the consumers storing the buffer themselves (16-byte loads
// and stores, whole 128-byte lines) ran gelu 199, dgelu 176, plain 119 against 112 (run 4); stores straight from the
// fragments, plain 169 (run 1). A 2-CTA cluster multicasting B (a third less L2 traffic) slowed the main loop itself,
// 124 against 98 us (run 3: each stage waits for both CTAs' consumers). What the runs agree on: the cost follows the
// bytes each epilogue moves (100 MB more for gelu's pre or dgelu's pre-activation), not how or when they move.
// 3 stages of 40 KB and 4 buffers of 24 KB: 216 of the 227 KB.
constexpr int kCoopBM = 128;
constexpr int kCoopABytes = kCoopBM * kBK * 2;  // 16 KB
constexpr int kCoopStages = 3;
template <int BN>
struct CoopShape {
  static constexpr int kBBytes = BN * kBK * 2;                 // 32 KB (256) or 24 KB (192)
  static constexpr int kStageBytes = kCoopABytes + kBBytes;    // 48 or 40 KB
  static constexpr int kBuffers = BN == 256 ? 1 : 2;           // per consumer: 256 leaves room for one
  static constexpr int kBufBytes = 64 * BN * 2;                // a consumer's 64 rows: 32 or 24 KB
  static constexpr int kOutBytes = 2 * kBuffers * kBufBytes;   // 64 or 96 KB
  static constexpr int kSmemBytes = kCoopStages * kStageBytes + kOutBytes + 1024 + (2 * kCoopStages + 2) * 8;
  static_assert(kSmemBytes <= 227 * 1024, "an SM's shared memory for one CTA");
};

// gelu_tanh and its derivative with the hardware tanh (tanh.approx.f32, one MUFU op, relative error about 2^-11: an
// eighth of a bf16 ulp) in place of ActGeluTanh's expf and IEEE division (run 6: the cooperative kernel's gelu took
// 262 us against 112 for the same kernel storing the plain product).
__device__ __forceinline__ float tanh_approx(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float gelu_fast(float x) {
  const float u = xfr::cuda::dev::kActSqrt2OverPi * x * (1.f + xfr::cuda::dev::kActGeluTanhCubic * x * x);
  const float hx = 0.5f * x;
  return hx + hx * tanh_approx(u);
}
__device__ __forceinline__ float gelu_fast_grad(float x) {
  const float x2 = x * x;
  const float t = tanh_approx(xfr::cuda::dev::kActSqrt2OverPi * x * (1.f + xfr::cuda::dev::kActGeluTanhCubic * x2));
  const float du = xfr::cuda::dev::kActSqrt2OverPi * (1.f + 3.f * xfr::cuda::dev::kActGeluTanhCubic * x2);
  return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * du;
}

struct CoopArgs {
  CUtensorMap a, b;         // A (M, K) K-major, box 64 x 128; B as Args
  CUtensorMap out, aux;     // (M, N) bf16, box 64 x 64: stored (out; aux for gelu's pre) or loaded (aux for dgelu)
  __nv_bfloat16* out_rows;  // (M, N): out's matrix, for gemm_ws's thread stores
  __nv_bfloat16* aux_rows;  // (M, N): aux's
  const __nv_bfloat16* bias;
  int M, N, K;
};

// One tile's main loop of the cooperative kernels (gemm_coop, gemm_ws): consumer `consumer` (0, 1; t its thread)
// multiplies its 64 rows of the CTA's 128 x BN tile over the kt K blocks of the producer's stages (it: stage uses so
// far, across tiles), releasing each stage once the wgmmas after it are issued and the last one at the end.
template <Epi kEpi, int BN>
__device__ __forceinline__ void coop_main_loop(float (&acc)[BN / 2], uint32_t base, uint32_t full, uint32_t empty,
                                               int consumer, int kt, int& it, int t) {
  using Sh = CoopShape<BN>;
  for (int kb = 0; kb < kt; ++kb, ++it) {
    const int s = it % kCoopStages;
    mbar_wait(full + 8 * s, (it / kCoopStages) & 1);
    const uint32_t a = base + s * Sh::kStageBytes + consumer * (kCoopABytes / 2), b = base + s * Sh::kStageBytes + kCoopABytes;
    wgmma_fence();
    stage_wgmmas<kEpi, BN>(acc, a, b, kb == 0);
    wgmma_commit();
    wgmma_wait<1>();
    if (kb > 0 && t == 0) mbar_arrive(empty + 8 * ((it - 1) % kCoopStages));
  }
  wgmma_wait<0>();
  if (t == 0) mbar_arrive(empty + 8 * ((it - 1) % kCoopStages));
}

// A consumer's pair (i, i + 1) of its 64 x BN fragment in a 64 x BN bf16 buffer of 128-byte-swizzled 64-column atoms
// (8 KB each; the layout TMA reads): row r = 16 warp + lane / 4 + 8 ((i / 2) % 2), columns c, c + 1 with c = 8 (i / 4)
// + 2 (lane % 4), at atom c / 64, row r, 16-byte chunk ((c % 64) / 8) ^ (r % 8). r % 8 = lane / 4 and the chunk
// (i / 4) % 8: everything but lane / 4 is known at compile time. As a per-thread base (frag_row: the buffer's generic
// address, row 16 warp + lane / 4, byte 4 (lane % 4)) plus pair i's offset (frag_offset, x = lane / 4). (One function
// of the buffer, warp, lane and i in their place had ptxas spill 400 bytes in gemm_coop's gelu.)
__device__ __forceinline__ unsigned char* frag_row(unsigned char* buf, int warp, int lane) {
  return buf + (16 * warp + lane / 4) * 128 + (lane % 4) * 4;
}
__device__ __forceinline__ int frag_offset(int i, int x) {
  return (i / 32) * 8192 + ((i / 2) % 2) * 1024 + ((((i / 4) % 8) ^ x) << 4);
}
template <Epi kEpi, int BN = kBN>
__global__ void __launch_bounds__(kThreads, 1) gemm_coop(const __grid_constant__ CoopArgs args) {
#if XF_SM90A_DEVICE
  using Sh = CoopShape<BN>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const uint32_t base = smem_u32(smem), out_base = base + kCoopStages * Sh::kStageBytes;
  const uint32_t full = out_base + Sh::kOutBytes, empty = full + kCoopStages * 8, aux_bar = empty + kCoopStages * 8;
  const int wg = threadIdx.x / 128, t = threadIdx.x % 128;
  const int n_tiles = args.N / BN, tiles = (args.M / kCoopBM) * n_tiles, kt = args.K / kBK;
  if (threadIdx.x == 0) {
    init_stage_barriers(full, empty, kCoopStages, 2);
    mbar_init(aux_bar, 1);
    mbar_init(aux_bar + 8, 1);
    mbar_init_fence();
  }
  __syncthreads();
  if (wg == 0) {  // the producer
    setmaxnreg_dec<40>();
    if (t == 0)
      produce<kEpi, kCoopStages, BN>(&args.a, &args.b, base, full, empty, Sh::kStageBytes, kCoopABytes, kCoopBM, tiles,
                                     n_tiles, kt);
    return;
  }
  setmaxnreg_inc<232>();
  const int consumer = wg - 1, warp = t / 32, lane = t % 32;
  const uint32_t my_bufs = out_base + consumer * Sh::kBuffers * Sh::kBufBytes, my_aux_bar = aux_bar + 8 * consumer;
  float acc[BN / 2];
  int it = 0, local = 0;
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x, ++local) {
    const int m0 = (tile / n_tiles) * kCoopBM, n0 = (tile % n_tiles) * BN, row0 = m0 + 64 * consumer;
    // This tile's buffer: dgelu and plain alternate theirs by tile (one buffer: always the one).
    const int my_buf = Sh::kBuffers == 2 ? (local & 1) : 0;
    const uint32_t tile_buf = my_bufs + my_buf * Sh::kBufBytes;
    if constexpr (kEpi == Epi::dgelu) {  // the pre-activation into the tile's buffer, under the main loop
      if (t == 0) {
        // The buffer's last store has read it: with two buffers that is the one before the previous tile's.
        if constexpr (Sh::kBuffers == 2)
          bulk_wait_read<1>();
        else
          bulk_wait_read<0>();
        mbar_arrive_expect_tx(my_aux_bar, Sh::kBufBytes);
#pragma unroll
        for (int a = 0; a < BN / 64; ++a) tma_load_2d(tile_buf + a * 8192, &args.aux, n0 + 64 * a, row0, my_aux_bar);
      }
    }
    coop_main_loop<kEpi, BN>(acc, base, full, empty, consumer, kt, it, t);
    if constexpr (kEpi == Epi::sink) {
      float sum = 0.f;
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) sum += acc[i];
      if (sum == 1234.5f) *reinterpret_cast<volatile float*>(smem + (tile_buf - base)) = sum;  // (keeps the main loop)
      continue;
    }
    const int x = lane / 4;
    const auto buf = [&](uint32_t which, int i) {
      return reinterpret_cast<__nv_bfloat162*>(frag_row(smem + (which - base), warp, lane) + frag_offset(i, x));
    };
    // Every store but the newest `pending` of this thread's has read its buffer (thread 0 issues them), then all
    // threads may write.
    const auto wait_read = [&](auto pending) {
      if (t == 0) bulk_wait_read<decltype(pending)::value>();
      named_barrier_sync(1 + consumer, 128);
    };
    const auto issue = [&](uint32_t which, const CUtensorMap* map) {  // a buffer to `map` at this consumer's 64 rows
      fence_proxy_async();
      named_barrier_sync(1 + consumer, 128);
      if (t == 0) {
#pragma unroll
        for (int a = 0; a < BN / 64; ++a) tma_store_2d(map, which + a * 8192, n0 + 64 * a, row0);
        bulk_commit();
      }
    };
    if constexpr (kEpi == Epi::gelu) {  // pre into a buffer (aux), gelu(pre) into the other (one buffer: in turn)
      const __nv_bfloat16* const bias_base = args.bias + n0 + 2 * (lane % 4);
      wait_read(std::integral_constant<int, 0>{});  // the previous tile's stores, a main loop ago
#pragma unroll
      for (int i = 0; i < BN / 2; i += 2) {
        const float2 b2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(bias_base + 8 * (i / 4)));
        const float p0 = acc[i] + b2.x, p1 = acc[i + 1] + b2.y;
        *buf(my_bufs, i) = __floats2bfloat162_rn(p0, p1);
        acc[i] = gelu_fast(p0);
        acc[i + 1] = gelu_fast(p1);
      }
      issue(my_bufs, &args.aux);
      const uint32_t y_buf = my_bufs + (Sh::kBuffers - 1) * Sh::kBufBytes;
      if constexpr (Sh::kBuffers == 1) wait_read(std::integral_constant<int, 0>{});  // pre's store, just issued
#pragma unroll
      for (int i = 0; i < BN / 2; i += 2) *buf(y_buf, i) = __floats2bfloat162_rn(acc[i], acc[i + 1]);
      issue(y_buf, &args.out);
    } else if constexpr (kEpi == Epi::plain) {
      wait_read(std::integral_constant<int, Sh::kBuffers - 1>{});  // this buffer's last store (two tiles ago)
#pragma unroll
      for (int i = 0; i < BN / 2; i += 2) *buf(tile_buf, i) = __floats2bfloat162_rn(acc[i], acc[i + 1]);
      issue(tile_buf, &args.out);
    } else {  // dgelu: the pre-activation is in the tile's buffer; the result overwrites it in place
      mbar_wait(my_aux_bar, local & 1);
#pragma unroll
      for (int i = 0; i < BN / 2; i += 2) {
        const float2 p = __bfloat1622float2(*buf(tile_buf, i));
        *buf(tile_buf, i) = __floats2bfloat162_rn(acc[i] * gelu_fast_grad(p.x), acc[i + 1] * gelu_fast_grad(p.y));
      }
      issue(tile_buf, &args.out);
    }
  }
  if (t == 0) bulk_wait<0>();  // the last stores are done before the CTA's shared memory goes
#endif
}

// ---- ws: the cooperative main loop, and an epilogue warpgroup of its own beside it ------------------------------
// Session 24's ncu (gpu_check.sh labncu) had the GELU epilogue kernels, cuBLASLt's and gemm_coop, at 24-31% of DRAM's
// peak throughput and 39-48% of L2's with the SM throughput down to 45-56% (77-85% plain): no bandwidth is the limit,
// the epilogue's latency is, because the consumers that run the main loop run the epilogue too. Here they do no more
// than a plain store's work: at the end of a tile each consumer writes its 64 x 256 fragment as bf16 (gelu: + bias, so
// pre; dgelu and plain: the product) into a 64 KB buffer, arrives on buf_full and goes on to the next tile's main
// loop. The producer warpgroup's warps 1-3 (its warp 0 issues the TMA loads) are the epilogue: they wait on buf_full,
// read the buffer in 16-byte chunks (epilogue warp w: rows w, w + 3, ...; lane l: the row's chunk l, so a warp's
// global accesses are a row's 512 contiguous bytes), release it (buf_empty) and store: gelu pre and gelu(pre), dgelu
// the chunk times gelu'(pre) with pre loaded from global memory, plain the chunk. One buffer: the epilogue has a main
// loop's time (about 9 us a tile) to read it. (A fourth warpgroup would make 512 threads, whose 128 registers a
// thread at compile time cannot hold an m64n256 wgmma's operands: ptxas needs 154.)
// Registers and chunks in flight: WsGemmShape. Shared memory: 3 stages (48 or 40 KB) and the buffer (64 or 48 KB).
// H200 (session 24, runs 5-7; cuBLASLt 148.5 / 141.7 / 100.6 us in run 7): 128 x 256 gelu 205.9-223.6, dgelu
// 328.1-348.5, plain 115.8-116.3; 128 x 192 gelu 172.6, dgelu 218.5, plain 119.9. Every output within tolerance; none
// faster than gemm_coop (168.7 / 174.4 / 111.2). The epilogue warps set the pace: over one K block (the main loop
// nearly gone) gelu took 154-173 us at 128 x 256 (13-15 us a tile, against a main loop's 8.5) and 116.3 at 128 x 192
// (7.5 us a tile against 6.5), and beside the main loop they slow it further (172.6 against max(100, 116)). Three warps
// do the work of gemm_coop's eight consumer warps' epilogue, one warp a sub-partition to hide its latency; dgelu adds
// the pre-activation's loads. The tile's main loop does not leave enough time for it, and more epilogue warps do not
// fit: a fourth warpgroup makes 512 threads, whose 128 registers a thread at compile time cannot hold an m64n256
// wgmma. gelu's y is gelu of the bf16-rounded pre (as a graph that stores pre and then applies GELU), and dgelu
// multiplies the bf16-rounded product (as the CPU oracle of matmul_dgelu does): one more rounding than cuBLASLt's.
constexpr int kWsEpilogueWarps = 3;  // the producer warpgroup's warps 1-3
// Per tile width: registers (the producer warpgroup's, the consumers'; P + 2 C <= 504, the entry's 168 x 3, as
// setmaxnreg moves registers within the CTA's allocation) and the 16-byte chunks an epilogue thread has in flight.
// BN 256: the consumers need gemm_coop's 232 (at 216 and 208 ptxas spilled 120-172 bytes), which leaves the epilogue
// 40 registers and 2 chunks (run 6: its own pace, K = 64, 13.3 us a tile against the main loop's 8.5: the kernel
// waits on it). BN 192: 96 accumulators a consumer thread, so 184 registers and the epilogue 136, 8 chunks.
template <int BN>
struct WsGemmShape {
  static constexpr int kProducerRegs = BN == 256 ? 40 : 136;
  static constexpr int kConsumerRegs = BN == 256 ? 232 : 184;
  static constexpr int kChunkBatch = BN == 256 ? 2 : 8;
  static constexpr int kBufBytes = kCoopBM * BN * 2;                                 // the tile in bf16: 64 or 48 KB
  static constexpr int kChunks = kCoopBM * BN / 8;                                   // its 16-byte chunks
  static constexpr int kChunksPerThread = (kChunks + 32 * kWsEpilogueWarps - 1) / (32 * kWsEpilogueWarps);
  static constexpr int kSmemBytes = kCoopStages * CoopShape<BN>::kStageBytes + kBufBytes + 1024 + (2 * kCoopStages + 2) * 8;
  static_assert(128 * kProducerRegs + 256 * kConsumerRegs <= kThreads * ((65536 / kThreads) & ~7),
                "setmaxnreg moves registers within the CTA's entry allocation");
  static_assert(kSmemBytes <= 227 * 1024, "an SM's shared memory for one CTA");
};

template <Epi kEpi, int BN = kBN>
__global__ void __launch_bounds__(kThreads, 1) gemm_ws(const __grid_constant__ CoopArgs args) {
#if XF_SM90A_DEVICE
  static_assert(kEpi != Epi::sink, "the main loop alone is gemm_coop's sink");
  using Sh = CoopShape<BN>;
  using W = WsGemmShape<BN>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const uint32_t base = smem_u32(smem), buf = base + kCoopStages * Sh::kStageBytes;
  const uint32_t full = buf + W::kBufBytes, empty = full + kCoopStages * 8, buf_full = empty + kCoopStages * 8,
                 buf_empty = buf_full + 8;
  unsigned char* const buf_ptr = smem + (buf - base);
  const int wg = threadIdx.x / 128, t = threadIdx.x % 128, warp = t / 32, lane = t % 32;
  const int n_tiles = args.N / BN, tiles = (args.M / kCoopBM) * n_tiles, kt = args.K / kBK;
  if (threadIdx.x == 0) {
    init_stage_barriers(full, empty, kCoopStages, 2);
    mbar_init(buf_full, 256);                     // every consumer thread, once its part of the tile is in the buffer
    mbar_init(buf_empty, 32 * kWsEpilogueWarps);  // every epilogue thread, once it has read its chunks
    mbar_init_fence();
  }
  __syncthreads();
  if (wg == 0) {  // the producer (warp 0) and the epilogue (warps 1-3)
    setmaxnreg_dec<W::kProducerRegs>();
    if (warp == 0) {
      if (t == 0)
        produce<kEpi, kCoopStages, BN>(&args.a, &args.b, base, full, empty, Sh::kStageBytes, kCoopABytes, kCoopBM,
                                       tiles, n_tiles, kt);
      return;
    }
    // Epilogue thread e (0 .. 95) takes the tile's chunks q = e + 96 k: row q / (BN / 8), chunk q % (BN / 8) of the
    // row, so a warp's accesses are 32 consecutive chunks of global memory; in the buffer, consumer half row / 64,
    // atom chunk / 8, row % 64, 16-byte slot (chunk % 8) ^ (row % 8). Each 8 lanes' chunks are one atom's row: no bank
    // conflict.
    constexpr int kRowChunks = BN / 8, kStep = 32 * kWsEpilogueWarps;
    const int e = t - 32;
    int local = 0;
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x, ++local) {
      const int m0 = (tile / n_tiles) * kCoopBM, n0 = (tile % n_tiles) * BN;
      mbar_wait(buf_full, local & 1);
      for (int k0 = 0; k0 < W::kChunksPerThread; k0 += W::kChunkBatch) {
        uint4 v[W::kChunkBatch], pre[W::kChunkBatch];
#pragma unroll
        for (int b = 0; b < W::kChunkBatch; ++b) {
          const int q = e + kStep * (k0 + b), r = q / kRowChunks, c = q % kRowChunks, rr = r % 64;
          if (q < W::kChunks && k0 + b < W::kChunksPerThread) {
            v[b] = *reinterpret_cast<const uint4*>(buf_ptr + (r / 64) * (W::kBufBytes / 2) + (c / 8) * 8192 +
                                                   rr * 128 + (((c % 8) ^ (rr % 8)) << 4));
            if constexpr (kEpi == Epi::dgelu)
              pre[b] = __ldg(reinterpret_cast<const uint4*>(args.aux_rows + int64_t(m0 + r) * args.N + n0 + 8 * c));
          }
        }
        if (k0 + W::kChunkBatch >= W::kChunksPerThread) mbar_arrive(buf_empty);  // every chunk read: the buffer is free
#pragma unroll
        for (int b = 0; b < W::kChunkBatch; ++b) {
          const int q = e + kStep * (k0 + b), r = q / kRowChunks, c = q % kRowChunks;
          if (q >= W::kChunks || k0 + b >= W::kChunksPerThread) continue;
          const int64_t at = int64_t(m0 + r) * args.N + n0 + 8 * c;
          const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v[b]);
          uint4 o;
          __nv_bfloat162* ho = reinterpret_cast<__nv_bfloat162*>(&o);
          if constexpr (kEpi == Epi::gelu) {
            *reinterpret_cast<uint4*>(args.aux_rows + at) = v[b];  // pre
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const float2 f = __bfloat1622float2(h[i]);
              ho[i] = __floats2bfloat162_rn(gelu_fast(f.x), gelu_fast(f.y));
            }
          } else if constexpr (kEpi == Epi::dgelu) {
            const __nv_bfloat162* hp = reinterpret_cast<const __nv_bfloat162*>(&pre[b]);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const float2 f = __bfloat1622float2(h[i]), p = __bfloat1622float2(hp[i]);
              ho[i] = __floats2bfloat162_rn(f.x * gelu_fast_grad(p.x), f.y * gelu_fast_grad(p.y));
            }
          } else {
            o = v[b];
          }
          *reinterpret_cast<uint4*>(args.out_rows + at) = o;
        }
      }
    }
    return;
  }
  setmaxnreg_inc<W::kConsumerRegs>();
  const int consumer = wg - 1;
  unsigned char* const my_row = frag_row(buf_ptr + consumer * (W::kBufBytes / 2), warp, lane);
  float acc[BN / 2];
  int it = 0, local = 0;
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x, ++local) {
    const int n0 = (tile % n_tiles) * BN;
    coop_main_loop<kEpi, BN>(acc, base, full, empty, consumer, kt, it, t);
    mbar_wait(buf_empty, (local & 1) ^ 1);  // the epilogue has read the tile before (the first wait passes)
    const __nv_bfloat16* const bias_base = args.bias + n0 + 2 * (lane % 4);
#pragma unroll
    for (int i = 0; i < BN / 2; i += 2) {
      float2 b2 = make_float2(0.f, 0.f);
      if constexpr (kEpi == Epi::gelu)
        b2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(bias_base + 8 * (i / 4)));
      *reinterpret_cast<__nv_bfloat162*>(my_row + frag_offset(i, lane / 4)) =
          __floats2bfloat162_rn(acc[i] + b2.x, acc[i + 1] + b2.y);
    }
    mbar_arrive(buf_full);
  }
#endif
}

// A (rows, inner) bf16 matrix's 128-byte-swizzled map with boxes of 64 x box_rows (the shared Hopper lab helper).
CUtensorMap map_of(const Tensor& t, int64_t inner, int64_t rows, int box_rows) {
  return lab_host::make_tensor_map(static_cast<const __nv_bfloat16*>(t.raw_data()), static_cast<uint64_t>(rows),
                                   static_cast<int>(inner), box_rows);
}

// After a case's first launch: the launch and the kernel's completion, an mbarrier timeout or a fault ending the lab
// (status 3, lab_host::case_error) and any other error counted as a failed case.
bool case_ok(const char* what) {
  const std::string e = lab_host::case_error(cudaGetLastError(), what);
  if (!e.empty()) std::printf("%s: %s FAILED: %s\n", LAB_NAME, what, e.c_str());
  return e.empty();
}

double max_rel_err(const Tensor& got, const Tensor& want) {
  const auto g = got.to_host().to_doubles(), w = want.to_host().to_doubles();
  double worst = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    if (!std::isfinite(g[i])) return INFINITY;
    worst = std::max(worst, std::abs(g[i] - w[i]) / (2 * 0x1p-8 * std::abs(w[i]) + 1e-2));
  }
  return worst;  // <= 1: within tolerance
}

}  // namespace

int main(int argc, char** argv) {
  if (const int rc = lab_host::open_sm90_device()) return rc;  // the device line, sm_90a, the hang record
  int sms = 0;
  LAB_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const int M = argc > 1 ? std::atoi(argv[1]) : 16384, K = 768, N = 3072;
  auto ctx = cuda::CudaContext::create(0);
  cudaStream_t s = ctx->stream();
  const Tensor x = random_bf16(ctx.get(), M, K, 1, 1.f), w = random_bf16(ctx.get(), N, K, 2, 0.05f);
  const Tensor bias = random_bf16(ctx.get(), 1, N, 3, 0.5f);
  const Tensor dy = random_bf16(ctx.get(), M, K, 4, 1.f), w2 = random_bf16(ctx.get(), K, N, 5, 0.05f);
  auto empty = [&] { return Tensor::empty({M, N}, DType::bf16, ctx.get()); };
  Tensor y_ref = empty(), pre_ref = empty(), y = empty(), pre = empty(), d_ref = empty(), d = empty();
  const double flop = 2.0 * M * N * K;

  // cuBLASLt's references, timed once: the fused gelu forward (y_ref, pre_ref), the fused dgelu (d_ref, from pre_ref)
  // and the plain GEMM of the forward's operands (y_ref).
  cuda::GemmArgs ref_gelu = cuda::plain_gemm(DType::bf16, false, M, N, K, x.raw_data(), w.raw_data(), y_ref.raw_data());
  ref_gelu.trans_b = true;
  ref_gelu.epilogue = cuda::GemmEpilogue::bias_gelu_tanh;
  ref_gelu.bias = const_cast<void*>(bias.raw_data());
  ref_gelu.aux = pre_ref.raw_data();
  cuda::GemmArgs ref_dgelu = cuda::plain_gemm(DType::bf16, false, M, N, K, dy.raw_data(), w2.raw_data(), d_ref.raw_data());
  ref_dgelu.epilogue = cuda::GemmEpilogue::dgelu;
  ref_dgelu.aux = pre_ref.raw_data();
  cuda::GemmArgs ref_plain = cuda::plain_gemm(DType::bf16, false, M, N, K, x.raw_data(), w.raw_data(), y_ref.raw_data());
  ref_plain.trans_b = true;
  cuda::gemm(*ctx, ref_gelu);  // pre_ref before the dgelu reference reads it
  const double t_ref_gelu = ::lab::time_us(s, [&] { cuda::gemm(*ctx, ref_gelu); });
  const double t_ref_dgelu = ::lab::time_us(s, [&] { cuda::gemm(*ctx, ref_dgelu); });
  const double t_ref_plain = ::lab::time_us(s, [&] { cuda::gemm(*ctx, ref_plain); });
  std::printf("%s: cuBLASLt %d x %d x %d: bias_gelu_tanh+aux %.1f us (%.0f TFLOP/s), dgelu %.1f us (%.0f), plain %.1f "
              "us (%.0f)\n",
              LAB_NAME, M, N, K, t_ref_gelu, flop / t_ref_gelu * 1e-6, t_ref_dgelu, flop / t_ref_dgelu * 1e-6,
              t_ref_plain, flop / t_ref_plain * 1e-6);

  // The ping-pong kernel's arguments: the forward's operands (out y, aux pre), the backward's (out d, aux pre_ref).
  Args pp_fwd{}, pp_bwd{};
  pp_fwd.a = map_of(x, K, M, kBM);
  pp_fwd.b = map_of(w, K, N, kBN);
  pp_fwd.bias = static_cast<const __nv_bfloat16*>(bias.raw_data());
  pp_fwd.out = static_cast<__nv_bfloat16*>(y.raw_data());
  pp_fwd.aux = static_cast<__nv_bfloat16*>(pre.raw_data());
  pp_bwd.a = map_of(dy, K, M, kBM);
  pp_bwd.b = map_of(w2, N, K, kBK);
  pp_bwd.out = static_cast<__nv_bfloat16*>(d.raw_data());
  pp_bwd.aux = static_cast<__nv_bfloat16*>(pre_ref.raw_data());
  pp_fwd.M = pp_bwd.M = M, pp_fwd.N = pp_bwd.N = N, pp_fwd.K = pp_bwd.K = K;
  const int pp_grid = std::min(sms, ((M / kBM) * (N / kBN) + 1) / 2);
  // The cooperative kernel's, for tiles BN wide: the forward's (out y, aux pre) and the backward's (out d, aux pre_ref).
  const auto coop_args = [&](bool backward, int bn) {
    CoopArgs c{};
    c.a = map_of(backward ? dy : x, K, M, kCoopBM);
    c.b = backward ? map_of(w2, N, K, kBK) : map_of(w, K, N, bn);
    c.out = map_of(backward ? d : y, N, M, 64);
    c.aux = map_of(backward ? pre_ref : pre, N, M, 64);
    c.out_rows = static_cast<__nv_bfloat16*>((backward ? d : y).raw_data());
    c.aux_rows = static_cast<__nv_bfloat16*>((backward ? pre_ref : pre).raw_data());
    c.bias = static_cast<const __nv_bfloat16*>(bias.raw_data());
    c.M = M, c.N = N, c.K = K;
    return c;
  };
  const CoopArgs coop_fwd = coop_args(false, 256), coop_bwd = coop_args(true, 256);
  const CoopArgs coop192_fwd = coop_args(false, 192), coop192_bwd = coop_args(true, 192);
  CoopArgs ws_fwd_k64 = coop_fwd, ws192_fwd_k64 = coop192_fwd;
  ws_fwd_k64.K = ws192_fwd_k64.K = kBK;

  using PingPong = void (*)(Args);
  using Coop = void (*)(CoopArgs);
  const auto pingpong = [&](PingPong k, const Args& a) -> std::function<void()> {
    LAB_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
    return [&, k] { k<<<pp_grid, kThreads, kSmemBytes, s>>>(a); };
  };
  // A persistent launch of gemm_coop or gemm_ws (both kThreads threads), one CTA an SM at most, for tiles bn wide.
  const auto coop = [&](Coop k, const CoopArgs& a, int bn, int smem) -> std::function<void()> {
    LAB_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    const int grid = std::min(sms, (M / kCoopBM) * (N / bn));
    return [&, k, grid, smem] { k<<<grid, kThreads, smem, s>>>(a); };
  };
  constexpr int kWs256 = WsGemmShape<256>::kSmemBytes, kWs192 = WsGemmShape<192>::kSmemBytes;
  constexpr int kSmem256 = CoopShape<256>::kSmemBytes, kSmem192 = CoopShape<192>::kSmemBytes;
  struct Case {
    const char* name;
    Epi epi;
    std::function<void()> launch;
  };
  const Case cases[] = {
      {"ping-pong (64 x 256 tiles) gelu", Epi::gelu, pingpong(gemm_pingpong<Epi::gelu>, pp_fwd)},
      {"ping-pong plain", Epi::plain, pingpong(gemm_pingpong<Epi::plain>, pp_fwd)},
      {"ping-pong sink (main loop alone)", Epi::sink, pingpong(gemm_pingpong<Epi::sink>, pp_fwd)},
      {"ping-pong dgelu", Epi::dgelu, pingpong(gemm_pingpong<Epi::dgelu>, pp_bwd)},
      {"coop (128 x 256 tiles) gelu", Epi::gelu, coop(gemm_coop<Epi::gelu>, coop_fwd, 256, kSmem256)},
      {"coop dgelu", Epi::dgelu, coop(gemm_coop<Epi::dgelu>, coop_bwd, 256, kSmem256)},
      {"coop plain", Epi::plain, coop(gemm_coop<Epi::plain>, coop_fwd, 256, kSmem256)},
      {"coop sink (main loop alone)", Epi::sink, coop(gemm_coop<Epi::sink>, coop_fwd, 256, kSmem256)},
      {"coop 128 x 192, two buffers: gelu", Epi::gelu, coop(gemm_coop<Epi::gelu, 192>, coop192_fwd, 192, kSmem192)},
      {"coop 128 x 192 dgelu", Epi::dgelu, coop(gemm_coop<Epi::dgelu, 192>, coop192_bwd, 192, kSmem192)},
      {"coop 128 x 192 plain", Epi::plain, coop(gemm_coop<Epi::plain, 192>, coop192_fwd, 192, kSmem192)},
      {"coop 128 x 192 sink (main loop alone)", Epi::sink, coop(gemm_coop<Epi::sink, 192>, coop192_fwd, 192, kSmem192)},
      {"ws (128 x 256, epilogue warps) gelu", Epi::gelu, coop(gemm_ws<Epi::gelu>, coop_fwd, 256, kWs256)},
      {"ws dgelu", Epi::dgelu, coop(gemm_ws<Epi::dgelu>, coop_bwd, 256, kWs256)},
      {"ws plain", Epi::plain, coop(gemm_ws<Epi::plain>, coop_fwd, 256, kWs256)},
      {"ws 128 x 192 gelu", Epi::gelu, coop(gemm_ws<Epi::gelu, 192>, coop192_fwd, 192, kWs192)},
      {"ws 128 x 192 dgelu", Epi::dgelu, coop(gemm_ws<Epi::dgelu, 192>, coop192_bwd, 192, kWs192)},
      {"ws 128 x 192 plain", Epi::plain, coop(gemm_ws<Epi::plain, 192>, coop192_fwd, 192, kWs192)},
      // The epilogue's own pace: the same kernels over one K block (K = 64), so that the main loop is short and the
      // time is the epilogue's (unchecked: labelled sink).
      {"ws gelu, K = 64 (the epilogue's pace)", Epi::sink, coop(gemm_ws<Epi::gelu>, ws_fwd_k64, 256, kWs256)},
      {"ws 128 x 192 gelu, K = 64 (the epilogue's pace)", Epi::sink,
       coop(gemm_ws<Epi::gelu, 192>, ws192_fwd_k64, 192, kWs192)},
  };
  // Each case: its reference's outputs made, ours poisoned, one launch checked (a failed launch or a deadlock ends the
  // lab, see case_ok), then timed against cuBLASLt's same epilogue (sink: against the plain GEMM).
  int failed = 0;
  for (const Case& c : cases) {
    std::vector<std::pair<const Tensor*, const Tensor*>> outs;  // (ours, cuBLASLt's)
    if (c.epi == Epi::gelu) {
      cuda::gemm(*ctx, ref_gelu);
      outs = {{&y, &y_ref}, {&pre, &pre_ref}};
    } else if (c.epi == Epi::dgelu) {
      cuda::gemm(*ctx, ref_dgelu);
      outs = {{&d, &d_ref}};
    } else if (c.epi == Epi::plain) {
      cuda::gemm(*ctx, ref_plain);
      outs = {{&y, &y_ref}};
    }
    for (const auto& [ours, ref] : outs) LAB_CHECK(cudaMemsetAsync(ours->raw_data(), 0xFF, ours->nbytes(), s));
    c.launch();
    const bool ran = case_ok(c.name);
    double err = 0;  // the worst output's error over its tolerance
    for (const auto& [ours, ref] : outs) err = std::max(err, max_rel_err(*ours, *ref));
    const bool ok = ran && err <= 1;
    failed += !ok;
    const double t = ::lab::time_us(s, c.launch);
    const double t_ref = c.epi == Epi::gelu ? t_ref_gelu : c.epi == Epi::dgelu ? t_ref_dgelu : t_ref_plain;
    std::printf("%s: %s %d x %d x %d: %s (err/tol %.2f) %.1f us (%.0f TFLOP/s): %.2fx cuBLASLt's %s\n", LAB_NAME, c.name,
                M, N, K, c.epi == Epi::sink ? (ran ? "ran" : "FAILED") : ok ? "ok" : "FAILED", err, t, flop / t * 1e-6,
                t_ref / t, c.epi == Epi::gelu ? "fused gelu" : c.epi == Epi::dgelu ? "fused dgelu" : "plain GEMM");
  }
  std::printf("%s: %s\n", LAB_NAME, failed ? "FAILED" : "all checks passed");
  return failed ? 1 : 0;
}

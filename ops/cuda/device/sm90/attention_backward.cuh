// The attention backward on Hopper (sm_90a): wgmma, TMA and warp-specialised pipelines, FlashAttention-3's hopper
// backward structure written from its published description. Production's launcher is
// ops/cuda/flash_attention_sm90_backward.cu; the kernel lab (tools/lab/attention_wgmma_bwd.cu, variant b3) runs the
// same kernels against its fp32 reference. Promoted from the lab's b3 (docs/attention.md has its history).
//
// Notation: per (b, h), S_ij = q_i . k_j (raw), P_ij = exp(scale S_ij - lse_i) (lse natural, from the forward),
// dP_ij = dout_i . v_j, Delta_i = dout_i . out_i - dlse_i (dlse_i: the gradient that reaches lse, which adds
// dlse_i P_ij to dS_ij; 0 when none), dS_ij = P_ij (dP_ij - Delta_i);
// dq_i = scale sum_j dS_ij k_j, dk_j = scale sum_i dS_ij q_i, dv_j = sum_i P_ij dout_i. In the kernels
// lse2 = lse log2(e) and scale_log2 = scale log2(e): P = 2^(S scale_log2 - lse2) with one ex2.
//
// Reach (what ops/cuda/flash_attention_sm90_backward.cu sends here): T = bf16 or f16; D = 64 or 128; any Sq, Sk >= 1;
// every band of Mask<kLower> (none, causal in both alignments, sliding windows; kLower = the band has a left
// bound); GQA / MQA (query head h reads kv head h / G); q, dq with strides qs, out, dout with their own (os: a
// packed qkv's q rows are 3 H D apart, out's H D) and k, v, dk, dv with ks (bhsd, bshd or packed: whatever TMA can
// address). No bias, dropout or packed sequences (the mma.sync kernels take those).
//
// Three kernels, in order on one stream:
//   bwd_prep_kernel: Delta and lse2 into (B, H, Sq_pad) f32 workspaces, Sq_pad = Sq rounded up to 128. Padding rows
//     get Delta 0 and lse2 +inf, and a row that sees no key (lse -inf) gets lse2 +inf: P = 2^(s scale_log2 - inf) = 0
//     for both, so a query tile's lse2 / Delta are copied whole (1-D bulk copies) and never read past the buffer.
//   bwd_dkdv_kernel: an item is 128 keys of one kv head; its CTA loops over the query tiles that see them, for each
//     of the kv head's G query heads in turn: dK and dV sum the G heads in registers (deterministic, no atomics).
//   bwd_dq_kernel: an item is 128 queries of one head; its CTA loops over the key tiles they see (the forward's
//     shape).
//   Each runs one item per CTA, or persistent (bwd_dkdv_persistent_kernel, bwd_dq_persistent_kernel: a 1-D grid
//   whose CTAs walk pairs of items in fa::TileOrder, the producer loading the next item's once-loaded operands
//   while this item finishes); the launcher (flash_attention_sm90_backward.cu) picks per kernel where that pays.
// Every output element is written by one thread: the results are deterministic. The atomic backward (the dK/dV
// kernels' kFusedDq, see kDqBlock) has no dQ kernel: the dK/dV kernel also adds each tile's share of dq into an f32
// workspace by bulk reductions, and bwd_dq_convert_kernel writes dq from it; dq's bits then vary between runs.
//
// Both fast kernels: kWsThreads = 384 threads = consumer warpgroups 0, 1 (setmaxnreg 240) + producer warpgroup 2
// (one thread issues every TMA; setmaxnreg 24); sm90/attention.cuh says why that split. A 2-stage mbarrier ring:
// full[s] (the producer's arrive.expect_tx + the TMA bytes) and empty[s] (8 arrivals: lane 0 of each consumer warp
// once its wgmmas reading the stage are complete). Use u = j / 2 of stage j % 2: consumers wait full with parity
// u & 1, the producer waits empty with parity (u & 1) ^ 1 (passes at once for u = 0: a fresh barrier's previous
// phase, parity 1, counts as complete); the use count runs on across a persistent CTA's items. The once-loaded
// operands have a full barrier (and in the persistent kernels an empty one), used once per item.
// Tensors go through 4-D TMA maps (D, S, heads, B) with box (64, rows, 1, 1): rows past Sq or Sk read as zeros
// (TMA's fill) and still count toward the transaction bytes.
#pragma once
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "ops/cuda/device/rows.cuh"  // Pack, load_pack
#include "ops/cuda/device/sm90/attention.cuh"
#include "ops/cuda/device/types.cuh"  // to_float
#include "ops/cuda/flash_attention_dq_accum.h"
#include "ops/cuda/flash_attention_mask.h"
#include "ops/cuda/flash_attention_tile_order.h"
#include "ops/flash_attention.h"  // AttentionBand, HeadStrides

namespace xfr::cuda::sm90 {

constexpr int kBwdStages = 2;   // ring depth of both kernels: what the shared-memory budgets below hold
constexpr int kBwdBlockN = 128;  // keys per dK/dV CTA: 2 consumer warpgroups x 64 (wgmma's M)
constexpr int kDqBlockM = 128;   // queries per dQ CTA: 2 consumer warpgroups x 64

// The mask as a consumer thread of a dK/dV kernel sees it (key j visible to query i iff query_lo(j) <= i <
// query_hi(j + 1): a contiguous range, since key_lo and key_hi grow with i): [qlo, qhi) of the queries that see each
// of its two key rows (empty for a key >= Sk), and the queries every key of the block [n0, n0 + BN) sees, so that a
// query tile inside them needs no element test (a CTA-uniform test: no divergence).
template <bool kLower>
struct KeyRowsMask {
  int qlo[2], qhi[2];
  bool all_keys;  // the block has no key >= Sk
  int cov_lo, cov_hi;
  // key_row0: the thread's first key (its second is key_row0 + 8).
  __device__ __forceinline__ KeyRowsMask(const fa::Mask<kLower>& mask, int key_row0, int n0, int BN, int Sk) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int key = key_row0 + 8 * r;
      const bool valid = key < Sk;
      qlo[r] = valid ? mask.query_lo(key) : 0;
      qhi[r] = valid ? mask.query_hi(key + 1) : 0;
    }
    all_keys = n0 + BN <= Sk;
    cov_lo = mask.query_lo(min(n0 + BN, Sk) - 1);
    cov_hi = mask.query_hi(n0 + 1);
  }
  // Whether every (key, query) of the block's keys and the queries [q0, q1) is visible.
  __device__ __forceinline__ bool covers(int q0, int q1) const { return all_keys && cov_lo <= q0 && q1 <= cov_hi; }
  // Whether query q is hidden from the thread's key row r (0: key_row0, 1: key_row0 + 8).
  __device__ __forceinline__ bool hides(int r, int q) const { return q < qlo[r] || q >= qhi[r]; }
};

// Query rows per tile of the dK/dV kernel, fixed by registers: a consumer thread holds dV and dK (2 x D/2 fp32) for
// the whole loop plus S^T and dP^T of a tile (2 x BM/2): 128 + 64 = 192 at D = 128 with BM = 64, 64 + 128 = 192 at
// D = 64 with BM = 128, then the 16-bit P^T / dS^T fragments (2 x BM/4) while S^T and dP^T die. BM = 128 at
// D = 128 would need 256 before addresses, over the 240 the consumers get.
template <int D>
constexpr int bwd_block_m() {
  return D == 64 ? 128 : 64;
}

// Keys per K/V tile of the dQ kernel: a consumer thread holds dQ (D/2) + S and dP (2 x BN/2) + the dS fragments
// (BN/4): 160 at D = 64 with BN = 128, 128 at D = 128 with BN = 64; BN = 128 at D = 128 (192 + indices) spilled in
// the lab (run 13), hence the smaller tile there.
template <int D>
constexpr int dq_block_n() {
  return D == 128 ? 64 : 128;
}

// The fused dQ of the atomic backward (the dK/dV kernels with kFusedDq): per query tile a CTA visits, its share of
// dQ = dS K (the tile's queries x the CTA's 128 keys) is added into an f32 workspace dq_accum by a bulk reduction
// (cp.reduce.async.bulk: the adds happen in L2), and bwd_dq_convert_kernel scales the sums into dq once every CTA
// has run; no dQ kernel recomputes S and dP (5 GEMMs a tile instead of 7). Not deterministic: the order in which the
// key blocks' shares arrive varies, and so do the f32 sums' last bits. The share (kDqBlock), dq_accum's layout
// (dq_accum_col, dq_accum_block) and their invariants: ops/cuda/flash_attention_dq_accum.h.
//
// Named barriers of the fused dQ (0 is __syncthreads'). ds_ready_barrier(w, p): warpgroup w's half of dS^T buffer p
// is written (w's 128 threads arrive, the other warpgroup's 128 wait: each warpgroup issues dV and dK between its
// arrival and its wait, so neither idles while the other finishes its half). One per buffer, so that a warpgroup a
// tile ahead never arrives twice at a barrier the other has not yet waited on.
XF_HOST_DEVICE constexpr int ds_ready_barrier(int w, int p) { return 1 + 2 * w + p; }

// Shared memory of the dK/dV kernel (byte offsets from the 1024-aligned base): K, V (BN x D, loaded once) +
// STAGES x (Q, dO: BM x D; lse2, Delta: BM fp32) + barriers (kv_full, full[STAGES], empty[STAGES], and the
// persistent kernel's kv_empty). 128 KB at D = 128, 96 KB at D = 64: one CTA per SM (the consumers' 240 registers
// allow no second anyway). The fused dQ adds two dS^T tiles ([key][query] 16-bit, double-buffered so that one
// barrier a tile orders both warpgroups' writes and reads: 2 x 32 KB at D = 64, 2 x 16 KB at D = 128) and the two
// warpgroups' dQ staging blocks (2 x 16 KB): 192 KB at either head dim.
template <int D, int STAGES = kBwdStages, bool kFusedDq = false>
struct DkdvLayout {
  static constexpr int BM = bwd_block_m<D>(), BN = kBwdBlockN;
  static constexpr int kTileKV = BN * D * 2, kTileQ = BM * D * 2;
  static constexpr int kTileDs = kFusedDq ? BN * BM * 2 : 0;  // dS^T: 128 keys x BM queries, atoms of 64 queries
  static constexpr int kK = 0, kV = kTileKV, kQ = 2 * kTileKV, kDo = kQ + STAGES * kTileQ;
  static constexpr int kDs = kDo + STAGES * kTileQ, kDqStage = kDs + 2 * kTileDs;
  static constexpr int kLse = kDqStage + (kFusedDq ? 2 * static_cast<int>(kDqBlockBytes) : 0),
                       kDelta = kLse + STAGES * BM * 4;
  static constexpr int kBar = kDelta + STAGES * BM * 4;
  static constexpr int kBars = 2 + 2 * STAGES;
  static constexpr int kBytes = kBar + kBars * 8 + 1024;        // + alignment slack for align1024
  static constexpr uint32_t kTileTx = 2 * kTileQ + 2 * BM * 4;  // Q + dO + lse2 + Delta of one query tile
  static_assert(kTileKV % 1024 == 0 && kTileQ % 1024 == 0 && kTileDs % 1024 == 0, "sw128 tiles must stay 1024-aligned");
  static_assert(kBytes <= 227 * 1024, "over the 227 KB of shared memory a block may have");
};

// Shared memory of the dQ kernel: Q, dO (128 x D, loaded once) + STAGES x (K, V: BN x D) + barriers (q_full,
// full[STAGES], empty[STAGES], the persistent kernel's q_empty). 128 KB at D = 128, 96 KB at D = 64.
template <int D, int STAGES = kBwdStages>
struct DqLayout {
  static constexpr int kBlockN = dq_block_n<D>();
  static constexpr int kTileQ = kDqBlockM * D * 2, kTileKV = kBlockN * D * 2;
  static constexpr int kQ = 0, kDo = kTileQ, kK = 2 * kTileQ, kV = kK + STAGES * kTileKV, kBar = kV + STAGES * kTileKV;
  static constexpr int kBars = 2 + 2 * STAGES;
  static constexpr int kBytes = kBar + kBars * 8 + 1024;
  static_assert(kBytes <= 227 * 1024, "over the 227 KB of shared memory a block may have");
};

// The kernels' parameters, passed __grid_constant__ (TMA reads the maps from parameter space; the mask points at
// band).
struct BwdArgs {
  CUtensorMap tm_q_bm, tm_do_bm, tm_k, tm_v;        // dK/dV kernel: q, dout box bwd_block_m rows; k, v box 128
  CUtensorMap tm_q128, tm_do128, tm_k_dq, tm_v_dq;  // dQ kernel: q, dout box 128 rows; k, v box dq_block_n rows
  const float* lse2 = nullptr;                      // (B, H, Sq_pad) exp2 domain, +inf where P = 0 (bwd_prep_kernel)
  const float* delta = nullptr;                     // (B, H, Sq_pad)
  void* dq = nullptr;                               // (B, H, Sq, D) T, strides qs
  void* dk = nullptr;                               // (B, Hk, Sk, D) T, strides ks
  void* dv = nullptr;                               // (B, Hk, Sk, D) T, strides ks
  float* dq_accum = nullptr;                        // the fused dQ's sums (dq_accum_block), zeroed before the kernel
  HeadStrides qs, ks;
  int H = 0, G = 1, Sq = 0, Sk = 0, Sq_pad = 0;
  AttentionBand band;
  float scale = 1.f, scale_log2 = 1.f;
  int B = 1, Hk = 1;  // the persistent kernels' work lists (last: the one-item kernels' parameters keep their offsets)
};

// ---- the pre-kernel: Delta and lse2 ----------------------------------------------------------------------------
// Each row of the (B, H, Sq_pad) workspaces reads D values of out and of dout: 128 bytes each at D = 64 in 16 bits,
// GPT-2's 196,608 rows a call 50 MB in all. A warp a row with one 16-bit load a lane per 32 values (the first form
// here) took 39.8 us of the 294 us backward at GPT-2's shape (ncu on the H200, 2026-12-01: ~1.3 TB/s, latency-bound:
// two 64-byte loads a warp in flight and a 64-bit division chain a row). Now a row is read in 16-byte packs (the
// backward's rule, Params::vec, has out and dout 16-byte aligned with strides of whole packs) by kLanes lanes, one
// pack each (8 lanes at D = 64, 16 at 128, 32 at 256), and every thread issues the loads of kPrepRowsPerThread rows
// before it adds any of them.
constexpr int kPrepThreads = 256;      // 8 warps a block
constexpr int kPrepRowsPerThread = 4;  // rows a row group loads before adding: 128 bytes a thread in flight
// Blocks an SM keeps: at most 64 registers a thread (ptxas took 96 for bf16 unbounded, 2 blocks an SM; 57 for f16),
// so 1024 threads and 128 KB of loads in flight an SM.
constexpr int kPrepMinBlocks = 4;

template <class T, int D>
struct PrepShape {
  static constexpr int kW = 8;                           // 16-bit elements a 16-byte pack
  static constexpr int kLanes = D / kW;                  // lanes a row, a pack each
  static constexpr int kGroups = kPrepThreads / kLanes;  // row groups a block
  static constexpr int kRowsPerBlock = kGroups * kPrepRowsPerThread;
  static_assert(sizeof(T) == 2 && D % kW == 0 && (kLanes & (kLanes - 1)) == 0 && kLanes <= 32,
                "16-bit values; a row is a power of two of packs, at most a warp's (D = 64, 128 or 256)");
};

// The dot product of two 16-byte packs of 16-bit values in fp32, a 32-bit word (two values) at a time: widened per
// word and added by FMAs (elementwise widening of whole packs held bf16's form of all 4 rows' packs at once: 96
// registers, or spills at 80).
template <class T>
__device__ __forceinline__ float pack_dot(const dev::Pack<T, 8>& a, const dev::Pack<T, 8>& b) {
  const uint32_t* wa = reinterpret_cast<const uint32_t*>(&a);
  const uint32_t* wb = reinterpret_cast<const uint32_t*>(&b);
  float p = 0.f;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    float2 x, y;
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {  // bf16 -> f32: the 16 bits become the high half
      x = make_float2(__uint_as_float(wa[k] << 16), __uint_as_float(wa[k] & 0xffff0000u));
      y = make_float2(__uint_as_float(wb[k] << 16), __uint_as_float(wb[k] & 0xffff0000u));
    } else {
      x = __half22float2(*reinterpret_cast<const __half2*>(&wa[k]));
      y = __half22float2(*reinterpret_cast<const __half2*>(&wb[k]));
    }
    p = fmaf(x.x, y.x, p);
    p = fmaf(x.y, y.y, p);
  }
  return p;
}

// Delta = out . dout - dlse and lse2 = lse log2(e) per workspace row (b, h, i) of (B, H, Sq_pad); padding rows
// (i >= Sq) get 0 and +inf, a row that sees no key (lse -inf) lse2 +inf. A block takes kRowsPerBlock consecutive rows,
// all of one (b, h) (Sq_pad is a multiple of kDqBlockM, which kRowsPerBlock divides), row group g the rows
// g + r kGroups of them, r < kPrepRowsPerThread. out, dout 16-byte aligned, os's strides multiples of 16 bytes.
template <class T, int D>
__global__ void __launch_bounds__(kPrepThreads, kPrepMinBlocks)
    bwd_prep_kernel(const T* __restrict__ out,       // (B, H, Sq, D) strides os
                    const T* __restrict__ dout,      // (B, H, Sq, D) strides os
                    const float* __restrict__ lse,   // (B, H, Sq) natural log
                    const float* __restrict__ dlse,  // (B, H, Sq) or null
                    float* __restrict__ delta,       // (B, H, Sq_pad)
                    float* __restrict__ lse2,        // (B, H, Sq_pad)
                    int H, int Sq, int Sq_pad, HeadStrides os) {
  using Shape = PrepShape<T, D>;
  constexpr int kRows = kPrepRowsPerThread, kLanes = Shape::kLanes, kW = Shape::kW;
  static_assert(kDqBlockM % Shape::kRowsPerBlock == 0, "a block's rows lie in one (b, h)");
  const int lane = threadIdx.x % kLanes;
  // The block's (b, h) and first query: one division a block.
  const int blocks_per_head = Sq_pad / Shape::kRowsPerBlock;
  const int bh = static_cast<int>(blockIdx.x) / blocks_per_head, b = bh / H, h = bh - b * H;
  const int i0 = (static_cast<int>(blockIdx.x) - bh * blocks_per_head) * Shape::kRowsPerBlock + threadIdx.x / kLanes;
  const T* o_head = out + b * os.batch + h * os.head + lane * kW;
  const T* d_head = dout + b * os.batch + h * os.head + lane * kW;
  const int64_t lse_head = static_cast<int64_t>(bh) * Sq, ws_head = static_cast<int64_t>(bh) * Sq_pad;
  dev::Pack<T, kW> o[kRows], d[kRows];
  float l[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = i0 + r * Shape::kGroups;
    if (i < Sq) {
      o[r] = dev::load_pack<T, kW>(o_head + static_cast<int64_t>(i) * os.seq);
      d[r] = dev::load_pack<T, kW>(d_head + static_cast<int64_t>(i) * os.seq);
    }
    l[r] = i < Sq && lane == 0 ? lse[lse_head + i] : 0.f;
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = i0 + r * Shape::kGroups;
    float p = 0.f;
    if (i < Sq) p = pack_dot(o[r], d[r]);
#pragma unroll
    for (int x = kLanes / 2; x > 0; x /= 2) p += __shfl_xor_sync(0xffffffffu, p, x);  // within the row's lanes
    if (lane == 0) {
      const int64_t row = ws_head + i;
      if (i >= Sq) {
        delta[row] = 0.f, lse2[row] = INFINITY;
      } else {
        delta[row] = dlse != nullptr ? p - dlse[lse_head + i] : p;
        lse2[row] = l[r] == -INFINITY ? INFINITY : l[r] * kLog2e;
      }
    }
  }
}

// Launches the pre-kernel over the B H Sq_pad workspace rows (its alignment rule above; Sq_pad a multiple of
// kDqBlockM; B H Sq_pad / kRowsPerBlock blocks < 2^31).
template <class T, int D>
void launch_bwd_prep(const T* out, const T* dout, const float* lse, const float* dlse, float* delta, float* lse2, int B,
                     int H, int Sq, int Sq_pad, HeadStrides os, cudaStream_t stream) {
  const int64_t blocks = static_cast<int64_t>(B) * H * (Sq_pad / PrepShape<T, D>::kRowsPerBlock);
  bwd_prep_kernel<T, D><<<static_cast<unsigned>(blocks), kPrepThreads, 0, stream>>>(out, dout, lse, dlse, delta, lse2,
                                                                                    H, Sq, Sq_pad, os);
}

// ---- the fused dQ's pieces (kFusedDq; see kDqBlock) ------------------------------------------------------------
// A tile's dS^T, this warpgroup's 64 keys x BM queries as the packed A fragments of dK += dS^T Q (pack_p's order:
// ads[j][r] = keys 64 cw + 16 w + lane / 4 + 8 (r & 1), queries 16 j + 8 (r >> 1) + 2 (lane % 4), + 1), into the
// CTA's [key][query] tile at `tile` (shared address; 128 keys x BM queries, sw128 atoms of 64 queries, 16 KB apart:
// the layout TMA writes for such a tile), from which dQ = dS K reads dS as an MN-major A (store_frag_sw128).
template <int BM>
__device__ __forceinline__ void store_ds_t(const uint32_t (&ads)[BM / 16][4], uint32_t tile, int cw, int t) {
  store_frag_sw128<BM>(ads, tile, kBwdBlockN * 128, 64 * cw + 16 * (t / 32), 0, t % 32);
}

// acc (64 queries x 64 columns of D, fp32, overwritten) = dS (64 queries x 128 keys) K (128 keys x 64 columns): A is
// 64 queries of the dS^T tile (ds_desc: sw128_desc(their atom, 16 KB, 1024)), B 64 columns of the K tile (k_desc:
// sw128_desc(their atom, 128 x 128, 1024)), both MN-major ([key][...]: the key, the GEMM's K index, runs down the
// rows); a step of 16 keys adds 16 rows x 128 B = 2048 B to both start addresses.
template <class T>
__device__ __forceinline__ void dq_gemm(float (&acc)[kDqBlock / 2], uint64_t ds_desc, uint64_t k_desc) {
#pragma unroll
  for (int kk = 0; kk < kBwdBlockN / 16; ++kk)
    wgmma_ss_mn<kDqBlock, T>(acc, ds_desc + ((kk * 2048) >> 4), k_desc + ((kk * 2048) >> 4), kk > 0 ? 1 : 0);
}

// This warpgroup's dQ share (the m64n64 fragment of dq_gemm: row = query, column = d) into its 16 KB staging block
// in dq_accum's layout (float2 stores, two wavefronts each: dq_accum_col). A warp's fragment rows are 16 of the
// block's (16 w ..), 4 KB contiguous in both the staging block and dq_accum, so each warp reduces its own rows once its
// lanes' stores are done (__syncwarp; no warpgroup barrier): one bulk reduction issued and committed by its lane 0,
// which waits for it to have read the rows before they are rewritten (bulk_wait_read in the tile loop, bulk_wait at
// the end).
__device__ __forceinline__ void reduce_dq(const float (&acc)[kDqBlock / 2], uint8_t* stage, float* dst, int t) {
  const int w = t / 32, lane = t % 32;
  // Register pair i's address: dq_stage_base + dq_stage_chunk + dq_stage_row (ops/cuda/flash_attention_dq_accum.h,
  // whose CPU test holds it to dq_accum_col).
  const uint32_t base = dq_stage_base(w, lane);
#pragma unroll
  for (int i = 0; i < kDqBlock / 2; i += 2)
    *reinterpret_cast<float2*>(stage + base + dq_stage_chunk(i, lane) + dq_stage_row(i)) =
        make_float2(acc[i], acc[i + 1]);
  fence_proxy_async();
  __syncwarp();
  if (lane == 0) {
    constexpr int kRows = 16;  // a warp's rows of the m64n64 fragment
    bulk_reduce_add_f32(dst + kRows * w * kDqBlock, smem_u32(stage) + kRows * w * kDqBlock * 4,
                        kRows * kDqBlock * 4);
    bulk_commit();
  }
}

// The tile's last GEMMs, after its fragments (the dK/dV kernels' common step): dV += P^T dO and dK += dS^T Q (do_lo,
// q_lo: the stage's dO and Q tiles' descriptor low words as the rs GEMMs' MN-major B), and with kFusedDq dQ = dS K for
// this warpgroup's share (dq_gemm) once both halves of dS^T are in buffer buf of the kTileDs-byte buffers at ds_base
// (a shared address; this warpgroup stores and announces its half first; ds_desc, kdq_desc: dq_gemm's operands for
// buffer 0). Returns once dV and dK are complete (the stage may be released); the dQ share's GEMM may still be in
// flight (wgmma_wait<0> before reading dqacc). lane is t % 32, passed in rather than recomputed: with t % 32 here
// ptxas scheduled 16 of the fused instantiations differently from the kernels' inline code this was taken from
// (tools/sass_stats.py diff), which only a device run could clear.
template <class T, int D, int BM, bool kFusedDq, int kTileDs>
__device__ __forceinline__ void dkdv_tile_gemms(float (&dvacc)[D / 2], float (&dkacc)[D / 2],
                                                float (&dqacc)[kFusedDq ? kDqBlock / 2 : 1],
                                                const uint32_t (&ap)[BM / 16][4], const uint32_t (&ads)[BM / 16][4],
                                                uint32_t do_lo, uint32_t q_lo, uint32_t ds_base, uint64_t ds_desc,
                                                uint64_t kdq_desc, int buf, int cw, int t, int lane) {
  if constexpr (kFusedDq) {
    store_ds_t<BM>(ads, ds_base + buf * kTileDs, cw, t);
    fence_proxy_async();
    named_barrier_arrive(ds_ready_barrier(cw, buf), 256);  // this warpgroup's half is in
  }
  wgmma_fence();
  rs_gemm_desc<T, D, BM>(dvacc, ap, sw128_desc_of(do_lo));  // dV += P^T dO
  rs_gemm_desc<T, D, BM>(dkacc, ads, sw128_desc_of(q_lo));  // dK += dS^T Q
  wgmma_commit();
  if constexpr (kFusedDq) {
    if (lane == 0) bulk_wait_read<0>();  // this warp's previous reduction has read its staging rows
    named_barrier_sync(ds_ready_barrier(1 - cw, buf), 256);           // the other half is in
    dq_gemm<T>(dqacc, ds_desc + buf * (kTileDs >> 4), kdq_desc);  // dQ = dS K
    wgmma_commit();
    wgmma_wait<1>();  // dV, dK
  } else {
    wgmma_wait<0>();
  }
}

// dq (B, H, Sq, D) T, strides qs = scale x dq_accum (dq_accum_block's layout, Sq_pad rows a head): one thread per 8
// columns of a row (two 16-byte loads of swizzled chunks, one 16-byte store); grid ceil(B H Sq D / 8 / 256) x 256.
template <class T, int D>
__global__ void __launch_bounds__(256) bwd_dq_convert_kernel(const float* __restrict__ acc,  // dq_accum
                                                             T* __restrict__ dq,             // (B, H, Sq, D) qs
                                                             int B, int H, int Sq, int Sq_pad, HeadStrides qs,
                                                             float scale) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x;
  if (idx >= static_cast<int64_t>(B) * H * Sq * (D / 8)) return;
  const int d = static_cast<int>(idx % (D / 8)) * 8;
  const int64_t row = idx / (D / 8), bh = row / Sq;
  const int q = static_cast<int>(row % Sq), h = static_cast<int>(bh % H), b = static_cast<int>(bh / H);
  const float* blk = acc + dq_accum_block(b, h, q / kDqBlock, d / kDqBlock, H, Sq_pad, D);
  const int ql = q % kDqBlock, dl = d % kDqBlock;
  const float4 lo = *reinterpret_cast<const float4*>(blk + ql * kDqBlock + dq_accum_col(ql, dl));
  const float4 hi = *reinterpret_cast<const float4*>(blk + ql * kDqBlock + dq_accum_col(ql, dl + 4));
  uint4 o;
  o.x = pack2<T>(lo.x * scale, lo.y * scale);
  o.y = pack2<T>(lo.z * scale, lo.w * scale);
  o.z = pack2<T>(hi.x * scale, hi.y * scale);
  o.w = pack2<T>(hi.z * scale, hi.w * scale);
  *reinterpret_cast<uint4*>(dq + b * qs.batch + h * qs.head + static_cast<int64_t>(q) * qs.seq + d) = o;
}

// The backward kernels' mbarriers, 8 bytes each from the layout's kBar: the once-loaded operands' full barrier, then
// full[st] and empty[st] of the STAGES-deep ring and, in the persistent kernels, the once-loaded operands' empty
// barrier. init_pipeline sets their arrival counts.
template <int STAGES>
struct BwdBarriers {
  uint32_t once;  // the once-loaded operands' full barrier (the layout's kBar)
  __device__ __forceinline__ uint32_t full(int st) const { return once + 8 * (1 + st); }
  __device__ __forceinline__ uint32_t empty(int st) const { return once + 8 * (1 + STAGES + st); }
  __device__ __forceinline__ uint32_t once_empty() const { return once + 8 * (1 + 2 * STAGES); }
};

// The backward kernels' setup, by thread 0 before the CTA's one __syncthreads: the four tensor maps prefetched; at
// `bar` (the layout's kBar, BwdBarriers) the once-loaded operands' full barrier (1 arrival: the producer's
// arrive.expect_tx; the bytes complete it), full[st] (1, the same) and empty[st] (8: lane 0 of each of the 8 consumer
// warps), and with kOnceEmpty (the persistent kernels) the once-loaded operands' empty barrier (8: lane 0 of each
// consumer warp, after the item's last reader).
template <int STAGES, bool kOnceEmpty = false>
__device__ __forceinline__ void init_pipeline(uint32_t bar, const CUtensorMap* m0, const CUtensorMap* m1,
                                              const CUtensorMap* m2, const CUtensorMap* m3) {
  const BwdBarriers<STAGES> bars{bar};
  tma_prefetch_map(m0);
  tma_prefetch_map(m1);
  tma_prefetch_map(m2);
  tma_prefetch_map(m3);
  mbar_init(bars.once, 1);
  if constexpr (kOnceEmpty) mbar_init(bars.once_empty(), 8);
  for (int st = 0; st < STAGES; ++st) {
    mbar_init(bars.full(st), 1);
    mbar_init(bars.empty(st), 8);
  }
  mbar_init_fence();
}

// The dK/dV kernels' loads (one producer thread; layout L: kK, kV, kQ, kDo, kLse, kDelta, kTileKV, kTileQ, kTileTx,
// BM, BN). load_key_block: K and V of keys [n0, n0 + BN) of kv head hk, completing barrier `bar` (the caller has
// armed nothing: this arms it). load_query_tile: query tile m of head h (Q, dO, lse2, Delta) into stage st, completing
// full barrier `full`. Full boxes: rows past Sq or Sk are TMA's zeros.
template <class L, int D>
__device__ __forceinline__ void load_key_block(const BwdArgs& a, uint32_t base, int n0, int hk, int b, uint32_t bar) {
  constexpr int BN = L::BN;
  mbar_arrive_expect_tx(bar, 2 * L::kTileKV);
#pragma unroll
  for (int at = 0; at < D / 64; ++at) {
    tma_load_4d(base + L::kK + at * (BN * 128), &a.tm_k, at * 64, n0, hk, b, bar);
    tma_load_4d(base + L::kV + at * (BN * 128), &a.tm_v, at * 64, n0, hk, b, bar);
  }
}
template <class L, int D>
__device__ __forceinline__ void load_query_tile(const BwdArgs& a, uint32_t base, int st, int m, int h, int b,
                                                uint32_t full) {
  constexpr int BM = L::BM;
  mbar_arrive_expect_tx(full, L::kTileTx);
#pragma unroll
  for (int at = 0; at < D / 64; ++at) {
    tma_load_4d(base + L::kQ + st * L::kTileQ + at * (BM * 128), &a.tm_q_bm, at * 64, m * BM, h, b, full);
    tma_load_4d(base + L::kDo + st * L::kTileQ + at * (BM * 128), &a.tm_do_bm, at * 64, m * BM, h, b, full);
  }
  const int64_t lrow = (static_cast<int64_t>(b) * a.H + h) * a.Sq_pad + m * BM;  // (m + 1) BM <= Sq_pad
  bulk_load_1d(base + L::kLse + st * BM * 4, a.lse2 + lrow, BM * 4, full);
  bulk_load_1d(base + L::kDelta + st * BM * 4, a.delta + lrow, BM * 4, full);
}

// The one-item dK/dV kernels' producer (one thread of the producer warpgroup): K and V of keys [n0, n0 + BN) of kv
// head hk once (barrier kv_full at L::kBar), then for each of the n_tiles query tiles (j = g cnt + (m - first),
// tr = [first, first + cnt)) its loads into stage j % STAGES once its consumers have released it.
template <class L, int D, int STAGES>
__device__ __forceinline__ void produce_dkdv_item(const BwdArgs& a, uint32_t base, int n0, int hk, int b,
                                                  const fa::TileRange& tr, int n_tiles) {
  const uint32_t bar_kv = base + L::kBar;
  const BwdBarriers<STAGES> bars{bar_kv};
  load_key_block<L, D>(a, base, n0, hk, b, bar_kv);
  for (int j = 0; j < n_tiles; ++j) {
    const int st = j % STAGES, g = j / tr.count, m = tr.first + (j - g * tr.count), h = hk * a.G + g;
    mbar_wait(bars.empty(st), ((j / STAGES) & 1) ^ 1);
    load_query_tile<L, D>(a, base, st, m, h, b, bars.full(st));
  }
}

// The one-item dQ kernels' producer (one thread; layout L: kQ, kDo, kK, kV, kBar, kTileQ, kTileKV, kBlockN): Q and dO
// of queries [m0, m0 + BM) of head h once (barrier q_full; maps tm_q, tm_do of BM-row boxes), then the key tiles tr
// of kv head hk (maps tm_k, tm_v of kBlockN-row boxes) into stage j % STAGES once its consumers have released it.
template <class L, int D, int BM, int STAGES>
__device__ __forceinline__ void produce_dq_item(uint32_t base, const CUtensorMap* tm_q, const CUtensorMap* tm_do,
                                                const CUtensorMap* tm_k, const CUtensorMap* tm_v, int m0, int h, int hk,
                                                int b, const fa::TileRange& tr) {
  constexpr int BN = L::kBlockN;
  const uint32_t s_q = base + L::kQ, s_do = base + L::kDo, s_k = base + L::kK, s_v = base + L::kV;
  const uint32_t bar_q = base + L::kBar;
  const BwdBarriers<STAGES> bars{bar_q};
  mbar_arrive_expect_tx(bar_q, 2 * L::kTileQ);
#pragma unroll
  for (int at = 0; at < D / 64; ++at) {
    tma_load_4d(s_q + at * (BM * 128), tm_q, at * 64, m0, h, b, bar_q);
    tma_load_4d(s_do + at * (BM * 128), tm_do, at * 64, m0, h, b, bar_q);
  }
  for (int j = 0; j < tr.count; ++j) {
    const int st = j % STAGES, k0 = (tr.first + j) * BN;
    mbar_wait(bars.empty(st), ((j / STAGES) & 1) ^ 1);
    mbar_arrive_expect_tx(bars.full(st), 2 * L::kTileKV);
#pragma unroll
    for (int at = 0; at < D / 64; ++at) {
      tma_load_4d(s_k + st * L::kTileKV + at * (BN * 128), tm_k, at * 64, k0, hk, b, bars.full(st));
      tma_load_4d(s_v + st * L::kTileKV + at * (BN * 128), tm_v, at * 64, k0, hk, b, bars.full(st));
    }
  }
}

// dK / dV. CTA = keys [n0, n0 + 128) of kv head hk: grid (ceil(Sk / 128), Hk, B), kWsThreads threads,
// DkdvLayout<D>::kBytes of dynamic shared memory.
//   The query tiles it visits: Mask::query_tiles(n0, 128, BM) = [first, first + cnt) (those with a query that sees
//   a key of the block), for each of the G query heads of hk in turn: j = g cnt + (m - first). cnt = 0 (no query
//   sees the block): nothing is loaded, nobody waits, the block stores zeros.
//   Consumer per query tile (queries m BM .. +BM): S^T = K_wg Q^T and dP^T = V_wg dO^T (2 x D/16 wgmma_ss, two
//   commit groups); wait<1>: S^T done, so P^T = 2^(S^T scale_log2 - lse2[q]) runs while dP^T finishes; wait<0>;
//   dS^T = P^T (dP^T - Delta[q]); P^T, dS^T -> 16-bit A fragments; dV += P^T dO and dK += dS^T Q (2 x BM/16
//   wgmma_rs, the dO and Q tiles as MN-major B: [query][d], d contiguous); wait<0>; release the stage.
//   The mask (key j visible to query i iff query_lo(j) <= i < query_hi(j + 1); a contiguous range since key_lo,
//   key_hi grow with i): each thread keeps [qlo, qhi) of its two key rows (empty for a key >= Sk); a tile is tested
//   element by element only when it is not inside [query_lo(last key), query_hi(n0 + 1)) for all 128 keys (a
//   CTA-uniform test: no divergence). Hidden -> P = 0. Padding queries (>= Sq) are hidden by qhi <= Sq and would add
//   nothing anyway (zero dO and Q rows, lse2 +inf).
//   Epilogue: dV and scale dK as T, rows < Sk only.
//   kFusedDq (the atomic backward, see kDqBlock): after the fragments, each warpgroup stores its dS^T half into the
//   tile's dS^T buffer (two, alternating by tile) and announces it (ds_ready_barrier), issues dV and dK, waits for the
//   other half, issues dQ = dS K for its 64 x 64 share, releases the stage once dV and dK are done, then stages the
//   share and bulk-adds it into dq_accum.
template <class T, int D, bool kLower, bool kFusedDq = false>
__global__ void __launch_bounds__(kWsThreads, 1) bwd_dkdv_kernel(const __grid_constant__ BwdArgs a) {
#if XF_SM90A_DEVICE
  using L = DkdvLayout<D, kBwdStages, kFusedDq>;
  constexpr int BM = L::BM, BN = L::BN, STAGES = kBwdStages;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = align1024(smem_raw);
  const uint32_t base = smem_u32(smem);
  const uint32_t s_k = base + L::kK, s_v = base + L::kV, s_q = base + L::kQ, s_do = base + L::kDo;
  const uint32_t bar_kv = base + L::kBar;
  const BwdBarriers<STAGES> bars{bar_kv};

  const int tid = threadIdx.x, wg = tid / 128;  // 0, 1: consumers; 2: the producer warpgroup
  const int n0 = static_cast<int>(blockIdx.x) * BN, hk = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const fa::Mask<kLower> mask(a.band, a.Sq, a.Sk);
  const fa::TileRange tr = mask.query_tiles(n0, BN, BM);  // the query tiles of one head that see a key of the block
  const int n_tiles = tr.count * a.G;                     // ... for each of the G query heads of kv head hk

  if (tid == 0) init_pipeline<STAGES>(bar_kv, &a.tm_q_bm, &a.tm_do_bm, &a.tm_k, &a.tm_v);
  __syncthreads();  // the last CTA-wide barrier: the roles split below

  if (wg == 2) {
    // ---------------- producer warpgroup ----------------
    setmaxnreg_dec<kProducerRegs>();
    if (tid == 256 && n_tiles > 0) produce_dkdv_item<L, D, STAGES>(a, base, n0, hk, b, tr, n_tiles);
    return;  // the producer's path must not rejoin the consumers'
  }
  // ---------------- consumer warpgroups ----------------
  setmaxnreg_inc<kConsumerRegs>();
  const int cw = wg, t = tid % 128, w = t / 32, lane = t % 32;
  const int key_row0 = n0 + 64 * cw + 16 * w + lane / 4;  // this thread's first key (second: +8)
  const KeyRowsMask<kLower> key_mask(mask, key_row0, n0, BN, a.Sk);  // who sees its two keys
  float dvacc[D / 2], dkacc[D / 2], s[BM / 2], dp[BM / 2];
  uint32_t ap[BM / 16][4], ads[BM / 16][4];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dvacc[i] = 0.f, dkacc[i] = 0.f;
  // wgmma descriptors' low words (sw128_desc_lo), built once and opaque (see the persistent kernels below): this
  // warpgroup's 64 keys of K and V, and stage 0's Q and dO tiles as the B of S^T / dP^T (LBO 16); as the B of the
  // rs GEMMs (LBO = BM * 128) they differ by a constant in the LBO field.
  uint32_t k_lo = sw128_desc_lo(s_k + cw * 64 * 128, 16), v_lo = sw128_desc_lo(s_v + cw * 64 * 128, 16),
           q_lo = sw128_desc_lo(s_q, 16), do_lo = sw128_desc_lo(s_do, 16);
  asm volatile("" : "+r"(k_lo), "+r"(v_lo), "+r"(q_lo), "+r"(do_lo));
  constexpr uint32_t kStageLo = L::kTileQ >> 4, kRsLbo = rs_lbo_from_ss(BM);
  // The fused dQ's operands (dq_gemm): this warpgroup's 64 queries of buffer 0's dS^T tile (D = 64: atom cw) and its
  // 64 columns of K (D = 128: atom cw).
  [[maybe_unused]] const uint64_t ds_desc =
      sw128_desc(base + L::kDs + (BM == 128 ? cw : 0) * (BN * 128), BN * 128, 1024);
  [[maybe_unused]] const uint64_t kdq_desc = sw128_desc(s_k + (D == 128 ? cw : 0) * (BN * 128), BN * 128, 1024);
  if (n_tiles > 0) mbar_wait(bar_kv, 0);

#pragma unroll 1  // one tile's registers at a time
  for (int j = 0; j < n_tiles; ++j) {
    const int st = j % STAGES, m = tr.first + j % tr.count;
    const float* lse_st = reinterpret_cast<const float*>(smem + L::kLse + st * BM * 4);
    const float* dlt_st = reinterpret_cast<const float*>(smem + L::kDelta + st * BM * 4);
    mbar_wait(bars.full(st), (j / STAGES) & 1);

    const uint32_t q_st_lo = q_lo + st * kStageLo, do_st_lo = do_lo + st * kStageLo;
    wgmma_fence();
    ss_gemm_desc<T, D, BM>(s, sw128_desc_of(k_lo), BN * 128, sw128_desc_of(q_st_lo), BM * 128);  // S^T (64 x BM)
    wgmma_commit();
    ss_gemm_desc<T, D, BM>(dp, sw128_desc_of(v_lo), BN * 128, sw128_desc_of(do_st_lo), BM * 128);  // dP^T
    wgmma_commit();
    wgmma_wait<1>();
    reg_fence(s);
    // register i: key key_row0 + 8 ((i >> 1) & 1), query m BM + 8 (i / 4) + 2 (lane % 4) + (i & 1)
    const bool full = key_mask.covers(m * BM, (m + 1) * BM);  // CTA-uniform
    const int qc = m * BM + 2 * (lane % 4);
#pragma unroll
    for (int i = 0; i < BM / 2; i += 2) {
      const int col = 8 * (i / 4) + 2 * (lane % 4);
      const float2 l2 = *reinterpret_cast<const float2*>(lse_st + col);
      s[i] = ex2(fmaf(s[i], a.scale_log2, -l2.x));
      s[i + 1] = ex2(fmaf(s[i + 1], a.scale_log2, -l2.y));
      if (!full) {
        const int r = (i >> 1) & 1, q = qc + 8 * (i / 4);
        if (key_mask.hides(r, q)) s[i] = 0.f;
        if (key_mask.hides(r, q + 1)) s[i + 1] = 0.f;
      }
    }
    wgmma_wait<0>();
    reg_fence(dp);
#pragma unroll
    for (int i = 0; i < BM / 2; i += 2) {  // dS^T in place of dP^T
      const float2 dl = *reinterpret_cast<const float2*>(dlt_st + 8 * (i / 4) + 2 * (lane % 4));
      dp[i] = s[i] * (dp[i] - dl.x);
      dp[i + 1] = s[i + 1] * (dp[i + 1] - dl.y);
    }
    pack_p<T, BM>(s, ap);
    pack_p<T, BM>(dp, ads);
    // The fused dQ's share, declared in the loop: its wgmmas overwrite it (scale_d 0 first), so nothing keeps it live
    // from one tile to the next (at function scope its 32 registers stayed live across the S^T / dP^T phase: spills).
    [[maybe_unused]] float dqacc[kFusedDq ? kDqBlock / 2 : 1];
    const int buf = j & 1;  // the fused dQ's dS^T buffer
    dkdv_tile_gemms<T, D, BM, kFusedDq, L::kTileDs>(dvacc, dkacc, dqacc, ap, ads, do_st_lo + kRsLbo, q_st_lo + kRsLbo,
                                                  base + L::kDs, ds_desc, kdq_desc, buf, cw, t, lane);
    reg_fence(dvacc);
    reg_fence(dkacc);
    if (lane == 0) mbar_arrive(bars.empty(st));
    if constexpr (kFusedDq) {
      wgmma_wait<0>();
      reg_fence(dqacc);
      const int g = j / tr.count, qblk = m * BM / kDqBlock + (BM == 128 ? cw : 0);
      reduce_dq(dqacc, smem + L::kDqStage + cw * kDqBlockBytes,
                a.dq_accum + dq_accum_block(b, hk * a.G + g, qblk, D == 128 ? cw : 0, a.H, a.Sq_pad, D), t);
    }
  }
  if constexpr (kFusedDq)
    if (lane == 0) bulk_wait<0>();  // the reductions are done before the CTA's shared memory goes
  const int key_wg = n0 + 64 * cw;  // this warpgroup's first key
  const int64_t off = static_cast<int64_t>(b) * a.ks.batch + static_cast<int64_t>(hk) * a.ks.head +
                      static_cast<int64_t>(key_wg) * a.ks.seq;
  store_rows_bounded<T, D>(dvacc, 1.f, static_cast<T*>(a.dv) + off, a.ks.seq, a.Sk - key_wg, t);
  store_rows_bounded<T, D>(dkacc, a.scale, static_cast<T*>(a.dk) + off, a.ks.seq, a.Sk - key_wg, t);
#endif
}

// dQ. CTA = queries [m0, m0 + 128) of head h: grid (Sq_pad / 128, H, B), the last query block first (the longest
// under a causal mask, as the forward), kWsThreads threads, DqLayout<D>::kBytes of dynamic shared memory.
//   Key tiles Mask::key_tiles(m0, 128, BN) of kv head h / G; a tile not covered by common_keys(m0, last valid query)
//   gets the element mask (-inf before the exponential). No key tile: dQ = 0 stored.
//   Per key tile: S = Q_wg K^T and dP = dO_wg V^T (2 x D/16 wgmma_ss); wait<1>; P = 2^(S scale_log2 - lse2_row);
//   wait<0>; dS = P (dP - Delta_row) -> 16-bit A fragments; dQ += dS K (BN/16 wgmma_rs, the K tile as MN-major B:
//   [key][d], d contiguous); wait<0>; release the stage. Epilogue: scale dQ as T, rows < Sq only.
template <class T, int D, bool kLower>
__global__ void __launch_bounds__(kWsThreads, 1) bwd_dq_kernel(const __grid_constant__ BwdArgs a) {
#if XF_SM90A_DEVICE
  using L = DqLayout<D>;
  constexpr int BN = L::kBlockN, STAGES = kBwdStages;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = align1024(smem_raw);
  const uint32_t base = smem_u32(smem);
  const uint32_t s_q = base + L::kQ, s_do = base + L::kDo, s_k = base + L::kK, s_v = base + L::kV;
  const uint32_t bar_q = base + L::kBar;
  const BwdBarriers<STAGES> bars{bar_q};

  const int tid = threadIdx.x, wg = tid / 128;
  const int m0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * kDqBlockM;
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z), hk = h / a.G;
  const fa::Mask<kLower> mask(a.band, a.Sq, a.Sk);
  const fa::TileRange tr = mask.key_tiles(m0, kDqBlockM, BN);  // may be empty: no query of the block sees a key

  if (tid == 0) init_pipeline<STAGES>(bar_q, &a.tm_q128, &a.tm_do128, &a.tm_k_dq, &a.tm_v_dq);
  __syncthreads();

  if (wg == 2) {
    setmaxnreg_dec<kProducerRegs>();
    if (tid == 256 && tr.count > 0)
      produce_dq_item<L, D, kDqBlockM, STAGES>(base, &a.tm_q128, &a.tm_do128, &a.tm_k_dq, &a.tm_v_dq, m0, h, hk, b, tr);
    return;
  }
  setmaxnreg_inc<kConsumerRegs>();
  const int cw = wg, t = tid % 128, w = t / 32, lane = t % 32;
  const int q_row0 = m0 + 64 * cw + 16 * w + lane / 4;  // this thread's first query (second: +8)
  const int64_t lrow = (static_cast<int64_t>(b) * a.H + h) * a.Sq_pad;  // m0 + 128 <= Sq_pad: in range
  float l2[2], dl[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l2[r] = a.lse2[lrow + q_row0 + 8 * r];
    dl[r] = a.delta[lrow + q_row0 + 8 * r];
  }
  const fa::KeyRange keys[2] = {mask.keys(q_row0), mask.keys(q_row0 + 8)};
  const fa::KeyRange common = mask.common_keys(m0, min(m0 + kDqBlockM, a.Sq) - 1);  // keys all valid rows see
  float dqacc[D / 2], s[BN / 2], dp[BN / 2];
  uint32_t ap[BN / 16][4];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dqacc[i] = 0.f;
  // wgmma descriptors' low words, built once and opaque (as the dK/dV kernel's): this warpgroup's Q and dO rows, and
  // stage 0's K and V tiles as the B of S / dP (LBO 16); K as the B of dQ += dS K (LBO = BN * 128) differs by a
  // constant in the LBO field.
  uint32_t q_lo = sw128_desc_lo(s_q + cw * 64 * 128, 16), do_lo = sw128_desc_lo(s_do + cw * 64 * 128, 16),
           k_lo = sw128_desc_lo(s_k, 16), v_lo = sw128_desc_lo(s_v, 16);
  asm volatile("" : "+r"(q_lo), "+r"(do_lo), "+r"(k_lo), "+r"(v_lo));
  constexpr uint32_t kStageLo = L::kTileKV >> 4, kRsLbo = rs_lbo_from_ss(BN);
  if (tr.count > 0) mbar_wait(bar_q, 0);

#pragma unroll 1
  for (int j = 0; j < tr.count; ++j) {
    const int st = j % STAGES, k0 = (tr.first + j) * BN;
    const uint32_t k_st_lo = k_lo + st * kStageLo, v_st_lo = v_lo + st * kStageLo;
    mbar_wait(bars.full(st), (j / STAGES) & 1);
    wgmma_fence();
    ss_gemm_desc<T, D, BN>(s, sw128_desc_of(q_lo), kDqBlockM * 128, sw128_desc_of(k_st_lo), BN * 128);  // S = Q K^T
    wgmma_commit();
    ss_gemm_desc<T, D, BN>(dp, sw128_desc_of(do_lo), kDqBlockM * 128, sw128_desc_of(v_st_lo), BN * 128);  // dP
    wgmma_commit();
    wgmma_wait<1>();
    reg_fence(s);
    if (!mask.covers(common, k0, k0 + BN)) mask_tile<kLower, BN>(s, mask, keys, k0 + 2 * (lane % 4));
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) s[i] = ex2(fmaf(s[i], a.scale_log2, -l2[(i >> 1) & 1]));
    wgmma_wait<0>();
    reg_fence(dp);
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) dp[i] = s[i] * (dp[i] - dl[(i >> 1) & 1]);
    pack_p<T, BN>(dp, ap);
    wgmma_fence();
    rs_gemm_desc<T, D, BN>(dqacc, ap, sw128_desc_of(k_st_lo + kRsLbo));  // dQ += dS K
    wgmma_commit();
    wgmma_wait<0>();
    reg_fence(dqacc);
    if (lane == 0) mbar_arrive(bars.empty(st));
  }
  const int q_wg0 = m0 + 64 * cw;
  const int64_t off = static_cast<int64_t>(b) * a.qs.batch + static_cast<int64_t>(h) * a.qs.head +
                      static_cast<int64_t>(q_wg0) * a.qs.seq;
  store_rows_bounded<T, D>(dqacc, a.scale, static_cast<T*>(a.dq) + off, a.qs.seq, a.Sq - q_wg0, t);
#endif
}

// ---- the persistent kernels -----------------------------------------------------------------------------------
// The same per-tile math as the kernels above, on a 1-D grid of at most one CTA per SM whose CTAs walk pairs of items
// in fa::TileOrder (the i-th block from the end with the i-th from the start: equal cost under a causal mask), the
// producer loading the next item's once-loaded operands while this item's last tile and epilogue run. The
// once-loaded operands' wgmma descriptors are built once per kernel and kept in registers (ss_gemm_desc): with plain
// ss_gemm, ptxas rebuilt them from the shared-memory base in every tile (the dK/dV tile loop was 825 instructions at
// D = 128 against the one-item kernel's 664, and ran 5-11% slower; now 689, and 0.96x-1.01x). The launcher
// (flash_attention_sm90_backward.cu, persistent_pays) picks per kernel. They do not replace the one-item kernels: run
// as one item per CTA on a grid of every item, they ran 0.93x-0.96x of them at D = 128 and 0.93x-0.99x at D = 64
// (H200, run 29: the longer tile loop above and the item loop's barriers).
//   The two kernels' work lists over 128-row blocks: the dK/dV kernel's items are the key blocks of each kv head
//   (B Hk ceil(Sk / 128)), the dQ kernel's the query blocks of each head (B H Sq_pad / 128).
XF_HOST_DEVICE inline fa::TileOrder<kBwdBlockN> dkdv_order(const BwdArgs& a) {
  const int blocks = (a.Sk + kBwdBlockN - 1) / kBwdBlockN;
  return {blocks, a.Hk, (blocks + 1) / 2 * a.Hk * a.B};
}
XF_HOST_DEVICE inline fa::TileOrder<kDqBlockM> dq_order(const BwdArgs& a) {
  const int blocks = a.Sq_pad / kDqBlockM;
  return {blocks, a.H, (blocks + 1) / 2 * a.H * a.B};
}

// dK / dV, persistent: a 1-D grid of at most one CTA per pair (kWsThreads threads, DkdvLayout<D>::kBytes of dynamic
// shared memory); CTA c walks dkdv_order(a).tile(k, grid, c), k = 0, 1, ...: item u = keys [n0, n0 + 128) of kv
// head hk (n0 = q0_mirrored(u): a pair's first item is its block from the start, the longer under a causal mask).
//   The query tiles an item visits: Mask::query_tiles(n0, 128, BM) = [first, first + cnt) (those with a query that
//   sees a key of the block), for each of the G query heads of hk in turn: j = g cnt + (m - first). cnt = 0 (no
//   query sees the block): nothing is loaded, nobody waits, the block stores zeros.
//   Consumer per query tile (queries m BM .. +BM): S^T = K_wg Q^T and dP^T = V_wg dO^T (2 x D/16 wgmma_ss, two
//   commit groups); wait<1>: S^T done, so P^T = 2^(S^T scale_log2 - lse2[q]) runs while dP^T finishes; wait<0>;
//   dS^T = P^T (dP^T - Delta[q]); P^T, dS^T -> 16-bit A fragments; dV += P^T dO and dK += dS^T Q (2 x BM/16
//   wgmma_rs, the dO and Q tiles as MN-major B: [query][d], d contiguous); wait<0>; release the stage.
//   The mask (key j visible to query i iff query_lo(j) <= i < query_hi(j + 1); a contiguous range since key_lo,
//   key_hi grow with i): each thread keeps [qlo, qhi) of its two key rows (empty for a key >= Sk); a tile is tested
//   element by element only when it is not inside [query_lo(last key), query_hi(n0 + 1)) for all 128 keys (a
//   CTA-uniform test: no divergence). Hidden -> P = 0. Padding queries (>= Sq) are hidden by qhi <= Sq and would add
//   nothing anyway (zero dO and Q rows, lse2 +inf).
//   Epilogue: dV and scale dK as T, rows < Sk only.
//   Across items: K, V have an empty barrier beside their full one (8 arrivals: lane 0 of each consumer warp once
//   the item's last S^T, dP^T, their only readers, are complete), so the producer loads the next item's K, V while
//   this item's last tile and epilogue run; the ring's use count it runs on across items (stage it % 2, parity
//   (it / 2) & 1), and so does the K/V load count kn (parity kn & 1). Both roles walk the same items and count the
//   same loads. kFusedDq: as the one-item kernel's (the dS^T buffer alternates with the CTA's tile count, across
//   items), and K, V are released after the item's last dQ = dS K, their last reader.
template <class T, int D, bool kLower, bool kFusedDq = false>
__global__ void __launch_bounds__(kWsThreads, 1) bwd_dkdv_persistent_kernel(const __grid_constant__ BwdArgs a) {
#if XF_SM90A_DEVICE
  using L = DkdvLayout<D, kBwdStages, kFusedDq>;
  constexpr int BM = L::BM, BN = L::BN, STAGES = kBwdStages;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = align1024(smem_raw);
  const uint32_t base = smem_u32(smem);
  const uint32_t s_k = base + L::kK, s_v = base + L::kV, s_q = base + L::kQ, s_do = base + L::kDo;
  const uint32_t bar_kv = base + L::kBar, bar_kv_empty = BwdBarriers<STAGES>{bar_kv}.once_empty();
  const BwdBarriers<STAGES> bars{bar_kv};

  const int tid = threadIdx.x, wg = tid / 128;  // 0, 1: consumers; 2: the producer warpgroup
  const fa::TileOrder<BN> order = dkdv_order(a);
  const fa::Mask<kLower> mask(a.band, a.Sq, a.Sk);
  const int grid = static_cast<int>(gridDim.x), cta = static_cast<int>(blockIdx.x);

  if (tid == 0) init_pipeline<STAGES, true>(bar_kv, &a.tm_q_bm, &a.tm_do_bm, &a.tm_k, &a.tm_v);
  __syncthreads();  // the last CTA-wide barrier: the roles split below

  if (wg == 2) {
    // ---------------- producer warpgroup ----------------
    setmaxnreg_dec<kProducerRegs>();
    if (tid == 256) {
      int it = 0, kn = 0;
      for (int k = 0;; ++k) {
        const int u = order.tile(k, grid, cta);
        if (u == fa::TileOrder<BN>::kEnd) break;
        if (u == fa::TileOrder<BN>::kNone) continue;
        const int n0 = order.q0_mirrored(u), hk = order.head(u), b = order.batch(u);
        const fa::TileRange tr = mask.query_tiles(n0, BN, BM);  // the query tiles of one head that see the block
        const int n_tiles = tr.count * a.G;                     // ... for each of the G query heads of kv head hk
        if (n_tiles == 0) continue;
        mbar_wait(bar_kv_empty, (kn++ & 1) ^ 1);  // the previous item's last S^T, dP^T are done
        load_key_block<L, D>(a, base, n0, hk, b, bar_kv);
        for (int j = 0; j < n_tiles; ++j, ++it) {
          const int st = it % STAGES, g = j / tr.count, m = tr.first + (j - g * tr.count), h = hk * a.G + g;
          mbar_wait(bars.empty(st), ((it / STAGES) & 1) ^ 1);
          load_query_tile<L, D>(a, base, st, m, h, b, bars.full(st));
        }
      }
    }
    return;  // the producer's path must not rejoin the consumers'
  }
  // ---------------- consumer warpgroups ----------------
  setmaxnreg_inc<kConsumerRegs>();
  const int cw = wg, t = tid % 128, w = t / 32, lane = t % 32;
  // This warpgroup's 64 keys as wgmma descriptors, built once: the tile loop adds a k step's offset to them
  // (ss_gemm_desc). The empty asm makes them opaque, so ptxas keeps them in registers across the item loop instead of
  // rematerialising them from the shared-memory base in every tile (the loop was 825 instructions a tile at D = 128
  // with plain ss_gemm, 709 without the asm, 684 with it; the one-item kernel's is 664).
  uint64_t k_desc = sw128_desc(s_k + cw * 64 * 128, 16, 1024), v_desc = sw128_desc(s_v + cw * 64 * 128, 16, 1024);
  // Stage 0's Q and dO tiles likewise (low words; a stage adds kStageLo, the rs GEMMs' LBO kRsLbo).
  uint32_t q_lo = sw128_desc_lo(s_q, 16), do_lo = sw128_desc_lo(s_do, 16);
  asm volatile("" : "+l"(k_desc), "+l"(v_desc), "+r"(q_lo), "+r"(do_lo));
  constexpr uint32_t kStageLo = L::kTileQ >> 4, kRsLbo = rs_lbo_from_ss(BM);
  // The fused dQ's operands, as the one-item kernel's.
  [[maybe_unused]] const uint64_t ds_desc =
      sw128_desc(base + L::kDs + (BM == 128 ? cw : 0) * (BN * 128), BN * 128, 1024);
  [[maybe_unused]] const uint64_t kdq_desc = sw128_desc(s_k + (D == 128 ? cw : 0) * (BN * 128), BN * 128, 1024);
  int it = 0, kn = 0;
  for (int k = 0;; ++k) {
    const int u = order.tile(k, grid, cta);
    if (u == fa::TileOrder<BN>::kEnd) break;
    if (u == fa::TileOrder<BN>::kNone) continue;
    const int n0 = order.q0_mirrored(u), hk = order.head(u), b = order.batch(u);
    const fa::TileRange tr = mask.query_tiles(n0, BN, BM);
    const int n_tiles = tr.count * a.G;
    const int key_row0 = n0 + 64 * cw + 16 * w + lane / 4;  // this thread's first key (second: +8)
    const KeyRowsMask<kLower> key_mask(mask, key_row0, n0, BN, a.Sk);  // who sees its two keys
    float dvacc[D / 2], dkacc[D / 2], s[BM / 2], dp[BM / 2];
    uint32_t ap[BM / 16][4], ads[BM / 16][4];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) dvacc[i] = 0.f, dkacc[i] = 0.f;
    if (n_tiles > 0) mbar_wait(bar_kv, kn++ & 1);

    // Advanced per tile: no division in the loop (g: the query head hk G + g of the tile, for the fused dQ).
    int st = it % STAGES, phase = (it / STAGES) & 1, m = tr.first, g = 0;
#pragma unroll 1  // one tile's registers at a time
    for (int j = 0; j < n_tiles; ++j) {
      const uint32_t q_st_lo = q_lo + st * kStageLo, do_st_lo = do_lo + st * kStageLo;
      const float* lse_st = reinterpret_cast<const float*>(smem + L::kLse + st * BM * 4);
      const float* dlt_st = reinterpret_cast<const float*>(smem + L::kDelta + st * BM * 4);
      mbar_wait(bars.full(st), phase);

      wgmma_fence();
      ss_gemm_desc<T, D, BM>(s, k_desc, BN * 128, sw128_desc_of(q_st_lo), BM * 128);  // S^T (64 keys x BM queries)
      wgmma_commit();
      ss_gemm_desc<T, D, BM>(dp, v_desc, BN * 128, sw128_desc_of(do_st_lo), BM * 128);  // dP^T
      wgmma_commit();
      wgmma_wait<1>();
      reg_fence(s);
      // register i: key key_row0 + 8 ((i >> 1) & 1), query m BM + 8 (i / 4) + 2 (lane % 4) + (i & 1)
      const bool full = key_mask.covers(m * BM, (m + 1) * BM);  // CTA-uniform
      const int qc = m * BM + 2 * (lane % 4);
#pragma unroll
      for (int i = 0; i < BM / 2; i += 2) {
        const int col = 8 * (i / 4) + 2 * (lane % 4);
        const float2 l2 = *reinterpret_cast<const float2*>(lse_st + col);
        s[i] = ex2(fmaf(s[i], a.scale_log2, -l2.x));
        s[i + 1] = ex2(fmaf(s[i + 1], a.scale_log2, -l2.y));
        if (!full) {
          const int r = (i >> 1) & 1, q = qc + 8 * (i / 4);
          if (key_mask.hides(r, q)) s[i] = 0.f;
          if (key_mask.hides(r, q + 1)) s[i + 1] = 0.f;
        }
      }
      wgmma_wait<0>();
      reg_fence(dp);
      if (!kFusedDq && j == n_tiles - 1 && lane == 0) mbar_arrive(bar_kv_empty);  // K, V read for the last time
#pragma unroll
      for (int i = 0; i < BM / 2; i += 2) {  // dS^T in place of dP^T
        const float2 dl = *reinterpret_cast<const float2*>(dlt_st + 8 * (i / 4) + 2 * (lane % 4));
        dp[i] = s[i] * (dp[i] - dl.x);
        dp[i + 1] = s[i + 1] * (dp[i + 1] - dl.y);
      }
      pack_p<T, BM>(s, ap);
      pack_p<T, BM>(dp, ads);
      const int buf = (it + j) & 1;                          // the fused dQ's dS^T buffer
      [[maybe_unused]] float dqacc[kFusedDq ? kDqBlock / 2 : 1];  // its share (in the loop: see the one-item kernel)
      dkdv_tile_gemms<T, D, BM, kFusedDq, L::kTileDs>(dvacc, dkacc, dqacc, ap, ads, do_st_lo + kRsLbo,
                                                    q_st_lo + kRsLbo, base + L::kDs, ds_desc, kdq_desc, buf, cw, t,
                                                    lane);
      reg_fence(dvacc);
      reg_fence(dkacc);
      if (lane == 0) mbar_arrive(bars.empty(st));
      if constexpr (kFusedDq) {
        wgmma_wait<0>();
        if (j == n_tiles - 1 && lane == 0) mbar_arrive(bar_kv_empty);  // K, V read for the last time (dQ = dS K)
        reg_fence(dqacc);
        const int qblk = m * BM / kDqBlock + (BM == 128 ? cw : 0);
        reduce_dq(dqacc, smem + L::kDqStage + cw * kDqBlockBytes,
                  a.dq_accum + dq_accum_block(b, hk * a.G + g, qblk, D == 128 ? cw : 0, a.H, a.Sq_pad, D), t);
      }
      if (++st == STAGES) st = 0, phase ^= 1;
      if (++m == tr.first + tr.count) m = tr.first, ++g;
    }
    it += n_tiles;
    const int key_wg = n0 + 64 * cw;  // this warpgroup's first key
    const int64_t off = static_cast<int64_t>(b) * a.ks.batch + static_cast<int64_t>(hk) * a.ks.head +
                        static_cast<int64_t>(key_wg) * a.ks.seq;
    store_rows_bounded<T, D>(dvacc, 1.f, static_cast<T*>(a.dv) + off, a.ks.seq, a.Sk - key_wg, t);
    store_rows_bounded<T, D>(dkacc, a.scale, static_cast<T*>(a.dk) + off, a.ks.seq, a.Sk - key_wg, t);
  }
  if constexpr (kFusedDq)
    if (lane == 0) bulk_wait<0>();  // the reductions are done before the CTA's shared memory goes
#endif
}

// dQ, persistent: a 1-D grid of at most one CTA per pair (kWsThreads threads, DqLayout<D>::kBytes of dynamic shared
// memory); CTA c walks dq_order(a).tile(k, grid, c): item u = queries [m0, m0 + 128) of head h (m0 = q0(u): a
// pair's first item is its block from the end, the longer under a causal mask, as the forward's).
//   Key tiles Mask::key_tiles(m0, 128, BN) of kv head h / G; a tile not covered by common_keys(m0, last valid query)
//   gets the element mask (-inf before the exponential). No key tile: dQ = 0 stored.
//   Per key tile: S = Q_wg K^T and dP = dO_wg V^T (2 x D/16 wgmma_ss); wait<1>; P = 2^(S scale_log2 - lse2_row);
//   wait<0>; dS = P (dP - Delta_row) -> 16-bit A fragments; dQ += dS K (BN/16 wgmma_rs, the K tile as MN-major B:
//   [key][d], d contiguous); wait<0>; release the stage. Epilogue: scale dQ as T, rows < Sq only.
//   Across items: Q, dO get an empty barrier as the dK/dV kernel's K, V do.
template <class T, int D, bool kLower>
__global__ void __launch_bounds__(kWsThreads, 1) bwd_dq_persistent_kernel(const __grid_constant__ BwdArgs a) {
#if XF_SM90A_DEVICE
  using L = DqLayout<D>;
  constexpr int BN = L::kBlockN, STAGES = kBwdStages;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = align1024(smem_raw);
  const uint32_t base = smem_u32(smem);
  const uint32_t s_q = base + L::kQ, s_do = base + L::kDo, s_k = base + L::kK, s_v = base + L::kV;
  const uint32_t bar_q = base + L::kBar, bar_q_empty = BwdBarriers<STAGES>{bar_q}.once_empty();
  const BwdBarriers<STAGES> bars{bar_q};

  const int tid = threadIdx.x, wg = tid / 128;
  const fa::TileOrder<kDqBlockM> order = dq_order(a);
  const fa::Mask<kLower> mask(a.band, a.Sq, a.Sk);
  const int grid = static_cast<int>(gridDim.x), cta = static_cast<int>(blockIdx.x);

  if (tid == 0) init_pipeline<STAGES, true>(bar_q, &a.tm_q128, &a.tm_do128, &a.tm_k_dq, &a.tm_v_dq);
  __syncthreads();

  if (wg == 2) {
    setmaxnreg_dec<kProducerRegs>();
    if (tid == 256) {
      int it = 0, qn = 0;
      for (int k = 0;; ++k) {
        const int u = order.tile(k, grid, cta);
        if (u == fa::TileOrder<kDqBlockM>::kEnd) break;
        if (u == fa::TileOrder<kDqBlockM>::kNone) continue;
        const int m0 = order.q0(u), h = order.head(u), b = order.batch(u), hk = h / a.G;
        const fa::TileRange tr = mask.key_tiles(m0, kDqBlockM, BN);  // may be empty: no query of it sees a key
        if (tr.count == 0) continue;
        mbar_wait(bar_q_empty, (qn++ & 1) ^ 1);  // the previous item's last S, dP are done
        mbar_arrive_expect_tx(bar_q, 2 * L::kTileQ);
#pragma unroll
        for (int at = 0; at < D / 64; ++at) {
          tma_load_4d(s_q + at * (kDqBlockM * 128), &a.tm_q128, at * 64, m0, h, b, bar_q);
          tma_load_4d(s_do + at * (kDqBlockM * 128), &a.tm_do128, at * 64, m0, h, b, bar_q);
        }
        for (int j = 0; j < tr.count; ++j, ++it) {
          const int st = it % STAGES, k0 = (tr.first + j) * BN;
          mbar_wait(bars.empty(st), ((it / STAGES) & 1) ^ 1);
          mbar_arrive_expect_tx(bars.full(st), 2 * L::kTileKV);
#pragma unroll
          for (int at = 0; at < D / 64; ++at) {
            tma_load_4d(s_k + st * L::kTileKV + at * (BN * 128), &a.tm_k_dq, at * 64, k0, hk, b, bars.full(st));
            tma_load_4d(s_v + st * L::kTileKV + at * (BN * 128), &a.tm_v_dq, at * 64, k0, hk, b, bars.full(st));
          }
        }
      }
    }
    return;
  }
  setmaxnreg_inc<kConsumerRegs>();
  const int cw = wg, t = tid % 128, w = t / 32, lane = t % 32;
  uint64_t q_desc = sw128_desc(s_q + cw * 64 * 128, 16, 1024), do_desc = sw128_desc(s_do + cw * 64 * 128, 16, 1024);
  uint32_t k_lo = sw128_desc_lo(s_k, 16), v_lo = sw128_desc_lo(s_v, 16);  // stage 0's K, V (low words)
  // kept in registers across the item loop (see the dK/dV kernel)
  asm volatile("" : "+l"(q_desc), "+l"(do_desc), "+r"(k_lo), "+r"(v_lo));
  constexpr uint32_t kStageLo = L::kTileKV >> 4, kRsLbo = rs_lbo_from_ss(BN);
  int it = 0, qn = 0;
  for (int k = 0;; ++k) {
    const int u = order.tile(k, grid, cta);
    if (u == fa::TileOrder<kDqBlockM>::kEnd) break;
    if (u == fa::TileOrder<kDqBlockM>::kNone) continue;
    const int m0 = order.q0(u), h = order.head(u), b = order.batch(u);
    const fa::TileRange tr = mask.key_tiles(m0, kDqBlockM, BN);
    const int q_row0 = m0 + 64 * cw + 16 * w + lane / 4;                // this thread's first query (second: +8)
    const int64_t lrow = (static_cast<int64_t>(b) * a.H + h) * a.Sq_pad;  // m0 + 128 <= Sq_pad: in range
    float l2[2], dl[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l2[r] = a.lse2[lrow + q_row0 + 8 * r];
      dl[r] = a.delta[lrow + q_row0 + 8 * r];
    }
    const fa::KeyRange keys[2] = {mask.keys(q_row0), mask.keys(q_row0 + 8)};
    const fa::KeyRange common = mask.common_keys(m0, min(m0 + kDqBlockM, a.Sq) - 1);  // keys all valid rows see
    float dqacc[D / 2], s[BN / 2], dp[BN / 2];
    uint32_t ap[BN / 16][4];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) dqacc[i] = 0.f;
    if (tr.count > 0) mbar_wait(bar_q, qn++ & 1);

    int st = it % STAGES, phase = (it / STAGES) & 1;  // advanced per tile
#pragma unroll 1
    for (int j = 0; j < tr.count; ++j) {
      const int k0 = (tr.first + j) * BN;
      const uint32_t k_st_lo = k_lo + st * kStageLo, v_st_lo = v_lo + st * kStageLo;
      mbar_wait(bars.full(st), phase);
      wgmma_fence();
      ss_gemm_desc<T, D, BN>(s, q_desc, kDqBlockM * 128, sw128_desc_of(k_st_lo), BN * 128);  // S = Q K^T
      wgmma_commit();
      ss_gemm_desc<T, D, BN>(dp, do_desc, kDqBlockM * 128, sw128_desc_of(v_st_lo), BN * 128);  // dP = dO V^T
      wgmma_commit();
      wgmma_wait<1>();
      reg_fence(s);
      if (!mask.covers(common, k0, k0 + BN)) mask_tile<kLower, BN>(s, mask, keys, k0 + 2 * (lane % 4));
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) s[i] = ex2(fmaf(s[i], a.scale_log2, -l2[(i >> 1) & 1]));
      wgmma_wait<0>();
      reg_fence(dp);
      if (j == tr.count - 1 && lane == 0) mbar_arrive(bar_q_empty);  // Q, dO read for the last time
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) dp[i] = s[i] * (dp[i] - dl[(i >> 1) & 1]);
      pack_p<T, BN>(dp, ap);
      wgmma_fence();
      rs_gemm_desc<T, D, BN>(dqacc, ap, sw128_desc_of(k_st_lo + kRsLbo));  // dQ += dS K
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(dqacc);
      if (lane == 0) mbar_arrive(bars.empty(st));
      if (++st == STAGES) st = 0, phase ^= 1;
    }
    it += tr.count;
    const int q_wg0 = m0 + 64 * cw;
    const int64_t off = static_cast<int64_t>(b) * a.qs.batch + static_cast<int64_t>(h) * a.qs.head +
                        static_cast<int64_t>(q_wg0) * a.qs.seq;
    store_rows_bounded<T, D>(dqacc, a.scale, static_cast<T*>(a.dq) + off, a.qs.seq, a.Sq - q_wg0, t);
  }
#endif
}

}  // namespace xfr::cuda::sm90

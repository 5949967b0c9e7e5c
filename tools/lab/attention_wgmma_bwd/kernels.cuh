// Device code of the Hopper attention BACKWARD lab (tools/lab/attention_wgmma_bwd.cu, which documents the lab):
// the fp32 reference forward and backward (reference3_*, any shape), the Delta / lse pre-kernels, the dK/dV kernel
// (b1 and b2), the separate dQ kernel (b1), the dQ conversion (b2) and b3's kernels (bwd3_*). sm_90a only. The
// forward lab's device header (included below) brings fill_randn, pack_p, align1024 and the Hopper PTX / wgmma
// wrappers.
//
// Notation: per (b, h), S_ij = q_i . k_j (raw), P_ij = exp(scale S_ij - lse_i) (lse natural, from the forward),
// dP_ij = dout_i . v_j, Delta_i = dout_i . out_i = sum_j P_ij dP_ij (b3: minus dlse_i when given: the gradient
// that reaches lse adds dlse_i P_ij to dS_ij), dS_ij = P_ij (dP_ij - Delta_i);
// dq_i = scale sum_j dS_ij k_j, dk_j = scale sum_i dS_ij q_i, dv_j = sum_i P_ij dout_i. In the kernels,
// lse2 = lse * log2(e) and scale_log2 = scale * log2(e), so P = 2^(S scale_log2 - lse2) with one ex2.
#pragma once
#include <cuda.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "ops/cuda/flash_attention_mask.h"       // Mask<kLower>, AttentionBand (b3: production's band helper)
#include "tools/lab/attention_wgmma/kernels.cuh"  // lab::reference_attention, fill_randn, pack_p, causal_mask, ...

namespace lab {
namespace bwd {

// =====================================================================================================================
// Reference backward (the kernels reference3_* below, which check every variant): fp32, one warp per row, every
// score recomputed from q, k and lse; expf. Slow and obviously right. Lane l holds dims l, l+32, ... of a row
// (coalesced loads of one k/v/q/dout row). Beside each gradient it writes a magnitude bound that the tolerance of
// the lab is a multiple of (attention_wgmma_bwd.cu, "Tolerances"):
//   mag_dq_id = scale sum_j P_ij (|dP_ij| + |Delta_i|) |k_jd|     (>= |dq_id| and >= scale sum_j |dS_ij| |k_jd|)
//   mag_dk_jd = scale sum_i P_ij (|dP_ij| + |Delta_i|) |q_id|
//   mag_dv_jd = sum_i P_ij |dout_id|
// =====================================================================================================================
template <int D>
__device__ __forceinline__ float warp_dot(const float (&a)[D / 32], const float (&b)[D / 32]) {
  float p = 0.f;
#pragma unroll
  for (int t = 0; t < D / 32; ++t) p += a[t] * b[t];
#pragma unroll
  for (int off = 16; off > 0; off /= 2) p += __shfl_xor_sync(0xffffffffu, p, off);
  return p;
}

template <int D>
__device__ __forceinline__ void load_row(float (&r)[D / 32], const bf16* __restrict__ g, int lane) {  // g: (D)
#pragma unroll
  for (int t = 0; t < D / 32; ++t) r[t] = __bfloat162float(g[lane + 32 * t]);
}

// =====================================================================================================================
// Pre-kernel of every fast variant: Delta_i = sum_d dout_id out_id (fp32 from the bf16 inputs) and
// lse2_i = lse_i log2(e). One warp per row; grid B*H*S/8 blocks of 256.
// =====================================================================================================================
template <int D>
__global__ void __launch_bounds__(256) bwd_prep(const bf16* __restrict__ out,   // (B, H, S, D)
                                                const bf16* __restrict__ dout,  // (B, H, S, D)
                                                const float* __restrict__ lse,  // (B, H, S)
                                                float* __restrict__ delta,      // (B, H, S)
                                                float* __restrict__ lse2,       // (B, H, S)
                                                size_t rows) {
  const int lane = threadIdx.x % 32;
  const size_t row = static_cast<size_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  if (row >= rows) return;
  float a[D / 32], b[D / 32];
  load_row<D>(a, out + row * D, lane);
  load_row<D>(b, dout + row * D, lane);
  const float dlt = warp_dot<D>(a, b);
  if (lane == 0) {
    delta[row] = dlt;
    lse2[row] = lse[row] * kLog2e;
  }
}

// b2's last step: dq (bf16) = scale * dq_accum (fp32, summed by red.global.add over the key blocks).
__global__ void dq_convert(const float* __restrict__ acc, bf16* __restrict__ dq, size_t n, float scale) {  // (n) each
  const size_t n4 = n / 4;  // n = B*H*S*D, a multiple of 4
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float4 a = reinterpret_cast<const float4*>(acc)[i];
    uint2 o;
    o.x = pack2<bf16>(a.x * scale, a.y * scale);
    o.y = pack2<bf16>(a.z * scale, a.w * scale);
    reinterpret_cast<uint2*>(dq)[i] = o;
  }
}

// =====================================================================================================================
// Pieces shared by the fast kernels.
// =====================================================================================================================
// 1-D bulk copy global -> shared (PTX ISA 9.7.9.25 cp.async.bulk; sm_90): bytes a multiple of 16, both addresses
// 16-byte aligned; completes `bytes` transactions on the barrier. Lab-local (ptx.cuh is production's).
__device__ __forceinline__ void bulk_load_1d(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(reinterpret_cast<uint64_t>(src)), "r"(bytes), "r"(bar)
               : "memory");
}

// acc (64 x N, fp32) = A (64 x D) B (N x D)^T, both K-major sw128 tiles in shared memory (the forward's qk_gemm
// with the tiles' atom strides as arguments: an R-row tile has atom stride R * 128 bytes).
//   a_rows: the first of the warpgroup's 64 rows of A in atom 0 (a 64-row offset = 8 KB keeps the 1024-B phase);
//   b_tile: row 0 of B's tile, atom 0.
template <int D, int N, class T = bf16>
__device__ __forceinline__ void ss_gemm(float (&acc)[N / 2], uint32_t a_rows, uint32_t a_atom, uint32_t b_tile,
                                        uint32_t b_atom) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {   // wgmma K = 16 bf16 = 32 B along the swizzled row; 4 steps per atom
    const uint32_t koff = (kk % 4) * 32;  // LBO unused for K-major sw128 (16 B, encoded 1); SBO = 8 rows
    const uint64_t da = sw128_desc(a_rows + (kk / 4) * a_atom + koff, 16, 1024);
    const uint64_t db = sw128_desc(b_tile + (kk / 4) * b_atom + koff, 16, 1024);
    wgmma_ss<N, T>(acc, da, db, kk > 0 ? 1 : 0);
  }
}

// acc (64 x D, fp32) += A (64 x K, bf16 register fragments, one per 16 k) B (K x D): B's tile is [k][d] with d
// contiguous (MN-major, imm-trans-b = 1): LBO = b_atom = the step between 64-column atoms of d (K rows x 128 B),
// SBO = 1024 = 8 rows of k; 16 more k = +2048 B (the forward's pv_gemm with the tile height as an argument).
template <int D, int K, class T = bf16>
__device__ __forceinline__ void rs_gemm(float (&acc)[D / 2], const uint32_t (&a)[K / 16][4], uint32_t b_tile,
                                        uint32_t b_atom) {
#pragma unroll
  for (int j = 0; j < K / 16; ++j) wgmma_rs<D, T>(acc, a[j], sw128_desc(b_tile + j * 16 * 128, b_atom, 1024), 1);
}

// Stores a warpgroup's 64 x D fp32 accumulator, times `mul`, as bf16 rows of g (row r of the fragment -> g + r*D):
// 4-byte stores straight from the fragment (a quad writes 16 contiguous bytes per row). Not staged through shared
// memory: it runs once per CTA after a loop of S/BM tiles, and in b2 the K tile it would reuse is still read by
// the other warpgroup's last dQ wgmma.
template <int D>
__device__ __forceinline__ void store_rows_bf16(const float (&acc)[D / 2], float mul, bf16* __restrict__ g, int t) {
  const int w = t / 32, lane = t % 32;  // g: (64, D) rows of this warpgroup
#pragma unroll
  for (int i = 0; i < D / 2; i += 2) {
    const int row = 16 * w + lane / 4 + 8 * ((i >> 1) & 1), col = 8 * (i / 4) + 2 * (lane % 4);
    *reinterpret_cast<uint32_t*>(g + static_cast<size_t>(row) * D + col) = pack2<bf16>(acc[i] * mul, acc[i + 1] * mul);
  }
}

// =====================================================================================================================
// dK/dV kernel (b1: DQ_ATOMIC = false; b2: true). FlashAttention-3's hopper backward structure, written from its
// published description: the CTA owns BN = 128 keys of one (b, h) and loops over the query tiles that see them.
//   CTA: kBwdThreads = 384 threads = warpgroups 0, 1 (consumers, 64 keys each = wgmma's M; setmaxnreg 240) +
//   warpgroup 2 (producer: one thread issues every TMA; setmaxnreg 24) (kBwdThreads' note). Grid (S/128, H, B); causal: key
//   block 0 (the most query tiles) is blockIdx.x = 0, launched first.
//   Query tile BM: 64 at D = 128, 128 at D = 64, fixed by registers. A consumer thread holds dV and dK
//   (2 x D/2 fp32) for the whole loop plus S^T and dP^T of a tile (2 x BM/2): 128 + 64 = 192 at D = 128 with
//   BM = 64, 64 + 128 = 192 at D = 64 with BM = 128, then the bf16 P^T / dS^T fragments (2 x BM/4) while S^T and
//   dP^T die; BM = 128 at D = 128 would need 256 before addresses, over the 224 cap. b2 adds the dQ partial
//   (64 x 64: 32 fp32), live only after dV/dK's wgmmas completed (their A fragments are dead by then).
//   Shared memory (sw128 tiles, 1024-aligned): K, V (BN x D, loaded once) + STAGES x (Q, dO: BM x D; lse2,
//   Delta: BM fp32) [+ b2: 2 x dS^T (BN x BM bf16)] + barriers. STAGES = 2: 128 KB at D = 128 (b2 160 KB),
//   96 KB at D = 64 (b2 160 KB); under the 227 KB per block, one CTA per SM (the 240-register consumers).
//   Barriers: kv_full (K and V, tx), full[s] (Q, dO, lse2, Delta of one tile: the producer's arrive.expect_tx
//   + 2 BM D 2 + 2 BM 4 bytes of TMA), empty[s] (8 arrivals: lane 0 of each consumer warp after its wgmmas
//   reading stage s completed). Use u = j / STAGES of stage s: consumers wait full with parity u & 1, the
//   producer waits empty with parity (u & 1) ^ 1 (passes at once for u = 0: a fresh barrier's "previous" phase,
//   parity 1, counts as complete). kv_full is used once: parity 0.
//   Consumer per query tile j (queries m*BM .. +BM, m = m_begin + j):
//     S^T = K_wg Q^T and dP^T = V_wg dO^T (2 x D/16 wgmma_ss, two commit groups); wait<1>: S^T done, so
//     P^T = 2^(S^T scale_log2 - lse2[q]) (zero where key > query on the causal diagonal tiles) runs while dP^T
//     finishes; wait<0>; dS^T = P^T (dP^T - Delta[q]); P^T, dS^T -> bf16 A fragments (register i of the m64nBM
//     accumulator = (key row, query col); the fragment of queries 16c..16c+15 is registers 8c..8c+7, pack_p).
//     dV += P^T dO and dK += dS^T Q (2 x BM/16 wgmma_rs, dO and Q tiles as MN-major B: [query][d], d
//     contiguous); wait<0>; release the stage. Overlap: TMA runs a stage ahead; P^T's exponentials run under
//     dP^T's wgmmas; the two consumer warpgroups interleave unsynchronised (b1).
//   b2 (dQ by atomics, instead of b1's separate kernel): after dS^T, each consumer writes its 64 key rows of
//     dS^T as bf16 into dS buffer (j & 1) ([key][query], query contiguous, sw128), fence.proxy.async, named
//     barrier over the 256 consumer threads; then, after dV/dK's wgmmas, dQ_part = dS K_slice (8 wgmma_ss_mn
//     m64n64k16: A = dS as MN-major [key][query] tile, M = 64 queries; B = the K tile as MN-major [key][d],
//     N = 64 columns of d): at BM = 64 (D = 128) warpgroup cw takes all 64 queries and d columns 64cw..; at
//     BM = 128 (D = 64) queries 64cw.. and all 64 columns. Then 32 red.global.add.f32 per thread into the fp32
//     dq_accum; a conversion kernel scales and rounds it. The dS buffer is double-buffered so one barrier per
//     tile suffices: a warpgroup passing tile j's barrier knows the other finished tile j-1 (its dQ wgmma read
//     buffer (j-1) & 1, which tile j+1 overwrites) before arriving.
//   Epilogue: dV, scale * dK straight to global as bf16 (store_rows_bf16).
// =====================================================================================================================
constexpr int kBwdBlockN = 128;
// Threads of both fast kernels: FA3's 3 warpgroups. Consumer warpgroups 0, 1 and producer warpgroup 2 under
// __launch_bounds__(384, 1) (168 registers a thread at entry); the producer gives back to 24 and the consumers take
// 240 with setmaxnreg: 128 x 24 + 256 x 240 = 384 x 168.
// History (H200, 2026-11-30): the first version (this shape) spilled 260-1064 bytes a kernel, ptxas keeping the
// consumer region at the entry's 168. The cause was the __trap() of the old hang-detecting mbar_wait: any trap in a
// setmaxnreg region makes ptxas (nvcc 13.0) allocate the kernel under the entry budget. The workaround tried then,
// 288 threads (2 consumer warpgroups + 1 producer warp) under __maxnreg__(224), compiled but could not launch
// ("too many resources requested", maxThreadsPerBlock 256): the register file is split over the SM's 4
// sub-partitions (16,384 registers each; a warp lives on one), and 9 warps put 3 of 224 registers (21,504) on one.
// 3 warpgroups at 24 / 240 fit exactly (24 x 32 + 2 x 240 x 32 = 16,128 per sub-partition). With the trap-free
// mbar_wait (ptx.cuh) b1 compiles without spills (run 13: all cases PASS); b2 spills 36-136 bytes when causal.
constexpr int kBwdThreads = kWsThreads;  // kProducerRegs / kConsumerRegs: ops/cuda/device/sm90/attention.cuh

template <int D>
constexpr int bwd_block_m() {  // query rows per tile of the dK/dV kernel (see the register budget above)
  return D == 64 ? 128 : 64;
}

template <int D, bool DQ_ATOMIC, int STAGES>
struct DkdvLayout {  // byte offsets from the 1024-aligned base
  static constexpr int BM = bwd_block_m<D>(), BN = kBwdBlockN;
  static constexpr int kTileKV = BN * D * 2, kTileQ = BM * D * 2, kTileDs = BN * BM * 2;
  static constexpr int kK = 0, kV = kTileKV, kQ = 2 * kTileKV, kDo = kQ + STAGES * kTileQ;
  static constexpr int kDs = kDo + STAGES * kTileQ;  // b2 only: 2 buffers
  static constexpr int kLse = kDs + (DQ_ATOMIC ? 2 * kTileDs : 0), kDelta = kLse + STAGES * BM * 4;
  static constexpr int kBar = kDelta + STAGES * BM * 4;
  static constexpr int kBars = 1 + 2 * STAGES;  // kv_full, full[STAGES], empty[STAGES]
  static constexpr int kBytes = kBar + kBars * 8 + 1024;  // + alignment slack
  static constexpr uint32_t kTileTx = 2 * kTileQ + 2 * BM * 4;  // Q + dO + lse2 + Delta of one query tile
  static_assert(kTileKV % 1024 == 0 && kTileQ % 1024 == 0 && kTileDs % 1024 == 0, "sw128 tiles must stay 1024-aligned");
  static_assert(kBytes <= 227 * 1024, "over the 227 KB of shared memory a block may have");
};

template <int D, bool CAUSAL, bool DQ_ATOMIC, int STAGES>
__global__ void __launch_bounds__(kBwdThreads, 1) bwd_dkdv(const __grid_constant__ CUtensorMap tm_q,   // (B*H*S, D) bf16, box BM rows
                                                   const __grid_constant__ CUtensorMap tm_do,  // (B*H*S, D) bf16, box BM rows
                                                   const __grid_constant__ CUtensorMap tm_k,   // (B*H*S, D) bf16, box 128 rows
                                                   const __grid_constant__ CUtensorMap tm_v,   // (B*H*S, D) bf16, box 128 rows
                                                   const float* __restrict__ lse2,    // (B, H, S) lse * log2(e)
                                                   const float* __restrict__ delta,   // (B, H, S)
                                                   bf16* __restrict__ dk,             // (B, H, S, D)
                                                   bf16* __restrict__ dv,             // (B, H, S, D)
                                                   float* __restrict__ dq_accum,      // (B, H, S, D) b2 only (zeroed)
                                                   int H, int S, float scale, float scale_log2) {
  using L = DkdvLayout<D, DQ_ATOMIC, STAGES>;
  constexpr int BM = L::BM, BN = L::BN;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = align1024(smem_raw);
  const uint32_t base = smem_u32(smem);
  const uint32_t s_k = base + L::kK, s_v = base + L::kV, s_q = base + L::kQ, s_do = base + L::kDo;
  const uint32_t bar_kv = base + L::kBar;
  auto bar_full = [&](int st) { return bar_kv + 8 * (1 + st); };
  auto bar_empty = [&](int st) { return bar_kv + 8 * (1 + STAGES + st); };

  const int tid = threadIdx.x, wg = tid / 128;  // 0, 1: consumers; 2: the producer warp
  const int n_block = blockIdx.x;
  const size_t bh = static_cast<size_t>(blockIdx.z) * H + blockIdx.y;
  const int m_begin = CAUSAL ? n_block * BN / BM : 0;  // the first query tile with a query >= the block's first key
  const int n_tiles = S / BM - m_begin;

  if (tid == 0) {
    tma_prefetch_map(&tm_q);
    tma_prefetch_map(&tm_do);
    tma_prefetch_map(&tm_k);
    tma_prefetch_map(&tm_v);
    mbar_init(bar_kv, 1);
    for (int st = 0; st < STAGES; ++st) {
      mbar_init(bar_full(st), 1);   // the producer's arrive.expect_tx; the bytes complete it
      mbar_init(bar_empty(st), 8);  // lane 0 of each of the 8 consumer warps
    }
    mbar_init_fence();
  }
  __syncthreads();  // the last CTA-wide barrier: the roles split below

  if (wg == 2) {
    // ---------------- producer warpgroup ----------------
    setmaxnreg_dec<kProducerRegs>();
    if (tid == 256) {
      const int row_kv = static_cast<int>(bh * S) + n_block * BN;
      mbar_arrive_expect_tx(bar_kv, 2 * L::kTileKV);
#pragma unroll
      for (int at = 0; at < D / 64; ++at) {
        tma_load_2d(s_k + at * (BN * 128), &tm_k, at * 64, row_kv, bar_kv);
        tma_load_2d(s_v + at * (BN * 128), &tm_v, at * 64, row_kv, bar_kv);
      }
      for (int j = 0; j < n_tiles; ++j) {
        const int st = j % STAGES;
        const int row_q = static_cast<int>(bh * S) + (m_begin + j) * BM;
        mbar_wait(bar_empty(st), ((j / STAGES) & 1) ^ 1);
        mbar_arrive_expect_tx(bar_full(st), L::kTileTx);
#pragma unroll
        for (int at = 0; at < D / 64; ++at) {
          tma_load_2d(s_q + st * L::kTileQ + at * (BM * 128), &tm_q, at * 64, row_q, bar_full(st));
          tma_load_2d(s_do + st * L::kTileQ + at * (BM * 128), &tm_do, at * 64, row_q, bar_full(st));
        }
        bulk_load_1d(base + L::kLse + st * BM * 4, lse2 + row_q, BM * 4, bar_full(st));
        bulk_load_1d(base + L::kDelta + st * BM * 4, delta + row_q, BM * 4, bar_full(st));
      }
    }
    return;  // the producer's path must not rejoin the consumers' (see kConsumerRegs' note)
  } else {
    // ---------------- consumer warpgroups ----------------
    setmaxnreg_inc<kConsumerRegs>();
    const int cw = wg, t = tid % 128, w = t / 32, lane = t % 32;
    const int key_row0 = n_block * BN + 64 * cw + 16 * w + lane / 4;  // this thread's first key (second: +8)
    float dvacc[D / 2], dkacc[D / 2], s[BM / 2], dp[BM / 2];
    uint32_t ap[BM / 16][4], ads[BM / 16][4];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) dvacc[i] = 0.f, dkacc[i] = 0.f;
    const uint32_t k_wg = s_k + cw * 64 * 128, v_wg = s_v + cw * 64 * 128;  // this warpgroup's 64 keys
    mbar_wait(bar_kv, 0);

#pragma unroll 1  // one tile's registers at a time (an unrolled pair spills)
    for (int j = 0; j < n_tiles; ++j) {
      const int st = j % STAGES, m = m_begin + j;
      const uint32_t q_st = s_q + st * L::kTileQ, do_st = s_do + st * L::kTileQ;
      const float* lse_st = reinterpret_cast<const float*>(smem + L::kLse + st * BM * 4);
      const float* dlt_st = reinterpret_cast<const float*>(smem + L::kDelta + st * BM * 4);
      mbar_wait(bar_full(st), (j / STAGES) & 1);

      wgmma_fence();
      ss_gemm<D, BM>(s, k_wg, BN * 128, q_st, BM * 128);  // S^T (64 keys x BM queries)
      wgmma_commit();
      ss_gemm<D, BM>(dp, v_wg, BN * 128, do_st, BM * 128);  // dP^T
      wgmma_commit();
      wgmma_wait<1>();
      reg_fence(s);
      // P^T in place; register i: key key_row0 + 8 ((i >> 1) & 1), query m*BM + 8 (i / 4) + 2 (lane % 4) + (i & 1)
      const bool diag = CAUSAL && m * BM < (n_block + 1) * BN;  // some key of the block > some query of the tile
      // key - query of register i = d0 + 8 ((i >> 1) & 1) - 8 (i / 4) - (i & 1): one register, constants per i
      const int d0 = key_row0 - m * BM - 2 * (lane % 4);
#pragma unroll
      for (int i = 0; i < BM / 2; i += 2) {
        const int col = 8 * (i / 4) + 2 * (lane % 4);
        const float2 l2 = *reinterpret_cast<const float2*>(lse_st + col);
        s[i] = ex2(fmaf(s[i], scale_log2, -l2.x));
        s[i + 1] = ex2(fmaf(s[i + 1], scale_log2, -l2.y));
        if (diag) {
          const int c = 8 * (i / 4) - 8 * ((i >> 1) & 1);  // key > query  <=>  d0 > c (+1 for the odd column)
          if (d0 > c) s[i] = 0.f;
          if (d0 > c + 1) s[i + 1] = 0.f;
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
      pack_p<bf16, BM>(s, ap);  // packed only now: P^T's fp32 and bf16 copies are never live together beside dP^T
      pack_p<bf16, BM>(dp, ads);

      if constexpr (DQ_ATOMIC) {
        // dS^T rows of this warpgroup -> bf16 [key][query] tile (BN rows, BM/64 atoms of BN x 128 B)
        uint8_t* ds_buf = smem + L::kDs + (j & 1) * L::kTileDs;
#pragma unroll
        for (int c = 0; c < BM / 16; ++c)
#pragma unroll
          for (int r = 0; r < 4; ++r) {  // ads[c][r]: key row +8 (r & 1), query 16c + 2 (lane % 4) + 8 (r >> 1)
            const int krow = 64 * cw + 16 * w + lane / 4 + 8 * (r & 1), qcol = 16 * c + 8 * (r >> 1) + 2 * (lane % 4);
            const uint32_t off = (qcol / 64) * (BN * 128) + sw128_chunk(krow, (qcol % 64) / 8) + (qcol % 8) * 2;
            *reinterpret_cast<uint32_t*>(ds_buf + off) = ads[c][r];
          }
        fence_proxy_async();              // these generic writes -> visible to the wgmma (async proxy) ...
        named_barrier_sync(1, 256);       // ... of both consumer warpgroups (id 1: the 256 consumer threads)
      }

      wgmma_fence();
      rs_gemm<D, BM>(dvacc, ap, do_st, BM * 128);  // dV += P^T dO
      rs_gemm<D, BM>(dkacc, ads, q_st, BM * 128);  // dK += dS^T Q
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(dvacc);
      reg_fence(dkacc);
      if (lane == 0) mbar_arrive(bar_empty(st));
      if constexpr (DQ_ATOMIC) {
        // after dV/dK's wgmmas (not beside them): the P^T / dS^T fragments are dead before the dQ accumulator lives
        float dq[32];
        wgmma_fence();
        const uint32_t ds_tile = base + L::kDs + (j & 1) * L::kTileDs;
        const int q_off = BM == 128 ? 64 * cw : 0, d_off = BM == 128 ? 0 : 64 * cw;  // this warpgroup's 64 x 64 of dQ
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {  // 16 keys a step: +16 rows = 2048 B in both MN-major tiles
          const uint64_t da = sw128_desc(ds_tile + (q_off / 64) * (BN * 128) + kk * 2048, BN * 128, 1024);
          const uint64_t db = sw128_desc(s_k + (d_off / 64) * (BN * 128) + kk * 2048, BN * 128, 1024);
          wgmma_ss_mn<64>(dq, da, db, kk > 0 ? 1 : 0);
        }
        wgmma_commit();
        wgmma_wait<0>();
        reg_fence(dq);
        float* g = dq_accum + (bh * S + static_cast<size_t>(m) * BM + q_off) * D + d_off;  // (64 rows, D stride)
#pragma unroll
        for (int i = 0; i < 32; ++i) {
          const int row = 16 * w + lane / 4 + 8 * ((i >> 1) & 1), col = 8 * (i / 4) + 2 * (lane % 4) + (i & 1);
          atomicAdd(g + static_cast<size_t>(row) * D + col, dq[i]);  // result unused: compiles to RED.E.ADD.F32
        }
      }
    }
    const size_t row0 = bh * S + static_cast<size_t>(n_block) * BN + 64 * cw;  // this warpgroup's first key row
    store_rows_bf16<D>(dvacc, 1.f, dv + row0 * D, t);
    store_rows_bf16<D>(dkacc, scale, dk + row0 * D, t);
  }
}

// =====================================================================================================================
// dQ kernel (b1): deterministic, no atomics. The forward's shape: the CTA owns 128 query rows (2 consumer
// warpgroups x 64) and loops over key tiles of K and V, BN = 128 keys at D = 64 and 64 at D = 128 (causal: tiles
// up to its own diagonal, the tiles that cross it masked; heaviest CTA first).
//   Per key tile: S = Q_wg K^T and dP = dO_wg V^T (2 x D/16 wgmma_ss); wait<1>; P = 2^(S scale_log2 - lse2_row);
//   wait<0>; dS = P (dP - Delta_row) -> bf16 A fragments; dQ += dS K (BN/16 wgmma_rs, the K tile as MN-major B:
//   [key][d], d contiguous); wait<0>; release the stage. Epilogue: scale * dQ as bf16.
//   Registers per consumer thread: dQ D/2 + S BN/2 + dP BN/2 (+ BN/4 bf16 fragments as S and dP die): 160 at
//   D = 64 (BN = 128), 128 at D = 128 with BN = 64; BN = 128 at D = 128 (192 + indices) spilled 4-40 bytes
//   under the 224 cap, hence the smaller tile there.
//   Shared memory: Q, dO (128 x D, loaded once) + STAGES x (K, V: BN x D): 128 KB at D = 128, 96 KB at D = 64.
//   Barriers: q_full (Q and dO), kv_full[s] (K and V of one tile), empty[s] (8 consumer-warp arrivals); phase
//   parities as in the dK/dV kernel.
// =====================================================================================================================
constexpr int kDqBlockM = 128;
template <int D>
constexpr int dq_block_n() {  // keys per K/V tile of the dQ kernel (see the register budget above)
  return D == 128 ? 64 : 128;
}

template <int D, int STAGES>
struct DqLayout {
  static constexpr int kBlockN = dq_block_n<D>();
  static constexpr int kTileQ = kDqBlockM * D * 2, kTileKV = kBlockN * D * 2;
  static constexpr int kQ = 0, kDo = kTileQ, kK = 2 * kTileQ, kV = kK + STAGES * kTileKV, kBar = kV + STAGES * kTileKV;
  static constexpr int kBars = 1 + 2 * STAGES;  // q_full, kv_full[STAGES], empty[STAGES]
  static constexpr int kBytes = kBar + kBars * 8 + 1024;
  static_assert(kBytes <= 227 * 1024, "over the 227 KB of shared memory a block may have");
};

template <int D, bool CAUSAL, int STAGES>
__global__ void __launch_bounds__(kBwdThreads, 1) bwd_dq(const __grid_constant__ CUtensorMap tm_q,   // (B*H*S, D) bf16, box 128 rows
                                                 const __grid_constant__ CUtensorMap tm_do,  // (B*H*S, D) bf16, box 128 rows
                                                 const __grid_constant__ CUtensorMap tm_k,   // (B*H*S, D) bf16, box 128 rows
                                                 const __grid_constant__ CUtensorMap tm_v,   // (B*H*S, D) bf16, box 128 rows
                                                 const float* __restrict__ lse2,   // (B, H, S)
                                                 const float* __restrict__ delta,  // (B, H, S)
                                                 bf16* __restrict__ dq,            // (B, H, S, D)
                                                 int H, int S, float scale, float scale_log2) {
  using L = DqLayout<D, STAGES>;
  constexpr int BN = L::kBlockN;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = align1024(smem_raw);
  const uint32_t base = smem_u32(smem);
  const uint32_t s_q = base + L::kQ, s_do = base + L::kDo, s_k = base + L::kK, s_v = base + L::kV;
  const uint32_t bar_q = base + L::kBar;
  auto bar_full = [&](int st) { return bar_q + 8 * (1 + st); };
  auto bar_empty = [&](int st) { return bar_q + 8 * (1 + STAGES + st); };

  const int tid = threadIdx.x, wg = tid / 128;  // 0, 1: consumers; 2: the producer warp
  const int m_block = CAUSAL ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const size_t bh = static_cast<size_t>(blockIdx.z) * H + blockIdx.y;
  const int n_blocks = CAUSAL ? (m_block + 1) * (kDqBlockM / BN) : S / BN;  // causal: up to the diagonal

  if (tid == 0) {
    tma_prefetch_map(&tm_q);
    tma_prefetch_map(&tm_do);
    tma_prefetch_map(&tm_k);
    tma_prefetch_map(&tm_v);
    mbar_init(bar_q, 1);
    for (int st = 0; st < STAGES; ++st) {
      mbar_init(bar_full(st), 1);
      mbar_init(bar_empty(st), 8);
    }
    mbar_init_fence();
  }
  __syncthreads();

  if (wg == 2) {
    setmaxnreg_dec<kProducerRegs>();
    if (tid == 256) {
      const int row_q = static_cast<int>(bh * S) + m_block * kDqBlockM, row_kv = static_cast<int>(bh * S);
      mbar_arrive_expect_tx(bar_q, 2 * L::kTileQ);
#pragma unroll
      for (int at = 0; at < D / 64; ++at) {
        tma_load_2d(s_q + at * (kDqBlockM * 128), &tm_q, at * 64, row_q, bar_q);
        tma_load_2d(s_do + at * (kDqBlockM * 128), &tm_do, at * 64, row_q, bar_q);
      }
      for (int j = 0; j < n_blocks; ++j) {
        const int st = j % STAGES;
        mbar_wait(bar_empty(st), ((j / STAGES) & 1) ^ 1);
        mbar_arrive_expect_tx(bar_full(st), 2 * L::kTileKV);
#pragma unroll
        for (int at = 0; at < D / 64; ++at) {
          tma_load_2d(s_k + st * L::kTileKV + at * (BN * 128), &tm_k, at * 64, row_kv + j * BN, bar_full(st));
          tma_load_2d(s_v + st * L::kTileKV + at * (BN * 128), &tm_v, at * 64, row_kv + j * BN, bar_full(st));
        }
      }
    }
    return;  // the producer's path must not rejoin the consumers'
  } else {
    setmaxnreg_inc<kConsumerRegs>();
    const int cw = wg, t = tid % 128, w = t / 32, lane = t % 32;
    const int q_row0 = m_block * kDqBlockM + 64 * cw + 16 * w + lane / 4;  // this thread's first query (second: +8)
    float l2[2], dl[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      l2[h] = lse2[bh * S + q_row0 + 8 * h];
      dl[h] = delta[bh * S + q_row0 + 8 * h];
    }
    float dqacc[D / 2], s[BN / 2], dp[BN / 2];
    uint32_t a[BN / 16][4];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) dqacc[i] = 0.f;
    const uint32_t q_wg = s_q + cw * 64 * 128, do_wg = s_do + cw * 64 * 128;
    mbar_wait(bar_q, 0);

#pragma unroll 1  // one tile's registers at a time (an unrolled pair spills)
    for (int j = 0; j < n_blocks; ++j) {
      const int st = j % STAGES;
      const uint32_t k_st = s_k + st * L::kTileKV, v_st = s_v + st * L::kTileKV;
      mbar_wait(bar_full(st), (j / STAGES) & 1);
      wgmma_fence();
      ss_gemm<D, BN>(s, q_wg, kDqBlockM * 128, k_st, BN * 128);  // S = Q K^T (64 x 128)
      wgmma_commit();
      ss_gemm<D, BN>(dp, do_wg, kDqBlockM * 128, v_st, BN * 128);  // dP = dO V^T
      wgmma_commit();
      wgmma_wait<1>();
      reg_fence(s);
      if (CAUSAL && (j + 1) * BN > m_block * kDqBlockM + 1)  // a key of the tile > the block's first query
        causal_mask<BN>(s, q_row0, j * BN + 2 * (lane % 4));  // -> -inf -> P = 0
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) s[i] = ex2(fmaf(s[i], scale_log2, -l2[(i >> 1) & 1]));
      wgmma_wait<0>();
      reg_fence(dp);
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) dp[i] = s[i] * (dp[i] - dl[(i >> 1) & 1]);
      pack_p<bf16, BN>(dp, a);
      wgmma_fence();
      rs_gemm<D, BN>(dqacc, a, k_st, BN * 128);  // dQ += dS K
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(dqacc);
      if (lane == 0) mbar_arrive(bar_empty(st));
    }
    const size_t row0 = bh * S + static_cast<size_t>(m_block) * kDqBlockM + 64 * cw;
    store_rows_bf16<D>(dqacc, scale, dq + row0 * D, t);
  }
}

// =====================================================================================================================
// b3: b1 generalised to production's problem (the reach of ops/cuda/flash_attention_sm90.cu's forward):
//   T = bf16 or f16; D = 64 or 128; any Sq, Sk >= 1 (Sq != Sk allowed); every band of Mask<kLower>
//   (ops/cuda/flash_attention_mask.h: none, causal top-left / bottom-right, sliding windows; kLower = a window
//   with a left bound); GQA / MQA (H = G Hk, query head h reads kv head h / G); q, out, dout, dq with element
//   strides qs and k, v, dk, dv with ks (bhsd or bshd, any strides TMA can address: 16-byte aligned bases,
//   strides multiples of 8 elements); Delta = rowsum(dout out) - dlse (dlse optional).
// Three kernels, as b1:
//   bwd3_prep: Delta and lse2 (exp2 domain) into (B, H, Sq_pad) workspaces, Sq_pad = Sq rounded up to 128; the
//     padding rows get Delta 0 and lse2 +inf, and a row that sees no key (lse -inf) gets lse2 +inf (as
//     lse2_of in ops/cuda/flash_attention_params.cuh): P = 2^(s scale_log2 - inf) = 0 for both, so the 1-D bulk
//     copies of a query tile's lse2 / Delta never read past the workspace and need no bound.
//   bwd3_dkdv: CTA = 128 keys [n0, n0 + 128) of kv head hk (grid (ceil(Sk/128), Hk, B)); tiles, threads,
//     registers, shared memory and barriers exactly b1's bwd_dkdv (DkdvLayout<D, false, 2>: 128 KB at D = 128,
//     96 KB at D = 64; BM = 64 at D = 128, 128 at D = 64: the register cap, see bwd_dkdv). The query tiles it
//     visits: Mask::query_tiles(n0, 128, BM) = [first, first + cnt) (those with a query that sees a key of the
//     block), for each of the G query heads of hk in turn: j = g cnt + (m - first), so the ring runs G cnt
//     tiles with the parities of b1 (stage j % 2, use u = j / 2: consumers wait full[s] with u & 1, the
//     producer empty[s] with (u & 1) ^ 1; kv_full once, parity 0). dK, dV sum the G heads in registers:
//     deterministic, no atomics. cnt = 0 (no query sees the block): nothing is loaded, nobody waits, the block
//     stores zeros.
//     K, V, Q, dO through 4-D maps (D, S, heads, B), box (64, rows, 1, 1): rows past Sk or Sq read as zeros
//     (TMA's fill), and the full box's bytes still complete the barrier's transaction count.
//     Mask (element (key j, query i) visible iff query_lo(j) <= i < query_hi(j + 1), j < Sk: the queries that
//     see key j, a contiguous range since key_lo, key_hi grow with i): each thread keeps [qlo, qhi) of its two
//     key rows (empty for a key >= Sk); a tile is tested element by element only when it is not inside
//     [query_lo(last key), query_hi(n0 + 1)) for all 128 keys (a CTA-uniform test: no divergence). Hidden -> P = 0.
//     Padding queries (>= Sq) are hidden by qhi <= Sq and would add nothing anyway (zero dO and Q rows, lse2 +inf).
//     Epilogue: dV, scale dK as T, rows < Sk only, row stride ks.seq (bounded 4-byte stores from the fragment).
//   bwd3_dq: CTA = 128 queries [m0, m0 + 128) of head h (grid (ceil(Sq/128), H, B), last block first as in
//     production's forward); b1's bwd_dq (BN = 64 keys at D = 128, 128 at D = 64; DqLayout) over the key tiles
//     Mask::key_tiles(m0, 128, BN) of kv head h / G; a tile not covered by common_keys(m0, last valid query)
//     gets the element mask (production's hides, -inf before the exponential). No key tile: dQ = 0 stored.
//     Epilogue: scale dQ as T, rows < Sq only, row stride qs.seq.
// =====================================================================================================================
using xfr::AttentionBand;
using xfr::cuda::fa::KeyRange;
using xfr::cuda::fa::Mask;
using xfr::cuda::fa::TileRange;

struct Strides {  // element strides of a (batch, head, position, D) tensor, D contiguous (production's HeadStrides)
  int64_t batch = 0, head = 0, seq = 0;
};

// The kernels' parameters (__grid_constant__: TMA reads the maps from parameter space, the mask points at band).
struct Bwd3Args {
  CUtensorMap tm_q_bm, tm_do_bm, tm_k, tm_v;        // dK/dV kernel: q, dout (B,H,Sq,D) box BM rows; k, v (B,Hk,Sk,D) box 128
  CUtensorMap tm_q128, tm_do128, tm_k_dq, tm_v_dq;  // dQ kernel: q, dout box 128 rows; k, v box dq_block_n<D>() rows
  const float* lse2 = nullptr;                      // (B, H, Sq_pad) exp2 domain, +inf where P = 0 (bwd3_prep)
  const float* delta = nullptr;                     // (B, H, Sq_pad)
  void* dq = nullptr;                               // (B, H, Sq, D) T, strides qs
  void* dk = nullptr;                               // (B, Hk, Sk, D) T, strides ks
  void* dv = nullptr;                               // (B, Hk, Sk, D) T, strides ks
  Strides qs, ks;
  int H = 0, G = 1, Sq = 0, Sk = 0, Sq_pad = 0;
  AttentionBand band;
  float scale = 1.f, scale_log2 = 1.f;
};

__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }

// Pre-kernel of b3: one warp per workspace row of (B, H, Sq_pad); grid ceil(B H Sq_pad / 8) blocks of 256.
template <class T, int D>
__global__ void __launch_bounds__(256) bwd3_prep(const T* __restrict__ out,      // (B, H, Sq, D) strides qs
                                                 const T* __restrict__ dout,     // (B, H, Sq, D) strides qs
                                                 const float* __restrict__ lse,  // (B, H, Sq) natural log
                                                 const float* __restrict__ dlse, // (B, H, Sq) or null
                                                 float* __restrict__ delta,      // (B, H, Sq_pad)
                                                 float* __restrict__ lse2,       // (B, H, Sq_pad)
                                                 int B, int H, int Sq, int Sq_pad, Strides qs) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  if (row >= static_cast<int64_t>(B) * H * Sq_pad) return;
  const int i = static_cast<int>(row % Sq_pad);
  const int64_t bh = row / Sq_pad, h = bh % H, b = bh / H;
  if (i >= Sq) {
    if (lane == 0) delta[row] = 0.f, lse2[row] = INFINITY;
    return;
  }
  const int64_t off = b * qs.batch + h * qs.head + static_cast<int64_t>(i) * qs.seq;
  float p = 0.f;
#pragma unroll
  for (int t = 0; t < D / 32; ++t) p += to_f(out[off + lane + 32 * t]) * to_f(dout[off + lane + 32 * t]);
#pragma unroll
  for (int o = 16; o > 0; o /= 2) p += __shfl_xor_sync(0xffffffffu, p, o);
  if (lane == 0) {
    const int64_t lrow = bh * Sq + i;
    const float l = lse[lrow];
    delta[row] = dlse != nullptr ? p - dlse[lrow] : p;
    lse2[row] = l == -INFINITY ? INFINITY : l * kLog2e;
  }
}

// Stores a warpgroup's 64 x D fp32 accumulator times mul as T: row r of the fragment -> g + r ld, rows < rows_valid
// only (rows_valid may be <= 0: nothing). g: (64, D) rows of this warpgroup, row stride ld elements.
template <class T, int D>
__device__ __forceinline__ void store_rows_bounded(const float (&acc)[D / 2], float mul, T* __restrict__ g, int64_t ld,
                                                   int rows_valid, int t) {
  const int w = t / 32, lane = t % 32;
#pragma unroll
  for (int i = 0; i < D / 2; i += 2) {
    const int row = 16 * w + lane / 4 + 8 * ((i >> 1) & 1), col = 8 * (i / 4) + 2 * (lane % 4);
    if (row < rows_valid)
      *reinterpret_cast<uint32_t*>(g + row * ld + col) = pack2<T>(acc[i] * mul, acc[i + 1] * mul);
  }
}

template <class T, int D, bool kLower, int STAGES>
__global__ void __launch_bounds__(kBwdThreads, 1) bwd3_dkdv(const __grid_constant__ Bwd3Args a) {
  using L = DkdvLayout<D, false, STAGES>;
  constexpr int BM = L::BM, BN = L::BN;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = align1024(smem_raw);
  const uint32_t base = smem_u32(smem);
  const uint32_t s_k = base + L::kK, s_v = base + L::kV, s_q = base + L::kQ, s_do = base + L::kDo;
  const uint32_t bar_kv = base + L::kBar;
  auto bar_full = [&](int st) { return bar_kv + 8 * (1 + st); };
  auto bar_empty = [&](int st) { return bar_kv + 8 * (1 + STAGES + st); };

  const int tid = threadIdx.x, wg = tid / 128;  // 0, 1: consumers; 2: the producer warpgroup
  const int n0 = static_cast<int>(blockIdx.x) * BN, hk = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const Mask<kLower> mask(a.band, a.Sq, a.Sk);
  const TileRange tr = mask.query_tiles(n0, BN, BM);  // the query tiles of one head that see some key of the block
  const int n_tiles = tr.count * a.G;                 // ... for each of the G query heads of kv head hk

  if (tid == 0) {
    tma_prefetch_map(&a.tm_q_bm);
    tma_prefetch_map(&a.tm_do_bm);
    tma_prefetch_map(&a.tm_k);
    tma_prefetch_map(&a.tm_v);
    mbar_init(bar_kv, 1);
    for (int st = 0; st < STAGES; ++st) {
      mbar_init(bar_full(st), 1);   // the producer's arrive.expect_tx; the bytes complete it
      mbar_init(bar_empty(st), 8);  // lane 0 of each of the 8 consumer warps
    }
    mbar_init_fence();
  }
  __syncthreads();  // the last CTA-wide barrier: the roles split below

  if (wg == 2) {
    // ---------------- producer warpgroup ----------------
    setmaxnreg_dec<kProducerRegs>();
    if (tid == 256 && n_tiles > 0) {  // no tile: nothing loaded, nobody waits
      mbar_arrive_expect_tx(bar_kv, 2 * L::kTileKV);  // full boxes: rows past Sk are TMA's zeros
#pragma unroll
      for (int at = 0; at < D / 64; ++at) {
        tma_load_4d(s_k + at * (BN * 128), &a.tm_k, at * 64, n0, hk, b, bar_kv);
        tma_load_4d(s_v + at * (BN * 128), &a.tm_v, at * 64, n0, hk, b, bar_kv);
      }
      for (int j = 0; j < n_tiles; ++j) {
        const int st = j % STAGES, g = j / tr.count, m = tr.first + (j - g * tr.count), h = hk * a.G + g;
        mbar_wait(bar_empty(st), ((j / STAGES) & 1) ^ 1);
        mbar_arrive_expect_tx(bar_full(st), L::kTileTx);
#pragma unroll
        for (int at = 0; at < D / 64; ++at) {
          tma_load_4d(s_q + st * L::kTileQ + at * (BM * 128), &a.tm_q_bm, at * 64, m * BM, h, b, bar_full(st));
          tma_load_4d(s_do + st * L::kTileQ + at * (BM * 128), &a.tm_do_bm, at * 64, m * BM, h, b, bar_full(st));
        }
        const int64_t lrow = (static_cast<int64_t>(b) * a.H + h) * a.Sq_pad + m * BM;  // < B H Sq_pad: padded
        bulk_load_1d(base + L::kLse + st * BM * 4, a.lse2 + lrow, BM * 4, bar_full(st));
        bulk_load_1d(base + L::kDelta + st * BM * 4, a.delta + lrow, BM * 4, bar_full(st));
      }
    }
    return;  // the producer's path must not rejoin the consumers'
  } else {
    // ---------------- consumer warpgroups ----------------
    setmaxnreg_inc<kConsumerRegs>();
    const int cw = wg, t = tid % 128, w = t / 32, lane = t % 32;
    const int key_row0 = n0 + 64 * cw + 16 * w + lane / 4;  // this thread's first key (second: +8)
    int qlo[2], qhi[2];                                     // the queries that see each of its two keys
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int key = key_row0 + 8 * r;
      const bool valid = key < a.Sk;
      qlo[r] = valid ? mask.query_lo(key) : 0;
      qhi[r] = valid ? mask.query_hi(key + 1) : 0;
    }
    // Queries every key of the block sees (query_lo, query_hi grow with the key): a tile inside needs no test.
    const bool all_keys = n0 + BN <= a.Sk;
    const int cov_lo = mask.query_lo(min(n0 + BN, a.Sk) - 1), cov_hi = mask.query_hi(n0 + 1);
    float dvacc[D / 2], dkacc[D / 2], s[BM / 2], dp[BM / 2];
    uint32_t ap[BM / 16][4], ads[BM / 16][4];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) dvacc[i] = 0.f, dkacc[i] = 0.f;
    const uint32_t k_wg = s_k + cw * 64 * 128, v_wg = s_v + cw * 64 * 128;  // this warpgroup's 64 keys
    if (n_tiles > 0) mbar_wait(bar_kv, 0);

#pragma unroll 1  // one tile's registers at a time
    for (int j = 0; j < n_tiles; ++j) {
      const int st = j % STAGES, g = j / tr.count, m = tr.first + (j - g * tr.count);
      const uint32_t q_st = s_q + st * L::kTileQ, do_st = s_do + st * L::kTileQ;
      const float* lse_st = reinterpret_cast<const float*>(smem + L::kLse + st * BM * 4);
      const float* dlt_st = reinterpret_cast<const float*>(smem + L::kDelta + st * BM * 4);
      mbar_wait(bar_full(st), (j / STAGES) & 1);

      wgmma_fence();
      ss_gemm<D, BM, T>(s, k_wg, BN * 128, q_st, BM * 128);  // S^T (64 keys x BM queries)
      wgmma_commit();
      ss_gemm<D, BM, T>(dp, v_wg, BN * 128, do_st, BM * 128);  // dP^T
      wgmma_commit();
      wgmma_wait<1>();
      reg_fence(s);
      // register i: key key_row0 + 8 ((i >> 1) & 1), query m BM + 8 (i / 4) + 2 (lane % 4) + (i & 1)
      const bool full = all_keys && cov_lo <= m * BM && (m + 1) * BM <= cov_hi;  // CTA-uniform
      const int qc = m * BM + 2 * (lane % 4);
#pragma unroll
      for (int i = 0; i < BM / 2; i += 2) {
        const int col = 8 * (i / 4) + 2 * (lane % 4);
        const float2 l2 = *reinterpret_cast<const float2*>(lse_st + col);
        s[i] = ex2(fmaf(s[i], a.scale_log2, -l2.x));
        s[i + 1] = ex2(fmaf(s[i + 1], a.scale_log2, -l2.y));
        if (!full) {
          const int r = (i >> 1) & 1, q = qc + 8 * (i / 4);
          if (q < qlo[r] || q >= qhi[r]) s[i] = 0.f;
          if (q + 1 < qlo[r] || q + 1 >= qhi[r]) s[i + 1] = 0.f;
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
      wgmma_fence();
      rs_gemm<D, BM, T>(dvacc, ap, do_st, BM * 128);  // dV += P^T dO
      rs_gemm<D, BM, T>(dkacc, ads, q_st, BM * 128);  // dK += dS^T Q
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(dvacc);
      reg_fence(dkacc);
      if (lane == 0) mbar_arrive(bar_empty(st));
      (void)g;
    }
    const int key_wg = n0 + 64 * cw;  // this warpgroup's first key
    const int64_t off = static_cast<int64_t>(b) * a.ks.batch + static_cast<int64_t>(hk) * a.ks.head +
                        static_cast<int64_t>(key_wg) * a.ks.seq;
    store_rows_bounded<T, D>(dvacc, 1.f, static_cast<T*>(a.dv) + off, a.ks.seq, a.Sk - key_wg, t);
    store_rows_bounded<T, D>(dkacc, a.scale, static_cast<T*>(a.dk) + off, a.ks.seq, a.Sk - key_wg, t);
  }
}

// Hidden (i, j) -> -inf on a dQ tile of BN keys: keys[r] the keys of the thread's row r, key0 its column 0's key.
template <bool kLower, int BN>
__device__ __forceinline__ void mask_tile_bn(float (&s)[BN / 2], const Mask<kLower>& mask, const KeyRange (&keys)[2],
                                             int key0) {
#pragma unroll
  for (int i = 0; i < BN / 2; ++i)
    if (mask.hides(keys[(i >> 1) & 1], key0 + 8 * (i / 4) + (i & 1))) s[i] = -INFINITY;
}

template <class T, int D, bool kLower, int STAGES>
__global__ void __launch_bounds__(kBwdThreads, 1) bwd3_dq(const __grid_constant__ Bwd3Args a) {
  using L = DqLayout<D, STAGES>;
  constexpr int BN = L::kBlockN;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = align1024(smem_raw);
  const uint32_t base = smem_u32(smem);
  const uint32_t s_q = base + L::kQ, s_do = base + L::kDo, s_k = base + L::kK, s_v = base + L::kV;
  const uint32_t bar_q = base + L::kBar;
  auto bar_full = [&](int st) { return bar_q + 8 * (1 + st); };
  auto bar_empty = [&](int st) { return bar_q + 8 * (1 + STAGES + st); };

  const int tid = threadIdx.x, wg = tid / 128;
  const int m0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * kDqBlockM;
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z), hk = h / a.G;
  const Mask<kLower> mask(a.band, a.Sq, a.Sk);
  const TileRange tr = mask.key_tiles(m0, kDqBlockM, BN);  // may be empty: no query of the block sees a key

  if (tid == 0) {
    tma_prefetch_map(&a.tm_q128);
    tma_prefetch_map(&a.tm_do128);
    tma_prefetch_map(&a.tm_k_dq);
    tma_prefetch_map(&a.tm_v_dq);
    mbar_init(bar_q, 1);
    for (int st = 0; st < STAGES; ++st) {
      mbar_init(bar_full(st), 1);
      mbar_init(bar_empty(st), 8);
    }
    mbar_init_fence();
  }
  __syncthreads();

  if (wg == 2) {
    setmaxnreg_dec<kProducerRegs>();
    if (tid == 256 && tr.count > 0) {
      mbar_arrive_expect_tx(bar_q, 2 * L::kTileQ);
#pragma unroll
      for (int at = 0; at < D / 64; ++at) {
        tma_load_4d(s_q + at * (kDqBlockM * 128), &a.tm_q128, at * 64, m0, h, b, bar_q);
        tma_load_4d(s_do + at * (kDqBlockM * 128), &a.tm_do128, at * 64, m0, h, b, bar_q);
      }
      for (int j = 0; j < tr.count; ++j) {
        const int st = j % STAGES, k0 = (tr.first + j) * BN;
        mbar_wait(bar_empty(st), ((j / STAGES) & 1) ^ 1);
        mbar_arrive_expect_tx(bar_full(st), 2 * L::kTileKV);
#pragma unroll
        for (int at = 0; at < D / 64; ++at) {
          tma_load_4d(s_k + st * L::kTileKV + at * (BN * 128), &a.tm_k_dq, at * 64, k0, hk, b, bar_full(st));
          tma_load_4d(s_v + st * L::kTileKV + at * (BN * 128), &a.tm_v_dq, at * 64, k0, hk, b, bar_full(st));
        }
      }
    }
    return;
  } else {
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
    const KeyRange keys[2] = {mask.keys(q_row0), mask.keys(q_row0 + 8)};
    const KeyRange common = mask.common_keys(m0, min(m0 + kDqBlockM, a.Sq) - 1);  // keys all valid rows see
    float dqacc[D / 2], s[BN / 2], dp[BN / 2];
    uint32_t ap[BN / 16][4];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) dqacc[i] = 0.f;
    const uint32_t q_wg = s_q + cw * 64 * 128, do_wg = s_do + cw * 64 * 128;
    if (tr.count > 0) mbar_wait(bar_q, 0);

#pragma unroll 1
    for (int j = 0; j < tr.count; ++j) {
      const int st = j % STAGES, k0 = (tr.first + j) * BN;
      const uint32_t k_st = s_k + st * L::kTileKV, v_st = s_v + st * L::kTileKV;
      mbar_wait(bar_full(st), (j / STAGES) & 1);
      wgmma_fence();
      ss_gemm<D, BN, T>(s, q_wg, kDqBlockM * 128, k_st, BN * 128);  // S = Q K^T
      wgmma_commit();
      ss_gemm<D, BN, T>(dp, do_wg, kDqBlockM * 128, v_st, BN * 128);  // dP = dO V^T
      wgmma_commit();
      wgmma_wait<1>();
      reg_fence(s);
      if (!mask.covers(common, k0, k0 + BN)) mask_tile_bn<kLower, BN>(s, mask, keys, k0 + 2 * (lane % 4));
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) s[i] = ex2(fmaf(s[i], a.scale_log2, -l2[(i >> 1) & 1]));
      wgmma_wait<0>();
      reg_fence(dp);
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) dp[i] = s[i] * (dp[i] - dl[(i >> 1) & 1]);
      pack_p<T, BN>(dp, ap);
      wgmma_fence();
      rs_gemm<D, BN, T>(dqacc, ap, k_st, BN * 128);  // dQ += dS K
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(dqacc);
      if (lane == 0) mbar_arrive(bar_empty(st));
    }
    const int q_wg0 = m0 + 64 * cw;
    const int64_t off = static_cast<int64_t>(b) * a.qs.batch + static_cast<int64_t>(h) * a.qs.head +
                        static_cast<int64_t>(q_wg0) * a.qs.seq;
    store_rows_bounded<T, D>(dqacc, a.scale, static_cast<T*>(a.dq) + off, a.qs.seq, a.Sq - q_wg0, t);
  }
}

// =====================================================================================================================
// b3's references: fp32, one warp per row (as the references above), any Sq, Sk, band, GQA and strides. Inputs
// bf16 with element strides (qs: q, out, dout; ks: k, v); outputs fp32 packed (B, H, Sq, D) / (B, Hk, Sk, D).
// Row i of head h sees keys [key_lo(i), key_hi(i)) of kv head h / G (AttentionBand); a row that sees none has
// lse -inf, out 0 and P = 0. grid: ceil(rows / 8) blocks of 256.
// =====================================================================================================================
struct RefShape {
  int B = 0, H = 0, Hk = 0, G = 1, Sq = 0, Sk = 0;
  Strides qs, ks;
  AttentionBand band;
  float scale = 1.f;
};

template <int D>
__device__ __forceinline__ void load_row_s(float (&r)[D / 32], const bf16* __restrict__ g, int lane) {  // g: (D)
#pragma unroll
  for (int t = 0; t < D / 32; ++t) r[t] = __bfloat162float(g[lane + 32 * t]);
}

template <int D>
__global__ void __launch_bounds__(256) reference3_fwd(const bf16* __restrict__ q,  // (B, H, Sq, D) strides qs
                                                      const bf16* __restrict__ k,  // (B, Hk, Sk, D) strides ks
                                                      const bf16* __restrict__ v,  // (B, Hk, Sk, D) strides ks
                                                      float* __restrict__ out,     // (B, H, Sq, D) packed
                                                      float* __restrict__ lse,     // (B, H, Sq)
                                                      RefShape sh) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  if (row >= static_cast<int64_t>(sh.B) * sh.H * sh.Sq) return;
  const int i = static_cast<int>(row % sh.Sq);
  const int64_t h = (row / sh.Sq) % sh.H, b = row / sh.Sq / sh.H, hk = h / sh.G;
  const bf16* kh = k + b * sh.ks.batch + hk * sh.ks.head;
  const bf16* vh = v + b * sh.ks.batch + hk * sh.ks.head;
  float qv[D / 32], kv[D / 32], vv[D / 32];
  load_row_s<D>(qv, q + b * sh.qs.batch + h * sh.qs.head + i * sh.qs.seq, lane);
  const int lo = static_cast<int>(sh.band.key_lo(i, sh.Sq, sh.Sk)), hi = static_cast<int>(sh.band.key_hi(i, sh.Sq, sh.Sk));
  float m = -INFINITY;
  for (int j = lo; j < hi; ++j) {
    load_row_s<D>(kv, kh + j * sh.ks.seq, lane);
    m = fmaxf(m, sh.scale * warp_dot<D>(qv, kv));
  }
  float l = 0.f, o[D / 32] = {};
  for (int j = lo; j < hi; ++j) {
    load_row_s<D>(kv, kh + j * sh.ks.seq, lane);
    load_row_s<D>(vv, vh + j * sh.ks.seq, lane);
    const float p = expf(sh.scale * warp_dot<D>(qv, kv) - m);
    l += p;
#pragma unroll
    for (int t = 0; t < D / 32; ++t) o[t] += p * vv[t];
  }
#pragma unroll
  for (int t = 0; t < D / 32; ++t) out[row * D + lane + 32 * t] = l > 0.f ? o[t] / l : 0.f;
  if (lane == 0) lse[row] = l > 0.f ? m + logf(l) : -INFINITY;
}

// One warp per query row: Delta_i (= dout_i . out_i - dlse_i), dq_i and its bound mag_dq. Run before reference3_dkdv.
template <int D>
__global__ void __launch_bounds__(256) reference3_dq(const bf16* __restrict__ q,     // (B, H, Sq, D) strides qs
                                                     const bf16* __restrict__ k,     // (B, Hk, Sk, D) strides ks
                                                     const bf16* __restrict__ v,     // (B, Hk, Sk, D) strides ks
                                                     const bf16* __restrict__ out,   // (B, H, Sq, D) strides qs
                                                     const bf16* __restrict__ dout,  // (B, H, Sq, D) strides qs
                                                     const float* __restrict__ lse,  // (B, H, Sq)
                                                     const float* __restrict__ dlse, // (B, H, Sq) or null
                                                     float* __restrict__ dq,         // (B, H, Sq, D) packed
                                                     float* __restrict__ mag_dq,     // (B, H, Sq, D) packed
                                                     float* __restrict__ delta,      // (B, H, Sq)
                                                     RefShape sh) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  if (row >= static_cast<int64_t>(sh.B) * sh.H * sh.Sq) return;
  const int i = static_cast<int>(row % sh.Sq);
  const int64_t h = (row / sh.Sq) % sh.H, b = row / sh.Sq / sh.H, hk = h / sh.G;
  const bf16* kh = k + b * sh.ks.batch + hk * sh.ks.head;
  const bf16* vh = v + b * sh.ks.batch + hk * sh.ks.head;
  const int64_t qoff = b * sh.qs.batch + h * sh.qs.head + i * sh.qs.seq;
  float qv[D / 32], dov[D / 32], ov[D / 32], kv[D / 32], vv[D / 32], acc[D / 32] = {}, mag[D / 32] = {};
  load_row_s<D>(qv, q + qoff, lane);
  load_row_s<D>(dov, dout + qoff, lane);
  load_row_s<D>(ov, out + qoff, lane);
  const float dlt = warp_dot<D>(dov, ov) - (dlse != nullptr ? dlse[row] : 0.f);
  const float l = lse[row];
  const int lo = static_cast<int>(sh.band.key_lo(i, sh.Sq, sh.Sk)), hi = static_cast<int>(sh.band.key_hi(i, sh.Sq, sh.Sk));
  for (int j = lo; j < hi && l != -INFINITY; ++j) {
    load_row_s<D>(kv, kh + j * sh.ks.seq, lane);
    load_row_s<D>(vv, vh + j * sh.ks.seq, lane);
    const float p = expf(sh.scale * warp_dot<D>(qv, kv) - l);
    const float dp = warp_dot<D>(dov, vv);
    const float ds = p * (dp - dlt), bound = p * (fabsf(dp) + fabsf(dlt));
#pragma unroll
    for (int t = 0; t < D / 32; ++t) {
      acc[t] += ds * kv[t];
      mag[t] += bound * fabsf(kv[t]);
    }
  }
#pragma unroll
  for (int t = 0; t < D / 32; ++t) {
    dq[row * D + lane + 32 * t] = sh.scale * acc[t];
    mag_dq[row * D + lane + 32 * t] = sh.scale * mag[t];
  }
  if (lane == 0) delta[row] = dlt;
}

// One warp per key row j of kv head hk: dk_j, dv_j summed over the G query heads h = hk G + g and their queries
// [query_lo(j), query_hi(j + 1)); bounds mag_dk, mag_dv (delta from reference3_dq).
template <int D>
__global__ void __launch_bounds__(256) reference3_dkdv(const bf16* __restrict__ q,       // (B, H, Sq, D) strides qs
                                                       const bf16* __restrict__ k,       // (B, Hk, Sk, D) strides ks
                                                       const bf16* __restrict__ v,       // (B, Hk, Sk, D) strides ks
                                                       const bf16* __restrict__ dout,    // (B, H, Sq, D) strides qs
                                                       const float* __restrict__ lse,    // (B, H, Sq)
                                                       const float* __restrict__ delta,  // (B, H, Sq)
                                                       float* __restrict__ dk,           // (B, Hk, Sk, D) packed
                                                       float* __restrict__ dv,           // (B, Hk, Sk, D) packed
                                                       float* __restrict__ mag_dk,       // (B, Hk, Sk, D) packed
                                                       float* __restrict__ mag_dv,       // (B, Hk, Sk, D) packed
                                                       RefShape sh) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  if (row >= static_cast<int64_t>(sh.B) * sh.Hk * sh.Sk) return;
  const int j = static_cast<int>(row % sh.Sk);
  const int64_t hk = (row / sh.Sk) % sh.Hk, b = row / sh.Sk / sh.Hk;
  float kv[D / 32], vv[D / 32], qv[D / 32], dov[D / 32];
  float ak[D / 32] = {}, av[D / 32] = {}, mk[D / 32] = {}, mv[D / 32] = {};
  load_row_s<D>(kv, k + b * sh.ks.batch + hk * sh.ks.head + j * sh.ks.seq, lane);
  load_row_s<D>(vv, v + b * sh.ks.batch + hk * sh.ks.head + j * sh.ks.seq, lane);
  const int lo = static_cast<int>(sh.band.query_lo(j, sh.Sq, sh.Sk)), hi = static_cast<int>(sh.band.query_hi(j + 1, sh.Sq, sh.Sk));
  for (int g = 0; g < sh.G; ++g) {
    const int64_t h = hk * sh.G + g, lrow = (b * sh.H + h) * sh.Sq;
    const bf16* qh = q + b * sh.qs.batch + h * sh.qs.head;
    const bf16* doh = dout + b * sh.qs.batch + h * sh.qs.head;
    for (int i = lo; i < hi; ++i) {
      const float l = lse[lrow + i];
      if (l == -INFINITY) continue;  // a row that sees nothing (cannot happen inside [lo, hi), kept for safety)
      load_row_s<D>(qv, qh + i * sh.qs.seq, lane);
      load_row_s<D>(dov, doh + i * sh.qs.seq, lane);
      const float p = expf(sh.scale * warp_dot<D>(qv, kv) - l);
      const float dp = warp_dot<D>(dov, vv), dlt = delta[lrow + i];
      const float ds = p * (dp - dlt), bound = p * (fabsf(dp) + fabsf(dlt));
#pragma unroll
      for (int t = 0; t < D / 32; ++t) {
        ak[t] += ds * qv[t];
        av[t] += p * dov[t];
        mk[t] += bound * fabsf(qv[t]);
        mv[t] += p * fabsf(dov[t]);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < D / 32; ++t) {
    const int64_t o = row * D + lane + 32 * t;
    dk[o] = sh.scale * ak[t];
    dv[o] = av[t];
    mag_dk[o] = sh.scale * mk[t];
    mag_dv[o] = mv[t];
  }
}

// fp32 packed (B, heads, S, D) -> bf16 with strides st (the reference forward's out becomes the backward's input).
__global__ void to_bf16_strided(const float* __restrict__ x, bf16* __restrict__ y, int heads, int S, int D, Strides st,
                                size_t n) {  // x: (B, heads, S, D) packed; y: the same with strides st
  for (size_t e = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int64_t d = e % D, s = (e / D) % S, h = (e / D / S) % heads, b = e / D / S / heads;
    y[b * st.batch + h * st.head + s * st.seq + d] = __float2bfloat16(x[e]);
  }
}

// x (n) f32 uniform in [-1, 1) (b3's optional dlse).
__global__ void fill_uniform_f32(float* __restrict__ x, size_t n, uint64_t seed) {
  for (size_t e = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint64_t z = seed + (e + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    x[e] = static_cast<float>(z >> 40) * (2.f / 16777216.f) - 1.f;
  }
}

}  // namespace bwd
}  // namespace lab

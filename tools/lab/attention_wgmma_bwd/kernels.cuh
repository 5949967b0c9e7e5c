// Device code of the Hopper attention BACKWARD lab (tools/lab/attention_wgmma_bwd.cu, which documents the lab):
// the fp32 reference forward and backward (reference3_*, any shape) and b1, the specialised speed baseline (packed
// bhsd, S a multiple of 128): its dK/dV kernel and separate dQ kernel. b3 is production's backward
// (ops/cuda/device/sm90/attention_backward.cuh, included below: bwd_prep_kernel, bwd_dkdv_kernel, bwd_dq_kernel,
// BwdArgs), and b1 takes from the same sm90 headers its pre-kernel (bwd_prep_kernel on packed strides), its tile
// constants and shared-memory layouts (kBwdBlockN, bwd_block_m, kDqBlockM, dq_block_n, DkdvLayout, DqLayout) and
// the shared pieces (ss_gemm, rs_gemm, store_rows_bounded, bulk_load_1d): one copy of each. The forward lab's
// device header (included below) brings fill_randn, pack_p, causal_mask, align1024 and the Hopper PTX / wgmma
// wrappers. sm_90a only.
//
// Notation: per (b, h), S_ij = q_i . k_j (raw), P_ij = exp(scale S_ij - lse_i) (lse natural, from the forward),
// dP_ij = dout_i . v_j, Delta_i = dout_i . out_i = sum_j P_ij dP_ij (minus dlse_i when given: the gradient that
// reaches lse adds dlse_i P_ij to dS_ij), dS_ij = P_ij (dP_ij - Delta_i);
// dq_i = scale sum_j dS_ij k_j, dk_j = scale sum_i dS_ij q_i, dv_j = sum_i P_ij dout_i. In the kernels,
// lse2 = lse * log2(e) and scale_log2 = scale * log2(e), so P = 2^(S scale_log2 - lse2) with one ex2.
#pragma once
#include <cuda.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "ops/cuda/device/sm90/attention_backward.cuh"  // b3: production's backward kernels, BwdArgs, layouts
#include "ops/cuda/flash_attention_mask.h"               // AttentionBand (the references' band)
#include "tools/lab/attention_wgmma/kernels.cuh"         // fill_randn, pack_p, causal_mask, ...

namespace lab {
namespace bwd {

using xfr::AttentionBand;
using xfr::HeadStrides;

// =====================================================================================================================
// Reference backward (the kernels reference3_* at the end, which check every variant): fp32, one warp per row, every
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
// b1's dK/dV kernel. FlashAttention-3's hopper backward structure, written from its published description: the CTA
// owns BN = kBwdBlockN = 128 keys of one (b, h) and loops over the query tiles that see them.
//   CTA: kWsThreads = 384 threads = warpgroups 0, 1 (consumers, 64 keys each = wgmma's M; setmaxnreg 240) +
//   warpgroup 2 (producer: one thread issues every TMA; setmaxnreg 24) (ops/cuda/device/sm90/attention.cuh).
//   Grid (S/128, H, B); causal: key block 0 (the most query tiles) is blockIdx.x = 0, launched first.
//   Query tile BM = bwd_block_m<D>(): 64 at D = 128, 128 at D = 64, fixed by registers (attention_backward.cuh).
//   Shared memory: production's DkdvLayout<D, STAGES>: K, V (BN x D, loaded once) + STAGES x (Q, dO: BM x D;
//   lse2, Delta: BM fp32) + barriers. STAGES = 2: 128 KB at D = 128, 96 KB at D = 64.
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
//     dP^T's wgmmas; the two consumer warpgroups interleave unsynchronised.
//   Epilogue: dV, scale * dK straight to global as bf16 (store_rows_bounded with rows_valid = 64: a row test that
//   always passes, once per CTA).
// History (H200, 2026-11-30): the first version (this shape) spilled 260-1064 bytes a kernel, ptxas keeping the
// consumer region at the entry's 168 registers. The cause was the __trap() of the old hang-detecting mbar_wait: any
// trap in a setmaxnreg region makes ptxas (nvcc 13.0) allocate the kernel under the entry budget. The workaround
// tried then, 288 threads (2 consumer warpgroups + 1 producer warp) under __maxnreg__(224), compiled but could not
// launch ("too many resources requested", maxThreadsPerBlock 256): 9 warps put 3 warps of 224 registers (21,504)
// on one of the SM's 4 register-file sub-partitions (16,384 each). With the trap-free mbar_wait (ptx.cuh) the
// 3-warpgroup shape compiles without spills (run 13: all cases PASS).
// =====================================================================================================================
template <int D, bool CAUSAL, int STAGES>
__global__ void __launch_bounds__(kWsThreads, 1) bwd_dkdv(const __grid_constant__ CUtensorMap tm_q,   // (B*H*S, D) bf16, box BM rows
                                                   const __grid_constant__ CUtensorMap tm_do,  // (B*H*S, D) bf16, box BM rows
                                                   const __grid_constant__ CUtensorMap tm_k,   // (B*H*S, D) bf16, box 128 rows
                                                   const __grid_constant__ CUtensorMap tm_v,   // (B*H*S, D) bf16, box 128 rows
                                                   const float* __restrict__ lse2,    // (B, H, S) lse * log2(e)
                                                   const float* __restrict__ delta,   // (B, H, S)
                                                   bf16* __restrict__ dk,             // (B, H, S, D)
                                                   bf16* __restrict__ dv,             // (B, H, S, D)
                                                   int H, int S, float scale, float scale_log2) {
  using L = DkdvLayout<D, STAGES>;
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
      ss_gemm<bf16, D, BM>(s, k_wg, BN * 128, q_st, BM * 128);  // S^T (64 keys x BM queries)
      wgmma_commit();
      ss_gemm<bf16, D, BM>(dp, v_wg, BN * 128, do_st, BM * 128);  // dP^T
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

      wgmma_fence();
      rs_gemm<bf16, D, BM>(dvacc, ap, do_st, BM * 128);  // dV += P^T dO
      rs_gemm<bf16, D, BM>(dkacc, ads, q_st, BM * 128);  // dK += dS^T Q
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(dvacc);
      reg_fence(dkacc);
      if (lane == 0) mbar_arrive(bar_empty(st));
    }
    const size_t row0 = bh * S + static_cast<size_t>(n_block) * BN + 64 * cw;  // this warpgroup's first key row
    store_rows_bounded<bf16, D>(dvacc, 1.f, dv + row0 * D, D, 64, t);
    store_rows_bounded<bf16, D>(dkacc, scale, dk + row0 * D, D, 64, t);
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
//   D = 64 (BN = 128), 128 at D = 128 with BN = 64 (dq_block_n<D>() says why not 128 there).
//   Shared memory: production's DqLayout<D, STAGES>: Q, dO (128 x D, loaded once) + STAGES x (K, V: BN x D):
//   128 KB at D = 128, 96 KB at D = 64.
//   Barriers: q_full (Q and dO), kv_full[s] (K and V of one tile), empty[s] (8 consumer-warp arrivals); phase
//   parities as in the dK/dV kernel.
// =====================================================================================================================
template <int D, bool CAUSAL, int STAGES>
__global__ void __launch_bounds__(kWsThreads, 1) bwd_dq(const __grid_constant__ CUtensorMap tm_q,   // (B*H*S, D) bf16, box 128 rows
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
      ss_gemm<bf16, D, BN>(s, q_wg, kDqBlockM * 128, k_st, BN * 128);  // S = Q K^T (64 x 128)
      wgmma_commit();
      ss_gemm<bf16, D, BN>(dp, do_wg, kDqBlockM * 128, v_st, BN * 128);  // dP = dO V^T
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
      rs_gemm<bf16, D, BN>(dqacc, a, k_st, BN * 128);  // dQ += dS K
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(dqacc);
      if (lane == 0) mbar_arrive(bar_empty(st));
    }
    const size_t row0 = bh * S + static_cast<size_t>(m_block) * kDqBlockM + 64 * cw;
    store_rows_bounded<bf16, D>(dqacc, scale, dq + row0 * D, D, 64, t);
  }
}

// =====================================================================================================================
// b3 is production's backward (ops/cuda/device/sm90/attention_backward.cuh, which documents it): bwd_prep_kernel,
// bwd_dkdv_kernel and bwd_dq_kernel over BwdArgs, launched by the host's launch_b3. Developed here as b1 generalised
// to production's problem, then promoted.
// =====================================================================================================================

// =====================================================================================================================
// The references (b1's and b3's check): fp32, one warp per row, any Sq, Sk, band, GQA and strides. Inputs
// bf16 with element strides (qs: q, out, dout; ks: k, v); outputs fp32 packed (B, H, Sq, D) / (B, Hk, Sk, D).
// Row i of head h sees keys [key_lo(i), key_hi(i)) of kv head h / G (AttentionBand); a row that sees none has
// lse -inf, out 0 and P = 0. grid: ceil(rows / 8) blocks of 256.
// =====================================================================================================================
struct RefShape {
  int B = 0, H = 0, Hk = 0, G = 1, Sq = 0, Sk = 0;
  HeadStrides qs, ks;
  AttentionBand band;
  float scale = 1.f;
};

// The query row of (B, H, Sq) this warp of reference3_fwd / reference3_dq owns (row -1 past the last): position i
// of head h of batch b; q_off its element offset in q / out / dout (strides qs), kv_off that of its kv head h / G in
// k / v (strides ks).
struct RefQueryRow {
  int64_t row, q_off, kv_off;
  int i;
};
__device__ __forceinline__ RefQueryRow ref_query_row(const RefShape& sh) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  if (row >= static_cast<int64_t>(sh.B) * sh.H * sh.Sq) return {-1, 0, 0, 0};
  const int i = static_cast<int>(row % sh.Sq);
  const int64_t h = (row / sh.Sq) % sh.H, b = row / sh.Sq / sh.H;
  return {row, b * sh.qs.batch + h * sh.qs.head + i * sh.qs.seq, b * sh.ks.batch + h / sh.G * sh.ks.head, i};
}

template <int D>
__global__ void __launch_bounds__(256) reference3_fwd(const bf16* __restrict__ q,  // (B, H, Sq, D) strides qs
                                                      const bf16* __restrict__ k,  // (B, Hk, Sk, D) strides ks
                                                      const bf16* __restrict__ v,  // (B, Hk, Sk, D) strides ks
                                                      float* __restrict__ out,     // (B, H, Sq, D) packed
                                                      float* __restrict__ lse,     // (B, H, Sq)
                                                      RefShape sh) {
  const int lane = threadIdx.x % 32;
  const RefQueryRow r = ref_query_row(sh);
  if (r.row < 0) return;
  const int64_t row = r.row;
  const int i = r.i;
  const bf16 *kh = k + r.kv_off, *vh = v + r.kv_off;
  float qv[D / 32], kv[D / 32], vv[D / 32];
  load_row<D>(qv, q + r.q_off, lane);
  const int lo = static_cast<int>(sh.band.key_lo(i, sh.Sq, sh.Sk)), hi = static_cast<int>(sh.band.key_hi(i, sh.Sq, sh.Sk));
  float m = -INFINITY;
  for (int j = lo; j < hi; ++j) {
    load_row<D>(kv, kh + j * sh.ks.seq, lane);
    m = fmaxf(m, sh.scale * warp_dot<D>(qv, kv));
  }
  float l = 0.f, o[D / 32] = {};
  for (int j = lo; j < hi; ++j) {
    load_row<D>(kv, kh + j * sh.ks.seq, lane);
    load_row<D>(vv, vh + j * sh.ks.seq, lane);
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
  const RefQueryRow r = ref_query_row(sh);
  if (r.row < 0) return;
  const int64_t row = r.row;
  const int i = r.i;
  const bf16 *kh = k + r.kv_off, *vh = v + r.kv_off;
  float qv[D / 32], dov[D / 32], ov[D / 32], kv[D / 32], vv[D / 32], acc[D / 32] = {}, mag[D / 32] = {};
  load_row<D>(qv, q + r.q_off, lane);
  load_row<D>(dov, dout + r.q_off, lane);
  load_row<D>(ov, out + r.q_off, lane);
  const float dlt = warp_dot<D>(dov, ov) - (dlse != nullptr ? dlse[row] : 0.f);
  const float l = lse[row];
  const int lo = static_cast<int>(sh.band.key_lo(i, sh.Sq, sh.Sk)), hi = static_cast<int>(sh.band.key_hi(i, sh.Sq, sh.Sk));
  for (int j = lo; j < hi && l != -INFINITY; ++j) {
    load_row<D>(kv, kh + j * sh.ks.seq, lane);
    load_row<D>(vv, vh + j * sh.ks.seq, lane);
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
  load_row<D>(kv, k + b * sh.ks.batch + hk * sh.ks.head + j * sh.ks.seq, lane);
  load_row<D>(vv, v + b * sh.ks.batch + hk * sh.ks.head + j * sh.ks.seq, lane);
  const int lo = static_cast<int>(sh.band.query_lo(j, sh.Sq, sh.Sk)), hi = static_cast<int>(sh.band.query_hi(j + 1, sh.Sq, sh.Sk));
  for (int g = 0; g < sh.G; ++g) {
    const int64_t h = hk * sh.G + g, lrow = (b * sh.H + h) * sh.Sq;
    const bf16* qh = q + b * sh.qs.batch + h * sh.qs.head;
    const bf16* doh = dout + b * sh.qs.batch + h * sh.qs.head;
    for (int i = lo; i < hi; ++i) {
      const float l = lse[lrow + i];
      if (l == -INFINITY) continue;  // a row that sees nothing (cannot happen inside [lo, hi), kept for safety)
      load_row<D>(qv, qh + i * sh.qs.seq, lane);
      load_row<D>(dov, doh + i * sh.qs.seq, lane);
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
__global__ void to_bf16_strided(const float* __restrict__ x, bf16* __restrict__ y, int heads, int S, int D,
                                HeadStrides st, size_t n) {  // x: (B, heads, S, D) packed; y: the same with strides st
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
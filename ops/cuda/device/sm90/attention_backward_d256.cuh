// The attention backward at head dim 256 on Hopper (sm_90a): the dK/dV and dQ kernels of sm90/attention_backward.cuh
// (which has the notation, the prep kernel, the pipelines and the mask rules) in a shape whose accumulators fit.
//
// Why another shape: at D = 256 a 64-key dK and dV are 2 x 128 fp32 registers a thread of a warpgroup, and a 64-query
// dQ 128, beside the tile's scores: over the 240 a consumer gets (attention_backward.cuh's kernels give each
// warpgroup its own 64 keys or queries with the whole D). Here the CTA's two consumer warpgroups share one 64-row
// block and split the work instead:
//   - each 64 x 64 score tile (S^T and dP^T in the dK/dV kernel, S and dP in the dQ kernel) by its columns:
//     warpgroup c computes columns 32c .. 32c + 31 over the whole of D (m64n32 wgmmas, K = 256), so no partial sums
//     are exchanged;
//   - each output (dK and dV, or dQ) by D: warpgroup c owns columns 128c .. 128c + 127 (64 fp32 registers each).
// Between the two, each warpgroup stores its 16-bit half of P^T and dS^T (dS) into a shared 64 x 64 tile, and after a
// named barrier both read the whole tile as the A operand of dV_c += P^T dO[:, c], dK_c += dS^T Q[:, c] (dQ_c +=
// dS K[:, c]): m64n128 wgmmas with A K-major from shared memory and B MN-major (wgmma_ss_bmn). The exchange tiles
// alternate by tile (two of each), so that the one barrier a tile orders both warpgroups' writes and reads: a
// warpgroup that passes tile j's barrier knows the other finished tile j - 1's GEMMs (it waited for them before it
// arrived), the last readers of the buffer tile j + 1 overwrites.
// Registers of a dK/dV consumer thread: dV and dK halves 2 x 64, S^T and dP^T halves 2 x 16, their 16-bit fragments
// 2 x 8: 176 beside addresses (ptxas: no spills). FlashAttention-3's hopper backward takes the same split at this
// head dim (64 x 64 tiles, the scores' columns across its two warpgroups); this is written from that description.
//
// Reach: as attention_backward.cuh's kernels (every band, GQA, both layouts, any Sq, Sk, dlse), D = 256 only. One item
// per CTA (no persistent form), and deterministic only: there is no room for the atomic backward's buffers beside
// these, so the launcher runs these two kernels whatever XF_ATTENTION_DETERMINISTIC says.
#pragma once
#include "ops/cuda/device/sm90/attention_backward.cuh"

namespace xfr::cuda::sm90 {

constexpr int kSplitD = 256;                 // the head dim these kernels take
constexpr int kSplitBlock = 64;              // keys of a dK/dV CTA and of a dQ tile; queries of a dK/dV tile and of a dQ CTA
constexpr int kSplitCols = kSplitBlock / 2;  // a warpgroup's columns of a score tile
constexpr int kSplitDHalf = kSplitD / 2;     // a warpgroup's columns of dK, dV or dQ
constexpr int kSplitExchangeBarrier = 1;     // the named barrier of the exchange (0 is __syncthreads')

// Shared memory of the dK/dV kernel (byte offsets from the 1024-aligned base): K, V (64 x 256, loaded once: 32 KB
// each) + STAGES x (Q, dO: 64 x 256, 32 KB each) + two P^T and two dS^T exchange tiles (64 keys x 64 queries, 16-bit:
// 8 KB) + STAGES x (lse2, Delta: 64 fp32) + barriers (kv_full, full[STAGES], empty[STAGES]): 226 KB of the 227.
template <int STAGES = kBwdStages>
struct SplitDkdvLayout {
  static constexpr int BM = kSplitBlock, BN = kSplitBlock;
  static constexpr int kTileKV = BN * kSplitD * 2, kTileQ = BM * kSplitD * 2, kTileX = BN * BM * 2;
  static constexpr int kK = 0, kV = kTileKV, kQ = 2 * kTileKV, kDo = kQ + STAGES * kTileQ;
  static constexpr int kP = kDo + STAGES * kTileQ, kDs = kP + 2 * kTileX;
  static constexpr int kLse = kDs + 2 * kTileX, kDelta = kLse + STAGES * BM * 4;
  static constexpr int kBar = kDelta + STAGES * BM * 4;
  static constexpr int kBars = 1 + 2 * STAGES;
  static constexpr int kBytes = kBar + kBars * 8 + 1024;        // + alignment slack for align1024
  static constexpr uint32_t kTileTx = 2 * kTileQ + 2 * BM * 4;  // Q + dO + lse2 + Delta of one query tile
  static_assert(kTileKV % 1024 == 0 && kTileQ % 1024 == 0 && kTileX % 1024 == 0, "sw128 tiles must stay 1024-aligned");
  static_assert(kBytes <= 227 * 1024, "over the 227 KB of shared memory a block may have");
};

// Shared memory of the dQ kernel: Q, dO (64 x 256, loaded once) + STAGES x (K, V: 64 x 256) + two dS exchange tiles
// (64 queries x 64 keys, 16-bit) + barriers (q_full, full[STAGES], empty[STAGES]): 209 KB.
template <int STAGES = kBwdStages>
struct SplitDqLayout {
  static constexpr int kBlockN = kSplitBlock;
  static constexpr int kTileQ = kSplitBlock * kSplitD * 2, kTileKV = kBlockN * kSplitD * 2,
                       kTileX = kSplitBlock * kBlockN * 2;
  static constexpr int kQ = 0, kDo = kTileQ, kK = 2 * kTileQ, kV = kK + STAGES * kTileKV;
  static constexpr int kDs = kV + STAGES * kTileKV, kBar = kDs + 2 * kTileX;
  static constexpr int kBars = 1 + 2 * STAGES;
  static constexpr int kBytes = kBar + kBars * 8 + 1024;
  static_assert(kTileQ % 1024 == 0 && kTileKV % 1024 == 0 && kTileX % 1024 == 0, "sw128 tiles must stay 1024-aligned");
  static_assert(kBytes <= 227 * 1024, "over the 227 KB of shared memory a block may have");
};

// acc (64 x 128 fp32) += A (64 x 64) B (64 x 128): A a 16-bit [row][k] sw128 tile (one 64-column atom, K-major) at
// a_lo (sw128_desc_lo(tile, 16)), B a [k][n] tile, n contiguous (MN-major), at b_lo (sw128_desc_lo(its first column,
// LBO = the step between its two 64-column atoms)). A k step of 16 adds 32 B along A's swizzled rows and 16 rows
// (2048 B) to B.
template <class T>
__device__ __forceinline__ void split_out_gemm(float (&acc)[kSplitDHalf / 2], uint32_t a_lo, uint32_t b_lo) {
#pragma unroll
  for (int kk = 0; kk < kSplitBlock / 16; ++kk)
    wgmma_ss_bmn<kSplitDHalf, T>(acc, sw128_desc_of(a_lo + ((kk * 32) >> 4)),
                                 sw128_desc_of(b_lo + ((kk * 16 * 128) >> 4)), 1);
}

// This warpgroup's 16-bit half of an exchange tile (f: pack_p's fragments of its 64 x 32 accumulator) into the tile
// at `tile` (columns 32 cw ..), then announced: after the barrier both warpgroups' halves are in, and visible to the
// wgmmas (the async proxy) that read the tile.
__device__ __forceinline__ void split_exchange(const uint32_t (&f)[kSplitCols / 16][4], uint32_t tile, int cw,
                                               int t) {
  store_frag_sw128<kSplitCols>(f, tile, kSplitBlock * 128, 16 * (t / 32), cw * kSplitCols / 8, t % 32);
  fence_proxy_async();
  named_barrier_sync(kSplitExchangeBarrier, 256);
}

// dK / dV at D = 256. CTA = keys [n0, n0 + 64) of kv head hk: grid (ceil(Sk / 64), Hk, B), kWsThreads threads,
// SplitDkdvLayout<>::kBytes of dynamic shared memory. Maps: tm_k, tm_v (64-row boxes), tm_q_bm, tm_do_bm (64).
//   The query tiles: as bwd_dkdv_kernel's (64 queries a tile; every query head of the kv head in turn).
//   Consumer c per query tile (queries m 64 ..): S^T_c = K Q_c^T and dP^T_c = V dO_c^T (Q_c, dO_c: the tile's
//   queries 32c .. 32c + 31; 2 x 16 m64n32 wgmma_ss); wait<1>; P^T_c = 2^(S^T_c scale_log2 - lse2[q]) (hidden -> 0);
//   wait<0>; dS^T_c = P^T_c (dP^T_c - Delta[q]); both to 16-bit, into the exchange tiles (split_exchange); dV_c +=
//   P^T dO[:, 128c ..] and dK_c += dS^T Q[:, 128c ..] (2 x 4 split_out_gemm steps); wait<0>; release the stage.
//   Epilogue: dV_c and scale dK_c as T, rows < Sk only.
template <class T, bool kLower>
__global__ void __launch_bounds__(kWsThreads, 1) bwd_dkdv_d256_kernel(const __grid_constant__ BwdArgs a) {
#if XF_SM90A_DEVICE
  using L = SplitDkdvLayout<>;
  constexpr int BM = L::BM, BN = L::BN, D = kSplitD, STAGES = kBwdStages;
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
    setmaxnreg_dec<kProducerRegs>();
    if (tid == 256 && n_tiles > 0) produce_dkdv_item<L, D, STAGES>(a, base, n0, hk, b, tr, n_tiles);
    return;  // the producer's path must not rejoin the consumers'
  }
  setmaxnreg_inc<kConsumerRegs>();
  const int cw = wg, t = tid % 128, w = t / 32, lane = t % 32;
  const int key_row0 = n0 + 16 * w + lane / 4;  // this thread's first key (second: +8), in both warpgroups
  const KeyRowsMask<kLower> key_mask(mask, key_row0, n0, BN, a.Sk);  // who sees its two keys
  float dvacc[kSplitDHalf / 2], dkacc[kSplitDHalf / 2], s[kSplitCols / 2], dp[kSplitCols / 2];
  uint32_t ap[kSplitCols / 16][4], ads[kSplitCols / 16][4];
#pragma unroll
  for (int i = 0; i < kSplitDHalf / 2; ++i) dvacc[i] = 0.f, dkacc[i] = 0.f;
  // wgmma descriptors' low words, built once and opaque (as attention_backward.cuh's kernels): K and V as the A of
  // S^T / dP^T; stage 0's queries 32c .. of Q and dO as their B (LBO 16); stage 0's columns 128c .. of Q and dO as
  // the MN-major B of dK_c / dV_c (LBO = BM * 128, the step between 64-column atoms); the exchange tiles as A.
  uint32_t k_lo = sw128_desc_lo(s_k, 16), v_lo = sw128_desc_lo(s_v, 16),
           q_lo = sw128_desc_lo(s_q + cw * kSplitCols * 128, 16), do_lo = sw128_desc_lo(s_do + cw * kSplitCols * 128, 16),
           qb_lo = sw128_desc_lo(s_q + 2 * cw * (BM * 128), BM * 128),
           dob_lo = sw128_desc_lo(s_do + 2 * cw * (BM * 128), BM * 128), p_lo = sw128_desc_lo(base + L::kP, 16),
           ds_lo = sw128_desc_lo(base + L::kDs, 16);
  asm volatile("" : "+r"(k_lo), "+r"(v_lo), "+r"(q_lo), "+r"(do_lo), "+r"(qb_lo), "+r"(dob_lo), "+r"(p_lo),
               "+r"(ds_lo));
  constexpr uint32_t kStageLo = L::kTileQ >> 4, kTileXLo = L::kTileX >> 4;
  if (n_tiles > 0) mbar_wait(bar_kv, 0);

#pragma unroll 1  // one tile's registers at a time
  for (int j = 0; j < n_tiles; ++j) {
    const int st = j % STAGES, m = tr.first + j % tr.count, buf = j & 1;
    const float* lse_st = reinterpret_cast<const float*>(smem + L::kLse + st * BM * 4) + cw * kSplitCols;
    const float* dlt_st = reinterpret_cast<const float*>(smem + L::kDelta + st * BM * 4) + cw * kSplitCols;
    mbar_wait(bars.full(st), (j / STAGES) & 1);
    // The thread's columns' lse2 and Delta (queries 8 q + 2 (lane % 4), + 1 of the warpgroup's 32), read before the
    // GEMMs are issued: read after their wait, the exponent's FFMAs stalled on the shared loads (ncu, session 15's
    // run 4: short-scoreboard stalls, 18% of the samples, the top FFMA lines).
    float2 l2v[kSplitCols / 8], dlv[kSplitCols / 8];
#pragma unroll
    for (int q = 0; q < kSplitCols / 8; ++q) {
      l2v[q] = *reinterpret_cast<const float2*>(lse_st + 8 * q + 2 * (lane % 4));
      dlv[q] = *reinterpret_cast<const float2*>(dlt_st + 8 * q + 2 * (lane % 4));
    }

    wgmma_fence();
    ss_gemm_desc<T, D, kSplitCols>(s, sw128_desc_of(k_lo), BN * 128, sw128_desc_of(q_lo + st * kStageLo), BM * 128);
    wgmma_commit();
    ss_gemm_desc<T, D, kSplitCols>(dp, sw128_desc_of(v_lo), BN * 128, sw128_desc_of(do_lo + st * kStageLo), BM * 128);
    wgmma_commit();
    wgmma_wait<1>();
    reg_fence(s);
    // register i: key key_row0 + 8 ((i >> 1) & 1), query m BM + 32 cw + 8 (i / 4) + 2 (lane % 4) + (i & 1)
    const bool full = key_mask.covers(m * BM, (m + 1) * BM);  // CTA-uniform
    const int qc = m * BM + cw * kSplitCols + 2 * (lane % 4);
#pragma unroll
    for (int i = 0; i < kSplitCols / 2; i += 2) {
      const float2 l2 = l2v[i / 4];
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
    for (int i = 0; i < kSplitCols / 2; i += 2) {  // dS^T in place of dP^T
      const float2 dl = dlv[i / 4];
      dp[i] = s[i] * (dp[i] - dl.x);
      dp[i + 1] = s[i + 1] * (dp[i + 1] - dl.y);
    }
    pack_p<T, kSplitCols>(s, ap);
    pack_p<T, kSplitCols>(dp, ads);
    store_frag_sw128<kSplitCols>(ap, base + L::kP + buf * L::kTileX, BN * 128, 16 * w, cw * kSplitCols / 8, lane);
    split_exchange(ads, base + L::kDs + buf * L::kTileX, cw, t);  // after it both halves of P^T and dS^T are in
    wgmma_fence();
    split_out_gemm<T>(dvacc, p_lo + buf * kTileXLo, dob_lo + st * kStageLo);  // dV_c += P^T dO[:, 128c ..]
    split_out_gemm<T>(dkacc, ds_lo + buf * kTileXLo, qb_lo + st * kStageLo);  // dK_c += dS^T Q[:, 128c ..]
    wgmma_commit();
    wgmma_wait<0>();
    reg_fence(dvacc);
    reg_fence(dkacc);
    if (lane == 0) mbar_arrive(bars.empty(st));
  }
  const int64_t off = static_cast<int64_t>(b) * a.ks.batch + static_cast<int64_t>(hk) * a.ks.head +
                      static_cast<int64_t>(n0) * a.ks.seq + cw * kSplitDHalf;
  store_rows_bounded<T, kSplitDHalf>(dvacc, 1.f, static_cast<T*>(a.dv) + off, a.ks.seq, a.Sk - n0, t);
  store_rows_bounded<T, kSplitDHalf>(dkacc, a.scale, static_cast<T*>(a.dk) + off, a.ks.seq, a.Sk - n0, t);
#endif
}

// dQ at D = 256. CTA = queries [m0, m0 + 64) of head h: grid (ceil(Sq / 64), H, B), the last query block first (the
// longest under a causal mask), kWsThreads threads, SplitDqLayout<>::kBytes of dynamic shared memory. Maps: tm_q_bm,
// tm_do_bm, tm_k, tm_v (64-row boxes, the dK/dV kernel's).
//   Key tiles Mask::key_tiles(m0, 64, 64) of kv head h / G; a tile not covered by common_keys(m0, last valid query)
//   gets the element mask (-inf before the exponential). No key tile: dQ = 0 stored.
//   Consumer c per key tile: S_c = Q K_c^T and dP_c = dO V_c^T (K_c, V_c: the tile's keys 32c .. 32c + 31; 2 x 16
//   m64n32 wgmma_ss); wait<1>; P_c = 2^(S_c scale_log2 - lse2_row); wait<0>; dS_c = P_c (dP_c - Delta_row), 16-bit,
//   into the exchange tile; dQ_c += dS K[:, 128c ..] (4 split_out_gemm steps); wait<0>; release the stage.
//   Epilogue: scale dQ_c as T, rows < Sq only.
template <class T, bool kLower>
__global__ void __launch_bounds__(kWsThreads, 1) bwd_dq_d256_kernel(const __grid_constant__ BwdArgs a) {
#if XF_SM90A_DEVICE
  using L = SplitDqLayout<>;
  constexpr int BM = kSplitBlock, BN = L::kBlockN, D = kSplitD, STAGES = kBwdStages;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = align1024(smem_raw);
  const uint32_t base = smem_u32(smem);
  const uint32_t s_q = base + L::kQ, s_do = base + L::kDo, s_k = base + L::kK, s_v = base + L::kV;
  const uint32_t bar_q = base + L::kBar;
  const BwdBarriers<STAGES> bars{bar_q};

  const int tid = threadIdx.x, wg = tid / 128;
  const int m0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * BM;
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z), hk = h / a.G;
  const fa::Mask<kLower> mask(a.band, a.Sq, a.Sk);
  const fa::TileRange tr = mask.key_tiles(m0, BM, BN);  // may be empty: no query of the block sees a key

  if (tid == 0) init_pipeline<STAGES>(bar_q, &a.tm_q_bm, &a.tm_do_bm, &a.tm_k, &a.tm_v);
  __syncthreads();

  if (wg == 2) {
    setmaxnreg_dec<kProducerRegs>();
    if (tid == 256 && tr.count > 0)
      produce_dq_item<L, D, BM, STAGES>(base, &a.tm_q_bm, &a.tm_do_bm, &a.tm_k, &a.tm_v, m0, h, hk, b, tr);
    return;
  }
  setmaxnreg_inc<kConsumerRegs>();
  const int cw = wg, t = tid % 128, w = t / 32, lane = t % 32;
  const int q_row0 = m0 + 16 * w + lane / 4;  // this thread's first query (second: +8), in both warpgroups
  const int64_t lrow = (static_cast<int64_t>(b) * a.H + h) * a.Sq_pad;  // m0 + 64 <= Sq_pad: in range
  float l2[2], dl[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l2[r] = a.lse2[lrow + q_row0 + 8 * r];
    dl[r] = a.delta[lrow + q_row0 + 8 * r];
  }
  const fa::KeyRange keys[2] = {mask.keys(q_row0), mask.keys(q_row0 + 8)};
  const fa::KeyRange common = mask.common_keys(m0, min(m0 + BM, a.Sq) - 1);  // keys all valid rows see
  float dqacc[kSplitDHalf / 2], s[kSplitCols / 2], dp[kSplitCols / 2];
  uint32_t ads[kSplitCols / 16][4];
#pragma unroll
  for (int i = 0; i < kSplitDHalf / 2; ++i) dqacc[i] = 0.f;
  // Descriptors' low words, built once and opaque: Q and dO as the A of S / dP; stage 0's keys 32c .. of K and V as
  // their B (LBO 16); stage 0's columns 128c .. of K as the MN-major B of dQ_c (LBO = BN * 128); the exchange tiles.
  uint32_t q_lo = sw128_desc_lo(s_q, 16), do_lo = sw128_desc_lo(s_do, 16),
           k_lo = sw128_desc_lo(s_k + cw * kSplitCols * 128, 16), v_lo = sw128_desc_lo(s_v + cw * kSplitCols * 128, 16),
           kb_lo = sw128_desc_lo(s_k + 2 * cw * (BN * 128), BN * 128), ds_lo = sw128_desc_lo(base + L::kDs, 16);
  asm volatile("" : "+r"(q_lo), "+r"(do_lo), "+r"(k_lo), "+r"(v_lo), "+r"(kb_lo), "+r"(ds_lo));
  constexpr uint32_t kStageLo = L::kTileKV >> 4, kTileXLo = L::kTileX >> 4;
  if (tr.count > 0) mbar_wait(bar_q, 0);

#pragma unroll 1
  for (int j = 0; j < tr.count; ++j) {
    const int st = j % STAGES, k0 = (tr.first + j) * BN, buf = j & 1;
    mbar_wait(bars.full(st), (j / STAGES) & 1);
    wgmma_fence();
    ss_gemm_desc<T, D, kSplitCols>(s, sw128_desc_of(q_lo), BM * 128, sw128_desc_of(k_lo + st * kStageLo), BN * 128);
    wgmma_commit();
    ss_gemm_desc<T, D, kSplitCols>(dp, sw128_desc_of(do_lo), BM * 128, sw128_desc_of(v_lo + st * kStageLo), BN * 128);
    wgmma_commit();
    wgmma_wait<1>();
    reg_fence(s);
    if (!mask.covers(common, k0, k0 + BN))
      mask_tile<kLower, kSplitCols>(s, mask, keys, k0 + cw * kSplitCols + 2 * (lane % 4));
#pragma unroll
    for (int i = 0; i < kSplitCols / 2; ++i) s[i] = ex2(fmaf(s[i], a.scale_log2, -l2[(i >> 1) & 1]));
    wgmma_wait<0>();
    reg_fence(dp);
#pragma unroll
    for (int i = 0; i < kSplitCols / 2; ++i) dp[i] = s[i] * (dp[i] - dl[(i >> 1) & 1]);
    pack_p<T, kSplitCols>(dp, ads);
    split_exchange(ads, base + L::kDs + buf * L::kTileX, cw, t);
    wgmma_fence();
    split_out_gemm<T>(dqacc, ds_lo + buf * kTileXLo, kb_lo + st * kStageLo);  // dQ_c += dS K[:, 128c ..]
    wgmma_commit();
    wgmma_wait<0>();
    reg_fence(dqacc);
    if (lane == 0) mbar_arrive(bars.empty(st));
  }
  const int64_t off = static_cast<int64_t>(b) * a.qs.batch + static_cast<int64_t>(h) * a.qs.head +
                      static_cast<int64_t>(m0) * a.qs.seq + cw * kSplitDHalf;
  store_rows_bounded<T, kSplitDHalf>(dqacc, a.scale, static_cast<T*>(a.dq) + off, a.qs.seq, a.Sq - m0, t);
#endif
}

}  // namespace xfr::cuda::sm90

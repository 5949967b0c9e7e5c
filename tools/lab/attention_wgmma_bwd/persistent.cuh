// b4 of the Hopper attention BACKWARD lab (tools/lab/attention_wgmma_bwd.cu): production's dK/dV and dQ kernels
// (b3, ops/cuda/device/sm90/attention_backward.cuh, which documents their tiles, barriers and per-tile math) made
// persistent as production's forward is (ops/cuda/flash_attention_sm90.cu): a grid of one CTA per SM, each walking
// pairs of work items in fa::TileOrder (the i-th block from the end with the i-th from the start, equal cost under
// a causal mask), the producer running ahead into the CTA's next item.
//   Why: one CTA per item pays its start, its pipeline fill and its epilogue once per item, about 3 tiles' worth of
//   time; at S = 512 a dK/dV item has 4 query tiles (D = 64) or 8 (D = 128). The forward gained +12% to +37% at
//   S = 512 from the same change (docs/benchmarks.md, runs 19-20).
//   What changes against b3, per kernel: the once-loaded operands (K, V of the dK/dV kernel; Q, dO of the dQ kernel)
//   get an empty barrier beside their full one (8 arrivals: lane 0 of each consumer warp once the item's last
//   S / dP GEMMs, their only readers, are complete), so the producer loads the next item's while this item's last
//   tile finishes and its epilogue stores; the ring's use count runs on across items (stage it % 2, phase
//   (it / 2) & 1); everything else is b3's. Not yet run on a GPU (written 2026-11-30 with the session's device time
//   spent): the lab's first run checks it on every case (b4 on one CTA per SM, b4s on 3 CTAs, so that the small
//   cases walk many items a CTA) and times it beside b3.
#pragma once
#include <cuda.h>

#include <cstdint>

#include "ops/cuda/device/sm90/attention_backward.cuh"
#include "ops/cuda/flash_attention_tile_order.h"

namespace lab {
namespace bwd {

// b4's parameters: production's, plus the two kernels' work lists (fa::TileOrder).
struct PersistentArgs {
  xfr::cuda::sm90::BwdArgs a;
  int Hk = 1;
  int kv_blocks = 0, kv_pairs = 0;  // ceil(Sk / 128) key blocks per kv head; Hk B ceil(kv_blocks / 2) pairs
  int q_blocks = 0, q_pairs = 0;    // Sq_pad / 128 query blocks per head; H B ceil(q_blocks / 2) pairs
};

// One extra mbarrier after each layout's own: the once-loaded operands' empty barrier.
template <class Layout>
constexpr int persistent_smem_bytes() {
  return Layout::kBytes + 8;
}

// dK / dV, persistent: grid min(kv_pairs, SMs), kWsThreads threads, persistent_smem_bytes<DkdvLayout<D>>().
template <class T, int D, bool kLower>
__global__ void __launch_bounds__(xfr::cuda::sm90::kWsThreads, 1)
    bwd_dkdv_persistent(const __grid_constant__ PersistentArgs pa) {
  using namespace xfr::cuda::sm90;
  namespace fa = xfr::cuda::fa;
  const BwdArgs& a = pa.a;
  using L = DkdvLayout<D>;
  constexpr int BM = L::BM, BN = L::BN, STAGES = kBwdStages;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = align1024(smem_raw);
  const uint32_t base = smem_u32(smem);
  const uint32_t s_k = base + L::kK, s_v = base + L::kV, s_q = base + L::kQ, s_do = base + L::kDo;
  const uint32_t bar_kv = base + L::kBar, bar_kv_empty = base + L::kBar + 8 * L::kBars;
  auto bar_full = [&](int st) { return bar_kv + 8 * (1 + st); };
  auto bar_empty = [&](int st) { return bar_kv + 8 * (1 + STAGES + st); };

  const int tid = threadIdx.x, wg = tid / 128;  // 0, 1: consumers; 2: the producer warpgroup
  const fa::TileOrder<BN> order{pa.kv_blocks, pa.Hk, pa.kv_pairs};
  const fa::Mask<kLower> mask(a.band, a.Sq, a.Sk);
  const int grid = static_cast<int>(gridDim.x), cta = static_cast<int>(blockIdx.x);

  if (tid == 0) {
    tma_prefetch_map(&a.tm_q_bm);
    tma_prefetch_map(&a.tm_do_bm);
    tma_prefetch_map(&a.tm_k);
    tma_prefetch_map(&a.tm_v);
    mbar_init(bar_kv, 1);
    mbar_init(bar_kv_empty, 8);  // lane 0 of each consumer warp, after the item's last S^T / dP^T
    for (int st = 0; st < STAGES; ++st) {
      mbar_init(bar_full(st), 1);
      mbar_init(bar_empty(st), 8);
    }
    mbar_init_fence();
  }
  __syncthreads();

  // Both roles walk the same items and count the same loads: it = ring uses so far, kn = K/V loads so far. An item
  // no query sees loads nothing (its dK, dV rows are stored as zeros).
  if (wg == 2) {
    setmaxnreg_dec<kProducerRegs>();
    if (tid == 256) {
      int it = 0, kn = 0;
      for (int k = 0;; ++k) {
        const int u = order.tile(k, grid, cta);
        if (u == fa::TileOrder<BN>::kEnd) break;
        if (u == fa::TileOrder<BN>::kNone) continue;
        const int n0 = order.q0(u), hk = order.head(u), b = order.batch(u);
        const fa::TileRange tr = mask.query_tiles(n0, BN, BM);
        const int n_tiles = tr.count * a.G;
        if (n_tiles == 0) continue;
        mbar_wait(bar_kv_empty, (kn++ & 1) ^ 1);  // the previous item's last S^T, dP^T are done
        mbar_arrive_expect_tx(bar_kv, 2 * L::kTileKV);
#pragma unroll
        for (int at = 0; at < D / 64; ++at) {
          tma_load_4d(s_k + at * (BN * 128), &a.tm_k, at * 64, n0, hk, b, bar_kv);
          tma_load_4d(s_v + at * (BN * 128), &a.tm_v, at * 64, n0, hk, b, bar_kv);
        }
        for (int j = 0; j < n_tiles; ++j, ++it) {
          const int st = it % STAGES, g = j / tr.count, m = tr.first + (j - g * tr.count), h = hk * a.G + g;
          mbar_wait(bar_empty(st), ((it / STAGES) & 1) ^ 1);
          mbar_arrive_expect_tx(bar_full(st), L::kTileTx);
#pragma unroll
          for (int at = 0; at < D / 64; ++at) {
            tma_load_4d(s_q + st * L::kTileQ + at * (BM * 128), &a.tm_q_bm, at * 64, m * BM, h, b, bar_full(st));
            tma_load_4d(s_do + st * L::kTileQ + at * (BM * 128), &a.tm_do_bm, at * 64, m * BM, h, b, bar_full(st));
          }
          const int64_t lrow = (static_cast<int64_t>(b) * a.H + h) * a.Sq_pad + m * BM;
          bulk_load_1d(base + L::kLse + st * BM * 4, a.lse2 + lrow, BM * 4, bar_full(st));
          bulk_load_1d(base + L::kDelta + st * BM * 4, a.delta + lrow, BM * 4, bar_full(st));
        }
      }
    }
    return;  // the producer's path must not rejoin the consumers'
  }
  setmaxnreg_inc<kConsumerRegs>();
  const int cw = wg, t = tid % 128, w = t / 32, lane = t % 32;
  const uint32_t k_wg = s_k + cw * 64 * 128, v_wg = s_v + cw * 64 * 128;  // this warpgroup's 64 keys
  int it = 0, kn = 0;
  for (int k = 0;; ++k) {
    const int u = order.tile(k, grid, cta);
    if (u == fa::TileOrder<BN>::kEnd) break;
    if (u == fa::TileOrder<BN>::kNone) continue;
    const int n0 = order.q0(u), hk = order.head(u), b = order.batch(u);
    const fa::TileRange tr = mask.query_tiles(n0, BN, BM);
    const int n_tiles = tr.count * a.G;
    const int key_row0 = n0 + 64 * cw + 16 * w + lane / 4;  // this thread's first key (second: +8)
    int qlo[2], qhi[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int key = key_row0 + 8 * r;
      const bool valid = key < a.Sk;
      qlo[r] = valid ? mask.query_lo(key) : 0;
      qhi[r] = valid ? mask.query_hi(key + 1) : 0;
    }
    const bool all_keys = n0 + BN <= a.Sk;
    const int cov_lo = mask.query_lo(min(n0 + BN, a.Sk) - 1), cov_hi = mask.query_hi(n0 + 1);
    float dvacc[D / 2], dkacc[D / 2], s[BM / 2], dp[BM / 2];
    uint32_t ap[BM / 16][4], ads[BM / 16][4];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) dvacc[i] = 0.f, dkacc[i] = 0.f;
    if (n_tiles > 0) mbar_wait(bar_kv, kn++ & 1);

#pragma unroll 1
    for (int j = 0; j < n_tiles; ++j) {
      const int st = (it + j) % STAGES, m = tr.first + j % tr.count;
      const uint32_t q_st = s_q + st * L::kTileQ, do_st = s_do + st * L::kTileQ;
      const float* lse_st = reinterpret_cast<const float*>(smem + L::kLse + st * BM * 4);
      const float* dlt_st = reinterpret_cast<const float*>(smem + L::kDelta + st * BM * 4);
      mbar_wait(bar_full(st), ((it + j) / STAGES) & 1);

      wgmma_fence();
      ss_gemm<T, D, BM>(s, k_wg, BN * 128, q_st, BM * 128);  // S^T (64 keys x BM queries)
      wgmma_commit();
      ss_gemm<T, D, BM>(dp, v_wg, BN * 128, do_st, BM * 128);  // dP^T
      wgmma_commit();
      wgmma_wait<1>();
      reg_fence(s);
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
      if (j == n_tiles - 1 && lane == 0) mbar_arrive(bar_kv_empty);  // K, V read for the last time
#pragma unroll
      for (int i = 0; i < BM / 2; i += 2) {  // dS^T in place of dP^T
        const float2 dl = *reinterpret_cast<const float2*>(dlt_st + 8 * (i / 4) + 2 * (lane % 4));
        dp[i] = s[i] * (dp[i] - dl.x);
        dp[i + 1] = s[i + 1] * (dp[i + 1] - dl.y);
      }
      pack_p<T, BM>(s, ap);
      pack_p<T, BM>(dp, ads);
      wgmma_fence();
      rs_gemm<T, D, BM>(dvacc, ap, do_st, BM * 128);  // dV += P^T dO
      rs_gemm<T, D, BM>(dkacc, ads, q_st, BM * 128);  // dK += dS^T Q
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(dvacc);
      reg_fence(dkacc);
      if (lane == 0) mbar_arrive(bar_empty(st));
    }
    it += n_tiles;
    const int key_wg = n0 + 64 * cw;
    const int64_t off = static_cast<int64_t>(b) * a.ks.batch + static_cast<int64_t>(hk) * a.ks.head +
                        static_cast<int64_t>(key_wg) * a.ks.seq;
    store_rows_bounded<T, D>(dvacc, 1.f, static_cast<T*>(a.dv) + off, a.ks.seq, a.Sk - key_wg, t);
    store_rows_bounded<T, D>(dkacc, a.scale, static_cast<T*>(a.dk) + off, a.ks.seq, a.Sk - key_wg, t);
  }
}

// dQ, persistent: grid min(q_pairs, SMs), kWsThreads threads, persistent_smem_bytes<DqLayout<D>>().
template <class T, int D, bool kLower>
__global__ void __launch_bounds__(xfr::cuda::sm90::kWsThreads, 1)
    bwd_dq_persistent(const __grid_constant__ PersistentArgs pa) {
  using namespace xfr::cuda::sm90;
  namespace fa = xfr::cuda::fa;
  const BwdArgs& a = pa.a;
  using L = DqLayout<D>;
  constexpr int BN = L::kBlockN, STAGES = kBwdStages;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = align1024(smem_raw);
  const uint32_t base = smem_u32(smem);
  const uint32_t s_q = base + L::kQ, s_do = base + L::kDo, s_k = base + L::kK, s_v = base + L::kV;
  const uint32_t bar_q = base + L::kBar, bar_q_empty = base + L::kBar + 8 * L::kBars;
  auto bar_full = [&](int st) { return bar_q + 8 * (1 + st); };
  auto bar_empty = [&](int st) { return bar_q + 8 * (1 + STAGES + st); };

  const int tid = threadIdx.x, wg = tid / 128;
  const fa::TileOrder<kDqBlockM> order{pa.q_blocks, a.H, pa.q_pairs};
  const fa::Mask<kLower> mask(a.band, a.Sq, a.Sk);
  const int grid = static_cast<int>(gridDim.x), cta = static_cast<int>(blockIdx.x);

  if (tid == 0) {
    tma_prefetch_map(&a.tm_q128);
    tma_prefetch_map(&a.tm_do128);
    tma_prefetch_map(&a.tm_k_dq);
    tma_prefetch_map(&a.tm_v_dq);
    mbar_init(bar_q, 1);
    mbar_init(bar_q_empty, 8);  // lane 0 of each consumer warp, after the item's last S / dP
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
      int it = 0, qn = 0;
      for (int k = 0;; ++k) {
        const int u = order.tile(k, grid, cta);
        if (u == fa::TileOrder<kDqBlockM>::kEnd) break;
        if (u == fa::TileOrder<kDqBlockM>::kNone) continue;
        const int m0 = order.q0(u), h = order.head(u), b = order.batch(u), hk = h / a.G;
        const fa::TileRange tr = mask.key_tiles(m0, kDqBlockM, BN);
        if (tr.count == 0) continue;
        mbar_wait(bar_q_empty, (qn++ & 1) ^ 1);
        mbar_arrive_expect_tx(bar_q, 2 * L::kTileQ);
#pragma unroll
        for (int at = 0; at < D / 64; ++at) {
          tma_load_4d(s_q + at * (kDqBlockM * 128), &a.tm_q128, at * 64, m0, h, b, bar_q);
          tma_load_4d(s_do + at * (kDqBlockM * 128), &a.tm_do128, at * 64, m0, h, b, bar_q);
        }
        for (int j = 0; j < tr.count; ++j, ++it) {
          const int st = it % STAGES, k0 = (tr.first + j) * BN;
          mbar_wait(bar_empty(st), ((it / STAGES) & 1) ^ 1);
          mbar_arrive_expect_tx(bar_full(st), 2 * L::kTileKV);
#pragma unroll
          for (int at = 0; at < D / 64; ++at) {
            tma_load_4d(s_k + st * L::kTileKV + at * (BN * 128), &a.tm_k_dq, at * 64, k0, hk, b, bar_full(st));
            tma_load_4d(s_v + st * L::kTileKV + at * (BN * 128), &a.tm_v_dq, at * 64, k0, hk, b, bar_full(st));
          }
        }
      }
    }
    return;
  }
  setmaxnreg_inc<kConsumerRegs>();
  const int cw = wg, t = tid % 128, w = t / 32, lane = t % 32;
  const uint32_t q_wg = s_q + cw * 64 * 128, do_wg = s_do + cw * 64 * 128;
  int it = 0, qn = 0;
  for (int k = 0;; ++k) {
    const int u = order.tile(k, grid, cta);
    if (u == fa::TileOrder<kDqBlockM>::kEnd) break;
    if (u == fa::TileOrder<kDqBlockM>::kNone) continue;
    const int m0 = order.q0(u), h = order.head(u), b = order.batch(u);
    const fa::TileRange tr = mask.key_tiles(m0, kDqBlockM, BN);
    const int q_row0 = m0 + 64 * cw + 16 * w + lane / 4;
    const int64_t lrow = (static_cast<int64_t>(b) * a.H + h) * a.Sq_pad;  // m0 + 128 <= Sq_pad: in range
    float l2[2], dl[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l2[r] = a.lse2[lrow + q_row0 + 8 * r];
      dl[r] = a.delta[lrow + q_row0 + 8 * r];
    }
    const fa::KeyRange keys[2] = {mask.keys(q_row0), mask.keys(q_row0 + 8)};
    const fa::KeyRange common = mask.common_keys(m0, min(m0 + kDqBlockM, a.Sq) - 1);
    float dqacc[D / 2], s[BN / 2], dp[BN / 2];
    uint32_t ap[BN / 16][4];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) dqacc[i] = 0.f;
    if (tr.count > 0) mbar_wait(bar_q, qn++ & 1);

#pragma unroll 1
    for (int j = 0; j < tr.count; ++j) {
      const int st = (it + j) % STAGES, k0 = (tr.first + j) * BN;
      const uint32_t k_st = s_k + st * L::kTileKV, v_st = s_v + st * L::kTileKV;
      mbar_wait(bar_full(st), ((it + j) / STAGES) & 1);
      wgmma_fence();
      ss_gemm<T, D, BN>(s, q_wg, kDqBlockM * 128, k_st, BN * 128);  // S = Q K^T
      wgmma_commit();
      ss_gemm<T, D, BN>(dp, do_wg, kDqBlockM * 128, v_st, BN * 128);  // dP = dO V^T
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
      rs_gemm<T, D, BN>(dqacc, ap, k_st, BN * 128);  // dQ += dS K
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(dqacc);
      if (lane == 0) mbar_arrive(bar_empty(st));
    }
    it += tr.count;
    const int q_wg0 = m0 + 64 * cw;
    const int64_t off = static_cast<int64_t>(b) * a.qs.batch + static_cast<int64_t>(h) * a.qs.head +
                        static_cast<int64_t>(q_wg0) * a.qs.seq;
    store_rows_bounded<T, D>(dqacc, a.scale, static_cast<T*>(a.dq) + off, a.qs.seq, a.Sq - q_wg0, t);
  }
}

}  // namespace bwd
}  // namespace lab

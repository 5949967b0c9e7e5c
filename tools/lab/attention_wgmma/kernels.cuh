// Device code of the Hopper attention lab (tools/lab/attention_wgmma.cu, which documents the lab): the fp32
// reference, the pieces the fast variants share (wgmma GEMMs on the sw128 tiles, mask, online softmax, P
// fragments, epilogue) and the variant kernels v1 (cp.async) and v2/v3 (TMA, warp-specialised). sm_90a only.
#pragma once
#include <cuda.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "ops/cuda/device/sm90/attention.cuh"  // GEMMs, softmax, epilogue: shared with production (one copy)

using bf16 = __nv_bfloat16;

namespace lab {
using namespace xfr::cuda::sm90;

// =====================================================================================================================
// Reference: one warp per query row, two passes over the keys in fp32 (row max, then sum and weighted V),
// expf/logf: slow and obviously right. Lane l holds dims l, l+32, ... (coalesced loads of one k/v row).
// grid: B*H*S/8 blocks of 256 threads (8 warps = 8 consecutive rows of one (b, h), since S % 8 == 0).
// =====================================================================================================================
template <int D>
__global__ void __launch_bounds__(256) reference_attention(const bf16* __restrict__ q,  // (B, H, S, D)
                                                           const bf16* __restrict__ k,  // (B, H, S, D)
                                                           const bf16* __restrict__ v,  // (B, H, S, D)
                                                           float* __restrict__ out,     // (B, H, S, D)
                                                           float* __restrict__ lse,     // (B, H, S)
                                                           float* __restrict__ mag,     // (B, H, S, D)
                                                           int S, float scale, int causal) {
  constexpr int kPer = D / 32;
  const int lane = threadIdx.x % 32;
  const size_t row = static_cast<size_t>(blockIdx.x) * 8 + threadIdx.x / 32;  // over B*H*S
  const size_t bh = row / S;
  const int i = static_cast<int>(row % S);
  const bf16* kh = k + bh * S * D;
  const bf16* vh = v + bh * S * D;
  float qv[kPer];
#pragma unroll
  for (int t = 0; t < kPer; ++t) qv[t] = __bfloat162float(q[row * D + lane + 32 * t]);
  const int n = causal ? i + 1 : S;
  auto score = [&](int j) {
    float p = 0.f;
#pragma unroll
    for (int t = 0; t < kPer; ++t) p += qv[t] * __bfloat162float(kh[static_cast<size_t>(j) * D + lane + 32 * t]);
#pragma unroll
    for (int off = 16; off > 0; off /= 2) p += __shfl_xor_sync(0xffffffffu, p, off);
    return p * scale;
  };
  float m = -INFINITY;
  for (int j = 0; j < n; ++j) m = fmaxf(m, score(j));
  float l = 0.f, o[kPer] = {}, a[kPer] = {};
  for (int j = 0; j < n; ++j) {
    const float p = expf(score(j) - m);
    l += p;
#pragma unroll
    for (int t = 0; t < kPer; ++t) {
      const float vv = __bfloat162float(vh[static_cast<size_t>(j) * D + lane + 32 * t]);
      o[t] += p * vv;
      a[t] += p * fabsf(vv);
    }
  }
#pragma unroll
  for (int t = 0; t < kPer; ++t) {
    out[row * D + lane + 32 * t] = o[t] / l;
    mag[row * D + lane + 32 * t] = a[t] / l;  // sum_j P_j |v_j|: the scale of out's rounding error
  }
  if (lane == 0) lse[row] = m + logf(l);
}

// =====================================================================================================================
// Pieces shared by the fast variants: qk_gemm, pv_gemm, online_softmax, rescale, pack_p, store_out, align1024 and
// the tile sizes kBlockM = kBlockN = 128 come from ops/cuda/device/sm90/attention.cuh (production's Hopper forward
// runs the same code). The lab's own: the causal mask of a diagonal tile (it assumes kBlockN == kBlockM).
// =====================================================================================================================
static_assert(kBlockN == kBlockM, "causal_mask's diagonal logic");
// Causal mask on a tile that crosses the diagonal: key index > query index -> -inf.
template <int BN>
__device__ __forceinline__ void causal_mask(float (&s)[BN / 2], int q_row0, int key0) {
  // q_row0: this thread's first query row (the second is +8); key0: key index of this thread's column 0.
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) {
    const int key = key0 + 8 * (i / 4) + (i & 1);
    const int qrow = q_row0 + 8 * ((i >> 1) & 1);
    if (key > qrow) s[i] = -INFINITY;
  }
}

// =====================================================================================================================
// v1: wgmma with cp.async, no warp specialisation.
//   CTA: 256 threads = 2 consumer warpgroups, each owning 64 of the CTA's kBlockM = 128 query rows; every thread
//   also loads. Grid (S/128, H, B); causal CTAs run heaviest (last query block) first.
//   Tiles: Q 128 x D, K and V 128 x D in two stages: Q + 2 x (K + V) = 160 KB at D = 128,
//   80 KB at D = 64. Shared memory is the limit that fixes kBlockN = 128 and 2 stages at D = 128 (a third stage
//   would need 224 KB; 227 KB is the per-block maximum). Registers: S 64 + O D/2 + P 32 fp32/b32 per thread,
//   under the 255 cap of __launch_bounds__(256, 1) (one CTA per SM).
//   Pipeline per key tile j: barrier; cp.async K,V(j+1) into the other stage; wait for stage j; proxy fence;
//   barrier; S = Q K^T (D/16 wgmmas, waited); mask (diagonal tile); online softmax, O *= alpha; P -> bf16;
//   O += P V (BN/16 wgmmas, waited). The copy of j+1 overlaps the math of j; nothing overlaps the softmax.
// =====================================================================================================================
template <int R, int D, int NT>
__device__ __forceinline__ void load_tile_cp_async(uint32_t s_tile, const bf16* __restrict__ g, int tid) {
  // g: (R, D) row-major rows of one (b, h); 16-byte chunks, consecutive threads on consecutive chunks (coalesced).
  constexpr int kPerRow = D / 8;
  static_assert((R * kPerRow) % NT == 0, "tile chunks must split evenly over the threads");
#pragma unroll
  for (int it = 0; it < R * kPerRow / NT; ++it) {
    const int c = tid + it * NT, row = c / kPerRow, col8 = c % kPerRow;
    cp_async16(s_tile + (col8 / 8) * (R * 128) + sw128_chunk(row, col8 % 8), g + static_cast<size_t>(row) * D + col8 * 8);
  }
}

template <int D, bool CAUSAL>
__global__ void __launch_bounds__(256, 1) attn_v1(const bf16* __restrict__ q,  // (B, H, S, D)
                                                  const bf16* __restrict__ k,  // (B, H, S, D)
                                                  const bf16* __restrict__ v,  // (B, H, S, D)
                                                  bf16* __restrict__ out,      // (B, H, S, D)
                                                  float* __restrict__ lse,     // (B, H, S)
                                                  int H, int S, float scale_log2) {
  constexpr int BN = kBlockN, kTileQ = kBlockM * D * 2, kTileKV = BN * D * 2;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = align1024(smem_raw);
  const uint32_t s_q = smem_u32(smem), s_k = s_q + kTileQ, s_v = s_k + 2 * kTileKV;
  const int tid = threadIdx.x, cw = tid / 128, t = tid % 128, w = t / 32, lane = t % 32;
  const int m_block = CAUSAL ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const size_t bh = static_cast<size_t>(blockIdx.z) * H + blockIdx.y;
  const bf16* kg = k + bh * S * D;
  const bf16* vg = v + bh * S * D;
  const int n_blocks = CAUSAL ? m_block + 1 : S / BN;

  load_tile_cp_async<kBlockM, D, 256>(s_q, q + (bh * S + static_cast<size_t>(m_block) * kBlockM) * D, tid);
  load_tile_cp_async<BN, D, 256>(s_k, kg, tid);
  load_tile_cp_async<BN, D, 256>(s_v, vg, tid);
  cp_async_commit();

  float o[D / 2], s[BN / 2], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, alpha[2];
  uint32_t a[BN / 16][4];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  const uint32_t q_wg = s_q + cw * 64 * 128;
  const int q_row0 = m_block * kBlockM + 64 * cw + 16 * w + lane / 4;

  for (int j = 0; j < n_blocks; ++j) {
    const int st = j & 1;
    __syncthreads();  // every warpgroup is done with stage st^1 (its wgmmas of tile j-1 were waited)
    if (j + 1 < n_blocks) {
      load_tile_cp_async<BN, D, 256>(s_k + (st ^ 1) * kTileKV, kg + static_cast<size_t>(j + 1) * BN * D, tid);
      load_tile_cp_async<BN, D, 256>(s_v + (st ^ 1) * kTileKV, vg + static_cast<size_t>(j + 1) * BN * D, tid);
    }
    cp_async_commit();  // possibly empty: keeps "all but the newest group" = stage st
    cp_async_wait<1>();
    fence_proxy_async();  // this thread's cp.async writes -> visible to wgmma (async proxy) ...
    __syncthreads();      // ... and everyone's

    wgmma_fence();
    qk_gemm<bf16, D, BN>(s, q_wg, s_k + st * kTileKV);
    wgmma_commit();
    wgmma_wait<0>();
    reg_fence(s);
    if (CAUSAL && j == n_blocks - 1) causal_mask<BN>(s, q_row0, j * BN + 2 * (lane % 4));
    online_softmax<BN>(s, m, l, scale_log2, alpha);
    rescale<D>(o, alpha);
    pack_p<bf16, BN>(s, a);

    wgmma_fence();
    pv_gemm<bf16, D, BN>(o, a, s_v + st * kTileKV);
    wgmma_commit();
    wgmma_wait<0>();
    reg_fence(o);
  }
  const size_t row0 = bh * S + static_cast<size_t>(m_block) * kBlockM;
  store_out<bf16, D>(o, m, l, scale_log2, smem, cw, t, out + row0 * D, D, kBlockM, lse + row0);
}

template <int D>
constexpr int v1_smem_bytes() {
  return kBlockM * D * 2 + 4 * kBlockN * D * 2 + 1024;  // Q + 2 stages x (K + V) + alignment slack
}

// =====================================================================================================================
// v2 / v3: warp-specialised, TMA, mbarrier K/V ring (FlashAttention-3's hopper/ design, written from its
// published description).
//   CTA: 384 threads = warpgroup 0 (producer: one thread issues every TMA; setmaxnreg.dec to 24 registers) +
//   warpgroups 1, 2 (consumers, 64 query rows each; setmaxnreg.inc to 240). __launch_bounds__(384, 1) caps the
//   entry allocation at 168 registers a thread (65536 / 384, rounded down to 8); 128 x 24 + 256 x 240 = 64512 =
//   384 x 168, so the consumers' 240 is exactly what the producer gives back.
//   Tiles: as v1 (Q 128 x D, K/V 128 x D, STAGES = 2: 160 KB at D = 128, shared memory again the limit) plus
//   2 + 3 x STAGES mbarriers. K and V tiles are loaded as D/64 boxes of 64 columns x 128 rows through 2-D tensor
//   maps over the (B*H*S, D) row-major view with CU_TENSOR_MAP_SWIZZLE_128B, which lands in the sw128 layout.
//   Barriers: q_full (TMA tx), k_full[s] and v_full[s] (producer's arrive.expect_tx + TMA tx: V has its own so
//   that S = Q K^T need not wait for V), empty[s] (8 arrivals: lane 0 of each consumer warp once its wgmmas on
//   stage s are complete). Phase parity of use u = j / STAGES of stage s: consumers wait full with parity u & 1;
//   the producer waits empty with parity (u & 1) ^ 1, which passes at once for u = 0 (a fresh barrier counts
//   its "previous" phase, parity 1, as complete).
//   v2 consumer per tile j: wait K(j); S = Q K^T (waited); mask; softmax; O *= alpha; P -> bf16; wait V(j);
//     O += P V (waited); release stage. Overlap: TMA runs ahead by a stage, and the two consumer warpgroups
//     interleave on the SM's tensor cores and ALUs (one's softmax under the other's GEMM), unsynchronised.
//   v3 consumer (OVERLAP): S(0) and its softmax first; then per tile j >= 1: issue S(j) = Q K(j)^T and
//     O += P(j-1) V(j-1) back to back; wait<1> (S(j) done, PV still running); mask, softmax of S(j) (O is not
//     touched: alpha kept); wait<0>; release stage j-1; O *= alpha; P(j) -> bf16. Tail: O += P V of the last
//     tile. Registers: S 64 + O D/2 + P 32 live together (~160 at D = 128) within the 240 budget.
//     v3 at D = 128 used to spill (120-144 B) with every wgmma serialised (C7512): the __trap() of the old
//     hang-detecting mbar_wait made ptxas allocate the kernel under the entry's 168 registers. With the trap-free
//     wait (ptx.cuh) it compiles clean; on the H200 (run 13) it runs 515 TFLOP/s against v2's 626 at S = 8192.
// =====================================================================================================================
// The register split (kProducerRegs, kConsumerRegs) and kWsThreads: ops/cuda/device/sm90/attention.cuh.

template <int D, int STAGES>
struct WsLayout {  // byte offsets from the 1024-aligned base
  static constexpr int kTileQ = kBlockM * D * 2, kTileKV = kBlockN * D * 2;
  static constexpr int kQ = 0, kK = kTileQ, kV = kK + STAGES * kTileKV, kBar = kV + STAGES * kTileKV;
  static constexpr int kBars = 1 + 3 * STAGES;  // q_full, k_full[S], v_full[S], empty[S]
  static constexpr int kBytes = kBar + kBars * 8 + 1024;  // + alignment slack
};

template <int D, bool CAUSAL, bool OVERLAP, int STAGES>
__global__ void __launch_bounds__(384, 1) attn_ws(const __grid_constant__ CUtensorMap tm_q,  // (B*H*S, D) bf16
                                                  const __grid_constant__ CUtensorMap tm_k,  // (B*H*S, D) bf16
                                                  const __grid_constant__ CUtensorMap tm_v,  // (B*H*S, D) bf16
                                                  bf16* __restrict__ out,                    // (B, H, S, D)
                                                  float* __restrict__ lse,                   // (B, H, S)
                                                  int H, int S, float scale_log2) {
  using L = WsLayout<D, STAGES>;
  constexpr int BN = kBlockN;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = align1024(smem_raw);
  const uint32_t base = smem_u32(smem);
  const uint32_t s_q = base + L::kQ, s_k = base + L::kK, s_v = base + L::kV;
  const uint32_t bar_q = base + L::kBar;
  auto bar_kfull = [&](int st) { return bar_q + 8 * (1 + st); };
  auto bar_vfull = [&](int st) { return bar_q + 8 * (1 + STAGES + st); };
  auto bar_empty = [&](int st) { return bar_q + 8 * (1 + 2 * STAGES + st); };

  const int tid = threadIdx.x, wg = tid / 128;
  const int m_block = CAUSAL ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const size_t bh = static_cast<size_t>(blockIdx.z) * H + blockIdx.y;
  const int n_blocks = CAUSAL ? m_block + 1 : S / BN;

  if (tid == 0) {
    tma_prefetch_map(&tm_q);
    tma_prefetch_map(&tm_k);
    tma_prefetch_map(&tm_v);
    mbar_init(bar_q, 1);
    for (int st = 0; st < STAGES; ++st) {
      mbar_init(bar_kfull(st), 1);  // the producer's arrive.expect_tx; the bytes complete it
      mbar_init(bar_vfull(st), 1);
      mbar_init(bar_empty(st), 8);  // lane 0 of each of the 8 consumer warps
    }
    mbar_init_fence();
  }
  __syncthreads();  // the last CTA-wide barrier: the roles split below

  if (wg == 0) {
    // ---------------- producer warpgroup ----------------
    setmaxnreg_dec<kProducerRegs>();
    if (tid == 0) {
      const int row_q = static_cast<int>(bh * S) + m_block * kBlockM, row_kv = static_cast<int>(bh * S);
      mbar_arrive_expect_tx(bar_q, L::kTileQ);
#pragma unroll
      for (int at = 0; at < D / 64; ++at) tma_load_2d(s_q + at * (kBlockM * 128), &tm_q, at * 64, row_q, bar_q);
      for (int j = 0; j < n_blocks; ++j) {
        const int st = j % STAGES;
        const uint32_t use_parity = (j / STAGES) & 1;
        mbar_wait(bar_empty(st), use_parity ^ 1);
        mbar_arrive_expect_tx(bar_kfull(st), L::kTileKV);
#pragma unroll
        for (int at = 0; at < D / 64; ++at)
          tma_load_2d(s_k + st * L::kTileKV + at * (BN * 128), &tm_k, at * 64, row_kv + j * BN, bar_kfull(st));
        mbar_arrive_expect_tx(bar_vfull(st), L::kTileKV);
#pragma unroll
        for (int at = 0; at < D / 64; ++at)
          tma_load_2d(s_v + st * L::kTileKV + at * (BN * 128), &tm_v, at * 64, row_kv + j * BN, bar_vfull(st));
      }
    }
  } else {
    // ---------------- consumer warpgroups ----------------
    setmaxnreg_inc<kConsumerRegs>();
    const int cw = wg - 1, t = tid % 128, w = t / 32, lane = t % 32;
    const uint32_t q_wg = s_q + cw * 64 * 128;
    const int q_row0 = m_block * kBlockM + 64 * cw + 16 * w + lane / 4;
    float o[D / 2], s[BN / 2], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, alpha[2];
    uint32_t a[BN / 16][4];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    auto release = [&](int st) {
      if (lane == 0) mbar_arrive(bar_empty(st));
    };
    mbar_wait(bar_q, 0);

    if constexpr (!OVERLAP) {
      for (int j = 0; j < n_blocks; ++j) {
        const int st = j % STAGES;
        const uint32_t ph = (j / STAGES) & 1;
        mbar_wait(bar_kfull(st), ph);
        wgmma_fence();
        qk_gemm<bf16, D, BN>(s, q_wg, s_k + st * L::kTileKV);
        wgmma_commit();
        wgmma_wait<0>();
        reg_fence(s);
        if (CAUSAL && j == n_blocks - 1) causal_mask<BN>(s, q_row0, j * BN + 2 * (lane % 4));
        online_softmax<BN>(s, m, l, scale_log2, alpha);
        rescale<D>(o, alpha);
        pack_p<bf16, BN>(s, a);
        mbar_wait(bar_vfull(st), ph);
        wgmma_fence();
        pv_gemm<bf16, D, BN>(o, a, s_v + st * L::kTileKV);
        wgmma_commit();
        wgmma_wait<0>();
        reg_fence(o);
        release(st);
      }
    } else {
      // tile 0: S(0), its softmax (O is zero: no rescale needed, alpha = 0 anyway)
      mbar_wait(bar_kfull(0), 0);
      wgmma_fence();
      qk_gemm<bf16, D, BN>(s, q_wg, s_k);
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(s);
      if (CAUSAL && n_blocks == 1) causal_mask<BN>(s, q_row0, 2 * (lane % 4));
      online_softmax<BN>(s, m, l, scale_log2, alpha);
      pack_p<bf16, BN>(s, a);
      for (int j = 1; j < n_blocks; ++j) {
        const int st = j % STAGES, pst = (j - 1) % STAGES;
        mbar_wait(bar_kfull(st), (j / STAGES) & 1);
        mbar_wait(bar_vfull(pst), ((j - 1) / STAGES) & 1);
        wgmma_fence();
        qk_gemm<bf16, D, BN>(s, q_wg, s_k + st * L::kTileKV);  // group 1: S(j)
        wgmma_commit();
        pv_gemm<bf16, D, BN>(o, a, s_v + pst * L::kTileKV);  // group 2: O += P(j-1) V(j-1)
        wgmma_commit();
        wgmma_wait<1>();  // S(j) complete; the PV may still run
        reg_fence(s);
        if (CAUSAL && j == n_blocks - 1) causal_mask<BN>(s, q_row0, j * BN + 2 * (lane % 4));
        online_softmax<BN>(s, m, l, scale_log2, alpha);
        wgmma_wait<0>();  // PV done: O and the P registers are free
        reg_fence(o);
        release(pst);
        rescale<D>(o, alpha);
        pack_p<bf16, BN>(s, a);
      }
      const int lst = (n_blocks - 1) % STAGES;
      mbar_wait(bar_vfull(lst), ((n_blocks - 1) / STAGES) & 1);
      wgmma_fence();
      pv_gemm<bf16, D, BN>(o, a, s_v + lst * L::kTileKV);
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(o);
      release(lst);
    }
    const size_t row0 = bh * S + static_cast<size_t>(m_block) * kBlockM;
    store_out<bf16, D>(o, m, l, scale_log2, smem + L::kQ, cw, t, out + row0 * D, D, kBlockM, lse + row0);
  }
}

// Inputs: N(0,1) bf16 from a counter-based hash (splitmix64) + Box-Muller, so a case's data depend only on
// (seed, index) and are made on the device in milliseconds.
__global__ void fill_randn(bf16* __restrict__ x, size_t n, uint64_t seed, float scale) {  // x: (n)
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;  // splitmix64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u1 = (static_cast<float>(z >> 40) + 0.5f) * (1.f / 16777216.f);  // 24 bits each, in (0, 1)
    const float u2 = (static_cast<float>(z & 0xFFFFFF) + 0.5f) * (1.f / 16777216.f);
    x[i] = __float2bfloat16(scale * sqrtf(-2.f * logf(u1)) * cospif(2.f * u2));
  }
}

}  // namespace lab

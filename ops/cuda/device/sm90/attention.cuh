// The pieces of FlashAttention on Hopper's wgmma that production's kernels (ops/cuda/flash_attention_sm90.cu, the
// forward; sm90/attention_backward.cuh, the backward) and the kernel labs (tools/lab/attention_wgmma*) share: the
// GEMMs on 128-byte-swizzled shared-memory tiles (both operands in shared memory, or A from registers), the tile
// mask, the online softmax on an accumulator fragment, P to wgmma A fragments, and the epilogues (O / l staged
// through shared memory with 16-byte coalesced stores and lse; a fragment stored straight to global rows).
// T = __nv_bfloat16 or __half; fp32 accumulation. sm_90a device code only (callers guard with XF_SM90A_DEVICE).
//
// Fragments: a consumer warpgroup (128 threads) owns 64 query rows of the CTA's kBlockM; thread t of it
// (warp w = t/32, lane) holds, in every m64nN accumulator fragment, rows 16w + lane/4 (+8) and columns
// 8*(i/4) + 2*(lane%4) + i%2 for register i (PTX ISA "wgmma .m64nNk16 register fragment D").
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "ops/cuda/device/sm90/ptx.cuh"
#include "ops/cuda/device/sm90/wgmma.cuh"
#include "ops/cuda/flash_attention_mask.h"  // Mask, KeyRange

namespace xfr::cuda::sm90 {

constexpr int kBlockN = 128;  // keys per K/V tile: S's accumulator is 64 fp32 registers a thread (kBlockN / 2)
// The warp-specialised CTA (FlashAttention-3's shape): one producer warpgroup (one thread issues the TMA loads) and
// kConsumers consumer warpgroups of 64 query rows (wgmma's M) each. __launch_bounds__(kThreads, 1) gives
// 65536 / kThreads registers a thread at entry (rounded down to 8); setmaxnreg moves them: what the producer gives
// back is what the consumers take. Each of the SM's 4 register-file sub-partitions (16K registers; a warp lives on
// one, a warpgroup's 4 warps on all 4) holds one producer warp and kConsumers consumer warps:
//   2 consumers: 384 threads, 168 at entry, producer 24, consumers 240: 24 x 32 + 2 x 240 x 32 = 16,128;
//   3 consumers: 512 threads, 128 at entry, producer 32, consumers 160: 32 x 32 + 3 x 160 x 32 = 16,384 (the
//   shape of FlashAttention-3's head dim 64; 160 registers hold O, S and P of D = 64 but not of D = 128).
template <int kConsumers>
struct WsShape {
  static_assert(kConsumers == 2 || kConsumers == 3, "two or three consumer warpgroups");
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kBlockM = 64 * kConsumers;  // query rows per CTA
  static constexpr int kProducerRegs = kConsumers == 2 ? 24 : 32;
  static constexpr int kConsumerRegs = kConsumers == 2 ? 240 : 160;
  static_assert(128 * kProducerRegs + 128 * kConsumers * kConsumerRegs <= kThreads * ((65536 / kThreads) & ~7),
                "the setmaxnreg split must fit the entry allocation");
  static_assert(32 * kProducerRegs + 32 * kConsumers * kConsumerRegs <= 16384, "a sub-partition's register file");
};
// The two-consumer shape, which the backward kernels and the labs run.
constexpr int kBlockM = WsShape<2>::kBlockM;
constexpr int kWsThreads = WsShape<2>::kThreads, kProducerRegs = WsShape<2>::kProducerRegs,
              kConsumerRegs = WsShape<2>::kConsumerRegs;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// The dynamic shared-memory base rounded up to a 1024-byte boundary of the shared address (what the swizzle
// sees); kernels request 1024 bytes of slack for it.
__device__ __forceinline__ uint8_t* align1024(uint8_t* p) {
  const uint32_t a = smem_u32(p);
  return p + (((a + 1023u) & ~1023u) - a);
}

// acc (64 x N, fp32) = A (64 x D) B (N x D)^T, both operands K-major 128-byte-swizzled tiles in shared memory
// (one wgmma_ss per 16 of D). a_rows: the warpgroup's first row of A in the A tile's atom 0; b_tile: row 0 of B's
// tile. An R-row tile's 64-column atoms are R * 128 bytes apart (a_atom, b_atom): a 64-row offset (8 KB) keeps
// the 1024-byte swizzle phase.
template <class T, int D, int N>
__device__ __forceinline__ void ss_gemm(float (&acc)[N / 2], uint32_t a_rows, uint32_t a_atom, uint32_t b_tile,
                                        uint32_t b_atom) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {  // 16 = wgmma's K for 16-bit types; 4 steps of 32 B per 64-column atom
    const uint32_t koff = (kk % 4) * 32;  // 16 elements = 32 B along the swizzled row
    const uint64_t da = sw128_desc(a_rows + (kk / 4) * a_atom + koff, 16, 1024);
    const uint64_t db = sw128_desc(b_tile + (kk / 4) * b_atom + koff, 16, 1024);
    wgmma_ss<N, T>(acc, da, db, kk > 0 ? 1 : 0);
  }
}

// ss_gemm from the operands' descriptors at k = 0 (sw128_desc(a_rows, 16, 1024), sw128_desc(b_tile, 16, 1024)): a
// k step adds its byte offset / 16 to the descriptor's start-address field (14 bits of address / 16; shared
// addresses stay under 2^18, so it never carries out). For a loop whose operands stay put or cycle through stages
// (the forward's Q, K and V; the persistent backward's K and V): the caller builds the descriptor once, and the loop
// does one add per step.
template <class T, int D, int N>
__device__ __forceinline__ void ss_gemm_desc(float (&acc)[N / 2], uint64_t a_desc, uint32_t a_atom, uint64_t b_desc,
                                             uint32_t b_atom) {
  // The add touches the low word only (no carry out of the address field), so it stays a 32-bit add.
  const uint32_t a_lo = static_cast<uint32_t>(a_desc), b_lo = static_cast<uint32_t>(b_desc);
  const uint64_t a_hi = a_desc & ~0xFFFFFFFFull, b_hi = b_desc & ~0xFFFFFFFFull;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t koff = (kk % 4) * 32;
    wgmma_ss<N, T>(acc, a_hi | (a_lo + (((kk / 4) * a_atom + koff) >> 4)),
                   b_hi | (b_lo + (((kk / 4) * b_atom + koff) >> 4)), kk > 0 ? 1 : 0);
  }
}

// sw128_desc(saddr, lbo, 1024) as its two words: the low one (start address / 16, LBO / 16) varies with the tile, the
// high one (SBO = 1024, the 128-byte swizzle) is this constant. A kernel keeps a tile's low word in a register and
// adds offsets to it (ss_gemm_desc, rs_gemm_desc), rather than have ptxas rebuild the descriptor from the address
// for every k step of every tile.
constexpr uint32_t kSw128DescHi = (1024 >> 4) | (1u << 30);
__device__ __forceinline__ uint32_t sw128_desc_lo(uint32_t saddr, uint32_t lbo_bytes) {
  return static_cast<uint32_t>(sw128_desc(saddr, lbo_bytes, 1024));
}
__device__ __forceinline__ uint64_t sw128_desc_of(uint32_t lo) {
  return static_cast<uint64_t>(kSw128DescHi) << 32 | lo;
}
// What to add to a K-row tile's low word built as an ss operand's (LBO 16 bytes) to make it rs_gemm_desc's B (LBO =
// K * 128 bytes, the step between its 64-column atoms): the LBO field's difference (bits 16-29, bytes / 16).
__host__ __device__ constexpr uint32_t rs_lbo_from_ss(int K) {
  return static_cast<uint32_t>((K * 128 >> 4) - 1) << 16;
}

// acc (64 x D, fp32) += A (64 x K, T register fragments, one per 16 of K) B (K x D). B is [k][d] in shared memory,
// d contiguous: MN-major (imm-trans-b = 1), LBO = b_atom = the step between 64-column atoms of d (a K-row tile:
// K * 128 bytes), SBO = 1024 = 8 rows of k; 16 more k = +2048 B.
template <class T, int D, int K>
__device__ __forceinline__ void rs_gemm(float (&acc)[D / 2], const uint32_t (&a)[K / 16][4], uint32_t b_tile,
                                        uint32_t b_atom) {
#pragma unroll
  for (int j = 0; j < K / 16; ++j) wgmma_rs<D, T>(acc, a[j], sw128_desc(b_tile + j * 16 * 128, b_atom, 1024), 1);
}

// rs_gemm from B's descriptor (sw128_desc(b_tile, K * 128, 1024)): 16 more k add 2048 B to its start address. D = 256
// runs as two m64n128 halves a k step (columns 0-127, then 128-255: two 64-column atoms of K * 128 bytes further), whose
// accumulators side by side are the m64n256 fragment (see qk_gemm_desc). accumulate 0: acc = A B (its old values, which
// need not be finite, are not read), 1: acc += A B.
template <class T, int D, int K>
__device__ __forceinline__ void rs_gemm_desc(float (&acc)[D / 2], const uint32_t (&a)[K / 16][4], uint64_t b_desc,
                                             int accumulate = 1) {
  const uint32_t b_lo = static_cast<uint32_t>(b_desc);
  const uint64_t b_hi = b_desc & ~0xFFFFFFFFull;
  if constexpr (D <= 128) {
#pragma unroll
    for (int j = 0; j < K / 16; ++j)
      wgmma_rs<D, T>(acc, a[j], b_hi | (b_lo + ((j * 16 * 128) >> 4)), j == 0 ? accumulate : 1);
  } else {
    static_assert(D == 256, "two halves of 128 columns");
    constexpr uint32_t kHalf = (2 * K * 128) >> 4;  // two atoms of K rows
#pragma unroll
    for (int j = 0; j < K / 16; ++j) {
      wgmma_rs<128, T>(&acc[0], a[j], b_hi | (b_lo + ((j * 16 * 128) >> 4)), j == 0 ? accumulate : 1);
      wgmma_rs<128, T>(&acc[64], a[j], b_hi | (b_lo + kHalf + ((j * 16 * 128) >> 4)), j == 0 ? accumulate : 1);
    }
  }
}

// The forward's two GEMMs. S (64 x BN) = Q_wg (64 x D) K_tile (BN x D)^T: q_wg is this warpgroup's first Q row in a
// BM-row Q tile. O (64 x D) += P (64 x BN, registers) V_tile (BN x D).
template <class T, int D, int BN, int BM = kBlockM>
__device__ __forceinline__ void qk_gemm(float (&s)[BN / 2], uint32_t q_wg, uint32_t k_tile) {
  ss_gemm<T, D, BN>(s, q_wg, BM * 128, k_tile, BN * 128);
}
// S of a 256-key tile from descriptors (ss_gemm_desc: q_desc = sw128_desc(q_wg, 16, 1024), k_desc = sw128_desc(k_tile,
// 16, 1024)) as two m64n128 halves: keys 0-127, then 128-255, 16 KB further in each 64-column atom. The m64nN
// fragment's register i holds column 8 (i / 4) + 2 (lane % 4) + (i & 1), so the halves' accumulators side by side are
// exactly the m64n256 fragment. With `first_only` (a tile whose keys 128-255 no query of the block sees: the causal
// diagonal's tile of every other 128-query tile) the first half only: the second half's 64 accumulators keep what they
// held (stale, possibly not finite) and must not be read, so the caller's softmax runs on the first half alone
// (softmax_tile with BN = 128) and O += P V on the first 128 keys (rs_gemm_desc with K = 128). `first_only` must be
// uniform in ptxas's eyes (a warp vote), or it serialises the wgmmas.
template <class T, int D, int BM>
__device__ __forceinline__ void qk_gemm_desc_halves(float (&s)[128], uint64_t q_desc, uint64_t k_desc,
                                                    bool first_only) {
  ss_gemm_desc<T, D, 128>(*reinterpret_cast<float(*)[64]>(&s[0]), q_desc, BM * 128, k_desc, 256 * 128);
  if (!first_only)
    ss_gemm_desc<T, D, 128>(*reinterpret_cast<float(*)[64]>(&s[64]), q_desc, BM * 128, k_desc + ((128 * 128) >> 4),
                            256 * 128);
}
// qk_gemm from descriptors (as qk_gemm_desc_halves); BN = 256 runs both halves.
template <class T, int D, int BN, int BM>
__device__ __forceinline__ void qk_gemm_desc(float (&s)[BN / 2], uint64_t q_desc, uint64_t k_desc) {
  if constexpr (BN <= 128) {
    ss_gemm_desc<T, D, BN>(s, q_desc, BM * 128, k_desc, BN * 128);
  } else {
    static_assert(BN == 256, "two halves of 128 keys");
    qk_gemm_desc_halves<T, D, BM>(s, q_desc, k_desc, false);
  }
}
template <class T, int D, int BN>
__device__ __forceinline__ void pv_gemm(float (&o)[D / 2], const uint32_t (&a)[BN / 16][4], uint32_t v_tile) {
  rs_gemm<T, D, BN>(o, a, v_tile, BN * 128);
}

// Hidden (query, key) -> -inf on an S tile of BN keys (before the exponential): keys[h] = the keys the thread's row
// h (0, 1) sees (Mask::keys), key0 = the key of its column 0 (the tile's first key + 2 (lane % 4)).
template <bool kLower, int BN>
__device__ __forceinline__ void mask_tile(float (&s)[BN / 2], const fa::Mask<kLower>& mask,
                                          const fa::KeyRange (&keys)[2], int key0) {
#pragma unroll
  for (int i = 0; i < BN / 2; ++i)
    if (mask.hides(keys[(i >> 1) & 1], key0 + 8 * (i / 4) + (i & 1))) s[i] = -INFINITY;
}

// A row max m (raw scores) in the exponent's units, m scale_log2, with 0 for a row that has seen nothing (m = -inf), so
// that 2^(x scale_log2 - this) never computes -inf - -inf: the softmax, the epilogue's lse and the split tail's combine.
__device__ __forceinline__ float max_log2(float m, float scale_log2) { return m == -INFINITY ? 0.f : m * scale_log2; }

// Online softmax on one S tile, in place: s becomes P = 2^(s*scale_log2 - m_new*scale_log2); m (raw-score row
// max), l (this thread's partial row sum: the quad's four partials are added only in the epilogue, valid because
// the max, hence every rescale, is quad-uniform) updated; alpha = the factor O must be scaled by. Hidden scores
// are -inf: P 0. Row h (0, 1) of the thread = its rows lane/4 + 8h; the quad shares a row: max by 2 xor-shuffles.
// Register i holds row (i >> 1) & 1: a row's BN/4 scores are i = 4q + 2h + e (q < BN/8, e = 0, 1).
// kChains: the row max and sum as 1 or 4 independent chains per row (joined by a tree). ptxas keeps a plain loop as
// one chain of BN/4 dependent FMNMX (it does not reassociate), and the exponentials wait for it. Four chains ran the
// D = 64 forward +0% to +5% on the H200 (run 29, against runs 26 and 28; ncu had "wait" stalls at 30% of the samples)
// but -2% to -3% at D = 128 with S <= 1024, so the forward uses 4 at D = 64 and 1 at D = 128. fmaxf is exact: the
// chains change no max. They change the order of the row sum's additions (two chains), within fp32 rounding.
template <int BN, int kChains = 1>
__device__ __forceinline__ void online_softmax(float (&s)[BN / 2], float (&m)[2], float (&l)[2], float scale_log2,
                                               float (&alpha)[2]) {
  static_assert(kChains == 1 || kChains == 4, "one chain per row, or four (q % 2, e)");
  static_assert(BN % 16 == 0, "an even count of query quads per chain");
  float mx[2];
  if constexpr (kChains == 1) {
    mx[0] = m[0], mx[1] = m[1];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], s[i]);
  } else {
    float c[2][4];  // chain 2 (q % 2) + e of row h, started at its first score (q = 0 or 1)
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int k = 0; k < 4; ++k) c[h][k] = s[4 * (k / 2) + 2 * h + k % 2];
#pragma unroll
    for (int q = 2; q < BN / 8; ++q)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 2; ++e) c[h][2 * (q % 2) + e] = fmaxf(c[h][2 * (q % 2) + e], s[4 * q + 2 * h + e]);
#pragma unroll
    for (int h = 0; h < 2; ++h) mx[h] = fmaxf(fmaxf(fmaxf(c[h][0], c[h][1]), fmaxf(c[h][2], c[h][3])), m[h]);
  }
  float ms[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
    ms[h] = max_log2(mx[h], scale_log2);
    alpha[h] = ex2(m[h] * scale_log2 - ms[h]);               // m = -inf (first tile) -> 0
    m[h] = mx[h];
  }
  if constexpr (kChains == 1) {
    float sum[2] = {0.f, 0.f};
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) {
      s[i] = ex2(fmaf(s[i], scale_log2, -ms[(i >> 1) & 1]));
      sum[(i >> 1) & 1] += s[i];
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) l[h] = l[h] * alpha[h] + sum[h];
  } else {
    float sum[2][2];  // chain e = i & 1 of row h (the sum runs under the exponentials: two chains suffice)
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) {
      s[i] = ex2(fmaf(s[i], scale_log2, -ms[(i >> 1) & 1]));
      float& acc = sum[(i >> 1) & 1][i & 1];
      acc = i < 4 ? s[i] : acc + s[i];  // i < 4: each chain's first score
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) l[h] = l[h] * alpha[h] + (sum[h][0] + sum[h][1]);
  }
}

template <int D>
__device__ __forceinline__ void rescale(float (&o)[D / 2], const float (&alpha)[2]) {
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] *= alpha[(i >> 1) & 1];
}

// P (fp32 accumulator fragment) -> T A fragments of the next wgmma, one per 16 keys. The m64nNk16 A register
// fragment of a 64 x 16 slice is laid out like the accumulator of a 64 x 16 tile (the same as mma.sync
// m16n8k16's A per warp): a[j][0] = (row, k 2q..2q+1), a[j][1] = (row+8, same k), a[j][2] = (row, k+8),
// a[j][3] = (row+8, k+8), k relative to key 16j: exactly accumulator registers 8j .. 8j+7 in order.
template <class T, int BN>
__device__ __forceinline__ void pack_p(const float (&s)[BN / 2], uint32_t (&a)[BN / 16][4]) {
#pragma unroll
  for (int j = 0; j < BN / 16; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) a[j][r] = pack2<T>(s[8 * j + 2 * r], s[8 * j + 2 * r + 1]);
}

// A warp's 16 rows of 16-bit A fragments (pack_p's layout: f[j][r] = rows row0 + lane / 4 + 8 (r & 1), columns
// 16 j + 8 (r >> 1) + 2 (lane % 4), + 1) into a shared tile of 128-byte-swizzled rows (a [row][column] sw128 tile, row
// stride 128 bytes, 64-column atoms atom_bytes apart: the layout TMA writes, and a wgmma K-major A when the columns are
// the GEMM's K, or an MN-major one when they are its M), at rows row0 .. row0 + 15 (row0 % 8 == 0) and columns from
// 16-byte chunk chunk0 (8 columns a chunk; even). One stmatrix per j: its four 8 x 8 matrices are f[j][0..3] (rows
// +0 / +8, columns +0 / +8), lane l addressing row l % 8 of matrix l / 8: row row0 + 8 ((l / 8) & 1) + l % 8, chunk
// c + l / 16 of atom c / 8 (c = chunk0 + 2 j, even: both chunks in one atom), stored at chunk (c % 8 + l / 16) ^
// (row % 8) = (c % 8 + l / 16) ^ (l % 8) of the row.
template <int N>
__device__ __forceinline__ void store_frag_sw128(const uint32_t (&f)[N / 16][4], uint32_t tile, uint32_t atom_bytes,
                                                 int row0, int chunk0, int lane) {
  const int row = row0 + 8 * ((lane / 8) & 1) + lane % 8;
  const uint32_t addr = tile + static_cast<uint32_t>(row * 128), hi = static_cast<uint32_t>(lane / 16),
                 phase = static_cast<uint32_t>(lane % 8);
#pragma unroll
  for (int j = 0; j < N / 16; ++j) {
    const int c = chunk0 + 2 * j;
    stmatrix_x4(addr + (c / 8) * atom_bytes + ((((c % 8) + hi) ^ phase) << 4), f[j][0], f[j][1], f[j][2], f[j][3]);
  }
}

// The forward's softmax step on one S tile of BN keys from key k0 (in s): hidden (query, key) -> -inf unless every row
// of the CTA's tile sees the whole key tile (common = Mask::common_keys of its rows; keys = the thread's rows' keys,
// mask_tile), the online softmax (m, l, alpha; chains: online_softmax's kChains), O *= alpha, and P -> the 16-bit A
// fragments of O += P V. lane: the thread's lane.
template <class T, int D, int BN, int kChains, bool kLower>
__device__ __forceinline__ void softmax_tile(float (&s)[BN / 2], float (&o)[D / 2], float (&m)[2], float (&l)[2],
                                             float (&alpha)[2], uint32_t (&p)[BN / 16][4],
                                             const fa::Mask<kLower>& mask, const fa::KeyRange (&keys)[2],
                                             const fa::KeyRange& common, int k0, int lane, float scale_log2) {
  if (!mask.covers(common, k0, k0 + BN)) mask_tile<kLower, BN>(s, mask, keys, k0 + 2 * (lane % 4));
  online_softmax<BN, kChains>(s, m, l, scale_log2, alpha);
  rescale<D>(o, alpha);
  pack_p<T, BN>(s, p);
}

// The epilogue's row statistics: the quad's partial sums of l added, inv = 1 / l (0 for a row that saw nothing), and
// lse = (m scale_log2 + log2 l) ln 2 (-inf for such a row) written for the thread's rows (64 cw + 16 w + lane / 4,
// + 8: rows[]) below rows_valid, by lane % 4 == 0.
__device__ __forceinline__ void finish_rows(const float (&m)[2], float (&l)[2], float scale_log2, int cw, int t,
                                            int rows_valid, float* __restrict__ lse_blk, float (&inv)[2],
                                            int (&rows)[2]) {
  const int w = static_cast<unsigned>(t) / 32, lane = static_cast<unsigned>(t) % 32;  // t >= 0: shifts, not divisions
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    inv[h] = l[h] > 0.f ? 1.f / l[h] : 0.f;
    rows[h] = 64 * cw + 16 * w + lane / 4 + 8 * h;
    const float ms = max_log2(m[h], scale_log2);
    if (lane % 4 == 0 && rows[h] < rows_valid) lse_blk[rows[h]] = l[h] > 0.f ? (ms + log2f(l[h])) * kLn2 : -INFINITY;
  }
}

// Epilogue of one consumer warpgroup (cw = 0, 1, ...; t = its thread): O / l to T, staged through the warpgroup's own
// 64 rows of a BM x D sw128 tile at q_smem (conflict-free 4-byte writes, 16-byte reads) so that global stores are
// 16-byte and coalesced. A row with nothing visible (l = 0) gets out 0 and lse -inf; else lse = (m*scale_log2 +
// log2 l) ln 2. Only the first rows_valid rows of the CTA's BM are written. The caller guarantees that nothing
// else reads or writes the warpgroup's rows of the tile meanwhile (e.g. wgmmas reading Q from it are complete).
// out_blk: the CTA's first output row, rows ld elements apart, 16-byte aligned (ld % 8 == 0);
// lse_blk: the CTA's first lse row (contiguous).
template <class T, int D, int BM = kBlockM>
__device__ __forceinline__ void store_out(const float (&o)[D / 2], const float (&m)[2], float (&l)[2],
                                          float scale_log2, uint8_t* q_smem, int cw, int t, T* __restrict__ out_blk,
                                          int64_t ld, int rows_valid, float* __restrict__ lse_blk) {
  const uint32_t lane = static_cast<unsigned>(t) % 32;
  float inv[2];
  int rows[2];
  finish_rows(m, l, scale_log2, cw, t, rows_valid, lse_blk, inv, rows);
  // The staging writes: register i holds column 8 (i / 4) + 2 (lane % 4) of row rows[h], h = (i >> 1) & 1, i.e. atom
  // q / 8 and 16-byte chunk q % 8 (q = i / 4: compile-time), byte 4 (lane % 4) of the chunk. sw128_chunk XORs the chunk
  // with row % 8 = lane / 4 for both rows (64 cw + 16 w + 8 h are multiples of 8), so each address is a per-thread
  // base plus a constant XOR a per-thread phase: no index arithmetic per register (ptxas computed col / 64, col % 64
  // and the swizzle for each of them, ~200 instructions a tile at D = 64; ncu, H200, session 17).
  const uint32_t phase = (lane / 4) << 4;  // (row % 8) << 4
  const uint32_t base[2] = {static_cast<uint32_t>(rows[0]) * 128 + 4 * (lane % 4),
                            static_cast<uint32_t>(rows[1]) * 128 + 4 * (lane % 4)};
#pragma unroll
  for (int i = 0; i < D / 2; i += 2) {
    const int q = i / 4;
    const uint32_t off = (q / 8) * (BM * 128) + base[(i >> 1) & 1] + ((static_cast<uint32_t>(q % 8) << 4) ^ phase);
    const float sc = inv[(i >> 1) & 1];
    *reinterpret_cast<uint32_t*>(q_smem + off) = pack2<T>(o[i] * sc, o[i + 1] * sc);
  }
  named_barrier_sync(1 + cw, 128);  // ids 1 .. the consumer count: one per consumer warpgroup (0 is __syncthreads')
  // The read-back: thread t takes 16-byte chunk t % kRowChunks of rows 64 cw + t / kRowChunks + kRowsPerPass it: the
  // chunk and the row's phase (row % 8) are the same in every pass, so a pass adds a constant to both addresses.
  constexpr int kRowChunks = D / 8, kRowsPerPass = 128 / kRowChunks, kPasses = 64 / kRowsPerPass;
  static_assert(128 % kRowChunks == 0 && kRowsPerPass % 8 == 0, "passes of whole 8-row swizzle groups");
  const uint32_t tu = static_cast<unsigned>(t), col8 = tu % kRowChunks;
  const int row0 = 64 * cw + static_cast<int>(tu / kRowChunks);
  const uint8_t* src = q_smem + (col8 / 8) * (BM * 128) + sw128_chunk(row0, col8 % 8);
  T* dst = out_blk + row0 * ld + col8 * 8;
#pragma unroll
  for (int it = 0; it < kPasses; ++it) {
    if (row0 + it * kRowsPerPass >= rows_valid) break;  // rows grow with it
    *reinterpret_cast<uint4*>(dst + it * kRowsPerPass * ld) =
        *reinterpret_cast<const uint4*>(src + it * kRowsPerPass * 128);
  }
}

// The output of a tile whose queries see no key: out 0 and lse -inf (what store_out writes for l = 0), by one warp
// (lane: its lane), for the tile's first rows_valid rows. out_blk: the tile's first output row, rows ld elements apart,
// 16-byte aligned (ld % 8 == 0); lse_blk: its first lse row (contiguous).
template <class T, int D>
__device__ __forceinline__ void store_empty_tile(int lane, T* __restrict__ out_blk, int64_t ld, int rows_valid,
                                                 float* __restrict__ lse_blk) {
  constexpr int kRowChunks = D / 8;  // 16-byte chunks a row
  for (int c = lane; c < rows_valid * kRowChunks; c += 32)
    *reinterpret_cast<uint4*>(out_blk + (c / kRowChunks) * ld + (c % kRowChunks) * 8) = make_uint4(0, 0, 0, 0);
  for (int r = lane; r < rows_valid; r += 32) lse_blk[r] = -INFINITY;
}

// Stores a warpgroup's 64 x D fp32 accumulator fragment times mul as T, straight from the registers (4-byte stores:
// a quad writes 16 contiguous bytes of a row): fragment row r -> g + r ld, rows < rows_valid only (<= 0: none).
// For the backward's dQ / dK / dV, written once per CTA after its whole loop (staging through shared memory, as
// store_out does, would buy little there).
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

// store_out without the staging tile (the head-dim-256 forward has no room for one): O / l and lse as store_out
// computes them, O stored straight from the registers (store_rows_bounded).
template <class T, int D>
__device__ __forceinline__ void store_out_direct(float (&o)[D / 2], const float (&m)[2], float (&l)[2], float scale_log2,
                                                 int cw, int t, T* __restrict__ out_blk, int64_t ld, int rows_valid,
                                                 float* __restrict__ lse_blk) {
  float inv[2];
  int rows[2];
  finish_rows(m, l, scale_log2, cw, t, rows_valid, lse_blk, inv, rows);
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] *= inv[(i >> 1) & 1];
  store_rows_bounded<T, D>(o, 1.f, out_blk + static_cast<int64_t>(64 * cw) * ld, ld, rows_valid - 64 * cw, t);
}

// ---- the split tail (DrawOrder's SplitTail: a tile's keys run as pieces on several CTAs) ---------------------------
// A piece's record, per consumer warpgroup: each thread's O fragment (D / 2 fp32, not yet divided by l) and its rows'
// m and l (l its own part of the row sum, as online_softmax keeps it), as float4s [j][t] (j < split_record_vecs, t the
// thread) so that a warp's stores and loads are 512 contiguous bytes. A thread holds the same rows and columns in every
// CTA, so the records combine thread by thread, with no shuffles.
__host__ __device__ constexpr int split_record_vecs(int D) {
  return D / 8 + 1;  // O's D / 2 floats four at a time, then (m0, m1, l0, l1)
}
__host__ __device__ constexpr int split_record_bytes(int D) {  // one piece's record of one consumer warpgroup
  return split_record_vecs(D) * 128 * 16;
}

// Piece p of a split tile (of `pieces`), at the end of its keys, in one consumer warpgroup (t: its thread; barrier: a
// named barrier of its own): writes the piece's record (records: the tile's, for this warpgroup's rows, piece q at
// q split_record_vecs x 128 float4s) and counts it at *counter. The warpgroup that counts the tile's last piece,
// whichever CTA runs it, reads all the records, in piece order (so that the sum does not depend on which piece ended
// last), into o, m and l: what one CTA running every key of the tile would hold, up to the order of the additions.
// Returns true there (the caller writes the tile out as usual; *counter is back to 0 for the next launch) and false in
// the others.
template <int D>
__device__ __forceinline__ bool split_combine(float (&o)[D / 2], float (&m)[2], float (&l)[2], float scale_log2,
                                              float4* __restrict__ records, int p, int pieces, unsigned* counter,
                                              int t, int barrier) {
  constexpr int kVecs = split_record_vecs(D), kMl = D / 8;  // kMl: the (m, l) float4
  float4* mine = records + p * kVecs * 128 + t;
#pragma unroll
  for (int j = 0; j < D / 8; ++j) mine[j * 128] = make_float4(o[4 * j], o[4 * j + 1], o[4 * j + 2], o[4 * j + 3]);
  mine[kMl * 128] = make_float4(m[0], m[1], l[0], l[1]);
  __threadfence();                   // each thread's record before the count,
  named_barrier_sync(barrier, 128);  // and the count after every thread's
  // The barrier gives every thread the same answer; the vote tells ptxas so (a uniform predicate), else it cannot prove
  // the callers' loops uniform past this branch (see tile_complete in ops/cuda/flash_attention_sm90.cu).
  const bool last = __any_sync(
      0xffffffffu,
      named_barrier_any(barrier, 128, t == 0 && atomicAdd(counter, 1u) == static_cast<unsigned>(pieces - 1)));
  if (!last) return false;
  __threadfence();  // the other pieces' records (fenced before their counts) after the count that saw them
  if (t == 0) *counter = 0u;  // every piece has counted
  float mx[2] = {-INFINITY, -INFINITY};
  for (int q = 0; q < pieces; ++q) {
    const float4 ml = __ldcg(records + (q * kVecs + kMl) * 128 + t);  // L2: the other SMs' writes
    mx[0] = fmaxf(mx[0], ml.x), mx[1] = fmaxf(mx[1], ml.y);
  }
  // A piece's share is scaled by 2^((m_q - m) scale_log2): 0 for a piece whose row saw no key (m_q = -inf); a row no
  // piece saw keeps m = -inf and l = 0 (store_out: out 0, lse -inf).
  const float ms[2] = {max_log2(mx[0], scale_log2), max_log2(mx[1], scale_log2)};
  l[0] = l[1] = 0.f;
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  for (int q = 0; q < pieces; ++q) {
    const float4* rec = records + q * kVecs * 128 + t;
    const float4 ml = __ldcg(rec + kMl * 128);
    const float f0 = ex2(ml.x * scale_log2 - ms[0]), f1 = ex2(ml.y * scale_log2 - ms[1]);
    l[0] = fmaf(ml.z, f0, l[0]), l[1] = fmaf(ml.w, f1, l[1]);
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {  // register 4 j + c holds row (c >> 1) & 1
      const float4 v = __ldcg(rec + j * 128);
      o[4 * j] = fmaf(v.x, f0, o[4 * j]), o[4 * j + 1] = fmaf(v.y, f0, o[4 * j + 1]);
      o[4 * j + 2] = fmaf(v.z, f1, o[4 * j + 2]), o[4 * j + 3] = fmaf(v.w, f1, o[4 * j + 3]);
    }
  }
  m[0] = mx[0], m[1] = mx[1];
  return true;
}

}  // namespace xfr::cuda::sm90

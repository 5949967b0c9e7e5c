// Which tiles a CTA of the Hopper kernels' persistent (1-D) grids runs, and in what order: the forward's query tiles
// (ops/cuda/flash_attention_sm90.cu), the persistent backward's key blocks (dK/dV) and query blocks (dQ)
// (ops/cuda/flash_attention_sm90_backward.cu). Plain C++ (no CUDA header): the CPU tests walk it for every CTA of a
// grid.
#pragma once

#include <cstdint>

#include "runtime/rng.h"  // XF_HOST_DEVICE

namespace xfr::cuda::fa {

// n / d and n % d for 0 <= n < 2^31 and a divisor 1 <= d < 2^31 fixed at construction, by a multiply-high, an add and
// a shift (Granlund and Montgomery's round-up method: l = ceil(log2 d), m = floor(2^32 (2^l - d) / d) + 1, then
// n / d = (umulhi(n, m) + n) >> l, exact for every such n). A hardware integer division costs a MUFU.RCP and about 20
// instructions; the persistent kernels' tile decoding did five a tile (ncu, H200: 4% of the D = 64 forward's samples at
// S = 512). The constructor's 64-bit division runs once per kernel.
struct FastDiv {
  uint32_t d = 1, m = 1, l = 0;
  FastDiv() = default;
  // A divisor below 1 (an empty launch: no heads or tiles, so nothing is ever divided) is taken as 1, so that
  // constructing a TileOrder for one is harmless.
  XF_HOST_DEVICE explicit FastDiv(int divisor) : d(divisor > 0 ? static_cast<uint32_t>(divisor) : 1u) {
    while ((1ull << l) < d) ++l;
    m = static_cast<uint32_t>(((1ull << 32) * ((1ull << l) - d)) / d + 1);
  }
  XF_HOST_DEVICE int div(int n) const {
    const uint32_t u = static_cast<uint32_t>(n);
#ifdef __CUDA_ARCH__
    const uint32_t hi = __umulhi(u, m);
#else
    const uint32_t hi = static_cast<uint32_t>((static_cast<uint64_t>(u) * m) >> 32);
#endif
    return static_cast<int>((static_cast<uint64_t>(hi) + u) >> l);
  }
  XF_HOST_DEVICE int mod(int n) const { return n - div(n) * static_cast<int>(d); }
};

// Tiles are dealt in pairs: per (b, h), pair i (0 <= i < ceil(m_tiles / 2)) is the i-th query tile from the end
// and the i-th from the start (one tile when they meet), so under a causal mask every pair costs about the same
// (long + short = m_tiles + 1 key tiles), and so do windows and unmasked attention. Pair v = (b H + h) pairs + i,
// a head's pairs consecutive (the CTAs running at one time share a head's K and V in L2); CTA c of a grid of g runs
// pairs c, c + g, c + 2 g, ..., each as its long tile then its short one. H200, 2026-11-30: an earlier order,
// single tiles dealt round-robin in zigzag rounds, drifted out of balance under a causal mask where 132 SMs and
// m_tiles = 128 (S = 16384) fell out of step and ran 0.67x of one CTA per tile; a simulation of the pairs gives
// >= 0.97 of the ideal on the whole benchmark grid.
// Tile u encodes query tile m_tiles - 1 - u % m_tiles (the index from the end) of head (u / m_tiles) % H, batch
// u / (m_tiles H); BM is the CTA's query rows.
template <int BM>
struct TileOrder {
  static constexpr int kEnd = -1;   // past the CTA's last pair
  static constexpr int kNone = -2;  // the missing second tile of a one-tile pair: skip it
  int m_tiles, H, pairs;            // pairs = H x B x ceil(m_tiles / 2); m_tiles x H x B < 2^31 (sm90_problem_refusal)
  FastDiv by_m, by_h, by_pairs_per_head;  // m_tiles, H, ceil(m_tiles / 2)
  XF_HOST_DEVICE TileOrder(int m_tiles_, int H_, int pairs_)
      : m_tiles(m_tiles_), H(H_), pairs(pairs_), by_m(m_tiles_), by_h(H_), by_pairs_per_head((m_tiles_ + 1) / 2) {}
  // The k-th tile of CTA `cta` of a grid of `grid` (k = 2 x its pair number + 0 for the long tile, 1 for the short
  // one).
  XF_HOST_DEVICE int tile(int k, int grid, int cta) const {
    const int v = (k >> 1) * grid + cta;  // < pairs + grid <= 2 pairs < 2^31
    if (v >= pairs) return kEnd;
    const int head_pair = by_pairs_per_head.div(v);
    const int i = v - head_pair * static_cast<int>(by_pairs_per_head.d), from_end = (k & 1) ? m_tiles - 1 - i : i;
    if ((k & 1) && from_end == i) return kNone;
    return head_pair * m_tiles + from_end;
  }
  XF_HOST_DEVICE int q0(int u) const { return (m_tiles - 1 - by_m.mod(u)) * BM; }
  // The mirror of q0: the i-th tile from the start where q0 is the i-th from the end (the dK/dV kernel's key blocks,
  // whose longest under a causal mask is the first, so a pair still starts with its long one).
  XF_HOST_DEVICE int q0_mirrored(int u) const { return by_m.mod(u) * BM; }
  XF_HOST_DEVICE int head(int u) const { return by_h.mod(by_m.div(u)); }
  XF_HOST_DEVICE int batch(int u) const { return by_h.div(by_m.div(u)); }
};

}  // namespace xfr::cuda::fa

// Which tiles a CTA of the Hopper kernels' persistent (1-D) grids runs, and in what order: the forward's query tiles
// (ops/cuda/flash_attention_sm90.cu), the persistent backward's key blocks (dK/dV) and query blocks (dQ)
// (ops/cuda/flash_attention_sm90_backward.cu). Plain C++ (no CUDA header): the CPU tests walk it for every CTA of a
// grid.
#pragma once

#include <cstdint>

#include "ops/cuda/flash_attention_mask.h"  // TileRange
#include "runtime/rng.h"                     // XF_HOST_DEVICE

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

// Tiles drawn one at a time from a counter, longest first (LPT), for the forward under a mask whose query tiles cost
// different amounts (causal, windows). The dealt pairs of TileOrder cost the same, but a grid whose pairs do not
// divide among its CTAs leaves the last round part idle: on the benchmark grid (2048 pairs of 128-query tiles at every
// S, 132 CTAs) 15.5 rounds take 16, 97% of the ideal. Drawn tiles balance to within the last ones' cost instead: a CTA
// draws tile n (the counter's next value) when it is ready for one, and the order puts the short tiles last.
// Tile n of the launch: heads (b H + h, consecutive) go in chunks of chunk_heads (the last one may be smaller); within
// a chunk the query tiles go by their index from the end (the longest under a causal mask first), each over the
// chunk's heads: n = chunk start + rank x heads of the chunk + head in chunk. A chunk's K and V stay in L2 while its
// tiles run (launch_sm90_forward sizes it), as a head's do under TileOrder. A simulation of drawn tiles on 132 CTAs
// (tests/test_flash_attention_tile_order.cpp) gives >= 0.98 of the ideal on the causal benchmark grid, against 0.97.
// tile(n) is TileOrder's encoding (u = (b H + h) m_tiles + index from the end), so TileOrder decodes it.
//
// The split tail (SplitTail, for tiles that all cost the same: no mask): the order's last `tail` tiles are each drawn
// as `pieces` units, piece p taking key tiles [p steps, (p + 1) steps) of the tile's (the last piece fewer), so that
// the round the tail tiles would run alone on a few CTAs runs on tail x pieces of them. unit(n) says which tile and
// which piece unit n is; a piece's partial result (its O, row max and row sum) is combined with the tile's other pieces'
// by whichever CTA finishes the tile's last one (split_combine in ops/cuda/device/sm90/attention.cuh).
struct SplitTail {
  int tail = 0;    // the last tiles of the order, split (0: none)
  int pieces = 1;  // units each of them is drawn as (1: none)
  int steps = 0;   // key tiles a piece runs (the last piece of a tile the rest)
  XF_HOST_DEVICE bool on() const { return tail > 0 && pieces > 1; }
};

// The split tail for `tiles` tiles of `key_tiles` key tiles each on a grid of `ctas` CTAs: the tiles past the last
// whole round (tiles % ctas; all of them when there are fewer than ctas), each split into as many pieces as the idle
// CTAs allow (ctas / tail, at most one a key tile) so that every CTA draws at most one piece. None when the rounds
// come out whole or a tile cannot be split in two.
inline SplitTail split_tail(int tiles, int ctas, int key_tiles) {
  if (tiles <= 0 || ctas <= 0 || key_tiles < 2) return {};
  const int tail = tiles % ctas;
  if (tail == 0) return {};
  const int most = ctas / tail < key_tiles ? ctas / tail : key_tiles;
  if (most < 2) return {};
  const int steps = (key_tiles + most - 1) / most;
  return {tail, (key_tiles + steps - 1) / steps, steps};
}

struct DrawOrder {
  static constexpr int kEnd = -1;  // past the launch's last tile (TileOrder's kEnd)
  int m_tiles = 0, heads = 0, tiles = 0;  // heads = B x H; tiles = heads x m_tiles < 2^31
  int chunk_heads = 1, last_start = 0;    // the last chunk's first tile
  FastDiv by_chunk_tiles, by_chunk_heads, by_last_heads;  // chunk_heads x m_tiles, chunk_heads, the last chunk's heads
  // The split tail: units [whole, units) are its pieces, tail tile t's piece p unit whole + t pieces + p.
  SplitTail split;
  int whole = 0, units = 0;  // whole = tiles - split.tail; units = whole + split.tail x split.pieces
  FastDiv by_pieces;
  DrawOrder() = default;
  XF_HOST_DEVICE DrawOrder(int m_tiles_, int heads_, int chunk_heads_, SplitTail split_ = {})
      : m_tiles(m_tiles_), heads(heads_), tiles(m_tiles_ * heads_),
        chunk_heads(chunk_heads_ < 1 ? 1 : (chunk_heads_ > heads_ ? heads_ : chunk_heads_)) {
    const int chunks = heads > 0 ? (heads + chunk_heads - 1) / chunk_heads : 1;
    last_start = (chunks - 1) * chunk_heads * m_tiles;
    by_chunk_tiles = FastDiv(chunk_heads * m_tiles);
    by_chunk_heads = FastDiv(chunk_heads);
    by_last_heads = FastDiv(heads - (chunks - 1) * chunk_heads);
    if (split_.on() && split_.tail <= tiles) split = split_;
    whole = tiles - (split.on() ? split.tail : 0);
    units = whole + (split.on() ? split.tail * split.pieces : 0);
    by_pieces = FastDiv(split.pieces);
  }
  // The n-th tile of the order (n < tiles), or kEnd.
  XF_HOST_DEVICE int tile(int n) const {
    if (n >= tiles) return kEnd;
    const int chunk = by_chunk_tiles.div(n), within = n - chunk * static_cast<int>(by_chunk_tiles.d);
    const FastDiv& by = n >= last_start ? by_last_heads : by_chunk_heads;  // the heads of n's chunk
    const int rank = by.div(within), head = chunk * chunk_heads + (within - rank * static_cast<int>(by.d));
    return head * m_tiles + rank;
  }
  // Unit n of the launch: its tile (kEnd past the last unit) and, for a piece of the split tail, its index among the
  // pieces (tail tile t's piece p: t pieces + p; -1 for a whole tile).
  struct Unit {
    int u, piece;
  };
  XF_HOST_DEVICE Unit unit(int n) const {
    if (n < whole) return {tile(n), -1};
    if (n >= units) return {kEnd, -1};
    const int piece = n - whole;
    return {tile(whole + by_pieces.div(piece)), piece};
  }
  // Which tail tile a piece belongs to, and which of its pieces it is.
  XF_HOST_DEVICE int piece_tile(int piece) const { return by_pieces.div(piece); }
  XF_HOST_DEVICE int piece_index(int piece) const { return by_pieces.mod(piece); }
  // The key tiles of unit `piece` of a tile whose keys are `all` (all of them for a whole tile, piece -1).
  XF_HOST_DEVICE TileRange piece_keys(TileRange all, int piece) const {
    if (piece < 0) return all;
    const int p = piece_index(piece), first = p * split.steps, rest = all.count - first;
    return {all.first + first, rest < split.steps ? (rest > 0 ? rest : 0) : split.steps};
  }
};

// Heads per DrawOrder chunk: as many as keep their keys and values (kv_head_bytes each: K and V of one kv head over
// the key sequence, divided by the query heads that share it) within kDrawChunkBytes, at least one.
// kDrawChunkBytes: a third of the H100's and H200's 50 MB L2, the other two thirds for Q, the outputs and the chunk
// before's tail. At D = 64 it gives 64 heads at S = 1024 and 16 at 4096 (of 512 and 128 on the benchmark grid).
constexpr int64_t kDrawChunkBytes = int64_t{16} << 20;
inline int draw_chunk_heads(int heads, int64_t kv_head_bytes) {
  const int64_t fit = kv_head_bytes > 0 ? kDrawChunkBytes / kv_head_bytes : heads;
  return static_cast<int>(fit < 1 ? 1 : (fit > heads ? heads : fit));
}

}  // namespace xfr::cuda::fa

// The mask as the tensor-core kernels of ops/flash_attention.h test it (ops/cuda/flash_attention_tc.cuh), and the
// features a kernel instantiation is compiled with. One helper serves the forward, dQ, dK/dV and dbias kernels:
// which key (query) tiles a block visits, whether a tile is visible to all of its queries (no element test) or to
// some, and element (i, j). Plain C++ (no CUDA header): the CPU tests check it against AttentionBand.
#pragma once
#include <cstdint>

#include "ops/flash_attention.h"
#include "runtime/rng.h"  // XF_HOST_DEVICE

namespace xfr::cuda::fa {

// ---- features ---------------------------------------------------------------------------------------------
// What an instantiation of the tensor-core kernels can do, a bitmask fixed at compile time: without a bit, that
// work is compiled out (no per-row bias pointers or dropout streams, no run-time tests of them, no sequence
// lookups). The host picks the instantiation from the problem (instantiation_of).
enum Feature : int {
  kBias = 1,     // an additive bias tensor
  kDropout = 2,  // dropout on P
  kVarlen = 4,   // packed sequences (cu_seqlens): per-CTA sequence lookups, per-sequence extents
  kBand = 8,     // a band with a lower key bound (window_left >= 0). Without it a query's keys are [0, key_hi(i)):
                 // no mask, causal in either alignment, a right window; key_hi is one add and a clamp.
};
// The instantiations built: "plain" (none of them: the common cases, e.g. GPT-2's causal attention and an
// encoder's unmasked one) and "general" (all of them: every other problem, as one kernel).
constexpr int kPlain = 0;
constexpr int kGeneral = kBias | kDropout | kVarlen | kBand;
XF_HOST_DEVICE constexpr bool has(int features, int f) { return (features & f) != 0; }

// The features a problem needs, and the instantiation that runs it (the smallest built one that has them).
inline int features_needed(bool bias, bool dropout, bool varlen, const AttentionBand& band) {
  return (bias ? kBias : 0) | (dropout ? kDropout : 0) | (varlen ? kVarlen : 0) | (band.left >= 0 ? kBand : 0);
}
inline int instantiation_of(int needed) { return needed == kPlain ? kPlain : kGeneral; }

// ---- the mask ---------------------------------------------------------------------------------------------
XF_HOST_DEVICE inline int clamp_int(int64_t x, int lo, int hi) {
  return static_cast<int>(x < lo ? lo : (x > hi ? hi : x));
}

// Tiles [first, first + count) of `size` rows.
struct TileRange {
  int first, count;
};
// The tiles of `size` rows that hold some row of [lo, hi).
XF_HOST_DEVICE inline TileRange tiles_covering(int lo, int hi, int size) {
  if (hi <= lo) return {0, 0};
  const int first = lo / size;
  return {first, (hi + size - 1) / size - first};
}

// Keys [lo, hi): those query i sees (Mask::keys) or those every query of a block sees (Mask::common_keys).
struct KeyRange {
  int lo, hi;
};

// The band of one sequence (Sq queries, Sk keys): query i sees keys [key_lo(i), key_hi(i)), both nondecreasing in
// i (ops/flash_attention.h). kLower (kBand): the band as given (AttentionBand, 64-bit). Without it the band must
// have no lower bound (band.left < 0, so key_lo = 0), and key_hi(i) = clamp(i + diag, 0, Sk) in 32 bits: diag =
// shift + right + 1 >= 1 - Sq, clamped at Sk + 1 (also when unbounded), which changes nothing for i >= 0. The
// kernels ask for queries 0 <= i < Sq + 64 and keys 0 <= j < Sk + 64 (a block's padding rows included). The mask
// points at the band (the kernel parameter's, read from there: a copy would take registers), which must outlive it.
template <bool kLower>
struct Mask {
  const AttentionBand* band = nullptr;
  int Sq = 0, Sk = 0;
  int diag = 0;  // !kLower

  Mask() = default;
  XF_HOST_DEVICE Mask(const AttentionBand& b, int sq, int sk) : band(&b), Sq(sq), Sk(sk) {
    if constexpr (!kLower) {
      // A right bound past every key is no bound (and keeps the sum below in range).
      const bool unbounded = b.right < 0 || b.right > static_cast<int64_t>(sq) + sk;
      diag = unbounded ? sk + 1 : clamp_int(b.shift(sq, sk) + b.right + 1, 1 - sq, sk + 1);
    }
  }
  XF_HOST_DEVICE int key_lo(int i) const {
    if constexpr (kLower) return static_cast<int>(band->key_lo(i, Sq, Sk));
    return 0;
  }
  XF_HOST_DEVICE int key_hi(int i) const {
    if constexpr (kLower) return static_cast<int>(band->key_hi(i, Sq, Sk));
    return clamp_int(i + diag, 0, Sk);
  }
  // The queries that see some key of [j0, j1) (0 <= j0 < j1 <= Sk): [query_lo(j0), query_hi(j1)).
  XF_HOST_DEVICE int query_lo(int j0) const {
    if constexpr (kLower) return static_cast<int>(band->query_lo(j0, Sq, Sk));
    return clamp_int(j0 + 1 - diag, 0, Sq);
  }
  XF_HOST_DEVICE int query_hi(int j1) const {
    if constexpr (kLower) return static_cast<int>(band->query_hi(j1, Sq, Sk));
    return Sq;
  }

  XF_HOST_DEVICE KeyRange keys(int i) const { return {key_lo(i), key_hi(i)}; }
  // The keys every query of [i0, i1] sees (i1 the last; key ranges grow with the query).
  XF_HOST_DEVICE KeyRange common_keys(int i0, int i1) const { return {key_lo(i1), key_hi(i0)}; }
  // Whether key j is outside `r` (keys(i): element (i, j) is hidden).
  XF_HOST_DEVICE bool hides(const KeyRange& r, int j) const { return (kLower && j < r.lo) || j >= r.hi; }
  // Whether `r` holds every key of [j0, j1) (common_keys: the tile needs no element test).
  XF_HOST_DEVICE bool covers(const KeyRange& r, int j0, int j1) const { return (!kLower || r.lo <= j0) && j1 <= r.hi; }
  // Whether some query of [i0, i1] (i1 the last) sees some key of [j0, j1).
  XF_HOST_DEVICE bool sees_any(int i0, int i1, int j0, int j1) const { return key_hi(i1) > j0 && key_lo(i0) < j1; }

  // The tiles of `bk` keys the queries [q0, q0 + rows) visit: from the first query's first key to the last
  // (valid) query's last.
  XF_HOST_DEVICE TileRange key_tiles(int q0, int rows, int bk) const {
    const int last = (q0 + rows < Sq ? q0 + rows : Sq) - 1;
    if (last < q0) return {0, 0};
    return tiles_covering(key_lo(q0), key_hi(last), bk);
  }
  // The tiles of `bq` queries that see some key of [k0, k0 + rows).
  XF_HOST_DEVICE TileRange query_tiles(int k0, int rows, int bq) const {
    const int kend = k0 + rows < Sk ? k0 + rows : Sk;
    if (kend <= k0) return {0, 0};
    return tiles_covering(query_lo(k0), query_hi(kend), bq);
  }
};

}  // namespace xfr::cuda::fa

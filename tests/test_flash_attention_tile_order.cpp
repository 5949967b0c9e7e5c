// The Hopper forward's persistent tile order (ops/cuda/flash_attention_tile_order.h), walked on the CPU for every
// CTA of a grid: each query tile of the launch is run exactly once, a CTA's tiles come in pairs (the i-th from the
// end, then the i-th from the start), the tile index decodes to (query block, head, batch), and under a causal mask
// the CTAs of an H200-sized grid get balanced work (the zigzag order this replaced gave one CTA 1.5x the mean at
// S = 16384, D = 128). The persistent backward's dK/dV kernel reads its key blocks through q0_mirrored. The masked
// forward's drawn order (DrawOrder): every tile once, chunk by chunk, longest first, and tiles drawn by whichever CTA
// is free first balanced within 2% on the causal benchmark grid, better than the pairs. The split tail (split_tail,
// DrawOrder's pieces): its rule, every key tile of every query tile drawn once, and the unmasked grid's last round a
// piece's time.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "ops/cuda/flash_attention_tile_order.h"
#include "testing.h"

using namespace xfr;
using xfr::cuda::fa::TileOrder;

namespace {

constexpr int kBM = 128;

// TileOrder of a launch, as launch_sm90_forward fills it.
TileOrder<kBM> order_of(int m_tiles, int H, int B) { return {m_tiles, H, (m_tiles + 1) / 2 * H * B}; }

// Each CTA's tiles in its order.
std::vector<std::vector<int>> walk(const TileOrder<kBM>& order, int grid) {
  std::vector<std::vector<int>> ctas(static_cast<size_t>(grid));
  for (int c = 0; c < grid; ++c)
    for (int k = 0;; ++k) {
      const int u = order.tile(k, grid, c);
      if (u == TileOrder<kBM>::kEnd) break;
      if (u == TileOrder<kBM>::kNone) continue;
      ctas[static_cast<size_t>(c)].push_back(u);
    }
  return ctas;
}

}  // namespace

TEST_CASE("flash_attention tile order: every query tile exactly once, in pairs, for any grid") {
  for (int m_tiles : {1, 2, 3, 4, 7, 8, 33})
    for (int H : {1, 3})
      for (int B : {1, 2}) {
        const TileOrder<kBM> order = order_of(m_tiles, H, B);
        const int tiles = m_tiles * H * B;
        for (int grid : {1, 2, 3, 5, 7, order.pairs, order.pairs + 4}) {
          CAPTURE(m_tiles);
          CAPTURE(H);
          CAPTURE(B);
          CAPTURE(grid);
          std::vector<int> seen(static_cast<size_t>(tiles), 0);
          for (const std::vector<int>& mine : walk(order, grid)) {
            for (size_t k = 0; k < mine.size(); ++k) {
              const int u = mine[k];
              REQUIRE(u >= 0);
              REQUIRE(u < tiles);
              ++seen[static_cast<size_t>(u)];
              // Decoding: query block (from the start) m_tiles - 1 - u % m_tiles of head h, batch b.
              const int block = order.q0(u) / kBM, h = order.head(u), b = order.batch(u);
              CHECK(block >= 0);
              CHECK(block < m_tiles);
              CHECK(h < H);
              CHECK(b < B);
              CHECK((b * H + h) * m_tiles + (m_tiles - 1 - block) == u);
              CHECK(order.q0_mirrored(u) / kBM == m_tiles - 1 - block);  // the same pairs, read from the start
            }
            // Pairs: a long tile (i-th from the end) is followed by its short partner (i-th from the start) of the
            // same head, unless they are one tile (the middle of an odd m_tiles).
            for (size_t k = 0; k < mine.size(); ++k) {
              const int u = mine[k], from_end = u % m_tiles;
              if (2 * from_end == m_tiles - 1) continue;  // a one-tile pair
              REQUIRE(from_end < m_tiles - 1 - from_end);   // the long one comes first
              REQUIRE(k + 1 < mine.size());
              CHECK(mine[k + 1] == u - from_end + (m_tiles - 1 - from_end));
              ++k;
            }
          }
          CHECK(std::all_of(seen.begin(), seen.end(), [](int n) { return n == 1; }));
        }
      }
}

TEST_CASE("flash_attention tile order: causal work is balanced over an H200's 132 CTAs on the benchmark grid") {
  // Causal, Sq = Sk: query block q (from the start) sees q + 1 key tiles; add one tile's worth of fixed cost per
  // query tile (its Q load, its epilogue). The busiest CTA's work must be within 5% of a perfect split of the total:
  // the pairs' only loss is the last round of pairs, which leaves some CTAs idle (at most 3% on this grid). The
  // zigzag order gave 1.5x at S = 16384, D = 128.
  for (int D : {64, 128})
    for (int S : {512, 1024, 2048, 4096, 8192, 16384}) {
      const int m_tiles = S / kBM, HB = (16384 / S) * (2048 / D);
      const TileOrder<kBM> order = order_of(m_tiles, HB, 1);
      std::vector<double> load;
      for (const auto& mine : walk(order, 132)) {
        double w = 0;
        for (int u : mine) w += order.q0(u) / kBM + 1 + 1;
        load.push_back(w);
      }
      const double mean = std::accumulate(load.begin(), load.end(), 0.0) / 132;
      CAPTURE(D);
      CAPTURE(S);
      CHECK(*std::max_element(load.begin(), load.end()) <= 1.05 * mean);
    }
}

TEST_CASE("flash_attention tile order: FastDiv divides exactly (the tile decoding's n / d, n % d)") {
  // Every divisor kind the kernels use (m_tiles, H, ceil(m_tiles / 2): 1 up to 2^31 - 1), against / and % on the
  // numerators at the edges (0, d - 1, d, multiples, 2^31 - 1) and on a pseudo-random spread.
  std::vector<int> divisors = {1, 2, 3, 5, 7, 8, 31, 33, 127, 128, 129, 257, 1000, 4097, 65535, 65536, 65537,
                               (1 << 30) - 1, 1 << 30, (1 << 30) + 1, INT32_MAX};
  std::mt19937_64 rng(0x5eed);
  std::uniform_int_distribution<int> any_divisor(1, INT32_MAX), any_numerator(0, INT32_MAX);
  for (int i = 0; i < 200; ++i) divisors.push_back(any_divisor(rng));
  int failures = 0;
  for (int d : divisors) {
    const xfr::cuda::fa::FastDiv f(d);
    std::vector<int64_t> ns = {0, 1, d - 1, d, int64_t{d} + 1, 2 * int64_t{d} - 1, 2 * int64_t{d}, INT32_MAX,
                               INT32_MAX - 1, INT32_MAX - d};
    for (int i = 0; i < 2000; ++i) ns.push_back(any_numerator(rng));
    for (int64_t n64 : ns) {
      if (n64 < 0 || n64 > INT32_MAX) continue;
      const int n = static_cast<int>(n64);
      if (f.div(n) != n / d || f.mod(n) != n % d) {
        if (++failures <= 5) FAIL_CHECK("FastDiv(" << d << ") of " << n << ": " << f.div(n) << " " << f.mod(n));
      }
    }
  }
  CHECK(failures == 0);
}

TEST_CASE("flash_attention draw order: every query tile once, chunk by chunk, longest first") {
  using xfr::cuda::fa::DrawOrder;
  for (int m_tiles : {1, 2, 3, 8, 33})
    for (int heads : {1, 5, 12, 64})
      for (int chunk : {1, 3, 4, 64, 100}) {
        CAPTURE(m_tiles);
        CAPTURE(heads);
        CAPTURE(chunk);
        const DrawOrder order(m_tiles, heads, chunk);
        const int c = std::min(chunk, heads), tiles = m_tiles * heads;
        REQUIRE(order.tiles == tiles);
        std::vector<int> seen(static_cast<size_t>(tiles), 0);
        for (int n = 0; n < tiles; ++n) {
          const int u = order.tile(n);
          REQUIRE(u >= 0);
          REQUIRE(u < tiles);
          ++seen[static_cast<size_t>(u)];
          // Written out: chunk n / (c m_tiles); in it, rank (index from the end) and head by the chunk's head count.
          const int ch = n / (c * m_tiles), within = n % (c * m_tiles);
          const int in_chunk = std::min(c, heads - ch * c);
          CHECK(u / m_tiles == ch * c + within % in_chunk);
          CHECK(u % m_tiles == within / in_chunk);
        }
        CHECK(order.tile(tiles) == DrawOrder::kEnd);
        CHECK(order.tile(tiles + 131) == DrawOrder::kEnd);
        CHECK(std::all_of(seen.begin(), seen.end(), [](int k) { return k == 1; }));
      }
}

TEST_CASE("flash_attention draw order: drawn causal tiles balance better than dealt pairs on the benchmark grid") {
  using xfr::cuda::fa::DrawOrder;
  // Causal, Sq = Sk, D = 64 (launch_sm90_forward's draw_chunk_heads for bf16 K and V): query tile q (from the start)
  // costs its key steps of `bn` keys, ceil(128 (q + 1) / bn), plus a fixed 0.3 step (its epilogue and first S). Tiles
  // are drawn by whichever of 132 CTAs is free first; the busiest CTA must be within 2% of a perfect split, where the
  // dealt pairs (the same cost model) lose 3% in the last round.
  for (int S : {512, 1024, 2048, 4096, 8192, 16384})
    for (int bn : {128, 256}) {
      const int m_tiles = S / kBM, heads = (16384 / S) * (2048 / 64);
      const auto cost = [&](int from_end) { return std::ceil(128.0 * (m_tiles - from_end) / bn) + 0.3; };
      const DrawOrder order(m_tiles, heads, xfr::cuda::fa::draw_chunk_heads(heads, int64_t{2} * S * 64 * 2));
      std::vector<double> load(132, 0.0);
      for (int n = 0; n < order.tiles; ++n) *std::min_element(load.begin(), load.end()) += cost(order.tile(n) % m_tiles);
      double pairs_max = 0;
      for (const auto& mine : walk(order_of(m_tiles, heads, 1), 132)) {
        double w = 0;
        for (int u : mine) w += cost(u % m_tiles);
        pairs_max = std::max(pairs_max, w);
      }
      const double mean = std::accumulate(load.begin(), load.end(), 0.0) / 132;
      CAPTURE(S);
      CAPTURE(bn);
      CHECK(*std::max_element(load.begin(), load.end()) <= 1.02 * mean);
      CHECK(*std::max_element(load.begin(), load.end()) < pairs_max);
    }
}

TEST_CASE("flash_attention split tail: the last round's tiles, split as far as the idle CTAs allow") {
  using xfr::cuda::fa::split_tail;
  using xfr::cuda::fa::SplitTail;
  const auto is = [](const SplitTail& s, int tail, int pieces, int steps) {
    return s.tail == tail && s.pieces == pieces && s.steps == steps;
  };
  // The benchmark grid without a mask: 4096 query tiles on 132 CTAs leave 4 in the last round, 33 CTAs for each.
  CHECK(is(split_tail(4096, 132, 2), 4, 2, 1));     // S = 512, 256-key tiles: one key tile a piece
  CHECK(is(split_tail(4096, 132, 8), 4, 8, 1));     // S = 2048
  CHECK(is(split_tail(4096, 132, 64), 4, 32, 2));   // S = 16384 at 256 keys: 33 would fit; 32 pieces of 2 key tiles
  CHECK(is(split_tail(48, 132, 4), 48, 2, 2));      // fewer tiles than CTAs: all of them, 132 / 48 = 2 pieces
  CHECK(is(split_tail(48, 132, 5), 48, 2, 3));      // 5 key tiles in two pieces: 3 and 2
  CHECK(is(split_tail(40, 132, 7), 40, 3, 3));      // 3 pieces of 3, 3 and 1 (4 of 2 would need 160 CTAs)
  CHECK(!split_tail(264, 132, 8).on());             // whole rounds
  CHECK(!split_tail(4096, 132, 1).on());            // a tile of one key tile does not split
  CHECK(!split_tail(200, 132, 8).on());             // 68 tail tiles, 132 / 68 = 1 piece each
  CHECK(!split_tail(0, 132, 8).on());
  CHECK(!split_tail(5, 0, 8).on());
}

TEST_CASE("flash_attention split tail: every key tile of every query tile drawn once, the tail as pieces") {
  using xfr::cuda::fa::DrawOrder;
  using xfr::cuda::fa::split_tail;
  using xfr::cuda::fa::TileRange;
  for (int m_tiles : {1, 3, 8})
    for (int heads : {1, 5, 12})
      for (int ctas : {3, 7, 132})
        for (int key_tiles : {1, 2, 5, 17}) {
          CAPTURE(m_tiles);
          CAPTURE(heads);
          CAPTURE(ctas);
          CAPTURE(key_tiles);
          const int tiles = m_tiles * heads;
          const auto split = split_tail(tiles, ctas, key_tiles);
          const DrawOrder order(m_tiles, heads, 4, split);
          REQUIRE(order.units == tiles + (split.on() ? split.tail * (split.pieces - 1) : 0));
          // Each (tile, key tile) once; a tail tile's pieces in order, each of split.steps key tiles but the last.
          std::vector<std::vector<int>> seen(static_cast<size_t>(tiles), std::vector<int>(static_cast<size_t>(key_tiles), 0));
          for (int n = 0; n < order.units; ++n) {
            const DrawOrder::Unit un = order.unit(n);
            REQUIRE(un.u >= 0);
            REQUIRE(un.u < tiles);
            CHECK(un.u == order.tile(n < order.whole ? n : order.whole + (n - order.whole) / split.pieces));
            CHECK((un.piece >= 0) == (n >= order.whole));
            const TileRange keys = order.piece_keys({0, key_tiles}, un.piece);
            REQUIRE(keys.count >= 1);
            if (un.piece >= 0) {
              CHECK(order.piece_tile(un.piece) == (n - order.whole) / split.pieces);
              CHECK(order.piece_index(un.piece) == (n - order.whole) % split.pieces);
              CHECK(keys.count <= split.steps);
            }
            for (int j = keys.first; j < keys.first + keys.count; ++j) ++seen[static_cast<size_t>(un.u)][static_cast<size_t>(j)];
          }
          CHECK(order.unit(order.units).u == DrawOrder::kEnd);
          for (const auto& tile : seen) CHECK(std::all_of(tile.begin(), tile.end(), [](int k) { return k == 1; }));
          // At most one piece a CTA: the tail's units fit in one round.
          if (split.on()) CHECK(order.units - order.whole <= ctas);
        }
}

TEST_CASE("flash_attention split tail: the unmasked benchmark grid's last round takes a piece's time, not a tile's") {
  using xfr::cuda::fa::DrawOrder;
  using xfr::cuda::fa::split_tail;
  // Without a mask every query tile costs its key steps (256 keys each at D = 64) plus 0.3 of a step (its epilogue and
  // first S); a piece its own steps plus the same 0.3 and 0.3 more for its record and the combine. Units are drawn by
  // whichever of 132 CTAs is free first. The busiest CTA must finish earlier than without the split by the key steps
  // a piece saves (less its extra 0.3), and within one piece of a perfect split of the same work, where without it the
  // busiest is a whole tile behind.
  for (int S : {512, 1024, 2048}) {
    const int m_tiles = S / kBM, heads = (16384 / S) * (2048 / 64), key_tiles = S / 256;
    const auto split = split_tail(m_tiles * heads, 132, key_tiles);
    REQUIRE(split.on());
    const DrawOrder plain(m_tiles, heads, 64), order(m_tiles, heads, 64, split);
    const auto makespan = [](const DrawOrder& o, int kt) {
      std::vector<double> load(132, 0.0);
      for (int n = 0; n < o.units; ++n) {
        const int piece = o.unit(n).piece;
        *std::min_element(load.begin(), load.end()) += o.piece_keys({0, kt}, piece).count + (piece < 0 ? 0.3 : 0.6);
      }
      return std::make_pair(*std::max_element(load.begin(), load.end()),
                            std::accumulate(load.begin(), load.end(), 0.0) / 132);
    };
    const auto [split_max, split_mean] = makespan(order, key_tiles);
    const auto [plain_max, plain_mean] = makespan(plain, key_tiles);
    CAPTURE(S);
    CHECK(split_max <= plain_max - (key_tiles - split.steps) + 0.3 + 1e-9);
    CHECK(split_max <= split_mean + split.steps + 0.6);
    CHECK(plain_max >= plain_mean + 0.9 * (key_tiles + 0.3));  // what the split wins back
  }
}

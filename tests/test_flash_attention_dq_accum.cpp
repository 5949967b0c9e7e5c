// The atomic Hopper backward's dq workspace layout (ops/cuda/flash_attention_dq_accum.h), checked on the CPU: the
// properties its staging stores, bulk reductions and bwd_dq_convert_kernel's loads rely on.
#include <cstdint>
#include <set>
#include <vector>

#include "ops/cuda/flash_attention_dq_accum.h"
#include "testing.h"

using namespace xfr::cuda::sm90;

TEST_CASE("flash_attention dq workspace: each row's columns are a permutation that keeps 16-byte chunks whole") {
  for (int q = 0; q < kDqBlock; ++q) {
    std::set<int> cols;
    for (int d = 0; d < kDqBlock; ++d) {
      const int c = dq_accum_col(q, d);
      CHECK(c >= 0);
      CHECK(c < kDqBlock);
      cols.insert(c);
      // A chunk of 4 columns from a multiple of 4 stays whole and in order: float2 stores of column pairs and the
      // conversion's float4 loads address contiguous floats.
      if (d % 4 != 0) CHECK(c == dq_accum_col(q, d - 1) + 1);
      else CHECK(c % 4 == 0);
    }
    CHECK(cols.size() == static_cast<size_t>(kDqBlock));  // a bijection: no two columns share a float
  }
}

TEST_CASE("flash_attention dq workspace: a warp's float2 stores of a fragment take two wavefronts, at reduce_dq's addresses") {
  // Register pair i of lane l: row 16 w + l / 4 + 8 ((i >> 1) & 1), columns 8 (i / 4) + 2 (l % 4), + 1 (the m64n64
  // accumulator fragment). Shared memory has 32 banks of 4 bytes; a warp's 256 bytes need two wavefronts at least,
  // which is the case when no bank is hit more than twice.
  for (int w = 0; w < 4; ++w)
    for (int i = 0; i < kDqBlock / 2; i += 2) {
      std::vector<int> hits(32, 0);
      for (int lane = 0; lane < 32; ++lane) {
        const int q = 16 * w + lane / 4 + 8 * ((i >> 1) & 1), d = 8 * (i / 4) + 2 * (lane % 4);
        const int word = q * kDqBlock + dq_accum_col(q, d);
        // reduce_dq's split address (base + chunk + row step) is this element's.
        CHECK(dq_stage_base(w, lane) + dq_stage_chunk(i, lane) + dq_stage_row(i) == static_cast<uint32_t>(4 * word));
        CHECK(word % 2 == 0);  // float2-aligned
        ++hits[static_cast<size_t>(word % 32)];
        ++hits[static_cast<size_t>((word + 1) % 32)];
      }
      for (int h : hits) CHECK(h == 2);
    }
}

TEST_CASE("flash_attention dq workspace: the 64 x 64 blocks tile (B, H, Sq_pad, D) exactly, 16 KB each") {
  CHECK(kDqBlockBytes == 16384u);
  for (int D : {64, 128}) {
    const int B = 3, H = 5, Sq_pad = 384;  // Sq padded to the 128-query tiles
    std::set<int64_t> starts;
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h)
        for (int qb = 0; qb < Sq_pad / kDqBlock; ++qb)
          for (int db = 0; db < D / kDqBlock; ++db) {
            const int64_t s = dq_accum_block(b, h, qb, db, H, Sq_pad, D);
            CHECK(s % (kDqBlock * kDqBlock) == 0);
            starts.insert(s);
          }
    const int64_t blocks = static_cast<int64_t>(B) * H * (Sq_pad / kDqBlock) * (D / kDqBlock);
    CHECK(static_cast<int64_t>(starts.size()) == blocks);  // distinct
    CHECK(*starts.rbegin() == (blocks - 1) * kDqBlock * kDqBlock);  // and contiguous: B H Sq_pad D floats in all
  }
}

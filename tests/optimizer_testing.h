// Helpers shared by the optimizer tests (host and CUDA): a flat parameter layout made by a test, which
// elements lie inside its slots, and a random flat buffer over it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "runtime/param.h"

namespace xfr::testing {

// Slots over a flat buffer, as a ParamStore lays them out (each test file makes its own awkward ones).
struct Layout {
  std::vector<ParamSlot> slots;
  size_t flat_size = 0;
};

inline std::vector<bool> in_slot_mask(const Layout& l) {
  std::vector<bool> m(l.flat_size, false);
  for (const ParamSlot& s : l.slots)
    for (size_t i = 0; i < s.numel; ++i) m[s.offset + i] = true;
  return m;
}

// A flat buffer with `pad` in the padding and uniform values in [-scale, scale] inside the slots.
inline std::vector<float> random_buffer(const Layout& l, uint32_t seed, float scale, float pad) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  const std::vector<bool> inside = in_slot_mask(l);
  std::vector<float> b(l.flat_size, pad);
  for (size_t i = 0; i < b.size(); ++i)
    if (inside[i]) b[i] = dist(rng);
  return b;
}

}  // namespace xfr::testing

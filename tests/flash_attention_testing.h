// Helpers shared by the flash_attention test files.
#pragma once
#include <cstdint>
#include <vector>

#include "runtime/tensor.h"

namespace xfr::testing {

// (B, X, Y, D) -> (B, Y, X, D): bhsd <-> bshd on the host, in the tensor's dtype.
inline Tensor swap12(const Tensor& t) {
  const auto v = t.to_doubles();
  const Shape& s = t.shape();
  const int64_t B = s[0], X = s[1], Y = s[2], D = s[3];
  std::vector<double> r(v.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t x = 0; x < X; ++x)
      for (int64_t y = 0; y < Y; ++y)
        for (int64_t d = 0; d < D; ++d)
          r[static_cast<size_t>(((b * Y + y) * X + x) * D + d)] = v[static_cast<size_t>(((b * X + x) * Y + y) * D + d)];
  const Tensor out = Tensor::from_vector(r, {B, Y, X, D});
  return t.dtype() == DType::f64 ? out : out.to(t.dtype());
}

}  // namespace xfr::testing

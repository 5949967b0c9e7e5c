// Shapes and their arithmetic.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace xfr {

using Shape = std::vector<int64_t>;

inline int64_t numel_of(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

// "(2, 3, 4)"
std::string shape_str(const Shape& s);

// Contiguous (row-major) strides for a shape, in elements.
Shape contiguous_strides(const Shape& s);

// Normalises a possibly negative axis against rank; throws naming `op` when out of range.
int normalize_axis(int64_t axis, size_t rank, const char* op);

// NumPy broadcasting of two shapes; throws naming `op` when they do not broadcast.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

}  // namespace xfr

// Odometer: strided index walking for CPU kernels over non-contiguous layouts (ops/cpu/reduce.cpp,
// ops/cpu/shape_ops.cpp). It steps through the flat row-major indices of a shape and keeps the matching
// element offset under arbitrary strides, without a division per step.
#pragma once
#include <cstdint>
#include <vector>

#include "runtime/shape.h"

namespace xfr::cpu {

// Walks flat indices over `sizes` (row-major) from `start`, tracking the offset under `strides`.
struct Odometer {
  const Shape& sizes;
  const Shape& strides;
  std::vector<int64_t> idx;
  int64_t off = 0;
  Odometer(const Shape& sizes, const Shape& strides, int64_t start)
      : sizes(sizes), strides(strides), idx(sizes.size()) {
    for (size_t d = sizes.size(); d-- > 0;) {
      idx[d] = start % sizes[d];
      start /= sizes[d];
      off += idx[d] * strides[d];
    }
  }
  void next() {
    for (size_t d = sizes.size(); d-- > 0;) {
      ++idx[d];
      off += strides[d];
      if (idx[d] < sizes[d]) return;
      off -= idx[d] * strides[d];
      idx[d] = 0;
    }
  }
};

}  // namespace xfr::cpu

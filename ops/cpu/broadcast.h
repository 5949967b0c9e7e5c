// Broadcast indexing for CPU kernels: maps the row-major index space of an output shape onto inputs
// whose shapes broadcast to it (NumPy rules: shapes aligned at the end, size-1 axes repeat).
#pragma once
#include <cstdint>
#include <vector>

#include "runtime/shape.h"

namespace xfr::cpu {

// Strides (in elements) of a contiguous input of shape `in`, laid over the axes of `out`; 0 where the
// input is broadcast.
inline Shape broadcast_strides(const Shape& in, const Shape& out) {
  Shape st(out.size(), 0);
  const Shape cs = contiguous_strides(in);
  const size_t lead = out.size() - in.size();
  for (size_t i = 0; i < in.size(); ++i) st[lead + i] = in[i] == 1 ? 0 : cs[i];
  return st;
}

// The offset of an input for the first element of output row `row`, where a row is the last axis.
inline int64_t row_offset(int64_t row, const Shape& out, const Shape& strides) {
  int64_t off = 0;
  for (size_t d = out.size() - 1; d-- > 0;) {
    const int64_t idx = row % out[d];
    row /= out[d];
    off += idx * strides[d];
  }
  return off;
}

}  // namespace xfr::cpu

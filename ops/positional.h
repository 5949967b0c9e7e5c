// The sinusoidal position table of "Attention Is All You Need", as xFormers' SinePositionalEmbedding
// builds it:  pe[t, c] = sin(t * w_c) for even c, cos(t * w_c) for odd c,
//             w_c = exp(-ln(10000) * 2 floor(c / 2) / C).
//   no inputs -> (T, C) in `dtype`.
#pragma once
#include <cstdint>
#include "runtime/graph.h"

namespace xfr {

class SinePositionsOp final : public Op {
 public:
  SinePositionsOp(int64_t seq_len, int64_t dim, DType dtype) : seq_len(seq_len), dim(dim), dtype(dtype) {}
  std::string name() const override { return "sine_positions"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  int64_t seq_len, dim;
  DType dtype;
};

Value sine_positions(Graph& g, int64_t seq_len, int64_t dim, DType dtype = DType::f32, const std::string& name = {});

}  // namespace xfr

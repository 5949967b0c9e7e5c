// Bias add over the last axis, fused: y = x + b.
//   x: (..., C), b: (C)  ->  y: (..., C)
// Backward: dx = dy, db = column sums of dy over every leading axis (reduce_sum's leading-axes path:
// contiguous rows accumulated in double per column block).
#pragma once
#include "runtime/graph.h"

namespace xfr {

class BiasAddOp final : public Op {
 public:
  std::string name() const override { return "bias_add"; }
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;  // (x, b) -> y
  std::vector<Value> backward(const BackwardContext& ctx) const override;
};

// ---- front end ----------------------------------------------------------------------------------------
// x: (..., C), b: (C) -> (..., C)
Value bias_add(Value x, Value b, const std::string& name = {});

}  // namespace xfr

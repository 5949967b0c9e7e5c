// Dtype conversion, the seam of mixed precision: fp32 master weights are cast to bf16/f16 where a
// model computes in low precision, and the gradient flows back through the opposite cast (so parameter
// gradients arrive in fp32 and accumulate into the fp32 gradient buffer).
//   x: (*) any floating dtype  ->  (*) in `dtype`  (round to nearest even, as Tensor::to)
#pragma once
#include "runtime/graph.h"

namespace xfr {

class CastOp final : public Op {
 public:
  explicit CastOp(DType dtype) : dtype(dtype) {}
  std::string name() const override { return "cast"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  DType dtype;
};

// x itself when it already has `dtype`.
Value cast(Value x, DType dtype, const std::string& name = {});

}  // namespace xfr

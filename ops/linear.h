// Fused linear layer: y = act(x · Wᵀ + b) in one op, so a GPU applies the bias and the activation in the
// GEMM's epilogue (cuBLASLt) instead of two more passes over the output. The CPU kernel runs the same
// steps as the unfused ops (sgemm, bias add, activation), so its results are those of the composite.
//   x: (..., K), w: (N, K), b: (N) (with bias)  ->  y: (..., N), and with an activation also
//   pre: (..., N), x·Wᵀ + b before the activation (the backward's input)
// Activations: none, or gelu_tanh (the one cuBLASLt fuses both ways). The backward is built from the
// matmul, reduce and activation_backward ops (the same graph autodiff gives the composite).
#pragma once
#include "ops/activation.h"
#include "runtime/graph.h"

namespace xfr {

class LinearOp final : public Op {
 public:
  LinearOp(bool has_bias, bool gelu_tanh) : has_bias(has_bias), gelu_tanh(gelu_tanh) {}
  std::string name() const override { return "linear"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;  // (x, w[, b]) -> y[, pre]
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  bool has_bias, gelu_tanh;
};

// y = x wᵀ (+ b), then gelu_tanh when asked. b may be undefined.
Value linear_op(Value x, Value w, Value b, bool gelu_tanh, const std::string& name = {});

}  // namespace xfr

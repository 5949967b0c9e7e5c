// Fused linear layer: y = act(x · Wᵀ + b) in one op, so a GPU applies the bias and the activation in the
// GEMM's epilogue (cuBLASLt) instead of two more passes over the output. The CPU kernel runs the same
// steps as the unfused ops (sgemm, bias add, activation), so its results are those of the composite.
//   x: (..., K), w: (N, K), b: (N) (with bias)  ->  y: (..., N), and with an activation also
//   pre: (..., N), x·Wᵀ + b before the activation (the backward's input)
// With a residual r (..., N) (no activation): y = x · Wᵀ + b + r, a transformer block's output projection adding
// the residual stream in the GEMM (cuBLASLt's C input) instead of in the norm that reads the sum next: the norm then
// reads one tensor and writes one (factory/model_builder.cpp). On the CPU r is added after the bias, as the
// composite (r + (x · Wᵀ + b), the same bits). Its gradient is y's.
// Activations: none, or gelu_tanh (the one cuBLASLt fuses both ways). The backward is built from the
// matmul, activation_backward and linear_weight_grad ops (the graph autodiff gives the composite, with the
// weight's and the bias's gradients in one node).
//
// linear_weight_grad: the weight and bias gradients of a linear layer in one op, so a GPU sums the bias gradient
// in the weight-gradient GEMM's epilogue (cuBLASLt's BGRAD) instead of a separate pass over g.
//   g: (M, N), x: (M, K)  ->  dw: (N, K) = gᵀ x, db: (N) = sum over the M rows of g
// Both in g's dtype, accumulated in fp32. The CPU kernel runs the matmul and reduce kernels, so its results are
// those of the composite.
#pragma once
#include "ops/activation.h"
#include "runtime/graph.h"

namespace xfr {

class LinearOp final : public Op {
 public:
  LinearOp(bool has_bias, bool gelu_tanh, bool has_residual = false)
      : has_bias(has_bias), gelu_tanh(gelu_tanh), has_residual(has_residual) {}
  std::string name() const override { return "linear"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;  // (x, w[, b][, r]) -> y[, pre]
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  // pre is wanted only by the backward: an inference graph leaves it out (the GEMM's GELU epilogue then stores no
  // auxiliary output: one pass less over the layer's widest activation).
  bool output_optional(int output) const override { return output == 1 && gelu_tanh; }
  int residual_index() const { return has_residual ? 2 + int(has_bias) : -1; }
  bool has_bias, gelu_tanh;
  bool has_residual = false;  // y += r (never with gelu_tanh)
};

// y = x wᵀ (+ b), then gelu_tanh when asked. b may be undefined.
Value linear_op(Value x, Value w, Value b, bool gelu_tanh, const std::string& name = {});
// y = x wᵀ (+ b) + residual: residual (..., N) of x's dtype. b may be undefined.
Value linear_residual_op(Value x, Value w, Value b, Value residual, const std::string& name = {});
// When v is the output of a linear node without activation or residual that no node reads yet (Graph::fresh_producer),
// that layer rebuilt to add `residual` in its GEMM (linear_residual_op, named "<the node's name>_residual"): v +
// residual with no add pass. Else undefined (the caller adds). The old node is then read by nothing and never
// scheduled.
Value fold_residual_into_linear(Value v, Value residual);

// matmul_dgelu: a linear layer's input gradient times the derivative of the GELU before it, in one op, so a GPU
// applies the derivative in the GEMM's epilogue (cuBLASLt's DGELU) instead of a separate pass over the product:
//   a: (*, M, K), b: (K, N), pre: (*, M, N)  ->  (a · b) * gelu_tanh'(pre)
// The backward of a gelu linear layer builds it when its output gradient is such a product (see LinearOp's
// backward). The CPU kernel runs the matmul and activation_backward kernels, so its results are the composite's.
class MatMulDGeluOp final : public Op {
 public:
  std::string name() const override { return "matmul_dgelu"; }
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;  // (a, b, pre) -> (da)
};

class LinearWeightGradOp final : public Op {
 public:
  std::string name() const override { return "linear_weight_grad"; }
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;  // (g, x) -> (dw, db)
  bool stores_f32(int) const override { return true; }  // CUDA: the GEMM's f32 C and an f32 column sum
};

struct LinearWeightGrads {
  Value dw;  // (N, K)
  Value db;  // (N)
};
// g: (M, N), x: (M, K), both 2-D of one floating dtype.
LinearWeightGrads linear_weight_grad(Value g, Value x, const std::string& name = {});

}  // namespace xfr

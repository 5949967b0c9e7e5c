// Elementwise activations (one op, ActivationOp{kind, params}, with one backward op) and StarReLU, whose
// scale and bias are learnable and so form an op of their own.
//
//   relu          max(x, 0)
//   gelu          x * Phi(x) = x/2 (1 + erf(x / sqrt 2))                  torch GELU(approximate='none')
//   gelu_tanh     x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))           torch GELU(approximate='tanh')
//   leaky_relu    x >= 0 ? x : negative_slope * x                          negative_slope default 0.01
//   squared_relu  relu(x)^2                                                (Primer)
//   smelu         0 for x <= -beta; (x + beta)^2 / (4 beta) for |x| < beta; x for x >= beta   beta default 2
//   silu          x * sigmoid(x)
//   sigmoid       1 / (1 + exp(-x))
//   star_relu     scale * relu(x)^2 + bias, scale and bias 1-element tensors (MetaFormer's StarReLU; the
//                 usual initial values 0.8944 and -0.4472 are the component's business)
//
// Derivatives at the kinks follow torch: relu' (0) = 0, leaky_relu'(0) = negative_slope.
// On the CPU, f64 uses libm (erf, exp, tanh); f32 uses branch-free polynomial forms that vectorise, within
// a few float ulps of the f64 result (see ops/cpu/activation.cpp).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "runtime/graph.h"

namespace xfr {

enum class ActivationKind : uint8_t {
  relu, gelu, gelu_tanh, leaky_relu, squared_relu, smelu, silu, sigmoid, star_relu
};

struct ActivationParams {
  double negative_slope = 0.01;  // leaky_relu: torch.nn.LeakyReLU's default
  double beta = 2.0;             // smelu: xFormers' SmeLU default (half-width of the quadratic region)
};

// What a config names: a kind and its parameters.
struct ActivationSpec {
  ActivationKind kind = ActivationKind::gelu;
  ActivationParams params;
};

const char* activation_name(ActivationKind kind);
// "relu", "gelu", "gelu_tanh", "leaky_relu", "squared_relu", "smelu", "silu", "sigmoid", "star_relu" (exact,
// lower case). Throws xfr::Error("activation", "unknown activation 'x' (known: ...)").
ActivationSpec activation_by_name(const std::string& name);

// inputs (x (...)) -> outputs (y (...)). Every kind except star_relu (use StarReluOp).
class ActivationOp final : public Op {
 public:
  ActivationOp(ActivationKind kind, ActivationParams params = {}) : kind(kind), params(params) {}
  std::string name() const override { return "activation"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  ActivationKind kind;
  ActivationParams params;
};

// inputs (x (...), dy (...)) -> outputs (dx (...)),  dx = dy * f'(x)
class ActivationBackwardOp final : public Op {
 public:
  ActivationBackwardOp(ActivationKind kind, ActivationParams params = {}) : kind(kind), params(params) {}
  std::string name() const override { return "activation_backward"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  ActivationKind kind;
  ActivationParams params;
};

// inputs (x (...), scale (1), bias (1)) -> outputs (y (...)),  y = scale * relu(x)^2 + bias
// scale and bias: any shape with one element, x's dtype.
class StarReluOp final : public Op {
 public:
  std::string name() const override { return "star_relu"; }
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
};

// inputs (x (...), scale (1), dy (...)) -> outputs (dx (...), dscale (scale's shape), dbias (scale's shape))
//   dx = dy * 2 scale relu(x),  dscale = sum(dy * relu(x)^2),  dbias = sum(dy)
class StarReluBackwardOp final : public Op {
 public:
  std::string name() const override { return "star_relu_backward"; }
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
};

// ---- front end ----------------------------------------------------------------------------------------
// x: any shape. Returns y (x's shape). Throws for star_relu (it needs its learnable scale and bias).
Value activation(Value x, const ActivationSpec& spec, const std::string& name = {});
Value activation(Value x, ActivationKind kind, const std::string& name = {});
Value relu(Value x, const std::string& name = {});
Value gelu(Value x, const std::string& name = {});
Value gelu_tanh(Value x, const std::string& name = {});
Value leaky_relu(Value x, double negative_slope = 0.01, const std::string& name = {});
Value squared_relu(Value x, const std::string& name = {});
Value smelu(Value x, double beta = 2.0, const std::string& name = {});
Value silu(Value x, const std::string& name = {});
Value sigmoid(Value x, const std::string& name = {});
// x: any shape; scale, bias: 1 element each (learnable). Returns y (x's shape).
Value star_relu(Value x, Value scale, Value bias, const std::string& name = {});

}  // namespace xfr

// Normalisation over the last axis: LayerNorm (mean and biased variance, as torch.nn.LayerNorm) and
// RMSNorm (root mean square, as torch.nn.RMSNorm / LLaMA), each with an optional elementwise affine.
//
//   layernorm  inputs  (x (..., C), [gamma (C)], [beta (C)])
//              outputs (y (..., C), mean (rows), rstd (rows))        rows = numel(x) / C
//              y = (x - mean) * rstd * gamma + beta,  rstd = 1 / sqrt(var + eps),  var = mean((x - mean)^2)
//   rmsnorm    inputs  (x (..., C), [gamma (C)])
//              outputs (y (..., C), rstd (rows))
//              y = x * rstd * gamma,  rstd = 1 / sqrt(mean(x^2) + eps)
//
// Optional inputs: the op's has_gamma / has_beta fields say which are present; present ones follow x in
// the order above (so a layernorm with beta and no gamma takes (x, beta)). The front-end functions take an
// undefined Value for "absent". gamma and beta have x's dtype. mean and rstd are saved for the backward;
// no gradient flows through them (a gradient reaching them is refused when the backward is built). They are
// f32 when x is 16-bit (bf16/f16, GPU mixed precision: statistics are computed in fp32 and kept so), else
// x's dtype (norm_stat_dtype).
// The CUDA kernels compute in fp32 for every dtype and round y (dx, dgamma, dbeta) once.
// The CPU computes each row in two passes in the input's precision (f32 or f64), in parallel over rows.
#pragma once
#include <memory>

#include "runtime/graph.h"

namespace xfr {

// The dtype of the saved statistics (mean, rstd) for x of dtype `x`: f32 for f16/bf16, else x.
inline DType norm_stat_dtype(DType x) { return x == DType::f16 || x == DType::bf16 ? DType::f32 : x; }

class LayerNormOp final : public Op {
 public:
  LayerNormOp(double eps, bool has_gamma, bool has_beta) : eps(eps), has_gamma(has_gamma), has_beta(has_beta) {}
  std::string name() const override { return "layernorm"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  double eps;
  bool has_gamma, has_beta;
};

// inputs  (x (..., C), mean (rows), rstd (rows) (norm_stat_dtype), [gamma (C) when has_gamma], dy (..., C))
// outputs (dx (..., C), [dgamma (C) when want_dgamma], [dbeta (C) when want_dbeta])
// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * gamma,  xhat = (x - mean) * rstd
// dgamma = sum over rows of dy * xhat,  dbeta = sum over rows of dy.
class LayerNormBackwardOp final : public Op {
 public:
  LayerNormBackwardOp(bool has_gamma, bool want_dgamma, bool want_dbeta)
      : has_gamma(has_gamma), want_dgamma(want_dgamma), want_dbeta(want_dbeta) {}
  std::string name() const override { return "layernorm_backward"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  bool has_gamma, want_dgamma, want_dbeta;
};

class RMSNormOp final : public Op {
 public:
  RMSNormOp(double eps, bool has_gamma) : eps(eps), has_gamma(has_gamma) {}
  std::string name() const override { return "rmsnorm"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  double eps;
  bool has_gamma;
};

// inputs  (x (..., C), rstd (rows) (norm_stat_dtype), [gamma (C) when has_gamma], dy (..., C))
// outputs (dx (..., C), [dgamma (C) when want_dgamma])
// dx = rstd * (g - xhat * mean(g * xhat)),  g = dy * gamma,  xhat = x * rstd;  dgamma = sum over rows of dy * xhat.
class RMSNormBackwardOp final : public Op {
 public:
  RMSNormBackwardOp(bool has_gamma, bool want_dgamma) : has_gamma(has_gamma), want_dgamma(want_dgamma) {}
  std::string name() const override { return "rmsnorm_backward"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  bool has_gamma, want_dgamma;
};

// ---- front end ----------------------------------------------------------------------------------------
// x: (..., C); gamma, beta: (C) or undefined (absent). Returns y (..., C).
// eps 1e-5: torch.nn.LayerNorm's default.
Value layernorm(Value x, Value gamma, Value beta, double eps = 1e-5, const std::string& name = {});
// x: (..., C); gamma: (C) or undefined. Returns y (..., C).
// eps 1e-6: the value LLaMA and T5 use (torch.nn.RMSNorm defaults to the dtype's epsilon instead).
Value rmsnorm(Value x, Value gamma, double eps = 1e-6, const std::string& name = {});

}  // namespace xfr

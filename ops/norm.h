// Normalisation over the last axis: LayerNorm (mean and biased variance, as torch.nn.LayerNorm) and
// RMSNorm (root mean square, as torch.nn.RMSNorm / LLaMA), each with an optional elementwise affine.
//
//   layernorm  inputs  (x (..., C), [residual (..., C)], [gamma (C)], [beta (C)])
//              outputs (y (..., C), mean (rows), rstd (rows), [sum (..., C)])      rows = numel(x) / C
//              y = (s - mean) * rstd * gamma + beta,  rstd = 1 / sqrt(var + eps),  var = mean((s - mean)^2)
//              s = x, or x + residual (rounded to x's dtype, as the add op would) when has_residual: the
//              residual add of a transformer block fused into its norm (torch.compile fuses the same pair),
//              one pass instead of the add's three and the norm's two. sum = s is written when write_sum
//              (pre-norm: s is the residual stream that goes on); post-norm needs only y, and its backward
//              recomputes s with an add node. The residual may also broadcast over x's leading axes: its
//              shape a suffix of x's, (R, C) or (..., R, C) read as rows of R, so row r of x adds row r % R (a
//              positional table (T, C) added to embeddings (B, T, C), the add the first block's norm takes in;
//              leading 1s are dropped first, so (1, T, C) is the same);
//              its gradient is then ds summed over the broadcast axes.
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

// Whether a residual of shape `residual` can be added to x of shape `x` by a layernorm (LayerNormOp::has_residual):
// x's shape, or one whose shape with its leading 1s dropped is a suffix of x's (read as rows repeating over x's rows).
bool residual_broadcasts(const Shape& residual, const Shape& x);

// The dtype of the saved statistics (mean, rstd) for x of dtype `x`: f32 for f16/bf16, else x.
inline DType norm_stat_dtype(DType x) { return x == DType::f16 || x == DType::bf16 ? DType::f32 : x; }

class LayerNormOp final : public Op {
 public:
  LayerNormOp(double eps, bool has_gamma, bool has_beta, bool has_residual = false, bool write_sum = false)
      : eps(eps), has_gamma(has_gamma), has_beta(has_beta), has_residual(has_residual), write_sum(write_sum) {}
  std::string name() const override { return "layernorm"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  // Input positions of the optional inputs (-1 when absent).
  int residual_index() const { return has_residual ? 1 : -1; }
  int gamma_index() const { return has_gamma ? 1 + int(has_residual) : -1; }
  int beta_index() const { return has_beta ? 1 + int(has_residual) + int(has_gamma) : -1; }
  double eps;
  bool has_gamma, has_beta;
  bool has_residual = false;  // s = x + residual
  bool write_sum = false;     // output 3 is s (needs has_residual)
};

// inputs  (x (..., C), mean (rows), rstd (rows) (norm_stat_dtype), [gamma (C) when has_gamma], dy (..., C),
//          [dadd (..., C) when has_dadd])
// outputs (dx (..., C), [dgamma (C) when want_dgamma], [dbeta (C) when want_dbeta], [dx_sum (C) when want_dx_sum])
// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) (+ dadd),  g = dy * gamma,  xhat = (x - mean) * rstd
// dgamma = sum over rows of dy * xhat,  dbeta = sum over rows of dy,  dx_sum = sum over rows of dx.
// dadd is another gradient of the norm's input, added in the same pass (a residual stream's: the gradient of
// the sum a pre-norm add_layernorm writes out, or, for a plain norm, what its input's other readers gave it, taken
// from the autodiff through BackwardContext::absorb): the separate add's two reads and one write are saved.
// dx_sum is the bias gradient of a linear layer whose output the norm reads (a transformer block's attention and
// MLP output projections: LinearOp's backward asks for it through Graph::row_sum_of, which extends the node by
// with_row_sum), summed while dx is in registers instead of by a column sum that reads dx again. On the GPU it is
// summed from dx in fp32, before dx is rounded.
class LayerNormBackwardOp final : public Op {
 public:
  LayerNormBackwardOp(bool has_gamma, bool want_dgamma, bool want_dbeta, bool has_dadd = false,
                      bool want_dx_sum = false)
      : has_gamma(has_gamma), want_dgamma(want_dgamma), want_dbeta(want_dbeta), has_dadd(has_dadd),
        want_dx_sum(want_dx_sum) {}
  std::string name() const override { return "layernorm_backward"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  int dy_index() const { return 3 + int(has_gamma); }
  // Output positions of the optional outputs (-1 when absent).
  int dgamma_output() const { return want_dgamma ? 1 : -1; }
  int dbeta_output() const { return want_dbeta ? 1 + int(want_dgamma) : -1; }
  int dx_sum_output() const { return want_dx_sum ? 1 + int(want_dgamma) + int(want_dbeta) : -1; }
  std::shared_ptr<const Op> with_row_sum(int output) const override;  // dx's: the op with want_dx_sum
  int row_sum_output(int output) const override { return output == 0 ? dx_sum_output() : -1; }
  bool has_gamma, want_dgamma, want_dbeta;
  bool has_dadd = false;
  bool want_dx_sum = false;
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
// The residual add fused into the norm: y = layernorm(x + residual); sum = x + residual when want_sum (else
// undefined). x, residual: (..., C) of one dtype.
struct ResidualLayerNorm {
  Value y, sum;
};
ResidualLayerNorm add_layernorm(Value x, Value residual, Value gamma, Value beta, bool want_sum, double eps = 1e-5,
                                const std::string& name = {});
// x: (..., C); gamma: (C) or undefined. Returns y (..., C).
// eps 1e-6: the value LLaMA and T5 use (torch.nn.RMSNorm defaults to the dtype's epsilon instead).
Value rmsnorm(Value x, Value gamma, double eps = 1e-6, const std::string& name = {});

}  // namespace xfr

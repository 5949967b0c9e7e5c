// Softmax over the last axis of scale * x + mask, with an optional causal mask.
//
//   softmax   inputs  (x (..., Sq, Sk), [mask, broadcastable to x: (Sk), (Sq, Sk), (B, 1, Sq, Sk), ...])
//             outputs (y (..., Sq, Sk))
//             y[..., i, :] = softmax_j(scale * x[..., i, j] + mask[..., i, j]),  j masked out when causal and j > i
//
// mask is additive (0 keeps, -inf removes; any finite value biases) and has x's dtype; has_mask says whether
// it is present (the front end takes an undefined Value for "absent").
// causal is top-left aligned, as torch's scaled_dot_product_attention(is_causal=True): query i sees keys
// j <= i, i.e. the mask tril(ones(Sq, Sk)), whatever Sq and Sk are (with Sq > Sk, queries i >= Sk see all
// keys; with Sq < Sk, the last keys are seen by no query). It needs x of rank >= 2.
// A row whose every entry is masked (all -inf) gives zeros, not NaN, and its gradient is zero.
#pragma once
#include <memory>

#include "runtime/graph.h"

namespace xfr {

class SoftmaxOp final : public Op {
 public:
  SoftmaxOp(double scale, bool causal, bool has_mask) : scale(scale), causal(causal), has_mask(has_mask) {}
  std::string name() const override { return "softmax"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  double scale;
  bool causal, has_mask;
};

// inputs (y (..., Sk), dy (..., Sk)) -> outputs (dx (..., Sk), [dz (..., Sk) when emit_dz])
//   dz = y * (dy - sum_j(y * dy)),  dx = scale * dz
// where y == 0 (masked or underflowed), dz is 0 whatever dy is: a 0 * inf never makes a NaN.
// dz is the gradient of the pre-softmax sum scale * x + mask, i.e. the mask's gradient before sum_to.
class SoftmaxBackwardOp final : public Op {
 public:
  SoftmaxBackwardOp(double scale, bool emit_dz) : scale(scale), emit_dz(emit_dz) {}
  std::string name() const override { return "softmax_backward"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  double scale;
  bool emit_dz;
};

// ---- front end ----------------------------------------------------------------------------------------
// x: (..., Sq, Sk); mask: broadcastable to x, or undefined. Returns y, x's shape.
Value softmax(Value x, Value mask = {}, double scale = 1.0, bool causal = false, const std::string& name = {});

}  // namespace xfr

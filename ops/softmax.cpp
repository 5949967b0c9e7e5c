#include "ops/softmax.h"

#include <cmath>

#include "ops/elementwise.h"
#include "runtime/error.h"

namespace xfr {

std::string SoftmaxOp::attrs() const { return str_cat("scale=", scale, ", causal=", causal, ", mask=", has_mask); }

std::vector<TensorMeta> SoftmaxOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 1u + has_mask, "softmax", "takes ", 1 + has_mask, " inputs (x", has_mask ? ", mask" : "",
           "), got ", in.size());
  const TensorMeta& x = in[0];
  XF_CHECK(is_floating(x.dtype), "softmax", "x must be floating point, got ", x.str());
  XF_CHECK(!x.shape.empty(), "softmax", "x needs at least one axis, got ", x.str());
  XF_CHECK(!causal || x.shape.size() >= 2, "softmax", "causal needs x of shape (..., Sq, Sk), got ", x.str());
  XF_CHECK(std::isfinite(scale), "softmax", "scale must be finite, got ", scale);
  if (has_mask) {
    const TensorMeta& m = in[1];
    XF_CHECK(m.dtype == x.dtype, "softmax", "mask ", m.str(), " must have the dtype of x ", x.str(),
             " (an additive mask: 0 keeps, -inf removes)");
    bool ok = m.shape.size() <= x.shape.size();
    for (size_t i = 0; ok && i < m.shape.size(); ++i) {
      const int64_t md = m.shape[m.shape.size() - 1 - i], xd = x.shape[x.shape.size() - 1 - i];
      ok = md == xd || md == 1;
    }
    XF_CHECK(ok, "softmax", "mask shape ", shape_str(m.shape), " does not broadcast to scores ", shape_str(x.shape));
  }
  return {x};
}

std::vector<Value> SoftmaxOp::backward(const BackwardContext& ctx) const {
  const Value dy = ctx.grad(0);
  const bool need_x = ctx.needs_grad(0), need_m = has_mask && ctx.needs_grad(1);
  std::vector<Value> grads(ctx.node.inputs.size());
  if (!dy.defined() || (!need_x && !need_m)) return grads;
  const Value y = ctx.output(0);
  Value dx, dz;
  if (!need_x) {
    dz = ctx.graph.add(std::make_shared<SoftmaxBackwardOp>(1.0, false), {y, dy}, ctx.name("softmax"))[0];
  } else if (need_m && scale != 1.0) {
    const auto outs = ctx.graph.add(std::make_shared<SoftmaxBackwardOp>(scale, true), {y, dy}, ctx.name("softmax"));
    dx = outs[0];
    dz = outs[1];
  } else {
    dx = ctx.graph.add(std::make_shared<SoftmaxBackwardOp>(scale, false), {y, dy}, ctx.name("softmax"))[0];
    dz = dx;  // scale == 1 (or unused)
  }
  grads[0] = dx;
  if (need_m) grads[1] = sum_to(dz, ctx.input(1).shape(), ctx.name("dmask"));
  return grads;
}

std::string SoftmaxBackwardOp::attrs() const { return str_cat("scale=", scale, ", emit_dz=", emit_dz); }

std::vector<TensorMeta> SoftmaxBackwardOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 2, "softmax_backward", "takes 2 inputs (y, dy), got ", in.size());
  XF_CHECK(is_floating(in[0].dtype) && !in[0].shape.empty(), "softmax_backward", "bad y ", in[0].str());
  XF_CHECK(in[0] == in[1], "softmax_backward", "y ", in[0].str(), " and dy ", in[1].str(), " differ");
  if (emit_dz) return {in[0], in[0]};
  return {in[0]};
}

Value softmax(Value x, Value mask, double scale, bool causal, const std::string& name) {
  XF_CHECK(x.defined(), "softmax", "undefined x");
  std::vector<Value> in{x};
  if (mask.defined()) in.push_back(mask);
  return x.graph->add(std::make_shared<SoftmaxOp>(scale, causal, mask.defined()), in, name)[0];
}

}  // namespace xfr

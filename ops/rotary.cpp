#include "ops/rotary.h"

#include "runtime/error.h"

namespace xfr {

std::string RotaryOp::attrs() const {
  return str_cat("offset=", offset, ", inverse=", inverse ? "true" : "false", ", seq_axis=", seq_axis);
}

RotaryDims rotary_dims(const Shape& x, int seq_axis) {
  RotaryDims d;
  const size_t r = x.size(), sa = r - static_cast<size_t>(-seq_axis);
  d.hd = x.back();
  d.S = x[sa];
  for (size_t i = sa + 1; i + 1 < r; ++i) d.inner *= x[i];
  d.Z = 1;
  for (size_t i = 0; i < sa; ++i) d.Z *= x[i];
  return d;
}

std::vector<TensorMeta> RotaryOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 1, "rotary", "takes 1 input (x), got ", in.size());
  const TensorMeta& x = in[0];
  XF_CHECK(seq_axis == -2 || seq_axis == -3, "rotary", "seq_axis must be -2 or -3, got ", seq_axis);
  XF_CHECK(x.shape.size() >= static_cast<size_t>(-seq_axis), "rotary", "x must be ",
           seq_axis == -2 ? "(..., S, hd) with rank >= 2" : "(..., S, H, hd) with rank >= 3", ", got ", x.str());
  XF_CHECK(is_floating(x.dtype), "rotary", "x must be floating point, got ", x.str());
  const int64_t hd = x.shape.back();
  XF_CHECK(hd >= 2 && hd % 2 == 0, "rotary", "the head dimension (last axis) must be even and >= 2 (pairs x[i], x[i + hd/2]), got x ",
           x.str());
  XF_CHECK(offset >= 0, "rotary", "offset must be >= 0, got ", offset, " for x ", x.str());
  return {x};
}

std::vector<Value> RotaryOp::backward(const BackwardContext& ctx) const {
  // y = R x with R orthogonal, so dx = R^T dy: the rotation by -angle.
  return {ctx.graph.add(std::make_shared<RotaryOp>(offset, !inverse, seq_axis), {ctx.grad(0)}, ctx.name("dx"))[0]};
}

Value rotary(Value x, int64_t offset, const std::string& name) {
  XF_CHECK(x.defined(), "rotary", "undefined x");
  return x.graph->add1(std::make_shared<RotaryOp>(offset, false), {x}, name);
}

Value rotary_bshd(Value x, int64_t offset, const std::string& name) {
  XF_CHECK(x.defined(), "rotary", "undefined x");
  return x.graph->add1(std::make_shared<RotaryOp>(offset, false, -3), {x}, name);
}

Value rotary_inverse(Value x, int64_t offset, const std::string& name) {
  XF_CHECK(x.defined(), "rotary", "undefined x");
  return x.graph->add1(std::make_shared<RotaryOp>(offset, true), {x}, name);
}

}  // namespace xfr

#include "ops/dropout.h"

#include <cmath>

#include "runtime/error.h"

namespace xfr {

namespace {
void check_p(double p) {
  XF_CHECK(p >= 0.0 && p < 1.0, "dropout", "p must be in [0, 1), got ", p);  // also refuses NaN
}
}  // namespace

uint32_t dropout_keep_threshold(double p) {
  check_p(p);
  // philox_uniform = (bits >> 8) * 2^-24 exactly, and p * 2^24 is exact in double (a power-of-two scaling),
  // so u >= p  <=>  (bits >> 8) >= p * 2^24  <=>  (bits >> 8) >= ceil(p * 2^24). At most 2^24 - 1 + 1.
  return static_cast<uint32_t>(std::ceil(p * 16777216.0));  // 16777216 = 2^24
}

std::string DropoutOp::attrs() const { return str_cat("p=", p); }

std::vector<TensorMeta> DropoutOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 1, "dropout", "takes 1 input (x), got ", in.size());
  XF_CHECK(is_floating(in[0].dtype), "dropout", "x must be floating point, got ", in[0].str());
  check_p(p);
  return {in[0]};
}

int64_t DropoutOp::random_numbers(const std::vector<TensorMeta>& in) const {
  return in.empty() ? 0 : numel_of(in[0].shape);
}

std::vector<Value> DropoutOp::backward(const BackwardContext& ctx) const {
  // The same mask and scale: replay the forward node's slice of the random stream.
  return {ctx.graph.add(std::make_shared<DropoutOp>(p), {ctx.grad(0)}, ctx.name("dx"), ctx.node.rng_offset)[0]};
}

Value dropout(Value x, double p, const std::string& name) {
  XF_CHECK(x.defined(), "dropout", "undefined x");
  check_p(p);
  if (p == 0.0) return x;
  return x.graph->add(std::make_shared<DropoutOp>(p), {x}, name)[0];
}

}  // namespace xfr

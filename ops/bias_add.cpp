#include "ops/bias_add.h"

#include "ops/reduce.h"
#include "runtime/error.h"

namespace xfr {

std::vector<TensorMeta> BiasAddOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 2, "bias_add", "takes 2 inputs (x, b), got ", in.size());
  const TensorMeta &x = in[0], &b = in[1];
  XF_CHECK(is_floating(x.dtype) && x.dtype == b.dtype, "bias_add", "x and b must share a floating dtype, got ",
           x.str(), " and ", b.str());
  XF_CHECK(!x.shape.empty() && b.shape.size() == 1 && b.shape[0] == x.shape.back(), "bias_add", "b ",
           shape_str(b.shape), " must be (C,) for x ", shape_str(x.shape), " of shape (..., C)");
  return {x};
}

std::vector<Value> BiasAddOp::backward(const BackwardContext& ctx) const {
  const Value x = ctx.input(0), gy = ctx.grad(0);
  Value dx, db;
  if (ctx.needs_grad(0)) dx = gy;
  if (ctx.needs_grad(1)) {
    std::vector<int64_t> leading;
    for (int64_t a = 0; a + 1 < static_cast<int64_t>(x.rank()); ++a) leading.push_back(a);
    db = leading.empty() ? gy : reduce_sum(gy, leading, false, ctx.name("db"));
  }
  return {dx, db};
}

Value bias_add(Value x, Value b, const std::string& name) {
  XF_CHECK(x.defined() && b.defined(), "bias_add", "undefined input");
  return x.graph->add1(std::make_shared<BiasAddOp>(), {x, b}, name);
}

}  // namespace xfr

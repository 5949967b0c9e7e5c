#include "ops/cast.h"

#include "runtime/error.h"

namespace xfr {

std::string CastOp::attrs() const { return str_cat("dtype=", dtype_name(dtype)); }

std::vector<TensorMeta> CastOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 1, "cast", "takes 1 input, got ", in.size());
  XF_CHECK(is_floating(in[0].dtype) && is_floating(dtype), "cast", "casts between floating dtypes, got ",
           in[0].str(), " to ", dtype_name(dtype));
  return {TensorMeta{in[0].shape, dtype}};
}

std::vector<Value> CastOp::backward(const BackwardContext& ctx) const {
  return {cast(ctx.grad(0), ctx.input(0).meta().dtype, ctx.name("dx"))};
}

Value cast(Value x, DType dtype, const std::string& name) {
  XF_CHECK(x.defined(), "cast", "undefined input");
  if (x.meta().dtype == dtype) return x;
  return x.graph->add1(std::make_shared<CastOp>(dtype), {x}, name);
}

}  // namespace xfr

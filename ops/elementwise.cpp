#include "ops/elementwise.h"

#include "runtime/error.h"

namespace xfr {

namespace {
const char* binary_name(BinaryKind k) {
  switch (k) {
    case BinaryKind::add: return "add";
    case BinaryKind::sub: return "sub";
    case BinaryKind::mul: return "mul";
    case BinaryKind::div: return "div";
  }
  return "?";
}
void check_float(const TensorMeta& m, const char* op, const char* what) {
  XF_CHECK(is_floating(m.dtype), op, what, " must be floating point, got ", m.str());
}
}  // namespace

std::string BinaryOp::attrs() const { return binary_name(kind); }

std::vector<TensorMeta> BinaryOp::infer(const std::vector<TensorMeta>& in) const {
  const char* op = binary_name(kind);
  XF_CHECK(in.size() == 2, op, "takes 2 inputs, got ", in.size());
  check_float(in[0], op, "a");
  XF_CHECK(in[0].dtype == in[1].dtype, op, "dtypes differ: ", in[0].str(), " and ", in[1].str(),
           " (no silent promotion)");
  return {TensorMeta{broadcast_shapes(in[0].shape, in[1].shape, op), in[0].dtype}};
}

std::vector<Value> BinaryOp::backward(const BackwardContext& ctx) const {
  const Value a = ctx.input(0), b = ctx.input(1), gy = ctx.grad(0);
  Value ga, gb;
  switch (kind) {
    case BinaryKind::add:
      ga = gy;
      gb = gy;
      break;
    case BinaryKind::sub:
      ga = gy;
      if (ctx.needs_grad(1)) gb = scale(gy, -1.0, ctx.name("neg"));
      break;
    case BinaryKind::mul:
      if (ctx.needs_grad(0)) ga = mul(gy, b, ctx.name("da"));
      if (ctx.needs_grad(1)) gb = mul(gy, a, ctx.name("db"));
      break;
    case BinaryKind::div:
      if (ctx.needs_grad(0)) ga = div(gy, b, ctx.name("da"));
      // d(a/b)/db = -a/b^2 = -(y/b)
      if (ctx.needs_grad(1)) gb = scale(div(mul(gy, ctx.output(0), ctx.name("gy_y")), b, ctx.name("gy_y_b")), -1.0,
                                        ctx.name("db"));
      break;
  }
  if (ga.defined() && ctx.needs_grad(0)) ga = sum_to(ga, a.shape(), ctx.name("sum_a"));
  if (gb.defined() && ctx.needs_grad(1)) gb = sum_to(gb, b.shape(), ctx.name("sum_b"));
  return {ctx.needs_grad(0) ? ga : Value{}, ctx.needs_grad(1) ? gb : Value{}};
}

std::string ScaleOp::attrs() const { return str_cat("alpha=", alpha); }

std::vector<TensorMeta> ScaleOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 1, "scale", "takes 1 input, got ", in.size());
  check_float(in[0], "scale", "x");
  return {in[0]};
}

std::vector<Value> ScaleOp::backward(const BackwardContext& ctx) const {
  return {scale(ctx.grad(0), alpha, ctx.name("dx"))};
}

std::string SumToOp::attrs() const { return "shape=" + shape_str(shape); }

std::vector<TensorMeta> SumToOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 1, "sum_to", "takes 1 input, got ", in.size());
  check_float(in[0], "sum_to", "x");
  XF_CHECK(broadcast_shapes(shape, in[0].shape, "sum_to") == in[0].shape, "sum_to", "shape ", shape_str(shape),
           " does not broadcast to ", shape_str(in[0].shape));
  return {TensorMeta{shape, in[0].dtype}};
}

std::vector<Value> SumToOp::backward(const BackwardContext& ctx) const {
  return {broadcast_to(ctx.grad(0), ctx.input(0).shape(), ctx.name("dx"))};
}

std::string BroadcastToOp::attrs() const { return "shape=" + shape_str(shape); }

std::vector<TensorMeta> BroadcastToOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 1, "broadcast_to", "takes 1 input, got ", in.size());
  XF_CHECK(broadcast_shapes(in[0].shape, shape, "broadcast_to") == shape, "broadcast_to", "shape ",
           shape_str(in[0].shape), " does not broadcast to ", shape_str(shape));
  return {TensorMeta{shape, in[0].dtype}};
}

std::vector<Value> BroadcastToOp::backward(const BackwardContext& ctx) const {
  return {sum_to(ctx.grad(0), ctx.input(0).shape(), ctx.name("dx"))};
}

std::string FillOp::attrs() const { return str_cat(meta.str(), " value=", value); }

std::vector<TensorMeta> FillOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.empty(), "fill", "takes no inputs, got ", in.size());
  return {meta};
}

// ---- front end ----------------------------------------------------------------------------------------
static Value binary(BinaryKind k, Value a, Value b, const std::string& name) {
  XF_CHECK(a.defined() && b.defined(), binary_name(k), "undefined operand");
  return a.graph->add1(std::make_shared<BinaryOp>(k), {a, b}, name);
}
Value add(Value a, Value b, const std::string& name) { return binary(BinaryKind::add, a, b, name); }
Value sub(Value a, Value b, const std::string& name) { return binary(BinaryKind::sub, a, b, name); }
Value mul(Value a, Value b, const std::string& name) { return binary(BinaryKind::mul, a, b, name); }
Value div(Value a, Value b, const std::string& name) { return binary(BinaryKind::div, a, b, name); }

Value scale(Value x, double alpha, const std::string& name) {
  return x.graph->add1(std::make_shared<ScaleOp>(alpha), {x}, name);
}

Value sum_to(Value x, const Shape& shape, const std::string& name) {
  if (x.shape() == shape) return x;
  return x.graph->add1(std::make_shared<SumToOp>(shape), {x}, name);
}

Value broadcast_to(Value x, const Shape& shape, const std::string& name) {
  if (x.shape() == shape) return x;
  return x.graph->add1(std::make_shared<BroadcastToOp>(shape), {x}, name);
}

Value fill(Graph& g, const TensorMeta& meta, double value, const std::string& name) {
  return g.add1(std::make_shared<FillOp>(meta, value), {}, name);
}

}  // namespace xfr

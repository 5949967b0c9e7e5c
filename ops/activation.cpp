#include "ops/activation.h"

#include <cmath>

#include "ops/matmul.h"  // reshape
#include "runtime/error.h"

namespace xfr {

namespace {

constexpr ActivationKind kAllKinds[] = {ActivationKind::relu,        ActivationKind::gelu,
                                        ActivationKind::gelu_tanh,   ActivationKind::leaky_relu,
                                        ActivationKind::squared_relu, ActivationKind::smelu,
                                        ActivationKind::silu,        ActivationKind::sigmoid,
                                        ActivationKind::star_relu};

void check_params(const char* op, ActivationKind kind, const ActivationParams& p) {
  if (kind == ActivationKind::leaky_relu)
    XF_CHECK(std::isfinite(p.negative_slope), op, "leaky_relu negative_slope must be finite, got ", p.negative_slope);
  if (kind == ActivationKind::smelu)
    XF_CHECK(std::isfinite(p.beta) && p.beta > 0, op, "smelu beta must be finite and > 0, got ", p.beta);
}

std::string kind_attrs(ActivationKind kind, const ActivationParams& p) {
  std::string s = activation_name(kind);
  if (kind == ActivationKind::leaky_relu) s += str_cat(", negative_slope=", p.negative_slope);
  if (kind == ActivationKind::smelu) s += str_cat(", beta=", p.beta);
  return s;
}

}  // namespace

const char* activation_name(ActivationKind kind) {
  switch (kind) {
    case ActivationKind::relu: return "relu";
    case ActivationKind::gelu: return "gelu";
    case ActivationKind::gelu_tanh: return "gelu_tanh";
    case ActivationKind::leaky_relu: return "leaky_relu";
    case ActivationKind::squared_relu: return "squared_relu";
    case ActivationKind::smelu: return "smelu";
    case ActivationKind::silu: return "silu";
    case ActivationKind::sigmoid: return "sigmoid";
    case ActivationKind::star_relu: return "star_relu";
  }
  return "?";
}

ActivationSpec activation_by_name(const std::string& name) {
  std::string known;
  for (ActivationKind k : kAllKinds) {
    if (name == activation_name(k)) return ActivationSpec{k, ActivationParams{}};
    known += (known.empty() ? "" : ", ") + std::string(activation_name(k));
  }
  throw Error("activation", "unknown activation '" + name + "' (known: " + known + ")");
}

// ---- activation -------------------------------------------------------------------------------------------

std::string ActivationOp::attrs() const { return kind_attrs(kind, params); }

std::vector<TensorMeta> ActivationOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(kind != ActivationKind::star_relu, "activation",
           "star_relu has a learnable scale and bias: build it with star_relu(x, scale, bias)");
  check_params("activation", kind, params);
  XF_CHECK(in.size() == 1, "activation", "takes 1 input (x), got ", in.size());
  XF_CHECK(is_floating(in[0].dtype), "activation", activation_name(kind), ": x must be floating point, got ",
           in[0].str());
  return {in[0]};
}

std::vector<Value> ActivationOp::backward(const BackwardContext& ctx) const {
  return {ctx.graph.add(std::make_shared<ActivationBackwardOp>(kind, params), {ctx.input(0), ctx.grad(0)},
                        ctx.name("dx"))[0]};
}

std::string ActivationBackwardOp::attrs() const { return kind_attrs(kind, params); }

std::vector<TensorMeta> ActivationBackwardOp::infer(const std::vector<TensorMeta>& in) const {
  const char* op = "activation_backward";
  XF_CHECK(kind != ActivationKind::star_relu, op, "star_relu has its own backward op");
  check_params(op, kind, params);
  XF_CHECK(in.size() == 2, op, "takes 2 inputs (x, dy), got ", in.size());
  XF_CHECK(is_floating(in[0].dtype) && in[0] == in[1], op, "x ", in[0].str(), " and dy ", in[1].str(),
           " must be the same floating type and shape");
  return {in[0]};
}

// ---- star_relu ------------------------------------------------------------------------------------------------

std::vector<TensorMeta> StarReluOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 3, "star_relu", "takes 3 inputs (x, scale, bias), got ", in.size());
  XF_CHECK(is_floating(in[0].dtype), "star_relu", "x must be floating point, got ", in[0].str());
  for (size_t i : {size_t{1}, size_t{2}})
    XF_CHECK(numel_of(in[i].shape) == 1 && in[i].dtype == in[0].dtype, "star_relu", i == 1 ? "scale " : "bias ",
             in[i].str(), " must be one ", dtype_name(in[0].dtype), " element for x ", in[0].str());
  return {in[0]};
}

std::vector<Value> StarReluOp::backward(const BackwardContext& ctx) const {
  const auto outs = ctx.graph.add(std::make_shared<StarReluBackwardOp>(), {ctx.input(0), ctx.input(1), ctx.grad(0)},
                                  ctx.name("star_relu"));
  // dscale and dbias have scale's shape; bias may be shaped differently (both hold one element).
  Value dbias = outs[2];
  if (ctx.needs_grad(2) && dbias.shape() != ctx.input(2).shape())
    dbias = reshape(dbias, ctx.input(2).shape(), ctx.name("dbias"));
  return {ctx.needs_grad(0) ? outs[0] : Value{}, ctx.needs_grad(1) ? outs[1] : Value{},
          ctx.needs_grad(2) ? dbias : Value{}};
}

std::vector<TensorMeta> StarReluBackwardOp::infer(const std::vector<TensorMeta>& in) const {
  const char* op = "star_relu_backward";
  XF_CHECK(in.size() == 3, op, "takes 3 inputs (x, scale, dy), got ", in.size());
  XF_CHECK(is_floating(in[0].dtype) && in[0] == in[2], op, "x ", in[0].str(), " and dy ", in[2].str(),
           " must be the same floating type and shape");
  XF_CHECK(numel_of(in[1].shape) == 1 && in[1].dtype == in[0].dtype, op, "scale ", in[1].str(),
           " must be one element of x's dtype");
  return {in[0], in[1], in[1]};
}

// ---- front end ----------------------------------------------------------------------------------------

Value activation(Value x, const ActivationSpec& spec, const std::string& name) {
  XF_CHECK(x.defined(), "activation", "undefined x");
  return x.graph->add(std::make_shared<ActivationOp>(spec.kind, spec.params), {x}, name)[0];
}
Value activation(Value x, ActivationKind kind, const std::string& name) {
  return activation(x, ActivationSpec{kind, ActivationParams{}}, name);
}
Value relu(Value x, const std::string& name) { return activation(x, ActivationKind::relu, name); }
Value gelu(Value x, const std::string& name) { return activation(x, ActivationKind::gelu, name); }
Value gelu_tanh(Value x, const std::string& name) { return activation(x, ActivationKind::gelu_tanh, name); }
Value leaky_relu(Value x, double negative_slope, const std::string& name) {
  ActivationParams p;
  p.negative_slope = negative_slope;
  return activation(x, ActivationSpec{ActivationKind::leaky_relu, p}, name);
}
Value squared_relu(Value x, const std::string& name) { return activation(x, ActivationKind::squared_relu, name); }
Value smelu(Value x, double beta, const std::string& name) {
  ActivationParams p;
  p.beta = beta;
  return activation(x, ActivationSpec{ActivationKind::smelu, p}, name);
}
Value silu(Value x, const std::string& name) { return activation(x, ActivationKind::silu, name); }
Value sigmoid(Value x, const std::string& name) { return activation(x, ActivationKind::sigmoid, name); }

Value star_relu(Value x, Value scale, Value bias, const std::string& name) {
  XF_CHECK(x.defined() && scale.defined() && bias.defined(), "star_relu", "x, scale and bias are required");
  return x.graph->add(std::make_shared<StarReluOp>(), {x, scale, bias}, name)[0];
}

}  // namespace xfr

#include "ops/reduce.h"

#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "runtime/error.h"

namespace xfr {

const char* reduce_kind_name(ReduceKind k) {
  switch (k) {
    case ReduceKind::sum: return "sum";
    case ReduceKind::mean: return "mean";
    case ReduceKind::max: return "max";
  }
  return "?";
}

ReduceLayout reduce_layout(const std::vector<int64_t>& axes, bool keepdim, const Shape& in, ReduceKind kind) {
  const char* kn = reduce_kind_name(kind);
  const int64_t rank = static_cast<int64_t>(in.size());
  std::vector<bool> reduced(in.size(), axes.empty());
  for (int64_t a : axes) {
    XF_CHECK(a >= -rank && a < rank, "reduce", kn, ": axis ", a, " is out of range for input ", shape_str(in));
    const size_t n = static_cast<size_t>(a < 0 ? a + rank : a);
    XF_CHECK(!reduced[n], "reduce", kn, ": axis ", a, " appears twice in axes ", shape_str(axes), " for input ",
             shape_str(in));
    reduced[n] = true;
  }
  ReduceLayout L;
  for (size_t i = 0; i < in.size(); ++i) {
    if (reduced[i]) {
      L.axes.push_back(static_cast<int>(i));
      L.count *= in[i];
      L.keep_shape.push_back(1);
      if (keepdim) L.out_shape.push_back(1);
    } else {
      L.keep_shape.push_back(in[i]);
      L.out_shape.push_back(in[i]);
    }
  }
  XF_CHECK(kind != ReduceKind::max || L.count > 0, "reduce", kn, " over axes ", shape_str(axes),
           " of input ", shape_str(in), " reduces empty slices, which have no maximum");

  // Merge: drop size-1 axes, fuse neighbours that are both reduced or both kept (contiguous input, so a
  // fused group's stride is that of its innermost axis).
  struct Group {
    bool reduced;
    int64_t size, stride;
  };
  std::vector<Group> groups;
  const Shape strides = contiguous_strides(in);
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == 1) continue;
    if (!groups.empty() && groups.back().reduced == reduced[i]) {
      groups.back().size *= in[i];
      groups.back().stride = strides[i];
    } else {
      groups.push_back(Group{reduced[i], in[i], strides[i]});
    }
  }
  size_t g = 0;
  if (g < groups.size() && !groups[g].reduced) L.outer = groups[g++].size;
  if (g < groups.size() && groups[g].reduced) L.reduce = groups[g++].size;
  if (g < groups.size() && !groups[g].reduced) L.inner = groups[g++].size;
  if (g < groups.size()) {
    L.generic = true;
    L.outer = L.reduce = L.inner = 1;
    for (const auto& gr : groups) {
      (gr.reduced ? L.red_sizes : L.kept_sizes).push_back(gr.size);
      (gr.reduced ? L.red_strides : L.kept_strides).push_back(gr.stride);
    }
  }
  return L;
}

std::string ReduceOp::attrs() const {
  return str_cat("kind=", reduce_kind_name(kind), ", axes=", shape_str(axes), ", keepdim=", keepdim);
}

std::vector<TensorMeta> ReduceOp::infer(const std::vector<TensorMeta>& in) const {
  const char* kn = reduce_kind_name(kind);
  XF_CHECK(in.size() == 1, "reduce", kn, " takes 1 input, got ", in.size());
  XF_CHECK(is_floating(in[0].dtype), "reduce", kn, ": x must be floating point, got ", in[0].str());
  const ReduceLayout L = reduce_layout(axes, keepdim, in[0].shape, kind);
  if (kind == ReduceKind::max) return {TensorMeta{L.out_shape, in[0].dtype}, TensorMeta{L.out_shape, DType::i64}};
  return {TensorMeta{L.out_shape, in[0].dtype}};
}

std::vector<Value> ReduceOp::backward(const BackwardContext& ctx) const {
  const Value x = ctx.input(0), gy = ctx.grad(0);
  if (!gy.defined() || !ctx.needs_grad(0)) return {Value{}};
  const ReduceLayout L = reduce_layout(axes, keepdim, x.shape(), kind);
  if (kind == ReduceKind::max)
    return {ctx.graph.add1(std::make_shared<ReduceMaxBackwardOp>(axes, keepdim, x.shape()), {gy, ctx.output(1)},
                           ctx.name("dx"))};
  // d sum / dx = 1 everywhere in the slice: the gradient broadcast back over the reduced axes.
  Value g = gy;
  if (kind == ReduceKind::mean && L.count > 0) g = scale(g, 1.0 / static_cast<double>(L.count), ctx.name("mean"));
  g = reshape(g, L.keep_shape, ctx.name("keepdim"));
  return {broadcast_to(g, x.shape(), ctx.name("dx"))};
}

std::string ReduceMaxBackwardOp::attrs() const {
  return str_cat("axes=", shape_str(axes), ", keepdim=", keepdim, ", in_shape=", shape_str(in_shape));
}

std::vector<TensorMeta> ReduceMaxBackwardOp::infer(const std::vector<TensorMeta>& in) const {
  const char* op = "reduce_max_backward";
  XF_CHECK(in.size() == 2, op, "takes 2 inputs (dy, argmax), got ", in.size());
  XF_CHECK(is_floating(in[0].dtype), op, "dy must be floating point, got ", in[0].str());
  XF_CHECK(in[1].dtype == DType::i64, op, "argmax must be i64, got ", in[1].str());
  const ReduceLayout L = reduce_layout(axes, keepdim, in_shape, ReduceKind::max);
  XF_CHECK(in[0].shape == L.out_shape && in[1].shape == L.out_shape, op, "dy ", in[0].str(), " and argmax ",
           in[1].str(), " must have the shape ", shape_str(L.out_shape), " of max over ", shape_str(axes), " of ",
           shape_str(in_shape));
  return {TensorMeta{in_shape, in[0].dtype}};
}

// ---- front end ----------------------------------------------------------------------------------------
static std::vector<Value> reduce(ReduceKind k, Value x, const std::vector<int64_t>& axes, bool keepdim,
                                 const std::string& name) {
  XF_CHECK(x.defined(), "reduce", reduce_kind_name(k), ": undefined input");
  return x.graph->add(std::make_shared<ReduceOp>(k, axes, keepdim), {x}, name);
}
Value reduce_sum(Value x, const std::vector<int64_t>& axes, bool keepdim, const std::string& name) {
  return reduce(ReduceKind::sum, x, axes, keepdim, name)[0];
}
Value reduce_mean(Value x, const std::vector<int64_t>& axes, bool keepdim, const std::string& name) {
  return reduce(ReduceKind::mean, x, axes, keepdim, name)[0];
}
Value reduce_max(Value x, const std::vector<int64_t>& axes, bool keepdim, const std::string& name) {
  return reduce(ReduceKind::max, x, axes, keepdim, name)[0];
}
std::vector<Value> reduce_max_with_index(Value x, const std::vector<int64_t>& axes, bool keepdim,
                                         const std::string& name) {
  return reduce(ReduceKind::max, x, axes, keepdim, name);
}

}  // namespace xfr

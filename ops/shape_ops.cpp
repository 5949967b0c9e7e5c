#include "ops/shape_ops.h"

#include "ops/elementwise.h"
#include "runtime/error.h"

namespace xfr {

namespace {
// Normalises an axis, naming the op and the input shape when it is out of range.
int checked_axis(int64_t axis, const Shape& shape, const char* op, const char* what = "axis") {
  const int64_t r = static_cast<int64_t>(shape.size());
  XF_CHECK(axis >= -r && axis < r, op, what, " ", axis, " is out of range for input ", shape_str(shape));
  return static_cast<int>(axis < 0 ? axis + r : axis);
}
}  // namespace

// ---- transpose ----------------------------------------------------------------------------------------
std::string TransposeOp::attrs() const { return str_cat("a=", a, ", b=", b); }

std::vector<TensorMeta> TransposeOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 1, "transpose", "takes 1 input, got ", in.size());
  const int ia = checked_axis(a, in[0].shape, "transpose"), ib = checked_axis(b, in[0].shape, "transpose");
  Shape s = in[0].shape;
  std::swap(s[static_cast<size_t>(ia)], s[static_cast<size_t>(ib)]);
  return {TensorMeta{s, in[0].dtype}};
}

std::vector<Value> TransposeOp::backward(const BackwardContext& ctx) const {
  return {transpose(ctx.grad(0), a, b, ctx.name("dx"))};
}

// ---- permute ------------------------------------------------------------------------------------------
std::string PermuteOp::attrs() const { return "order=" + shape_str(order); }

std::vector<TensorMeta> PermuteOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 1, "permute", "takes 1 input, got ", in.size());
  const Shape& xs = in[0].shape;
  XF_CHECK(order.size() == xs.size(), "permute", "order ", shape_str(order), " has ", order.size(),
           " entries for input ", shape_str(xs), " of rank ", xs.size());
  std::vector<bool> seen(xs.size(), false);
  Shape s(xs.size());
  for (size_t i = 0; i < order.size(); ++i) {
    const int ax = checked_axis(order[i], xs, "permute");
    XF_CHECK(!seen[static_cast<size_t>(ax)], "permute", "order ", shape_str(order),
             " is not a permutation of the axes of ", shape_str(xs));
    seen[static_cast<size_t>(ax)] = true;
    s[i] = xs[static_cast<size_t>(ax)];
  }
  return {TensorMeta{s, in[0].dtype}};
}

std::vector<Value> PermuteOp::backward(const BackwardContext& ctx) const {
  const int64_t r = static_cast<int64_t>(order.size());
  std::vector<int64_t> inverse(order.size());
  for (int64_t i = 0; i < r; ++i) inverse[static_cast<size_t>(order[static_cast<size_t>(i)] < 0 ? order[static_cast<size_t>(i)] + r : order[static_cast<size_t>(i)])] = i;
  return {permute(ctx.grad(0), inverse, ctx.name("dx"))};
}

// ---- slice --------------------------------------------------------------------------------------------
std::string SliceOp::attrs() const { return str_cat("axis=", axis, ", start=", start, ", end=", end); }

void SliceOp::resolve(const Shape& in, int& ax, int64_t& begin, int64_t& stop) const {
  ax = checked_axis(axis, in, "slice");
  const int64_t n = in[static_cast<size_t>(ax)];
  begin = start < 0 ? start + n : start;
  stop = end < 0 ? end + n : end;
  XF_CHECK(0 <= begin && begin <= stop && stop <= n, "slice", "range [", start, ", ", end, ") on axis ", axis,
           " is not within the ", n, " elements of input ", shape_str(in));
}

std::vector<TensorMeta> SliceOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 1, "slice", "takes 1 input, got ", in.size());
  int ax;
  int64_t b, e;
  resolve(in[0].shape, ax, b, e);
  Shape s = in[0].shape;
  s[static_cast<size_t>(ax)] = e - b;
  return {TensorMeta{s, in[0].dtype}};
}

std::vector<Value> SliceOp::backward(const BackwardContext& ctx) const {
  int ax;
  int64_t b, e;
  const Shape& xs = ctx.input(0).shape();
  resolve(xs, ax, b, e);
  return {pad_slice(ctx.grad(0), ax, b, xs[static_cast<size_t>(ax)], ctx.name("dx"))};
}

// ---- pad_slice ----------------------------------------------------------------------------------------
std::string PadSliceOp::attrs() const { return str_cat("axis=", axis, ", start=", start, ", size=", size); }

std::vector<TensorMeta> PadSliceOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 1, "pad_slice", "takes 1 input, got ", in.size());
  const int ax = checked_axis(axis, in[0].shape, "pad_slice");
  const int64_t m = in[0].shape[static_cast<size_t>(ax)];
  XF_CHECK(start >= 0 && start + m <= size, "pad_slice", "input ", shape_str(in[0].shape), " placed at ", start,
           " on axis ", axis, " does not fit in size ", size);
  Shape s = in[0].shape;
  s[static_cast<size_t>(ax)] = size;
  return {TensorMeta{s, in[0].dtype}};
}

std::vector<Value> PadSliceOp::backward(const BackwardContext& ctx) const {
  const Value g = ctx.input(0);
  const int ax = checked_axis(axis, g.shape(), "pad_slice");
  return {slice(ctx.grad(0), ax, start, start + g.shape()[static_cast<size_t>(ax)], ctx.name("dx"))};
}

// ---- concat -------------------------------------------------------------------------------------------
std::string ConcatOp::attrs() const { return str_cat("axis=", axis); }

std::vector<TensorMeta> ConcatOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(!in.empty(), "concat", "needs at least one input");
  const Shape& s0 = in[0].shape;
  const int ax = checked_axis(axis, s0, "concat");
  Shape out = s0;
  out[static_cast<size_t>(ax)] = 0;
  for (size_t k = 0; k < in.size(); ++k) {
    const Shape& s = in[k].shape;
    XF_CHECK(in[k].dtype == in[0].dtype, "concat", "input ", k, " is ", in[k].str(), " but input 0 is ",
             in[0].str());
    bool same = s.size() == s0.size();
    for (size_t d = 0; same && d < s.size(); ++d) same = static_cast<int>(d) == ax || s[d] == s0[d];
    XF_CHECK(same, "concat", "input ", k, " ", shape_str(s), " does not match input 0 ", shape_str(s0),
             " off axis ", axis);
    out[static_cast<size_t>(ax)] += s[static_cast<size_t>(ax)];
  }
  return {TensorMeta{out, in[0].dtype}};
}

std::vector<Value> ConcatOp::backward(const BackwardContext& ctx) const {
  const int n = static_cast<int>(ctx.node.inputs.size());
  const int ax = checked_axis(axis, ctx.input(0).shape(), "concat");
  std::vector<int64_t> sizes;
  for (int k = 0; k < n; ++k) sizes.push_back(ctx.input(k).shape()[static_cast<size_t>(ax)]);
  std::vector<Value> parts = split(ctx.grad(0), ax, sizes, ctx.name("dx"));
  for (int k = 0; k < n; ++k)
    if (!ctx.needs_grad(k)) parts[static_cast<size_t>(k)] = Value{};
  return parts;
}

// ---- split --------------------------------------------------------------------------------------------
std::string SplitOp::attrs() const { return str_cat("axis=", axis, ", sizes=", shape_str(sizes)); }

std::vector<TensorMeta> SplitOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 1, "split", "takes 1 input, got ", in.size());
  XF_CHECK(!sizes.empty(), "split", "needs at least one size for input ", shape_str(in[0].shape));
  const int ax = checked_axis(axis, in[0].shape, "split");
  int64_t total = 0;
  std::vector<TensorMeta> out;
  for (int64_t s : sizes) {
    XF_CHECK(s >= 0, "split", "negative size in ", shape_str(sizes), " for input ", shape_str(in[0].shape));
    total += s;
    Shape os = in[0].shape;
    os[static_cast<size_t>(ax)] = s;
    out.push_back(TensorMeta{os, in[0].dtype});
  }
  XF_CHECK(total == in[0].shape[static_cast<size_t>(ax)], "split", "sizes ", shape_str(sizes), " add up to ", total,
           ", not to the ", in[0].shape[static_cast<size_t>(ax)], " elements of input ", shape_str(in[0].shape),
           " on axis ", axis);
  return out;
}

Op::ViewOf SplitOp::view_of(int output, const std::vector<TensorMeta>& in) const {
  // 64: the executor's arena and parameter slots align every buffer to 64 bytes (runtime/memory_plan.h).
  constexpr int64_t kViewAlignment = 64;
  if (in.size() != 1) return {};
  const Shape& x = in[0].shape;
  const int ax = checked_axis(axis, x, "split");
  for (int d = 0; d < ax; ++d)
    if (x[static_cast<size_t>(d)] != 1) return {};
  int64_t inner = 1;  // elements per step along the axis
  for (size_t d = static_cast<size_t>(ax) + 1; d < x.size(); ++d) inner *= x[d];
  const auto es = static_cast<int64_t>(dtype_size(in[0].dtype));
  int64_t start = 0, mine = 0;
  for (size_t k = 0; k < sizes.size(); ++k) {
    if ((start * inner * es) % kViewAlignment != 0) return {};
    if (static_cast<int>(k) == output) mine = start * inner;
    start += sizes[k];
  }
  return {0, mine};
}

std::vector<Value> SplitOp::backward(const BackwardContext& ctx) const {
  if (!ctx.needs_grad(0)) return {Value{}};
  std::vector<Value> parts;
  for (size_t k = 0; k < sizes.size(); ++k) {
    Value g = ctx.grad(static_cast<int>(k));
    // Outputs nothing differentiates contribute zeros.
    if (!g.defined()) g = fill(ctx.graph, ctx.output(static_cast<int>(k)).meta(), 0.0, ctx.name("zero" + std::to_string(k)));
    parts.push_back(g);
  }
  return {concat(parts, axis, ctx.name("dx"))};
}

// ---- front end ----------------------------------------------------------------------------------------
Value transpose(Value x, int64_t a, int64_t b, const std::string& name) {
  XF_CHECK(x.defined(), "transpose", "undefined input");
  (void)TransposeOp(a, b).infer({x.meta()});  // validates before the identity shortcut
  if (checked_axis(a, x.shape(), "transpose") == checked_axis(b, x.shape(), "transpose")) return x;
  return x.graph->add1(std::make_shared<TransposeOp>(a, b), {x}, name);
}

Value permute(Value x, const std::vector<int64_t>& order, const std::string& name) {
  XF_CHECK(x.defined(), "permute", "undefined input");
  (void)PermuteOp(order).infer({x.meta()});
  bool identity = true;
  for (size_t i = 0; i < order.size(); ++i) identity &= checked_axis(order[i], x.shape(), "permute") == static_cast<int>(i);
  if (identity) return x;
  return x.graph->add1(std::make_shared<PermuteOp>(order), {x}, name);
}

Value slice(Value x, int64_t axis, int64_t start, int64_t end, const std::string& name) {
  XF_CHECK(x.defined(), "slice", "undefined input");
  int ax;
  int64_t b, e;
  SliceOp(axis, start, end).resolve(x.shape(), ax, b, e);
  if (b == 0 && e == x.shape()[static_cast<size_t>(ax)]) return x;
  return x.graph->add1(std::make_shared<SliceOp>(axis, start, end), {x}, name);
}

Value pad_slice(Value g, int64_t axis, int64_t start, int64_t size, const std::string& name) {
  XF_CHECK(g.defined(), "pad_slice", "undefined input");
  return g.graph->add1(std::make_shared<PadSliceOp>(axis, start, size), {g}, name);
}

Value concat(const std::vector<Value>& xs, int64_t axis, const std::string& name) {
  XF_CHECK(!xs.empty() && xs[0].defined(), "concat", "needs at least one defined input");
  if (xs.size() == 1) {  // still validates the axis
    (void)checked_axis(axis, xs[0].shape(), "concat");
    return xs[0];
  }
  return xs[0].graph->add1(std::make_shared<ConcatOp>(axis), xs, name);
}

std::vector<Value> split(Value x, int64_t axis, const std::vector<int64_t>& sizes, const std::string& name) {
  XF_CHECK(x.defined(), "split", "undefined input");
  return x.graph->add(std::make_shared<SplitOp>(axis, sizes), {x}, name);
}

}  // namespace xfr

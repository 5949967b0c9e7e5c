#include "ops/matmul.h"

#include "runtime/error.h"

namespace xfr {

std::string MatMulOp::attrs() const { return str_cat("trans_a=", trans_a, ", trans_b=", trans_b); }

MatMulDims matmul_dims(const MatMulOp& op, const Shape& a, const Shape& b) {
  MatMulDims d;
  const size_t ra = a.size();
  d.m = op.trans_a ? a[ra - 1] : a[ra - 2];
  d.k = op.trans_a ? a[ra - 2] : a[ra - 1];
  const size_t rb = b.size();
  d.n = op.trans_b ? b[rb - 2] : b[rb - 1];
  for (size_t i = 0; i + 2 < ra; ++i) d.batch *= a[i];
  d.shared_b = rb == 2;
  return d;
}

std::vector<TensorMeta> MatMulOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 2, "matmul", "takes 2 inputs, got ", in.size());
  const auto &a = in[0], &b = in[1];
  XF_CHECK(is_floating(a.dtype) && a.dtype == b.dtype, "matmul", "operands must share a floating dtype, got ",
           a.str(), " and ", b.str());
  XF_CHECK(a.shape.size() >= 2 && b.shape.size() >= 2, "matmul", "operands need rank >= 2, got ",
           shape_str(a.shape), " and ", shape_str(b.shape));
  const bool shared_b = b.shape.size() == 2;
  XF_CHECK(shared_b || b.shape.size() == a.shape.size(), "matmul", "B ", shape_str(b.shape),
           " must be 2-D or have A's rank ", a.shape.size());
  if (!shared_b)
    for (size_t i = 0; i + 2 < a.shape.size(); ++i)
      XF_CHECK(a.shape[i] == b.shape[i], "matmul", "batch axes differ: ", shape_str(a.shape), " and ",
               shape_str(b.shape));
  XF_CHECK(!(shared_b && trans_a && a.shape.size() > 2), "matmul",
           "trans_a with a batched A and a 2-D B is not supported: ", shape_str(a.shape));
  const auto d = matmul_dims(*this, a.shape, b.shape);
  const int64_t kb = trans_b ? b.shape[b.shape.size() - 1] : b.shape[b.shape.size() - 2];
  XF_CHECK(d.k == kb, "matmul", "inner sizes differ: A ", shape_str(a.shape), (trans_a ? "^T" : ""), " and B ",
           shape_str(b.shape), (trans_b ? "^T" : ""));
  Shape out(a.shape.begin(), a.shape.end() - 2);
  out.push_back(d.m);
  out.push_back(d.n);
  return {TensorMeta{out, a.dtype}};
}

std::vector<Value> MatMulOp::backward(const BackwardContext& ctx) const {
  const Value a = ctx.input(0), b = ctx.input(1), gc = ctx.grad(0);
  Value ga, gb;
  // C = op(A) op(B):  d op(A) = dC op(B)^T,  d op(B) = op(A)^T dC; transposes are folded into flags.
  if (ctx.needs_grad(0)) {
    ga = trans_a ? matmul(b, gc, trans_b, true, ctx.name("da")) : matmul(gc, b, false, !trans_b, ctx.name("da"));
  }
  if (ctx.needs_grad(1)) {
    if (b.rank() == 2 && a.rank() > 2) {
      // Shared B: sum over the batch by flattening A's and dC's rows into one GEMM.
      const Value a2 = reshape(a, {-1, a.dim(-1)}, ctx.name("a2d"));
      const Value g2 = reshape(gc, {-1, gc.dim(-1)}, ctx.name("g2d"));
      gb = trans_b ? matmul(g2, a2, true, false, ctx.name("db")) : matmul(a2, g2, true, false, ctx.name("db"));
    } else {
      gb = trans_b ? matmul(gc, a, true, trans_a, ctx.name("db")) : matmul(a, gc, !trans_a, false, ctx.name("db"));
    }
  }
  return {ga, gb};
}

Value matmul(Value a, Value b, bool trans_a, bool trans_b, const std::string& name) {
  return a.graph->add1(std::make_shared<MatMulOp>(trans_a, trans_b), {a, b}, name);
}

std::vector<TensorMeta> MatMulAddOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 3, "matmul_add", "takes 3 inputs (a, b, d), got ", in.size());
  const TensorMeta c = mm.infer({in[0], in[1]})[0];
  XF_CHECK(in[2] == c, "matmul_add", "d ", in[2].str(), " must be the product's ", c.str());
  return {c};
}

std::vector<Value> MatMulAddOp::backward(const BackwardContext& ctx) const {
  std::vector<Value> g = mm.backward(ctx);  // reads inputs 0 and 1 and the output's gradient
  g.push_back(ctx.needs_grad(2) ? ctx.grad(0) : Value{});
  return g;
}

Value matmul_add(Value a, Value b, Value d, bool trans_a, bool trans_b, const std::string& name) {
  return a.graph->add1(std::make_shared<MatMulAddOp>(trans_a, trans_b), {a, b, d}, name);
}

std::string ReshapeOp::attrs() const { return "shape=" + shape_str(shape); }

std::vector<TensorMeta> ReshapeOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 1, "reshape", "takes 1 input, got ", in.size());
  Shape s = shape;
  int infer_at = -1;
  int64_t known = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      XF_CHECK(infer_at < 0, "reshape", "more than one -1 in ", shape_str(shape));
      infer_at = static_cast<int>(i);
    } else {
      XF_CHECK(s[i] >= 0, "reshape", "negative size in ", shape_str(shape));
      known *= s[i];
    }
  }
  const int64_t n = numel_of(in[0].shape);
  if (infer_at >= 0) {
    XF_CHECK(known > 0 && n % known == 0, "reshape", "cannot infer -1 in ", shape_str(shape), " from ",
             in[0].str());
    s[static_cast<size_t>(infer_at)] = n / known;
  }
  XF_CHECK(numel_of(s) == n, "reshape", "cannot reshape ", in[0].str(), " to ", shape_str(shape));
  return {TensorMeta{s, in[0].dtype}};
}

std::vector<Value> ReshapeOp::backward(const BackwardContext& ctx) const {
  return {reshape(ctx.grad(0), ctx.input(0).shape(), ctx.name("dx"))};
}

Value reshape(Value x, const Shape& shape, const std::string& name) {
  if (x.shape() == shape) return x;
  return x.graph->add1(std::make_shared<ReshapeOp>(shape), {x}, name);
}

}  // namespace xfr

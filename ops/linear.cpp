#include "ops/linear.h"

#include "ops/matmul.h"
#include "ops/reduce.h"
#include "runtime/error.h"

namespace xfr {

std::string LinearOp::attrs() const {
  return str_cat("bias=", has_bias ? "true" : "false", ", activation=", gelu_tanh ? "gelu_tanh" : "none",
                 has_residual ? ", residual=true" : "");
}

std::vector<TensorMeta> LinearOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(!(has_residual && gelu_tanh), "linear", "a residual is added to a linear layer without an activation");
  const size_t n_in = 2u + has_bias + has_residual;
  XF_CHECK(in.size() == n_in, "linear", "takes ", n_in, " inputs (x, w", has_bias ? ", b" : "",
           has_residual ? ", residual" : "", "), got ", in.size());
  const TensorMeta &x = in[0], &w = in[1];
  XF_CHECK(is_floating(x.dtype) && w.dtype == x.dtype, "linear", "x and w must share a floating dtype, got ", x.str(),
           " and ", w.str());
  XF_CHECK(!x.shape.empty() && w.shape.size() == 2 && w.shape[1] == x.shape.back(), "linear", "w ", shape_str(w.shape),
           " must be (N, K) for x ", shape_str(x.shape), " of shape (..., K)");
  if (has_bias)
    XF_CHECK(in[2].dtype == x.dtype && in[2].shape == Shape{w.shape[0]}, "linear", "b ", in[2].str(), " must be (",
             w.shape[0], ") of x's dtype");
  Shape y = x.shape;
  y.back() = w.shape[0];
  if (has_residual)
    XF_CHECK(in[static_cast<size_t>(residual_index())] == (TensorMeta{y, x.dtype}), "linear", "residual ",
             in[static_cast<size_t>(residual_index())].str(), " must be the output's ", TensorMeta{y, x.dtype}.str());
  std::vector<TensorMeta> out{TensorMeta{y, x.dtype}};
  if (gelu_tanh) out.push_back(TensorMeta{y, x.dtype});
  return out;
}

namespace {

// dL/dpre = g * gelu_tanh'(pre) for a gelu linear layer's output gradient g. When g is a plain product a · b with
// a 2-D b (the input gradient of the linear layer that reads this one's output, as an MLP's second layer), one
// matmul_dgelu node computes it from a and b (on a GPU the GEMM's epilogue applies the derivative); the plain
// product is then read by nothing else and is not scheduled (unless something else asks for it).
Value gelu_backward(const BackwardContext& ctx, Value g) {
  const Value pre = ctx.output(1);
  const int producer = ctx.graph.value(g.id).producer;
  if (producer >= 0) {
    const Node& n = ctx.graph.node(producer);
    const auto* mm = dynamic_cast<const MatMulOp*>(n.op.get());
    if (mm && !mm->trans_a && !mm->trans_b && n.inputs.size() == 2 && n.outputs.size() == 1) {
      const Value a{&ctx.graph, n.inputs[0]}, b{&ctx.graph, n.inputs[1]};
      if (b.rank() == 2 && a.meta().dtype == pre.meta().dtype && g.meta().shape == pre.meta().shape)
        return ctx.graph.add1(std::make_shared<MatMulDGeluOp>(), {a, b, pre}, ctx.name("dpre"));
    }
  }
  return ctx.graph.add1(std::make_shared<ActivationBackwardOp>(ActivationKind::gelu_tanh), {pre, g}, ctx.name("dpre"));
}

}  // namespace

std::vector<TensorMeta> MatMulDGeluOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 3, "matmul_dgelu", "takes 3 inputs (a, b, pre), got ", in.size());
  XF_CHECK(in[1].shape.size() == 2, "matmul_dgelu", "b ", shape_str(in[1].shape), " must be 2-D (K, N)");
  const TensorMeta c = MatMulOp(false, false).infer({in[0], in[1]})[0];
  XF_CHECK(in[2] == c, "matmul_dgelu", "pre ", in[2].str(), " must be the product's ", c.str());
  return {c};
}

std::vector<Value> LinearOp::backward(const BackwardContext& ctx) const {
  const Value x = ctx.input(0), w = ctx.input(1);
  Value g = ctx.grad(0);
  if (!g.defined()) return std::vector<Value>(ctx.node.inputs.size());
  if (gelu_tanh) g = gelu_backward(ctx, g);
  Value dx, dw, db;
  // The matmul op's own backward rule for x wᵀ (trans_b): dx = g w, dw = gᵀ x over the flattened rows.
  if (ctx.needs_grad(0)) dx = matmul(g, w, false, false, ctx.name("da"));
  const bool want_db = has_bias && ctx.needs_grad(2) && g.rank() > 1;
  // The bias gradient summed by the node that wrote g, where its op can (Op::with_row_sum: the layernorm backward of a
  // pre-norm block's residual add, which a block's output projections feed): no pass over g for it, and dw is a plain
  // GEMM.
  if (want_db) db = ctx.graph.row_sum_of(g);
  if (ctx.needs_grad(1)) {
    const Value x2 = x.rank() > 2 ? reshape(x, {-1, x.dim(-1)}, ctx.name("a2d")) : x;
    const Value g2 = g.rank() > 2 ? reshape(g, {-1, g.dim(-1)}, ctx.name("g2d")) : g;
    if (want_db && !db.defined()) {  // dw and db in one node (the GEMM's bias-gradient epilogue on a GPU)
      const LinearWeightGrads wg = linear_weight_grad(g2, x2, ctx.name("dwb"));
      dw = wg.dw;
      db = wg.db;
    } else {
      dw = matmul(g2, x2, true, false, ctx.name("dw"));
    }
  }
  if (has_bias && ctx.needs_grad(2) && !db.defined()) {
    std::vector<int64_t> leading;
    for (int64_t a = 0; a + 1 < static_cast<int64_t>(g.rank()); ++a) leading.push_back(a);
    db = leading.empty() ? g : reduce_sum(g, leading, false, ctx.name("dbias"));
  }
  std::vector<Value> grads{dx, dw};
  if (has_bias) grads.push_back(db);
  if (has_residual) grads.push_back(ctx.needs_grad(residual_index()) ? g : Value{});  // d(... + r) / dr = 1
  return grads;
}

Value linear_op(Value x, Value w, Value b, bool gelu_tanh, const std::string& name) {
  XF_CHECK(x.defined() && w.defined(), "linear", "undefined input");
  std::vector<Value> in{x, w};
  if (b.defined()) in.push_back(b);
  return x.graph->add(std::make_shared<LinearOp>(b.defined(), gelu_tanh), in, name)[0];
}

Value linear_residual_op(Value x, Value w, Value b, Value residual, const std::string& name) {
  XF_CHECK(x.defined() && w.defined() && residual.defined(), "linear", "undefined input");
  std::vector<Value> in{x, w};
  if (b.defined()) in.push_back(b);
  in.push_back(residual);
  return x.graph->add(std::make_shared<LinearOp>(b.defined(), false, true), in, name)[0];
}

Value fold_residual_into_linear(Value v, Value residual) {
  if (!v.defined() || !residual.defined() || v.meta() != residual.meta()) return {};
  Graph& g = *v.graph;
  const Node* n = g.fresh_producer(v);
  const auto* op = n ? dynamic_cast<const LinearOp*>(n->op.get()) : nullptr;
  if (!op || op->gelu_tanh || op->has_residual || n->outputs.size() != 1) return {};
  const Value x{&g, n->inputs[0]}, w{&g, n->inputs[1]};
  const Value b = op->has_bias ? Value{&g, n->inputs[2]} : Value{};
  // Named after the old node, "<its name>_residual", under the scopes open now (the old name is already qualified).
  const std::string scoped = g.qualified("");
  std::string name = n->name;  // (a copy: n may move when the new node is added)
  if (name.compare(0, scoped.size(), scoped) == 0) name.erase(0, scoped.size());
  return linear_residual_op(x, w, b, residual, name + "_residual");
}

std::vector<TensorMeta> LinearWeightGradOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 2, "linear_weight_grad", "takes 2 inputs (g, x), got ", in.size());
  const TensorMeta &g = in[0], &x = in[1];
  XF_CHECK(is_floating(g.dtype) && x.dtype == g.dtype, "linear_weight_grad", "g and x must share a floating dtype, got ",
           g.str(), " and ", x.str());
  XF_CHECK(g.shape.size() == 2 && x.shape.size() == 2 && g.shape[0] == x.shape[0], "linear_weight_grad", "g ",
           shape_str(g.shape), " and x ", shape_str(x.shape), " must be (M, N) and (M, K)");
  return {TensorMeta{{g.shape[1], x.shape[1]}, g.dtype}, TensorMeta{{g.shape[1]}, g.dtype}};
}

LinearWeightGrads linear_weight_grad(Value g, Value x, const std::string& name) {
  XF_CHECK(g.defined() && x.defined(), "linear_weight_grad", "undefined input");
  const auto out = g.graph->add(std::make_shared<LinearWeightGradOp>(), {g, x}, name);
  return {out[0], out[1]};
}

}  // namespace xfr

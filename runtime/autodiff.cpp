#include "runtime/autodiff.h"

#include <algorithm>

#include "runtime/error.h"

namespace xfr {

Gradients build_backward(Graph& g, Value loss, const GradAlgebra& algebra, Value seed) {
  XF_CHECK(loss.defined() && loss.graph == &g, "autodiff", "loss is not a value of this graph");
  const TensorMeta lm = g.value(loss.id).meta;  // a copy: adding the seed node may move the graph's values
  XF_CHECK(is_floating(lm.dtype), "autodiff", "loss must be floating point, got ", lm.str());
  if (!seed.defined()) {
    XF_CHECK(numel_of(lm.shape) == 1, "autodiff", "loss must have one element, got ", lm.str(),
             "; pass a seed gradient for a non-scalar output");
    seed = algebra.fill(g, lm, 1.0);
  }
  XF_CHECK(seed.meta() == lm, "autodiff", "seed ", seed.meta().str(), " does not match loss ", lm.str());

  std::unordered_map<int, int> grad;  // value id -> accumulated gradient value id
  grad[loss.id] = seed.id;
  auto accumulate = [&](int value_id, Value gv) {
    auto it = grad.find(value_id);
    if (it == grad.end()) {
      grad[value_id] = gv.id;
    } else {
      grad[value_id] = algebra.add(Value{&g, it->second}, gv).id;
    }
  };

  const int forward_nodes = loss.graph->value(loss.id).producer + 1;
  for (int n = forward_nodes - 1; n >= 0; --n) {
    const Node node = g.node(n);  // copy: backward rules append nodes, which may reallocate
    bool any_grad = false, any_input_needs = false;
    std::vector<Value> out_grads;
    for (int out : node.outputs) {
      auto it = grad.find(out);
      out_grads.push_back(it == grad.end() ? Value{} : Value{&g, it->second});
      any_grad |= it != grad.end();
    }
    for (int in : node.inputs) any_input_needs |= g.value(in).requires_grad;
    if (!any_grad || !any_input_needs) continue;

    BackwardContext ctx{g, node, out_grads, {}, {}};
    for (int in : node.inputs) {
      auto it = grad.find(in);
      ctx.accumulated_grads.push_back(it == grad.end() ? Value{} : Value{&g, it->second});
    }
    ctx.absorbed.assign(node.inputs.size(), false);
    std::vector<Value> in_grads;
    try {
      in_grads = node.op->backward(ctx);
    } catch (const Error& e) {
      throw Error(e.op(), e.message() + " (backward of node '" + node.name + "')", e.config_path());
    }
    XF_CHECK(in_grads.size() == node.inputs.size(), node.op->name(), "backward returned ", in_grads.size(),
             " gradients for ", node.inputs.size(), " inputs");
    for (size_t i = 0; i < node.inputs.size(); ++i) {
      const int in = node.inputs[i];
      if (!in_grads[i].defined() || !g.value(in).requires_grad) continue;
      XF_CHECK(in_grads[i].meta() == g.value(in).meta, node.op->name(), "backward gives ", in_grads[i].meta().str(),
               " for input ", i, " of ", g.value(in).meta.str(), " (node '", node.name, "')");
      if (ctx.absorbed[i]) {
        // The rule added what input i had gathered into its own gradient (BackwardContext::absorb).
        XF_CHECK(ctx.accumulated(static_cast<int>(i)).defined() &&
                     std::count(node.inputs.begin(), node.inputs.end(), in) == 1,
                 node.op->name(), "backward absorbed input ", i, "'s gradient, which it may not (node '", node.name,
                 "')");
        grad[in] = in_grads[i].id;
      } else {
        accumulate(in, in_grads[i]);
      }
    }
  }

  Gradients result;
  result.graph = &g;
  for (const auto& [id, gid] : grad) {
    const auto& info = g.value(id);
    if ((info.kind == ValueKind::param || info.kind == ValueKind::input) && info.requires_grad) result.of[id] = gid;
  }
  return result;
}

}  // namespace xfr

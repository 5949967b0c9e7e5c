#include "ops/grad.h"

#include "ops/elementwise.h"
#include "ops/matmul.h"

namespace xfr {

namespace {

// The matmul node that produced v, when v is a fresh gradient contribution (Graph::fresh_producer: a backward
// rule's dA or dB that no node reads yet) that the sum can absorb.
const MatMulOp* fresh_matmul(const Graph& g, Value v) {
  const Node* n = g.fresh_producer(v);
  if (!n || n->inputs.size() != 2) return nullptr;
  return dynamic_cast<const MatMulOp*>(n->op.get());
}

// a + b for autodiff: when one side is a fresh matmul product, one matmul_add node (the GEMM adds the other side;
// the matmul node is then read by nothing and the executor skips it); else an add.
Value grad_sum(Value a, Value b) {
  Graph& g = *a.graph;
  for (const auto& [prod, other] : {std::pair<Value, Value>{b, a}, std::pair<Value, Value>{a, b}}) {
    if (prod.meta() != other.meta()) break;
    if (const MatMulOp* mm = fresh_matmul(g, prod)) {
      const Node& n = g.node(g.value(prod.id).producer);
      const Value x{&g, n.inputs[0]}, y{&g, n.inputs[1]};
      return matmul_add(x, y, other, mm->trans_a, mm->trans_b, "grad_sum");
    }
  }
  return add(a, b, "grad_sum");
}

}  // namespace

const GradAlgebra& builtin_grad_algebra() {
  static const GradAlgebra algebra{grad_sum,
                                   [](Graph& g, const TensorMeta& m, double v) { return fill(g, m, v, "grad_seed"); }};
  return algebra;
}

}  // namespace xfr

// Reverse-mode autodiff over the graph: walks the forward nodes backwards, calls each op's backward
// rule, and sums gradients that reach a value along several paths.
#pragma once
#include <functional>
#include <unordered_map>

#include "runtime/graph.h"

namespace xfr {

// The two ops autodiff itself needs; runtime/ holds no op code, so ops/grad.h supplies them.
struct GradAlgebra {
  std::function<Value(Value, Value)> add;                         // a + b, same shape
  std::function<Value(Graph&, const TensorMeta&, double)> fill;  // a constant tensor
};

// Gradients of the leaves (params and requires_grad inputs), by value id.
struct Gradients {
  std::unordered_map<int, int> of;  // leaf value id -> gradient value id
  Graph* graph = nullptr;
  Value get(Value leaf) const {
    auto it = of.find(leaf.id);
    return it == of.end() ? Value{} : Value{graph, it->second};
  }
};

// Appends the backward of `loss` (a 1-element value) to the graph. `seed` is d(out)/d(loss); when
// undefined, 1. Throws when a rule returns a gradient whose metadata differs from its input's.
Gradients build_backward(Graph& g, Value loss, const GradAlgebra& algebra, Value seed = {});

}  // namespace xfr

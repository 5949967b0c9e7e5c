// Gradients of a loss with respect to the graph's parameters and requires_grad inputs.
#pragma once
#include "runtime/autodiff.h"

namespace xfr {

// The add and fill that autodiff needs, from ops/elementwise.
const GradAlgebra& builtin_grad_algebra();

inline Gradients gradients(Value loss, Value seed = {}) {
  return build_backward(*loss.graph, loss, builtin_grad_algebra(), seed);
}

}  // namespace xfr

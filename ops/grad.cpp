#include "ops/grad.h"

#include "ops/elementwise.h"

namespace xfr {

const GradAlgebra& builtin_grad_algebra() {
  static const GradAlgebra algebra{
      [](Value a, Value b) { return add(a, b, "grad_sum"); },
      [](Graph& g, const TensorMeta& m, double v) { return fill(g, m, v, "grad_seed"); }};
  return algebra;
}

}  // namespace xfr

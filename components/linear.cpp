#include "components/linear.h"

#include "ops/bias_add.h"
#include "ops/matmul.h"
#include "runtime/error.h"

namespace xfr {

Value linear(Value x, int64_t in_features, int64_t out_features, bool bias, const std::string& name) {
  XF_CHECK(x.dim(-1) == in_features, "linear", "input ", shape_str(x.shape()), " has ", x.dim(-1),
           " features, the layer '", x.graph->qualified(name), "' expects ", in_features);
  Graph& g = *x.graph;
  auto s = g.scope(name);
  const Value w = g.param("weight", {out_features, in_features}, ParamKind::weight);
  Value y = matmul(x, w, false, true, "matmul");
  if (bias) y = bias_add(y, g.param("bias", {out_features}, ParamKind::bias), "bias_add");
  return y;
}

}  // namespace xfr

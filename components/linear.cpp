#include "components/linear.h"

#include "ops/linear.h"
#include "runtime/error.h"

namespace xfr {

LinearParams linear_params(Graph& g, int64_t in_features, int64_t out_features, bool bias, const std::string& name,
                           const std::string& init_module) {
  auto s = g.scope(name);
  InitInfo info;
  info.module = init_module.empty() ? g.qualified("") : init_module;
  if (init_module.empty() && !info.module.empty() && info.module.back() == '.') info.module.pop_back();
  info.kind = ModuleKind::linear;
  info.fan_in = in_features;   // torch: fan_in = weight.size(1), fan_out = weight.size(0)
  info.fan_out = out_features;
  info.attr = "weight";
  LinearParams p;
  p.weight = g.param("weight", {out_features, in_features}, ParamKind::weight, info);
  if (bias) {
    info.attr = "bias";
    p.bias = g.param("bias", {out_features}, ParamKind::bias, info);
  }
  return p;
}

Value linear(Value x, int64_t in_features, int64_t out_features, bool bias, const std::string& name,
             const std::string& init_module, bool gelu_tanh) {
  XF_CHECK(x.dim(-1) == in_features, "linear", "input ", shape_str(x.shape()), " has ", x.dim(-1),
           " features, the layer '", x.graph->qualified(name), "' expects ", in_features);
  Graph& g = *x.graph;
  const LinearParams p = linear_params(g, in_features, out_features, bias, name, init_module);
  auto s = g.scope(name);
  return linear_op(x, p.weight, p.bias, gelu_tanh, "linear");  // one fused op: GEMM, bias and activation
}

}  // namespace xfr

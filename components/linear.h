// Linear layer y = x W^T + b with torch's weight layout (out_features, in_features).
#pragma once
#include <cstdint>
#include "runtime/graph.h"

namespace xfr {

// x: (..., in) -> (..., out). Parameters "<name>.weight" (out, in) and, with bias, "<name>.bias" (out).
// `init_module`: the xFormers-equivalent module path that init schemes match on (factory/weight_init.h);
// empty: the graph name.
// gelu_tanh: apply GELU (tanh form) in the same fused op (a GPU does it in the GEMM's epilogue).
Value linear(Value x, int64_t in_features, int64_t out_features, bool bias, const std::string& name,
             const std::string& init_module = {}, bool gelu_tanh = false);

// The parameters `linear` declares, without the op: "<name>.weight" (out, in) and, with bias, "<name>.bias" (out;
// undefined without), the same names, init rules and declaration order. For layers that share one GEMM (the
// packed q/k/v projection of components/multi_head_dispatch.h).
struct LinearParams {
  Value weight, bias;
};
LinearParams linear_params(Graph& g, int64_t in_features, int64_t out_features, bool bias, const std::string& name,
                           const std::string& init_module = {});

}  // namespace xfr

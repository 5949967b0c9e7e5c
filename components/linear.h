// Linear layer y = x W^T + b with torch's weight layout (out_features, in_features).
#pragma once
#include "runtime/graph.h"

namespace xfr {

// x: (..., in) -> (..., out). Parameters "<name>.weight" (out, in) and, with bias, "<name>.bias" (out).
Value linear(Value x, int64_t in_features, int64_t out_features, bool bias, const std::string& name);

}  // namespace xfr

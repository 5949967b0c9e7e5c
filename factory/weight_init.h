// Weight initialisation exactly as xFormers' factory/weight_init.py (0.0.24; docs/xformers_reference.md
// section 1): the schemes vit, timm, moco and small match on each parameter's xFormers module path and
// module type (InitInfo), components with their own init_weights keep their rule, LayerNorms keep
// (1, 0). Every parameter records the rule that wrote it; parameters no rule wrote are reported by the
// uninitialised-weight check.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/graph.h"
#include "runtime/logging.h"
#include "runtime/param_store.h"

namespace xfr {

struct InitReport {
  std::vector<std::string> rules;          // per store slot: the rule that wrote it ("" = none)
  std::vector<std::string> uninitialised;  // parameter names no rule wrote
};

// Fills every parameter of `store` that `g` declares. Random draws come from Philox(seed) at the
// parameter's flat offset, so they do not depend on the order or presence of other parameters.
InitReport initialize_weights(const Graph& g, ParamStore& store, const std::string& scheme, double gain, uint64_t seed);

// mode "error": throws xfr::Error listing the uninitialised parameters; "warn": logs them; "off": nothing.
void check_initialised(const InitReport& report, const std::string& mode, const Logger& logger);

}  // namespace xfr

// What a trainable parameter is, so optimizers and init schemes can treat kinds differently
// (e.g. AdamW does not decay biases, norm gains and embeddings unless configured).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace xfr {

enum class ParamKind : uint8_t { weight, bias, norm, embedding, other };

inline const char* param_kind_name(ParamKind k) {
  switch (k) {
    case ParamKind::weight: return "weight";
    case ParamKind::bias: return "bias";
    case ParamKind::norm: return "norm";
    case ParamKind::embedding: return "embedding";
    case ParamKind::other: return "other";
  }
  return "?";
}

// How an init scheme sees a parameter: the module that owns it, named and typed as in xFormers' model
// factory (whose weight-init rules match on module names and types), so the schemes can be applied
// exactly (factory/weight_init.h).
enum class ModuleKind : uint8_t { unknown, linear, layernorm, embedding, conv2d, component };

struct InitInfo {
  std::string module;   // xFormers-equivalent dotted module path, e.g. "0.wrap_ff.layer.sublayer.mlp.0"
  ModuleKind kind = ModuleKind::unknown;
  std::string attr;     // "weight", "bias", or a component's own attribute name
  // For parameters a component initialises itself (its init_weights): the rule, e.g. "normal(std=0.02)",
  // "constant(0.8944)", "ones", "zeros". Empty when the component has none.
  std::string component_rule;
  int64_t fan_in = 0, fan_out = 0;  // torch's _calculate_fan_in_and_fan_out of the parameter
};

// A parameter's place in the flat parameter / gradient / optimizer-state buffers (same layout in all).
struct ParamSlot {
  std::string name;    // e.g. "encoder.3.mha.q_proj.weight"
  ParamKind kind = ParamKind::weight;
  size_t offset = 0;   // in elements, into the flat f32 buffers; a multiple of 16 (64-byte aligned)
  size_t numel = 0;
  // Where the slot would start with every parameter in declaration order (Graph::store_adjacent groups may move it):
  // its initial values' place in the random stream, so that they do not depend on the storage order.
  size_t stream_offset = 0;
};

}  // namespace xfr

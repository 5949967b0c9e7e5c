// What a trainable parameter is, so optimizers and init schemes can treat kinds differently
// (e.g. AdamW does not decay biases, norm gains and embeddings unless configured).
#pragma once
#include <cstddef>
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

// A parameter's place in the flat parameter / gradient / optimizer-state buffers (same layout in all).
struct ParamSlot {
  std::string name;    // e.g. "encoder.3.mha.q_proj.weight"
  ParamKind kind = ParamKind::weight;
  size_t offset = 0;   // in elements, into the flat f32 buffers; a multiple of 16 (64-byte aligned)
  size_t numel = 0;
};

}  // namespace xfr

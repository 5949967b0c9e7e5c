// Scaled-dot-product attention. (B, H, S, D) heads without an additive mask (and Dv = D <= 256) run the fused
// flash_attention op (ops/flash_attention.h: O(S) memory, the same results and dropout stream); the rest,
// a composite of ops:
//   q: (B, H, Sq, D), k: (B, H, Sk, D), v: (B, H, Sk, Dv), mask: additive, broadcast to (B, H, Sq, Sk),
//   or undefined  ->  (B, H, Sq, Dv)
//   out = dropout(softmax(scale * q k^T + mask, causal)) v,   scale defaults to 1/sqrt(D)
// `causal` hides key j > query i (top-left aligned, like torch SDPA's is_causal). Any rank >= 3 works:
// the leading axes are batch axes.
#pragma once
#include <optional>

#include "runtime/graph.h"

namespace xfr {

struct AttentionOptions {
  bool causal = false;
  double dropout = 0.0;          // on the attention probabilities, training only
  std::optional<double> scale;   // default 1/sqrt(D)
};

Value scaled_dot_product_attention(Value q, Value k, Value v, Value mask, const AttentionOptions& options,
                                   const std::string& name = {});

}  // namespace xfr

// Scaled-dot-product attention. Heads without an additive mask (and Dv = D <= 256, rank 4) run the fused
// flash_attention op (ops/flash_attention.h: O(S) memory, the same results and dropout stream); the rest, a
// composite of ops:
//   layout bhsd: q: (B, H, Sq, D), k: (B, H, Sk, D), v: (B, H, Sk, Dv) -> (B, H, Sq, Dv)
//   layout bshd: q: (B, Sq, H, D), k: (B, Sk, H, D), v: (B, Sk, H, Dv) -> (B, Sq, H, Dv)   (rank 4 only)
//   mask: additive, broadcast to (B, H, Sq, Sk), or undefined
//   out = dropout(softmax(scale * q k^T + mask, causal)) v,   scale defaults to 1/sqrt(D)
// `causal` hides key j > query i (top-left aligned, like torch SDPA's is_causal). With layout bhsd any rank >= 3
// works: the leading axes are batch axes. The fused path also takes grouped-query heads (k, v with Hk | H heads).
// bshd on the composite path permutes to bhsd and back (the fused path needs no permute).
#pragma once
#include <optional>

#include "ops/flash_attention.h"
#include "runtime/graph.h"

namespace xfr {

struct AttentionOptions {
  bool causal = false;
  double dropout = 0.0;          // on the attention probabilities, training only
  std::optional<double> scale;   // default 1/sqrt(D)
  AttentionLayout layout = AttentionLayout::bhsd;
};

Value scaled_dot_product_attention(Value q, Value k, Value v, Value mask, const AttentionOptions& options,
                                   const std::string& name = {});

}  // namespace xfr

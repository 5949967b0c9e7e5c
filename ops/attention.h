// Scaled-dot-product attention. Rank-4 heads with Dv = D <= 256 run the fused flash_attention op
// (ops/flash_attention.h: O(S) memory, the same results and dropout stream); the rest, a composite of ops:
//   layout bhsd: q: (B, H, Sq, D), k: (B, Hk, Sk, D), v: (B, Hk, Sk, Dv) -> (B, H, Sq, Dv)
//   layout bshd: q: (B, Sq, H, D), k: (B, Sk, Hk, D), v: (B, Sk, Hk, Dv) -> (B, Sq, H, Dv)   (rank 4 only)
//   mask: additive, broadcast to (B, H, Sq, Sk), or undefined
//   out = dropout(softmax(scale * q k^T + mask, masked)) v,   scale defaults to 1/sqrt(D)
// The masks (ops/flash_attention.h, AttentionBand): `causal` hides the keys after the one a query is aligned with,
// `alignment` says which one that is (top_left: key i for query i, like torch SDPA's is_causal; bottom_right:
// key i + Sk - Sq, FlashAttention's), and a sliding window (window_left, window_right; -1 unbounded) hides the
// keys further than that before / after it. The fused path takes a mask of shape (1 or B, 1 or H, Sq, Sk) in q's
// dtype as its additive bias (its gradient included); other masks take the composite. With layout bhsd any
// rank >= 3 works on the composite (the leading axes are batch axes); the fused path also takes grouped-query
// heads (k, v with Hk | H heads, Hk = H on the composite).
// The composite (XF_ATTENTION_BACKEND=composite, or shapes the fused op does not take) supports causal top_left
// (and bottom_right when Sq = Sk, where both are the same) and additive masks; a window or a bottom_right
// alignment with Sq != Sk there is refused with an error naming the reason. bshd on the composite permutes to
// bhsd and back.
#pragma once
#include <cstdint>
#include <optional>

#include "ops/flash_attention.h"
#include "runtime/graph.h"

namespace xfr {

struct AttentionOptions {
  bool causal = false;
  double dropout = 0.0;          // on the attention probabilities, training only
  std::optional<double> scale;   // default 1/sqrt(D)
  AttentionLayout layout = AttentionLayout::bhsd;
  CausalAlignment alignment = CausalAlignment::top_left;
  int64_t window_left = -1, window_right = -1;  // sliding window around the aligned key; -1 unbounded
};

Value scaled_dot_product_attention(Value q, Value k, Value v, Value mask, const AttentionOptions& options,
                                   const std::string& name = {});

// The same on a packed qkv (B, S, 3, H, D) -> (B, S, H, D) (self-attention; options.layout is ignored: the heads are
// bshd). The fused op reads q, k and v in place and writes one dqkv (ops/flash_attention.h, qkv_packed) when it takes
// the call (D <= 256, no mask or a bias-shaped one); otherwise q, k and v are sliced out and attended as bshd heads.
Value scaled_dot_product_attention_qkvpacked(Value qkv, Value mask, const AttentionOptions& options,
                                            const std::string& name = {});

}  // namespace xfr

#include "ops/attention.h"

#include <cmath>
#include <string>

#include "ops/attention_backend.h"
#include "ops/dropout.h"
#include "ops/flash_attention.h"
#include "ops/matmul.h"
#include "ops/shape_ops.h"
#include "ops/softmax.h"
#include "runtime/error.h"

namespace xfr {

namespace {

// The composite: (..., S, D) heads.
Value composite_attention(Value q, Value k, Value v, Value mask, const AttentionOptions& o, double scale,
                          const std::string& name) {
  const char* op = "scaled_dot_product_attention";
  for (size_t i = 0; i + 2 < q.rank(); ++i)
    XF_CHECK(q.shape()[i] == k.shape()[i] && q.shape()[i] == v.shape()[i], op, "batch axes differ: q ",
             shape_str(q.shape()), ", k ", shape_str(k.shape()), ", v ", shape_str(v.shape()));
  auto s = q.graph->scope(name);
  const Value scores = matmul(q, k, false, true, "scores");  // (B, H, Sq, Sk)
  Value probs = softmax(scores, mask, scale, o.causal, "probs");
  if (o.dropout > 0.0) probs = dropout(probs, o.dropout, "probs_dropout");
  return matmul(probs, v, false, false, "out");  // (B, H, Sq, Dv)
}

// Whether the fused op takes rank-4 heads (B, H, Sq, D) with v's head dim Dv and `mask`: not under
// XF_ATTENTION_BACKEND=composite (its other values pick the fused op's kernels, ops/attention_backend.h, and are checked
// here, before anything runs), Dv = D <= 256, and no mask or one of a bias's shape (1 or B, 1 or H, Sq, Sk) in q's
// dtype.
bool fused_takes(size_t rank, int64_t B, int64_t H, int64_t Sq, int64_t Sk, int64_t D, int64_t Dv, DType dtype,
                 const Value& mask) {
  if (attention_backend_from_env() == AttentionBackendRequest::composite) return false;
  const bool bias_mask = mask.defined() && mask.rank() == 4 && mask.dtype() == dtype &&
                         (mask.dim(0) == 1 || mask.dim(0) == B) && (mask.dim(1) == 1 || mask.dim(1) == H) &&
                         mask.dim(2) == Sq && mask.dim(3) == Sk;
  return (!mask.defined() || bias_mask) && rank == 4 && Dv == D && D <= 256;
}

FlashAttentionAttrs flash_attrs(const AttentionOptions& o, double scale) {
  FlashAttentionAttrs a;
  a.scale = scale;
  a.causal = o.causal;
  a.dropout = o.dropout;
  a.layout = o.layout;
  a.alignment = o.alignment;
  a.window_left = o.window_left;
  a.window_right = o.window_right;
  return a;
}

}  // namespace

Value scaled_dot_product_attention_qkvpacked(Value qkv, Value mask, const AttentionOptions& options,
                                            const std::string& name) {
  const char* op = "scaled_dot_product_attention";
  XF_CHECK(qkv.defined() && qkv.rank() == 5 && qkv.dim(2) == 3, op, "a packed qkv must be (B, S, 3, H, D), got ",
           qkv.defined() ? shape_str(qkv.shape()) : std::string("nothing"));
  XF_CHECK(options.dropout >= 0.0 && options.dropout < 1.0, op, "dropout ", options.dropout, " is outside [0, 1)");
  AttentionOptions o = options;
  o.layout = AttentionLayout::bshd;
  const int64_t B = qkv.dim(0), S = qkv.dim(1), H = qkv.dim(3), D = qkv.dim(4);
  const double scale = o.scale ? *o.scale : 1.0 / std::sqrt(static_cast<double>(D));
  const std::string n = name.empty() ? "attention" : name;
  if (fused_takes(4, B, H, S, S, D, D, qkv.dtype(), mask))
    return flash_attention_qkvpacked(qkv, flash_attrs(o, scale), n, mask).out;
  // The parts as (B, S, H, D) heads.
  const std::vector<Value> parts = split(qkv, 2, {1, 1, 1}, n + ".qkv_split");
  auto head = [&](int i, const char* what) { return reshape(parts[static_cast<size_t>(i)], {B, S, H, D}, n + what); };
  return scaled_dot_product_attention(head(0, ".q"), head(1, ".k"), head(2, ".v"), mask, o, n);
}

Value scaled_dot_product_attention(Value q, Value k, Value v, Value mask, const AttentionOptions& o,
                                   const std::string& name) {
  const char* op = "scaled_dot_product_attention";
  XF_CHECK(q.defined() && k.defined() && v.defined(), op, "q, k and v are required");
  const bool bshd = o.layout == AttentionLayout::bshd;
  XF_CHECK(q.rank() >= 3 && k.rank() == q.rank() && v.rank() == q.rank(), op, "q ", shape_str(q.shape()), ", k ",
           shape_str(k.shape()), ", v ", shape_str(v.shape()), " must share a rank >= 3");
  XF_CHECK(!bshd || q.rank() == 4, op, "layout bshd needs q (B, Sq, H, D), k and v (B, Sk, H, D), got q ",
           shape_str(q.shape()));
  const int64_t seq_axis = bshd ? 1 : -2;  // Sk of k and v
  XF_CHECK(q.dim(-1) == k.dim(-1), op, "q ", shape_str(q.shape()), " and k ", shape_str(k.shape()),
           " differ in head dim");
  XF_CHECK(k.dim(seq_axis) == v.dim(seq_axis), op, "k ", shape_str(k.shape()), " and v ", shape_str(v.shape()),
           " differ in sequence length");
  XF_CHECK(o.dropout >= 0.0 && o.dropout < 1.0, op, "dropout ", o.dropout, " is outside [0, 1)");
  const double scale = o.scale ? *o.scale : 1.0 / std::sqrt(static_cast<double>(q.dim(-1)));
  const std::string n = name.empty() ? "attention" : name;
  const bool windowed = o.window_left >= 0 || o.window_right >= 0;
  // Fused, memory-efficient attention (ops/flash_attention.h) for rank-4 heads: O(S) memory instead of the
  // (B, H, Sq, Sk) scores and probabilities, the same dropout stream; a mask of a bias's shape is its bias.
  // XF_ATTENTION_BACKEND=composite keeps the composite (A/B comparisons, debugging); its other values pick the
  // fused op's kernels (ops/attention_backend.h) and are checked here, before anything runs.
  const int64_t H = q.dim(bshd ? 2 : 1), B = q.dim(0);
  if (fused_takes(q.rank(), B, H, q.dim(bshd ? 1 : 2), k.dim(seq_axis), q.dim(-1), v.dim(-1), q.dtype(), mask))
    return flash_attention(q, k, v, flash_attrs(o, scale), n, mask).out;
  const bool composite_only = attention_backend_from_env() == AttentionBackendRequest::composite;
  const int64_t Sq = q.dim(bshd ? 1 : -2), Sk = k.dim(seq_axis);
  const bool misaligned = o.causal && o.alignment == CausalAlignment::bottom_right && Sq != Sk;
  XF_CHECK(!windowed && !misaligned, op, "the composite attention (", composite_only ? "XF_ATTENTION_BACKEND=composite"
           : "heads the fused op does not take: rank 4, Dv = D <= 256 and a (1 or B, 1 or H, Sq, Sk) mask", ") has "
           "no ", windowed ? str_cat("sliding window (", o.window_left, ", ", o.window_right, ")")
           : str_cat("bottom_right causal alignment for Sq ", Sq, " != Sk ", Sk), "; q ", shape_str(q.shape()), ", k ",
           shape_str(k.shape()));
  if (!bshd) return composite_attention(q, k, v, mask, o, scale, n);
  // (B, S, H, D) -> (B, H, S, D), the composite, and back.
  const std::vector<int64_t> swap{0, 2, 1, 3};
  const Value out = composite_attention(permute(q, swap, n + ".q_bhsd"), permute(k, swap, n + ".k_bhsd"),
                                        permute(v, swap, n + ".v_bhsd"), mask, o, scale, n);
  return permute(out, swap, n + ".out_bshd");  // (B, Sq, H, Dv)
}

}  // namespace xfr

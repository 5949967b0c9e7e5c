#include "ops/attention.h"

#include <cmath>
#include <string>

#include "ops/attention_backend.h"
#include "ops/dropout.h"
#include "ops/flash_attention.h"
#include "ops/matmul.h"
#include "ops/softmax.h"
#include "runtime/error.h"

namespace xfr {

Value scaled_dot_product_attention(Value q, Value k, Value v, Value mask, const AttentionOptions& o,
                                   const std::string& name) {
  const char* op = "scaled_dot_product_attention";
  XF_CHECK(q.defined() && k.defined() && v.defined(), op, "q, k and v are required");
  XF_CHECK(q.rank() >= 3 && k.rank() == q.rank() && v.rank() == q.rank(), op, "q ", shape_str(q.shape()), ", k ",
           shape_str(k.shape()), ", v ", shape_str(v.shape()), " must share a rank >= 3");
  for (size_t i = 0; i + 2 < q.rank(); ++i)
    XF_CHECK(q.shape()[i] == k.shape()[i] && q.shape()[i] == v.shape()[i], op, "batch axes differ: q ",
             shape_str(q.shape()), ", k ", shape_str(k.shape()), ", v ", shape_str(v.shape()));
  XF_CHECK(q.dim(-1) == k.dim(-1), op, "q ", shape_str(q.shape()), " and k ", shape_str(k.shape()),
           " differ in head dim");
  XF_CHECK(k.dim(-2) == v.dim(-2), op, "k ", shape_str(k.shape()), " and v ", shape_str(v.shape()),
           " differ in sequence length");
  XF_CHECK(o.dropout >= 0.0 && o.dropout < 1.0, op, "dropout ", o.dropout, " is outside [0, 1)");
  const double scale = o.scale ? *o.scale : 1.0 / std::sqrt(static_cast<double>(q.dim(-1)));
  Graph& g = *q.graph;
  // Fused, memory-efficient attention (ops/flash_attention.h) for (B, H, S, D) heads without an additive
  // mask: O(S) memory instead of the (B, H, Sq, Sk) scores and probabilities, the same dropout stream.
  // XF_ATTENTION_BACKEND=composite keeps the composite (A/B comparisons, debugging); its other values pick the
  // fused op's kernels (ops/attention_backend.h) and are checked here, before anything runs.
  const bool composite_only = attention_backend_from_env() == AttentionBackendRequest::composite;
  if (!composite_only && !mask.defined() && q.rank() == 4 && v.dim(-1) == q.dim(-1) && q.dim(-1) <= 256)
    return flash_attention(q, k, v, scale, o.causal, o.dropout, name.empty() ? "attention" : name).out;
  auto s = g.scope(name.empty() ? "attention" : name);
  const Value scores = matmul(q, k, false, true, "scores");  // (B, H, Sq, Sk)
  Value probs = softmax(scores, mask, scale, o.causal, "probs");
  if (o.dropout > 0.0) probs = dropout(probs, o.dropout, "probs_dropout");
  return matmul(probs, v, false, false, "out");  // (B, H, Sq, Dv)
}

}  // namespace xfr

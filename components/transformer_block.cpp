#include "components/transformer_block.h"

#include <cmath>

#include "components/linear.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/dropout.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "ops/norm.h"
#include "ops/shape_ops.h"
#include "runtime/error.h"

namespace xfr {

Value multi_head_self_attention(Value x, const AttentionSpec& spec, const std::string& name) {
  const char* op = "multi_head_attention";
  XF_CHECK(x.rank() == 3, op, "expects (B, T, C), got ", shape_str(x.shape()));
  XF_CHECK(spec.num_heads > 0 && spec.dim_model % spec.num_heads == 0, op, "dim_model ", spec.dim_model,
           " is not divisible by num_heads ", spec.num_heads);
  XF_CHECK(x.dim(-1) == spec.dim_model, op, "input ", shape_str(x.shape()), " does not have dim_model ",
           spec.dim_model);
  Graph& g = *x.graph;
  auto s = g.scope(name);
  const int64_t B = x.dim(0), T = x.dim(1), C = spec.dim_model, H = spec.num_heads, D = C / H;
  Value q, k, v;
  if (spec.fused_qkv) {
    const Value qkv = linear(x, C, 3 * C, spec.bias, "in_proj");  // (B, T, 3C)
    const auto parts = split(qkv, -1, {C, C, C}, "qkv_split");
    q = parts[0];
    k = parts[1];
    v = parts[2];
  } else {
    q = linear(x, C, C, spec.bias, "q_proj");
    k = linear(x, C, C, spec.bias, "k_proj");
    v = linear(x, C, C, spec.bias, "v_proj");
  }
  // (B, T, C) -> (B, T, H, D) -> (B, H, T, D)
  auto heads = [&](Value t, const char* n) { return permute(reshape(t, {B, T, H, D}), {0, 2, 1, 3}, n); };
  AttentionOptions ao;
  ao.causal = spec.causal;
  ao.dropout = spec.attention_dropout;
  const Value att = scaled_dot_product_attention(heads(q, "q_heads"), heads(k, "k_heads"), heads(v, "v_heads"),
                                                 Value{}, ao, "attention");
  const Value merged = reshape(permute(att, {0, 2, 1, 3}, "merge_heads"), {B, T, C});  // (B, T, C)
  Value y = linear(merged, C, C, spec.bias, "out_proj");
  if (spec.residual_dropout > 0) y = dropout(y, spec.residual_dropout, "residual_dropout");
  return y;
}

Value mlp(Value x, const MlpSpec& spec, const std::string& name) {
  XF_CHECK(spec.hidden_layer_multiplier > 0, "mlp", "hidden_layer_multiplier must be positive, got ",
           spec.hidden_layer_multiplier);
  Graph& g = *x.graph;
  auto s = g.scope(name);
  const int64_t C = spec.dim_model;
  const auto hidden = static_cast<int64_t>(std::llround(static_cast<double>(C) * spec.hidden_layer_multiplier));
  Value h = linear(x, C, hidden, spec.bias, "fc1");
  h = activation(h, activation_by_name(spec.activation), "act");
  if (spec.dropout > 0) h = dropout(h, spec.dropout, "dropout1");
  Value y = linear(h, hidden, C, spec.bias, "fc2");
  if (spec.dropout > 0) y = dropout(y, spec.dropout, "dropout2");
  return y;
}

Value layer_norm(Value x, double eps, const std::string& name) {
  Graph& g = *x.graph;
  auto s = g.scope(name);
  const int64_t C = x.dim(-1);
  return layernorm(x, g.param("weight", {C}, ParamKind::norm), g.param("bias", {C}, ParamKind::norm), eps, "ln");
}

Value transformer_block(Value x, const BlockSpec& spec, const std::string& name) {
  Graph& g = *x.graph;
  auto s = g.scope(name);
  if (spec.residual == ResidualStyle::pre) {
    x = add(x, multi_head_self_attention(layer_norm(x, spec.layer_norm_eps, "norm1"), spec.attention), "residual1");
    return add(x, mlp(layer_norm(x, spec.layer_norm_eps, "norm2"), spec.mlp), "residual2");
  }
  x = layer_norm(add(x, multi_head_self_attention(x, spec.attention), "residual1"), spec.layer_norm_eps, "norm1");
  return layer_norm(add(x, mlp(x, spec.mlp), "residual2"), spec.layer_norm_eps, "norm2");
}

}  // namespace xfr

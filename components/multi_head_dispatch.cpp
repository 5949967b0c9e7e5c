#include "components/multi_head_dispatch.h"

#include "components/linear.h"
#include "ops/bias_add.h"
#include "ops/linear.h"
#include "ops/dropout.h"
#include "ops/matmul.h"
#include "ops/rotary.h"
#include "ops/shape_ops.h"
#include "runtime/error.h"

namespace xfr {

Value multi_head_dispatch(Value x, const MultiHeadSpec& spec, const AttentionFn& attention, const std::string& name,
                          const AttentionFn& attention_bshd, const PackedAttentionFn& attention_qkvpacked) {
  const char* op = "multi_head_dispatch";
  XF_CHECK(x.rank() == 3, op, "expects (B, T, C), got ", shape_str(x.shape()));
  const int64_t B = x.dim(0), T = x.dim(1), C = spec.dim_model, H = spec.num_heads;
  const int64_t dk = spec.dim_key > 0 ? spec.dim_key : C, dv = spec.dim_value > 0 ? spec.dim_value : C;
  XF_CHECK(x.dim(2) == C, op, "input ", shape_str(x.shape()), " does not have dim_model ", C);
  XF_CHECK(H > 0 && dk % H == 0 && dv % H == 0, op, "dim_key ", dk, " and dim_value ", dv,
           " must be divisible by num_heads ", H);
  XF_CHECK(spec.use_separate_proj_weight || dk == dv, op,
           "a shared in-projection (use_separate_proj_weight: false) needs dim_key == dim_value, got ", dk, " and ", dv);
  XF_CHECK(!spec.use_rotary_embeddings || (dk / H) % 2 == 0, op,
           "multi_head_config.use_rotary_embeddings needs an even head dimension dim_key / num_heads (rotary "
           "rotates pairs of features), got ", dk, " / ", H, " = ", dk / H);
  Graph& g = *x.graph;
  auto s = g.scope(name);
  const std::string in_proj = spec.init_prefix + ".in_proj_container";
  // The output projection and residual dropout, on the merged heads (B, T, dv).
  auto project_out = [&](Value merged) {
    Value y = linear(merged, dv, C, spec.bias, "proj", spec.init_prefix + ".proj");
    if (spec.residual_dropout > 0) y = dropout(y, spec.residual_dropout, "residual_dropout");
    return y;
  };
  if (attention_qkvpacked && spec.use_separate_proj_weight && !spec.use_rotary_embeddings && dk == dv) {
    // One GEMM for the three projections: y = x [Wq; Wk; Wv]^T + [bq; bk; bv] is (B, T, 3 dk), which is
    // (B, T, 3, H, dk/H), the packed qkv the attention reads in place (and whose gradient it writes whole).
    const LinearParams pq = linear_params(g, C, dk, spec.bias, "q_proj", in_proj + ".q_proj");
    const LinearParams pk = linear_params(g, C, dk, spec.bias, "k_proj", in_proj + ".k_proj");
    const LinearParams pv = linear_params(g, C, dv, spec.bias, "v_proj", in_proj + ".v_proj");
    // Stored next to each other, the three weights (and biases) are the packed ones: on a device the concatenations
    // are views of the flat buffers (Executor), with no copy. The initial values do not change (ParamSlot).
    g.store_adjacent({pq.weight, pk.weight, pv.weight});
    if (spec.bias) g.store_adjacent({pq.bias, pk.bias, pv.bias});
    const Value w = concat({pq.weight, pk.weight, pv.weight}, 0, "qkv_proj.weight");  // (3 dk, C)
    const Value b = spec.bias ? concat({pq.bias, pk.bias, pv.bias}, 0, "qkv_proj.bias") : Value{};  // (3 dk)
    const Value qkv = reshape(linear_op(x, w, b, false, "qkv_proj.linear"), {B, T, 3, H, dk / H}, "qkv_heads");
    const Value att = attention_qkvpacked(qkv);  // (B, T, H, dk/H)
    XF_CHECK(att.rank() == 4 && att.dim(0) == B && att.dim(1) == T && att.dim(2) == H && att.dim(3) == dv / H, op,
             "attention returned ", shape_str(att.shape()), ", expected ", shape_str({B, T, H, dv / H}));
    return project_out(reshape(att, {B, T, dv}, "merge_heads"));
  }
  Value q, k, v;
  if (spec.use_separate_proj_weight) {
    q = linear(x, C, dk, spec.bias, "q_proj", in_proj + ".q_proj");
    k = linear(x, C, dk, spec.bias, "k_proj", in_proj + ".k_proj");
    v = linear(x, C, dv, spec.bias, "v_proj", in_proj + ".v_proj");
  } else {
    // xFormers' shared in-projection: k_proj.weight and v_proj.weight are q_proj.weight, the biases stay
    // separate. With query = key = value, x W^T is computed once and each projection adds its bias.
    InitInfo info;
    info.module = in_proj + ".v_proj";  // xFormers' init visits q, k, v in turn: v_proj's write is the last
    info.kind = ModuleKind::linear;
    info.attr = "weight";
    info.fan_in = C;
    info.fan_out = dk;
    auto ps = g.scope("in_proj");
    const Value w = g.param("weight", {dk, C}, ParamKind::weight, info);
    const Value xw = matmul(x, w, false, true, "matmul");  // (B, T, dk)
    auto with_bias = [&](const char* proj) {
      if (!spec.bias) return xw;
      auto bs = g.scope(proj);
      InitInfo bi = info;
      bi.module = in_proj + "." + proj;
      bi.attr = "bias";
      return bias_add(xw, g.param("bias", {dk}, ParamKind::bias, bi), "bias_add");
    };
    q = with_bias("q_proj");
    k = with_bias("k_proj");
    v = with_bias("v_proj");
  }
  const bool bshd = static_cast<bool>(attention_bshd);
  // (B, T, H*D) -> (B, T, H, D), then -> (B, H, T, D) unless the attention takes bshd heads.
  auto heads = [&](Value t, int64_t width, const char* n) {
    if (bshd) return reshape(t, {B, T, H, width / H}, n);
    return permute(reshape(t, {B, T, H, width / H}), {0, 2, 1, 3}, n);
  };
  Value qh = heads(q, dk, "q_heads"), kh = heads(k, dk, "k_heads");  // (B, H, T, dk/H) or (B, T, H, dk/H)
  if (spec.use_rotary_embeddings) {
    // xFormers: RotaryEmbedding on (B, H, S, hd) q and k, positions 0..S-1 (self-attention: S_q = S_k); on bshd
    // heads the same rotation of every head of a position.
    qh = bshd ? rotary_bshd(qh, 0, "q_rotary") : rotary(qh, 0, "q_rotary");
    kh = bshd ? rotary_bshd(kh, 0, "k_rotary") : rotary(kh, 0, "k_rotary");
  }
  const Value vh = heads(v, dv, "v_heads");
  const Value att = bshd ? attention_bshd(qh, kh, vh) : attention(qh, kh, vh);
  const int64_t head_axis = bshd ? 2 : 1, seq_axis = bshd ? 1 : 2;
  XF_CHECK(att.rank() == 4 && att.dim(0) == B && att.dim(head_axis) == H && att.dim(seq_axis) == T &&
               att.dim(3) == dv / H,
           op, "attention returned ", shape_str(att.shape()), ", expected ",
           bshd ? shape_str({B, T, H, dv / H}) : shape_str({B, H, T, dv / H}));
  const Value merged = bshd ? reshape(att, {B, T, dv}, "merge_heads")
                            : reshape(permute(att, {0, 2, 1, 3}, "merge_heads"), {B, T, dv});  // (B, T, dv)
  return project_out(merged);
}

}  // namespace xfr

#include "ops/flash_attention.h"

#include <cmath>

#include "ops/elementwise.h"
#include "runtime/error.h"

namespace xfr {

namespace {

void check_options(const char* op, const FlashAttentionAttrs& a) {
  XF_CHECK(std::isfinite(a.scale), op, "scale must be finite, got ", a.scale);
  XF_CHECK(a.dropout >= 0.0 && a.dropout < 1.0, op, "dropout must be in [0, 1), got ", a.dropout);  // refuses NaN
}

// The axes of (batch, heads, positions) in a rank-4 tensor of `layout`.
struct Axes {
  int heads, seq;
};
Axes axes_of(AttentionLayout layout) { return layout == AttentionLayout::bhsd ? Axes{1, 2} : Axes{2, 1}; }

std::string attrs_str(const FlashAttentionAttrs& a) {
  return str_cat("scale=", a.scale, ", causal=", a.causal, ", dropout=", a.dropout,
                 ", layout=", attention_layout_name(a.layout));
}

}  // namespace

const char* attention_layout_name(AttentionLayout layout) {
  return layout == AttentionLayout::bhsd ? "bhsd" : "bshd";
}

HeadStrides head_strides(AttentionLayout layout, int64_t heads, int64_t S, int64_t D) {
  if (layout == AttentionLayout::bhsd) return {heads * S * D, S * D, D};
  return {S * heads * D, D, heads * D};
}

FlashAttentionShape flash_attention_shape(const char* op, AttentionLayout layout, const TensorMeta& q,
                                          const TensorMeta& k, const TensorMeta& v) {
  const bool bhsd = layout == AttentionLayout::bhsd;
  const char* qs = bhsd ? "q (B, H, Sq, D)" : "q (B, Sq, H, D)";
  const char* ks = bhsd ? "k and v (B, Hk, Sk, D)" : "k and v (B, Sk, Hk, D)";
  XF_CHECK(is_floating(q.dtype), op, "q must be floating point, got ", q.str());
  XF_CHECK(k.dtype == q.dtype && v.dtype == q.dtype, op, "q ", q.str(), ", k ", k.str(), " and v ", v.str(),
           " must share a dtype");
  XF_CHECK(q.shape.size() == 4 && k.shape.size() == 4 && v.shape.size() == 4, op, qs, ", ", ks,
           " must have rank 4 (layout ", attention_layout_name(layout), "), got q ", shape_str(q.shape), ", k ",
           shape_str(k.shape), ", v ", shape_str(v.shape));
  const Axes ax = axes_of(layout);
  FlashAttentionShape s;
  s.B = q.shape[0];
  s.H = q.shape[static_cast<size_t>(ax.heads)];
  s.Sq = q.shape[static_cast<size_t>(ax.seq)];
  s.D = q.shape[3];
  s.Hk = k.shape[static_cast<size_t>(ax.heads)];
  s.Sk = k.shape[static_cast<size_t>(ax.seq)];
  XF_CHECK(k.shape == v.shape, op, "k ", shape_str(k.shape), " and v ", shape_str(v.shape), " must have the same shape: ",
           ks);
  XF_CHECK(k.shape[0] == s.B, op, "q ", shape_str(q.shape), " and k ", shape_str(k.shape), " differ in batch");
  XF_CHECK(k.shape[3] == s.D, op, "q ", shape_str(q.shape), " and k ", shape_str(k.shape), " differ in head dim");
  XF_CHECK(s.D > 0, op, "head dim must be positive, got q ", shape_str(q.shape));
  XF_CHECK(s.Hk > 0 && s.H % s.Hk == 0, op, "the query heads of ", qs, " = ", shape_str(q.shape),
           " must be a multiple of the key/value heads of k ", shape_str(k.shape), " (grouped-query attention)");
  s.q = head_strides(layout, s.H, s.Sq, s.D);
  s.k = head_strides(layout, s.Hk, s.Sk, s.D);
  return s;
}

// ---- flash_attention ------------------------------------------------------------------------------------

std::string FlashAttentionOp::attrs() const { return attrs_str(a); }

std::vector<TensorMeta> FlashAttentionOp::infer(const std::vector<TensorMeta>& in) const {
  const char* op = "flash_attention";
  XF_CHECK(in.size() == 3, op, "takes 3 inputs (q, k, v), got ", in.size());
  check_options(op, a);
  const FlashAttentionShape s = flash_attention_shape(op, a.layout, in[0], in[1], in[2]);
  return {in[0], TensorMeta{{s.B, s.H, s.Sq}, flash_attention_lse_dtype(in[0].dtype)}};
}

int64_t FlashAttentionOp::random_numbers(const std::vector<TensorMeta>& in) const {
  if (a.dropout == 0.0 || in.size() < 2 || in[0].shape.size() != 4 || in[1].shape.size() != 4) return 0;
  const Axes ax = axes_of(a.layout);
  return in[0].shape[0] * in[0].shape[static_cast<size_t>(ax.heads)] * in[0].shape[static_cast<size_t>(ax.seq)] *
         in[1].shape[static_cast<size_t>(ax.seq)];  // B H Sq Sk
}

std::vector<Value> FlashAttentionOp::backward(const BackwardContext& ctx) const {
  std::vector<Value> grads(3);
  if (!ctx.needs_grad(0) && !ctx.needs_grad(1) && !ctx.needs_grad(2)) return grads;
  Value dout = ctx.grad(0);
  const Value dlse = ctx.grad(1);
  if (!dout.defined() && !dlse.defined()) return grads;
  if (!dout.defined()) dout = fill(ctx.graph, ctx.output(0).meta(), 0.0, ctx.name("dout_zero"));
  std::vector<Value> in{ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0), dout, ctx.output(1)};
  if (dlse.defined()) in.push_back(dlse);
  // The forward node's rng_offset: the backward regenerates the same dropout mask.
  const auto outs = ctx.graph.add(std::make_shared<FlashAttentionBackwardOp>(a, dlse.defined()), in,
                                  ctx.name("flash_attention"), ctx.node.rng_offset);
  for (int i = 0; i < 3; ++i)
    if (ctx.needs_grad(i)) grads[static_cast<size_t>(i)] = outs[static_cast<size_t>(i)];
  return grads;
}

// ---- flash_attention_backward ---------------------------------------------------------------------------

std::string FlashAttentionBackwardOp::attrs() const { return attrs_str(a) + str_cat(", dlse=", has_dlse); }

std::vector<TensorMeta> FlashAttentionBackwardOp::infer(const std::vector<TensorMeta>& in) const {
  const char* op = "flash_attention_backward";
  XF_CHECK(in.size() == 6u + has_dlse, op, "takes ", 6 + has_dlse, " inputs (q, k, v, out, dout, lse",
           has_dlse ? ", dlse" : "", "), got ", in.size());
  check_options(op, a);
  const FlashAttentionShape s = flash_attention_shape(op, a.layout, in[0], in[1], in[2]);
  XF_CHECK(in[3] == in[0], op, "out ", in[3].str(), " must match q ", in[0].str());
  XF_CHECK(in[4] == in[0], op, "dout ", in[4].str(), " must match q ", in[0].str());
  const TensorMeta rows{{s.B, s.H, s.Sq}, flash_attention_lse_dtype(in[0].dtype)};
  XF_CHECK(in[5] == rows, op, "lse ", in[5].str(), " must be ", rows.str(), " for q ", in[0].str());
  if (has_dlse) XF_CHECK(in[6] == rows, op, "dlse ", in[6].str(), " must be ", rows.str(), " for q ", in[0].str());
  return {in[0], in[1], in[2]};
}

// ---- front end ------------------------------------------------------------------------------------------

FlashAttentionOutputs flash_attention(Value q, Value k, Value v, const FlashAttentionAttrs& attrs,
                                      const std::string& name) {
  XF_CHECK(q.defined() && k.defined() && v.defined(), "flash_attention", "q, k and v are required");
  const auto outs = q.graph->add(std::make_shared<FlashAttentionOp>(attrs), {q, k, v}, name);
  return {outs[0], outs[1]};
}

FlashAttentionOutputs flash_attention(Value q, Value k, Value v, double scale, bool causal, double dropout,
                                      const std::string& name) {
  return flash_attention(q, k, v, FlashAttentionAttrs{scale, causal, dropout, AttentionLayout::bhsd}, name);
}

}  // namespace xfr

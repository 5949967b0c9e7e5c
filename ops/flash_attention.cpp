#include "ops/flash_attention.h"

#include <cmath>

#include "ops/elementwise.h"
#include "runtime/error.h"

namespace xfr {

namespace {

void check_options(const char* op, const FlashAttentionAttrs& a) {
  XF_CHECK(std::isfinite(a.scale), op, "scale must be finite, got ", a.scale);
  XF_CHECK(a.dropout >= 0.0 && a.dropout < 1.0, op, "dropout must be in [0, 1), got ", a.dropout);  // refuses NaN
  XF_CHECK(a.window_left >= -1 && a.window_right >= -1, op, "window_left and window_right must be >= 0, or -1 for "
           "unbounded, got (", a.window_left, ", ", a.window_right, ")");
  XF_CHECK(!a.causal || a.window_right <= 0, op, "causal hides every key after the diagonal, so window_right must be "
           "-1 or 0 with causal, got ", a.window_right);
  XF_CHECK(!(a.varlen && a.has_bias), op, "a bias (Bb, Hb, Sq, Sk) has no meaning for packed sequences (varlen): "
           "use one or the other");
  XF_CHECK(!a.qkv_packed || a.layout == AttentionLayout::bshd, op, "a packed qkv (B, S, 3, H, D) has bshd heads, "
           "so qkv_packed needs layout bshd, got ", attention_layout_name(a.layout));
}

// The q (= k = v) meta of a packed qkv (B, S, 3, H, D) or varlen (T, 3, H, D): (B, S, H, D) or (T, H, D).
TensorMeta packed_part(const char* op, const FlashAttentionAttrs& a, const TensorMeta& qkv) {
  const size_t rank = a.varlen ? 4 : 5, three = rank - 3;
  XF_CHECK(qkv.shape.size() == rank && qkv.shape[three] == 3, op, "a packed qkv must be ",
           a.varlen ? "(T, 3, H, D)" : "(B, S, 3, H, D)", ", got ", shape_str(qkv.shape));
  Shape part = qkv.shape;
  part.erase(part.begin() + static_cast<std::ptrdiff_t>(three));
  return TensorMeta{part, qkv.dtype};
}

// The axes of heads and positions in q, k, v of `layout` (rank 4; one less, no batch axis, for varlen).
struct Axes {
  size_t heads, seq;
};
Axes axes_of(AttentionLayout layout, bool varlen) {
  const size_t o = varlen ? 0 : 1;
  return layout == AttentionLayout::bhsd ? Axes{o, o + 1} : Axes{o + 1, o};
}

}  // namespace

const char* attention_layout_name(AttentionLayout layout) {
  return layout == AttentionLayout::bhsd ? "bhsd" : "bshd";
}

const char* causal_alignment_name(CausalAlignment a) {
  return a == CausalAlignment::top_left ? "top_left" : "bottom_right";
}

AttentionBand FlashAttentionAttrs::band() const {
  AttentionBand b;
  b.left = window_left;
  b.right = causal ? 0 : window_right;  // check_options: window_right is -1 or 0 with causal
  b.bottom_right = alignment == CausalAlignment::bottom_right;
  return b;
}

std::string FlashAttentionAttrs::str() const {
  std::string s = str_cat("scale=", scale, ", causal=", causal, ", dropout=", dropout,
                          ", layout=", attention_layout_name(layout));
  if (causal || window_left >= 0 || window_right >= 0) s += str_cat(", alignment=", causal_alignment_name(alignment));
  if (window_left >= 0 || window_right >= 0) s += str_cat(", window=(", window_left, ", ", window_right, ")");
  if (has_bias) s += ", bias";
  if (varlen) s += ", varlen";
  if (qkv_packed) s += ", qkv_packed";
  return s;
}

HeadStrides head_strides(AttentionLayout layout, int64_t heads, int64_t S, int64_t D, bool varlen) {
  HeadStrides s = layout == AttentionLayout::bhsd ? HeadStrides{heads * S * D, S * D, D}
                                                  : HeadStrides{S * heads * D, D, heads * D};
  if (varlen) s.batch = 0;
  return s;
}

FlashAttentionShape flash_attention_shape(const char* op, const FlashAttentionAttrs& a, const TensorMeta& q_in,
                                          const TensorMeta& k_in, const TensorMeta& v_in, const TensorMeta* bias,
                                          const TensorMeta* cu_q, const TensorMeta* cu_k) {
  // A packed qkv is validated as its three (equal) parts; its strides are set at the end.
  const TensorMeta part = a.qkv_packed ? packed_part(op, a, q_in) : TensorMeta{};
  const TensorMeta& q = a.qkv_packed ? part : q_in;
  const TensorMeta& k = a.qkv_packed ? part : k_in;
  const TensorMeta& v = a.qkv_packed ? part : v_in;
  const bool bhsd = a.layout == AttentionLayout::bhsd;
  const char* qs = a.varlen ? (bhsd ? "q (H, Tq, D)" : "q (Tq, H, D)") : (bhsd ? "q (B, H, Sq, D)" : "q (B, Sq, H, D)");
  const char* ks = a.varlen ? (bhsd ? "k and v (Hk, Tk, D)" : "k and v (Tk, Hk, D)")
                            : (bhsd ? "k and v (B, Hk, Sk, D)" : "k and v (B, Sk, Hk, D)");
  const size_t rank = a.varlen ? 3 : 4;
  XF_CHECK(is_floating(q.dtype), op, "q must be floating point, got ", q.str());
  XF_CHECK(k.dtype == q.dtype && v.dtype == q.dtype, op, "q ", q.str(), ", k ", k.str(), " and v ", v.str(),
           " must share a dtype");
  XF_CHECK(q.shape.size() == rank && k.shape.size() == rank && v.shape.size() == rank, op, qs, ", ", ks,
           " must have rank ", rank, " (layout ", attention_layout_name(a.layout), a.varlen ? ", varlen" : "",
           "), got q ", shape_str(q.shape), ", k ", shape_str(k.shape), ", v ", shape_str(v.shape));
  const Axes ax = axes_of(a.layout, a.varlen);
  FlashAttentionShape s;
  s.varlen = a.varlen;
  s.H = q.shape[ax.heads];
  s.Sq = q.shape[ax.seq];
  s.D = q.shape[rank - 1];
  s.Hk = k.shape[ax.heads];
  s.Sk = k.shape[ax.seq];
  XF_CHECK(k.shape == v.shape, op, "k ", shape_str(k.shape), " and v ", shape_str(v.shape), " must have the same shape: ",
           ks);
  if (!a.varlen) {
    s.B = q.shape[0];
    XF_CHECK(k.shape[0] == s.B, op, "q ", shape_str(q.shape), " and k ", shape_str(k.shape), " differ in batch");
  }
  XF_CHECK(k.shape[rank - 1] == s.D, op, "q ", shape_str(q.shape), " and k ", shape_str(k.shape), " differ in head dim");
  XF_CHECK(s.D > 0, op, "head dim must be positive, got q ", shape_str(q.shape));
  XF_CHECK(s.Hk > 0 && s.H % s.Hk == 0, op, "the query heads of ", qs, " = ", shape_str(q.shape),
           " must be a multiple of the key/value heads of k ", shape_str(k.shape), " (grouped-query attention)");
  s.q = head_strides(a.layout, s.H, s.Sq, s.D, a.varlen);
  s.k = head_strides(a.layout, s.Hk, s.Sk, s.D, a.varlen);
  s.o = s.q;
  if (a.qkv_packed) {  // rows of 3 H D: q's heads, then k's, then v's
    s.q = head_strides(a.layout, 3 * s.H, s.Sq, s.D, a.varlen);
    s.k = s.q;
    s.k_offset = s.H * s.D;
    s.v_offset = 2 * s.H * s.D;
  }
  s.lse_batch = a.varlen ? 0 : s.H * s.Sq;
  s.lse_head = s.Sq;
  if (a.has_bias) {
    XF_CHECK(bias != nullptr, op, "has_bias is set but no bias input was given");
    const Shape& bs = bias->shape;
    XF_CHECK(bias->dtype == q.dtype, op, "bias ", bias->str(), " must have q's dtype ", dtype_name(q.dtype));
    XF_CHECK(bs.size() == 4 && (bs[0] == 1 || bs[0] == s.B) && (bs[1] == 1 || bs[1] == s.H) && bs[2] == s.Sq &&
                 bs[3] == s.Sk,
             op, "bias ", shape_str(bs), " must be (Bb, Hb, Sq, Sk) = (1 or ", s.B, ", 1 or ", s.H, ", ", s.Sq, ", ",
             s.Sk, ") for ", qs, " = ", shape_str(q.shape), " and k ", shape_str(k.shape));
    s.bias_head = bs[1] == 1 ? 0 : s.Sq * s.Sk;
    s.bias_batch = bs[0] == 1 ? 0 : bs[1] * s.Sq * s.Sk;
  }
  if (a.varlen) {
    XF_CHECK(cu_q != nullptr && cu_k != nullptr, op, "varlen is set but cu_seqlens_q and cu_seqlens_k were not given");
    XF_CHECK((cu_q->dtype == DType::i32 || cu_q->dtype == DType::i64) && cu_k->dtype == cu_q->dtype, op,
             "cu_seqlens_q ", cu_q->str(), " and cu_seqlens_k ", cu_k->str(), " must both be i32 or both i64");
    XF_CHECK(cu_q->shape.size() == 1 && cu_q->shape == cu_k->shape && cu_q->shape[0] >= 1, op, "cu_seqlens_q ",
             cu_q->str(), " and cu_seqlens_k ", cu_k->str(), " must both be (nseq + 1) offsets");
    s.B = cu_q->shape[0] - 1;
  }
  return s;
}

FlashAttentionShape flash_attention_shape(const char* op, const FlashAttentionAttrs& a,
                                          const std::vector<TensorMeta>& in, int64_t bias_index, int64_t cu_index) {
  const auto at = [&](int64_t i) { return &in.at(static_cast<size_t>(i)); };
  const int64_t k = a.qkv_packed ? 0 : 1, v = a.qkv_packed ? 0 : 2;
  return flash_attention_shape(op, a, *at(0), *at(k), *at(v), a.has_bias ? at(bias_index) : nullptr,
                               a.varlen ? at(cu_index) : nullptr, a.varlen ? at(cu_index + 1) : nullptr);
}

Shape flash_attention_out_shape(const FlashAttentionAttrs& a, const FlashAttentionShape& s) {
  Shape o = a.layout == AttentionLayout::bhsd ? Shape{s.B, s.H, s.Sq, s.D} : Shape{s.B, s.Sq, s.H, s.D};
  if (a.varlen) o.erase(o.begin());
  return o;
}

// ---- flash_attention ------------------------------------------------------------------------------------

std::string FlashAttentionOp::attrs() const { return a.str(); }

std::vector<TensorMeta> FlashAttentionOp::infer(const std::vector<TensorMeta>& in) const {
  const char* op = "flash_attention";
  XF_CHECK(static_cast<int64_t>(in.size()) == a.num_inputs(), op, "takes ", a.num_inputs(), " inputs (",
           a.qkv_packed ? "qkv" : "q, k, v", a.has_bias ? ", bias" : "",
           a.varlen ? ", cu_seqlens_q, cu_seqlens_k" : "", "), got ", in.size());
  check_options(op, a);
  const FlashAttentionShape s = flash_attention_shape(op, a, in, a.bias_input(), a.cu_input());
  const Shape lse = a.varlen ? Shape{s.H, s.Sq} : Shape{s.B, s.H, s.Sq};
  return {TensorMeta{flash_attention_out_shape(a, s), in[0].dtype},
          TensorMeta{lse, flash_attention_lse_dtype(in[0].dtype)}};
}

int64_t FlashAttentionOp::random_numbers(const std::vector<TensorMeta>& in) const {
  if (a.dropout == 0.0 || static_cast<int64_t>(in.size()) < a.qkv_inputs()) return 0;
  const size_t rank = a.varlen ? 3 : 4;
  if (a.qkv_packed) {  // (B, S, 3, H, D) or (T, 3, H, D): B H S S, or H T T
    if (in[0].shape.size() != rank + 1) return 0;
    const Shape& x = in[0].shape;
    const int64_t S = x[a.varlen ? 0 : 1];
    return (a.varlen ? 1 : x[0]) * x[rank - 1] * S * S;
  }
  if (in[0].shape.size() != rank || in[1].shape.size() != rank) return 0;
  const Axes ax = axes_of(a.layout, a.varlen);
  const int64_t rows = (a.varlen ? 1 : in[0].shape[0]) * in[0].shape[ax.heads] * in[0].shape[ax.seq];
  return rows * in[1].shape[ax.seq];  // B H Sq Sk, or H Tq Tk
}

std::vector<Value> FlashAttentionOp::backward(const BackwardContext& ctx) const {
  std::vector<Value> grads(static_cast<size_t>(a.num_inputs()));
  const int n_qkv = static_cast<int>(a.qkv_inputs());
  const bool bias_grad = a.has_bias && ctx.needs_grad(static_cast<int>(a.bias_input()));
  bool qkv_grad = false;
  for (int i = 0; i < n_qkv; ++i) qkv_grad = qkv_grad || ctx.needs_grad(i);
  if (!qkv_grad && !bias_grad) return grads;
  Value dout = ctx.grad(0);
  const Value dlse = ctx.grad(1);
  if (!dout.defined() && !dlse.defined()) return grads;
  if (!dout.defined()) dout = fill(ctx.graph, ctx.output(0).meta(), 0.0, ctx.name("dout_zero"));
  std::vector<Value> in;
  for (int i = 0; i < n_qkv; ++i) in.push_back(ctx.input(i));
  in.insert(in.end(), {ctx.output(0), dout, ctx.output(1)});
  if (dlse.defined()) in.push_back(dlse);
  for (int64_t i = n_qkv; i < a.num_inputs(); ++i) in.push_back(ctx.input(static_cast<int>(i)));  // bias, offsets
  // The forward node's rng_offset: the backward regenerates the same dropout mask.
  const auto op = std::make_shared<FlashAttentionBackwardOp>(a, dlse.defined(), bias_grad);
  const auto outs = ctx.graph.add(op, in, ctx.name("flash_attention"), ctx.node.rng_offset);
  for (int i = 0; i < n_qkv; ++i)
    if (ctx.needs_grad(i)) grads[static_cast<size_t>(i)] = outs[static_cast<size_t>(i)];
  if (bias_grad) grads[static_cast<size_t>(a.bias_input())] = outs[static_cast<size_t>(op->dbias_output())];
  return grads;
}

// ---- flash_attention_backward ---------------------------------------------------------------------------

std::string FlashAttentionBackwardOp::attrs() const {
  return a.str() + str_cat(", dlse=", has_dlse, ", bias_grad=", bias_grad);
}

std::vector<TensorMeta> FlashAttentionBackwardOp::infer(const std::vector<TensorMeta>& in) const {
  const char* op = "flash_attention_backward";
  const int64_t n = num_inputs();
  XF_CHECK(static_cast<int64_t>(in.size()) == n, op, "takes ", n, " inputs (", a.qkv_packed ? "qkv" : "q, k, v",
           ", out, dout, lse", has_dlse ? ", dlse" : "", a.has_bias ? ", bias" : "",
           a.varlen ? ", cu_seqlens_q, cu_seqlens_k" : "", "), got ", in.size());
  XF_CHECK(!bias_grad || a.has_bias, op, "bias_grad needs a bias input");
  check_options(op, a);
  const auto at = [&](int64_t i) { return &in[static_cast<size_t>(i)]; };
  const FlashAttentionShape s = flash_attention_shape(op, a, in, bias_input(), cu_input());
  const TensorMeta out{flash_attention_out_shape(a, s), in[0].dtype};
  XF_CHECK(*at(out_input()) == out, op, "out ", at(out_input())->str(), " must be ", out.str());
  XF_CHECK(*at(dout_input()) == out, op, "dout ", at(dout_input())->str(), " must be ", out.str());
  const TensorMeta rows{a.varlen ? Shape{s.H, s.Sq} : Shape{s.B, s.H, s.Sq}, flash_attention_lse_dtype(in[0].dtype)};
  XF_CHECK(*at(lse_input()) == rows, op, "lse ", at(lse_input())->str(), " must be ", rows.str(), " for q ",
           in[0].str());
  if (has_dlse)
    XF_CHECK(*at(dlse_input()) == rows, op, "dlse ", at(dlse_input())->str(), " must be ", rows.str(), " for q ",
             in[0].str());
  std::vector<TensorMeta> grads(in.begin(), in.begin() + a.qkv_inputs());  // dq, dk, dv or dqkv
  if (bias_grad) grads.push_back(in[static_cast<size_t>(bias_input())]);
  return grads;
}

// ---- front end ------------------------------------------------------------------------------------------

FlashAttentionOutputs flash_attention(Value q, Value k, Value v, const FlashAttentionAttrs& attrs,
                                      const std::string& name, Value bias, Value cu_seqlens_q, Value cu_seqlens_k) {
  const char* op = "flash_attention";
  XF_CHECK(q.defined() && k.defined() && v.defined(), op, "q, k and v are required");
  XF_CHECK(cu_seqlens_q.defined() == cu_seqlens_k.defined(), op,
           "packed sequences need both cu_seqlens_q and cu_seqlens_k");
  FlashAttentionAttrs a = attrs;
  a.qkv_packed = false;
  a.has_bias = bias.defined();
  a.varlen = cu_seqlens_q.defined();
  std::vector<Value> in{q, k, v};
  if (a.has_bias) in.push_back(bias);
  if (a.varlen) {
    in.push_back(cu_seqlens_q);
    in.push_back(cu_seqlens_k);
  }
  const auto outs = q.graph->add(std::make_shared<FlashAttentionOp>(a), in, name);
  return {outs[0], outs[1]};
}

FlashAttentionOutputs flash_attention_qkvpacked(Value qkv, const FlashAttentionAttrs& attrs, const std::string& name,
                                                Value bias, Value cu_seqlens) {
  XF_CHECK(qkv.defined(), "flash_attention", "qkv is required");
  FlashAttentionAttrs a = attrs;
  a.qkv_packed = true;
  a.has_bias = bias.defined();
  a.varlen = cu_seqlens.defined();
  std::vector<Value> in{qkv};
  if (a.has_bias) in.push_back(bias);
  if (a.varlen) in.insert(in.end(), {cu_seqlens, cu_seqlens});
  const auto outs = qkv.graph->add(std::make_shared<FlashAttentionOp>(a), in, name);
  return {outs[0], outs[1]};
}

FlashAttentionOutputs flash_attention(Value q, Value k, Value v, double scale, bool causal, double dropout,
                                      const std::string& name) {
  return flash_attention(q, k, v, FlashAttentionAttrs{scale, causal, dropout, AttentionLayout::bhsd}, name);
}

}  // namespace xfr

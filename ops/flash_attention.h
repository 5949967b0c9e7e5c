// Fused, memory-efficient exact attention (FlashAttention): softmax(scale q k^T) v computed over key blocks
// with an online softmax, never materialising the Sq x Sk score matrix; the backward recomputes the
// probabilities from the saved log-sum-exp.
//
// Layouts (`layout`; the head dim D is always the contiguous last axis):
//   bhsd   q, out, dout, dq (B, H, Sq, D)    k, v, dk, dv (B, Hk, Sk, D)     (heads split and permuted)
//   bshd   q, out, dout, dq (B, Sq, H, D)    k, v, dk, dv (B, Sk, Hk, D)     (the (B, T, H*D) projections
//                                                                             reshaped: no permute needed)
//   lse, dlse are (B, H, Sq) in both. The formulas below index q[b,h,i,:] etc. by (batch, head, position)
//   whatever the layout; the kernels address every tensor through element strides (batch, head, seq).
//
//   flash_attention   inputs  (q, k, v)                                                  H % Hk == 0
//                     outputs (out in q's dtype and layout, lse (B, H, Sq) in flash_attention_lse_dtype)
//     s[b,h,i,j]  = scale * q[b,h,i,:] . k[b,h/G,j,:]                     G = H / Hk (GQA; Hk = 1 is MQA)
//                   j hidden (s = -inf) when causal and j > i (top-left aligned, as ops/softmax.h and torch's
//                   is_causal: with Sq > Sk queries i >= Sk see every key, with Sq < Sk the last keys are seen
//                   by no query)
//     lse[b,h,i]  = log sum_j exp(s[b,h,i,j])                            -inf for a row whose keys are all hidden
//     P[b,h,i,j]  = exp(s[b,h,i,j] - lse[b,h,i])                         0 in a fully hidden row
//     out[b,h,i]  = sum_j dropout(P)[b,h,i,j] v[b,h/G,j,:]               0 for a fully hidden row
//   dropout(P) is P * Z / (1 - p) with Z[b,h,i,j] = [philox_uniform(seed, offset + ((b H + h) Sq + i) Sk + j)
//   >= p], exactly the mask ops/dropout.h would draw for the materialised (B, H, Sq, Sk) probability tensor at
//   the same offset (so the composite ops/attention.h's mask, whose dropout node is the only random node of
//   its graph, is this op's mask when this op is the only random node of its graph). The element index is
//   logical (b, h, i, j), the same in both layouts. random_numbers() is B H Sq Sk, so the graph reserves that
//   slice of the Philox stream; lse is the log-sum-exp before dropout.
//
//   flash_attention_backward
//                     inputs  (q, k, v, out, dout, lse, [dlse (B, H, Sq) when has_dlse])
//                     outputs (dq, dk, dv) in q's dtype, each in its primal's shape (the op's layout)
//     Delta[i] = sum_d dout[i,d] out[i,d] - dlse[i]
//     dv[j]    = sum over the G query heads of kv head j's group, and over i, of dropout(P)[i,j] dout[i]
//     dS[i,j]  = P[i,j] (Z[i,j] / (1 - p) dout[i] . v[j] - Delta[i])
//     dq[i]    = scale sum_j dS[i,j] k[j],      dk[j] = scale sum over the group's heads and i of dS[i,j] q[i]
//   P is recomputed from lse block by block (no Sq x Sk buffer) and Z from the same Philox elements: the
//   backward node is added with the forward node's rng_offset. A gradient reaching lse is supported (it only
//   shifts Delta: d lse[i] / d s[i,j] = P[i,j]).
//
// Dtypes: the CPU computes in f32 or f64 (f64 for references and finite-difference checks); the CUDA backend in
// bf16 and f16 on tensor cores with fp32 accumulation, or f32. lse is f32, except f64 when q is f64 (a gradient
// check recomputes P from lse: an f32 lse would put a 1e-7 relative error on every probability).
// Head dim: any D >= 1 on the CPU; 1..256 on CUDA.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "runtime/graph.h"

namespace xfr {

// The dtype of lse (and of dlse) for q of dtype `q`: f64 for f64, else f32.
inline DType flash_attention_lse_dtype(DType q) { return q == DType::f64 ? DType::f64 : DType::f32; }

// Where the head axis sits in q, k, v and the outputs (see above).
enum class AttentionLayout : uint8_t { bhsd, bshd };
const char* attention_layout_name(AttentionLayout layout);

// Element strides of one (batch, head, position) addressed tensor; the head dim is contiguous (stride 1).
struct HeadStrides {
  int64_t batch = 0, head = 0, seq = 0;
};
// The strides of a contiguous tensor of `heads` heads, S positions and head dim D in `layout`.
HeadStrides head_strides(AttentionLayout layout, int64_t heads, int64_t S, int64_t D);

// The attention's sizes, as infer() reads them from q and k, and the element strides of q (also out, dout,
// dq) and of k (also v, dk, dv).
struct FlashAttentionShape {
  int64_t B = 0, H = 0, Hk = 0, Sq = 0, Sk = 0, D = 0;
  HeadStrides q, k;
};

// The attributes both ops carry.
struct FlashAttentionAttrs {
  double scale = 1.0;
  bool causal = false;
  double dropout = 0.0;  // p in [0, 1)
  AttentionLayout layout = AttentionLayout::bhsd;
};

class FlashAttentionOp final : public Op {
 public:
  explicit FlashAttentionOp(const FlashAttentionAttrs& a) : a(a) {}
  FlashAttentionOp(double scale, bool causal, double dropout,
                   AttentionLayout layout = AttentionLayout::bhsd)
      : a{scale, causal, dropout, layout} {}
  std::string name() const override { return "flash_attention"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  int64_t random_numbers(const std::vector<TensorMeta>& in) const override;
  FlashAttentionAttrs a;
};

class FlashAttentionBackwardOp final : public Op {
 public:
  FlashAttentionBackwardOp(const FlashAttentionAttrs& a, bool has_dlse) : a(a), has_dlse(has_dlse) {}
  FlashAttentionBackwardOp(double scale, bool causal, double dropout, bool has_dlse,
                           AttentionLayout layout = AttentionLayout::bhsd)
      : a{scale, causal, dropout, layout}, has_dlse(has_dlse) {}
  std::string name() const override { return "flash_attention_backward"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  FlashAttentionAttrs a;
  bool has_dlse;
};

// Validates q, k and v in `layout` and returns the sizes and strides; errors name `op` and the shapes.
FlashAttentionShape flash_attention_shape(const char* op, AttentionLayout layout, const TensorMeta& q,
                                          const TensorMeta& k, const TensorMeta& v);

// ---- front end ----------------------------------------------------------------------------------------
struct FlashAttentionOutputs {
  Value out;  // q's shape: (B, H, Sq, D) or (B, Sq, H, D)
  Value lse;  // (B, H, Sq)
};
// scale must be finite (1 / sqrt(D) is the usual one); dropout p in [0, 1) (0: none).
FlashAttentionOutputs flash_attention(Value q, Value k, Value v, const FlashAttentionAttrs& attrs,
                                      const std::string& name = {});
FlashAttentionOutputs flash_attention(Value q, Value k, Value v, double scale, bool causal = false,
                                      double dropout = 0.0, const std::string& name = {});

}  // namespace xfr

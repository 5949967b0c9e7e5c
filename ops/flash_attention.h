// Fused, memory-efficient exact attention (FlashAttention): softmax(scale q k^T + bias) v computed over key
// blocks with an online softmax, never materialising the Sq x Sk score matrix; the backward recomputes the
// probabilities from the saved log-sum-exp.
//
// Layouts (`layout`; the head dim D is always the contiguous last axis):
//   bhsd   q, out, dout, dq (B, H, Sq, D)    k, v, dk, dv (B, Hk, Sk, D)     (heads split and permuted)
//   bshd   q, out, dout, dq (B, Sq, H, D)    k, v, dk, dv (B, Sk, Hk, D)     (the (B, T, H*D) projections
//                                                                             reshaped: no permute needed)
//   lse, dlse are (B, H, Sq) in both. The formulas below index q[b,h,i,:] etc. by (batch, head, position)
//   whatever the layout; the kernels address every tensor through element strides (batch, head, seq).
// Packed variable-length sequences (`varlen`): the batch axis is dropped and the sequences are concatenated,
//   bhsd: q (H, Tq, D), k, v (Hk, Tk, D);   bshd: q (Tq, H, D), k, v (Tk, Hk, D);   lse, dlse (H, Tq)
//   with two more inputs cu_seqlens_q, cu_seqlens_k (nseq + 1), both i32 or both i64: sequence b has the
//   queries [cu_seqlens_q[b], cu_seqlens_q[b + 1]) and the keys [cu_seqlens_k[b], cu_seqlens_k[b + 1]), and
//   sees only its own keys (block-diagonal attention). Below, B = nseq and, for sequence b, Sq and Sk are its
//   lengths and i, j positions within it. The offsets must start at 0, never decrease and end at Tq (Tk): the
//   CPU checks this and throws; the CUDA kernels clamp them into range (no out-of-bounds access) but do not
//   check. A sequence with Sk = 0 gives out 0, lse -inf.
//
// Packed q, k and v (`qkv_packed`, bshd only; FlashAttention's qkvpacked): self-attention whose three projections
//   come out of one GEMM. One input qkv (B, S, 3, H, D) (varlen: (T, 3, H, D)) takes the place of q, k and v:
//   q[b,h,i,:] = qkv[b,i,0,h,:], k = qkv[b,j,1,h,:], v = qkv[b,j,2,h,:] (so Sq = Sk = S and Hk = H), read in place
//   through strides (rows 3 H D elements apart). out and dout are (B, S, H, D) as in bshd; the backward writes one
//   dqkv (B, S, 3, H, D) with dq, dk, dv at qkv's places, so the projection's backward takes it as one GEMM operand.
//   Below, "q, k, v" are those three parts, and the backward's "dq, dk, dv" the three parts of dqkv.
//
//   flash_attention   inputs  (q, k, v, [bias (Bb, Hb, Sq, Sk)], [cu_seqlens_q, cu_seqlens_k])   H % Hk == 0
//                     or, qkv_packed, (qkv, [bias], [cu_seqlens_q, cu_seqlens_k])
//                     outputs (out in q's dtype and shape, lse (B, H, Sq) or (H, Tq) in flash_attention_lse_dtype)
//                     lse is optional (Op::output_optional): an executor that nothing reads it from passes an
//                     undefined tensor and the kernels skip it (cuDNN: a forward without statistics).
//     s[b,h,i,j]  = scale * q[b,h,i,:] . k[b,h/G,j,:] + bias[b?,h?,i,j]   G = H / Hk (GQA; Hk = 1 is MQA)
//                   bias (q's dtype; not with varlen) is broadcast over batch (Bb = 1) and heads (Hb = 1)
//                   j hidden (s = -inf) outside [key_lo(i), key_hi(i)), AttentionBand below:
//                     diag(i) = i (top_left) or i + Sk - Sq (bottom_right): the key a query is aligned with
//                     causal: j <= diag(i);  window_left >= 0: j >= diag(i) - window_left;
//                     window_right >= 0: j <= diag(i) + window_right;  -1: unbounded
//                   top_left causal is torch's is_causal (with Sq > Sk queries i >= Sk see every key, with
//                   Sq < Sk the last keys are seen by no query); bottom_right is FlashAttention's (the last query
//                   sees every key; with Sq > Sk the first Sq - Sk queries see none).
//     lse[b,h,i]  = log sum_j exp(s[b,h,i,j])                            -inf for a row whose keys are all hidden
//     P[b,h,i,j]  = exp(s[b,h,i,j] - lse[b,h,i])                         0 in a fully hidden row
//     out[b,h,i]  = sum_j dropout(P)[b,h,i,j] v[b,h/G,j,:]               0 for a fully hidden row
//   A bias of -inf hides a key like the mask does (a row hidden entirely by it gives out 0, lse -inf).
//   dropout(P) is P * Z / (1 - p) with Z[b,h,i,j] = [philox_uniform(seed, offset + e) >= p], e the element of the
//   materialised probability tensor the composite would hold:
//     e = ((b H + h) Sq + i) Sk + j                                       (B, H, Sq, Sk)
//     e = (h Tq + cu_seqlens_q[b] + i) Tk + cu_seqlens_k[b] + j           varlen: (1, H, Tq, Tk), block diagonal
//   exactly the mask ops/dropout.h would draw for that tensor at the same offset (so the composite
//   ops/attention.h's mask, whose dropout node is the only random node of its graph, is this op's mask when this
//   op is the only random node of its graph). The index is logical, the same in both layouts. random_numbers()
//   is B H Sq Sk (H Tq Tk for varlen), the slice the graph reserves; lse is the log-sum-exp before dropout.
//
//   flash_attention_backward
//                     inputs  (q, k, v, out, dout, lse, [dlse when has_dlse], [bias], [cu_seqlens_q, cu_seqlens_k])
//                     outputs (dq, dk, dv, [dbias when bias_grad]) in q's dtype, each in its primal's shape
//                     or, qkv_packed, inputs (qkv, out, dout, lse, ...) and outputs (dqkv, [dbias])
//     Delta[i] = sum_d dout[i,d] out[i,d] - dlse[i]
//     dv[j]    = sum over the G query heads of kv head j's group, and over i, of dropout(P)[i,j] dout[i]
//     dS[i,j]  = P[i,j] (Z[i,j] / (1 - p) dout[i] . v[j] - Delta[i])
//     dq[i]    = scale sum_j dS[i,j] k[j],      dk[j] = scale sum over the group's heads and i of dS[i,j] q[i]
//     dbias    = dS summed over the axes the bias broadcasts (batch when Bb = 1, heads when Hb = 1); 0 where hidden
//   P is recomputed from lse block by block (no Sq x Sk buffer) and Z from the same Philox elements: the
//   backward node is added with the forward node's rng_offset. A gradient reaching lse is supported (it only
//   shifts Delta: d lse[i] / d s[i,j] = P[i,j]). The sequence offsets get no gradient.
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
#include "runtime/rng.h"  // XF_HOST_DEVICE

namespace xfr {

// The dtype of lse (and of dlse) for q of dtype `q`: f64 for f64, else f32.
inline DType flash_attention_lse_dtype(DType q) { return q == DType::f64 ? DType::f64 : DType::f32; }

// Where the head axis sits in q, k, v and the outputs (see above).
enum class AttentionLayout : uint8_t { bhsd, bshd };
const char* attention_layout_name(AttentionLayout layout);

// Which key a query is aligned with: query i with key i (top_left, torch's is_causal) or with key i + Sk - Sq
// (bottom_right, FlashAttention's: the last query with the last key).
enum class CausalAlignment : uint8_t { top_left, bottom_right };
const char* causal_alignment_name(CausalAlignment a);

// The keys each query of one sequence (Sq queries, Sk keys) sees: one contiguous range [key_lo(i), key_hi(i)),
// both ends non-decreasing in i. Shared by every backend (host and device code).
struct AttentionBand {
  int64_t left = -1, right = -1;  // keys before / after the diagonal a query sees; -1 unbounded
  bool bottom_right = false;
  XF_HOST_DEVICE int64_t shift(int64_t Sq, int64_t Sk) const { return bottom_right ? Sk - Sq : 0; }
  // Both in [0, Sk]; the range is empty when key_hi <= key_lo.
  XF_HOST_DEVICE int64_t key_lo(int64_t i, int64_t Sq, int64_t Sk) const {
    const int64_t lo = i + shift(Sq, Sk) - left;
    return left < 0 || lo < 0 ? 0 : (lo > Sk ? Sk : lo);
  }
  XF_HOST_DEVICE int64_t key_hi(int64_t i, int64_t Sq, int64_t Sk) const {
    const int64_t hi = i + shift(Sq, Sk) + right + 1;
    return right < 0 || hi > Sk ? Sk : (hi < 0 ? 0 : hi);
  }
  // The queries that see at least one key of [j0, j1) (0 <= j0 < j1 <= Sk): [query_lo(j0), query_hi(j1)).
  XF_HOST_DEVICE int64_t query_lo(int64_t j0, int64_t Sq, int64_t Sk) const {
    const int64_t lo = j0 - right - shift(Sq, Sk);
    return right < 0 || lo < 0 ? 0 : (lo > Sq ? Sq : lo);
  }
  XF_HOST_DEVICE int64_t query_hi(int64_t j1, int64_t Sq, int64_t Sk) const {
    const int64_t hi = j1 + left - shift(Sq, Sk);
    return left < 0 || hi > Sq ? Sq : (hi < 0 ? 0 : hi);
  }
  XF_HOST_DEVICE bool full() const { return left < 0 && right < 0; }  // every key visible
};

// Element strides of one (batch, head, position) addressed tensor; the head dim is contiguous (stride 1).
struct HeadStrides {
  int64_t batch = 0, head = 0, seq = 0;
};
// The strides of a contiguous tensor of `heads` heads, S positions and head dim D in `layout` (batch stride 0
// when varlen: the tensor has no batch axis).
HeadStrides head_strides(AttentionLayout layout, int64_t heads, int64_t S, int64_t D, bool varlen = false);

// The attributes both ops carry.
struct FlashAttentionAttrs {
  double scale = 1.0;
  bool causal = false;
  double dropout = 0.0;  // p in [0, 1)
  AttentionLayout layout = AttentionLayout::bhsd;
  CausalAlignment alignment = CausalAlignment::top_left;
  int64_t window_left = -1, window_right = -1;  // sliding window around the diagonal; -1 unbounded
  bool has_bias = false;                        // an additive bias input (Bb, Hb, Sq, Sk)
  bool varlen = false;                          // packed sequences with cu_seqlens_q, cu_seqlens_k inputs
  bool qkv_packed = false;                      // one input qkv (B, S, 3, H, D) in place of q, k, v (bshd only)

  AttentionBand band() const;  // the key ranges causal and the window give
  int64_t qkv_inputs() const { return qkv_packed ? 1 : 3; }                 // q, k, v or qkv
  int64_t bias_input() const { return qkv_inputs(); }                       // index of bias among the forward inputs
  int64_t cu_input() const { return qkv_inputs() + has_bias; }              // of cu_seqlens_q (cu_seqlens_k follows)
  int64_t num_inputs() const { return qkv_inputs() + has_bias + 2 * varlen; }
  std::string str() const;
};

// The attention's sizes, as infer() reads them from q and k (B = nseq, Sq = Tq, Sk = Tk for varlen), and element
// strides: of q (also out, dout, dq), of k (also v, dk, dv), of the bias (0 on a broadcast axis; its rows are
// Sk apart) and of the lse rows (row (b, h, i) of lse at b lse_batch + h lse_head + q_start(b) + i).
struct FlashAttentionShape {
  int64_t B = 0, H = 0, Hk = 0, Sq = 0, Sk = 0, D = 0;
  bool varlen = false;
  HeadStrides q, k;
  HeadStrides o;  // out and dout: q's, except with qkv_packed (q, k, v, dq, dk, dv rows 3 H D apart, out's H D)
  // qkv_packed: k and v (dk, dv) start H D and 2 H D elements after q (dq) in the one packed tensor; else 0.
  int64_t k_offset = 0, v_offset = 0;
  int64_t bias_batch = 0, bias_head = 0;
  int64_t lse_batch = 0, lse_head = 0;
  int64_t lse_rows() const { return (varlen ? 1 : B) * H * Sq; }  // lse's (B, H, Sq) or (H, Tq) elements
};

class FlashAttentionOp final : public Op {
 public:
  explicit FlashAttentionOp(const FlashAttentionAttrs& a) : a(a) {}
  FlashAttentionOp(double scale, bool causal, double dropout, AttentionLayout layout = AttentionLayout::bhsd)
      : a{scale, causal, dropout, layout} {}
  std::string name() const override { return "flash_attention"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  int64_t random_numbers(const std::vector<TensorMeta>& in) const override;
  bool output_optional(int output) const override { return output == 1; }  // lse, when nothing reads it
  FlashAttentionAttrs a;
};

class FlashAttentionBackwardOp final : public Op {
 public:
  FlashAttentionBackwardOp(const FlashAttentionAttrs& a, bool has_dlse, bool bias_grad = false)
      : a(a), has_dlse(has_dlse), bias_grad(bias_grad) {}
  FlashAttentionBackwardOp(double scale, bool causal, double dropout, bool has_dlse,
                           AttentionLayout layout = AttentionLayout::bhsd)
      : a{scale, causal, dropout, layout}, has_dlse(has_dlse) {}
  std::string name() const override { return "flash_attention_backward"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  // Input indices: q 0, k 1, v 2 (qkv 0 when packed), then out, dout, lse, and dlse, bias, cu_seqlens_q,
  // cu_seqlens_k when present. Outputs: dq, dk, dv (dqkv when packed), then dbias.
  int64_t out_input() const { return a.qkv_inputs(); }
  int64_t dout_input() const { return a.qkv_inputs() + 1; }
  int64_t lse_input() const { return a.qkv_inputs() + 2; }
  int64_t dlse_input() const { return a.qkv_inputs() + 3; }
  int64_t bias_input() const { return dlse_input() + has_dlse; }
  int64_t cu_input() const { return bias_input() + a.has_bias; }
  int64_t num_inputs() const { return cu_input() + 2 * a.varlen; }
  int64_t dbias_output() const { return a.qkv_inputs(); }
  FlashAttentionAttrs a;
  bool has_dlse;
  bool bias_grad = false;  // a fourth output: dbias (the bias's shape)
};

// Validates the forward inputs `in` (q, k, v, [bias], [cu_seqlens_q, cu_seqlens_k]; the backward passes its q, k,
// v and those) against `a` and returns the sizes and strides; errors name `op`, the offending shapes and values.
// With a.qkv_packed, q is qkv and k, v are not read (pass qkv again).
FlashAttentionShape flash_attention_shape(const char* op, const FlashAttentionAttrs& a, const TensorMeta& q,
                                          const TensorMeta& k, const TensorMeta& v, const TensorMeta* bias = nullptr,
                                          const TensorMeta* cu_q = nullptr, const TensorMeta* cu_k = nullptr);
// The same from a node's inputs `in` (the forward's or the backward's): q, k, v first (qkv alone when packed), the
// bias at `bias_index` and cu_seqlens_q, cu_seqlens_k from `cu_index` when `a` has them.
FlashAttentionShape flash_attention_shape(const char* op, const FlashAttentionAttrs& a,
                                          const std::vector<TensorMeta>& in, int64_t bias_index, int64_t cu_index);
Shape flash_attention_out_shape(const FlashAttentionShape& s);

// ---- front end ----------------------------------------------------------------------------------------
struct FlashAttentionOutputs {
  Value out;  // q's shape
  Value lse;  // (B, H, Sq), or (H, Tq) for varlen
};
// scale must be finite (1 / sqrt(D) is the usual one); dropout p in [0, 1) (0: none). `bias` (undefined: none)
// sets attrs.has_bias; cu_seqlens_q / cu_seqlens_k (both or neither) set attrs.varlen.
FlashAttentionOutputs flash_attention(Value q, Value k, Value v, const FlashAttentionAttrs& attrs,
                                      const std::string& name = {}, Value bias = {}, Value cu_seqlens_q = {},
                                      Value cu_seqlens_k = {});
FlashAttentionOutputs flash_attention(Value q, Value k, Value v, double scale, bool causal = false,
                                      double dropout = 0.0, const std::string& name = {});
// qkv (B, S, 3, H, D), or (T, 3, H, D) with cu_seqlens (the same offsets for queries and keys): attrs.layout must be
// bshd; sets attrs.qkv_packed. out is (B, S, H, D) ((T, H, D)).
FlashAttentionOutputs flash_attention_qkvpacked(Value qkv, const FlashAttentionAttrs& attrs,
                                                const std::string& name = {}, Value bias = {},
                                                Value cu_seqlens = {});

}  // namespace xfr

// Multi-head attention around any attention mechanism, as xFormers' MultiHeadDispatch: input projections
// (q_proj, k_proj, v_proj), head split, rotary position embeddings on the q and k heads (optional), the
// attention, head merge, output projection, residual dropout.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "runtime/graph.h"

namespace xfr {

struct MultiHeadSpec {
  int64_t dim_model = 0;
  int64_t num_heads = 1;
  int64_t dim_key = 0;     // total q/k projection width (0: dim_model); per head dim_key / num_heads
  int64_t dim_value = 0;   // total v projection width (0: dim_model)
  bool bias = true;
  double residual_dropout = 0.0;
  // true: q, k and v have their own projection weights; false: xFormers' shared in-projection (one
  // weight applied to q, k and v; for self-attention this is a single matmul).
  bool use_separate_proj_weight = true;
  // Rotary position embeddings (ops/rotary.h) on the q and k heads after the head split, before the
  // attention, as xFormers' RotaryEmbedding(dim_key / num_heads): needs an even head dimension. No parameters.
  bool use_rotary_embeddings = false;
  std::string init_prefix;  // xFormers module path of the MultiHeadDispatch, for init rules
};

// q, k, v heads: (B, H, S, Dh) -> (B, H, Sq, Dv_h); a bshd AttentionFn: (B, S, H, Dh) -> (B, Sq, H, Dv_h).
using AttentionFn = std::function<Value(Value q, Value k, Value v)>;
// The same attention on a packed qkv (B, S, 3, H, Dh) -> (B, S, H, Dh) (ops/flash_attention.h, qkv_packed).
using PackedAttentionFn = std::function<Value(Value qkv)>;

// x: (B, T, C) -> (B, T, C). Self-attention (query = key = value = x). Parameters under "<name>.*".
// `attention_bshd`, when set, is the same attention on (B, T, H, Dh) heads (ComponentEntry::attention_bshd): the
// projections are only reshaped to heads (rotary then rotates (B, T, H, Dh) directly) and the result only
// reshaped back, no permute on either side; `attention` is then unused.
// `attention_qkvpacked`, when set, is the same attention on a packed qkv: with separate projection weights, no rotary
// embeddings and dim_key == dim_value, the three projections run as one GEMM of width 3 dim_key (their weights
// and biases concatenated; the parameters keep their names) whose output the attention reads in place, and whose
// input gradient and weight gradient are one GEMM each on the attention's packed dqkv. The other two are then unused.
Value multi_head_dispatch(Value x, const MultiHeadSpec& spec, const AttentionFn& attention,
                          const std::string& name = "mha", const AttentionFn& attention_bshd = {},
                          const PackedAttentionFn& attention_qkvpacked = {});

}  // namespace xfr

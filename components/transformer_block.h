// The encoder block the runtime benchmarks and tests use: multi-head self-attention and an MLP, each
// wrapped in a residual with pre- or post-LayerNorm (xFormers' residual_norm_style). The config factory
// maps xFormers' block configs onto these pieces.
#pragma once
#include <string>

#include "runtime/graph.h"

namespace xfr {

enum class ResidualStyle : uint8_t { pre, post };

struct AttentionSpec {
  int64_t dim_model = 256;
  int num_heads = 8;
  bool causal = false;
  double attention_dropout = 0.0;
  double residual_dropout = 0.0;
  bool bias = true;
  bool fused_qkv = true;  // one (3C) projection for self-attention, as torch's MultiheadAttention
};

struct MlpSpec {
  int64_t dim_model = 256;
  double hidden_layer_multiplier = 4.0;
  std::string activation = "gelu";
  double dropout = 0.0;
  bool bias = true;
};

struct BlockSpec {
  AttentionSpec attention;
  MlpSpec mlp;
  ResidualStyle residual = ResidualStyle::pre;
  double layer_norm_eps = 1e-5;  // torch.nn.LayerNorm's default
};

// x: (B, T, C) -> (B, T, C). Parameters under "<name>.mha.*".
Value multi_head_self_attention(Value x, const AttentionSpec& spec, const std::string& name = "mha");
// x: (..., C) -> (..., C). Parameters under "<name>.fc1.*", "<name>.fc2.*".
Value mlp(Value x, const MlpSpec& spec, const std::string& name = "feedforward");
// LayerNorm with learnable gain and bias "<name>.weight", "<name>.bias".
Value layer_norm(Value x, double eps, const std::string& name);
// x: (B, T, C) -> (B, T, C).
Value transformer_block(Value x, const BlockSpec& spec, const std::string& name);

}  // namespace xfr

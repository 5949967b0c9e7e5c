// Config fixtures shared by several test files.
#pragma once

namespace xfr::testing {

// A tiny causal LM (2 pre-norm blocks, width 32, 4 heads) on the synthetic copy task: the model of the
// generation and public-API tests.
inline constexpr const char* kTinyLmConfig = R"(
model:
  task: causal_lm
  stack_configs:
    - num_layers: 2
      dim_model: 32
      residual_norm_style: pre
      position_encoding_config: {name: vocab}
      multi_head_config:
        num_heads: 4
        attention: {name: scaled_dot_product, causal: true}
      feedforward_config: {name: MLP, activation: gelu, hidden_layer_multiplier: 2}
data: {kind: copy, seq_len: 24, num_symbols: 16}
)";

}  // namespace xfr::testing

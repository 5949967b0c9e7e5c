// Turns a validated `model` config into a graph: positional/token embedding, the stacks of blocks
// (xFormers' encoder blocks with pre/post/deepnorm residuals), and the task head with its loss.
#pragma once
#include <cstdint>
#include <memory>

#include "factory/config_tree.h"
#include "runtime/graph.h"

namespace xfr {

struct BuiltModel {
  std::unique_ptr<Graph> graph;
  Value tokens;     // (B, T) i32 input
  Value targets;    // causal_lm and embedding: (B, T) i32 next tokens; classification: (B) i32 labels
  Value hidden;     // (B, T, C) last hidden states
  Value logits;     // causal_lm and embedding: (B, T, V); classification: (B, K)
  Value pooled;     // classification and embedding: (B, C)
  Value embedding;  // embedding: (B, C), L2-normalised
  Value loss;       // (1,) mean cross-entropy
  double init_gain = 1.0;  // deepnorm's beta for the init schemes, else 1
  int64_t vocab_size = 0;
};

// Incremental decoding with a KV cache (causal_lm): the graph takes one token (1, 1) at `position` and
// each block's cached keys and values (1, H, S, Dh) as inputs, and returns the updated caches.
struct DecodeGraph {
  Value position;                   // (1, 1) i32: where the token sits
  Value cache_position;             // (1) i32: the same, for the cache writes
  Value mask;                       // (1, S) f32: 0 for cached positions <= position, -inf after
  std::vector<Value> k_in, v_in;    // per block: (1, H, S, Dh)
  std::vector<Value> k_out, v_out;  // per block: the caches with row `position` written
  int64_t cache_len = 0;            // S
};

// model: the validated `model` section (defaults filled in, vocab_size resolved). With `decode`, builds
// the one-token decoding graph (batch 1; seq_len is the cache length) and fills in its inputs/outputs.
// compute_dtype: f32, or bf16/f16 for mixed precision (parameters stay f32 in the store and are cast
// where used; activations are in compute_dtype; the loss is f32).
BuiltModel build_model(const ConfigNode& model, int64_t batch, int64_t seq_len, bool training,
                       DecodeGraph* decode = nullptr, DType compute_dtype = DType::f32);

// train.precision -> the compute dtype: fp32 -> f32, bf16-mixed -> bf16, fp16-mixed -> f16.
DType compute_dtype_of(const std::string& precision);

// Whether a model config supports KV-cache decoding (causal_lm, causal scaled_dot_product attention
// everywhere without a window_left, no rotary embeddings yet).
bool supports_kv_cache(const ConfigNode& model);

// xFormers' DeepNet coefficients (components/residual.py) for N encoder and M decoder layers.
struct DeepNormCoefficients {
  double alpha, beta;
};
DeepNormCoefficients deepnorm_encoder_coefficients(int64_t encoder_layers, int64_t decoder_layers);

}  // namespace xfr

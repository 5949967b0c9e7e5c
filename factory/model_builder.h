// Turns a validated `model` config into a graph: positional/token embedding, the stacks of blocks
// (xFormers' encoder blocks with pre/post/deepnorm residuals), and the task head with its loss.
#pragma once
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

// model: the validated `model` section (defaults filled in, vocab_size resolved).
BuiltModel build_model(const ConfigNode& model, int64_t batch, int64_t seq_len, bool training);

// xFormers' DeepNet coefficients (components/residual.py) for N encoder and M decoder layers.
struct DeepNormCoefficients {
  double alpha, beta;
};
DeepNormCoefficients deepnorm_encoder_coefficients(int64_t encoder_layers, int64_t decoder_layers);

}  // namespace xfr

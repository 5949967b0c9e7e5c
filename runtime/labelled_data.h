// Synthetic labelled sequences for classification tasks (the token-stream loaders in runtime/data.h
// have no labels).
//
// "majority": an example is seq_len symbols drawn uniformly from num_symbols by Philox; its label is the
// symbol that occurs most often (ties: the smallest). A mean-pooled encoder can count, so this is
// learnable, and chance accuracy is about 1 / num_symbols.
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace xfr {

struct MajorityTask {
  int64_t num_symbols = 8;
  int64_t seq_len = 32;
  uint64_t seed = 0;
};

// Fills inputs (B, seq_len) i32 and labels (B) i32 with batch `step` of stream `stream` (0: train,
// 1: validation; disjoint Philox keys). Pure: the same (task, stream, step) gives the same batch.
void majority_batch(const MajorityTask& task, uint64_t stream, uint64_t step, Tensor& inputs, Tensor& labels);

}  // namespace xfr

// Embedding gather: rows of a table picked by token ids.
//   table: (V, C) floating, ids: (*) i32 or i64  ->  y: (*, C), y[..., :] = table[ids[...], :]
// Ids outside [0, V) are refused by the kernel (xfr::Error naming the id, V and its flat position) before
// anything is read. The backward scatters the output gradient into a (V, C) table gradient (rows of
// unused ids are zero) deterministically: each task owns a block of the gradient table and visits the
// tokens in order, so the result does not depend on the thread count. Ids get no gradient.
#pragma once
#include <cstdint>
#include "runtime/graph.h"

namespace xfr {

class EmbeddingOp final : public Op {
 public:
  std::string name() const override { return "embedding"; }
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;  // (table, ids) -> y
  std::vector<Value> backward(const BackwardContext& ctx) const override;
};

// dy: (*, C), ids: (*) -> dtable: (vocab, C)
class EmbeddingBackwardOp final : public Op {
 public:
  explicit EmbeddingBackwardOp(int64_t vocab) : vocab(vocab) {}
  std::string name() const override { return "embedding_backward"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;  // not differentiated
  // CUDA: with a 16-bit dy and an f32 table handed in (a mixed-precision executor's gradient slot), the rows' fp32
  // sums are stored (every row, unused ones zero), or added to the rows the ids use (KernelContext::add_f32_outputs).
  bool stores_f32(int) const override { return true; }
  bool adds_f32(int) const override { return true; }
  int64_t vocab;
};

// ---- front end ----------------------------------------------------------------------------------------
// table: (V, C), ids: (*) i32/i64 -> (*, C)
Value embedding(Value table, Value ids, const std::string& name = {});

}  // namespace xfr

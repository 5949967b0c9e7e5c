#include "ops/embedding.h"

#include <algorithm>

#include "runtime/error.h"

namespace xfr {

std::vector<TensorMeta> EmbeddingOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 2, "embedding", "takes 2 inputs (table, ids), got ", in.size());
  const TensorMeta &table = in[0], &ids = in[1];
  XF_CHECK(table.shape.size() == 2 && is_floating(table.dtype), "embedding",
           "table must be a floating (vocab, channels) matrix, got ", table.str());
  XF_CHECK(ids.dtype == DType::i32 || ids.dtype == DType::i64, "embedding", "ids must be i32 or i64, got ",
           ids.str(), " (table ", table.str(), ")");
  Shape out = ids.shape;
  out.push_back(table.shape[1]);
  return {TensorMeta{out, table.dtype}};
}

std::vector<Value> EmbeddingOp::backward(const BackwardContext& ctx) const {
  const Value table = ctx.input(0), ids = ctx.input(1), gy = ctx.grad(0);
  if (!ctx.needs_grad(0) || !gy.defined()) return {Value{}, Value{}};
  const Value dt = ctx.graph.add1(std::make_shared<EmbeddingBackwardOp>(table.dim(0)), {gy, ids}, ctx.name("dtable"));
  return {dt, Value{}};
}

std::string EmbeddingBackwardOp::attrs() const { return str_cat("vocab=", vocab); }

std::vector<TensorMeta> EmbeddingBackwardOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 2, "embedding_backward", "takes 2 inputs (dy, ids), got ", in.size());
  const TensorMeta &dy = in[0], &ids = in[1];
  XF_CHECK(vocab >= 0, "embedding_backward", "negative vocabulary size ", vocab);
  XF_CHECK(is_floating(dy.dtype), "embedding_backward", "dy must be floating point, got ", dy.str());
  XF_CHECK(ids.dtype == DType::i32 || ids.dtype == DType::i64, "embedding_backward", "ids must be i32 or i64, got ",
           ids.str());
  XF_CHECK(dy.shape.size() == ids.shape.size() + 1 &&
               std::equal(ids.shape.begin(), ids.shape.end(), dy.shape.begin()),
           "embedding_backward", "dy ", shape_str(dy.shape), " must be ids' shape ", shape_str(ids.shape),
           " plus a channel axis");
  return {TensorMeta{Shape{vocab, dy.shape.back()}, dy.dtype}};
}

Value embedding(Value table, Value ids, const std::string& name) {
  XF_CHECK(table.defined() && ids.defined(), "embedding", "undefined input");
  return table.graph->add1(std::make_shared<EmbeddingOp>(), {table, ids}, name);
}

}  // namespace xfr

// Shape ops that move data: transpose and permute (materialised into a contiguous output), slice and its
// zero-padding adjoint, concat and split. They copy bytes, so they work for every dtype; gradients flow
// for floating inputs.
//   transpose(x, a, b): x with axes a and b swapped        permute(x, order): out.shape[i] = x.shape[order[i]]
//   slice(x, axis, start, end): x[..., start:end, ...]    pad_slice(g, axis, start, size): zeros of length
//                                                          `size` on `axis` with g at [start, start + g's length)
//   concat(xs, axis)                                       split(x, axis, sizes) -> one value per size
#pragma once
#include <cstdint>
#include <vector>

#include "runtime/graph.h"

namespace xfr {

// x: (*) -> x with axes a and b swapped (negative axes count from the end).
class TransposeOp final : public Op {
 public:
  TransposeOp(int64_t a, int64_t b) : a(a), b(b) {}
  std::string name() const override { return "transpose"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  int64_t a, b;
};

// x: (*) -> (x.shape[order[0]], x.shape[order[1]], ...); `order` is a permutation of the axes (negative
// entries count from the end).
class PermuteOp final : public Op {
 public:
  explicit PermuteOp(std::vector<int64_t> order) : order(std::move(order)) {}
  std::string name() const override { return "permute"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  std::vector<int64_t> order;
};

// x: (..., n, ...) -> (..., end - start, ...) on `axis`; 0 <= start <= end <= n after negative values
// (counting from the end, as in Python) are resolved.
class SliceOp final : public Op {
 public:
  SliceOp(int64_t axis, int64_t start, int64_t end) : axis(axis), start(start), end(end) {}
  std::string name() const override { return "slice"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  // The normalised axis and [begin, stop) for input shape `in` (validated).
  void resolve(const Shape& in, int& ax, int64_t& begin, int64_t& stop) const;
  int64_t axis, start, end;
};

// The adjoint of slice: g: (..., m, ...) -> (..., size, ...), zero except [start, start + m) on `axis`,
// which holds g. 0 <= start and start + m <= size.
class PadSliceOp final : public Op {
 public:
  PadSliceOp(int64_t axis, int64_t start, int64_t size) : axis(axis), start(start), size(size) {}
  std::string name() const override { return "pad_slice"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  int64_t axis, start, size;
};

// xs[k]: (..., n_k, ...) (same dtype, same sizes off `axis`) -> (..., sum n_k, ...)
class ConcatOp final : public Op {
 public:
  explicit ConcatOp(int64_t axis) : axis(axis) {}
  std::string name() const override { return "concat"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  int64_t axis;
};

// x: (..., sum sizes, ...) -> one output (..., sizes[k], ...) per size.
class SplitOp final : public Op {
 public:
  SplitOp(int64_t axis, std::vector<int64_t> sizes) : axis(axis), sizes(std::move(sizes)) {}
  std::string name() const override { return "split"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  // Along the outermost axis of extent > 1 (every axis before `axis` of extent 1) the parts are consecutive runs of
  // the input's bytes: views, no copy, when every part starts a multiple of 64 bytes in (the alignment the executor's
  // buffers have, which kernels may rely on). All parts or none.
  ViewOf view_of(int output, const std::vector<TensorMeta>& in) const override;
  int64_t axis;
  std::vector<int64_t> sizes;
};

// ---- front end (transpose, permute, slice and concat return x itself when they would copy it unchanged) ---
Value transpose(Value x, int64_t a, int64_t b, const std::string& name = {});
Value permute(Value x, const std::vector<int64_t>& order, const std::string& name = {});
Value slice(Value x, int64_t axis, int64_t start, int64_t end, const std::string& name = {});
Value pad_slice(Value g, int64_t axis, int64_t start, int64_t size, const std::string& name = {});
Value concat(const std::vector<Value>& xs, int64_t axis, const std::string& name = {});
std::vector<Value> split(Value x, int64_t axis, const std::vector<int64_t>& sizes, const std::string& name = {});

}  // namespace xfr

// Elementwise arithmetic with NumPy broadcasting (add, sub, mul, div), scaling by a constant, the
// reduction of a broadcast gradient back to its input's shape (sum_to), and constants (fill).
#pragma once
#include <cstdint>
#include <memory>

#include "runtime/graph.h"

namespace xfr {

enum class BinaryKind : uint8_t { add, sub, mul, div };

class BinaryOp final : public Op {
 public:
  explicit BinaryOp(BinaryKind kind) : kind(kind) {}
  std::string name() const override { return "binary"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;  // (a, b) -> broadcast(a, b)
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  BinaryKind kind;
};

// y = alpha * x
class ScaleOp final : public Op {
 public:
  explicit ScaleOp(double alpha) : alpha(alpha) {}
  std::string name() const override { return "scale"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  double alpha;
};

// Sums x over the axes along which `shape` was broadcast to x's shape.
class SumToOp final : public Op {
 public:
  explicit SumToOp(Shape shape) : shape(std::move(shape)) {}
  std::string name() const override { return "sum_to"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  Shape shape;
};

// Broadcasts x to `shape` (the backward of sum_to).
class BroadcastToOp final : public Op {
 public:
  explicit BroadcastToOp(Shape shape) : shape(std::move(shape)) {}
  std::string name() const override { return "broadcast_to"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  Shape shape;
};

// A constant tensor (no inputs).
class FillOp final : public Op {
 public:
  FillOp(TensorMeta meta, double value) : meta(std::move(meta)), value(value) {}
  std::string name() const override { return "fill"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  TensorMeta meta;
  double value;
};

// ---- front end ----------------------------------------------------------------------------------------
Value add(Value a, Value b, const std::string& name = {});
Value sub(Value a, Value b, const std::string& name = {});
Value mul(Value a, Value b, const std::string& name = {});
Value div(Value a, Value b, const std::string& name = {});
Value scale(Value x, double alpha, const std::string& name = {});
Value sum_to(Value x, const Shape& shape, const std::string& name = {});  // x itself when shapes match
Value broadcast_to(Value x, const Shape& shape, const std::string& name = {});
Value fill(Graph& g, const TensorMeta& meta, double value, const std::string& name = {});

inline Value operator+(Value a, Value b) { return add(a, b); }
inline Value operator-(Value a, Value b) { return sub(a, b); }
inline Value operator*(Value a, Value b) { return mul(a, b); }
inline Value operator/(Value a, Value b) { return div(a, b); }

}  // namespace xfr

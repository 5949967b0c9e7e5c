// Reductions over a list of axes: sum, mean and max, with keepdim.
//   x: (*)  ->  y: x's shape without the reduced axes (or with them as 1 when keepdim)
// `axes` may be negative; an empty list reduces every axis. `max` has a second output, the i64 flat
// index (row-major over the reduced axes) of the arg-max within each reduced slice (first occurrence on
// ties, the first NaN if any), which its backward uses to route the gradient to that element only.
// Sums of f32 accumulate in double, so sums over millions of elements keep f32 accuracy.
#pragma once
#include <cstdint>
#include <vector>

#include "runtime/graph.h"

namespace xfr {

enum class ReduceKind : uint8_t { sum, mean, max };
const char* reduce_kind_name(ReduceKind k);

// What a reduction works on, from its input shape: the normalised axes, the output shapes, and the
// merged layout the kernels iterate over. Size-1 axes are dropped and adjacent axes that are all reduced
// (or all kept) are merged, so most reductions become one of
//   (outer, reduce, inner): kept outer rows, a reduced middle axis, kept contiguous inner columns
// (reducing the last axis: inner = 1; reducing leading axes: outer = 1). Other patterns are `generic`:
// kept and reduced groups with their input strides, reduced groups in row-major order.
struct ReduceLayout {
  std::vector<int> axes;       // normalised, ascending
  Shape out_shape;             // the output (keepdim as requested)
  Shape keep_shape;            // the output with reduced axes as 1 (for broadcasting back)
  int64_t count = 1;           // elements per reduced slice
  int64_t outer = 1, reduce = 1, inner = 1;
  bool generic = false;
  Shape kept_sizes, kept_strides;  // generic: merged kept groups (output order) and their input strides
  Shape red_sizes, red_strides;    // generic: merged reduced groups (row-major) and their input strides
};
// Validates (throwing xfr::Error("reduce", ...) naming the shapes) and computes the layout.
ReduceLayout reduce_layout(const std::vector<int64_t>& axes, bool keepdim, const Shape& in, ReduceKind kind);

class ReduceOp final : public Op {
 public:
  ReduceOp(ReduceKind kind, std::vector<int64_t> axes, bool keepdim)
      : kind(kind), axes(std::move(axes)), keepdim(keepdim) {}
  std::string name() const override { return "reduce"; }
  std::string attrs() const override;
  // (x) -> (y) for sum and mean; (y, argmax i64 of y's shape) for max
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  ReduceKind kind;
  std::vector<int64_t> axes;  // empty: every axis
  bool keepdim;
};

// The backward of max: dx is zero except at each slice's arg-max, which receives dy.
//   dy: the max's output shape, argmax: the same shape (i64)  ->  dx: in_shape
class ReduceMaxBackwardOp final : public Op {
 public:
  ReduceMaxBackwardOp(std::vector<int64_t> axes, bool keepdim, Shape in_shape)
      : axes(std::move(axes)), keepdim(keepdim), in_shape(std::move(in_shape)) {}
  std::string name() const override { return "reduce_max_backward"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;  // not differentiated
  std::vector<int64_t> axes;
  bool keepdim;
  Shape in_shape;
};

// ---- front end ----------------------------------------------------------------------------------------
// x: (*) -> the reduced shape. axes empty: every axis.
Value reduce_sum(Value x, const std::vector<int64_t>& axes = {}, bool keepdim = false, const std::string& name = {});
Value reduce_mean(Value x, const std::vector<int64_t>& axes = {}, bool keepdim = false, const std::string& name = {});
Value reduce_max(Value x, const std::vector<int64_t>& axes = {}, bool keepdim = false, const std::string& name = {});
// Both outputs of max: {values, argmax (i64 flat index within each reduced slice)}.
std::vector<Value> reduce_max_with_index(Value x, const std::vector<int64_t>& axes = {}, bool keepdim = false,
                                         const std::string& name = {});

}  // namespace xfr

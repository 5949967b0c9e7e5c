// Matrix multiply: C = op(A) · op(B), op = identity or transpose of the last two axes.
//   A: (*, M, K) (or (*, K, M) with trans_a)    B: (K, N) shared by every batch, or (*, K, N) with A's
//   batch axes (or the transposes with trans_b)  ->  C: (*, M, N)
// A 2-D B with a batched A is a linear layer: one GEMM over all rows. CPU: OpenBLAS sgemm/dgemm.
#pragma once
#include <cstdint>
#include "runtime/graph.h"

namespace xfr {

class MatMulOp final : public Op {
 public:
  MatMulOp(bool trans_a, bool trans_b) : trans_a(trans_a), trans_b(trans_b) {}
  std::string name() const override { return "matmul"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  bool writes_padded_rows(int) const override { return true; }  // the CUDA kernel's ldc is C's row stride
  bool stores_f32(int) const override { return true; }          // cuBLASLt's f32 C from 16-bit A and B
  bool trans_a, trans_b;
};

// The sizes a matmul works on, from its validated inputs.
struct MatMulDims {
  int64_t batch = 1;   // product of A's leading axes
  int64_t m = 0, n = 0, k = 0;
  bool shared_b = false;  // B is 2-D and used by every batch
};
MatMulDims matmul_dims(const MatMulOp& op, const Shape& a, const Shape& b);

Value matmul(Value a, Value b, bool trans_a = false, bool trans_b = false, const std::string& name = {});

// C = op(A) op(B) + D: a matmul added to d, which has the product's shape and dtype. Autodiff's gradient sum
// (ops/grad.cpp) folds a matmul contribution into one, so the GEMM accumulates (on a GPU cuBLASLt reads D as its C
// input and writes C: beta = 1, one rounding) instead of an add reading two tensors and writing a third.
class MatMulAddOp final : public Op {
 public:
  MatMulAddOp(bool trans_a, bool trans_b) : mm(trans_a, trans_b) {}
  std::string name() const override { return "matmul_add"; }
  std::string attrs() const override { return mm.attrs(); }
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;  // (a, b, d) -> c
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  MatMulOp mm;  // the product's flags, sizes and backward
};

Value matmul_add(Value a, Value b, Value d, bool trans_a = false, bool trans_b = false, const std::string& name = {});

// Reshape of a (contiguous) value: no copy, the output is a view. One -1 may be inferred.
class ReshapeOp final : public Op {
 public:
  explicit ReshapeOp(Shape shape) : shape(std::move(shape)) {}
  std::string name() const override { return "reshape"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  ViewOf view_of(int, const std::vector<TensorMeta>&) const override { return {0, 0}; }
  Shape shape;
};

Value reshape(Value x, const Shape& shape, const std::string& name = {});  // x itself when shapes match

}  // namespace xfr

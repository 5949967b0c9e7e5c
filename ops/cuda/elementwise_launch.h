// Plain launchers of the CUDA elementwise kernels (ops/cuda/elementwise.cu, bias_add.cu, activation.cu,
// dropout.cu), for benchmarks and fused callers that hold device pointers and a stream but no graph.
// No CUDA header is needed to call them.
//
// Conventions: every pointer is a device pointer to contiguous row-major data of `dtype`, which is f32,
// f16 or bf16 unless said otherwise; pointers need no particular alignment (16-byte aligned ones take the
// vectorised paths). Work is issued on `stream` and nothing waits for it. Nothing is validated: the ops'
// infer() does that (shapes that do not broadcast, p outside [0, 1), ...); an unsupported dtype or
// activation kind throws xfr::Error. n = 0 issues nothing.
#pragma once
#include <cstddef>
#include <cstdint>

#include "ops/activation.h"
#include "ops/elementwise.h"
#include "runtime/dtype.h"
#include "runtime/shape.h"

struct CUstream_st;

namespace xfr::cuda {

// ---- elementwise.cu --------------------------------------------------------------------------------
// y = a (kind) b with NumPy broadcasting. a: a_shape, b: b_shape, y: y_shape = broadcast(a_shape, b_shape).
void launch_binary(BinaryKind kind, DType dtype, const void* a, const Shape& a_shape, const void* b,
                   const Shape& b_shape, void* y, const Shape& y_shape, CUstream_st* stream);
// y = a + b. a, b, y: (n)
void launch_add(DType dtype, const void* a, const void* b, void* y, int64_t n, CUstream_st* stream);
// y = alpha * x (alpha rounded to float). x, y: (n)
void launch_scale(DType dtype, const void* x, void* y, int64_t n, double alpha, CUstream_st* stream);
// Sums x over the axes along which y_shape broadcasts to x_shape. x: x_shape, y: y_shape.
// Accumulates in double in a fixed order (deterministic). `workspace` (may be null) is stream-ordered
// scratch of `workspace_bytes`: with enough of it a long reduction is split over more blocks
// (sum_to_workspace_bytes() is the most it uses).
void launch_sum_to(DType dtype, const void* x, const Shape& x_shape, void* y, const Shape& y_shape, void* workspace,
                   size_t workspace_bytes, CUstream_st* stream);
size_t sum_to_workspace_bytes(const Shape& x_shape, const Shape& y_shape);
// y = x broadcast to y_shape. Any dtype (a copy of elements). x: x_shape, y: y_shape.
void launch_broadcast_to(DType dtype, const void* x, const Shape& x_shape, void* y, const Shape& y_shape,
                         CUstream_st* stream);
// y[i] = value converted to dtype (any dtype; as Tensor::fill converts). y: (n)
void launch_fill(DType dtype, void* y, int64_t n, double value, CUstream_st* stream);

// ---- bias_add.cu ---------------------------------------------------------------------------------------
// y = x + b over the last axis. x, y: (rows, C), b: (C)
void launch_bias_add(DType dtype, const void* x, const void* b, void* y, int64_t rows, int64_t C,
                     CUstream_st* stream);

// ---- activation.cu ------------------------------------------------------------------------------------
// y = f(x) for every kind but star_relu. x, y: (n)
void launch_activation(ActivationKind kind, const ActivationParams& params, DType dtype, const void* x, void* y,
                       int64_t n, CUstream_st* stream);
// dx = dy * f'(x). x, dy, dx: (n)
void launch_activation_backward(ActivationKind kind, const ActivationParams& params, DType dtype, const void* x,
                                const void* dy, void* dx, int64_t n, CUstream_st* stream);
// y = scale * relu(x)^2 + bias. x, y: (n); scale, bias: (1), read on the device.
void launch_star_relu(DType dtype, const void* x, const void* scale, const void* bias, void* y, int64_t n,
                      CUstream_st* stream);
// dx = dy * 2 scale relu(x), dscale = sum(dy relu(x)^2), dbias = sum(dy).
// x, dy, dx: (n); scale, dscale, dbias: (1). The sums accumulate in double in a fixed order; with
// star_relu_backward_workspace_bytes() of stream-ordered scratch they are spread over many blocks
// (without it, one block does them).
void launch_star_relu_backward(DType dtype, const void* x, const void* scale, const void* dy, void* dx, void* dscale,
                               void* dbias, int64_t n, void* workspace, size_t workspace_bytes, CUstream_st* stream);
size_t star_relu_backward_workspace_bytes();

// ---- dropout.cu ----------------------------------------------------------------------------------------
// Where a kernel's random numbers start: Philox stream element (offset_device ? *offset_device : 0) + offset
// of `seed` (runtime/rng.h); *offset_device is read on the device when the kernel runs (CUDA-graph replay).
struct PhiloxOffset {
  uint64_t seed = 0;
  uint64_t offset = 0;
  const uint64_t* offset_device = nullptr;
};
// y[i] = x[i] / (1 - p) if philox_uniform(seed, start + i) >= p else 0, as ops/dropout.h; p in [0, 1).
// x, y: (n)
void launch_dropout(DType dtype, const void* x, void* y, int64_t n, double p, const PhiloxOffset& rng,
                    CUstream_st* stream);
// Fused y = dropout_p(f(x + b)) in one pass, element i using stream element start + i (the same numbers as
// bias_add, activation and dropout run one after another with the dropout at `rng`). p = 0: no dropout.
// pre_act (may be null) receives h = x + b, what the activation's backward needs.
// x, y, pre_act: (rows, C), b: (C). Every activation kind but star_relu.
void launch_bias_act_dropout(ActivationKind kind, const ActivationParams& params, DType dtype, const void* x,
                             const void* b, void* y, void* pre_act, int64_t rows, int64_t C, double p,
                             const PhiloxOffset& rng, CUstream_st* stream);

}  // namespace xfr::cuda

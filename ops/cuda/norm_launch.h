// Plain launchers of the row-wise CUDA kernels (layernorm, rmsnorm, softmax, cross-entropy), callable
// without a graph (benchmarks, tests): device pointers, sizes and a stream. No CUDA headers: the stream is
// the runtime's opaque CUstream_st* (a cudaStream_t).
//
// Dtypes: `dtype` is the dtype of the data tensors (f32, bf16 or f16). The statistics and losses are fp32
// whatever the data dtype (mean, rstd, lse, loss, dloss, dlse): on the GPU the ops' 16-bit variants save them
// in f32 (see ops/norm.h, ops/cross_entropy.h), and for f32 data they are f32 anyway.
// Optional inputs and outputs are null pointers when absent. Every pointer may have any alignment (16-byte
// vector accesses are used when all of a kernel's pointers allow them). Launches are asynchronous; errors in
// the launch configuration throw xfr::Error.
// Scratch memory (workspace, workspace_bytes): device memory the launcher may use until its kernels have run
// on `stream` (the graph kernels pass the context's workspace); the backward passes keep their per-block
// partial sums there, the cross-entropy its per-row losses. LaunchCounters: zeroed device words the backward
// passes may use to add their partial sums in one launch (the graph kernels pass CudaContext::launch_counters()).
#pragma once
#include <cstddef>
#include <cstdint>

#include "runtime/cuda/context.h"  // LaunchCounters
#include "runtime/dtype.h"

struct CUstream_st;

namespace xfr::cuda {

// x, y: (rows, C) dtype; residual: (residual_rows, C) dtype or null (the norm's input is x + residual, rounded to
// dtype; row r of x adds row r % residual_rows, residual_rows dividing rows, 0: rows); sum: (rows, C) dtype or null
// (receives x + residual); gamma, beta: (C) dtype or null; mean, rstd: (rows) f32.
// y's rows are ldy apart (0: C); with ones_tail each row is followed by the ones column (KernelContext::ones_column: a
// one and seven zeros; ldy >= C + 8).
void launch_layernorm_forward(DType dtype, const void* x, const void* residual, void* sum, const void* gamma,
                              const void* beta, void* y, float* mean, float* rstd, int64_t rows, int64_t C, double eps,
                              CUstream_st* stream, int64_t ldy = 0, bool ones_tail = false, int64_t residual_rows = 0);

// x, dy, dx: (rows, C) dtype; mean, rstd: (rows) f32; gamma: (C) dtype or null; dadd: (rows, C) dtype or null
// (added to dx in the same pass); dgamma, dbeta, dx_sum (the sum of dx over the rows): (C) dtype or null (not wanted).
// grid_blocks: with parameter gradients, the grid (0: one wave of resident blocks, each looping over its rows; the
// LayerNorm backward lab sweeps other grids).
void launch_layernorm_backward(DType dtype, const void* x, const float* mean, const float* rstd, const void* gamma,
                               const void* dy, const void* dadd, void* dx, void* dgamma, void* dbeta, void* dx_sum,
                               int64_t rows, int64_t C, void* workspace, size_t workspace_bytes, CUstream_st* stream,
                               LaunchCounters counters = {}, int64_t grid_blocks = 0);

// x, y: (rows, C) dtype; gamma: (C) dtype or null; rstd: (rows) f32.
void launch_rmsnorm_forward(DType dtype, const void* x, const void* gamma, void* y, float* rstd, int64_t rows,
                            int64_t C, double eps, CUstream_st* stream);

// x, dy, dx: (rows, C) dtype; rstd: (rows) f32; gamma: (C) dtype or null; dgamma: (C) dtype or null.
void launch_rmsnorm_backward(DType dtype, const void* x, const float* rstd, const void* gamma, const void* dy,
                             void* dx, void* dgamma, int64_t rows, int64_t C, void* workspace,
                             size_t workspace_bytes, CUstream_st* stream, LaunchCounters counters = {});

// The softmax's view of x (..., Sq, Sk) and of its additive mask: x's shape and the mask's strides over x's
// axes in elements (0 on broadcast axes; as ops/cpu/broadcast.h's broadcast_strides). Rank at most 8.
constexpr int kSoftmaxMaxRank = 8;
struct SoftmaxLayout {
  int rank = 0;
  int64_t shape[kSoftmaxMaxRank] = {};
  int64_t mask_strides[kSoftmaxMaxRank] = {};
};

// x, y: `layout.shape` dtype, contiguous; mask: dtype, laid out as layout.mask_strides, or null.
// y = softmax over the last axis of scale * x + mask, keys j > i masked when causal (i the query index along
// axis -2); fully masked rows give zeros.
void launch_softmax_forward(DType dtype, const void* x, const void* mask, void* y, const SoftmaxLayout& layout,
                            double scale, bool causal, CUstream_st* stream);

// y, dy, dx, dz: (rows, Sk) dtype; dz null when not wanted. dz = y * (dy - sum(y * dy)) (0 where y == 0),
// dx = scale * dz.
void launch_softmax_backward(DType dtype, const void* y, const void* dy, void* dx, void* dz, int64_t rows,
                             int64_t Sk, double scale, CUstream_st* stream);

// logits: (N, V) dtype; targets: (N) of targets_dtype (i32 or i64); loss: (1,) f32; lse: (N) f32; dlogits: (N, V)
// dtype, the gradient for dloss = 1, or null (not wanted).
// Mean over non-ignored rows, as ops/cross_entropy.h. A target outside [0, V) that is not ignore_index makes
// the loss NaN (the CPU backend throws instead: a GPU kernel cannot, without a synchronisation per step).
// Scratch: N + 1 floats.
void launch_cross_entropy_forward(DType dtype, const void* logits, DType targets_dtype, const void* targets,
                                  float* loss, float* lse, void* dlogits, int64_t N, int64_t V, int64_t ignore_index,
                                  double label_smoothing, void* workspace, size_t workspace_bytes,
                                  CUstream_st* stream);

// logits, dlogits: (N, V) dtype; lse: (N) f32; targets: (N) i32/i64; dloss: (1,) f32 (read on the device, so a
// captured CUDA graph sees each step's value); dlse: (N) f32 or null. An invalid target makes every
// gradient NaN. Scratch: one float.
void launch_cross_entropy_backward(DType dtype, const void* logits, const float* lse, DType targets_dtype,
                                   const void* targets, const float* dloss, const float* dlse, void* dlogits,
                                   int64_t N, int64_t V, int64_t ignore_index, double label_smoothing,
                                   void* workspace, size_t workspace_bytes, CUstream_st* stream);

}  // namespace xfr::cuda

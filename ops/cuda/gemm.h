// The plain GEMM launcher of the CUDA backend (cuBLASLt), for the matmul op, fused linear ops and
// benchmarks: no graph, no tensors, row-major operands as pointers. A plain C++ header (no CUDA includes).
//
//   C[b] = alpha * op(A[b]) · op(B[b]) + beta * C[b]      then the epilogue, b < batch
//   (with c_in: + beta * C_in[b] instead, C_in read and C written)
//
// Row-major, as the runtime's tensors: A is (m, k) with leading dimension lda >= k, or (k, m) with
// lda >= m when trans_a; B is (k, n), ldb >= n, or (n, k), ldb >= k when trans_b; C is (m, n), ldc >= n.
// Batch b's matrices start stride_{a,b,c} elements after batch b-1's; stride_b = 0 shares one B (a linear
// layer over a batch, when it cannot be folded into one GEMM of batch * m rows: the launcher folds it
// itself whenever the rows are consecutive).
//
// Numerics: fp32 accumulation (CUBLAS_COMPUTE_32F) for every dtype, no TF32 (an f32 GEMM matches the CPU's
// sgemm to fp32 rounding); C is rounded once to out_dtype. A and B share `dtype` (f32, bf16 or f16); C is
// `dtype`, or f32 with 16-bit inputs (weight gradients accumulated in f32 with beta = 1).
//
// Epilogues (cuBLASLt's, fused into the GEMM's store; `bias` and `aux` are in out_dtype):
//   none
//   bias            C = acc + bias[j]                                bias: (n)
//   gelu_tanh       C = gelu_tanh(acc)                               aux (optional): acc before the GELU
//   bias_gelu_tanh  C = gelu_tanh(acc + bias[j])                     aux (optional): acc + bias[j]
//   dgelu           C = acc * gelu_tanh'(aux)                        aux (input): the forward pre-activation
//   dgelu_bgrad     dgelu, and bias[j] = sum_i C[i, j] (the GELU's bias gradient)   bias: (n) output
//   bgrad_a         C = acc, and bias[i] = sum_k op(A)[i, k]          bias: (m) output
//   bgrad_b         C = acc, and bias[j] = sum_k op(B)[k, j]          bias: (n) output (a linear layer's db
//                                                                    next to dW = X^T dY: B = dY)
// where acc = alpha * op(A) op(B) + beta * C and gelu_tanh(x) = x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
// aux is (m, n) per batch with leading dimension aux_ld (a multiple of 8: cuBLASLt's rule) and batch stride
// aux_stride (a multiple of 8), both defaulting (0) to ldc and stride_c. Bias and bias gradients are shared by
// every batch (bias gradients: batch 1 only).
// The bias-gradient epilogues are tested in the weight-gradient layout (trans_a, no trans_b); cuBLASLt may
// have no algorithm for other layouts, which gemm() reports by name.
//
// Plans (descriptors, layouts and the heuristic's algorithm) are cached in the context under a key naming
// every dtype, flag, size, leading dimension, stride and pointer-alignment class. The context's stream
// orders the work; its 32 MiB workspace is used.
#pragma once
#include <cstdint>
#include <functional>

#include "runtime/dtype.h"

struct CUstream_st;

namespace xfr::cuda {

class CudaContext;

enum class GemmEpilogue : uint8_t { none, bias, gelu_tanh, bias_gelu_tanh, dgelu, dgelu_bgrad, bgrad_a, bgrad_b };
const char* gemm_epilogue_name(GemmEpilogue e);

struct GemmArgs {
  DType dtype = DType::f32;      // A and B
  DType out_dtype = DType::f32;  // C (and bias, aux): dtype, or f32 for 16-bit inputs
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;  // (m, k) or (k, m) per batch
  const void* b = nullptr;  // (k, n) or (n, k) per batch
  void* c = nullptr;        // (m, n) per batch; read when beta != 0 and c_in is null
  // With beta != 0: the C that is read, laid out as c (ldc, stride_c), when it is not c itself (D = c is written,
  // C = c_in is not: C = alpha op(A) op(B) + beta C_in, cuBLASLt's separate C and D).
  const void* c_in = nullptr;
  int64_t lda = 0, ldb = 0, ldc = 0;  // 0: the packed row length of each
  int64_t batch = 1;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;  // elements between batches (ignored when batch == 1)
  float alpha = 1.0f, beta = 0.0f;
  GemmEpilogue epilogue = GemmEpilogue::none;
  void* bias = nullptr;  // bias (input) or bias gradient (output), per the epilogue
  void* aux = nullptr;   // GELU pre-activation: output of gelu_tanh/bias_gelu_tanh (optional), input of dgelu*
  int64_t aux_ld = 0, aux_stride = 0;  // 0: ldc, stride_c
};

// C (m, n) = op(A) B, A (k, m) when trans_a else (m, k), B (k, n) (the caller may set trans_b), all packed, A, B and C
// in `dtype`; no epilogue yet: where a GemmArgs usually starts.
inline GemmArgs plain_gemm(DType dtype, bool trans_a, int64_t m, int64_t n, int64_t k, const void* a, const void* b,
                           void* c) {
  GemmArgs g;
  g.dtype = g.out_dtype = dtype;
  g.trans_a = trans_a;
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = a;
  g.b = b;
  g.c = c;
  return g;
}

// Enqueues the GEMM on ctx's stream. Throws xfr::Error("gemm", ...) for arguments that do not fit
// together, and names the plan when cuBLASLt has no algorithm for it.
void gemm(CudaContext& ctx, const GemmArgs& args);

// Runs a call with a fused epilogue (`fused`, beta 0), or `split`: the same outputs by a GEMM without the epilogue and
// separate kernels (the op kernels of ops/cuda/linear.cu), whichever is faster. A fused epilogue narrows cuBLASLt's
// algorithms (with a bias gradient it has no split-K kernel: GPT-2's 768 x 768 x 16384 weight gradient ran at 338
// TFLOP/s with it, H200 run 38), so the first call of a shape times both on its own operands and the faster is kept
// per process, device and plan key, as the algorithms are. A fused plan cuBLASLt has no algorithm for runs split.
// Without timing (XF_GEMM_AUTOTUNE=0, during CUDA-graph capture, beta != 0) the fused epilogue runs.
// XF_GEMM_EPILOGUE=fused|split forces either way (read at each call: the tests run both); auto (the default) times.
void gemm_fused_or_split(CudaContext& ctx, const GemmArgs& fused, const std::function<void()>& split);

}  // namespace xfr::cuda

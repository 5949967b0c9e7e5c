// CUDA kernel of ops/linear.h: one cuBLASLt GEMM whose epilogue adds the bias and applies GELU (tanh),
// also storing the pre-activation for the backward (ops/cuda/gemm.h). cuBLASLt wants the auxiliary
// output's leading dimension a multiple of 8; other widths take the GEMM with a bias epilogue and then
// the activation kernel.
#include "ops/activation.h"
#include "ops/bias_add.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/gemm.h"
#include "ops/linear.h"
#include "ops/matmul.h"
#include "ops/reduce.h"

namespace xfr::cuda {

namespace {

// x: (..., K), w: (N, K), b: (N) -> y: (..., N) [, pre: (..., N), possibly undefined]
void linear_kernel(const Op& op_base, const KernelContext& ctx, const std::vector<Tensor>& in,
                   const std::vector<Tensor>& out) {
  const auto& op = static_cast<const LinearOp&>(op_base);
  const int64_t K = in[1].dim(1), N = in[1].dim(0);
  const int64_t M = K == 0 ? 0 : in[0].numel() / K;
  if (M == 0 || N == 0) return;
  GemmArgs a;
  a.dtype = a.out_dtype = in[0].dtype();
  a.trans_b = true;  // y = x wᵀ with w stored (N, K)
  a.m = M;
  a.n = N;
  a.k = K;
  a.a = in[0].raw_data();
  a.b = in[1].raw_data();
  // pre is optional (LinearOp::output_optional): without it the epilogue stores y alone, and the unfused path
  // applies the activation to y in place.
  const bool want_pre = op.gelu_tanh && out[1].defined();
  const bool fused_gelu = op.gelu_tanh && N % 8 == 0;  // cuBLASLt: aux's leading dimension a multiple of 8
  const Tensor& pre = want_pre ? out[1] : out[0];
  if (fused_gelu) {
    a.c = out[0].raw_data();
    a.aux = want_pre ? out[1].raw_data() : nullptr;
    a.epilogue = op.has_bias ? GemmEpilogue::bias_gelu_tanh : GemmEpilogue::gelu_tanh;
  } else {
    a.c = pre.raw_data();
    a.epilogue = op.has_bias ? GemmEpilogue::bias : GemmEpilogue::none;
  }
  if (op.has_bias) a.bias = in[2].raw_data();
  if (K == 0) {  // an empty sum: y = act(b), which no GEMM computes
    Tensor p = pre;
    p.fill(0.0);
    if (op.has_bias) KernelRegistry::builtin().get("bias_add", ctx.device)(BiasAddOp(), ctx, {pre, in[2]}, {pre});
  } else {
    gemm(context_of(ctx), a);
  }
  if (op.gelu_tanh && (!fused_gelu || K == 0))
    KernelRegistry::builtin().get("activation", ctx.device)(ActivationOp(ActivationKind::gelu_tanh), ctx, {pre}, {out[0]});
}

// C (m, n) = op(A) B, A (k, m) when trans_a else (m, k), B (k, n), all packed, in `dtype`; no epilogue yet.
GemmArgs plain_gemm(DType dtype, bool trans_a, int64_t m, int64_t n, int64_t k, const void* a, const void* b, void* c) {
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

// Runs a GEMM with a fused backward epilogue; false when cuBLASLt has no algorithm for it (gemm() throws naming
// the plan), and the caller runs the separate kernels instead.
bool gemm_fused(CudaContext& ctx, const GemmArgs& g) {
  try {
    gemm(ctx, g);
    return true;
  } catch (const Error&) {
    return false;
  }
}

// a: (*, M, K), b: (K, N), pre: (*, M, N) -> (a · b) * gelu_tanh'(pre) with the derivative in the GEMM's epilogue
// (dgelu, pre as its aux input). cuBLASLt wants aux's leading dimension a multiple of 8: other widths, and a
// shape cuBLASLt has no dgelu algorithm for, run the GEMM and then the activation's backward kernel in place.
void matmul_dgelu_kernel(const Op&, const KernelContext& ctx, const std::vector<Tensor>& in,
                         const std::vector<Tensor>& out) {
  const Tensor &a = in[0], &b = in[1], &pre = in[2];
  const int64_t K = b.dim(0), N = b.dim(1);
  if (out[0].numel() == 0) return;
  const int64_t M = out[0].numel() / N;
  if (N % 8 == 0 && K > 0) {  // (K = 0: an empty sum, zeros; the matmul kernel writes them)
    GemmArgs g = plain_gemm(a.dtype(), false, M, N, K, a.raw_data(), b.raw_data(), out[0].raw_data());
    g.epilogue = GemmEpilogue::dgelu;
    g.aux = pre.raw_data();
    if (gemm_fused(context_of(ctx), g)) return;
  }
  const KernelRegistry& reg = KernelRegistry::builtin();
  reg.get("matmul", ctx.device)(MatMulOp(false, false), ctx, {a, b}, {out[0]});
  reg.get("activation_backward", ctx.device)(ActivationBackwardOp(ActivationKind::gelu_tanh), ctx, {pre, out[0]},
                                             {out[0]});
}

// g: (M, N), x: (M, K) -> dw: (N, K) = gᵀ x with db: (N) = g's column sums in the GEMM's epilogue (bgrad_a:
// the row sums of op(A) = gᵀ). cuBLASLt may have no bias-gradient algorithm for a shape (gemm() then throws
// naming the plan): such a call runs the plain GEMM and the sum_to kernel.
void linear_weight_grad_kernel(const Op&, const KernelContext& ctx, const std::vector<Tensor>& in,
                               const std::vector<Tensor>& out) {
  const Tensor &g = in[0], &x = in[1];
  const int64_t M = g.dim(0), N = g.dim(1), K = x.dim(1);
  if (N == 0) return;
  GemmArgs a = plain_gemm(g.dtype(), true, N, K, M, g.raw_data(), x.raw_data(), out[0].raw_data());
  a.epilogue = GemmEpilogue::bgrad_a;
  a.bias = out[1].raw_data();
  if (M > 0 && K > 0 && gemm_fused(context_of(ctx), a)) return;
  const KernelRegistry& reg = KernelRegistry::builtin();
  reg.get("matmul", ctx.device)(MatMulOp(true, false), ctx, {g, x}, {out[0]});
  reg.get("reduce", ctx.device)(ReduceOp(ReduceKind::sum, {0}, false), ctx, {g}, {out[1]});
}

}  // namespace

void register_linear(KernelRegistry& r) {
  r.add("linear", Device::Kind::cuda, linear_kernel);
  r.add("linear_weight_grad", Device::Kind::cuda, linear_weight_grad_kernel);
  r.add("matmul_dgelu", Device::Kind::cuda, matmul_dgelu_kernel);
}

}  // namespace xfr::cuda

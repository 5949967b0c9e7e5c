// CPU kernel of ops/linear.h: the unfused steps in order (the matmul kernel's sgemm, the bias added in
// place, the activation kernel), so results equal the composite ops'.
#include "ops/linear.h"

#include "ops/activation.h"
#include "ops/bias_add.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "ops/reduce.h"
#include "runtime/kernel_registry.h"

namespace xfr::cpu {

namespace {

// x: (..., K), w: (N, K), b: (N), r: (..., N) -> y: (..., N) [, pre: (..., N), possibly undefined]
void linear_kernel(const Op& op_base, const KernelContext& ctx, const std::vector<Tensor>& in,
                   const std::vector<Tensor>& out) {
  const auto& op = static_cast<const LinearOp&>(op_base);
  const KernelRegistry& reg = KernelRegistry::builtin();
  // pre (optional: LinearOp::output_optional) or, without it, y itself (the activation then runs in place).
  const Tensor& pre = op.gelu_tanh && out[1].defined() ? out[1] : out[0];
  reg.get("matmul", ctx.device)(MatMulOp(false, true), ctx, {in[0], in[1]}, {pre});
  if (op.has_bias) reg.get("bias_add", ctx.device)(BiasAddOp(), ctx, {pre, in[2]}, {pre});  // in place: row-wise
  if (op.has_residual)  // in place, element by element: (x wᵀ + b) + r
    reg.get("binary", ctx.device)(BinaryOp(BinaryKind::add), ctx,
                                  {out[0], in[static_cast<size_t>(op.residual_index())]}, {out[0]});
  if (op.gelu_tanh) reg.get("activation", ctx.device)(ActivationOp(ActivationKind::gelu_tanh), ctx, {pre}, {out[0]});
}

// a: (*, M, K), b: (K, N), pre: (*, M, N) -> (a · b) * gelu_tanh'(pre): the matmul kernel, then the activation's
// backward kernel in place (element by element), as the composite runs them.
void matmul_dgelu_kernel(const Op&, const KernelContext& ctx, const std::vector<Tensor>& in,
                         const std::vector<Tensor>& out) {
  const KernelRegistry& reg = KernelRegistry::builtin();
  reg.get("matmul", ctx.device)(MatMulOp(false, false), ctx, {in[0], in[1]}, {out[0]});
  reg.get("activation_backward", ctx.device)(ActivationBackwardOp(ActivationKind::gelu_tanh), ctx, {in[2], out[0]},
                                             {out[0]});
}

// g: (M, N), x: (M, K) -> dw: (N, K) = gᵀ x, db: (N): the matmul and reduce kernels, as the composite runs them.
void linear_weight_grad_kernel(const Op&, const KernelContext& ctx, const std::vector<Tensor>& in,
                               const std::vector<Tensor>& out) {
  const KernelRegistry& reg = KernelRegistry::builtin();
  reg.get("matmul", ctx.device)(MatMulOp(true, false), ctx, {in[0], in[1]}, {out[0]});
  reg.get("reduce", ctx.device)(ReduceOp(ReduceKind::sum, {0}, false), ctx, {in[0]}, {out[1]});
}

}  // namespace

void register_linear(KernelRegistry& r) {
  r.add("linear", Device::Kind::cpu, linear_kernel);
  r.add("linear_weight_grad", Device::Kind::cpu, linear_weight_grad_kernel);
  r.add("matmul_dgelu", Device::Kind::cpu, matmul_dgelu_kernel);
}

}  // namespace xfr::cpu

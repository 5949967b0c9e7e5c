// CUDA kernels of ops/linear.h: linear as one cuBLASLt GEMM whose epilogue adds the bias and applies GELU (tanh),
// also storing the pre-activation for the backward (ops/cuda/gemm.h), and its backward's matmul_dgelu and
// linear_weight_grad with their epilogues (dgelu, the bias gradient). Each fused epilogue has a split twin: the GEMM
// without it, then the separate kernel (activation, activation_backward, the column sum). gemm_fused_or_split times
// both once per shape and keeps the faster (a fused epilogue can narrow cuBLASLt's algorithms); widths cuBLASLt's aux
// cannot take (not a multiple of 8) always split.
#include "ops/activation.h"
#include "ops/bias_add.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/gemm.h"
#include "ops/cuda/rowwise.cuh"
#include "ops/elementwise.h"
#include "ops/linear.h"
#include "ops/matmul.h"

namespace xfr::cuda {

namespace {

// x's rows as a GEMM operand: their stride (x packed, or the view of rows with the ones column: KernelContext).
int64_t rows_ld(const Tensor& x, const char* op) {
  const int64_t ld = x.row_stride();
  XF_CHECK(ld >= x.shape().back(), op, "x ", x.desc(), " is not rows of its last axis evenly spaced");
  return ld;
}

// x: (..., K) (rows evenly spaced: packed, or the ones column's view), w: (N, K), b: (N), r: (..., N) packed ->
// y: (..., N) [, pre: (..., N), possibly undefined]. The residual r is the GEMM's C input (beta 1), added in fp32
// before y is rounded.
void linear_kernel(const Op& op_base, const KernelContext& ctx, const std::vector<Tensor>& in,
                   const std::vector<Tensor>& out) {
  const auto& op = static_cast<const LinearOp&>(op_base);
  const int64_t K = in[1].dim(1), N = in[1].dim(0);
  int64_t M = 1;  // x's rows: every axis but the last (K may be 0: y = act(b))
  for (size_t d = 0; d + 1 < in[0].shape().size(); ++d) M *= in[0].shape()[d];
  if (M == 0 || N == 0) return;
  GemmArgs a = plain_gemm(in[0].dtype(), false, M, N, K, in[0].raw_data(), in[1].raw_data(), nullptr);
  a.lda = rows_ld(in[0], "linear");
  a.trans_b = true;  // y = x wᵀ with w stored (N, K); c: per way below
  // pre is optional (LinearOp::output_optional): without it the epilogue stores y alone, and the split path
  // applies the activation to y in place.
  const bool want_pre = op.gelu_tanh && out[1].defined();
  const Tensor& pre = want_pre ? out[1] : out[0];
  if (op.has_bias) a.bias = in[2].raw_data();
  const Tensor* residual = op.has_residual ? &in[static_cast<size_t>(op.residual_index())] : nullptr;
  XF_CHECK(!residual || (residual->is_contiguous() && out[0].is_contiguous()), "linear", "the residual ",
           residual ? residual->desc() : std::string(), " and y ", out[0].desc(),
           " must be packed (the GEMM's C and D)");
  CudaContext& cc = context_of(ctx);
  const auto activation = [&] {  // out[0] = gelu_tanh(pre)
    KernelRegistry::builtin().get("activation", ctx.device)(ActivationOp(ActivationKind::gelu_tanh), ctx, {pre},
                                                          {out[0]});
  };
  if (K == 0) {  // an empty sum: y = act(b), which no GEMM computes
    Tensor p = pre;
    p.fill(0.0);
    if (op.has_bias) KernelRegistry::builtin().get("bias_add", ctx.device)(BiasAddOp(), ctx, {pre, in[2]}, {pre});
    if (op.gelu_tanh) activation();
    if (residual)
      KernelRegistry::builtin().get("binary", ctx.device)(BinaryOp(BinaryKind::add), ctx, {out[0], *residual},
                                                          {out[0]});
    return;
  }
  // Split: the GEMM with the bias epilogue into pre, then the activation kernel.
  GemmArgs unfused = a;
  unfused.c = pre.raw_data();
  unfused.epilogue = op.has_bias ? GemmEpilogue::bias : GemmEpilogue::none;
  if (residual) {  // (no activation with a residual: LinearOp::infer)
    unfused.c_in = residual->raw_data();
    unfused.beta = 1.0f;
  }
  const auto split = [&] {
    gemm(cc, unfused);
    if (op.gelu_tanh) activation();
  };
  if (!op.gelu_tanh || N % 8 != 0) return split();  // cuBLASLt: aux's leading dimension a multiple of 8
  GemmArgs fused = a;
  fused.c = out[0].raw_data();
  fused.aux = want_pre ? out[1].raw_data() : nullptr;
  fused.epilogue = op.has_bias ? GemmEpilogue::bias_gelu_tanh : GemmEpilogue::gelu_tanh;
  gemm_fused_or_split(cc, fused, split);
}

// a: (*, M, K), b: (K, N), pre: (*, M, N) -> (a · b) * gelu_tanh'(pre): the derivative in the GEMM's epilogue (dgelu,
// pre as its aux input), or split: the GEMM, then the activation's backward kernel in place (gemm_fused_or_split
// picks the faster; other widths, where cuBLASLt wants aux's leading dimension a multiple of 8, always split).
void matmul_dgelu_kernel(const Op&, const KernelContext& ctx, const std::vector<Tensor>& in,
                         const std::vector<Tensor>& out) {
  const Tensor &a = in[0], &b = in[1], &pre = in[2];
  const int64_t K = b.dim(0), N = b.dim(1);
  if (out[0].numel() == 0) return;
  const int64_t M = out[0].numel() / N;
  const KernelRegistry& reg = KernelRegistry::builtin();
  const auto split = [&] {
    reg.get("matmul", ctx.device)(MatMulOp(false, false), ctx, {a, b}, {out[0]});
    reg.get("activation_backward", ctx.device)(ActivationBackwardOp(ActivationKind::gelu_tanh), ctx, {pre, out[0]},
                                               {out[0]});
  };
  if (N % 8 == 0 && K > 0) {  // (K = 0: an empty sum, zeros; the matmul kernel writes them)
    GemmArgs g = plain_gemm(a.dtype(), false, M, N, K, a.raw_data(), b.raw_data(), out[0].raw_data());
    g.epilogue = GemmEpilogue::dgelu;
    g.aux = pre.raw_data();
    return gemm_fused_or_split(context_of(ctx), g, split);
  }
  split();
}

// linear_weight_grad's split way, for any output dtypes: dw = gᵀ x by the GEMM (C in dw's dtype: 16-bit, or f32 for
// LinearWeightGradOp::stores_f32, the executor's gradient slots) and db by the column sum (into db's dtype). Each
// fp32 sum is rounded once, to its output's dtype.
void weight_grad_split(const KernelContext& ctx, const Tensor& g, const Tensor& x, const Tensor& dw, const Tensor& db) {
  const int64_t M = g.dim(0), N = g.dim(1), K = x.dim(1);
  CudaContext& cc = context_of(ctx);
  if (M > 0 && K > 0) {
    GemmArgs a = plain_gemm(g.dtype(), true, N, K, M, g.raw_data(), x.raw_data(), dw.raw_data());
    a.ldb = rows_ld(x, "linear_weight_grad");
    a.out_dtype = dw.dtype();
    gemm(cc, a);
  } else if (dw.numel() > 0) {
    Tensor(dw).fill(0.0);  // a sum over no rows
  }
  if (M == 0) {
    Tensor(db).fill(0.0);
    return;
  }
  const Scratch scratch{cc.workspace(), cc.workspace_bytes(), cc.launch_counters()};
  XF_CUDA_DISPATCH_FLOAT(g.dtype(), "linear_weight_grad", T, {
    const T* gp = static_cast<const T*>(g.raw_data());
    if (db.dtype() == DType::f32)
      reduce_axis<T, float, ReduceMode::sum>(gp, nullptr, db.data<float>(), nullptr, 1, M, N, 1.f, scratch, cc.stream());
    else
      reduce_axis<T, T, ReduceMode::sum>(gp, nullptr, static_cast<T*>(db.raw_data()), nullptr, 1, M, N, 1.f, scratch,
                                         cc.stream());
  });
}

// dw (N, K) and db (N) out of dw_ext (N, K + 8) = gᵀ [x | 1 | 0] (fp32), each rounded once to its own dtype, or added
// to fp32 outputs (add): a thread per 4 columns of dw (K % 4 == 0), and a thread per row for db.
template <class TW, class TB>
__global__ void scatter_ones_gemm(const float* __restrict__ dw_ext,  // (N, K + 8)
                                  TW* __restrict__ dw,                // (N, K)
                                  TB* __restrict__ db,                // (N)
                                  int64_t N, int64_t K, bool add) {
  const int64_t per_row = K / 4 + 1;  // K / 4 packs, then the row's bias gradient
  const int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= N * per_row) return;
  const int64_t r = q / per_row, j = q % per_row;
  const float* src = dw_ext + r * (K + kOnesColumnPad);
  const auto put = [add](auto* dst, float v) {
    *dst = dev::from_float<std::remove_pointer_t<decltype(dst)>>(add ? dev::to_float(*dst) + v : v);
  };
  if (j == per_row - 1) {
    put(db + r, src[K]);
    return;
  }
  const float4 v = *reinterpret_cast<const float4*>(src + 4 * j);
  TW* d = dw + r * K + 4 * j;
  put(d, v.x), put(d + 1, v.y), put(d + 2, v.z), put(d + 3, v.w);
}

// linear_weight_grad over x with the ones column (KernelContext::ones_column): one GEMM into
// fp32 scratch, dw_ext (N, K + 8) = gᵀ x_ext, whose column K is db, then the scatter into dw and db.
void weight_grad_ones(const KernelContext& ctx, const Tensor& g, const Tensor& x, const Tensor& dw, const Tensor& db) {
  const int64_t M = g.dim(0), N = g.dim(1), K = x.dim(1), W = K + kOnesColumnPad, ld = x.row_stride();
  XF_CHECK(ld >= W && ld % 8 == 0 && K % 8 == 0, "linear_weight_grad", "x ", x.desc(),
           " is not the view of rows with the ones column (rows at least K + 8 long, K and the rows multiples of 8)");
  CudaContext& cc = context_of(ctx);
  // Stream-ordered scratch: back in the pool after the kernels queued before the free (runtime/device_context.h).
  const std::shared_ptr<void> ext = cc.allocate(static_cast<size_t>(N * W) * sizeof(float));
  GemmArgs a = plain_gemm(g.dtype(), true, N, W, M, g.raw_data(), x.raw_data(), ext.get());
  a.ldb = ld;
  a.out_dtype = DType::f32;
  gemm(cc, a);
  const int64_t threads = N * (K / 4 + 1);
  const unsigned blocks = static_cast<unsigned>(ceil_div(threads, int64_t{256}));
  XF_CUDA_DISPATCH_FLOAT(dw.dtype(), "linear_weight_grad", TW, {
    XF_CUDA_DISPATCH_FLOAT(db.dtype(), "linear_weight_grad", TB, {
      scatter_ones_gemm<TW, TB><<<blocks, 256, 0, cc.stream()>>>(static_cast<const float*>(ext.get()),
                                                                 static_cast<TW*>(dw.raw_data()),
                                                                 static_cast<TB*>(db.raw_data()), N, K,
                                                                 ctx.add_f32_outputs);
      XF_CUDA_CHECK_LAUNCH("linear_weight_grad (ones column)");
    });
  });
}

// g: (M, N), x: (M, K) -> dw: (N, K) = gᵀ x with db: (N) = g's column sums in the GEMM's epilogue (bgrad_a: the row
// sums of op(A) = gᵀ), or split (weight_grad_split; gemm_fused_or_split picks the faster). Outputs in f32 from 16-bit
// g and x (stores_f32) always go the split way: cuBLASLt's f32 bias gradient is not used. With the ones column in x's
// rows (KernelContext::ones_column), db comes out of the GEMM itself (weight_grad_ones).
void linear_weight_grad_kernel(const Op&, const KernelContext& ctx, const std::vector<Tensor>& in,
                               const std::vector<Tensor>& out) {
  const Tensor &g = in[0], &x = in[1];
  const int64_t M = g.dim(0), N = g.dim(1), K = x.dim(1);
  if (N == 0) return;
  if (ctx.ones_column && M > 0) return weight_grad_ones(ctx, g, x, out[0], out[1]);
  const auto split = [&] { weight_grad_split(ctx, g, x, out[0], out[1]); };
  if (out[0].dtype() != g.dtype() || out[1].dtype() != g.dtype() || M == 0 || K == 0) return split();
  GemmArgs a = plain_gemm(g.dtype(), true, N, K, M, g.raw_data(), x.raw_data(), out[0].raw_data());
  a.ldb = rows_ld(x, "linear_weight_grad");
  a.epilogue = GemmEpilogue::bgrad_a;
  a.bias = out[1].raw_data();
  gemm_fused_or_split(context_of(ctx), a, split);
}

}  // namespace

void register_linear(KernelRegistry& r) {
  r.add("linear", Device::Kind::cuda, linear_kernel);
  r.add("linear_weight_grad", Device::Kind::cuda, linear_weight_grad_kernel);
  r.add("matmul_dgelu", Device::Kind::cuda, matmul_dgelu_kernel);
}

}  // namespace xfr::cuda

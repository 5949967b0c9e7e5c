// CUDA test helpers: the test device context, and the backend-against-oracle check every CUDA kernel
// test uses (the op run by the CPU backend in f32 on the same inputs vs the op run on the GPU in the
// dtype under test, outputs poisoned with NaN before the GPU writes them).
//
// CUDA tests are declared with XF_CUDA_TEST_CASE: they run when XF_TEST_DEVICE=cuda and a device is
// there, and are reported as skipped otherwise (never as passed).
#pragma once
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "ops/cast.h"
#include "runtime/device_context.h"
#include "tests/testing.h"

namespace xfr::testing {

// Mixed precision as the model builder sets it up (factory/model_builder.cpp): g computes in dt, and every parameter is
// cast to dt where it is used (f32 master weights in the store).
inline void compute_in(Graph& g, DType dt) {
  g.set_compute_dtype(dt);
  g.set_param_transform([dt](const Value& p) { return cast(p, dt, "cast"); });
}

inline bool cuda_tests_enabled() {
  static const bool enabled = test_device().is_cuda() && cuda_device_count() > 0;
  return enabled;
}

// One context for the whole test binary (created on first use).
inline DeviceContext* cuda_test_ctx() {
  static std::shared_ptr<DeviceContext> ctx = cuda_tests_enabled() ? make_device_context(Device::cuda(0)) : nullptr;
  REQUIRE_MESSAGE(ctx != nullptr, "no CUDA device: " << cuda_unavailable_reason());
  return ctx.get();
}

// A kernel context on the test device (the rest as a caller sets it: random stream, ones_column, ...).
inline KernelContext cuda_kernel_context() {
  KernelContext kc;
  kc.device = cuda_test_ctx()->device();
  kc.device_ctx = cuda_test_ctx();
  return kc;
}

// Tolerance of a GPU result in `dtype` against the CPU's f32 result on the same (rounded) inputs: the
// dtype's own tolerance (testing.h), which already covers one rounding of the output plus fp32
// accumulation in another order.
inline Tolerance cuda_tolerance(DType t) { return tolerance(t); }

// Floating tensors to `dtype` (integers unchanged): the inputs both backends see.
inline Tensor as_dtype(const Tensor& t, DType dtype) {
  return is_floating(t.dtype()) && t.dtype() != dtype ? t.to(dtype) : t;
}

// An op's inputs as both backends see them: gpu[i] is input i rounded to dtypes[i] (floating ones; integers
// unchanged), cpu[i] those same values in f32 for the CPU oracle, so that only the computation differs.
struct RoundedInputs {
  std::vector<Tensor> gpu, cpu;
};
inline RoundedInputs rounded_inputs(const std::vector<Tensor>& inputs_f32, const std::vector<DType>& dtypes) {
  RoundedInputs r;
  for (size_t i = 0; i < inputs_f32.size(); ++i) {
    r.gpu.push_back(as_dtype(inputs_f32[i], dtypes.at(i)));
    r.cpu.push_back(as_dtype(r.gpu.back(), DType::f32));
  }
  return r;
}
inline RoundedInputs rounded_inputs(const std::vector<Tensor>& inputs_f32, DType dtype) {
  return rounded_inputs(inputs_f32, std::vector<DType>(inputs_f32.size(), dtype));
}

// A device tensor whose every byte is 0xFF (NaN in every float dtype), to show what a kernel did not write.
// shifted: its data starts one element past its allocation's (256-byte aligned) start, so that no 16-byte
// vector path can take it.
inline Tensor poisoned_device(const Shape& shape, DType dtype, bool shifted = false) {
  DeviceContext* ctx = cuda_test_ctx();
  Tensor t = shifted ? Tensor::empty({numel_of(shape) + 1}, dtype, ctx).carve(dtype_size(dtype), shape, dtype)
                     : Tensor::empty(shape, dtype, ctx);
  std::vector<unsigned char> poison(t.nbytes(), 0xFF);
  ctx->copy(t.raw_data(), poison.data(), poison.size(), CopyKind::host_to_device);
  ctx->synchronize();
  return t;
}

// Runs op on the GPU over device copies of `inputs`, every output poisoned with NaN bytes (0xFF) first; with
// `shifted`, every input and output starts one element off alignment (poisoned_device). With `f32_stores`, each
// 16-bit output the op can store as f32 (Op::stores_f32) is handed in as an f32 tensor, as the executor hands a
// parameter's f32 gradient slot to the GEMM that computes the gradient.
inline std::vector<Tensor> run_op_cuda(const Op& op, const std::vector<Tensor>& inputs, uint64_t rng_seed = 0,
                                       uint64_t rng_offset = 0, bool shifted = false, bool f32_stores = false) {
  DeviceContext* ctx = cuda_test_ctx();
  std::vector<Tensor> din;
  std::vector<TensorMeta> meta;
  for (const auto& t : inputs) {
    if (shifted) {
      din.push_back(poisoned_device(t.shape(), t.dtype(), true));
      din.back().copy_from(t);
    } else {
      din.push_back(t.to_device(ctx));
    }
    meta.push_back(TensorMeta{t.shape(), t.dtype()});
  }
  const auto out_meta = op.infer(meta);
  std::vector<Tensor> out;
  bool all_views = true;  // as the executor: no kernel runs for an op whose outputs are all views of its inputs
  for (size_t k = 0; k < out_meta.size(); ++k) {
    const Op::ViewOf v = op.view_of(static_cast<int>(k), meta);
    all_views = all_views && v.input >= 0;
    const bool half = out_meta[k].dtype == DType::bf16 || out_meta[k].dtype == DType::f16;
    const DType od = f32_stores && half && op.stores_f32(static_cast<int>(k))
                         ? DType::f32
                         : out_meta[k].dtype;
    out.push_back(v.input >= 0 ? din.at(static_cast<size_t>(v.input))
                                     .carve(static_cast<size_t>(v.offset) * dtype_size(out_meta[k].dtype),
                                            out_meta[k].shape, out_meta[k].dtype)
                               : poisoned_device(out_meta[k].shape, od, shifted));
  }
  KernelContext kc = cuda_kernel_context();
  kc.rng_seed = rng_seed;
  kc.rng_offset = rng_offset;
  if (!all_views) KernelRegistry::builtin().get(op.name(), ctx->device())(op, kc, din, out);
  ctx->synchronize();
  return out;
}

// The CUDA kernel of `op` in `dtype` against the CPU kernel in f32 on the same inputs (floating inputs
// rounded to `dtype` first, so only the computation differs). Compares every output; integer outputs
// exactly. `tol_scale` widens the tolerance for ops that round intermediates (say why at the call).
// `shifted`: every GPU input and output one element off alignment (the kernels' scalar paths).
inline void check_cuda_op(const Op& op, const std::vector<Tensor>& inputs_f32, DType dtype, const std::string& what,
                          double tol_scale = 1.0, uint64_t rng_seed = 0, uint64_t rng_offset = 0,
                          bool shifted = false) {
  const RoundedInputs in = rounded_inputs(inputs_f32, dtype);
  const auto ref = run_op(op, in.cpu, &test_pool(), rng_seed, rng_offset);
  const auto got = run_op_cuda(op, in.gpu, rng_seed, rng_offset, shifted);
  REQUIRE(ref.size() == got.size());
  for (size_t k = 0; k < ref.size(); ++k) {
    const std::string name =
        what + " [" + dtype_name(dtype) + (shifted ? ", misaligned" : "") + "] output " + std::to_string(k);
    CHECK_MESSAGE(got[k].shape() == ref[k].shape(), name << ": shape");
    const DType od = got[k].dtype();
    const Tolerance tol = is_floating(od) ? cuda_tolerance(od) : tolerance(od);
    check_close(got[k].to_doubles(), ref[k].to_doubles(), tol.atol * tol_scale, tol.rtol * tol_scale, name);
  }
}

// check_cuda_op, and again with every GPU input and output one element off alignment, so that a kernel's
// 16-byte vector path and its scalar fallback are both held against the CPU.
inline void check_cuda_op_both(const Op& op, const std::vector<Tensor>& inputs_f32, DType dtype, const std::string& what,
                               double tol_scale = 1.0, uint64_t rng_seed = 0, uint64_t rng_offset = 0) {
  check_cuda_op(op, inputs_f32, dtype, what, tol_scale, rng_seed, rng_offset);
  check_cuda_op(op, inputs_f32, dtype, what, tol_scale, rng_seed, rng_offset, true);
}

// The dtypes a CUDA kernel is tested in.
inline const std::vector<DType>& cuda_float_dtypes() {
  static const std::vector<DType> d{DType::f32, DType::bf16, DType::f16};
  return d;
}

}  // namespace xfr::testing

#define XF_CUDA_TEST_CASE(name) TEST_CASE(name * doctest::skip(!::xfr::testing::cuda_tests_enabled()))

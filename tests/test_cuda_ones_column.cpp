// The ones column (KernelContext::ones_column): a layernorm's y stored in rows of K + 8 or more with column K ones, so that a
// linear layer's weight-gradient GEMM also gives its bias gradient. Each kernel's part against the CPU oracle or the
// packed way (the layernorm's tail, the linear's strided x, linear_weight_grad's scatter), then the executor's plan:
// which layernorms get it, and a graph's outputs and gradients with it against XF_ONES_COLUMN=0.
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "ops/cast.h"
#include "ops/cuda/norm_launch.h"
#include "ops/elementwise.h"
#include "ops/linear.h"
#include "ops/norm.h"
#include "ops/reduce.h"
#include "runtime/autodiff.h"
#include "runtime/cuda/context.h"
#include "runtime/executor.h"
#include "runtime/param_store.h"
#include "tests/cuda_testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

// x (M, K) f32 -> the device's rows [x | 1 | 0 ... 0] in dtype, W >= K + 8 long (the rest zeros too), and the (M, K)
// view a kernel is handed.
struct OnesRows {
  Tensor stored, view;
};
OnesRows ones_rows(const Tensor& x, DType dtype, int64_t W) {
  const int64_t M = x.dim(0), K = x.dim(1);
  const std::vector<double> v = x.to_doubles();
  std::vector<float> ext(static_cast<size_t>(M * W), 0.f);
  for (int64_t r = 0; r < M; ++r) {
    for (int64_t c = 0; c < K; ++c) ext[static_cast<size_t>(r * W + c)] = static_cast<float>(v[static_cast<size_t>(r * K + c)]);
    ext[static_cast<size_t>(r * W + K)] = 1.f;
  }
  OnesRows o;
  o.stored = Tensor::from_vector(ext, {M, W}).to(dtype).to_device(cuda_test_ctx());
  o.view = o.stored.slice(1, 0, K);
  return o;
}

KernelContext with_ones_column() {
  KernelContext kc = cuda_kernel_context();
  kc.ones_column = true;
  return kc;
}

}  // namespace

XF_CUDA_TEST_CASE("ones column: the layernorm writes y into the padded rows bit for bit, then a one and seven zeros") {
  // C = 768 and 40: the 16-byte path; 36: C % 8 != 0, the scalar path (rows 44 apart); 16400: past the register plan,
  // the streaming kernel. With and without the residual add (and its sum); rows C + 8 long and 128-byte ones (what the
  // executor stores). Every stored byte poisoned first; the bytes past the ones column stay as they were.
  DeviceContext* ctx = cuda_test_ctx();
  for (DType dt : {DType::bf16, DType::f16})
    for (const auto& [rows, C] : std::vector<std::array<int64_t, 2>>{{257, 768}, {33, 40}, {31, 36}, {3, 16400}})
      for (bool residual : {false, true})
        for (int64_t W : {C + kOnesColumnPad, ones_column_ld(C, static_cast<int64_t>(dtype_size(dt)))}) {
          const std::string what = str_cat("layernorm ", dtype_name(dt), " rows=", rows, " C=", C, " rows ", W,
                                           residual ? " +res" : "");
          CAPTURE(what);
          const Tensor x = random_tensor({rows, C}, 71).to(dt).to_device(ctx), r = random_tensor({rows, C}, 72).to(dt).to_device(ctx);
          const Tensor gamma = random_tensor({C}, 73).to(dt).to_device(ctx), beta = random_tensor({C}, 74).to(dt).to_device(ctx);
          const Tensor y = poisoned_device({rows, C}, dt), padded = poisoned_device({rows, W}, dt);
          const Tensor stats = poisoned_device({4, rows}, DType::f32), sums = poisoned_device({2, rows, C}, dt);
          float* st = stats.data<float>();
          for (int way = 0; way < 2; ++way)
            cuda::launch_layernorm_forward(dt, x.raw_data(), residual ? r.raw_data() : nullptr,
                                           residual ? sums.carve(static_cast<size_t>(way * rows * C) * dtype_size(dt),
                                                                 {rows, C}, dt).raw_data()
                                                    : nullptr,
                                           gamma.raw_data(), beta.raw_data(), way ? padded.raw_data() : y.raw_data(),
                                           st + 2 * way * rows, st + (2 * way + 1) * rows, rows, C, 1e-5,
                                           static_cast<cuda::CudaContext*>(ctx)->stream(), way ? W : 0, way == 1);
          ctx->synchronize();
          const std::vector<double> packed = y.to_doubles(), stored = padded.to_doubles(), s = stats.to_doubles();
          bool same = true, tail = true;
          for (int64_t i = 0; i < rows; ++i) {
            for (int64_t c = 0; c < C; ++c)
              same &= packed[static_cast<size_t>(i * C + c)] == stored[static_cast<size_t>(i * W + c)];
            for (int64_t c = C; c < C + kOnesColumnPad; ++c)
              tail &= stored[static_cast<size_t>(i * W + c)] == (c == C ? 1.0 : 0.0);
            for (int64_t c = C + kOnesColumnPad; c < W; ++c) tail &= std::isnan(stored[static_cast<size_t>(i * W + c)]);
          }
          CHECK(same);
          CHECK(tail);
          for (int64_t i = 0; i < 2 * rows; ++i) CHECK(s[static_cast<size_t>(i)] == s[static_cast<size_t>(2 * rows + i)]);
          if (residual) {
            const std::vector<double> sv = sums.to_doubles();
            CHECK(std::vector<double>(sv.begin(), sv.begin() + rows * C) == std::vector<double>(sv.begin() + rows * C, sv.end()));
          }
        }
}

XF_CUDA_TEST_CASE("ones column: linear reads x through the padded rows' view (against the CPU)") {
  // lda = ones_column_ld(K): the GEMM skips the ones column. Bias and GELU epilogues both ways.
  for (DType dt : {DType::bf16, DType::f16})
    for (const auto& [M, N, K] : std::vector<std::array<int64_t, 3>>{{257, 3072, 768}, {33, 24, 40}})
      for (bool gelu : {false, true}) {
        const std::string what = str_cat("linear ", dtype_name(dt), " M=", M, " N=", N, " K=", K, gelu ? " gelu" : "");
        const std::vector<Tensor> in_f32{random_tensor({M, K}, 81), random_tensor({N, K}, 82, -0.1, 0.1), random_tensor({N}, 83)};
        const RoundedInputs in = rounded_inputs(in_f32, dt);
        const auto ref = run_op(LinearOp(true, gelu), in.cpu, &test_pool());
        const OnesRows x = ones_rows(in.gpu[0], dt, ones_column_ld(K, static_cast<int64_t>(dtype_size(dt))));
        std::vector<Tensor> out{poisoned_device({M, N}, dt), poisoned_device({M, N}, dt)};
        if (!gelu) out[1] = Tensor{};
        KernelRegistry::builtin().get("linear", cuda_test_ctx()->device())(
            LinearOp(true, gelu), cuda_kernel_context(),
            {x.view, in.gpu[1].to_device(cuda_test_ctx()), in.gpu[2].to_device(cuda_test_ctx())}, out);
        cuda_test_ctx()->synchronize();
        // K = 768 products: the 16-bit output rounding dominates; one more ulp for the epilogue's tanh (as the linear
        // op's own CUDA test).
        const Tolerance tol = cuda_tolerance(dt);
        check_close(out[0].to_doubles(), ref[0].to_doubles(), 1.5 * tol.atol, 1.5 * tol.rtol, what);
      }
}

XF_CUDA_TEST_CASE("ones column: linear_weight_grad's bias gradient from its GEMM (against the CPU)") {
  // f32 outputs (the executor's gradient slots) and 16-bit ones; GPT-2's q/k/v width and awkward ones (N 31, M 257).
  // The f32 tolerance is check_f32_stores' (test_linear.cpp): sums of up to 1000 products carry fp32 rounding in
  // another order than the CPU's, 1.5e-4 absolute, where one 16-bit rounding would cost 5e-3 or more.
  for (DType dt : {DType::bf16, DType::f16})
    for (const auto& [M, N, K] : std::vector<std::array<int64_t, 3>>{{1000, 2304, 768}, {257, 31, 40}, {129, 64, 16}})
      for (bool f32_out : {true, false})
        for (int64_t W : {K + kOnesColumnPad, ones_column_ld(K, static_cast<int64_t>(dtype_size(dt)))}) {
          const std::string what = str_cat("linear_weight_grad ", dtype_name(dt), " M=", M, " N=", N, " K=", K, " rows ",
                                           W, f32_out ? " f32 outputs" : " 16-bit outputs");
          const RoundedInputs in = rounded_inputs({random_tensor({M, N}, 91), random_tensor({M, K}, 92)}, dt);
          const auto ref = run_op(LinearWeightGradOp(), in.cpu, &test_pool());
          const OnesRows x = ones_rows(in.gpu[1], dt, W);
          const DType od = f32_out ? DType::f32 : dt;
          const std::vector<Tensor> out{poisoned_device({N, K}, od), poisoned_device({N}, od)};
          KernelRegistry::builtin().get("linear_weight_grad", cuda_test_ctx()->device())(
              LinearWeightGradOp(), with_ones_column(), {in.gpu[0].to_device(cuda_test_ctx()), x.view}, out);
          cuda_test_ctx()->synchronize();
          const Tolerance tol = cuda_tolerance(dt);
          for (size_t k = 0; k < 2; ++k) {
            const std::string name = str_cat(what, k == 0 ? " dw" : " db");
            if (f32_out)
              check_close(out[k].to_doubles(), ref[k].to_doubles(), 1.5e-4, 0.0, name);
            else  // sums over M rows rounded once to 16 bits: twice the per-element tolerance, as test_linear.cpp's
              check_close(out[k].to_doubles(), ref[k].to_doubles(), 2 * tol.atol, 2 * tol.rtol, name);
          }
        }
  // Handed packed rows with the flag set: the front door says what is wrong.
  const Tensor g = random_tensor({16, 8}, 93).to(DType::bf16).to_device(cuda_test_ctx());
  const Tensor x = random_tensor({16, 8}, 94).to(DType::bf16).to_device(cuda_test_ctx());
  const std::vector<Tensor> out{poisoned_device({8, 8}, DType::f32), poisoned_device({8}, DType::f32)};
  CHECK_THROWS_WITH_AS(KernelRegistry::builtin().get("linear_weight_grad", cuda_test_ctx()->device())(
                           LinearWeightGradOp(), with_ones_column(), {g, x}, out),
                       doctest::Contains("ones column"), Error);
}

namespace {

// A pre-norm sublayer in mixed precision: y = x + fc2(gelu(fc1(layernorm(x)))) and a second layernorm read by a
// linear layer without a bias (no ones column for it: nothing to sum), loss = sum(out^2); the executor as training
// runs it (fused casts, gradients stored into poisoned slots). Returns the output and every gradient.
std::vector<std::vector<double>> run_sublayer(DType dt, bool ones, int* ones_columns) {
  ScopedEnv env("XF_ONES_COLUMN", ones ? "1" : "0");
  const int64_t B = 3, T = 43, C = 40, H = 72;  // 129 rows; C and H multiples of 8
  Graph g;
  compute_in(g, dt);
  Value x = g.input("x", TensorMeta{{B, T, C}, dt});
  const auto P = [&](const char* n, Shape s) { return g.param(n, s); };
  Value h = layernorm(x, P("ln1.w", {C}), P("ln1.b", {C}), 1e-5, "ln1");
  h = linear_op(h, P("fc1.w", {H, C}), P("fc1.b", {H}), true, "fc1");
  h = add(x, linear_op(h, P("fc2.w", {C, H}), P("fc2.b", {C}), false, "fc2"), "res");
  Value z = linear_op(layernorm(h, P("ln2.w", {C}), P("ln2.b", {C}), 1e-5, "ln2"), P("head.w", {24, C}), Value{}, false,
                      "head");
  Value out = cast(z, DType::f32, "out");
  Gradients grads = gradients(reduce_sum(mul(out, out), {}, false, "loss"), Value{});
  ExecutorOptions opt;
  opt.device = Device::cuda(0);
  opt.device_ctx = make_device_context(opt.device);
  opt.fuse_param_casts = true;
  opt.grads_overwrite = true;
  auto store = std::make_shared<ParamStore>(g, opt.device_ctx.get());
  uint64_t seed = 100;
  for (const auto& slot : store->slots()) store->param(slot.name).copy_from(random_tensor(store->shape(slot.name), ++seed, -0.3, 0.3));
  Executor ex(g, {out}, grads, store, opt);
  *ones_columns = ex.ones_columns();
  ex.bind(x, random_tensor({B, T, C}, 99).to(dt));
  const std::vector<float> poison(store->flat_size(), std::nanf(""));
  opt.device_ctx->copy(store->grads(), poison.data(), poison.size() * sizeof(float), CopyKind::host_to_device);
  ex.run();
  std::vector<std::vector<double>> r{ex.get(out).to_doubles()};
  for (const auto& slot : store->slots()) r.push_back(store->grad(slot.name).to_doubles());
  opt.device_ctx->synchronize();  // (the poison's host memory)
  return r;
}

}  // namespace

XF_CUDA_TEST_CASE("ones column: the executor gives ln1's y the column (not ln2's), with XF_ONES_COLUMN=0's results") {
  // Off, fc1's bias gradient is a column sum of its g; on, column 40 of fc1's weight-gradient GEMM: both fp32 sums of the
  // same 16-bit products, in other orders. Every gradient within 1e-4 of its largest element (fp32 reordering over
  // 129 rows is ~1e-6 of it; a 16-bit rounding would be 4e-3 or 5e-4), finite (the slots were poisoned).
  for (DType dt : {DType::bf16, DType::f16}) {
    CAPTURE(dtype_name(dt));
    int on_count = -1, off_count = -1;
    const auto on = run_sublayer(dt, true, &on_count), off = run_sublayer(dt, false, &off_count);
    CHECK(on_count == 1);  // ln1 (read by fc1 and its weight gradient); ln2 feeds a linear without a bias
    CHECK(off_count == 0);
    REQUIRE(on.size() == off.size());
    for (size_t k = 0; k < on.size(); ++k) {
      CAPTURE(k);
      double largest = 0;
      for (double v : off[k]) largest = std::max(largest, std::abs(v));
      bool close = true, finite = true;
      for (size_t i = 0; i < on[k].size(); ++i) {
        finite &= std::isfinite(on[k][i]);
        close &= std::abs(on[k][i] - off[k][i]) <= 1e-4 * largest;
      }
      CHECK(finite);
      CHECK(close);
    }
  }
}

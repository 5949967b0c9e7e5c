// The fused linear op (ops/linear.h): the CPU kernel equals the composite ops bit for bit, gradients by
// finite differences in float64, and the CUDA kernel (cuBLASLt epilogues) against the CPU in every dtype.
#include <array>

#include "ops/activation.h"
#include "ops/bias_add.h"
#include "ops/elementwise.h"
#include "ops/linear.h"
#include "ops/matmul.h"
#include "ops/reduce.h"
#include "runtime/device_context.h"
#include "tests/cuda_testing.h"

using namespace xfr;
using namespace xfr::testing;

TEST_CASE("linear: the CPU kernel equals matmul + bias_add + gelu_tanh exactly") {
  // K = 0 (the last shape): an empty sum, y = act(b).
  for (const Shape& xs : std::vector<Shape>{{31, 33}, {2, 17, 40}, {1, 8}, {3, 5, 0}})
    for (bool bias : {false, true})
      for (bool gelu : {false, true}) {
        const int64_t K = xs.back(), N = 24;
        const Tensor x = random_tensor(xs, 1), w = random_tensor({N, K}, 2), b = random_tensor({N}, 3);
        std::vector<Tensor> in{x, w};
        if (bias) in.push_back(b);
        const auto got = run_op(LinearOp(bias, gelu), in, &test_pool());
        Tensor ref = run_op(MatMulOp(false, true), {x, w}, &test_pool())[0];
        if (bias) ref = run_op(BiasAddOp(), {ref, b}, &test_pool())[0];
        if (gelu) {
          CHECK(got[1].to_doubles() == ref.to_doubles());
          ref = run_op(ActivationOp(ActivationKind::gelu_tanh), {ref}, &test_pool())[0];
        }
        CHECK(got[0].to_doubles() == ref.to_doubles());
      }
}

TEST_CASE("linear: gradients by finite differences (float64)") {
  for (bool bias : {false, true})
    for (bool gelu : {false, true}) {
      std::vector<Tensor> in{random_tensor({2, 3, 5}, 4, -1, 1, DType::f64), random_tensor({7, 5}, 5, -1, 1, DType::f64)};
      if (bias) in.push_back(random_tensor({7}, 6, -1, 1, DType::f64));
      check_gradients(
          [bias, gelu](Graph&, const std::vector<Value>& v) { return linear_op(v[0], v[1], bias ? v[2] : Value{}, gelu); },
          in, std::string("linear bias=") + (bias ? "1" : "0") + " gelu=" + (gelu ? "1" : "0"));
    }
}

TEST_CASE("linear: shapes are checked at the front door") {
  CHECK_THROWS_AS(LinearOp(false, false).infer({{{4, 5}, DType::f32}, {{3, 4}, DType::f32}}), Error);
  CHECK_THROWS_AS(LinearOp(true, false).infer({{{4, 5}, DType::f32}, {{3, 5}, DType::f32}, {{4}, DType::f32}}), Error);
  const LinearWeightGradOp wg;
  CHECK(wg.infer({{{9, 4}, DType::f32}, {{9, 5}, DType::f32}}) ==
        std::vector<TensorMeta>{{{4, 5}, DType::f32}, {{4}, DType::f32}});
  CHECK_THROWS_AS(wg.infer({{{9, 4}, DType::f32}, {{8, 5}, DType::f32}}), Error);     // rows differ
  CHECK_THROWS_AS(wg.infer({{{9, 4}, DType::f32}, {{9, 5}, DType::bf16}}), Error);    // dtypes differ
  CHECK_THROWS_AS(wg.infer({{{2, 9, 4}, DType::f32}, {{2, 9, 5}, DType::f32}}), Error);  // not 2-D
}

TEST_CASE("linear with a residual: the CPU kernel equals (matmul + bias_add) + r exactly; gradients; shapes checked") {
  // K = 0 (the last shape): y = b + r.
  for (const Shape& xs : std::vector<Shape>{{31, 33}, {2, 17, 40}, {3, 5, 0}})
    for (bool bias : {false, true}) {
      const int64_t K = xs.back(), N = 24;
      Shape ys = xs;
      ys.back() = N;
      const Tensor x = random_tensor(xs, 1), w = random_tensor({N, K}, 2), b = random_tensor({N}, 3),
                   r = random_tensor(ys, 4);
      std::vector<Tensor> in{x, w};
      if (bias) in.push_back(b);
      in.push_back(r);
      const auto got = run_op(LinearOp(bias, false, true), in, &test_pool());
      Tensor ref = run_op(MatMulOp(false, true), {x, w}, &test_pool())[0];
      if (bias) ref = run_op(BiasAddOp(), {ref, b}, &test_pool())[0];
      ref = run_op(BinaryOp(BinaryKind::add), {r, ref}, &test_pool())[0];  // the stream + the layer, as a block adds
      CHECK(got[0].to_doubles() == ref.to_doubles());
    }
  for (bool bias : {false, true}) {
    std::vector<Tensor> in{random_tensor({2, 3, 5}, 4, -1, 1, DType::f64), random_tensor({7, 5}, 5, -1, 1, DType::f64)};
    if (bias) in.push_back(random_tensor({7}, 6, -1, 1, DType::f64));
    in.push_back(random_tensor({2, 3, 7}, 7, -1, 1, DType::f64));
    check_gradients(
        [bias](Graph&, const std::vector<Value>& v) {
          return linear_residual_op(v[0], v[1], bias ? v[2] : Value{}, v.back());
        },
        in, std::string("linear + residual, bias=") + (bias ? "1" : "0"));
  }
  const TensorMeta x{{4, 5}, DType::f32}, w{{3, 5}, DType::f32}, b{{3}, DType::f32};
  CHECK(LinearOp(true, false, true).infer({x, w, b, {{4, 3}, DType::f32}}) ==
        std::vector<TensorMeta>{{{4, 3}, DType::f32}});
  CHECK_THROWS_AS(LinearOp(true, false, true).infer({x, w, b, {{4, 5}, DType::f32}}), Error);   // not y's shape
  CHECK_THROWS_AS(LinearOp(true, false, true).infer({x, w, b, {{4, 3}, DType::bf16}}), Error);  // not y's dtype
  CHECK_THROWS_AS(LinearOp(true, false, true).infer({x, w, b}), Error);                         // no residual
  CHECK_THROWS_AS(LinearOp(true, true, true).infer({x, w, b, {{4, 3}, DType::f32}}), Error);    // with GELU
}

TEST_CASE("fold_residual_into_linear: a fresh linear layer takes the residual in; anything else is left alone") {
  Graph g;
  const Value x = g.input("x", TensorMeta{{2, 3, 5}, DType::f32}, true);
  const Value w = g.input("w", TensorMeta{{7, 5}, DType::f32}, true);
  const Value b = g.input("b", TensorMeta{{7}, DType::f32}, true);
  const Value r = g.input("r", TensorMeta{{2, 3, 7}, DType::f32}, true);
  Value sum;
  {
    auto s = g.scope("block");
    const Value y = linear_op(x, w, b, false, "proj");
    sum = fold_residual_into_linear(y, r);
    REQUIRE(sum.defined());
    CHECK(sum.meta() == y.meta());
  }
  const Node& n = g.node(g.value(sum.id).producer);
  const auto* op = dynamic_cast<const LinearOp*>(n.op.get());
  REQUIRE(op != nullptr);
  CHECK(op->has_residual);
  CHECK(op->has_bias);
  CHECK(n.name == "block.proj_residual");  // under the open scopes, once
  CHECK(n.inputs == std::vector<int>{x.id, w.id, b.id, r.id});
  // Not folded: a GELU layer, a product something already reads, a residual of another shape, a non-linear producer.
  const Value act = linear_op(x, w, b, true);
  CHECK(!fold_residual_into_linear(act, r).defined());
  const Value read = linear_op(x, w, b, false);
  (void)reduce_sum(read, {}, false);
  CHECK(!fold_residual_into_linear(read, r).defined());
  CHECK(!fold_residual_into_linear(linear_op(x, w, b, false), g.input("r2", TensorMeta{{6, 7}, DType::f32})).defined());
  CHECK(!fold_residual_into_linear(reduce_sum(r, {0}, true), r).defined());
}

TEST_CASE("linear_weight_grad: the CPU kernel equals gᵀ x and the column sums of g exactly") {
  for (const auto& [M, N, K] : std::vector<std::array<int64_t, 3>>{{33, 31, 17}, {1, 8, 5}, {257, 24, 40}}) {
    const Tensor g = random_tensor({M, N}, 11), x = random_tensor({M, K}, 12);
    const auto got = run_op(LinearWeightGradOp(), {g, x}, &test_pool());
    CHECK(got[0].to_doubles() == run_op(MatMulOp(true, false), {g, x}, &test_pool())[0].to_doubles());
    CHECK(got[1].to_doubles() == run_op(ReduceOp(ReduceKind::sum, {0}, false), {g}, &test_pool())[0].to_doubles());
  }
}

TEST_CASE("matmul_dgelu: the CPU kernel equals matmul then gelu_tanh's backward exactly; shapes checked") {
  for (const Shape& as : std::vector<Shape>{{31, 33}, {2, 17, 40}}) {
    const int64_t K = as.back(), N = 24;
    Shape ps = as;
    ps.back() = N;
    const Tensor a = random_tensor(as, 21), b = random_tensor({K, N}, 22), pre = random_tensor(ps, 23, -3, 3);
    const auto got = run_op(MatMulDGeluOp(), {a, b, pre}, &test_pool());
    const Tensor prod = run_op(MatMulOp(false, false), {a, b}, &test_pool())[0];
    const Tensor ref = run_op(ActivationBackwardOp(ActivationKind::gelu_tanh), {pre, prod}, &test_pool())[0];
    CHECK(got[0].to_doubles() == ref.to_doubles());
  }
  const MatMulDGeluOp op;
  CHECK_THROWS_AS(op.infer({{{4, 5}, DType::f32}, {{5, 3}, DType::f32}, {{4, 4}, DType::f32}}), Error);     // pre
  CHECK_THROWS_AS(op.infer({{{4, 5}, DType::f32}, {{2, 5, 3}, DType::f32}, {{4, 3}, DType::f32}}), Error);  // 3-D b
}

TEST_CASE("linear: an MLP's backward applies the GELU's derivative in one matmul_dgelu node; gradients by finite "
          "differences (float64)") {
  const auto mlp = [](Graph&, const std::vector<Value>& v) {
    return linear_op(linear_op(v[0], v[1], v[2], true), v[3], v[4], false);
  };
  const std::vector<Tensor> in{random_tensor({2, 3, 5}, 31, -1, 1, DType::f64), random_tensor({8, 5}, 32, -1, 1, DType::f64),
                               random_tensor({8}, 33, -1, 1, DType::f64), random_tensor({4, 8}, 34, -1, 1, DType::f64),
                               random_tensor({4}, 35, -1, 1, DType::f64)};
  check_gradients(mlp, in, "linear gelu -> linear");
  Graph g;
  const std::vector<Value> v = graph_inputs(g, in, true);
  const Gradients grads = gradients(reduce_sum(mlp(g, v), {}, false));
  int fused = 0, unfused = 0;
  for (int i = 0; i < g.num_nodes(); ++i) {
    fused += g.node(i).op->name() == "matmul_dgelu";
    unfused += g.node(i).op->name() == "activation_backward";
  }
  CHECK(fused == 1);
  CHECK(unfused == 0);
  CHECK(grads.get(v[1]).defined());
}

TEST_CASE("linear: with a bias, the backward computes dw and db in one linear_weight_grad node") {
  Graph g;
  Value x = g.input("x", TensorMeta{{2, 3, 5}, DType::f32}, true);
  Value w = g.input("w", TensorMeta{{7, 5}, DType::f32}, true);
  Value b = g.input("b", TensorMeta{{7}, DType::f32}, true);
  const Value loss = reduce_sum(linear_op(x, w, b, true), {}, false);
  const Gradients grads = gradients(loss);
  int fused = 0, reduces = 0;
  for (int i = 0; i < g.num_nodes(); ++i) {
    fused += g.node(i).op->name() == "linear_weight_grad";
    reduces += g.node(i).op->name() == "reduce";
  }
  CHECK(fused == 1);
  CHECK(reduces == 1);  // the loss's own sum only
  CHECK(grads.get(b).defined());
}

// The ways ops/cuda/linear.cu may run a fused epilogue (gemm_fused_or_split): forced fused, forced split, and auto
// (timed; whichever wins on this GPU).
namespace {
const std::vector<std::string>& epilogue_ways() {
  static const std::vector<std::string> w{"fused", "split", "auto"};
  return w;
}
}  // namespace

XF_CUDA_TEST_CASE("linear: CUDA (cuBLASLt bias / GELU epilogues) against the CPU") {
  // N = 24 and 3072 take the fused GELU epilogue (N % 8 == 0) or its split twin; N = 33 always the bias GEMM +
  // activation kernel.
  for (const std::string& way : epilogue_ways())
  for (DType dt : cuda_float_dtypes())
    for (int64_t N : {24, 33, 3072})
      for (bool bias : {false, true})
        for (bool gelu : {false, true}) {
          const Shape xs{3, 41, 257};
          std::vector<Tensor> in{random_tensor(xs, 7), random_tensor({N, 257}, 8, -0.1, 0.1)};
          if (bias) in.push_back(random_tensor({N}, 9));
          // K = 257 products: the bf16 output rounding dominates; one extra ulp for the epilogue's tanh.
          ScopedEnv env("XF_GEMM_EPILOGUE", way.c_str());
          check_cuda_op(LinearOp(bias, gelu), in, dt, str_cat("linear N=", N, " ", way), 1.5);
        }
}

XF_CUDA_TEST_CASE("linear with a residual: CUDA (the GEMM's C input) against the CPU") {
  // The residual is added in fp32 before y's one rounding; the CPU adds it after the bias. N = 33: n not a multiple of
  // 16 bytes (the aligned-columns GEMM and its tail both read their share of C); K = 0: fill, bias, add.
  for (DType dt : cuda_float_dtypes())
    for (const auto& [K, N] : std::vector<std::array<int64_t, 2>>{{257, 24}, {768, 768}, {64, 33}, {0, 24}})
      for (bool bias : {false, true}) {
        std::vector<Tensor> in{random_tensor({3, 41, K}, 7), random_tensor({N, K}, 8, -0.1, 0.1)};
        if (bias) in.push_back(random_tensor({N}, 9));
        in.push_back(random_tensor({3, 41, N}, 10, -4, 4));
        check_cuda_op(LinearOp(bias, false, true), in, dt, str_cat("linear + residual K=", K, " N=", N), 1.5);
      }
}

XF_CUDA_TEST_CASE("linear: CUDA with K = 0 gives act(b), as the CPU") {
  // An empty sum: no GEMM runs; y = b or gelu_tanh(b) per row (the kernel once returned before writing y).
  for (bool gelu : {false, true}) {
    const std::vector<Tensor> in{random_tensor({3, 5, 0}, 7), random_tensor({24, 0}, 8), random_tensor({24}, 9)};
    check_cuda_op(LinearOp(true, gelu), in, DType::f32, str_cat("linear K=0 gelu=", gelu));
  }
}

XF_CUDA_TEST_CASE("matmul_dgelu: CUDA (cuBLASLt's dgelu epilogue) against the CPU") {
  // N = 48 and 3072 take the epilogue (N % 8 == 0), N = 33 the GEMM + activation kernel; K = 257, 768.
  for (const std::string& way : epilogue_ways())
  for (DType dt : cuda_float_dtypes())
    for (const auto& [K, N] : std::vector<std::array<int64_t, 2>>{{257, 48}, {768, 3072}, {64, 33}}) {
      ScopedEnv env("XF_GEMM_EPILOGUE", way.c_str());
      const std::vector<Tensor> in{random_tensor({3, 41, K}, 24), random_tensor({K, N}, 25, -0.1, 0.1),
                                   random_tensor({3, 41, N}, 26, -3, 3)};
      // The epilogue applies the derivative to the fp32 product (the CPU to the product rounded to the dtype):
      // one more rounding of the product in 16 bits.
      check_cuda_op_both(MatMulDGeluOp(), in, dt, str_cat("matmul_dgelu K=", K, " N=", N, " ", way), 2.0);
    }
}

XF_CUDA_TEST_CASE("linear_weight_grad: CUDA (cuBLASLt's bias-gradient epilogue) against the CPU") {
  // GPT-2's widths (N 2304, K 768) and awkward ones (N 31, K 17: unaligned rows, which may take the fallback).
  for (const std::string& way : epilogue_ways())
  for (DType dt : cuda_float_dtypes())
    for (const auto& [M, N, K] : std::vector<std::array<int64_t, 3>>{{1000, 2304, 768}, {257, 31, 17}, {129, 64, 40}}) {
      ScopedEnv env("XF_GEMM_EPILOGUE", way.c_str());
      const std::vector<Tensor> in{random_tensor({M, N}, 13), random_tensor({M, K}, 14)};
      // sums over M = 1000 rows: the 16-bit outputs' rounding dominates; twice the per-element tolerance.
      check_cuda_op_both(LinearWeightGradOp(), in, dt,
                         str_cat("linear_weight_grad M=", M, " N=", N, " K=", K, " ", way), 2.0);
    }
}

namespace {

// op on the GPU with its f32-storable outputs handed in as f32 (run_op_cuda's f32_stores: the executor's gradient
// slots) from inputs rounded to dtype, against the CPU's f32 kernel on the same rounded inputs. The tolerance is
// absolute: the sums of up to 1000 products of magnitude <= 1 (partial sums near 10) carry fp32 rounding, in another
// order than the CPU's and from the tensor cores' accumulation: 4.8e-5 at worst on the H200 (session 24, run 3) over
// 1.8 M sums; 1.5e-4 allows that with room, while a 16-bit rounding of such a sum would cost up to 5e-3 (f16) or
// 4e-2 (bf16).
void check_f32_stores(const Op& op, const std::vector<Tensor>& inputs_f32, DType dtype, const std::string& what,
                      bool shifted) {
  const RoundedInputs in = rounded_inputs(inputs_f32, dtype);
  const auto ref = run_op(op, in.cpu, &test_pool());
  const auto got = run_op_cuda(op, in.gpu, 0, 0, shifted, /*f32_stores=*/true);
  REQUIRE(ref.size() == got.size());
  for (size_t k = 0; k < ref.size(); ++k) {
    const std::string name = str_cat(what, " [", dtype_name(dtype), shifted ? ", misaligned" : "", "] output ", k);
    CHECK_MESSAGE(got[k].dtype() == DType::f32, name << ": stored as f32");
    check_close(got[k].to_doubles(), ref[k].to_doubles(), 1.5e-4, 0.0, name);
  }
}

}  // namespace

XF_CUDA_TEST_CASE("linear_weight_grad and matmul: CUDA with f32 outputs from 16-bit inputs (gradient slots) against the CPU") {
  // The executor hands a weight gradient's GEMM its parameter's f32 slot (Op::stores_f32): dw as cuBLASLt's f32 C and
  // db as an f32 column sum, from bf16 / f16 g and x, without the 16-bit rounding. Awkward shapes take the GEMM's
  // unaligned paths; every epilogue way (f32 outputs take the split one).
  for (const std::string& way : epilogue_ways())
    for (DType dt : {DType::bf16, DType::f16})
      for (const auto& [M, N, K] : std::vector<std::array<int64_t, 3>>{{1000, 2304, 768}, {257, 31, 17}, {129, 64, 40}}) {
        ScopedEnv env("XF_GEMM_EPILOGUE", way.c_str());
        const std::vector<Tensor> in{random_tensor({M, N}, 15), random_tensor({M, K}, 16)};
        const std::string what = str_cat("linear_weight_grad M=", M, " N=", N, " K=", K, " ", way);
        for (bool shifted : {false, true}) check_f32_stores(LinearWeightGradOp(), in, dt, what, shifted);
      }
  // matmul's f32 C (gᵀ x, the weight gradient of a linear layer without a bias).
  for (DType dt : {DType::bf16, DType::f16})
    for (const auto& [M, N, K] : std::vector<std::array<int64_t, 3>>{{1000, 2304, 768}, {257, 31, 17}}) {
      const std::vector<Tensor> in{random_tensor({M, N}, 17), random_tensor({M, K}, 18)};
      check_f32_stores(MatMulOp(true, false), in, dt, str_cat("matmul gᵀ x M=", M, " N=", N, " K=", K), false);
    }
}

// pre is an optional output (LinearOp::output_optional): an inference graph, which reads only y, plans no buffer
// for it and the kernels write y alone (CUDA: the GELU epilogue without its auxiliary output, or the activation in
// place); y is unchanged.
namespace {

void pre_optional_case(const std::shared_ptr<DeviceContext>& dev, DType dt, int64_t N) {
  const Shape xs{3, 41, 65};
  const Tensor x = random_tensor(xs, 51).to(dt), w = random_tensor({N, 65}, 52, -0.2, 0.2).to(dt);
  const Tensor b = random_tensor({N}, 53).to(dt);
  Graph g;
  Value vx = g.input("x", TensorMeta{xs, dt}), vw = g.input("w", TensorMeta{{N, 65}, dt}), vb = g.input("b", TensorMeta{{N}, dt});
  const Value y = linear_op(vx, vw, vb, true, "fc");
  ExecutorOptions opt;
  if (dev) {
    opt.device = dev->device();
    opt.device_ctx = dev;
  }
  Executor ex(g, {y}, Gradients{}, std::make_shared<ParamStore>(g, dev.get()), opt);
  const int64_t y_bytes = 3 * 41 * N * static_cast<int64_t>(dtype_size(dt));
  CHECK(static_cast<int64_t>(ex.memory_plan().arena_bytes) < 2 * y_bytes);  // y's buffer, not also pre's
  ex.bind(vx, x);
  ex.bind(vw, w);
  ex.bind(vb, b);
  ex.run();
  const Tensor got = ex.get(y).to_host();
  const auto ref = run_op(LinearOp(true, true), {x.to(DType::f32), w.to(DType::f32), b.to(DType::f32)});
  const std::string what = str_cat("linear without pre ", dtype_name(dt), " N=", N, dev ? " device" : " cpu");
  if (dev) {
    const Tolerance tol = cuda_tolerance(dt);
    check_close(got.to_doubles(), ref[0].to_doubles(), 1.5 * tol.atol, 1.5 * tol.rtol, what);
  } else {
    CHECK(got.to_doubles() == ref[0].to_doubles());
  }
}

}  // namespace

TEST_CASE("linear: an inference graph leaves the pre-activation out (CPU)") {
  for (int64_t N : {24, 33}) pre_optional_case(nullptr, DType::f32, N);
}

XF_CUDA_TEST_CASE("linear: an inference graph leaves the pre-activation out (CUDA: the epilogue without aux)") {
  const std::shared_ptr<DeviceContext> dev = make_device_context(Device::cuda(0));
  for (const std::string& way : epilogue_ways()) {  // split: the activation in place on y
    ScopedEnv env("XF_GEMM_EPILOGUE", way.c_str());
    CAPTURE(way);
    for (DType dt : cuda_float_dtypes())
      for (int64_t N : {24, 33, 3072}) pre_optional_case(dev, dt, N);
  }
}

XF_CUDA_TEST_CASE("linear: XF_GEMM_EPILOGUE other than fused, split or auto is an error naming them") {
  ScopedEnv env("XF_GEMM_EPILOGUE", "fast");
  const std::vector<Tensor> in{random_tensor({4, 8}, 1), random_tensor({8, 8}, 2, -0.1, 0.1), random_tensor({8}, 3)};
  try {
    run_op_cuda(LinearOp(true, true), in);
    FAIL("no error");
  } catch (const Error& e) {
    CHECK_MESSAGE(contains(e.message(), "fused, split or auto"), std::string(e.what()));
  }
}

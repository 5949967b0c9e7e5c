// CUDA elementwise kernels against the CPU oracle: binary (broadcasting), scale, sum_to, broadcast_to, fill,
// bias_add, every activation kind forward and backward, star_relu and its backward, dropout (the mask equal
// to the CPU's bit for bit, also through rng_offset_device), and the fused bias + activation + dropout
// launcher against the unfused ops. Each in f32, bf16 and f16, on awkward sizes, and again with every
// input and output one element past an aligned address (the scalar fallbacks). Without
// XF_TEST_DEVICE=cuda and a GPU these report as skipped.
#include <cstring>

#include "ops/activation.h"
#include "ops/bias_add.h"
#include "ops/dropout.h"
#include "ops/elementwise.h"
#include "runtime/rng.h"
#include "tests/cuda_testing.h"

#ifdef XF_WITH_CUDA
#include "ops/cuda/elementwise_launch.h"
#include "runtime/cuda/context.h"
#endif

using namespace xfr;
using namespace xfr::testing;

namespace {

std::string shape_pair(const Shape& a, const Shape& b) { return shape_str(a) + " and " + shape_str(b); }

const std::vector<int64_t> kSizes{1, 31, 33, 257, 1000, 100003};

// Exact element-by-element equality (dropout masks and values).
void check_equal(const Tensor& got, const Tensor& want, const std::string& what) {
  const auto g = got.to_doubles(), w = want.to_doubles();
  REQUIRE(g.size() == w.size());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < g.size(); ++i)
    if (!(g[i] == w[i])) {
      if (bad == 0) first = i;
      ++bad;
    }
  CHECK_MESSAGE(bad == 0, what << ": " << bad << " elements differ, first " << first << ": " << g[first] << " vs "
                                << w[first]);
}

const ActivationKind kKinds[] = {ActivationKind::relu,       ActivationKind::gelu,         ActivationKind::gelu_tanh,
                                 ActivationKind::leaky_relu, ActivationKind::squared_relu, ActivationKind::smelu,
                                 ActivationKind::silu,       ActivationKind::sigmoid};

}  // namespace

// ---- binary ---------------------------------------------------------------------------------------------

XF_CUDA_TEST_CASE("cuda binary: add/sub/mul/div on equal shapes of awkward sizes") {
  for (BinaryKind kind : {BinaryKind::add, BinaryKind::sub, BinaryKind::mul, BinaryKind::div})
    for (int64_t n : kSizes)
      for (DType dt : cuda_float_dtypes()) {
        const Tensor a = random_tensor({n}, 1, -2, 2);
        const Tensor b = random_tensor({n}, 2, 0.5, 1.5);  // away from 0 for div
        check_cuda_op_both(BinaryOp(kind), {a, b}, dt, "binary " + BinaryOp(kind).attrs() + " n " + std::to_string(n));
      }
}

XF_CUDA_TEST_CASE("cuda binary: NumPy broadcasting (row, column, scalar, leading-1 and outer-product shapes)") {
  const std::vector<std::pair<Shape, Shape>> cases{
      {{33, 257}, {257}},       // row (bias-like), odd width: scalar path
      {{31, 64}, {64}},         // row, width a multiple of every vector width: vector path
      {{33, 257}, {33, 1}},     // column
      {{31, 64}, {31, 1}},      // column, vector path (broadcast operand read once per vector)
      {{257, 33}, {}},          // rank-0 scalar
      {{1}, {1000}},            // scalar on the left
      {{1, 5, 1, 7}, {3, 1, 6, 7}},  // leading 1s and broadcasting on both sides
      {{2, 1, 33}, {1, 31, 1}},      // outer product
      {{4, 1, 8}, {4, 8, 8}},        // middle-axis broadcast
      {{2, 3, 4, 5, 6}, {3, 1, 5, 1}},  // rank 5, alternating
      {{1, 1, 16}, {16}},               // equal after leading 1s
  };
  for (BinaryKind kind : {BinaryKind::add, BinaryKind::sub, BinaryKind::mul, BinaryKind::div})
    for (const auto& [sa, sb] : cases)
      for (DType dt : cuda_float_dtypes()) {
        const Tensor a = random_tensor(sa, 3, -2, 2);
        const Tensor b = random_tensor(sb, 4, 0.5, 1.5);
        const std::string what = "binary " + BinaryOp(kind).attrs() + " " + shape_pair(sa, sb);
        check_cuda_op_both(BinaryOp(kind), {a, b}, dt, what);
        check_cuda_op_both(BinaryOp(kind), {b, a}, dt, what + " (swapped)");
      }
}

// ---- scale, broadcast_to, fill -------------------------------------------------------------------------

XF_CUDA_TEST_CASE("cuda scale: y = alpha x") {
  for (double alpha : {0.37, -2.0, 0.0})
    for (int64_t n : kSizes)
      for (DType dt : cuda_float_dtypes())
        check_cuda_op_both(ScaleOp(alpha), {random_tensor({n}, 5, -3, 3)}, dt, "scale n " + std::to_string(n));
}

XF_CUDA_TEST_CASE("cuda broadcast_to: floating and integer dtypes, every broadcast pattern") {
  const std::vector<std::pair<Shape, Shape>> cases{
      {{33}, {257, 33}}, {{64}, {31, 64}}, {{257, 1}, {257, 33}}, {{31, 1}, {31, 64}}, {{}, {31}},
      {{1}, {1000}},     {{1, 5, 1}, {3, 5, 7}}, {{5, 1}, {2, 5, 16}}, {{1, 1}, {1, 1}}, {{7, 3}, {2, 7, 3}}};
  for (const auto& [sx, sy] : cases) {
    for (DType dt : cuda_float_dtypes())
      check_cuda_op_both(BroadcastToOp(sy), {random_tensor(sx, 6, -3, 3)}, dt, "broadcast_to " + shape_pair(sx, sy));
    for (DType it : {DType::i32, DType::i64, DType::u8})  // integers are copied exactly
      check_cuda_op_both(BroadcastToOp(sy), {random_tensor(sx, 7, 0, 100).to(it)}, DType::f32,
                 "broadcast_to " + std::string(dtype_name(it)) + " " + shape_pair(sx, sy));
  }
}

XF_CUDA_TEST_CASE("cuda fill: every dtype, zero, negative zero and other values") {
  for (DType dt : {DType::f32, DType::bf16, DType::f16, DType::f64, DType::i32, DType::i64, DType::u8})
    for (double v : {0.0, -0.0, 2.5, -3.0, 1.0 / 3.0})
      for (int64_t n : {int64_t{1}, int64_t{31}, int64_t{33}, int64_t{1000}}) {
        if (is_integer(dt) && (v != std::floor(v) || (dt == DType::u8 && v < 0))) continue;
        const FillOp op(TensorMeta{{n}, dt}, v);
        const Tensor got = run_op_cuda(op, {})[0];
        const Tensor want = run_op(op, {})[0];
        check_equal(got, want, "fill " + op.attrs());
        if (v == 0.0 && is_floating(dt)) {  // the sign of zero survives (the bytes, not just the value)
          const Tensor h = got.to_host();
          const Tensor w = want;
          CHECK(std::memcmp(h.raw_data(), w.raw_data(), h.nbytes()) == 0);
        }
      }
}

// ---- sum_to ---------------------------------------------------------------------------------------------

XF_CUDA_TEST_CASE("cuda sum_to: columns, rows, scalars, middle axes, and long reductions split over blocks") {
  const std::vector<std::pair<Shape, Shape>> cases{
      {{257, 33}, {33}},          // bias-gradient shape (kept innermost)
      {{257, 33}, {257, 1}},      // row sums (reduced innermost)
      {{1000}, {1}},              // to a scalar
      {{1000}, {}},               // to rank 0
      {{31}, {31}},               // nothing reduced
      {{3, 31, 33}, {3, 1, 33}},  // middle axis
      {{3, 31, 33}, {1, 31, 1}},  // outer and inner axes
      {{4, 5, 6, 7}, {5, 1, 7}},  // two reduced runs, two kept runs
      {{2, 1, 31}, {1, 1, 31}},   // size-1 axes
      {{20000, 8}, {8}},          // few outputs, long reduction: split over blocks
      {{8, 20000}, {8, 1}},       // the same with the reduced axis innermost
      {{100003}, {1}},            // a long scalar sum
      // Short reductions over contiguous rows of at least 64 x 256 16-byte vectors: the vector kernel. A position
      // table's gradient (B, T, C) -> (T, C), with 5 and 33 rows (the kernel's 4-row steps and their tail), and two
      // outer axes merged into one run of rows.
      {{5, 257, 1032}, {257, 1032}},
      {{33, 67, 2056}, {67, 2056}},
      {{3, 2, 129, 1024}, {1, 1, 129, 1024}},
      {{65, 257, 1032}, {257, 1032}},  // one row more than the vector kernel takes: the tiled kernel
  };
  for (const auto& [sx, sy] : cases)
    for (DType dt : cuda_float_dtypes())
      check_cuda_op_both(SumToOp(sy), {random_tensor(sx, 8, -1, 1)}, dt, "sum_to " + shape_pair(sx, sy));
}

// ---- bias_add -------------------------------------------------------------------------------------------

XF_CUDA_TEST_CASE("cuda bias_add: (..., C) + (C) for odd and vector-width C") {
  const std::vector<Shape> shapes{{31, 33}, {1000, 64}, {2, 3, 257}, {1, 1}, {33, 8}, {257, 16}, {5, 1000}};
  for (const auto& s : shapes)
    for (DType dt : cuda_float_dtypes()) {
      const Tensor x = random_tensor(s, 9, -2, 2), b = random_tensor({s.back()}, 10, -1, 1);
      check_cuda_op_both(BiasAddOp(), {x, b}, dt, "bias_add " + shape_str(s));
    }
}

// ---- activations ----------------------------------------------------------------------------------------

XF_CUDA_TEST_CASE("cuda activation and activation_backward: every kind, parameters, sizes and dtypes") {
  for (ActivationKind kind : kKinds) {
    std::vector<ActivationParams> params{ActivationParams{}};
    if (kind == ActivationKind::leaky_relu) params.push_back(ActivationParams{0.2, 2.0});
    if (kind == ActivationKind::smelu) params.push_back(ActivationParams{0.01, 0.5});
    for (const auto& p : params)
      for (int64_t n : kSizes)
        for (DType dt : cuda_float_dtypes()) {
          // [-6, 6] reaches both tails of gelu/silu/sigmoid and every piece of smelu
          const Tensor x = random_tensor({n}, 11, -6, 6), dy = random_tensor({n}, 12, -1, 1);
          const std::string what = std::string(activation_name(kind)) + " " + ActivationOp(kind, p).attrs() + " n " +
                                   std::to_string(n);
          check_cuda_op_both(ActivationOp(kind, p), {x}, dt, what);
          check_cuda_op_both(ActivationBackwardOp(kind, p), {x, dy}, dt, what + " backward");
        }
  }
}

XF_CUDA_TEST_CASE("cuda star_relu and star_relu_backward: values, parameter gradients over many blocks") {
  for (int64_t n : kSizes)
    for (DType dt : cuda_float_dtypes()) {
      const Tensor x = random_tensor({n}, 13, -2, 2), dy = random_tensor({n}, 14, -1, 1);
      const Tensor scale = Tensor::full({1}, 0.8944), bias = Tensor::full({}, -0.4472);
      check_cuda_op_both(StarReluOp(), {x, scale, bias}, dt, "star_relu n " + std::to_string(n));
      check_cuda_op_both(StarReluBackwardOp(), {x, scale, dy}, dt, "star_relu_backward n " + std::to_string(n));
    }
}

// ---- dropout --------------------------------------------------------------------------------------------

XF_CUDA_TEST_CASE("cuda dropout: the mask and f32 values equal the CPU's exactly, at offsets not divisible by 4") {
  const uint64_t seed = 0x5EED1234ABCDull;
  for (int64_t n : kSizes)
    for (uint64_t offset : {uint64_t{0}, uint64_t{1}, uint64_t{2}, uint64_t{3}, uint64_t{5}, uint64_t{1000003},
                            (uint64_t{1} << 34) + 7})  // the last: Philox block counters above 2^32
      for (double p : {0.1, 0.5, 0.9}) {
        const Tensor x = random_tensor({n}, 15, 0.5, 1.5);  // never 0, so a 0 output means dropped
        const DropoutOp op(p);
        const Tensor want = run_op(op, {x}, &test_pool(), seed, offset)[0];
        const std::string what = "dropout n " + std::to_string(n) + " offset " + std::to_string(offset) + " p " +
                                 std::to_string(p);
        check_equal(run_op_cuda(op, {x}, seed, offset)[0], want, what);
        check_equal(run_op_cuda(op, {x}, seed, offset, true)[0], want, what + " misaligned");
        for (DType dt : {DType::bf16, DType::f16}) check_cuda_op_both(op, {x}, dt, what, 1.0, seed, offset);
      }
}

XF_CUDA_TEST_CASE("cuda dropout: rng_offset_device is read on the device and added to rng_offset") {
  DeviceContext* ctx = cuda_test_ctx();
  const uint64_t seed = 99;
  for (int64_t n : {int64_t{33}, int64_t{1000}, int64_t{100003}})
    for (uint64_t dev_off : {uint64_t{0}, uint64_t{6}, uint64_t{1} << 33})
      for (uint64_t host_off : {uint64_t{0}, uint64_t{1}, uint64_t{4099}}) {
        const Tensor x = random_tensor({n}, 16, 0.5, 1.5);
        const DropoutOp op(0.3);
        const Tensor want = run_op(op, {x}, &test_pool(), seed, dev_off + host_off)[0];
        const Tensor dev_offset =
            Tensor::from_vector<int64_t>({static_cast<int64_t>(dev_off)}, {1}).to_device(ctx);
        const Tensor dx = x.to_device(ctx);
        Tensor y = Tensor::empty({n}, DType::f32, ctx);
        KernelContext kc = cuda_kernel_context();
        kc.rng_seed = seed;
        kc.rng_offset = host_off;
        kc.rng_offset_device = static_cast<const uint64_t*>(dev_offset.raw_data());
        KernelRegistry::builtin().get("dropout", ctx->device())(op, kc, {dx}, {y});
        ctx->synchronize();
        check_equal(y, want,
                    "dropout n " + std::to_string(n) + " device offset " + std::to_string(dev_off) + " + " +
                        std::to_string(host_off));
      }
}

XF_CUDA_TEST_CASE("cuda dropout: the backward (dropout of dy at the forward's offset) replays the forward mask") {
  const uint64_t seed = 7, offset = 13;
  const Tensor x = random_tensor({257, 33}, 17, 0.5, 1.5), dy = random_tensor({257, 33}, 18, 0.5, 1.5);
  const DropoutOp op(0.4);
  const auto y = run_op_cuda(op, {x}, seed, offset)[0].to_doubles();
  const auto dx = run_op_cuda(op, {dy}, seed, offset)[0].to_doubles();
  size_t mismatches = 0;
  for (size_t i = 0; i < y.size(); ++i) mismatches += (y[i] == 0.0) != (dx[i] == 0.0);
  CHECK(mismatches == 0);
}

// ---- launchers --------------------------------------------------------------------------------------------

#ifdef XF_WITH_CUDA
namespace {
CUstream_st* test_stream() { return static_cast<cuda::CudaContext*>(cuda_test_ctx())->stream(); }
}  // namespace

XF_CUDA_TEST_CASE("cuda launchers: launch_add equals the binary op") {
  DeviceContext* ctx = cuda_test_ctx();
  for (int64_t n : kSizes) {
    const Tensor a = random_tensor({n}, 19).to_device(ctx), b = random_tensor({n}, 20).to_device(ctx);
    Tensor y = Tensor::empty({n}, DType::f32, ctx);
    cuda::launch_add(DType::f32, a.raw_data(), b.raw_data(), y.raw_data(), n, test_stream());
    ctx->synchronize();
    check_equal(y, run_op_cuda(BinaryOp(BinaryKind::add), {a, b})[0], "launch_add n " + std::to_string(n));
  }
}

XF_CUDA_TEST_CASE("cuda launchers: fused bias + activation + dropout equals bias_add, activation, dropout") {
  DeviceContext* ctx = cuda_test_ctx();
  const uint64_t seed = 1234;
  const std::vector<Shape> shapes{{31, 33}, {64, 256}, {3, 8}, {1, 1}, {1000, 24}};
  for (ActivationKind kind : kKinds)
    for (const Shape& s : shapes)
      for (DType dt : cuda_float_dtypes())
        for (double p : {0.0, 0.3})
          for (uint64_t offset : {uint64_t{0}, uint64_t{3}, uint64_t{5}}) {
            const int64_t rows = s[0], C = s[1];
            const Tensor x = random_tensor(s, 21, -3, 3).to(dt), b = random_tensor({C}, 22, -1, 1).to(dt);
            const ActivationParams params;
            // unfused, on the GPU
            const Tensor h = run_op_cuda(BiasAddOp(), {x, b})[0];
            const Tensor a = run_op_cuda(ActivationOp(kind, params), {h})[0];
            const Tensor want = p > 0 ? run_op_cuda(DropoutOp(p), {a}, seed, offset)[0] : a;
            // fused
            const Tensor dx = x.to_device(ctx), db = b.to_device(ctx);
            Tensor y = Tensor::empty(s, dt, ctx), pre = Tensor::empty(s, dt, ctx);
            cuda::launch_bias_act_dropout(kind, params, dt, dx.raw_data(), db.raw_data(), y.raw_data(),
                                          pre.raw_data(), rows, C, p, cuda::PhiloxOffset{seed, offset, nullptr},
                                          test_stream());
            ctx->synchronize();
            const std::string what = std::string("fused ") + activation_name(kind) + " " + shape_str(s) + " [" +
                                     dtype_name(dt) + "] p " + std::to_string(p) + " offset " + std::to_string(offset);
            check_equal(pre, h, what + " pre-activation");  // one add, rounded once, in both
            // Same roundings in the same order: the mask exactly, the values within the dtype's tolerance
            // (equal unless the compiler contracts differently in the fused kernel).
            const auto got = y.to_doubles(), ref = want.to_doubles();
            size_t mask_bad = 0;
            for (size_t i = 0; i < got.size(); ++i) mask_bad += (got[i] == 0.0) != (ref[i] == 0.0);
            CHECK_MESSAGE(mask_bad == 0, what << ": " << mask_bad << " zero-pattern mismatches");
            const Tolerance tol = cuda_tolerance(dt);
            check_close(got, ref, tol.atol, tol.rtol, what);
            if (offset == 5 && p > 0) {  // the same start split as 2 on the device + 3 on the host
              const Tensor dev_off = Tensor::from_vector<int64_t>({2}, {1}).to_device(ctx);
              Tensor y2 = Tensor::empty(s, dt, ctx);
              cuda::launch_bias_act_dropout(kind, params, dt, dx.raw_data(), db.raw_data(), y2.raw_data(), nullptr,
                                            rows, C, p,
                                            cuda::PhiloxOffset{seed, 3, static_cast<const uint64_t*>(dev_off.raw_data())},
                                            test_stream());
              ctx->synchronize();
              check_equal(y2, y, what + " with a device offset");
            }
          }
}
#endif

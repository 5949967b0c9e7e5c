// CUDA matmul (cuBLASLt) against the CPU oracle: every dtype, every transpose combination, awkward sizes,
// batched A with a shared 2-D B (one GEMM over all rows) and with a batched B, k = 0. The GEMM launcher
// (ops/cuda/gemm.h): each epilogue against the CPU ops (matmul, then bias_add, then gelu(tanh); the GELU
// backward and column sums for the backward epilogues), f32 output from 16-bit inputs accumulated with
// beta = 1, a shared B that cannot fold (stride 0), operands one element off alignment with padded leading
// dimensions, and repeated calls (a cached plan) giving identical bits. Without XF_TEST_DEVICE=cuda and a
// GPU these report as skipped.
#include <array>
#include <cmath>

#include "ops/activation.h"
#include "ops/bias_add.h"
#include "ops/matmul.h"
#include "ops/reduce.h"
#include "tests/cuda_testing.h"

#ifdef XF_WITH_CUDA
#include "ops/cuda/gemm.h"
#include "runtime/cuda/context.h"
#endif

using namespace xfr;
using namespace xfr::testing;

namespace {

// (r, c), or (c, r) when transposed, after the batch axes.
Shape mat(int64_t r, int64_t c, bool t, Shape batch = {}) {
  batch.push_back(t ? c : r);
  batch.push_back(t ? r : c);
  return batch;
}

// f32 GEMMs sum k products in another order than OpenBLAS: the difference of two fp32 summations grows like
// k * 2^-24 times the terms (about 1e-5 at k = 1000 for inputs in [-1, 1)), past the f32 table's atol 1e-5
// for outputs near zero. 16-bit GEMMs: cuBLASLt may pick split-K and round the partial sums to the output
// dtype before adding them (seen on the H200, 2026-11-29: f16, m=257 n=1000 k=1000, trans_a: an error of
// one f16 ulp at the partials' magnitude, ~10, on an output of 0.36), so the same k scaling applies.
double k_scale(DType, int64_t k) { return std::max(1.0, static_cast<double>(k) / 128.0); }

}  // namespace

XF_CUDA_TEST_CASE("cuda: matmul 2-D at awkward sizes, every transpose combination and dtype") {
  // Each of 1, 31, 33, 257, 1000 appears as m, as n and as k.
  const std::vector<std::array<int64_t, 3>> sizes = {{1, 1, 1},     {1, 33, 257},   {31, 1, 33},    {33, 257, 1},
                                                     {257, 31, 1000}, {1000, 257, 33}, {31, 1000, 31}, {257, 1000, 1000},
                                                     {1000, 1, 1000}, {33, 31, 31}};
  for (const auto& [m, n, k] : sizes)
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (DType dt : cuda_float_dtypes()) {
          const Tensor A = random_tensor(mat(m, k, ta), 100 + m, -1, 1);
          const Tensor B = random_tensor(mat(k, n, tb), 200 + n, -1, 1);
          check_cuda_op(MatMulOp(ta, tb), {A, B}, dt,
                        str_cat("matmul m=", m, " n=", n, " k=", k, " ta=", ta, " tb=", tb), k_scale(dt, k));
        }
}

XF_CUDA_TEST_CASE("cuda: matmul with a batched A and a shared 2-D B (a linear layer: one GEMM)") {
  for (const Shape& batch : {Shape{1}, Shape{3}, Shape{7}, Shape{3, 7}})
    for (bool tb : {false, true})
      for (DType dt : cuda_float_dtypes()) {
        const int64_t m = 33, n = 31, k = 257;
        const Tensor A = random_tensor(mat(m, k, false, batch), 7, -1, 1);
        const Tensor B = random_tensor(mat(k, n, tb), 8, -1, 1);
        check_cuda_op(MatMulOp(false, tb), {A, B}, dt, str_cat("shared B batch ", shape_str(batch), " tb=", tb),
                      k_scale(dt, k));
      }
}

XF_CUDA_TEST_CASE("cuda: matmul with equal batch axes (strided batched), every transpose combination") {
  for (const Shape& batch : {Shape{1}, Shape{3}, Shape{7}, Shape{7, 3}})
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (DType dt : cuda_float_dtypes()) {
          const int64_t m = 31, n = 33, k = 257;
          const Tensor A = random_tensor(mat(m, k, ta, batch), 9, -1, 1);
          const Tensor B = random_tensor(mat(k, n, tb, batch), 10, -1, 1);
          check_cuda_op(MatMulOp(ta, tb), {A, B}, dt,
                        str_cat("batched ", shape_str(batch), " ta=", ta, " tb=", tb), k_scale(dt, k));
        }
  // The attention shapes: (B, H, S, D) x (B, H, S, D)^T, and a single row per batch.
  for (DType dt : cuda_float_dtypes()) {
    check_cuda_op(MatMulOp(false, true), {random_tensor({2, 3, 33, 64}, 1), random_tensor({2, 3, 31, 64}, 2)}, dt,
                  "q k^T");
    check_cuda_op(MatMulOp(false, false), {random_tensor({7, 1, 33}, 3), random_tensor({7, 33, 1}, 4)}, dt,
                  "one row per batch");
  }
}

XF_CUDA_TEST_CASE("cuda: matmul_add (the GEMM reads d as its C input) against the CPU, every transpose and dtype") {
  // 2-D, batched with a shared B, and batched B; check_cuda_op_both also runs every tensor one element off alignment.
  for (const auto& [m, n, k] : std::vector<std::array<int64_t, 3>>{{31, 33, 257}, {257, 1000, 31}, {1, 8, 16}})
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (DType dt : cuda_float_dtypes()) {
          const std::string w = str_cat("matmul_add m=", m, " n=", n, " k=", k, " ta=", ta, " tb=", tb);
          check_cuda_op_both(MatMulAddOp(ta, tb),
                             {random_tensor(mat(m, k, ta), 300 + m, -1, 1), random_tensor(mat(k, n, tb), 301, -1, 1),
                              random_tensor({m, n}, 302, -1, 1)},
                             dt, w, k_scale(dt, k));
          check_cuda_op(MatMulAddOp(ta, tb),
                        {random_tensor(mat(m, k, ta, {3}), 303, -1, 1), random_tensor(mat(k, n, tb, {3}), 304, -1, 1),
                         random_tensor({3, m, n}, 305, -1, 1)},
                        dt, w + " batched", k_scale(dt, k));
          if (!ta)
            check_cuda_op(MatMulAddOp(false, tb),
                          {random_tensor(mat(m, k, false, {2, 3}), 306, -1, 1), random_tensor(mat(k, n, tb), 307, -1, 1),
                           random_tensor({2, 3, m, n}, 308, -1, 1)},
                          dt, w + " shared B", k_scale(dt, k));
        }
}

XF_CUDA_TEST_CASE("cuda: matmul_add with k = 0 copies d") {
  for (DType dt : cuda_float_dtypes()) {
    const Tensor d = random_tensor({5, 7}, 9, -1, 1).to(dt);
    const auto got = run_op_cuda(MatMulAddOp(false, false), {Tensor::zeros({5, 0}, dt), Tensor::zeros({0, 7}, dt), d});
    CHECK(got[0].to_doubles() == d.to_doubles());
  }
}

XF_CUDA_TEST_CASE("cuda: matmul with k = 0 writes zeros") {
  for (DType dt : cuda_float_dtypes()) {
    const auto got = run_op_cuda(MatMulOp(false, false), {Tensor::zeros({5, 0}, dt), Tensor::zeros({0, 7}, dt)});
    CHECK(got[0].to_doubles() == std::vector<double>(35, 0.0));
  }
}

#ifdef XF_WITH_CUDA

namespace {

cuda::CudaContext& cuda_ctx() { return *static_cast<cuda::CudaContext*>(cuda_test_ctx()); }

// The values a 16-bit GEMM sees, as f32 for the CPU oracle.
Tensor rounded(const Tensor& host_f32, DType dt) { return host_f32.to(dt).to(DType::f32); }
Tensor on_device(const Tensor& host_f32, DType dt) { return host_f32.to(dt).to_device(cuda_test_ctx()); }

Tensor poisoned(const Shape& shape, DType dt) { return poisoned_device(shape, dt); }

Tensor cpu(const Op& op, const std::vector<Tensor>& in) { return run_op(op, in, &test_pool())[0]; }

void check_dev(const Tensor& got, const Tensor& expected_f32, DType dt, const std::string& what, double scale = 1.0) {
  cuda_test_ctx()->synchronize();
  const Tolerance tol = cuda_tolerance(dt);
  check_close(got.contiguous().to_doubles(), expected_f32.to_doubles(), tol.atol * scale, tol.rtol * scale,
              what + " [" + dtype_name(dt) + "]");
}

cuda::GemmArgs args_for(DType dt, bool ta, bool tb, int64_t m, int64_t n, int64_t k, const Tensor& A, const Tensor& B,
                        const Tensor& C) {
  cuda::GemmArgs g;
  g.dtype = dt;
  g.out_dtype = C.dtype();
  g.trans_a = ta;
  g.trans_b = tb;
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = A.raw_data();
  g.b = B.raw_data();
  g.c = C.raw_data();
  return g;
}

}  // namespace

XF_CUDA_TEST_CASE("cuda: gemm forward epilogues match matmul, bias_add and gelu(tanh) on the CPU") {
  // n = 40: the GELU pre-activation's leading dimension must be a multiple of 8 (cuBLASLt).
  const int64_t m = 33, n = 40, k = 31;
  for (DType dt : cuda_float_dtypes())
    for (auto [ta, tb] : {std::pair{false, false}, std::pair{false, true}, std::pair{true, false}}) {
      const std::string where = str_cat(" ta=", ta, " tb=", tb);
      const Tensor A = random_tensor(mat(m, k, ta), 1, -1, 1), B = random_tensor(mat(k, n, tb), 2, -1, 1);
      const Tensor bias = random_tensor({n}, 3, -1, 1);
      const Tensor dA = on_device(A, dt), dB = on_device(B, dt), dbias = on_device(bias, dt);
      const Tensor acc = cpu(MatMulOp(ta, tb), {rounded(A, dt), rounded(B, dt)});
      const Tensor pre = cpu(BiasAddOp(), {acc, rounded(bias, dt)});
      const ActivationOp gelu(ActivationKind::gelu_tanh);

      Tensor C = poisoned({m, n}, dt);
      cuda::GemmArgs g = args_for(dt, ta, tb, m, n, k, dA, dB, C);
      g.epilogue = cuda::GemmEpilogue::bias;
      g.bias = dbias.raw_data();
      cuda::gemm(cuda_ctx(), g);
      check_dev(C, pre, dt, "bias" + where);

      C = poisoned({m, n}, dt);
      g = args_for(dt, ta, tb, m, n, k, dA, dB, C);
      g.epilogue = cuda::GemmEpilogue::gelu_tanh;
      cuda::gemm(cuda_ctx(), g);
      check_dev(C, cpu(gelu, {acc}), dt, "gelu_tanh" + where);

      // With the pre-activation saved, in a buffer with a padded leading dimension (48).
      C = poisoned({m, n}, dt);
      Tensor aux = poisoned({m, 48}, dt);
      g = args_for(dt, ta, tb, m, n, k, dA, dB, C);
      g.epilogue = cuda::GemmEpilogue::gelu_tanh;
      g.aux = aux.raw_data();
      g.aux_ld = 48;
      cuda::gemm(cuda_ctx(), g);
      check_dev(C, cpu(gelu, {acc}), dt, "gelu_tanh with aux" + where);
      check_dev(aux.slice(1, 0, n), acc, dt, "gelu_tanh's aux" + where);

      C = poisoned({m, n}, dt);
      aux = poisoned({m, n}, dt);
      g = args_for(dt, ta, tb, m, n, k, dA, dB, C);
      g.epilogue = cuda::GemmEpilogue::bias_gelu_tanh;
      g.bias = dbias.raw_data();
      g.aux = aux.raw_data();
      cuda::gemm(cuda_ctx(), g);
      check_dev(C, cpu(gelu, {pre}), dt, "bias_gelu_tanh" + where);
      check_dev(aux, pre, dt, "bias_gelu_tanh's aux" + where);

      C = poisoned({m, n}, dt);
      g = args_for(dt, ta, tb, m, n, k, dA, dB, C);
      g.epilogue = cuda::GemmEpilogue::bias_gelu_tanh;
      g.bias = dbias.raw_data();
      cuda::gemm(cuda_ctx(), g);
      check_dev(C, cpu(gelu, {pre}), dt, "bias_gelu_tanh without aux" + where);
    }
}

XF_CUDA_TEST_CASE("cuda: gemm backward epilogues (dgelu, dgelu_bgrad, bgrad_a, bgrad_b) match the CPU ops") {
  const int64_t m = 33, n = 40, k = 31;
  // 16-bit bias gradients sum m outputs that cuBLASLt may round to the output dtype first: a random walk of
  // m roundings of 2^-9 (bf16) relative, a few times one rounding for sums near zero.
  // f32: the sum of m terms of magnitude ~ sqrt(k) cancels to ~0.1; two fp32 summation orders differ by
  // ~m * 2^-24 * |terms| = 2e-5 there (seen on the H200: 2.2e-5), past atol 1e-5.
  const auto bgrad_scale = [](DType dt) { return dt == DType::f32 ? 4.0 : 2.0; };
  for (DType dt : cuda_float_dtypes()) {
    // dH = dZ W^T through the GELU: A = dZ (m, k), B = W stored (n, k) (trans_b), or (k, n).
    for (bool tb : {true, false}) {
      const std::string where = str_cat(" tb=", tb);
      const Tensor A = random_tensor({m, k}, 4, -1, 1), B = random_tensor(mat(k, n, tb), 5, -1, 1);
      const Tensor pre = random_tensor({m, n}, 6, -3, 3);
      const Tensor dA = on_device(A, dt), dB = on_device(B, dt), dpre = on_device(pre, dt);
      const Tensor acc = cpu(MatMulOp(false, tb), {rounded(A, dt), rounded(B, dt)});
      const Tensor dh = cpu(ActivationBackwardOp(ActivationKind::gelu_tanh), {rounded(pre, dt), acc});

      Tensor C = poisoned({m, n}, dt);
      cuda::GemmArgs g = args_for(dt, false, tb, m, n, k, dA, dB, C);
      g.epilogue = cuda::GemmEpilogue::dgelu;
      g.aux = dpre.raw_data();
      cuda::gemm(cuda_ctx(), g);
      check_dev(C, dh, dt, "dgelu" + where);

      C = poisoned({m, n}, dt);
      Tensor db = poisoned({n}, dt);
      g = args_for(dt, false, tb, m, n, k, dA, dB, C);
      g.epilogue = cuda::GemmEpilogue::dgelu_bgrad;
      g.aux = dpre.raw_data();
      g.bias = db.raw_data();
      cuda::gemm(cuda_ctx(), g);
      check_dev(C, dh, dt, "dgelu_bgrad" + where);
      check_dev(db, cpu(ReduceOp(ReduceKind::sum, {0}, false), {dh}), dt, "dgelu_bgrad's bias gradient" + where,
                bgrad_scale(dt));
    }
    // The weight-gradient layout, dW = X^T dY (trans_a): bgrad_b sums dY's rows (the bias gradient next to
    // dW); with the operands the other way round, dW^T = dY^T X, bgrad_a does.
    {
      const Tensor X = random_tensor({k, m}, 7, -1, 1), dY = random_tensor({k, n}, 8, -1, 1);
      const Tensor dX = on_device(X, dt), ddY = on_device(dY, dt);
      Tensor C = poisoned({m, n}, dt), db = poisoned({n}, dt);
      cuda::GemmArgs g = args_for(dt, true, false, m, n, k, dX, ddY, C);
      g.epilogue = cuda::GemmEpilogue::bgrad_b;
      g.bias = db.raw_data();
      cuda::gemm(cuda_ctx(), g);
      check_dev(C, cpu(MatMulOp(true, false), {rounded(X, dt), rounded(dY, dt)}), dt, "bgrad_b's product");
      check_dev(db, cpu(ReduceOp(ReduceKind::sum, {0}, false), {rounded(dY, dt)}), dt, "bgrad_b");

      Tensor Ct = poisoned({n, m}, dt), da = poisoned({n}, dt);
      g = args_for(dt, true, false, n, m, k, ddY, dX, Ct);
      g.epilogue = cuda::GemmEpilogue::bgrad_a;
      g.bias = da.raw_data();
      cuda::gemm(cuda_ctx(), g);
      check_dev(Ct, cpu(MatMulOp(true, false), {rounded(dY, dt), rounded(X, dt)}), dt, "bgrad_a's product");
      check_dev(da, cpu(ReduceOp(ReduceKind::sum, {0}, false), {rounded(dY, dt)}), dt, "bgrad_a");
    }
  }
}

// A GEMM of at least 1e10 FLOPs is tuned over cuBLASLt's configurations beyond its heuristic's candidates (tiles,
// clusters, custom options: ops/cuda/matmul.cu, "the configuration search"): whichever wins, the bias, bias + GELU + aux
// and dgelu epilogues and the weight-gradient layout with an f32 output give the CPU's results. Awkward sizes:
// 2053 x 2312 x 1064 (1.01e10 FLOPs).
XF_CUDA_TEST_CASE("cuda: gemm tuned over the searched configurations (1e10 FLOPs and more) matches the CPU") {
  const int64_t m = 2053, n = 2312, k = 1064;
  const ActivationOp gelu(ActivationKind::gelu_tanh);
  for (DType dt : {DType::bf16, DType::f16}) {
    const Tensor A = random_tensor({m, k}, 11, -1, 1), W = random_tensor({n, k}, 12, -1, 1);
    const Tensor bias = random_tensor({n}, 13, -1, 1), pre_in = random_tensor({m, n}, 14, -3, 3);
    const Tensor dA = on_device(A, dt), dW = on_device(W, dt), dbias = on_device(bias, dt), dpre = on_device(pre_in, dt);
    const Tensor acc = cpu(MatMulOp(false, true), {rounded(A, dt), rounded(W, dt)});
    const Tensor pre = cpu(BiasAddOp(), {acc, rounded(bias, dt)});
    const double scale = k_scale(dt, k);

    Tensor C = poisoned({m, n}, dt);
    cuda::GemmArgs g = args_for(dt, false, true, m, n, k, dA, dW, C);
    g.epilogue = cuda::GemmEpilogue::bias;
    g.bias = dbias.raw_data();
    cuda::gemm(cuda_ctx(), g);
    check_dev(C, pre, dt, "bias", scale);

    C = poisoned({m, n}, dt);
    Tensor aux = poisoned({m, n}, dt);
    g = args_for(dt, false, true, m, n, k, dA, dW, C);
    g.epilogue = cuda::GemmEpilogue::bias_gelu_tanh;
    g.bias = dbias.raw_data();
    g.aux = aux.raw_data();
    cuda::gemm(cuda_ctx(), g);
    check_dev(C, cpu(gelu, {pre}), dt, "bias_gelu_tanh", scale);
    check_dev(aux, pre, dt, "bias_gelu_tanh's aux", scale);

    // dgelu: (A W) * gelu'(pre_in), W read as (k, n) here: the first n x k elements of W's buffer, (k, n) row-major.
    const Tensor Wkn = random_tensor({k, n}, 15, -1, 1), dWkn = on_device(Wkn, dt);
    C = poisoned({m, n}, dt);
    g = args_for(dt, false, false, m, n, k, dA, dWkn, C);
    g.epilogue = cuda::GemmEpilogue::dgelu;
    g.aux = dpre.raw_data();
    cuda::gemm(cuda_ctx(), g);
    const Tensor acc2 = cpu(MatMulOp(false, false), {rounded(A, dt), rounded(Wkn, dt)});
    check_dev(C, cpu(ActivationBackwardOp(ActivationKind::gelu_tanh), {rounded(pre_in, dt), acc2}), dt, "dgelu", scale);

    // A weight gradient's layout and output: dW (n, k) = G^T X in f32, G (m, n), X (m, k).
    const Tensor G = random_tensor({m, n}, 16, -1, 1), dG = on_device(G, dt);
    Tensor D = poisoned({n, k}, DType::f32);
    g = args_for(dt, true, false, n, k, m, dG, dA, D);
    cuda::gemm(cuda_ctx(), g);
    check_dev(D, cpu(MatMulOp(true, false), {rounded(G, dt), rounded(A, dt)}), DType::f32, "weight gradient (f32)",
              k_scale(DType::f32, m));
  }
}

XF_CUDA_TEST_CASE("cuda: gemm with f32 output from 16-bit inputs accumulates into C (beta = 1)") {
  const int64_t m = 257, n = 33, k = 1000;
  for (DType dt : {DType::bf16, DType::f16}) {
    const Tensor A = random_tensor({k, m}, 9, -1, 1), B = random_tensor({k, n}, 10, -1, 1);
    const Tensor C0 = random_tensor({m, n}, 11, -1, 1);
    const Tensor dA = on_device(A, dt), dB = on_device(B, dt);
    Tensor C = C0.to_device(cuda_test_ctx());
    cuda::GemmArgs g = args_for(dt, true, false, m, n, k, dA, dB, C);
    g.beta = 1.0f;
    cuda::gemm(cuda_ctx(), g);
    const Tensor prod = cpu(MatMulOp(true, false), {rounded(A, dt), rounded(B, dt)});
    std::vector<double> expected = prod.to_doubles();
    const std::vector<double> c0 = C0.to_doubles();
    for (size_t i = 0; i < expected.size(); ++i) expected[i] += c0[i];
    cuda_test_ctx()->synchronize();
    const Tolerance tol = cuda_tolerance(DType::f32);
    // The products of 16-bit values are exact in fp32; only the summation order differs (k_scale's reason).
    const double s = k_scale(DType::f32, k);
    check_close(C.to_doubles(), expected, tol.atol * s, tol.rtol * s, str_cat("f32 += ", dtype_name(dt), " GEMM"));
  }
}

XF_CUDA_TEST_CASE("cuda: gemm with a separate C input (c_in, beta = 1) reads it and leaves it unchanged") {
  const int64_t m = 257, n = 40, k = 33;
  for (DType dt : cuda_float_dtypes()) {
    const Tensor A = random_tensor({m, k}, 12, -1, 1), B = random_tensor({k, n}, 13, -1, 1);
    const Tensor C0 = random_tensor({m, n}, 14, -1, 1);
    const Tensor dA = on_device(A, dt), dB = on_device(B, dt), dC0 = on_device(C0, dt);
    Tensor D = poisoned({m, n}, dt);
    cuda::GemmArgs g = args_for(dt, false, false, m, n, k, dA, dB, D);
    g.c_in = dC0.raw_data();
    g.beta = 1.0f;
    cuda::gemm(cuda_ctx(), g);
    std::vector<double> expected = cpu(MatMulOp(false, false), {rounded(A, dt), rounded(B, dt)}).to_doubles();
    const std::vector<double> c0 = rounded(C0, dt).to_doubles();
    for (size_t i = 0; i < expected.size(); ++i) expected[i] += c0[i];
    check_dev(D, Tensor::from_vector(std::vector<float>(expected.begin(), expected.end()), {m, n}), dt, "D = AB + C_in");
    CHECK(dC0.to_doubles() == rounded(C0, dt).to_doubles());  // C_in untouched
  }
}

XF_CUDA_TEST_CASE("cuda: gemm with a shared B that cannot fold (trans_a, stride 0) and batched bias") {
  const int64_t batch = 3, m = 31, n = 33, k = 17;
  for (DType dt : cuda_float_dtypes()) {
    const Tensor A = random_tensor({batch, k, m}, 12, -1, 1), B = random_tensor({k, n}, 13, -1, 1);
    const Tensor bias = random_tensor({n}, 14, -1, 1);
    const Tensor dA = on_device(A, dt), dB = on_device(B, dt), dbias = on_device(bias, dt);
    Tensor C = poisoned({batch, m, n}, dt);
    cuda::GemmArgs g = args_for(dt, true, false, m, n, k, dA, dB, C);
    g.batch = batch;
    g.stride_a = k * m;
    g.stride_b = 0;
    g.stride_c = m * n;
    g.epilogue = cuda::GemmEpilogue::bias;
    g.bias = dbias.raw_data();
    cuda::gemm(cuda_ctx(), g);
    const Tensor Ar = rounded(A, dt), Br = rounded(B, dt);
    std::vector<double> expected;
    for (int64_t z = 0; z < batch; ++z) {
      const Tensor prod = cpu(MatMulOp(true, false), {Ar.slice(0, z, z + 1).contiguous().view({k, m}), Br});
      const auto v = cpu(BiasAddOp(), {prod, rounded(bias, dt)}).to_doubles();
      expected.insert(expected.end(), v.begin(), v.end());
    }
    cuda_test_ctx()->synchronize();
    const Tolerance tol = cuda_tolerance(dt);
    check_close(C.to_doubles(), expected, tol.atol, tol.rtol, str_cat("stride-0 B [", dtype_name(dt), "]"));
  }
}

XF_CUDA_TEST_CASE("cuda: gemm on operands one element off alignment with padded leading dimensions") {
  const int64_t m = 31, n = 33, k = 257;
  for (DType dt : cuda_float_dtypes()) {
    // A: (m, k) inside rows of k + 1, starting one element into its buffer; C: (m, n) inside rows of n + 3.
    const Tensor flatA = random_tensor({1 + m * (k + 1)}, 15, -1, 1), B = random_tensor({k, n}, 16, -1, 1);
    const Tensor dflat = on_device(flatA, dt), dB = on_device(B, dt);
    Tensor C = poisoned({m, n + 3}, dt);
    cuda::GemmArgs g = args_for(dt, false, false, m, n, k, dflat, dB, C);
    g.a = static_cast<const char*>(dflat.raw_data()) + dtype_size(dt);
    g.lda = k + 1;
    g.ldc = n + 3;
    cuda::gemm(cuda_ctx(), g);
    const Tensor A = rounded(flatA, dt).slice(0, 1, 1 + m * (k + 1)).contiguous().view({m, k + 1}).slice(1, 0, k);
    check_dev(C.slice(1, 0, n), cpu(MatMulOp(false, false), {A.contiguous(), rounded(B, dt)}), dt,
              "misaligned A, padded lda/ldc", k_scale(dt, k));
    // Columns past n in C are not written.
    cuda_test_ctx()->synchronize();
    for (double v : C.slice(1, n, n + 3).contiguous().to_doubles()) CHECK(std::isnan(v));
  }
}

// n off 16 bytes with 16-byte rows (ldc padded): gemm() runs the aligned columns and the tail as two GEMMs
// (ops/cuda/matmul.cu, kSplitMinColumns). Every layout of B, with a bias and with bias + GELU saving its
// pre-activation, against the CPU; C's padding columns are left unwritten.
XF_CUDA_TEST_CASE("cuda: gemm with unaligned n and padded rows (aligned head + tail GEMMs) matches the CPU") {
  const int64_t m = 65, k = 40;  // k = 40: B^T's rows (k elements) are 16-byte multiples, as the split needs
  for (DType dt : cuda_float_dtypes()) {
    const int64_t per16 = 16 / static_cast<int64_t>(dtype_size(dt));
    const int64_t n = 300 + 1, ldc = (n + per16 - 1) / per16 * per16;  // 301 columns: a tail of 5 (bf16/f16) or 1 (f32)
    for (bool tb : {false, true}) {
      const std::string where = str_cat(" tb=", tb);
      // B (k, n) needs a 16-byte row too (ldb = ldc), B^T (n, k) has rows of k.
      const int64_t ldb = tb ? k : ldc;
      const Tensor B = random_tensor(tb ? Shape{n, k} : Shape{k, ldb}, 12, -1, 1);
      const Tensor Bv = tb ? B : B.slice(1, 0, n).contiguous();
      const Tensor A = random_tensor({m, k}, 11, -1, 1), bias = random_tensor({n}, 13, -1, 1);
      const Tensor dA = on_device(A, dt), dB = on_device(B, dt), dbias = on_device(bias, dt);
      const Tensor acc = cpu(MatMulOp(false, tb), {rounded(A, dt), rounded(Bv, dt)});
      const Tensor pre = cpu(BiasAddOp(), {acc, rounded(bias, dt)});
      for (auto ep : {cuda::GemmEpilogue::none, cuda::GemmEpilogue::bias, cuda::GemmEpilogue::bias_gelu_tanh}) {
        Tensor C = poisoned({m, ldc}, dt), aux = poisoned({m, ldc}, dt);
        cuda::GemmArgs g = args_for(dt, false, tb, m, n, k, dA, dB, C);
        g.ldb = ldb;
        g.ldc = ldc;
        g.epilogue = ep;
        if (ep != cuda::GemmEpilogue::none) g.bias = dbias.raw_data();
        if (ep == cuda::GemmEpilogue::bias_gelu_tanh) g.aux = aux.raw_data();
        cuda::gemm(cuda_ctx(), g);
        const std::string what = std::string("split gemm ") + cuda::gemm_epilogue_name(ep) + where;
        const Tensor expect = ep == cuda::GemmEpilogue::none ? acc
                              : ep == cuda::GemmEpilogue::bias ? pre
                                                               : cpu(ActivationOp(ActivationKind::gelu_tanh), {pre});
        check_dev(C.slice(1, 0, n), expect, dt, what);
        if (ep == cuda::GemmEpilogue::bias_gelu_tanh) check_dev(aux.slice(1, 0, n), pre, dt, what + " aux");
        cuda_test_ctx()->synchronize();
        if (ldc > n)
          for (double v : C.slice(1, n, ldc).contiguous().to_doubles()) CHECK(std::isnan(v));
      }
    }
  }
}

XF_CUDA_TEST_CASE("cuda: gemm is deterministic: a repeated call (a cached plan) gives identical bits") {
  const int64_t m = 257, n = 257, k = 1000;
  for (DType dt : cuda_float_dtypes()) {
    const Tensor dA = on_device(random_tensor({m, k}, 17, -1, 1), dt), dB = on_device(random_tensor({k, n}, 18, -1, 1), dt);
    Tensor C1 = poisoned({m, n}, dt), C2 = poisoned({m, n}, dt);
    cuda::gemm(cuda_ctx(), args_for(dt, false, false, m, n, k, dA, dB, C1));
    cuda::gemm(cuda_ctx(), args_for(dt, false, false, m, n, k, dA, dB, C2));
    cuda_test_ctx()->synchronize();
    CHECK(C1.to_doubles() == C2.to_doubles());
  }
}

#endif  // XF_WITH_CUDA


// A device executor writes a graph output that no node reads, whose rows are not a multiple of 16 bytes,
// with padded rows (MatMulOp::writes_padded_rows), as torch.compile pads the encoder's logits: the output is
// a strided view with 16-byte rows, its values the CPU's, and to_host() packs it. A value another node reads
// stays packed.
XF_CUDA_TEST_CASE("cuda executor: an unread matmul output with unaligned rows is a row-padded view") {
  for (DType dt : {DType::bf16, DType::f32}) {
    CAPTURE(dtype_name(dt));
    const int64_t B = 3, T = 5, K = 33, N = 37;  // 37 columns: 74 (bf16) or 148 (f32) bytes a row
    Graph g;
    Value x = g.input("x", TensorMeta{{B, T, K}, dt});
    Value w = g.input("w", TensorMeta{{N, K}, dt});
    Value y = matmul(x, w, false, true, "logits");   // (B, T, N): an output nobody reads
    Value y2 = matmul(x, w, false, true, "hidden");  // read by the sum below: stays packed
    Value s = reduce_sum(y2, {-1}, false, "sum");
    const Tensor xs = random_tensor({B, T, K}, 41, -1, 1).to(dt), ws = random_tensor({N, K}, 42, -1, 1).to(dt);
    ExecutorOptions opt;
    opt.device = Device::cuda(0);
    opt.device_ctx = make_device_context(opt.device);
    Executor ex(g, {y, y2, s}, Gradients{}, std::make_shared<ParamStore>(g, opt.device_ctx.get()), opt);
    ex.bind(x, xs);
    ex.bind(w, ws);
    ex.run();
    const Tensor got = ex.get(y);
    const int64_t padded = 40;  // 37 rounded up to a multiple of 8 bf16 or 4 f32 elements (16 bytes)
    REQUIRE(got.shape() == Shape{B, T, N});
    CHECK_FALSE(got.is_contiguous());
    CHECK(got.strides()[1] == padded);
    CHECK(ex.get(y2).is_contiguous());
    const Tensor ref = run_op(MatMulOp(false, true), {xs.to(DType::f32), ws.to(DType::f32)})[0];
    check_close(got.to_host(), ref.to_doubles(), "padded logits vs the CPU");
    check_close(ex.get(y2).to_host(), ref.to_doubles(), "packed twin vs the CPU");
  }
}

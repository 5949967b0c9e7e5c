// matmul against a float64 triple loop, every transpose combination, batched and shared B; gradients.
#include "ops/matmul.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

std::vector<double> ref_matmul(const Tensor& A, const Tensor& B, bool ta, bool tb) {
  const auto a = A.to_doubles(), b = B.to_doubles();
  MatMulOp op(ta, tb);
  const auto d = matmul_dims(op, A.shape(), B.shape());
  std::vector<double> c(static_cast<size_t>(d.batch * d.m * d.n), 0.0);
  for (int64_t z = 0; z < d.batch; ++z)
    for (int64_t i = 0; i < d.m; ++i)
      for (int64_t j = 0; j < d.n; ++j) {
        double s = 0;
        for (int64_t k = 0; k < d.k; ++k) {
          const double av = ta ? a[z * d.m * d.k + k * d.m + i] : a[z * d.m * d.k + i * d.k + k];
          const int64_t bz = d.shared_b ? 0 : z * d.k * d.n;
          const double bv = tb ? b[bz + j * d.k + k] : b[bz + k * d.n + j];
          s += av * bv;
        }
        c[z * d.m * d.n + i * d.n + j] = s;
      }
  return c;
}

Shape mat(int64_t r, int64_t c, bool t, Shape batch = {}) {
  batch.push_back(t ? c : r);
  batch.push_back(t ? r : c);
  return batch;
}

}  // namespace

TEST_CASE("matmul: against float64 at awkward sizes, all transposes, batched and shared B") {
  const std::vector<std::array<int64_t, 3>> sizes = {{1, 1, 1}, {31, 33, 17}, {33, 1, 257}, {64, 48, 31}};
  for (auto [m, n, k] : sizes)
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (DType dt : {DType::f32, DType::f64}) {
          const Tensor A = random_tensor(mat(m, k, ta), 11, -1, 1, dt);
          const Tensor B = random_tensor(mat(k, n, tb), 12, -1, 1, dt);
          check_close(run_op(MatMulOp(ta, tb), {A, B})[0], ref_matmul(A, B, ta, tb), "matmul 2d");
          const Tensor Ab = random_tensor(mat(m, k, ta, {3, 2}), 13, -1, 1, dt);
          const Tensor Bb = random_tensor(mat(k, n, tb, {3, 2}), 14, -1, 1, dt);
          check_close(run_op(MatMulOp(ta, tb), {Ab, Bb})[0], ref_matmul(Ab, Bb, ta, tb), "matmul batched");
          if (!ta) check_close(run_op(MatMulOp(false, tb), {Ab, B})[0], ref_matmul(Ab, B, false, tb), "matmul shared B");
        }
}

TEST_CASE("matmul: gradients by finite differences (float64)") {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      check_gradients([ta, tb](Graph&, const std::vector<Value>& in) { return matmul(in[0], in[1], ta, tb); },
                      {random_tensor(mat(3, 5, ta, {2}), 1, -1, 1, DType::f64),
                       random_tensor(mat(5, 4, tb, {2}), 2, -1, 1, DType::f64)},
                      "batched matmul");
      if (!ta)
        check_gradients([tb](Graph&, const std::vector<Value>& in) { return matmul(in[0], in[1], false, tb); },
                        {random_tensor(mat(3, 5, false, {2}), 3, -1, 1, DType::f64),
                         random_tensor(mat(5, 4, tb), 4, -1, 1, DType::f64)},
                        "linear (shared B)");
    }
  check_gradients([](Graph&, const std::vector<Value>& in) { return reshape(in[0], {3, -1}); },
                  {random_tensor({2, 3, 2}, 5, -1, 1, DType::f64)}, "reshape");
}

TEST_CASE("matmul: errors name the op and the shapes") {
  try {
    run_op(MatMulOp(false, false), {Tensor::zeros({3, 4}), Tensor::zeros({5, 6})});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "matmul");
    CHECK(std::string(e.what()).find("(3, 4)") != std::string::npos);
  }
  CHECK_THROWS_AS(run_op(MatMulOp(false, false), {Tensor::zeros({4}), Tensor::zeros({4, 2})}), Error);
  CHECK_THROWS_AS(run_op(ReshapeOp({7, -1}), {Tensor::zeros({3, 4})}), Error);
}

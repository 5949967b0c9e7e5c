// matmul against a float64 triple loop, every transpose combination, batched and shared B; gradients.
#include "ops/elementwise.h"
#include "ops/grad.h"
#include "ops/matmul.h"
#include "ops/reduce.h"
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

TEST_CASE("matmul_add: the CPU kernel equals matmul then add exactly; d's shape is checked") {
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (DType dt : {DType::f32, DType::f64}) {
        const Tensor A = random_tensor(mat(31, 17, ta, {2}), 21, -1, 1, dt), B = random_tensor(mat(17, 33, tb, {2}), 22, -1, 1, dt);
        const Tensor D = random_tensor({2, 31, 33}, 23, -1, 1, dt);
        const Tensor P = run_op(MatMulOp(ta, tb), {A, B})[0];
        CHECK(run_op(MatMulAddOp(ta, tb), {A, B, D})[0].to_doubles() == run_op(BinaryOp(BinaryKind::add), {P, D})[0].to_doubles());
      }
  CHECK_THROWS_AS(run_op(MatMulAddOp(false, false), {Tensor::zeros({3, 4}), Tensor::zeros({4, 5}), Tensor::zeros({3, 4})}),
                  Error);
}

TEST_CASE("matmul_add: gradients by finite differences (float64)") {
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      check_gradients(
          [ta, tb](Graph&, const std::vector<Value>& in) { return matmul_add(in[0], in[1], in[2], ta, tb); },
          {random_tensor(mat(3, 5, ta, {2}), 1, -1, 1, DType::f64), random_tensor(mat(5, 4, tb, {2}), 2, -1, 1, DType::f64),
           random_tensor({2, 3, 4}, 3, -1, 1, DType::f64)},
          "matmul_add");
}

TEST_CASE("autodiff: a gradient sum with a matmul contribution is one matmul_add, not an add") {
  // x feeds three matmuls (as a layer's q, k and v projections): dx has three contributions, each a matmul product
  // (dy_i w_i^T). The sum folds them into matmul_add nodes (the GEMM accumulates), and the gradients are unchanged.
  const auto build = [](Graph&, const std::vector<Value>& in) {
    const Value q = matmul(in[0], in[1], false, true), k = matmul(in[0], in[2], false, true),
                v = matmul(in[0], in[3], false, true);
    return add(add(mul(q, k), v), q);
  };
  const std::vector<Tensor> in{random_tensor({2, 3, 5}, 1, -1, 1, DType::f64), random_tensor({4, 5}, 2, -1, 1, DType::f64),
                               random_tensor({4, 5}, 3, -1, 1, DType::f64), random_tensor({4, 5}, 4, -1, 1, DType::f64)};
  check_gradients(build, in, "three projections of x");
  Graph g;
  const std::vector<Value> vin = graph_inputs(g, in, true);
  const Value out = reduce_sum(build(g, vin), {0, 1, 2}, false);
  const int forward_nodes = g.num_nodes();
  const Gradients grads = gradients(out);
  int matmul_adds = 0, sums_of_x = 0;
  for (int n = forward_nodes; n < g.num_nodes(); ++n) {
    const Node& node = g.node(n);
    matmul_adds += node.op->name() == "matmul_add";
    sums_of_x += node.op->name() == "binary" && node.outputs[0] == grads.get(vin[0]).id;
  }
  CHECK(matmul_adds >= 2);  // dx's second and third contributions
  CHECK(sums_of_x == 0);
  const int dx_producer = g.value(grads.get(vin[0]).id).producer;
  CHECK(g.node(dx_producer).op->name() == "matmul_add");
}

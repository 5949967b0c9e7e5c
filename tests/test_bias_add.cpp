// bias_add against float64 at awkward sizes, on a pool, gradients (dx and the column sums db) and errors.
#include "ops/bias_add.h"
#include "runtime/cpu/threadpool.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

TEST_CASE("bias_add: against float64 at awkward sizes") {
  ThreadPool pool(3);
  const std::vector<Shape> shapes = {{1}, {257}, {31, 33}, {33, 1}, {2, 3, 257}, {16, 128, 1024}, {4000, 31}};
  for (const Shape& s : shapes)
    for (DType dt : {DType::f32, DType::f64}) {
      const Tensor x = random_tensor(s, 1, -1, 1, dt), b = random_tensor({s.back()}, 2, -1, 1, dt);
      const Tensor y = run_op(BiasAddOp(), {x, b}, &pool)[0];
      REQUIRE(y.shape() == s);
      const auto xv = x.to_doubles(), bv = b.to_doubles();
      std::vector<double> ref(xv.size());
      for (size_t i = 0; i < xv.size(); ++i) ref[i] = xv[i] + bv[i % bv.size()];
      check_close(y, ref, "bias_add " + x.desc());
    }
}

TEST_CASE("bias_add: gradients by finite differences (float64)") {
  for (const Shape& s : std::vector<Shape>{{3, 4, 5}, {5}, {7, 1}, {2, 31}}) {
    check_gradients([](Graph&, const std::vector<Value>& in) { return bias_add(in[0], in[1]); },
                    {random_tensor(s, 3, -1, 1, DType::f64), random_tensor({s.back()}, 4, -1, 1, DType::f64)},
                    "bias_add " + shape_str(s));
  }
}

TEST_CASE("bias_add: the bias gradient is the column sum of dy, also at (16*128, 1024)") {
  Graph g;
  Value x = g.input("x", TensorMeta{{16, 128, 1024}, DType::f32}, true);
  Value b = g.input("b", TensorMeta{{1024}, DType::f32}, true);
  Value w = g.input("w", TensorMeta{{16, 128, 1024}, DType::f32});
  Value y = bias_add(x, b);
  Gradients grads = gradients(y, w);
  Value db = grads.get(b), dx = grads.get(x);
  REQUIRE(db.defined());
  REQUIRE(db.shape() == Shape{1024});
  ThreadPool pool(2);
  ExecutorOptions opt;
  opt.pool = &pool;
  Executor ex(g, {db, dx}, grads, std::make_shared<ParamStore>(g), opt);
  const Tensor wt = random_tensor({16, 128, 1024}, 9);
  ex.bind(x, random_tensor({16, 128, 1024}, 7));
  ex.bind(b, random_tensor({1024}, 8));
  ex.bind(w, wt);
  ex.run();
  const auto wv = wt.to_doubles();
  std::vector<double> ref(1024, 0.0);
  for (size_t i = 0; i < wv.size(); ++i) ref[i % 1024] += wv[i];
  check_close(ex.get(db), ref, "db = column sums of dy");
  check_close(ex.get(dx), wv, "dx = dy");
}

TEST_CASE("bias_add: bad shapes and dtypes throw an xfr::Error naming the op and the shapes") {
  try {
    run_op(BiasAddOp(), {Tensor::zeros({3, 4}), Tensor::zeros({3})});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "bias_add");
    CHECK(std::string(e.what()).find("(3, 4)") != std::string::npos);
    CHECK(std::string(e.what()).find("(3,)") != std::string::npos);
  }
  CHECK_THROWS_AS(run_op(BiasAddOp(), {Tensor::zeros({3, 4}), Tensor::zeros({1, 4})}), Error);
  CHECK_THROWS_AS(run_op(BiasAddOp(), {Tensor::zeros({3, 4}), Tensor::zeros({4}, DType::f64)}), Error);
  CHECK_THROWS_AS(run_op(BiasAddOp(), {Tensor::zeros({}), Tensor::zeros({1})}), Error);
}

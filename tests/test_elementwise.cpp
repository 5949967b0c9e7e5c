// Elementwise ops against float64 references, broadcasting, gradients and errors.
#include "ops/elementwise.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

// Reference broadcasting binary op in double.
std::vector<double> ref_binary(const std::vector<double>& a, const Shape& sa, const std::vector<double>& b,
                               const Shape& sb, const Shape& so, BinaryKind k) {
  std::vector<double> out(static_cast<size_t>(numel_of(so)));
  for (size_t i = 0; i < out.size(); ++i) {
    // unravel i over so, then ravel onto sa/sb with broadcasting
    int64_t rem = static_cast<int64_t>(i), ia = 0, ib = 0, ma = 1, mb = 1;
    for (size_t d = so.size(); d-- > 0;) {
      const int64_t idx = rem % so[d];
      rem /= so[d];
      const size_t da = d + sa.size() - so.size(), db = d + sb.size() - so.size();
      if (d >= so.size() - sa.size()) {
        ia += (sa[da] == 1 ? 0 : idx) * ma;
        ma *= sa[da];
      }
      if (d >= so.size() - sb.size()) {
        ib += (sb[db] == 1 ? 0 : idx) * mb;
        mb *= sb[db];
      }
    }
    const double x = a[static_cast<size_t>(ia)], y = b[static_cast<size_t>(ib)];
    out[i] = k == BinaryKind::add ? x + y : k == BinaryKind::sub ? x - y : k == BinaryKind::mul ? x * y : x / y;
  }
  return out;
}

}  // namespace

TEST_CASE("elementwise: binary ops with broadcasting against float64") {
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{1}, {1}}, {{31}, {31}}, {{33, 31}, {31}}, {{257}, {1}}, {{3, 1, 33}, {5, 1}}, {{2, 3, 4}, {2, 1, 4}}, {{7, 1}, {1, 9}}};
  for (BinaryKind k : {BinaryKind::add, BinaryKind::sub, BinaryKind::mul, BinaryKind::div}) {
    for (const auto& [sa, sb] : cases) {
      for (DType dt : {DType::f32, DType::f64}) {
        const Tensor a = random_tensor(sa, 1, -2, 2, dt);
        const Tensor b = random_tensor(sb, 2, 0.5, 2, dt);  // away from 0 for div
        const Tensor y = run_op(BinaryOp(k), {a, b})[0];
        const Shape so = broadcast_shapes(sa, sb, "test");
        REQUIRE(y.shape() == so);
        check_close(y, ref_binary(a.to_doubles(), sa, b.to_doubles(), sb, so, k),
                    "binary " + BinaryOp(k).attrs() + " " + shape_str(sa) + " " + shape_str(sb));
      }
    }
  }
}

TEST_CASE("elementwise: gradients of binary ops by finite differences (float64)") {
  for (BinaryKind k : {BinaryKind::add, BinaryKind::sub, BinaryKind::mul, BinaryKind::div}) {
    const Tensor a = random_tensor({3, 1, 5}, 3, -2, 2, DType::f64);
    const Tensor b = random_tensor({4, 1}, 4, 0.5, 2, DType::f64);
    check_gradients([k](Graph& g, const std::vector<Value>& in) {
      return g.add1(std::make_shared<BinaryOp>(k), {in[0], in[1]});
    }, {a, b}, "binary " + BinaryOp(k).attrs());
  }
}

TEST_CASE("elementwise: scale, sum_to, broadcast_to and their gradients") {
  const Tensor x = random_tensor({5, 31}, 5, -1, 1, DType::f64);
  const Tensor y = run_op(ScaleOp(-2.5), {x})[0];
  auto xv = x.to_doubles();
  std::vector<double> ref(xv.size());
  for (size_t i = 0; i < xv.size(); ++i) ref[i] = -2.5 * xv[i];
  check_close(y, ref, "scale");

  const Tensor s = run_op(SumToOp({1, 31}), {x})[0];
  std::vector<double> col(31, 0.0);
  for (size_t i = 0; i < xv.size(); ++i) col[i % 31] += xv[i];
  check_close(s, col, "sum_to columns");

  const Tensor big = random_tensor({257, 33}, 6, -1, 1, DType::f32);
  const Tensor sb = run_op(SumToOp({33}), {big})[0];
  std::vector<double> col2(33, 0.0);
  auto bv = big.to_doubles();
  for (size_t i = 0; i < bv.size(); ++i) col2[i % 33] += bv[i];
  check_close(sb, col2, "sum_to over 257 rows");

  check_gradients([](Graph& g, const std::vector<Value>& in) { return scale(in[0], 0.75); }, {x}, "scale");
  check_gradients([](Graph& g, const std::vector<Value>& in) { return sum_to(in[0], {5, 1}); }, {x}, "sum_to");
  check_gradients([](Graph& g, const std::vector<Value>& in) { return broadcast_to(in[0], {4, 5, 31}); }, {x},
                  "broadcast_to");
}

TEST_CASE("elementwise: bad shapes and dtypes throw an xfr::Error naming the op and shapes") {
  const Tensor a = Tensor::zeros({3, 4}), b = Tensor::zeros({5});
  try {
    run_op(BinaryOp(BinaryKind::add), {a, b});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "add");
    CHECK(std::string(e.what()).find("(3, 4)") != std::string::npos);
    CHECK(std::string(e.what()).find("(5,)") != std::string::npos);
  }
  CHECK_THROWS_AS(run_op(BinaryOp(BinaryKind::mul), {a, Tensor::zeros({4}, DType::f64)}), Error);
  CHECK_THROWS_AS(run_op(SumToOp({2}), {a}), Error);
}

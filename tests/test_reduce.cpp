// Reductions (sum, mean, max) against a float64 reference over every layout (trailing, leading, middle
// and interleaved axes, size-1 axes), the chunked paths on large inputs, accuracy of long f32 sums,
// determinism across thread counts, gradients and errors.
#include <cmath>
#include <limits>

#include "ops/reduce.h"
#include "runtime/cpu/threadpool.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

struct RefReduce {
  Shape shape;
  std::vector<double> y;
  std::vector<double> arg;  // max only: flat index within the reduced slice
};

// Naive reference: each input element goes to output (kept axes, row-major) at reduced index (reduced
// axes, row-major).
RefReduce ref_reduce(const std::vector<double>& x, const Shape& s, const std::vector<int64_t>& axes, bool keepdim,
                     ReduceKind kind) {
  const size_t rank = s.size();
  std::vector<bool> red(rank, axes.empty());
  for (int64_t a : axes) red[static_cast<size_t>(a < 0 ? a + static_cast<int64_t>(rank) : a)] = true;
  RefReduce r;
  int64_t n_out = 1, count = 1;
  for (size_t d = 0; d < rank; ++d) {
    if (red[d]) {
      count *= s[d];
      if (keepdim) r.shape.push_back(1);
    } else {
      n_out *= s[d];
      r.shape.push_back(s[d]);
    }
  }
  const double init = kind == ReduceKind::max ? -std::numeric_limits<double>::infinity() : 0.0;
  r.y.assign(static_cast<size_t>(n_out), init);
  r.arg.assign(static_cast<size_t>(n_out), -1);
  for (size_t i = 0; i < x.size(); ++i) {
    std::vector<int64_t> idx(rank);
    int64_t rem = static_cast<int64_t>(i);
    for (size_t d = rank; d-- > 0;) {
      idx[d] = rem % s[d];
      rem /= s[d];
    }
    int64_t o = 0, q = 0;
    for (size_t d = 0; d < rank; ++d) {
      if (red[d]) {
        q = q * s[d] + idx[d];
      } else {
        o = o * s[d] + idx[d];
      }
    }
    auto& y = r.y[static_cast<size_t>(o)];
    if (kind == ReduceKind::max) {
      if (x[i] > y) {  // strict: the first occurrence wins (i visits each slice in row-major order)
        y = x[i];
        r.arg[static_cast<size_t>(o)] = static_cast<double>(q);
      }
    } else {
      y += x[i];
    }
  }
  if (kind == ReduceKind::mean)
    for (auto& v : r.y) v /= static_cast<double>(count);
  return r;
}

void check_reduce(ReduceKind kind, const Tensor& x, const std::vector<int64_t>& axes, bool keepdim,
                  ThreadPool* pool = nullptr) {
  const std::string what = str_cat(reduce_kind_name(kind), " of ", x.desc(), " over ", shape_str(axes),
                                   keepdim ? " keepdim" : "");
  const auto out = run_op(ReduceOp(kind, axes, keepdim), {x}, pool);
  const RefReduce ref = ref_reduce(x.to_doubles(), x.shape(), axes, keepdim, kind);
  REQUIRE_MESSAGE(out[0].shape() == ref.shape, what << ": shape " << shape_str(out[0].shape()));
  CHECK(out[0].dtype() == x.dtype());
  check_close(out[0], ref.y, what);
  if (kind == ReduceKind::max) {
    REQUIRE(out.size() == 2);
    CHECK(out[1].dtype() == DType::i64);
    CHECK(out[1].shape() == ref.shape);
    check_close(out[1].to_doubles(), ref.arg, 0, 0, what + " argmax");
  } else {
    CHECK(out.size() == 1);
  }
}

const ReduceKind kKinds[] = {ReduceKind::sum, ReduceKind::mean, ReduceKind::max};

}  // namespace

TEST_CASE("reduce: sum, mean and max against float64 over every layout") {
  struct Case {
    Shape shape;
    std::vector<int64_t> axes;
  };
  const std::vector<Case> cases = {
      {{1}, {}},          {{1}, {0}},          {{257}, {}},           {{257}, {0}},        {{31, 33}, {1}},
      {{31, 33}, {0}},    {{31, 33}, {-1}},    {{31, 33}, {0, 1}},    {{33, 31}, {}},      {{3, 31, 5}, {1}},
      {{3, 31, 5}, {-2}}, {{2, 3, 33, 4}, {0, 1}}, {{2, 3, 33, 4}, {2, 3}}, {{2, 3, 33, 4}, {1, 2}},
      {{2, 3, 33, 4}, {0, 2}}, {{2, 3, 33, 4}, {1, 3}}, {{2, 3, 33, 4}, {0, 3}}, {{2, 3, 33, 4}, {3, 0, -2}},
      {{1, 31, 1, 33}, {0, 2}}, {{1, 31, 1, 33}, {2, 3}}, {{5, 1, 7}, {1}}, {{257, 3}, {0}}, {{3, 257}, {1}}};
  for (ReduceKind kind : kKinds)
    for (const auto& c : cases)
      for (bool keepdim : {false, true})
        for (DType dt : {DType::f32, DType::f64})
          check_reduce(kind, random_tensor(c.shape, 7 + c.shape.size(), -2, 2, dt), c.axes, keepdim);
}

TEST_CASE("reduce: large inputs through the parallel and chunked paths") {
  ThreadPool pool(3);
  struct Case {
    Shape shape;
    std::vector<int64_t> axes;
  };
  // (40000, 3) over axis 0 and (3, 20000) over axis 1 have fewer outputs than tasks: the reduced axis is
  // split into chunks. (700, 1031) over either axis has enough rows or column blocks on its own.
  const std::vector<Case> cases = {{{40000, 3}, {0}}, {{3, 20000}, {1}}, {{2, 9000, 5}, {1}}, {{100000}, {}},
                                   {{700, 1031}, {0}}, {{700, 1031}, {1}}, {{64, 33, 40}, {0, 2}}};
  for (ReduceKind kind : kKinds)
    for (const auto& c : cases)
      for (DType dt : {DType::f32, DType::f64}) check_reduce(kind, random_tensor(c.shape, 3, -1, 1, dt), c.axes, false, &pool);
}

TEST_CASE("reduce: a sum of a million f32 values keeps f32 accuracy and does not depend on the thread count") {
  const int64_t n = 1000000;
  // Values near 0.1 with a positive mean: a naive f32 running sum loses about 3 digits here.
  const Tensor x = random_tensor({n}, 11, 0.05, 0.15, DType::f32);
  double exact = 0;
  for (double v : x.to_doubles()) exact += v;
  ThreadPool p1(1), p3(3);
  for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &p1, &p3}) {
    const double s = run_op(ReduceOp(ReduceKind::sum, {}, false), {x}, pool)[0].item();
    CHECK(std::abs(s - exact) <= 1e-7 * exact);  // one f32 rounding (6e-8) of the double sum
    const double m = run_op(ReduceOp(ReduceKind::mean, {0}, true), {x}, pool)[0].item();
    CHECK(std::abs(m - exact / n) <= 1e-7 * exact / n);
  }
  // Bitwise equal across thread counts, also for column sums.
  const Tensor cols = random_tensor({20000, 7}, 12, -1, 1, DType::f32);
  const auto a = run_op(ReduceOp(ReduceKind::sum, {0}, false), {cols}, &p1)[0].to_doubles();
  const auto b = run_op(ReduceOp(ReduceKind::sum, {0}, false), {cols}, &p3)[0].to_doubles();
  CHECK(a == b);
}

TEST_CASE("reduce: max takes the first of tied maxima and propagates NaN") {
  const Tensor x = Tensor::from_vector<float>({1, 3, 3, 2, 5, 5, 5, 0}, {2, 4});
  const auto rows = run_op(ReduceOp(ReduceKind::max, {1}, false), {x});
  CHECK(rows[0].to_doubles() == std::vector<double>{3, 5});
  CHECK(rows[1].to_doubles() == std::vector<double>{1, 0});
  const auto all = run_op(ReduceOp(ReduceKind::max, {}, false), {x});
  CHECK(all[0].item() == 5);
  CHECK(all[1].item() == 4);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const Tensor xn = Tensor::from_vector<float>({1, nan, 7, nan, 2, 0}, {2, 3});
  const auto rn = run_op(ReduceOp(ReduceKind::max, {1}, false), {xn});
  CHECK(std::isnan(rn[0].to_doubles()[0]));
  CHECK(rn[1].to_doubles() == std::vector<double>{1, 0});
  const auto cn = run_op(ReduceOp(ReduceKind::max, {0}, false), {xn});
  CHECK(std::isnan(cn[0].to_doubles()[0]));
  CHECK(std::isnan(cn[0].to_doubles()[1]));
  CHECK(cn[0].to_doubles()[2] == 7);
  CHECK(cn[1].to_doubles() == std::vector<double>{1, 0, 0});
}

TEST_CASE("reduce: empty slices sum to 0 and average to NaN") {
  const Tensor x = Tensor::zeros({3, 0});
  CHECK(run_op(ReduceOp(ReduceKind::sum, {1}, false), {x})[0].to_doubles() == std::vector<double>{0, 0, 0});
  CHECK(std::isnan(run_op(ReduceOp(ReduceKind::mean, {1}, false), {x})[0].to_doubles()[2]));
  CHECK(run_op(ReduceOp(ReduceKind::sum, {0}, false), {x})[0].shape() == Shape{0});
}

TEST_CASE("reduce: gradients by finite differences (float64)") {
  struct Case {
    Shape shape;
    std::vector<int64_t> axes;
  };
  const std::vector<Case> cases = {{{4, 5}, {1}}, {{4, 5}, {0}}, {{4, 5}, {}},        {{2, 3, 4}, {1}},
                                   {{2, 3, 4}, {0, 2}}, {{2, 3, 4}, {-1, 0}}, {{3, 1, 4}, {1}}};
  for (ReduceKind kind : kKinds)
    for (const auto& c : cases)
      for (bool keepdim : {false, true}) {
        const Tensor x = random_tensor(c.shape, 21, -1, 1, DType::f64);
        check_gradients(
            [&](Graph&, const std::vector<Value>& in) {
              switch (kind) {
                case ReduceKind::sum: return reduce_sum(in[0], c.axes, keepdim);
                case ReduceKind::mean: return reduce_mean(in[0], c.axes, keepdim);
                default: return reduce_max(in[0], c.axes, keepdim);
              }
            },
            {x}, str_cat(reduce_kind_name(kind), " over ", shape_str(c.axes), " of ", shape_str(c.shape)));
      }
}

TEST_CASE("reduce: bad axes and dtypes throw an xfr::Error naming the op and the shapes") {
  const Tensor x = Tensor::zeros({3, 4});
  try {
    run_op(ReduceOp(ReduceKind::sum, {2}, false), {x});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "reduce");
    CHECK(std::string(e.what()).find("(3, 4)") != std::string::npos);
  }
  try {
    run_op(ReduceOp(ReduceKind::mean, {1, -1}, false), {x});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "reduce");
    CHECK(std::string(e.what()).find("twice") != std::string::npos);
  }
  try {
    run_op(ReduceOp(ReduceKind::max, {1}, false), {Tensor::zeros({3, 0})});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "reduce");
    CHECK(std::string(e.what()).find("(3, 0)") != std::string::npos);
  }
  CHECK_THROWS_AS(run_op(ReduceOp(ReduceKind::sum, {-3}, false), {x}), Error);
  CHECK_THROWS_AS(run_op(ReduceOp(ReduceKind::sum, {}, false), {Tensor::zeros({3}, DType::i32)}), Error);
  try {
    run_op(ReduceMaxBackwardOp({1}, false, {3, 4}), {Tensor::zeros({4}), Tensor::zeros({4}, DType::i64)});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "reduce_max_backward");
    CHECK(std::string(e.what()).find("(3, 4)") != std::string::npos);
  }
}

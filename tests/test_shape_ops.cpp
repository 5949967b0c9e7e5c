// transpose, permute, slice, pad_slice, concat and split against naive index arithmetic in float64 (and
// exact copies for integer dtypes), the attention layouts on a pool, gradients and errors.
#include <numeric>

#include "ops/elementwise.h"
#include "ops/shape_ops.h"
#include "runtime/cpu/threadpool.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

std::vector<int64_t> unravel(int64_t i, const Shape& s) {
  std::vector<int64_t> idx(s.size());
  for (size_t d = s.size(); d-- > 0;) {
    idx[d] = i % s[d];
    i /= s[d];
  }
  return idx;
}
int64_t ravel(const std::vector<int64_t>& idx, const Shape& s) {
  int64_t o = 0;
  for (size_t d = 0; d < s.size(); ++d) o = o * s[d] + idx[d];
  return o;
}

std::vector<double> ref_permute(const std::vector<double>& x, const Shape& s, const std::vector<int>& order) {
  Shape os;
  for (int a : order) os.push_back(s[static_cast<size_t>(a)]);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < y.size(); ++i) {
    const auto oi = unravel(static_cast<int64_t>(i), os);
    std::vector<int64_t> ii(s.size());
    for (size_t d = 0; d < order.size(); ++d) ii[static_cast<size_t>(order[d])] = oi[d];
    y[i] = x[static_cast<size_t>(ravel(ii, s))];
  }
  return y;
}

// Elements of x with index on `axis` in [b, e), in order.
std::vector<double> ref_slice(const std::vector<double>& x, const Shape& s, int axis, int64_t b, int64_t e) {
  std::vector<double> y;
  for (size_t i = 0; i < x.size(); ++i) {
    const int64_t k = unravel(static_cast<int64_t>(i), s)[static_cast<size_t>(axis)];
    if (k >= b && k < e) y.push_back(x[i]);
  }
  return y;
}

std::vector<double> ref_concat(const std::vector<Tensor>& xs, int axis) {
  Shape os = xs[0].shape();
  os[static_cast<size_t>(axis)] = 0;
  for (const auto& t : xs) os[static_cast<size_t>(axis)] += t.shape()[static_cast<size_t>(axis)];
  std::vector<std::vector<double>> xv;
  for (const auto& t : xs) xv.push_back(t.to_doubles());
  std::vector<double> y(static_cast<size_t>(numel_of(os)));
  for (size_t i = 0; i < y.size(); ++i) {
    auto idx = unravel(static_cast<int64_t>(i), os);
    int64_t k = idx[static_cast<size_t>(axis)];
    size_t which = 0;
    while (k >= xs[which].shape()[static_cast<size_t>(axis)]) k -= xs[which++].shape()[static_cast<size_t>(axis)];
    idx[static_cast<size_t>(axis)] = k;
    y[i] = xv[which][static_cast<size_t>(ravel(idx, xs[which].shape()))];
  }
  return y;
}

std::vector<int> iota_order(size_t n) {
  std::vector<int> o(n);
  std::iota(o.begin(), o.end(), 0);
  return o;
}

void expect_error(const std::function<void()>& f, const std::string& op, const std::string& fragment) {
  try {
    f();
    FAIL("no error from " << op);
  } catch (const Error& e) {
    CHECK(e.op() == op);
    CHECK_MESSAGE(std::string(e.what()).find(fragment) != std::string::npos, e.what());
  }
}

const DType kDtypes[] = {DType::f32, DType::f64, DType::i32, DType::bf16};

}  // namespace

TEST_CASE("transpose and permute: against index arithmetic, every dtype, runs and tiled paths") {
  struct Case {
    Shape shape;
    std::vector<int64_t> order;
  };
  const std::vector<Case> cases = {
      {{2, 33, 3, 31}, {0, 2, 1, 3}},  // (B, T, H, D) -> (B, H, T, D): contiguous runs of D
      {{2, 3, 33, 31}, {0, 2, 1, 3}},  // and back
      {{3, 31, 33}, {0, 2, 1}},        // K^T: the innermost axes swap (tiles)
      {{257, 33}, {1, 0}},   {{33, 257}, {-1, -2}}, {{3, 33, 257}, {2, 0, 1}}, {{5, 1, 7, 3}, {3, 1, 2, 0}},
      {{1, 31, 1}, {2, 1, 0}}, {{31}, {0}},           {{2, 3, 4, 5, 6}, {4, 2, 0, 3, 1}}, {{4, 1, 33}, {1, 0, 2}}};
  for (const auto& c : cases)
    for (DType dt : kDtypes) {
      const Tensor x = random_tensor(c.shape, 5, -9, 9, DType::f64).to(dt);
      std::vector<int> order;
      for (int64_t a : c.order) order.push_back(static_cast<int>(a < 0 ? a + static_cast<int64_t>(c.shape.size()) : a));
      const auto ref = ref_permute(x.to_doubles(), c.shape, order);
      const Tensor y = run_op(PermuteOp(c.order), {x})[0];
      CHECK(y.dtype() == dt);
      check_close(y.to_doubles(), ref, 0, 0, "permute " + shape_str(c.order) + " of " + x.desc());
      // The two-axis case of each permutation that swaps exactly two axes, through TransposeOp.
      std::vector<int> moved;
      for (size_t i = 0; i < order.size(); ++i)
        if (order[i] != static_cast<int>(i)) moved.push_back(static_cast<int>(i));
      if (moved.size() == 2) {
        const Tensor t = run_op(TransposeOp(moved[0], moved[1] - static_cast<int64_t>(c.shape.size())), {x})[0];
        check_close(t.to_doubles(), ref, 0, 0, "transpose of " + x.desc());
      }
    }
}

TEST_CASE("transpose and permute: attention-sized layouts on a pool") {
  ThreadPool pool(3);
  const Tensor x = random_tensor({4, 128, 8, 64}, 6);
  const auto xv = x.to_doubles();
  check_close(run_op(PermuteOp({0, 2, 1, 3}), {x}, &pool)[0].to_doubles(), ref_permute(xv, x.shape(), {0, 2, 1, 3}),
              0, 0, "(B, T, H, D) -> (B, H, T, D)");
  check_close(run_op(TransposeOp(-1, -2), {x}, &pool)[0].to_doubles(), ref_permute(xv, x.shape(), {0, 1, 3, 2}), 0,
              0, "transpose of the last two axes");
  check_close(run_op(PermuteOp({0, 2, 3, 1}), {x}, &pool)[0].to_doubles(), ref_permute(xv, x.shape(), {0, 2, 3, 1}),
              0, 0, "(B, T, H, D) -> (B, H, D, T)");
  const Tensor big = random_tensor({257, 1031}, 7);
  check_close(run_op(TransposeOp(0, 1), {big}, &pool)[0].to_doubles(), ref_permute(big.to_doubles(), big.shape(), {1, 0}),
              0, 0, "transpose (257, 1031)");
}

TEST_CASE("slice and pad_slice: against index arithmetic, every dtype") {
  struct Case {
    Shape shape;
    int64_t axis, start, end;
  };
  ThreadPool pool(3);
  const std::vector<Case> cases = {{{31, 33}, 0, 3, 20},   {{31, 33}, 1, -10, -1}, {{31, 33}, -1, 0, 33},
                                   {{2, 257, 5}, 1, 1, 256}, {{2, 257, 5}, 2, 4, 5}, {{257}, 0, 31, 31},
                                   {{1}, 0, 0, 1},           {{3, 1, 33}, 1, 0, 1},  {{300, 1000}, 0, 1, 299}};
  for (const auto& c : cases)
    for (DType dt : kDtypes) {
      const Tensor x = random_tensor(c.shape, 8, -9, 9, DType::f64).to(dt);
      const int ax = static_cast<int>(c.axis < 0 ? c.axis + static_cast<int64_t>(c.shape.size()) : c.axis);
      const int64_t n = c.shape[static_cast<size_t>(ax)];
      const int64_t b = c.start < 0 ? c.start + n : c.start, e = c.end < 0 ? c.end + n : c.end;
      const Tensor y = run_op(SliceOp(c.axis, c.start, c.end), {x}, &pool)[0];
      Shape ys = c.shape;
      ys[static_cast<size_t>(ax)] = e - b;
      REQUIRE(y.shape() == ys);
      check_close(y.to_doubles(), ref_slice(x.to_doubles(), c.shape, ax, b, e), 0, 0,
                  "slice " + SliceOp(c.axis, c.start, c.end).attrs() + " of " + x.desc());
      // pad_slice puts it back with zeros around: equal to x on [b, e), zero elsewhere.
      const Tensor p = run_op(PadSliceOp(c.axis, b, n), {y}, &pool)[0];
      REQUIRE(p.shape() == c.shape);
      auto expect = x.to_doubles();
      for (size_t i = 0; i < expect.size(); ++i) {
        const int64_t k = unravel(static_cast<int64_t>(i), c.shape)[static_cast<size_t>(ax)];
        if (k < b || k >= e) expect[i] = 0;
      }
      check_close(p.to_doubles(), expect, 0, 0, "pad_slice of " + y.desc());
    }
}

TEST_CASE("concat and split: against index arithmetic, any number of inputs, every dtype") {
  ThreadPool pool(3);
  struct Case {
    std::vector<Shape> shapes;
    int64_t axis;
  };
  const std::vector<Case> cases = {{{{3, 31}, {3, 1}, {3, 33}}, 1},
                                   {{{1, 5}, {31, 5}, {33, 5}, {2, 5}}, 0},
                                   {{{2, 31, 4}, {2, 33, 4}}, -2},
                                   {{{2, 3, 31}, {2, 3, 0}, {2, 3, 257}}, -1},
                                   {{{257}}, 0},
                                   {{{300, 700}, {300, 600}}, 1},
                                   {{{1, 70000}, {1, 1000}}, 1}};
  for (const auto& c : cases)
    for (DType dt : kDtypes) {
      std::vector<Tensor> xs;
      for (size_t k = 0; k < c.shapes.size(); ++k) xs.push_back(random_tensor(c.shapes[k], 9 + k, -9, 9, DType::f64).to(dt));
      const int ax = static_cast<int>(c.axis < 0 ? c.axis + static_cast<int64_t>(c.shapes[0].size()) : c.axis);
      const Tensor y = run_op(ConcatOp(c.axis), xs, &pool)[0];
      CHECK(y.dtype() == dt);
      check_close(y.to_doubles(), ref_concat(xs, ax), 0, 0, "concat of " + std::to_string(xs.size()) + " " + xs[0].desc());
      std::vector<int64_t> sizes;
      for (const auto& s : c.shapes) sizes.push_back(s[static_cast<size_t>(ax)]);
      const auto parts = run_op(SplitOp(c.axis, sizes), {y}, &pool);
      REQUIRE(parts.size() == xs.size());
      for (size_t k = 0; k < xs.size(); ++k) {
        REQUIRE(parts[k].shape() == xs[k].shape());
        check_close(parts[k].to_doubles(), xs[k].to_doubles(), 0, 0, "split part " + std::to_string(k));
      }
    }
}

TEST_CASE("transpose, permute, slice, pad_slice, concat, split: gradients by finite differences (float64)") {
  const Tensor x = random_tensor({2, 3, 4, 5}, 31, -1, 1, DType::f64);
  check_gradients([](Graph&, const std::vector<Value>& in) { return transpose(in[0], 1, -2); }, {x}, "transpose");
  check_gradients([](Graph&, const std::vector<Value>& in) { return permute(in[0], {3, 0, 2, 1}); }, {x}, "permute");
  check_gradients([](Graph&, const std::vector<Value>& in) { return slice(in[0], 2, 1, -1); }, {x}, "slice");
  check_gradients([](Graph&, const std::vector<Value>& in) { return pad_slice(in[0], -1, 2, 9); }, {x}, "pad_slice");
  const Tensor a = random_tensor({3, 2, 4}, 32, -1, 1, DType::f64), b = random_tensor({3, 1, 4}, 33, -1, 1, DType::f64),
               c = random_tensor({3, 3, 4}, 34, -1, 1, DType::f64);
  check_gradients([](Graph&, const std::vector<Value>& in) { return concat({in[0], in[1], in[2]}, 1); }, {a, b, c},
                  "concat of three");
  check_gradients(
      [](Graph& g, const std::vector<Value>& in) {
        return concat({fill(g, in[0].meta(), 2.0), in[0]}, 0);  // the constant input needs no gradient
      },
      {a}, "concat with a constant");
  check_gradients(
      [](Graph&, const std::vector<Value>& in) {
        const auto p = split(in[0], -1, {1, 3, 1});
        return concat({p[2], p[0]}, -1);  // the middle part is unused: its gradient is zero-filled
      },
      {x}, "split with an unused output");
  check_gradients([](Graph&, const std::vector<Value>& in) { return split(in[0], 0, {1, 1})[1]; }, {x},
                  "split, one output used");
}

TEST_CASE("transpose, permute, slice, pad_slice, concat, split: errors name the op and the shapes") {
  const Tensor x = Tensor::zeros({3, 4});
  expect_error([&] { run_op(TransposeOp(0, 2), {x}); }, "transpose", "(3, 4)");
  expect_error([&] { run_op(PermuteOp({0, 0}), {x}); }, "permute", "(3, 4)");
  expect_error([&] { run_op(PermuteOp({0}), {x}); }, "permute", "(3, 4)");
  expect_error([&] { run_op(SliceOp(1, 2, 5), {x}); }, "slice", "(3, 4)");
  expect_error([&] { run_op(SliceOp(0, 2, 1), {x}); }, "slice", "(3, 4)");
  expect_error([&] { run_op(SliceOp(2, 0, 1), {x}); }, "slice", "(3, 4)");
  expect_error([&] { run_op(PadSliceOp(1, 2, 5), {x}); }, "pad_slice", "(3, 4)");
  expect_error([&] { run_op(ConcatOp(1), {x, Tensor::zeros({2, 4})}); }, "concat", "(2, 4)");
  expect_error([&] { run_op(ConcatOp(0), {x, Tensor::zeros({3, 4}, DType::f64)}); }, "concat", "(3, 4)");
  expect_error([&] { run_op(ConcatOp(0), {}); }, "concat", "at least one");
  expect_error([&] { run_op(SplitOp(1, {1, 2}), {x}); }, "split", "(3, 4)");
  expect_error([&] { run_op(SplitOp(1, {5, -1}), {x}); }, "split", "(3, 4)");
}

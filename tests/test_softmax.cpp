// softmax (scale, additive broadcast mask, top-left causal) against a float64 reference; rows sum to 1;
// causal rows do not see the future; fully masked rows are zeros; the backward kernel and the gradients of
// x and mask by finite differences; errors.
#include <cmath>
#include <limits>

#include "ops/elementwise.h"
#include "ops/softmax.h"
#include "runtime/cpu/threadpool.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

const double kInf = std::numeric_limits<double>::infinity();

// Index into a tensor of shape `in` (broadcastable to `out`) for the row-major element `i` of `out`.
int64_t broadcast_index(int64_t i, const Shape& out, const Shape& in) {
  int64_t idx = 0, mul = 1;
  for (size_t d = out.size(); d-- > 0;) {
    const int64_t k = i % out[d];
    i /= out[d];
    const size_t lead = out.size() - in.size();
    if (d >= lead) {
      const int64_t n = in[d - lead];
      idx += (n == 1 ? 0 : k) * mul;
      mul *= n;
    }
  }
  return idx;
}

// Naive float64 softmax of scale * x + mask over the last axis, causal = key j > query i removed.
std::vector<double> ref_softmax(const std::vector<double>& x, const Shape& xs, const std::vector<double>& mask,
                                const Shape& ms, double scale, bool causal) {
  const int64_t Sk = xs.back(), Sq = xs.size() >= 2 ? xs[xs.size() - 2] : 1;
  const int64_t rows = static_cast<int64_t>(x.size()) / Sk;
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = r % Sq;
    std::vector<double> z(static_cast<size_t>(Sk));
    double mx = -kInf;
    for (int64_t j = 0; j < Sk; ++j) {
      const int64_t e = r * Sk + j;
      z[j] = scale * x[e] + (mask.empty() ? 0.0 : mask[broadcast_index(e, xs, ms)]);
      if (causal && j > i) z[j] = -kInf;
      mx = std::max(mx, z[j]);
    }
    double s = 0;
    for (int64_t j = 0; j < Sk; ++j) s += mx == -kInf ? 0.0 : std::exp(z[j] - mx);
    for (int64_t j = 0; j < Sk; ++j) y[r * Sk + j] = mx == -kInf ? 0.0 : std::exp(z[j] - mx) / s;
  }
  return y;
}

}  // namespace

TEST_CASE("softmax: against float64 with scale, broadcast masks and causal, at awkward sizes") {
  for (int64_t Sk : {1, 31, 33, 257})
    for (int64_t Sq : {1, 5, 33})
      for (DType dt : {DType::f32, DType::f64}) {
        const Shape xs{2, 3, Sq, Sk};
        const Tensor x = random_tensor(xs, 100 + Sk, -4, 4, dt);
        const std::vector<Shape> masks = {{}, {Sk}, {Sq, Sk}, {2, 1, Sq, Sk}, {Sq, 1}, {1, 3, 1, Sk}};
        for (const Shape& ms : masks)
          for (bool causal : {false, true}) {
            std::vector<Tensor> in{x};
            std::vector<double> mv;
            if (!ms.empty()) {
              Tensor m = random_tensor(ms, 7, -2, 1, DType::f64);
              // Some -inf entries (a padding mask), never a whole row of them here.
              double* p = m.data<double>();
              for (int64_t k = 0; k < m.numel(); k += 3)
                if (ms.back() > 1 && (k % ms.back()) != 0) p[k] = -kInf;
              m = m.to(dt);
              mv = m.to_doubles();
              in.push_back(m);
            }
            const double scale = 0.37;
            const auto ref = ref_softmax(x.to_doubles(), xs, mv, ms, scale, causal);
            const std::string what = "softmax " + x.desc() + " mask " + shape_str(ms) + " causal=" +
                                     std::to_string(causal);
            for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &test_pool()}) {
              const Tensor y = run_op(SoftmaxOp(scale, causal, !ms.empty()), in, pool)[0];
              check_close(y, ref, what);
              // Every row sums to 1 (no row is fully masked here).
              const auto yv = y.to_doubles();
              std::vector<double> sums, ones;
              for (size_t r = 0; r < yv.size() / Sk; ++r) {
                double s = 0;
                for (int64_t j = 0; j < Sk; ++j) s += yv[r * Sk + j];
                sums.push_back(s);
                ones.push_back(1.0);
              }
              check_close(sums, ones, tolerance(dt).atol * 10, 0, what + " row sums");
            }
          }
      }
}

TEST_CASE("softmax: causal is top-left aligned and changing a future key does not change a row") {
  for (auto [Sq, Sk] : std::vector<std::pair<int64_t, int64_t>>{{6, 6}, {5, 9}, {9, 4}}) {
    const Shape xs{2, Sq, Sk};
    Tensor x = random_tensor(xs, 3, -2, 2, DType::f64);
    const auto y0 = run_op(SoftmaxOp(1.0, true, false), {x})[0].to_doubles();
    for (int64_t i = 0; i < Sq; ++i)
      for (int64_t j = 0; j < Sk; ++j)
        if (j > i) CHECK(y0[static_cast<size_t>(i * Sk + j)] == 0.0);
    // Perturb key j of every row; rows i < j must be bit-identical.
    for (int64_t j = 0; j < Sk; ++j) {
      Tensor x2 = x.clone();
      double* p = x2.data<double>();
      for (int64_t r = 0; r < 2 * Sq; ++r) p[r * Sk + j] += 5.0;
      const auto y1 = run_op(SoftmaxOp(1.0, true, false), {x2})[0].to_doubles();
      for (int64_t r = 0; r < 2 * Sq; ++r) {
        const int64_t i = r % Sq;
        if (i >= j) continue;
        for (int64_t k = 0; k < Sk; ++k)
          CHECK_MESSAGE(y1[static_cast<size_t>(r * Sk + k)] == y0[static_cast<size_t>(r * Sk + k)],
                        "row ", i, " changed when key ", j, " changed (Sq ", Sq, ", Sk ", Sk, ")");
      }
    }
  }
}

TEST_CASE("softmax: a fully masked row gives zeros and a zero, NaN-free gradient") {
  for (DType dt : {DType::f32, DType::f64}) {
    const int64_t Sk = 33;
    const Tensor x = random_tensor({3, Sk}, 4, -2, 2, dt);
    Tensor m = Tensor::zeros({3, Sk}, DType::f64);
    double* p = m.data<double>();
    for (int64_t j = 0; j < Sk; ++j) p[Sk + j] = -kInf;  // row 1 fully masked
    for (int64_t j = 10; j < Sk; ++j) p[j] = -kInf;      // row 0 partly masked
    m = m.to(dt);
    const Tensor y = run_op(SoftmaxOp(1.0, false, true), {x, m})[0];
    const auto yv = y.to_doubles();
    for (int64_t j = 0; j < Sk; ++j) {
      CHECK(yv[static_cast<size_t>(Sk + j)] == 0.0);
      if (j >= 10) CHECK(yv[static_cast<size_t>(j)] == 0.0);
    }
    check_close(y, ref_softmax(x.to_doubles(), {3, Sk}, m.to_doubles(), {3, Sk}, 1.0, false), "masked rows");

    // Backward with infinite upstream gradients exactly where y == 0: no 0 * inf NaN reaches dx or dz.
    Tensor dy = random_tensor({3, Sk}, 5, -1, 1, DType::f64);
    double* d = dy.data<double>();
    for (int64_t j = 10; j < Sk; ++j) d[j] = (j % 2 ? 1 : -1) * kInf;
    for (int64_t j = 0; j < Sk; ++j) d[Sk + j] = -kInf;
    dy = dy.to(dt);
    const auto g = run_op(SoftmaxBackwardOp(0.5, true), {y, dy});
    const auto dxv = g[0].to_doubles(), dzv = g[1].to_doubles(), dyv = dy.to_doubles();
    std::vector<double> ref_dz(yv.size(), 0.0), ref_dx(yv.size(), 0.0);
    for (int64_t r = 0; r < 3; ++r) {
      double s = 0;
      for (int64_t j = 0; j < Sk; ++j)
        if (yv[r * Sk + j] != 0) s += yv[r * Sk + j] * dyv[r * Sk + j];
      for (int64_t j = 0; j < Sk; ++j) {
        const size_t e = static_cast<size_t>(r * Sk + j);
        ref_dz[e] = yv[e] == 0 ? 0.0 : yv[e] * (dyv[e] - s);
        ref_dx[e] = 0.5 * ref_dz[e];
      }
    }
    check_close(g[1], ref_dz, "dz with inf upstream at masked positions");
    check_close(g[0], ref_dx, "dx with inf upstream at masked positions");
    for (double v : dxv) CHECK(std::isfinite(v));
    for (double v : dzv) CHECK(std::isfinite(v));
  }
}

TEST_CASE("softmax: backward kernel against float64 at awkward sizes") {
  for (int64_t Sk : {1, 31, 33, 257})
    for (DType dt : {DType::f32, DType::f64})
      for (bool emit : {false, true}) {
        const Tensor x = random_tensor({7, Sk}, 8, -3, 3, dt);
        const Tensor y = run_op(SoftmaxOp(1.0, false, false), {x})[0];
        const Tensor dy = random_tensor({7, Sk}, 9, -1, 1, dt);
        const auto yv = y.to_doubles(), dyv = dy.to_doubles();
        std::vector<double> dz(yv.size()), dx(yv.size());
        for (int64_t r = 0; r < 7; ++r) {
          double s = 0;
          for (int64_t j = 0; j < Sk; ++j) s += yv[r * Sk + j] * dyv[r * Sk + j];
          for (int64_t j = 0; j < Sk; ++j) {
            dz[r * Sk + j] = yv[r * Sk + j] * (dyv[r * Sk + j] - s);
            dx[r * Sk + j] = -1.5 * dz[r * Sk + j];
          }
        }
        for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &test_pool()}) {
          const auto g = run_op(SoftmaxBackwardOp(-1.5, emit), {y, dy}, pool);
          REQUIRE(g.size() == (emit ? 2u : 1u));
          check_close(g[0], dx, "softmax_backward dx " + y.desc());
          if (emit) check_close(g[1], dz, "softmax_backward dz " + y.desc());
        }
      }
}

TEST_CASE("softmax: gradients of x and mask by finite differences (float64)") {
  const Tensor x = random_tensor({2, 3, 4, 5}, 10, -2, 2, DType::f64);
  for (bool causal : {false, true}) {
    const std::string c = causal ? " causal" : "";
    check_gradients([causal](Graph&, const std::vector<Value>& v) { return softmax(v[0], {}, 0.7, causal); }, {x},
                    "softmax x" + c);
    for (const Shape& ms : {Shape{4, 5}, Shape{2, 1, 4, 5}, Shape{5}, Shape{4, 1}})
      for (double scale : {1.0, 0.6}) {
        check_gradients([causal, scale](Graph&, const std::vector<Value>& v) {
          return softmax(v[0], v[1], scale, causal);
        }, {x, random_tensor(ms, 11, -1, 1, DType::f64)},
                        "softmax x, mask " + shape_str(ms) + " scale " + std::to_string(scale) + c);
      }
    // Only the mask needs a gradient (x is a constant): the backward takes its mask-only path.
    check_gradients([causal](Graph& g, const std::vector<Value>& v) {
      const Value xc = fill(g, TensorMeta{{2, 3, 4, 5}, DType::f64}, 0.25);
      return softmax(xc, v[0], 0.6, causal);
    }, {random_tensor({2, 1, 4, 5}, 12, -1, 1, DType::f64)}, "softmax mask only" + c);
  }
}

TEST_CASE("softmax: bad shapes throw an xfr::Error naming the op and the shapes") {
  const Tensor x = Tensor::zeros({2, 4, 8, 8});
  try {
    run_op(SoftmaxOp(1.0, false, true), {x, Tensor::zeros({4, 9})});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "softmax");
    CHECK(std::string(e.what()).find("(4, 9)") != std::string::npos);
    CHECK(std::string(e.what()).find("(2, 4, 8, 8)") != std::string::npos);
  }
  CHECK_THROWS_AS(run_op(SoftmaxOp(1.0, false, true), {x, Tensor::zeros({1, 2, 4, 8, 8})}), Error);  // rank
  CHECK_THROWS_AS(run_op(SoftmaxOp(1.0, false, true), {x, Tensor::zeros({8, 8}, DType::f64)}), Error);  // dtype
  CHECK_THROWS_AS(run_op(SoftmaxOp(1.0, true, false), {Tensor::zeros({8})}), Error);  // causal needs Sq
  CHECK_THROWS_AS(run_op(SoftmaxOp(1.0, false, true), {x}), Error);                   // mask missing
  CHECK_THROWS_AS(run_op(SoftmaxBackwardOp(1.0, false), {x, Tensor::zeros({2, 4, 8, 7})}), Error);
}

// dropout: the mask is exactly philox_uniform(seed, offset + i) >= p; kept fraction; determinism in
// (seed, offset); the backward replays the forward's numbers (finite differences agree); fresh numbers on
// each executor run; errors.
#include <algorithm>
#include <cmath>

#include "ops/dropout.h"
#include "ops/elementwise.h"
#include "runtime/cpu/threadpool.h"
#include "runtime/rng.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

// The kept pattern of y (nonzero where x is nonzero everywhere).
std::vector<bool> kept(const Tensor& y) {
  std::vector<bool> k;
  for (double v : y.to_doubles()) k.push_back(v != 0.0);
  return k;
}

}  // namespace

TEST_CASE("dropout: the mask is philox_uniform(seed, offset + i) >= p and kept values are x / (1 - p)") {
  for (int64_t n : {1, 31, 33, 257, 100003})
    for (DType dt : {DType::f32, DType::f64})
      for (uint64_t offset : {uint64_t{0}, uint64_t{5}, uint64_t{1000003}})
        for (double p : {0.1, 0.3, 0.9}) {
          const Tensor x = random_tensor({n}, 20, 0.5, 1.5, dt);  // never 0, so y == 0 means dropped
          const uint64_t seed = 0x5EED1234ABCDull;
          for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &test_pool()}) {
            const Tensor y = run_op(DropoutOp(p), {x}, pool, seed, offset)[0];
            const auto xv = x.to_doubles(), yv = y.to_doubles();
            std::vector<double> ref(xv.size());
            size_t mismatches = 0;
            for (size_t i = 0; i < xv.size(); ++i) {
              const bool keep = philox_uniform(seed, offset + i) >= p;
              // The kernel scales by 1/(1-p) rounded to the dtype, as written in the op's contract.
              ref[i] = keep ? (dt == DType::f32 ? static_cast<double>(static_cast<float>(xv[i]) *
                                                                     static_cast<float>(1.0 / (1.0 - p)))
                                                : xv[i] * (1.0 / (1.0 - p)))
                            : 0.0;
              mismatches += (yv[i] != 0.0) != keep;
            }
            CHECK_MESSAGE(mismatches == 0, mismatches, " mask mismatches, n ", n, " offset ", offset, " p ", p);
            check_close(yv, ref, 0, 0, "dropout values n " + std::to_string(n));  // exact
          }
        }
}

TEST_CASE("dropout: kept fraction within statistical bounds; same (seed, offset) same mask; else different") {
  const int64_t n = 200000;
  const Tensor x = Tensor::full({n}, 1.0);
  for (double p : {0.1, 0.3, 0.5}) {
    const Tensor y = run_op(DropoutOp(p), {x}, &test_pool(), 7, 64)[0];
    const auto k = kept(y);
    const double frac = static_cast<double>(std::count(k.begin(), k.end(), true)) / n;
    // Binomial: sd = sqrt(p (1 - p) / n) ~ 1e-3; 6 sd keeps a false failure below 1e-8.
    const double sd = std::sqrt(p * (1 - p) / n);
    CHECK_MESSAGE(std::abs(frac - (1 - p)) < 6 * sd, "kept fraction ", frac, " for p ", p);
  }
  const auto a = kept(run_op(DropoutOp(0.5), {x}, nullptr, 7, 64)[0]);
  const auto b = kept(run_op(DropoutOp(0.5), {x}, &test_pool(), 7, 64)[0]);
  const auto c = kept(run_op(DropoutOp(0.5), {x}, nullptr, 7, 68)[0]);
  const auto d = kept(run_op(DropoutOp(0.5), {x}, nullptr, 8, 64)[0]);
  CHECK(a == b);  // same (seed, offset), serial and threaded
  CHECK(a != c);  // another offset
  CHECK(a != d);  // another seed
  // A shifted offset is the same stream shifted: element i at offset 68 is element i + 4 at offset 64.
  CHECK(std::equal(c.begin(), c.end() - 4, a.begin() + 4));
}

TEST_CASE("dropout: p = 0 is the identity, p outside [0, 1) throws") {
  Graph g;
  Value x = g.input("x", TensorMeta{{4, 5}, DType::f32});
  CHECK(dropout(x, 0.0).id == x.id);
  const Tensor xt = random_tensor({4, 5}, 1);
  check_close(run_op(DropoutOp(0.0), {xt}, nullptr, 3, 0)[0], xt.to_doubles(), "p = 0 kernel");
  for (double p : {-0.1, 1.0, 1.5, std::nan("")}) {
    try {
      dropout(x, p);
      FAIL("no error for p ", p);
    } catch (const Error& e) {
      CHECK(e.op() == "dropout");
    }
    CHECK_THROWS_AS(run_op(DropoutOp(p), {xt}), Error);
  }
  CHECK_THROWS_AS(run_op(DropoutOp(0.5), {Tensor::zeros({3}, DType::i32)}), Error);
}

TEST_CASE("dropout: the backward replays the forward's random numbers (finite differences, p = 0.3)") {
  // The forward and the finite-difference runs use the same seed and stream position, and the backward
  // node reuses the forward node's offset: the analytic gradient is mask / (1 - p) and matches.
  for (uint64_t seed : {uint64_t{0}, uint64_t{12345}}) {
    check_gradients([](Graph&, const std::vector<Value>& v) { return dropout(v[0], 0.3); },
                    {random_tensor({7, 9}, 30, -1, 1, DType::f64)}, "dropout p=0.3", 1e-6, 1e-6, 1e-5, seed);
    // Two dropouts in one graph get disjoint slices of the stream; each backward replays its own.
    check_gradients([](Graph&, const std::vector<Value>& v) {
      return dropout(v[0], 0.3) * dropout(v[0], 0.5);
    }, {random_tensor({3, 11}, 31, -1, 1, DType::f64)}, "two dropouts", 1e-6, 1e-6, 1e-5, seed);
  }

  // Explicitly: dx is zero exactly where y is, and equals dy / (1 - p) elsewhere.
  Graph g;
  Value x = g.input("x", TensorMeta{{1000}, DType::f64}, true);
  Value y = dropout(x, 0.3, "drop");
  Value w = g.input("w", y.meta());
  Gradients grads = gradients(y, w);
  Value dx = grads.get(x);
  REQUIRE(dx.defined());
  CHECK(g.node(g.value(dx.id).producer).rng_offset == g.node(g.value(y.id).producer).rng_offset);
  auto store = std::make_shared<ParamStore>(g);
  ExecutorOptions opt;
  opt.seed = 99;
  Executor ex(g, {y, dx}, grads, store, opt);
  const Tensor xt = Tensor::full({1000}, 2.0, DType::f64), wt = random_tensor({1000}, 32, 0.5, 1, DType::f64);
  ex.bind(x, xt);
  ex.bind(w, wt);
  std::vector<std::vector<bool>> masks;
  for (int run = 0; run < 3; ++run) {
    ex.run();
    const auto yv = ex.get(y).to_doubles(), dxv = ex.get(dx).to_doubles(), wv = wt.to_doubles();
    std::vector<bool> m;
    size_t bad = 0;
    for (size_t i = 0; i < yv.size(); ++i) {
      const bool keep = yv[i] != 0.0;
      m.push_back(keep);
      bad += keep ? std::abs(dxv[i] - wv[i] / 0.7) > 1e-12 : dxv[i] != 0.0;
      // The executor's stream position: run k starts at k * (random numbers per run).
      bad += keep != (philox_uniform(99, static_cast<uint64_t>(run) * 1000 + i) >= 0.3);
    }
    CHECK_MESSAGE(bad == 0, bad, " elements disagree in run ", run);
    masks.push_back(m);
  }
  CHECK(masks[0] != masks[1]);  // each run draws fresh numbers
  CHECK(masks[1] != masks[2]);
}

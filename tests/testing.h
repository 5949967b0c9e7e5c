// Shared test helpers: the device under test, a shared thread pool, random inputs, comparisons with per-dtype
// tolerances, and a float64 finite-difference gradient check that runs ops through a real graph and executor.
#pragma once
#include <cstdint>
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "ops/grad.h"
#include "runtime/cpu/threadpool.h"
#include "runtime/executor.h"
#include "runtime/graph.h"
#include "runtime/kernel_registry.h"
#include "runtime/tensor.h"

namespace xfr::testing {

// XF_TEST_DEVICE=cpu (default) or cuda.
inline Device test_device() {
  const char* d = std::getenv("XF_TEST_DEVICE");
  if (d && std::string(d).rfind("cuda", 0) == 0) return Device::cuda(0);
  return Device::cpu();
}

// A pool for kernels run on several threads: 3, more tasks than the 2 cores of CI, so chunks interleave.
inline ThreadPool& test_pool() {
  static ThreadPool pool(3);
  return pool;
}

// Tolerances as data: what an op's result may differ from a float64 reference, per dtype.
struct Tolerance {
  double atol, rtol;
  const char* why;
};
inline Tolerance tolerance(DType t) {
  switch (t) {
    case DType::f64:
      // Same formula in double: differences come only from summation order (~n * 1e-16).
      return {1e-10, 1e-10, "float64 reductions in another order"};
    case DType::f32:
      // f32 has 24 bits (6e-8 relative); sums over up to a few thousand terms lose ~sqrt(n) ulps.
      return {1e-5, 1e-4, "float32 rounding accumulated over reductions of up to ~4k terms"};
    case DType::bf16:
      // 8 bits of mantissa: one rounding is 4e-3 relative.
      return {2e-2, 2e-2, "bfloat16 storage rounding (8-bit mantissa) with fp32 accumulation"};
    case DType::f16:
      // 11 bits: one rounding is 5e-4 relative.
      return {2e-3, 2e-3, "float16 storage rounding (11-bit mantissa) with fp32 accumulation"};
    default:
      return {0, 0, "integers are exact"};
  }
}

// Uniform random values in [lo, hi), deterministic in `seed`.
inline Tensor random_tensor(const Shape& shape, uint64_t seed, double lo = -1.0, double hi = 1.0,
                            DType dtype = DType::f32) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(static_cast<size_t>(numel_of(shape)));
  for (auto& x : v) x = dist(rng);
  Tensor t = Tensor::from_vector(v, shape);
  return dtype == DType::f64 ? t : t.to(dtype);
}

inline std::vector<double> random_doubles(size_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Checks |actual - expected| <= atol + rtol * |expected| everywhere; reports the worst element.
inline void check_close(const std::vector<double>& actual, const std::vector<double>& expected, double atol,
                        double rtol, const std::string& what) {
  REQUIRE_MESSAGE(actual.size() == expected.size(), what << ": " << actual.size() << " values vs " << expected.size());
  size_t worst = 0;
  double worst_excess = -1;
  bool ok = true;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double err = std::abs(actual[i] - expected[i]);
    const double allowed = atol + rtol * std::abs(expected[i]);
    const bool bad = !(err <= allowed);  // also catches NaN
    if (bad) ok = false;
    const double excess = std::isnan(err) ? 1e300 : err - allowed;
    if (excess > worst_excess) {
      worst_excess = excess;
      worst = i;
    }
  }
  CHECK_MESSAGE(ok, what << ": element " << worst << " is " << (actual.empty() ? 0 : actual[worst]) << ", expected "
                         << (expected.empty() ? 0 : expected[worst]) << " (atol " << atol << ", rtol " << rtol << ")");
}

inline void check_close(const Tensor& actual, const std::vector<double>& expected, const std::string& what,
                        double scale_tolerance = 1.0) {
  const auto tol = tolerance(actual.dtype());
  check_close(actual.to_doubles(), expected, tol.atol * scale_tolerance, tol.rtol * scale_tolerance, what);
}

// Builds a graph over inputs of the given tensors (float ones require grad) and returns its output.
using GraphBuilder = std::function<Value(Graph& g, const std::vector<Value>& inputs)>;

// Graph inputs "in0", "in1", ... shaped as `inputs`; with differentiate, the f64 ones require grad.
inline std::vector<Value> graph_inputs(Graph& g, const std::vector<Tensor>& inputs, bool differentiate) {
  std::vector<Value> vin;
  for (size_t i = 0; i < inputs.size(); ++i)
    vin.push_back(g.input("in" + std::to_string(i), TensorMeta{inputs[i].shape(), inputs[i].dtype()},
                          differentiate && inputs[i].dtype() == DType::f64));
  return vin;
}

// Runs `build` once on `inputs` through an executor and returns its output.
inline Tensor run_graph(const GraphBuilder& build, const std::vector<Tensor>& inputs, uint64_t seed = 0) {
  Graph g;
  const std::vector<Value> vin = graph_inputs(g, inputs, false);
  Value out = build(g, vin);
  auto store = std::make_shared<ParamStore>(g);
  ExecutorOptions opt;
  opt.seed = seed;
  Executor ex(g, {out}, Gradients{}, store, opt);
  for (size_t i = 0; i < inputs.size(); ++i) ex.bind(vin[i], inputs[i]);
  ex.run();
  return ex.get(out).clone();
}

// Float64 finite-difference gradient check. Every floating input is differentiated: the analytic
// gradient of L = sum(out * W) (W random) from the graph's backward is compared with central
// differences of L. Inputs must be f64. `eps` 1e-6 balances truncation (eps^2 ~ 1e-12) against
// cancellation (1e-16 / eps ~ 1e-10); the tolerance covers both.
inline void check_gradients(const GraphBuilder& build, const std::vector<Tensor>& inputs, const std::string& what,
                            double eps = 1e-6, double atol = 1e-6, double rtol = 1e-5, uint64_t seed = 0) {
  Graph g;
  const std::vector<Value> vin = graph_inputs(g, inputs, true);
  Value out = build(g, vin);
  REQUIRE(out.dtype() == DType::f64);
  Value w = g.input("w", out.meta());
  Gradients grads = gradients(out, w);
  std::vector<Value> outputs{out};
  std::vector<int> grad_index(inputs.size(), -1);
  for (size_t i = 0; i < inputs.size(); ++i) {
    Value gi = grads.get(vin[i]);
    if (gi.defined()) {
      grad_index[i] = static_cast<int>(outputs.size());
      outputs.push_back(gi);
    }
  }
  auto store = std::make_shared<ParamStore>(g);
  ExecutorOptions opt;
  opt.seed = seed;
  Executor ex(g, outputs, grads, store, opt);
  const Tensor wt = random_tensor(out.shape(), 0xC0FFEE, -1, 1, DType::f64);
  ex.bind(w, wt);
  std::vector<Tensor> cur;
  for (size_t i = 0; i < inputs.size(); ++i) {
    cur.push_back(inputs[i].clone());
    ex.bind(vin[i], cur[i]);
  }
  ex.run();
  std::vector<std::vector<double>> analytic(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i)
    if (grad_index[i] >= 0) analytic[i] = ex.get(outputs[static_cast<size_t>(grad_index[i])]).to_doubles();

  // Forward-only executor for the differences (the same random stream position each time).
  const auto wv = wt.to_doubles();
  auto loss_at = [&](const std::vector<Tensor>& xs) {
    Tensor o = run_graph(build, xs, seed);
    const auto ov = o.to_doubles();
    double l = 0;
    for (size_t j = 0; j < ov.size(); ++j) l += ov[j] * wv[j];
    return l;
  };
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i].dtype() != DType::f64) continue;
    std::vector<double> numeric(static_cast<size_t>(inputs[i].numel()));
    double* p = cur[i].data<double>();
    for (size_t j = 0; j < numeric.size(); ++j) {
      const double x0 = p[j];
      p[j] = x0 + eps;
      const double lp = loss_at(cur);
      p[j] = x0 - eps;
      const double lm = loss_at(cur);
      p[j] = x0;
      numeric[j] = (lp - lm) / (2 * eps);
    }
    if (analytic[i].empty()) analytic[i].assign(numeric.size(), 0.0);  // no gradient flows: must be zero
    check_close(analytic[i], numeric, atol, rtol, what + ": d/d input " + std::to_string(i));
  }
}

// Whether `s` contains `part` (error messages, reasons, logs).
inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Sets an environment variable for a scope and restores it.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      setenv(name, value, 1);
    else
      unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_)
      setenv(name_, old_->c_str(), 1);
    else
      unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace xfr::testing

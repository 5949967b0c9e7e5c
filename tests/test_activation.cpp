// Activations: forward and backward kernels of every kind against float64 formulas (torch's definitions),
// derivatives at the kinks, star_relu with its learnable scale and bias, gradients by finite differences,
// the name parser and errors.
#include <algorithm>
#include <cmath>

#include "ops/activation.h"
#include "runtime/cpu/threadpool.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

const double kPi = 3.14159265358979323846;

// f(x) and f'(x) in float64, written from the definitions.
double ref_f(ActivationKind k, const ActivationParams& p, double x) {
  switch (k) {
    case ActivationKind::relu: return x > 0 ? x : 0;
    case ActivationKind::gelu: return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
    case ActivationKind::gelu_tanh:
      return 0.5 * x * (1 + std::tanh(std::sqrt(2 / kPi) * (x + 0.044715 * x * x * x)));
    case ActivationKind::leaky_relu: return x > 0 ? x : p.negative_slope * x;
    case ActivationKind::squared_relu: return x > 0 ? x * x : 0;
    case ActivationKind::smelu:
      return x <= -p.beta ? 0 : x >= p.beta ? x : (x + p.beta) * (x + p.beta) / (4 * p.beta);
    case ActivationKind::silu: return x / (1 + std::exp(-x));
    case ActivationKind::sigmoid: return 1 / (1 + std::exp(-x));
    case ActivationKind::star_relu: break;
  }
  return NAN;
}

double ref_df(ActivationKind k, const ActivationParams& p, double x) {
  switch (k) {
    case ActivationKind::relu: return x > 0 ? 1 : 0;
    case ActivationKind::gelu:
      return 0.5 * (1 + std::erf(x / std::sqrt(2.0))) + x * std::exp(-x * x / 2) / std::sqrt(2 * kPi);
    case ActivationKind::gelu_tanh: {
      const double u = std::sqrt(2 / kPi) * (x + 0.044715 * x * x * x);
      const double du = std::sqrt(2 / kPi) * (1 + 3 * 0.044715 * x * x);
      const double t = std::tanh(u);
      return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du;
    }
    case ActivationKind::leaky_relu: return x > 0 ? 1 : p.negative_slope;
    case ActivationKind::squared_relu: return x > 0 ? 2 * x : 0;
    case ActivationKind::smelu: return x <= -p.beta ? 0 : x >= p.beta ? 1 : (x + p.beta) / (2 * p.beta);
    case ActivationKind::silu: {
      const double s = 1 / (1 + std::exp(-x));
      return s * (1 + x * (1 - s));
    }
    case ActivationKind::sigmoid: {
      const double s = 1 / (1 + std::exp(-x));
      return s * (1 - s);
    }
    case ActivationKind::star_relu: break;
  }
  return NAN;
}

const ActivationKind kKinds[] = {ActivationKind::relu,         ActivationKind::gelu,  ActivationKind::gelu_tanh,
                                 ActivationKind::leaky_relu,   ActivationKind::squared_relu,
                                 ActivationKind::smelu,        ActivationKind::silu,  ActivationKind::sigmoid};

// x values: random in [-8, 8] with the special points 0, +-1, +-beta and far tails placed at the front.
Tensor activation_input(int64_t n, uint64_t seed, DType dt) {
  Tensor x = random_tensor({n}, seed, -8, 8, DType::f64);
  const double special[] = {0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 30.0, -30.0, 1e-3, -1e-3};
  double* p = x.data<double>();
  for (int64_t i = 0; i < std::min<int64_t>(n, 11); ++i) p[i] = special[i];
  return x.to(dt);
}

}  // namespace

TEST_CASE("activation: forward and backward of every kind against float64 at awkward sizes") {
  for (ActivationKind k : kKinds)
    for (const ActivationParams& p : {ActivationParams{}, ActivationParams{0.2, 0.5}})
      for (int64_t n : {1, 31, 33, 257, 40000})
        for (DType dt : {DType::f32, DType::f64}) {
          const Tensor x = activation_input(n, 70 + n, dt);
          const Tensor dy = random_tensor({n}, 71, -1, 1, dt);
          const auto xv = x.to_doubles(), dyv = dy.to_doubles();
          std::vector<double> ry, rdx;
          for (size_t i = 0; i < xv.size(); ++i) {
            ry.push_back(ref_f(k, p, xv[i]));
            rdx.push_back(dyv[i] * ref_df(k, p, xv[i]));
          }
          const std::string what = std::string(activation_name(k)) + " " + ActivationOp(k, p).attrs() + " " + x.desc();
          for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &test_pool()}) {
            const Tensor y = run_op(ActivationOp(k, p), {x}, pool)[0];
            // x spans [-30, 30]: squared_relu reaches 900, where f32's relative tolerance applies.
            check_close(y, ry, what + " y");
            const Tensor dx = run_op(ActivationBackwardOp(k, p), {x, dy}, pool)[0];
            check_close(dx, rdx, what + " dx");
          }
        }
}

TEST_CASE("activation: derivatives at the kinks follow torch") {
  for (DType dt : {DType::f32, DType::f64}) {
    const Tensor x = Tensor::zeros({1}, dt), dy = Tensor::full({1}, 1.0, dt);
    CHECK(run_op(ActivationBackwardOp(ActivationKind::relu), {x, dy})[0].item() == 0.0);
    CHECK(run_op(ActivationBackwardOp(ActivationKind::leaky_relu, {0.25, 2.0}), {x, dy})[0].item() == 0.25);
    CHECK(run_op(ActivationBackwardOp(ActivationKind::squared_relu), {x, dy})[0].item() == 0.0);
    CHECK(run_op(ActivationOp(ActivationKind::gelu), {x})[0].item() == 0.0);
    CHECK(run_op(ActivationOp(ActivationKind::sigmoid), {x})[0].item() == 0.5);
    // smelu: continuous value and slope at both ends of the quadratic piece (beta = 2).
    const Tensor ends = Tensor::from_vector(std::vector<double>{-2.0, 2.0}, {2}).to(dt);
    const auto ye = run_op(ActivationOp(ActivationKind::smelu), {ends})[0].to_doubles();
    CHECK(ye[0] == 0.0);
    CHECK(ye[1] == 2.0);
    const Tensor ones = Tensor::full({2}, 1.0, dt);
    const auto de = run_op(ActivationBackwardOp(ActivationKind::smelu), {ends, ones})[0].to_doubles();
    CHECK(de[0] == 0.0);
    CHECK(de[1] == 1.0);
  }
}

TEST_CASE("activation: gradients of every kind by finite differences (float64)") {
  for (ActivationKind k : kKinds) {
    // Away from the kinks of relu-like kinds (|x| >= 0.05, eps = 1e-6), where they are not differentiable.
    Tensor x = random_tensor({4, 9}, 80, -3, 3, DType::f64);
    double* p = x.data<double>();
    for (int64_t i = 0; i < x.numel(); ++i)
      if (std::abs(p[i]) < 0.05) p[i] += 0.1;
    check_gradients([k](Graph&, const std::vector<Value>& v) { return activation(v[0], k); }, {x},
                    std::string("activation ") + activation_name(k));
  }
  check_gradients([](Graph&, const std::vector<Value>& v) { return leaky_relu(v[0], 0.3); },
                  {random_tensor({31}, 81, -3, 3, DType::f64)}, "leaky_relu 0.3");
  check_gradients([](Graph&, const std::vector<Value>& v) { return smelu(v[0], 0.7); },
                  {random_tensor({31}, 82, -3, 3, DType::f64)}, "smelu 0.7");
}

TEST_CASE("star_relu: forward, backward and gradients of x, scale and bias") {
  for (int64_t n : {1, 31, 33, 257, 100003})
    for (DType dt : {DType::f32, DType::f64}) {
      const Tensor x = random_tensor({n}, 90, -3, 3, dt), dy = random_tensor({n}, 91, -1, 1, dt);
      const Tensor s = Tensor::full({1}, 0.8944, dt), b = Tensor::full({1}, -0.4472, dt);
      const auto xv = x.to_doubles(), dyv = dy.to_doubles();
      const double sv = s.item(), bv = b.item();
      std::vector<double> ry, rdx;
      double rds = 0, rdb = 0;
      for (size_t i = 0; i < xv.size(); ++i) {
        const double r = xv[i] > 0 ? xv[i] : 0;
        ry.push_back(sv * r * r + bv);
        rdx.push_back(dyv[i] * 2 * sv * r);
        rds += dyv[i] * r * r;
        rdb += dyv[i];
      }
      for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &test_pool()}) {
        check_close(run_op(StarReluOp(), {x, s, b}, pool)[0], ry, "star_relu y " + x.desc());
        const auto g = run_op(StarReluBackwardOp(), {x, s, dy}, pool);
        check_close(g[0], rdx, "star_relu dx " + x.desc());
        // dscale and dbias sum up to 1e5 terms of size ~1: absolute error grows with the sum's size.
        check_close(g[1], {rds}, "star_relu dscale " + x.desc(), 100.0);
        check_close(g[2], {rdb}, "star_relu dbias " + x.desc(), 100.0);
      }
    }
  check_gradients([](Graph&, const std::vector<Value>& v) { return star_relu(v[0], v[1], v[2]); },
                  {random_tensor({3, 7}, 92, -3, 3, DType::f64), Tensor::full({1}, 0.8944, DType::f64),
                   Tensor::full({1}, -0.4472, DType::f64)},
                  "star_relu");
  // bias shaped (1, 1): its gradient is reshaped to match.
  check_gradients([](Graph&, const std::vector<Value>& v) { return star_relu(v[0], v[1], v[2]); },
                  {random_tensor({2, 5}, 93, -3, 3, DType::f64), Tensor::full({1}, 1.3, DType::f64),
                   Tensor::full({1, 1}, 0.2, DType::f64)},
                  "star_relu bias (1, 1)");
}

TEST_CASE("activation: activation_by_name and errors") {
  for (ActivationKind k : kKinds) CHECK(activation_by_name(activation_name(k)).kind == k);
  CHECK(activation_by_name("star_relu").kind == ActivationKind::star_relu);
  try {
    activation_by_name("swish");
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "activation");
    CHECK(e.message() ==
          "unknown activation 'swish' (known: relu, gelu, gelu_tanh, leaky_relu, squared_relu, smelu, silu, sigmoid, "
          "star_relu)");
  }
  CHECK_THROWS_AS(activation_by_name("GELU"), Error);  // names are exact
  const Tensor x = Tensor::zeros({3, 4});
  CHECK_THROWS_AS(run_op(ActivationOp(ActivationKind::star_relu), {x}), Error);
  CHECK_THROWS_AS(run_op(ActivationOp(ActivationKind::smelu, {0.01, 0.0}), {x}), Error);
  CHECK_THROWS_AS(run_op(ActivationOp(ActivationKind::relu), {Tensor::zeros({3}, DType::i32)}), Error);
  try {
    run_op(ActivationBackwardOp(ActivationKind::gelu), {x, Tensor::zeros({4, 3})});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "activation_backward");
    CHECK(std::string(e.what()).find("(3, 4)") != std::string::npos);
    CHECK(std::string(e.what()).find("(4, 3)") != std::string::npos);
  }
  try {
    run_op(StarReluOp(), {x, Tensor::zeros({2}), Tensor::zeros({1})});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "star_relu");
    CHECK(std::string(e.what()).find("(2,)") != std::string::npos);
  }
  CHECK_THROWS_AS(run_op(StarReluOp(), {x, Tensor::zeros({1}, DType::f64), Tensor::zeros({1})}), Error);
  Graph g;
  Value gx = g.input("x", TensorMeta{{3, 4}, DType::f32});
  CHECK_THROWS_AS(activation(gx, activation_by_name("star_relu")), Error);
}

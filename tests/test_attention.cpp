// Scaled-dot-product attention (composite): float64 reference, masks, causal leakage, gradients.
#include <cmath>
#include <limits>

#include "ops/attention.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

// Naive attention in double: q (Z, Sq, D), k (Z, Sk, D), v (Z, Sk, Dv), mask (Sq, Sk) or empty.
std::vector<double> ref_attention(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<double>& mask,
                                  bool causal, double scale) {
  const auto Q = q.to_doubles(), K = k.to_doubles(), V = v.to_doubles();
  const int64_t Sq = q.dim(-2), D = q.dim(-1), Sk = k.dim(-2), Dv = v.dim(-1), Z = q.numel() / (Sq * D);
  std::vector<double> out(static_cast<size_t>(Z * Sq * Dv), 0.0);
  for (int64_t z = 0; z < Z; ++z)
    for (int64_t i = 0; i < Sq; ++i) {
      std::vector<double> s(static_cast<size_t>(Sk));
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < Sk; ++j) {
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += Q[(z * Sq + i) * D + d] * K[(z * Sk + j) * D + d];
        s[j] = scale * dot + (mask.empty() ? 0.0 : mask[i * Sk + j]);
        if (causal && j > i) s[j] = -std::numeric_limits<double>::infinity();
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      for (auto& e : s) sum += (e = std::exp(e - mx));
      for (int64_t j = 0; j < Sk; ++j)
        for (int64_t d = 0; d < Dv; ++d) out[(z * Sq + i) * Dv + d] += s[j] / sum * V[(z * Sk + j) * Dv + d];
    }
  return out;
}

}  // namespace

TEST_CASE("attention: composite SDPA against float64 (causal, additive mask, Sq != Sk, awkward sizes)") {
  struct Case { int64_t B, H, Sq, Sk, D, Dv; bool causal, masked; };
  for (const Case c : {Case{1, 1, 1, 1, 8, 8, false, false}, Case{2, 3, 17, 17, 16, 16, true, false},
                       Case{1, 2, 31, 33, 40, 24, false, true}, Case{2, 2, 33, 31, 8, 8, true, true}}) {
    for (DType dt : {DType::f32, DType::f64}) {
      const Tensor q = random_tensor({c.B, c.H, c.Sq, c.D}, 1, -1, 1, dt);
      const Tensor k = random_tensor({c.B, c.H, c.Sk, c.D}, 2, -1, 1, dt);
      const Tensor v = random_tensor({c.B, c.H, c.Sk, c.Dv}, 3, -1, 1, dt);
      const Tensor mask = random_tensor({c.Sq, c.Sk}, 4, -2, 0, dt);
      AttentionOptions o;
      o.causal = c.causal;
      const Tensor out = run_graph([&](Graph&, const std::vector<Value>& in) {
        return scaled_dot_product_attention(in[0], in[1], in[2], c.masked ? in[3] : Value{}, o);
      }, {q, k, v, mask});
      check_close(out, ref_attention(q, k, v, c.masked ? mask.to_doubles() : std::vector<double>{}, c.causal,
                                     1.0 / std::sqrt(static_cast<double>(c.D))),
                  "sdpa Sq=" + std::to_string(c.Sq) + " Sk=" + std::to_string(c.Sk));
    }
  }
}

TEST_CASE("attention: gradients of q, k, v and the mask by finite differences (float64)") {
  AttentionOptions o;
  o.causal = true;
  o.scale = 0.3;
  check_gradients([&](Graph&, const std::vector<Value>& in) {
    return scaled_dot_product_attention(in[0], in[1], in[2], in[3], o);
  }, {random_tensor({1, 2, 5, 4}, 1, -1, 1, DType::f64), random_tensor({1, 2, 6, 4}, 2, -1, 1, DType::f64),
      random_tensor({1, 2, 6, 3}, 3, -1, 1, DType::f64), random_tensor({5, 6}, 4, -1, 0, DType::f64)},
                  "sdpa");
  o.causal = false;
  o.dropout = 0.25;  // backward replays the forward's Philox numbers, so differences still agree
  check_gradients([&](Graph&, const std::vector<Value>& in) {
    return scaled_dot_product_attention(in[0], in[1], in[2], Value{}, o);
  }, {random_tensor({2, 4, 3}, 5, -1, 1, DType::f64), random_tensor({2, 5, 3}, 6, -1, 1, DType::f64),
      random_tensor({2, 5, 2}, 7, -1, 1, DType::f64)},
                  "sdpa with dropout", 1e-6, 1e-6, 1e-5, /*seed=*/1234);
}

TEST_CASE("attention: causal leakage: changing token t never changes outputs before t") {
  const int64_t S = 19, D = 8;
  AttentionOptions o;
  o.causal = true;
  auto run = [&](const Tensor& q, const Tensor& k, const Tensor& v) {
    return run_graph([&](Graph&, const std::vector<Value>& in) {
      return scaled_dot_product_attention(in[0], in[1], in[2], Value{}, o);
    }, {q, k, v}).to_doubles();
  };
  const Tensor q = random_tensor({1, 2, S, D}, 1), k = random_tensor({1, 2, S, D}, 2), v = random_tensor({1, 2, S, D}, 3);
  const auto base = run(q, k, v);
  for (int64_t t : {0L, 7L, S - 1}) {
    Tensor k2 = k.clone(), v2 = v.clone();
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t d = 0; d < D; ++d) {
        k2.data<float>()[(h * S + t) * D + d] += 5.0f;
        v2.data<float>()[(h * S + t) * D + d] -= 3.0f;
      }
    const auto changed = run(q, k2, v2);
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t i = 0; i < S; ++i)
        for (int64_t d = 0; d < D; ++d) {
          const size_t idx = static_cast<size_t>((h * S + i) * D + d);
          if (i < t) CHECK(changed[idx] == base[idx]);
        }
  }
}

TEST_CASE("attention: invalid shapes and options name the op") {
  Graph g;
  const Value q = g.input("q", TensorMeta{{2, 4, 8}, DType::f32});
  const Value k = g.input("k", TensorMeta{{2, 5, 6}, DType::f32});
  const Value v = g.input("v", TensorMeta{{2, 5, 8}, DType::f32});
  try {
    scaled_dot_product_attention(q, k, v, Value{}, {});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "scaled_dot_product_attention");
  }
  AttentionOptions o;
  o.dropout = 1.0;
  CHECK_THROWS_AS(scaled_dot_product_attention(q, q, v.graph->input("v2", TensorMeta{{2, 4, 8}, DType::f32}), Value{}, o),
                  Error);
}

// flash_attention (ops/flash_attention.h): the CPU kernels against a float64 naive attention (awkward sizes,
// Sq != Sk, causal, GQA/MQA, dropout regenerated from the same Philox numbers) and against the composite SDPA
// (ops/attention.h; the same dropout mask); the backward kernel against a float64 textbook backward; gradients
// by finite differences in float64 (out and lse); causal leakage; shape errors. CUDA: forward (out, lse) and
// backward (dq, dk, dv) against the CPU kernel in f32 on the same rounded inputs, bf16/f16/f32, awkward shapes,
// dropout masks equal to the CPU's.
#include <algorithm>
#include <cmath>
#include <limits>

#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/flash_attention.h"
#include "ops/grad.h"
#include "ops/matmul.h"
#include "ops/reduce.h"
#include "ops/softmax.h"
#include "runtime/device_context.h"
#include "runtime/rng.h"
#include "tests/cuda_testing.h"
#include "tests/flash_attention_testing.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

struct Case {
  int64_t B, H, Hk, Sq, Sk, D;
  bool causal;
};

std::string case_name(const Case& c) {
  return str_cat("B=", c.B, " H=", c.H, " Hk=", c.Hk, " Sq=", c.Sq, " Sk=", c.Sk, " D=", c.D,
                 c.causal ? " causal" : "");
}

// Dropout of the reference: the op's contract, philox_uniform(seed, element) >= p (ops/dropout.h), written
// independently of the kernels' integer threshold.
struct DropRef {
  double p = 0.0;
  uint64_t seed = 0, offset = 0;
  // Z / (1 - p) of element (b, h, i, j).
  double factor(const Case& c, int64_t b, int64_t h, int64_t i, int64_t j) const {
    if (p == 0.0) return 1.0;
    const uint64_t e = offset + static_cast<uint64_t>(((b * c.H + h) * c.Sq + i) * c.Sk + j);
    return static_cast<double>(philox_uniform(seed, e)) >= p ? 1.0 / (1.0 - p) : 0.0;
  }
};

struct Inputs {
  Tensor q, k, v;
};

// q, k, v uniform in [-lim, lim] (lim 1.5 gives peaked and flat softmax rows at scale 1/sqrt(D)).
Inputs make_inputs(const Case& c, uint64_t seed, DType dt = DType::f32, double lim = 1.5) {
  return {random_tensor({c.B, c.H, c.Sq, c.D}, seed, -lim, lim, dt),
          random_tensor({c.B, c.Hk, c.Sk, c.D}, seed + 1, -lim, lim, dt),
          random_tensor({c.B, c.Hk, c.Sk, c.D}, seed + 2, -lim, lim, dt)};
}

// The probabilities P[i, j] of head (b, h) in double (0 for hidden keys), and lse.
void ref_probs(const Case& c, const std::vector<double>& Q, const std::vector<double>& K, double scale, int64_t b,
               int64_t h, std::vector<double>& P, std::vector<double>& lse) {
  const int64_t hk = h / (c.H / c.Hk);
  P.assign(static_cast<size_t>(c.Sq * c.Sk), 0.0);
  lse.assign(static_cast<size_t>(c.Sq), -std::numeric_limits<double>::infinity());
  for (int64_t i = 0; i < c.Sq; ++i) {
    std::vector<double> s(static_cast<size_t>(c.Sk), -std::numeric_limits<double>::infinity());
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < c.Sk; ++j) {
      if (c.causal && j > i) continue;
      double dot = 0;
      for (int64_t d = 0; d < c.D; ++d)
        dot += Q[static_cast<size_t>(((b * c.H + h) * c.Sq + i) * c.D + d)] *
               K[static_cast<size_t>(((b * c.Hk + hk) * c.Sk + j) * c.D + d)];
      s[static_cast<size_t>(j)] = scale * dot;
      mx = std::max(mx, s[static_cast<size_t>(j)]);
    }
    if (mx == -std::numeric_limits<double>::infinity()) continue;  // nothing visible
    double sum = 0;
    for (int64_t j = 0; j < c.Sk; ++j) sum += std::exp(s[static_cast<size_t>(j)] - mx);
    lse[static_cast<size_t>(i)] = mx + std::log(sum);
    for (int64_t j = 0; j < c.Sk; ++j)
      P[static_cast<size_t>(i * c.Sk + j)] = std::exp(s[static_cast<size_t>(j)] - mx) / sum;
  }
}

struct RefForward {
  std::vector<double> out, lse;
};

RefForward ref_forward(const Case& c, const Inputs& in, double scale, const DropRef& drop = {}) {
  const auto Q = in.q.to_doubles(), K = in.k.to_doubles(), V = in.v.to_doubles();
  RefForward r;
  r.out.assign(static_cast<size_t>(c.B * c.H * c.Sq * c.D), 0.0);
  std::vector<double> P, lse;
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.H; ++h) {
      ref_probs(c, Q, K, scale, b, h, P, lse);
      const int64_t hk = h / (c.H / c.Hk);
      for (int64_t i = 0; i < c.Sq; ++i) {
        r.lse.push_back(lse[static_cast<size_t>(i)]);
        for (int64_t j = 0; j < c.Sk; ++j) {
          const double pd = P[static_cast<size_t>(i * c.Sk + j)] * drop.factor(c, b, h, i, j);
          for (int64_t d = 0; d < c.D; ++d)
            r.out[static_cast<size_t>(((b * c.H + h) * c.Sq + i) * c.D + d)] +=
                pd * V[static_cast<size_t>(((b * c.Hk + hk) * c.Sk + j) * c.D + d)];
        }
      }
    }
  return r;
}

struct RefBackward {
  std::vector<double> dq, dk, dv;
};

// The textbook backward of out = (P * Z / (1 - p)) V, P = softmax(scale q k^T), plus dlse (may be empty):
// dS[i, j] = P[i, j] (dP[i, j] - sum_k P[i, k] dP[i, k]) + dlse[i] P[i, j], dP = Z / (1 - p) dout v^T.
RefBackward ref_backward(const Case& c, const Inputs& in, const std::vector<double>& dout,
                         const std::vector<double>& dlse, double scale, const DropRef& drop = {}) {
  const auto Q = in.q.to_doubles(), K = in.k.to_doubles(), V = in.v.to_doubles();
  RefBackward r;
  r.dq.assign(static_cast<size_t>(c.B * c.H * c.Sq * c.D), 0.0);
  r.dk.assign(static_cast<size_t>(c.B * c.Hk * c.Sk * c.D), 0.0);
  r.dv.assign(r.dk.size(), 0.0);
  std::vector<double> P, lse, dP(static_cast<size_t>(c.Sk));
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.H; ++h) {
      ref_probs(c, Q, K, scale, b, h, P, lse);
      const int64_t hk = h / (c.H / c.Hk);
      auto qi = [&](int64_t i, int64_t d) { return static_cast<size_t>(((b * c.H + h) * c.Sq + i) * c.D + d); };
      auto kj = [&](int64_t j, int64_t d) { return static_cast<size_t>(((b * c.Hk + hk) * c.Sk + j) * c.D + d); };
      for (int64_t i = 0; i < c.Sq; ++i) {
        double sum_pdp = 0;
        for (int64_t j = 0; j < c.Sk; ++j) {
          const double z = drop.factor(c, b, h, i, j), pij = P[static_cast<size_t>(i * c.Sk + j)];
          double dpd = 0;
          for (int64_t d = 0; d < c.D; ++d) {
            dpd += dout[qi(i, d)] * V[kj(j, d)];
            r.dv[kj(j, d)] += pij * z * dout[qi(i, d)];
          }
          dP[static_cast<size_t>(j)] = z * dpd;
          sum_pdp += pij * dP[static_cast<size_t>(j)];
        }
        const double dl = dlse.empty() ? 0.0 : dlse[static_cast<size_t>((b * c.H + h) * c.Sq + i)];
        for (int64_t j = 0; j < c.Sk; ++j) {
          const double pij = P[static_cast<size_t>(i * c.Sk + j)];
          const double ds = pij * (dP[static_cast<size_t>(j)] - sum_pdp) + dl * pij;
          for (int64_t d = 0; d < c.D; ++d) {
            r.dq[qi(i, d)] += scale * ds * K[kj(j, d)];
            r.dk[kj(j, d)] += scale * ds * Q[qi(i, d)];
          }
        }
      }
    }
  return r;
}

std::vector<Tensor> run_fa(const Case& c, const Inputs& in, double scale, double p = 0.0, uint64_t seed = 0,
                           uint64_t offset = 0) {
  const FlashAttentionOp op(scale, c.causal, p);
  return run_op(op, {in.q, in.k, in.v}, &test_pool(), seed, offset);
}

}  // namespace

// =========================================================================================================
// CPU
// =========================================================================================================

TEST_CASE("flash_attention: CPU forward against float64 (awkward S and D, Sq != Sk, causal, GQA, MQA)") {
  const std::vector<Case> cases = {
      {1, 1, 1, 1, 1, 40, false},   {2, 2, 2, 17, 17, 64, true},   {1, 4, 2, 17, 127, 80, false},
      {1, 2, 1, 127, 17, 40, true}, {1, 3, 3, 127, 127, 64, true}, {2, 4, 1, 33, 65, 80, true},
      {1, 2, 2, 1, 127, 64, true},  {1, 2, 2, 127, 1, 40, true},   {1, 1, 1, 70, 70, 3, false}};
  for (const Case& c : cases)
    for (DType dt : {DType::f64, DType::f32}) {
      CAPTURE(case_name(c));
      const Inputs in = make_inputs(c, 11, dt);
      const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
      const auto got = run_fa(c, in, scale);
      REQUIRE(got.size() == 2);
      CHECK(got[0].dtype() == dt);
      CHECK(got[1].dtype() == (dt == DType::f64 ? DType::f64 : DType::f32));
      CHECK(got[1].shape() == Shape{c.B, c.H, c.Sq});
      const RefForward ref = ref_forward(c, in, scale);
      const FaTol tol = fa_tolerance(dt);
      check_close(got[0].to_doubles(), ref.out, tol.out_atol, tol.out_rtol, case_name(c) + " out " + dtype_name(dt));
      check_close(got[1].to_doubles(), ref.lse, tol.lse_atol, 0.0, case_name(c) + " lse " + dtype_name(dt));
    }
}

TEST_CASE("flash_attention: CPU equals the composite SDPA, dropout mask included") {
  for (const Case c : {Case{2, 3, 3, 17, 17, 40, true}, Case{1, 2, 2, 31, 65, 64, false},
                       Case{1, 2, 2, 65, 31, 80, true}}) {
    for (double p : {0.0, 0.3}) {
      CAPTURE(case_name(c));
      CAPTURE(p);
      const Inputs in = make_inputs(c, 21);
      const double scale = 0.7 / std::sqrt(static_cast<double>(c.D));
      AttentionOptions o;
      o.causal = c.causal;
      o.dropout = p;
      o.scale = scale;
      const uint64_t seed = 99;
      // The composite's dropout node is its graph's only random node: its slice starts at offset 0, and its
      // element ((b H + h) Sq + i) Sk + j is this op's element (b, h, i, j) at offset 0.
      const Tensor sdpa = run_graph([&](Graph&, const std::vector<Value>& v) {
        return scaled_dot_product_attention(v[0], v[1], v[2], Value{}, o);
      }, {in.q, in.k, in.v}, seed);
      const auto fa = run_fa(c, in, scale, p, seed, 0);
      check_close(fa[0].to_doubles(), sdpa.to_doubles(), 2e-5, 1e-4, case_name(c) + " vs composite");
    }
  }
}

TEST_CASE("flash_attention: CPU dropout against a float64 reference drawing the same Philox numbers") {
  // Offsets 0 and 6 (not a multiple of 4: every Philox lane position occurs at a row start).
  const Case c{2, 2, 1, 37, 29, 40, true};
  for (uint64_t offset : {uint64_t{0}, uint64_t{6}}) {
    const Inputs in = make_inputs(c, 31, DType::f64);
    const double scale = 0.2;
    const DropRef drop{0.25, 1234, offset};
    const auto got = run_fa(c, in, scale, drop.p, drop.seed, drop.offset);
    const RefForward ref = ref_forward(c, in, scale, drop);
    check_close(got[0].to_doubles(), ref.out, 1e-12, 1e-10, "dropout out");
    check_close(got[1].to_doubles(), ref.lse, 1e-12, 1e-10, "dropout lse (before dropout)");
    // A dropped element really is dropped: out differs from the no-dropout result.
    const RefForward plain = ref_forward(c, in, scale);
    double diff = 0;
    for (size_t i = 0; i < plain.out.size(); ++i) diff = std::max(diff, std::abs(plain.out[i] - ref.out[i]));
    CHECK(diff > 0.1);

    const auto dout = random_tensor({c.B, c.H, c.Sq, c.D}, 77, -1, 1, DType::f64);
    const FlashAttentionBackwardOp bop(scale, c.causal, drop.p, false);
    const auto g = run_op(bop, {in.q, in.k, in.v, got[0], dout, got[1]}, &test_pool(), drop.seed, drop.offset);
    const RefBackward rb = ref_backward(c, in, dout.to_doubles(), {}, scale, drop);
    check_scaled(g[0].to_doubles(), rb.dq, 1e-11, 1e-9, "dropout dq");
    check_scaled(g[1].to_doubles(), rb.dk, 1e-11, 1e-9, "dropout dk");
    check_scaled(g[2].to_doubles(), rb.dv, 1e-11, 1e-9, "dropout dv");
  }
}

TEST_CASE("flash_attention: CPU backward against the float64 textbook backward (GQA sums, dlse)") {
  const std::vector<Case> cases = {{1, 1, 1, 1, 1, 40, false},   {2, 4, 2, 17, 33, 64, true},
                                   {1, 3, 1, 127, 17, 80, false}, {1, 2, 2, 33, 127, 40, true}};
  for (const Case& c : cases)
    for (DType dt : {DType::f64, DType::f32})
      for (bool with_dlse : {false, true}) {
        CAPTURE(case_name(c));
        CAPTURE(with_dlse);
        const Inputs in = make_inputs(c, 41, dt);
        const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
        const auto fwd = run_fa(c, in, scale);
        const Tensor dout = random_tensor({c.B, c.H, c.Sq, c.D}, 42, -1, 1, dt);
        const Tensor dlse = random_tensor({c.B, c.H, c.Sq}, 43, -1, 1, fwd[1].dtype());
        std::vector<Tensor> bin{in.q, in.k, in.v, fwd[0], dout, fwd[1]};
        if (with_dlse) bin.push_back(dlse);
        const auto g = run_op(FlashAttentionBackwardOp(scale, c.causal, 0.0, with_dlse), bin, &test_pool());
        REQUIRE(g.size() == 3);
        CHECK(g[1].shape() == Shape{c.B, c.Hk, c.Sk, c.D});
        const RefBackward rb =
            ref_backward(c, in, dout.to_doubles(), with_dlse ? dlse.to_doubles() : std::vector<double>{}, scale);
        const FaTol tol = fa_tolerance(dt);
        const std::string w = case_name(c) + " " + dtype_name(dt);
        check_scaled(g[0].to_doubles(), rb.dq, tol.grad_rel, tol.grad_rtol, w + " dq", dt == DType::f32 ? 1.0 : 1e-6);
        check_scaled(g[1].to_doubles(), rb.dk, tol.grad_rel, tol.grad_rtol, w + " dk", dt == DType::f32 ? 1.0 : 1e-6);
        check_scaled(g[2].to_doubles(), rb.dv, tol.grad_rel, tol.grad_rtol, w + " dv", dt == DType::f32 ? 1.0 : 1e-6);
      }
}

TEST_CASE("flash_attention: gradients by finite differences (float64; causal GQA, dropout, lse)") {
  const auto q = random_tensor({1, 4, 5, 6}, 1, -1, 1, DType::f64);
  const auto k = random_tensor({1, 2, 7, 6}, 2, -1, 1, DType::f64);
  const auto v = random_tensor({1, 2, 7, 6}, 3, -1, 1, DType::f64);
  check_gradients([](Graph&, const std::vector<Value>& in) {
    return flash_attention(in[0], in[1], in[2], 0.4, true).out;
  }, {q, k, v}, "flash_attention causal GQA");
  // Dropout: the backward node replays the forward's Philox slice, so differences of the loss agree.
  check_gradients([](Graph&, const std::vector<Value>& in) {
    return flash_attention(in[0], in[1], in[2], 0.4, false, 0.3).out;
  }, {q, k, v}, "flash_attention dropout", 1e-6, 1e-6, 1e-5, /*seed=*/77);
  // Only lse reaches the loss (the backward fills a zero dout); then both outputs.
  check_gradients([](Graph&, const std::vector<Value>& in) {
    return flash_attention(in[0], in[1], in[2], 0.4, true).lse;
  }, {q, k, v}, "flash_attention lse");
  check_gradients([](Graph&, const std::vector<Value>& in) {
    const auto r = flash_attention(in[0], in[1], in[2], 0.4, false);
    return add(r.out, reshape(r.lse, {1, 4, 5, 1}));  // lse broadcast over the head dim
  }, {q, k, v}, "flash_attention out + lse");
}

TEST_CASE("flash_attention: causal leakage: changing key/value t never changes outputs before t") {
  const Case c{1, 2, 1, 40, 40, 16, true};
  const Inputs in = make_inputs(c, 51);
  const auto base = run_fa(c, in, 0.3);
  const auto bo = base[0].to_doubles(), bl = base[1].to_doubles();
  for (int64_t t : {int64_t{0}, int64_t{17}, int64_t{39}}) {
    Inputs changed{in.q, in.k.clone(), in.v.clone()};
    for (int64_t d = 0; d < c.D; ++d) {
      changed.k.data<float>()[t * c.D + d] += 4.0f;
      changed.v.data<float>()[t * c.D + d] -= 3.0f;
    }
    const auto r = run_fa(c, changed, 0.3);
    const auto o = r[0].to_doubles(), l = r[1].to_doubles();
    bool before_same = true, at_changed = false;
    for (int64_t h = 0; h < c.H; ++h)
      for (int64_t i = 0; i < c.Sq; ++i) {
        const size_t row = static_cast<size_t>(h * c.Sq + i);
        for (int64_t d = 0; d < c.D; ++d) {
          const size_t e = row * static_cast<size_t>(c.D) + static_cast<size_t>(d);
          if (i < t) before_same &= o[e] == bo[e];
          if (i == t) at_changed |= o[e] != bo[e];
        }
        if (i < t) before_same &= l[row] == bl[row];
      }
    CHECK_MESSAGE(before_same, "t=" << t);
    CHECK_MESSAGE(at_changed, "t=" << t);
  }
}

TEST_CASE("flash_attention: no visible key (Sk = 0) gives out 0, lse -inf and zero gradients") {
  const Case c{1, 2, 2, 3, 0, 8, false};
  const Inputs in = make_inputs(c, 61);
  const auto r = run_fa(c, in, 0.5);
  for (double x : r[0].to_doubles()) CHECK(x == 0.0);
  for (double x : r[1].to_doubles()) CHECK(x == -std::numeric_limits<double>::infinity());
  const auto dout = random_tensor({c.B, c.H, c.Sq, c.D}, 62);
  const auto g = run_op(FlashAttentionBackwardOp(0.5, false, 0.0, false), {in.q, in.k, in.v, r[0], dout, r[1]},
                        &test_pool());
  for (double x : g[0].to_doubles()) CHECK(x == 0.0);
}

TEST_CASE("flash_attention: shapes, options and random numbers") {
  Graph g;
  const auto in = [&](const char* n, Shape s, DType t = DType::f32) { return g.input(n, TensorMeta{s, t}); };
  const Value q = in("q", {2, 4, 5, 8}), k = in("k", {2, 2, 7, 8}), v = in("v", {2, 2, 7, 8});
  const auto r = flash_attention(q, k, v, 0.35, true, 0.1);
  CHECK(r.out.shape() == Shape{2, 4, 5, 8});
  CHECK(r.lse.shape() == Shape{2, 4, 5});
  CHECK(r.lse.dtype() == DType::f32);
  CHECK(g.random_numbers_per_run() == 2 * 4 * 5 * 7);
  CHECK(FlashAttentionOp(1, false, 0.0).random_numbers({q.meta(), k.meta(), v.meta()}) == 0);
  auto expect_error = [&](const Value& a, const Value& b, const Value& c, double scale, double p,
                          const std::string& needle) {
    try {
      flash_attention(a, b, c, scale, false, p);
      FAIL("no error for " << needle);
    } catch (const Error& e) {
      CHECK(e.op() == "flash_attention");
      CHECK_MESSAGE(std::string(e.what()).find(needle) != std::string::npos, e.what());
    }
  };
  expect_error(q, in("k3", {2, 3, 7, 8}), in("v3", {2, 3, 7, 8}), 1, 0, "(2, 3, 7, 8)");       // H % Hk
  expect_error(q, in("k4", {2, 2, 7, 6}), in("v4", {2, 2, 7, 6}), 1, 0, "head dim");           // D
  expect_error(q, k, in("v5", {2, 2, 6, 8}), 1, 0, "(2, 2, 6, 8)");                            // k vs v
  expect_error(in("q3", {4, 5, 8}), k, v, 1, 0, "rank 4");                                     // rank
  expect_error(q, in("k6", {3, 2, 7, 8}), in("v6", {3, 2, 7, 8}), 1, 0, "batch");              // B
  expect_error(q, in("k7", {2, 2, 7, 8}, DType::f64), v, 1, 0, "dtype");                       // dtypes
  expect_error(q, k, v, 1, 1.0, "dropout");                                                     // p
  expect_error(q, k, v, std::nan(""), 0, "scale");                                              // scale
  // The backward checks lse's shape too.
  const FlashAttentionBackwardOp bop(1, false, 0, false);
  CHECK_THROWS_AS(bop.infer({q.meta(), k.meta(), v.meta(), q.meta(), q.meta(), TensorMeta{{2, 4, 6}, DType::f32}}),
                  Error);
}

// =========================================================================================================
// CUDA: against the CPU kernel in f32 on the same (rounded) inputs
// =========================================================================================================

namespace {

// The inputs in `layout` (make_inputs draws them bhsd).
Inputs in_layout(const Inputs& in, AttentionLayout layout) {
  if (layout == AttentionLayout::bhsd) return in;
  return {swap12(in.q), swap12(in.k), swap12(in.v)};
}

// Runs the forward on the GPU in `dt` and on the CPU in f32 on the same rounded inputs; compares out and lse.
void cuda_forward_case(const Case& c, DType dt, double p, uint64_t seed, uint64_t offset,
                       AttentionLayout layout = AttentionLayout::bhsd) {
  const Inputs in32 = in_layout(make_inputs(c, 101 + static_cast<uint64_t>(c.Sq * 7 + c.D)), layout);
  const Inputs gin{as_dtype(in32.q, dt), as_dtype(in32.k, dt), as_dtype(in32.v, dt)};
  const Inputs cin{as_dtype(gin.q, DType::f32), as_dtype(gin.k, DType::f32), as_dtype(gin.v, DType::f32)};
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
  const FlashAttentionOp op(scale, c.causal, p, layout);
  const auto ref = run_op(op, {cin.q, cin.k, cin.v}, &test_pool(), seed, offset);
  const auto got = run_op_cuda(op, {gin.q, gin.k, gin.v}, seed, offset);
  const FaTol tol = fa_tolerance(dt);
  const std::string w = case_name(c) + " p=" + std::to_string(p) + " " + attention_layout_name(layout) + " [" +
                        dtype_name(dt) + "]";
  CHECK(got[0].dtype() == dt);
  CHECK(got[1].dtype() == DType::f32);
  check_close(got[0].to_doubles(), ref[0].to_doubles(), tol.out_atol, tol.out_rtol, w + " out");
  check_close(finite_lse(got[1].to_doubles()), finite_lse(ref[1].to_doubles()), tol.lse_atol, 0.0, w + " lse");
}

// Backward on the GPU in `dt` against the CPU in f32; both get the same q, k, v, out, dout, lse (out and lse
// from the CPU forward, out rounded to dt), so only the backward kernels differ.
void cuda_backward_case(const Case& c, DType dt, double p, bool with_dlse, uint64_t seed, uint64_t offset,
                        AttentionLayout layout = AttentionLayout::bhsd) {
  const Inputs in32 = in_layout(make_inputs(c, 201 + static_cast<uint64_t>(c.Sk * 5 + c.D)), layout);
  const Inputs gin{as_dtype(in32.q, dt), as_dtype(in32.k, dt), as_dtype(in32.v, dt)};
  const Inputs cin{as_dtype(gin.q, DType::f32), as_dtype(gin.k, DType::f32), as_dtype(gin.v, DType::f32)};
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
  const auto fwd =
      run_op(FlashAttentionOp(scale, c.causal, p, layout), {cin.q, cin.k, cin.v}, &test_pool(), seed, offset);
  const Tensor out_g = as_dtype(fwd[0], dt), out_c = as_dtype(out_g, DType::f32);
  const Tensor dout_g = random_tensor(fwd[0].shape(), 301, -1, 1, dt), dout_c = as_dtype(dout_g, DType::f32);
  const Tensor dlse = random_tensor({c.B, c.H, c.Sq}, 302, -1, 1);
  std::vector<Tensor> gi{gin.q, gin.k, gin.v, out_g, dout_g, fwd[1]}, ci{cin.q, cin.k, cin.v, out_c, dout_c, fwd[1]};
  if (with_dlse) {
    gi.push_back(dlse);
    ci.push_back(dlse);
  }
  const FlashAttentionBackwardOp op(scale, c.causal, p, with_dlse, layout);
  const auto ref = run_op(op, ci, &test_pool(), seed, offset);
  const auto got = run_op_cuda(op, gi, seed, offset);
  const FaTol tol = fa_tolerance(dt);
  const std::string w = case_name(c) + " p=" + std::to_string(p) + (with_dlse ? " dlse" : "") + " " +
                        attention_layout_name(layout) + " [" + dtype_name(dt) + "]";
  const char* names[3] = {" dq", " dk", " dv"};
  for (int i = 0; i < 3; ++i) {
    CHECK(got[static_cast<size_t>(i)].dtype() == dt);
    check_scaled(got[static_cast<size_t>(i)].to_doubles(), ref[static_cast<size_t>(i)].to_doubles(), tol.grad_rel,
                 tol.grad_rtol, w + names[i], /*floor=*/1.0);
  }
}

// Awkward shapes: S = 1, 17, 127, 1000; D = 40, 64, 80, 128 (and 8, 136, 256, an odd 3 for the generic and the
// non-vectorised paths); D = 32 (MiniLM's heads: the exact 32-wide tile) and 16, 24 (its generic instantiation);
// Sq != Sk both ways; GQA and MQA; causal and not.
const std::vector<Case>& cuda_cases() {
  static const std::vector<Case> cases = {
      {1, 2, 2, 1, 1, 64, false},       {2, 2, 1, 17, 17, 40, true},      {1, 4, 2, 127, 127, 80, false},
      {1, 2, 2, 1000, 1000, 128, true}, {1, 2, 1, 127, 1000, 64, false},  {1, 2, 2, 1000, 127, 64, true},
      {1, 4, 1, 1000, 1000, 64, false}, {2, 2, 2, 17, 127, 128, true},    {1, 2, 2, 65, 130, 256, true},
      {1, 2, 1, 63, 77, 136, false},    {1, 2, 2, 33, 33, 8, true},       {1, 1, 1, 40, 50, 3, true},
      {1, 2, 2, 127, 1, 80, true},      {1, 2, 2, 1, 127, 128, false},    {2, 12, 12, 128, 128, 32, false},
      {1, 2, 1, 77, 1000, 32, true},    {1, 2, 2, 17, 50, 24, true},      {1, 3, 1, 127, 127, 16, false}};
  return cases;
}

}  // namespace

XF_CUDA_TEST_CASE("flash_attention CUDA: forward out and lse against the CPU (bf16, f16, f32)") {
  for (const Case& c : cuda_cases())
    for (DType dt : cuda_float_dtypes()) cuda_forward_case(c, dt, 0.0, 0, 0);
}

XF_CUDA_TEST_CASE("flash_attention CUDA: backward dq, dk, dv against the CPU (bf16, f16, f32)") {
  for (const Case& c : cuda_cases())
    for (DType dt : cuda_float_dtypes()) cuda_backward_case(c, dt, 0.0, false, 0, 0);
  // A gradient reaching lse.
  for (DType dt : cuda_float_dtypes()) cuda_backward_case({1, 2, 1, 77, 90, 64, true}, dt, 0.0, true, 0, 0);
}

XF_CUDA_TEST_CASE("flash_attention CUDA: dropout masks equal the CPU's (f32 exact mask, bf16/f16 within tolerance)") {
  // f32: a different keep/drop decision would change out by O(0.1), far beyond the f32 tolerance, so passing
  // means the masks agree element for element. Offset 4k + 3 puts key pairs across Philox blocks.
  for (const Case c : {Case{1, 2, 1, 127, 129, 64, true}, Case{2, 2, 2, 33, 17, 40, false},
                       Case{1, 2, 2, 100, 1000, 128, false}, Case{1, 1, 1, 70, 70, 256, true}})
    for (DType dt : cuda_float_dtypes())
      for (uint64_t offset : {uint64_t{0}, uint64_t{4 * 1001 + 3}}) {
        cuda_forward_case(c, dt, 0.2, 4321, offset);
        cuda_backward_case(c, dt, 0.2, false, 4321, offset);
      }
}

XF_CUDA_TEST_CASE("flash_attention CUDA: bshd layout, forward and backward against the CPU (bf16, f16, f32)") {
  // Row strides H D and Hk D (not D): the cp.async path with strided rows, and the scalar path for D = 3 / 40
  // with H D not a multiple of 8. Dropout too: the element index is logical, the same in both layouts.
  for (const Case c : {Case{2, 4, 2, 127, 127, 64, true}, Case{1, 3, 1, 17, 1000, 128, false},
                       Case{1, 2, 2, 65, 130, 256, true}, Case{1, 3, 3, 40, 50, 3, true},
                       Case{2, 2, 1, 77, 33, 40, false}, Case{1, 2, 2, 1, 1, 80, false}})
    for (DType dt : cuda_float_dtypes()) {
      cuda_forward_case(c, dt, 0.0, 0, 0, AttentionLayout::bshd);
      cuda_backward_case(c, dt, 0.0, false, 0, 0, AttentionLayout::bshd);
      cuda_forward_case(c, dt, 0.2, 4321, 7, AttentionLayout::bshd);
      cuda_backward_case(c, dt, 0.2, true, 4321, 7, AttentionLayout::bshd);
    }
}

// Issue 5's memory test, planned on any machine: the training graph (forward and backward) of one S = 32768
// attention plans activation memory linear in S with the fused op, where the composite's scores and
// probabilities alone take S^2 per head. The CUDA twin (test_flash_attention_masks_cuda.cpp) runs such a
// forward and backward and checks the caching allocator's peak; the CPU kernels' scratch is per query block
// (ops/cpu/flash_attention*.cpp), outside the plan.
TEST_CASE("flash_attention: an S = 32768 training graph plans O(S) memory (the composite plans O(S^2))") {
  const int64_t B = 1, H = 2, S = 32768, D = 64;
  const double qkv_bytes = 3.0 * B * H * S * D * 4;  // q, k, v in f32
  auto planned_bytes = [&](bool fused) {
    Graph g;
    Value q = g.input("q", TensorMeta{{B, H, S, D}, DType::f32}, true);
    Value k = g.input("k", TensorMeta{{B, H, S, D}, DType::f32}, true);
    Value v = g.input("v", TensorMeta{{B, H, S, D}, DType::f32}, true);
    AttentionOptions o;
    o.causal = true;
    Value out;
    if (fused) {
      out = scaled_dot_product_attention(q, k, v, Value{}, o, "attention");
    } else {  // the composite, built directly: scores, probabilities, their product with v
      const Value scores = matmul(q, k, false, true, "scores");
      out = matmul(softmax(scores, Value{}, 1.0 / std::sqrt(double(D)), true, "probs"), v, false, false, "out");
    }
    const Value loss = reduce_sum(out, {}, false, "loss");
    const Gradients grads = gradients(loss);
    ExecutorOptions opt;
    opt.allocate = false;  // schedule and plan only: nothing is computed
    std::vector<Value> outs{loss, grads.get(q), grads.get(k), grads.get(v)};
    Executor ex(g, outs, grads, std::make_shared<ParamStore>(g), opt);
    return static_cast<double>(ex.memory_plan().arena_bytes);
  };
  const double fused = planned_bytes(true), composite = planned_bytes(false);
  MESSAGE("S = 32768 training graph: fused attention plans " << fused / (1 << 20) << " MiB, the composite "
                                                               << composite / (1 << 20) << " MiB");
  CHECK(fused < 8 * qkv_bytes);                       // a few (B, H, S, D) tensors: out, grads, lse
  CHECK(composite > 2.0 * double(B * H) * S * S * 4);  // at least the scores and the probabilities
}

// lse is an optional output (FlashAttentionOp::output_optional): an executor whose graph neither reads nor hands
// out lse plans no buffer for it and the kernel skips it (on the CPU into scratch, on CUDA a cuDNN forward without
// statistics or the native kernel into scratch); out is the same as when lse is kept. Awkward sizes, causal, GQA,
// both layouts; on the device (XF_TEST_DEVICE=cuda) in bf16 D = 64, where cuDNN runs.
namespace {

void lse_optional_case(const std::shared_ptr<DeviceContext>& dev, DType dt, int64_t D, AttentionLayout layout) {
  const int64_t B = 2, H = 4, Hk = 2, S = 33;
  const bool bshd = layout == AttentionLayout::bshd;
  const Shape qs = bshd ? Shape{B, S, H, D} : Shape{B, H, S, D}, ks = bshd ? Shape{B, S, Hk, D} : Shape{B, Hk, S, D};
  const Tensor q = random_tensor(qs, 71, -1.5, 1.5).to(dt), k = random_tensor(ks, 72, -1.5, 1.5).to(dt);
  const Tensor v = random_tensor(ks, 73, -1.5, 1.5).to(dt);
  FlashAttentionAttrs a;
  a.scale = 1.0 / std::sqrt(static_cast<double>(D));
  a.causal = true;
  a.layout = layout;
  const auto run = [&](bool keep_lse, int64_t& arena) {
    Graph g;
    Value vq = g.input("q", TensorMeta{qs, dt}), vk = g.input("k", TensorMeta{ks, dt}), vv = g.input("v", TensorMeta{ks, dt});
    const FlashAttentionOutputs o = flash_attention(vq, vk, vv, a, "attention");
    ExecutorOptions opt;
    if (dev) {
      opt.device = dev->device();
      opt.device_ctx = dev;
    }
    std::vector<Value> outs{o.out};
    if (keep_lse) outs.push_back(o.lse);
    Executor ex(g, outs, Gradients{}, std::make_shared<ParamStore>(g, dev.get()), opt);
    arena = static_cast<int64_t>(ex.memory_plan().arena_bytes);
    ex.bind(vq, q);
    ex.bind(vk, k);
    ex.bind(vv, v);
    ex.run();
    return ex.get(o.out).to_host();
  };
  int64_t arena_with = 0, arena_without = 0;
  const Tensor with_lse = run(true, arena_with), without_lse = run(false, arena_without);
  const std::string w = str_cat(dtype_name(dt), " D=", D, bshd ? " bshd" : " bhsd", dev ? " device" : " cpu");
  const int64_t lse_bytes = B * H * S * 4;
  CHECK_MESSAGE(arena_with - arena_without >= lse_bytes, w << ": arena " << arena_with << " vs " << arena_without);
  if (dev) {  // two cuDNN plans (with and without statistics) may round differently: the bf16 tolerance
    check_close(without_lse.to_doubles(), with_lse.to_doubles(), 2e-2, 2e-2, w + " out without lse");
  } else {  // the same CPU kernel: bit for bit
    CHECK(without_lse.to_doubles() == with_lse.to_doubles());
  }
  const auto ref = run_op(FlashAttentionOp(a), {q.to(DType::f32), k.to(DType::f32), v.to(DType::f32)});
  check_close(without_lse.to_doubles(), ref[0].to_doubles(), dt == DType::f32 ? 1e-6 : 2e-2,
              dt == DType::f32 ? 1e-6 : 2e-2, w + " out vs the f32 oracle");
}

}  // namespace

TEST_CASE("flash_attention: an unread lse is not allocated and not written (CPU)") {
  for (AttentionLayout layout : {AttentionLayout::bhsd, AttentionLayout::bshd}) lse_optional_case(nullptr, DType::f32, 24, layout);
}

XF_CUDA_TEST_CASE("cuda flash_attention: an unread lse is not allocated and not written (cuDNN without statistics)") {
  const std::shared_ptr<DeviceContext> dev = make_device_context(Device::cuda(0));
  for (AttentionLayout layout : {AttentionLayout::bhsd, AttentionLayout::bshd}) {
    lse_optional_case(dev, DType::bf16, 64, layout);
    ScopedEnv env("XF_ATTENTION_BACKEND", "native");  // the native kernel into scratch
    lse_optional_case(dev, DType::bf16, 64, layout);
    lse_optional_case(dev, DType::f32, 40, layout);
  }
}

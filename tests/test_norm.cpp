// layernorm and rmsnorm (and their backward ops) against float64 references, with and without the
// affine parameters, serial and on a thread pool; gradients by finite differences; errors.
#include <cmath>

#include "ops/elementwise.h"
#include "ops/linear.h"
#include "ops/norm.h"
#include "ops/reduce.h"
#include "runtime/cpu/threadpool.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

struct NormRef {
  std::vector<double> y, mean, rstd;  // y (rows, C); mean, rstd (rows)
};

// Naive float64 layernorm (rms = false) or rmsnorm (rms = true); empty gamma/beta mean absent.
NormRef ref_norm(const std::vector<double>& x, int64_t C, const std::vector<double>& gamma,
                 const std::vector<double>& beta, double eps, bool rms) {
  const int64_t rows = static_cast<int64_t>(x.size()) / C;
  NormRef r;
  for (int64_t i = 0; i < rows; ++i) {
    double m = 0, v = 0;
    if (!rms) {
      for (int64_t c = 0; c < C; ++c) m += x[i * C + c];
      m /= C;
    }
    for (int64_t c = 0; c < C; ++c) v += (x[i * C + c] - m) * (x[i * C + c] - m);
    v /= C;
    const double rs = 1.0 / std::sqrt(v + eps);
    r.mean.push_back(m);
    r.rstd.push_back(rs);
    for (int64_t c = 0; c < C; ++c) {
      double y = (x[i * C + c] - m) * rs;
      if (!gamma.empty()) y *= gamma[c];
      if (!beta.empty()) y += beta[c];
      r.y.push_back(y);
    }
  }
  return r;
}

struct NormGradRef {
  std::vector<double> dx, dgamma, dbeta;
};

// Float64 backward from the definition: dx_j = sum_i dy_i dy_i/dx_j with the Jacobian written out.
NormGradRef ref_norm_backward(const std::vector<double>& x, int64_t C, const std::vector<double>& gamma,
                              const std::vector<double>& dy, double eps, bool rms) {
  const int64_t rows = static_cast<int64_t>(x.size()) / C;
  const NormRef f = ref_norm(x, C, {}, {}, eps, rms);  // f.y = xhat
  NormGradRef g;
  g.dx.assign(x.size(), 0.0);
  g.dgamma.assign(static_cast<size_t>(C), 0.0);
  g.dbeta.assign(static_cast<size_t>(C), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const double rs = f.rstd[r];
    for (int64_t j = 0; j < C; ++j) {
      double s = 0;
      for (int64_t i = 0; i < C; ++i) {
        // d xhat_i / d x_j
        const double xhi = f.y[r * C + i], xhj = f.y[r * C + j];
        const double d = rms ? rs * ((i == j ? 1.0 : 0.0) - xhi * xhj / C)
                             : rs * ((i == j ? 1.0 : 0.0) - 1.0 / C - xhi * xhj / C);
        s += dy[r * C + i] * (gamma.empty() ? 1.0 : gamma[i]) * d;
      }
      g.dx[r * C + j] = s;
      g.dgamma[j] += dy[r * C + j] * f.y[r * C + j];
      g.dbeta[j] += dy[r * C + j];
    }
  }
  return g;
}

}  // namespace

TEST_CASE("layernorm: forward and backward kernels against float64, all affine combinations") {
  const double eps = 1e-5;
  for (int64_t C : {1, 31, 33, 257})
    for (const Shape& lead : {Shape{1}, Shape{3, 5}, Shape{70}})
      for (DType dt : {DType::f32, DType::f64})
        for (int affine = 0; affine < 4; ++affine) {
          const bool hg = affine & 1, hb = affine & 2;
          Shape xs = lead;
          xs.push_back(C);
          const Tensor x = random_tensor(xs, 1 + C, -2, 3, dt);
          const Tensor gamma = random_tensor({C}, 2, 0.5, 1.5, dt), beta = random_tensor({C}, 3, -1, 1, dt);
          std::vector<Tensor> in{x};
          if (hg) in.push_back(gamma);
          if (hb) in.push_back(beta);
          const auto gv = hg ? gamma.to_doubles() : std::vector<double>{};
          const auto bv = hb ? beta.to_doubles() : std::vector<double>{};
          const NormRef ref = ref_norm(x.to_doubles(), C, gv, bv, eps, false);
          const std::string what = "layernorm " + x.desc() + " gamma=" + std::to_string(hg) + " beta=" +
                                   std::to_string(hb);
          for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &test_pool()}) {
            const auto out = run_op(LayerNormOp(eps, hg, hb), in, pool);
            REQUIRE(out.size() == 3);
            CHECK(out[0].shape() == xs);
            CHECK(out[1].shape() == Shape{numel_of(lead)});
            check_close(out[0], ref.y, what + " y");
            check_close(out[1], ref.mean, what + " mean");
            // rstd is up to 1/sqrt(eps) ~ 316 for C = 1 (zero variance): relative tolerance covers it.
            check_close(out[2], ref.rstd, what + " rstd");

            const Tensor dy = random_tensor(xs, 4, -1, 1, dt);
            std::vector<Tensor> bin{x, out[1], out[2]};
            if (hg) bin.push_back(gamma);
            bin.push_back(dy);
            const auto gr = run_op(LayerNormBackwardOp(hg, hg, hb), bin, pool);
            const NormGradRef rg = ref_norm_backward(x.to_doubles(), C, gv, dy.to_doubles(), eps, false);
            // dx involves rstd (up to 316 for C = 1) times a difference of sums: scale the tolerance.
            check_close(gr[0], rg.dx, what + " dx", C == 1 ? 100.0 : 4.0);
            size_t k = 1;
            if (hg) check_close(gr[k++], rg.dgamma, what + " dgamma", 4.0);
            if (hb) check_close(gr[k++], rg.dbeta, what + " dbeta", 4.0);
          }
        }
}

TEST_CASE("rmsnorm: forward and backward kernels against float64, with and without gamma") {
  const double eps = 1e-6;
  for (int64_t C : {1, 31, 33, 257})
    for (const Shape& lead : {Shape{1}, Shape{3, 5}, Shape{70}})
      for (DType dt : {DType::f32, DType::f64})
        for (bool hg : {false, true}) {
          Shape xs = lead;
          xs.push_back(C);
          const Tensor x = random_tensor(xs, 5 + C, -2, 3, dt);
          const Tensor gamma = random_tensor({C}, 6, 0.5, 1.5, dt);
          std::vector<Tensor> in{x};
          if (hg) in.push_back(gamma);
          const auto gv = hg ? gamma.to_doubles() : std::vector<double>{};
          const NormRef ref = ref_norm(x.to_doubles(), C, gv, {}, eps, true);
          const std::string what = "rmsnorm " + x.desc() + " gamma=" + std::to_string(hg);
          for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &test_pool()}) {
            const auto out = run_op(RMSNormOp(eps, hg), in, pool);
            REQUIRE(out.size() == 2);
            check_close(out[0], ref.y, what + " y");
            check_close(out[1], ref.rstd, what + " rstd");
            const Tensor dy = random_tensor(xs, 7, -1, 1, dt);
            std::vector<Tensor> bin{x, out[1]};
            if (hg) bin.push_back(gamma);
            bin.push_back(dy);
            const auto gr = run_op(RMSNormBackwardOp(hg, hg), bin, pool);
            const NormGradRef rg = ref_norm_backward(x.to_doubles(), C, gv, dy.to_doubles(), eps, true);
            check_close(gr[0], rg.dx, what + " dx", 4.0);
            if (hg) check_close(gr[1], rg.dgamma, what + " dgamma", 4.0);
          }
        }
}

TEST_CASE("layernorm: gradients by finite differences (float64), every input") {
  for (int affine = 0; affine < 4; ++affine) {
    const bool hg = affine & 1, hb = affine & 2;
    std::vector<Tensor> in{random_tensor({2, 3, 7}, 11, -2, 2, DType::f64)};
    if (hg) in.push_back(random_tensor({7}, 12, 0.5, 1.5, DType::f64));
    if (hb) in.push_back(random_tensor({7}, 13, -1, 1, DType::f64));
    check_gradients([hg, hb](Graph&, const std::vector<Value>& v) {
      return layernorm(v[0], hg ? v[1] : Value{}, hb ? v[1 + hg] : Value{}, 1e-5);
    }, in, "layernorm gamma=" + std::to_string(hg) + " beta=" + std::to_string(hb));
  }
  check_gradients([](Graph&, const std::vector<Value>& v) { return layernorm(v[0], v[1], v[2]); },
                  {random_tensor({4, 1}, 14, -1, 1, DType::f64), random_tensor({1}, 15, 0.5, 1.5, DType::f64),
                   random_tensor({1}, 16, -1, 1, DType::f64)},
                  "layernorm C=1");
}

TEST_CASE("rmsnorm: gradients by finite differences (float64), every input") {
  for (bool hg : {false, true}) {
    std::vector<Tensor> in{random_tensor({3, 9}, 21, -2, 2, DType::f64)};
    if (hg) in.push_back(random_tensor({9}, 22, 0.5, 1.5, DType::f64));
    check_gradients([hg](Graph&, const std::vector<Value>& v) { return rmsnorm(v[0], hg ? v[1] : Value{}, 1e-6); },
                    in, "rmsnorm gamma=" + std::to_string(hg));
  }
}

// The residual add fused into the layernorm (add_layernorm) computes layernorm(x + residual) and, with
// want_sum, x + residual itself: the same values as the add followed by the norm, and gradients by finite
// differences for every input, with the gradient reaching y only, the sum only (a pre-norm stream that goes
// on), and both.
TEST_CASE("layernorm_backward with dadd equals the backward then the add exactly; shapes checked") {
  for (int64_t C : {1, 33, 257}) {
    const Tensor x = random_tensor({5, C}, 61, -2, 2), gm = random_tensor({C}, 62, 0.5, 1.5);
    const Tensor dy = random_tensor({5, C}, 63, -1, 1), dadd = random_tensor({5, C}, 64, -1, 1);
    const auto f = run_op(LayerNormOp(1e-5, true, false), {x, gm});
    const auto fused = run_op(LayerNormBackwardOp(true, true, false, true), {x, f[1], f[2], gm, dy, dadd}, &test_pool());
    const auto plain = run_op(LayerNormBackwardOp(true, true, false), {x, f[1], f[2], gm, dy}, &test_pool());
    const Tensor sum = run_op(BinaryOp(BinaryKind::add), {plain[0], dadd})[0];
    CHECK(fused[0].to_doubles() == sum.to_doubles());
    CHECK(fused[1].to_doubles() == plain[1].to_doubles());
    CHECK_THROWS_AS(LayerNormBackwardOp(true, true, false, true)
                        .infer({{{5, C}, DType::f32}, {{5}, DType::f32}, {{5}, DType::f32}, {{C}, DType::f32},
                                {{5, C}, DType::f32}, {{4, C}, DType::f32}}),
                    Error);
  }
}

TEST_CASE("layernorm_backward's dx sum is the sum of its dx over the rows (with dadd), after dgamma and dbeta") {
  for (int64_t C : {1, 33, 257})
    for (int64_t rows : {1, 31, 70}) {
      const Tensor x = random_tensor({rows, C}, 71, -2, 2, DType::f64), gm = random_tensor({C}, 72, 0.5, 1.5, DType::f64);
      const Tensor dy = random_tensor({rows, C}, 73, -1, 1, DType::f64), dadd = random_tensor({rows, C}, 74, -1, 1, DType::f64);
      const auto f = run_op(LayerNormOp(1e-5, true, false), {x, gm});
      const LayerNormBackwardOp op(true, true, true, true, true);
      REQUIRE(op.dx_sum_output() == 3);
      const auto out = run_op(op, {x, f[1], f[2], gm, dy, dadd}, &test_pool());
      REQUIRE(out.size() == 4);
      CHECK(out[3].shape() == Shape{C});
      const auto dx = out[0].to_doubles();
      std::vector<double> want(static_cast<size_t>(C), 0.0);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < C; ++c) want[static_cast<size_t>(c)] += dx[static_cast<size_t>(r * C + c)];
      check_close(out[3], want, "layernorm_backward dx sum " + x.desc());
      const auto plain = run_op(LayerNormBackwardOp(true, true, true, true), {x, f[1], f[2], gm, dy, dadd});
      for (size_t k = 0; k < 3; ++k) CHECK(out[k].to_doubles() == plain[k].to_doubles());
    }
}

TEST_CASE("a linear layer whose output a residual layernorm reads takes its bias gradient from the norm's backward "
          "(Graph::row_sum_of)") {
  // A pre-norm block's projection: proj = x w^T + b, then layernorm(stream + proj) (add_layernorm, the sum kept).
  const auto block = [](Graph&, const std::vector<Value>& v) {
    const Value proj = linear_op(v[0], v[1], v[2], false);
    const ResidualLayerNorm o = add_layernorm(v[3], proj, v[4], v[5], true);
    return add(o.y, scale(o.sum, 0.7));
  };
  const std::vector<Tensor> in{random_tensor({2, 3, 5}, 81, -1, 1, DType::f64), random_tensor({7, 5}, 82, -1, 1, DType::f64),
                               random_tensor({7}, 83, -1, 1, DType::f64), random_tensor({2, 3, 7}, 84, -1, 1, DType::f64),
                               random_tensor({7}, 85, 0.5, 1.5, DType::f64), random_tensor({7}, 86, -1, 1, DType::f64)};
  check_gradients(block, in, "linear -> residual layernorm");
  Graph g;
  const std::vector<Value> v = graph_inputs(g, in, true);
  const Gradients grads = gradients(reduce_sum(block(g, v), {}, false));
  int weight_grads = 0, with_sum = 0;
  for (int i = 0; i < g.num_nodes(); ++i) {
    weight_grads += g.node(i).op->name() == "linear_weight_grad";
    if (const auto* nb = dynamic_cast<const LayerNormBackwardOp*>(g.node(i).op.get()); nb && nb->want_dx_sum) {
      ++with_sum;
      CHECK(g.node(i).outputs.size() == 4);  // dx, dgamma, dbeta, dx sum
      CHECK(g.node(i).outputs[3] == grads.get(v[2]).id);  // the bias gradient is the norm's dx sum
    }
  }
  CHECK(weight_grads == 0);  // dw is a plain matmul
  CHECK(with_sum == 1);
  // Asked again, the same output (the node is extended once); a value whose producer cannot sum its rows has none.
  const Value bias_grad = grads.get(v[2]);
  const Node& norm_backward = g.node(g.value(bias_grad.id).producer);
  const Value dx{&g, norm_backward.outputs[0]};
  CHECK(g.row_sum_of(dx).id == bias_grad.id);
  CHECK(norm_backward.outputs.size() == 4);
  CHECK_FALSE(g.row_sum_of(reduce_sum(v[0], {}, false)).defined());
  CHECK_FALSE(g.row_sum_of(v[0]).defined());  // an input: no producer
}

TEST_CASE(
    "a plain layernorm whose input has other readers takes their gradient in as its dadd (BackwardContext::absorb)") {
  // Two pre-norm sublayers with the residual added by each projection's GEMM (linear_residual_op): the stream x0 is
  // read by norm 1 and by the first projection's residual, x1 by norm 2 and the second's. Each norm's backward takes
  // the stream's other gradient in (no add node in the backward), and each projection's bias gradient is the norm's
  // dx sum (with the dadd in it).
  const auto blocks = [](Graph&, const std::vector<Value>& v) {
    const Value x1 = linear_residual_op(layernorm(v[0], v[3], v[4]), v[1], v[2], v[0]);
    const Value x2 = linear_residual_op(layernorm(x1, v[5], v[6]), v[7], v[8], x1);
    return scale(x2, 0.7);
  };
  const std::vector<Tensor> in{
      random_tensor({2, 3, 7}, 91, -1, 1, DType::f64), random_tensor({7, 7}, 92, -1, 1, DType::f64),
      random_tensor({7}, 93, -1, 1, DType::f64),       random_tensor({7}, 94, 0.5, 1.5, DType::f64),
      random_tensor({7}, 95, -1, 1, DType::f64),       random_tensor({7}, 96, 0.5, 1.5, DType::f64),
      random_tensor({7}, 97, -1, 1, DType::f64),       random_tensor({7, 7}, 98, -1, 1, DType::f64),
      random_tensor({7}, 99, -1, 1, DType::f64)};
  check_gradients(blocks, in, "two pre-norm sublayers, the residual in the GEMM");
  Graph g;
  const std::vector<Value> v = graph_inputs(g, in, true);
  const Gradients grads = gradients(reduce_sum(blocks(g, v), {}, false));
  int adds = 0, with_dadd = 0, with_sum = 0;
  for (int i = 0; i < g.num_nodes(); ++i) {
    if (const auto* b = dynamic_cast<const BinaryOp*>(g.node(i).op.get())) adds += b->kind == BinaryKind::add;
    if (const auto* nb = dynamic_cast<const LayerNormBackwardOp*>(g.node(i).op.get())) {
      with_dadd += nb->has_dadd;
      with_sum += nb->want_dx_sum;
    }
  }
  CHECK(adds == 0);
  CHECK(with_dadd == 2);
  CHECK(with_sum == 1);  // norm 2's dx is x1's gradient: the first projection's bias gradient is its sum
  // x0's gradient is norm 1's dx (with both readers' gradients in it), the value the autodiff hands out.
  const Node& first_norm_backward = g.node(g.value(grads.get(v[0]).id).producer);
  CHECK(first_norm_backward.op->name() == "layernorm_backward");
  // A norm whose input has no other reader: nothing to absorb.
  Graph h;
  const std::vector<Value> hv = graph_inputs(h, {in[0], in[3], in[4]}, true);
  (void)gradients(reduce_sum(layernorm(hv[0], hv[1], hv[2]), {}, false));
  for (int i = 0; i < h.num_nodes(); ++i)
    if (const auto* nb = dynamic_cast<const LayerNormBackwardOp*>(h.node(i).op.get())) CHECK(!nb->has_dadd);
}

TEST_CASE("layernorm with a fused residual add: add + layernorm's values, gradients by finite differences") {
  const Tensor x = random_tensor({3, 5, 33}, 31, -2, 2), r = random_tensor({3, 5, 33}, 32, -2, 2);
  const Tensor gm = random_tensor({33}, 33, 0.5, 1.5), bt = random_tensor({33}, 34, -1, 1);
  for (bool want_sum : {false, true}) {
    const Tensor fused = run_graph([&](Graph&, const std::vector<Value>& v) {
      const ResidualLayerNorm o = add_layernorm(v[0], v[1], v[2], v[3], want_sum);
      return want_sum ? add(o.y, scale(o.sum, 3.0)) : o.y;
    }, {x, r, gm, bt});
    const Tensor plain = run_graph([&](Graph&, const std::vector<Value>& v) {
      const Value s = add(v[0], v[1]);
      const Value y = layernorm(s, v[2], v[3]);
      return want_sum ? add(y, scale(s, 3.0)) : y;
    }, {x, r, gm, bt});
    CHECK(fused.to_doubles() == plain.to_doubles());  // the same f32 operations in the same order
  }
  auto in64 = [](uint64_t seed) {
    return std::vector<Tensor>{random_tensor({2, 3, 7}, seed, -2, 2, DType::f64),
                               random_tensor({2, 3, 7}, seed + 1, -2, 2, DType::f64),
                               random_tensor({7}, seed + 2, 0.5, 1.5, DType::f64),
                               random_tensor({7}, seed + 3, -1, 1, DType::f64)};
  };
  check_gradients([](Graph&, const std::vector<Value>& v) { return add_layernorm(v[0], v[1], v[2], v[3], false).y; },
                  in64(41), "fused residual layernorm, y");
  check_gradients([](Graph&, const std::vector<Value>& v) { return add_layernorm(v[0], v[1], v[2], v[3], true).sum; },
                  in64(45), "fused residual layernorm, sum only");
  check_gradients([](Graph&, const std::vector<Value>& v) {
    const ResidualLayerNorm o = add_layernorm(v[0], v[1], v[2], v[3], true);
    return add(o.y, scale(o.sum, 0.7));
  }, in64(49), "fused residual layernorm, y and sum");
  check_gradients([](Graph&, const std::vector<Value>& v) { return add_layernorm(v[0], v[1], Value{}, Value{}, true).y; },
                  {random_tensor({4, 9}, 53, -2, 2, DType::f64), random_tensor({4, 9}, 54, -2, 2, DType::f64)},
                  "fused residual layernorm without affine");
  try {  // a residual of another shape is refused at the front door
    run_op(LayerNormOp(1e-5, false, false, true, false), {Tensor::zeros({4, 8}), Tensor::zeros({4, 7})});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("[layernorm] residual") != std::string::npos);
  }
}

TEST_CASE("layernorm with a broadcast residual (a suffix of x's shape): add + layernorm's values and gradients") {
  // Embeddings (B, T, C) + a position table (T, C): the first block's norm takes the add in
  // (factory/model_builder.cpp).
  const Tensor x = random_tensor({3, 5, 33}, 61, -2, 2), table = random_tensor({5, 33}, 62, -2, 2);
  const Tensor gm = random_tensor({33}, 63, 0.5, 1.5), bt = random_tensor({33}, 64, -1, 1);
  for (const Tensor& r : {table, random_tensor({33}, 65, -2, 2), random_tensor({1, 5, 33}, 66, -2, 2)}) {
    INFO("residual " << shape_str(r.shape()));
    for (bool want_sum : {false, true}) {
      const Tensor fused = run_graph(
          [&](Graph&, const std::vector<Value>& v) {
            const ResidualLayerNorm o = add_layernorm(v[0], v[1], v[2], v[3], want_sum);
            return want_sum ? add(o.y, scale(o.sum, 3.0)) : o.y;
          },
          {x, r, gm, bt});
      const Tensor plain = run_graph(
          [&](Graph&, const std::vector<Value>& v) {
            const Value s = add(v[0], v[1]);
            const Value y = layernorm(s, v[2], v[3]);
            return want_sum ? add(y, scale(s, 3.0)) : y;
          },
          {x, r, gm, bt});
      CHECK(fused.to_doubles() == plain.to_doubles());
    }
  }
  // Gradients of every input by finite differences: the table's sums ds over the batch.
  const auto in64 = [](uint64_t seed, const Shape& residual) {
    return std::vector<Tensor>{
        random_tensor({2, 3, 7}, seed, -2, 2, DType::f64), random_tensor(residual, seed + 1, -2, 2, DType::f64),
        random_tensor({7}, seed + 2, 0.5, 1.5, DType::f64), random_tensor({7}, seed + 3, -1, 1, DType::f64)};
  };
  check_gradients(
      [](Graph&, const std::vector<Value>& v) {
        const ResidualLayerNorm o = add_layernorm(v[0], v[1], v[2], v[3], true);
        return add(o.y, scale(o.sum, 0.7));
      },
      in64(71, {3, 7}), "broadcast residual (T, C), y and sum");
  check_gradients([](Graph&, const std::vector<Value>& v) { return add_layernorm(v[0], v[1], v[2], v[3], false).y; },
                  in64(75, {7}), "broadcast residual (C), y (the recomputed sum)");
  // Not a suffix of x's shape, or another dtype: refused at the front door.
  for (const Tensor& r : {Tensor::zeros({2, 8}), Tensor::zeros({3, 1, 8}), Tensor::zeros({8}, DType::f64)}) {
    try {
      run_op(LayerNormOp(1e-5, false, false, true, false), {Tensor::zeros({3, 4, 8}), r});
      FAIL("no error for residual " << r.desc());
    } catch (const Error& e) {
      CHECK(std::string(e.what()).find("[layernorm] residual") != std::string::npos);
      CHECK(std::string(e.what()).find("suffix") != std::string::npos);
    }
  }
}

TEST_CASE("layernorm/rmsnorm: bad shapes and parameters throw an xfr::Error naming the op and shapes") {
  const Tensor x = Tensor::zeros({4, 8});
  try {
    run_op(LayerNormOp(1e-5, true, false), {x, Tensor::zeros({7})});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "layernorm");
    CHECK(std::string(e.what()).find("(7,)") != std::string::npos);
    CHECK(std::string(e.what()).find("(4, 8)") != std::string::npos);
  }
  try {
    run_op(RMSNormOp(1e-6, true), {x, Tensor::zeros({8}, DType::f64)});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "rmsnorm");
    CHECK(std::string(e.what()).find("(4, 8)") != std::string::npos);
  }
  CHECK_THROWS_AS(run_op(LayerNormOp(1e-5, true, true), {x, Tensor::zeros({8})}), Error);  // beta missing
  CHECK_THROWS_AS(run_op(LayerNormOp(-1.0, false, false), {x}), Error);                     // negative eps
  CHECK_THROWS_AS(run_op(LayerNormOp(1e-5, false, false), {Tensor::zeros({4, 0})}), Error);  // empty axis
  CHECK_THROWS_AS(run_op(RMSNormOp(1e-6, false), {Tensor::zeros({}, DType::f32)}), Error);  // no axis
  CHECK_THROWS_AS(run_op(LayerNormOp(1e-5, false, false), {Tensor::zeros({3}, DType::i32)}), Error);
  // Through the graph, the error also names the node.
  Graph g;
  Value gx = g.input("x", TensorMeta{{4, 8}, DType::f32});
  Value gb = g.input("gamma", TensorMeta{{9}, DType::f32});
  CHECK_THROWS_AS(layernorm(gx, gb, Value{}), Error);
}
